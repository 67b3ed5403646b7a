//! Path normalisation before routing: one spelling per resource, so a
//! route's limit can't be walked around by writing its path another way
//! (`//api/orders`, `/api/./orders`, `/api/x/../orders`, `/%61pi/orders`).
//! The normalised path is what is matched, forwarded and spooled.
//!
//! The steps, each a switch under `[server]` (nginx and Envoy do the same):
//! - `normalize_path`: percent-encoded unreserved characters (RFC 3986
//!   §2.3: letters, digits, `-._~`) are decoded; other escapes keep their
//!   bytes with upper-case hex; dot segments are resolved (RFC 3986 §5.2.4);
//!   a path that climbs above the root is refused.
//! - `merge_slashes`: runs of `/` become one.
//! - `escaped_slashes`: `%2F` and `%5C` are refused (`reject`) or kept as
//!   they are (`keep`: never taken for a separator, so never matched as one).
//!
//! An encoded NUL and a malformed escape are always refused.

use std::borrow::Cow;

pub use crate::config::{EscapedSlashes, PathPolicy};

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path holds an encoded slash or backslash")]
    EscapedSlash,
    #[error("the path holds an encoded NUL")]
    EncodedNul,
    #[error("the path holds a malformed percent escape")]
    BadEscape,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` might need work: the common clean path costs one scan
/// and no allocation.
fn needs_work(path: &str, p: &PathPolicy) -> bool {
    let b = path.as_bytes();
    b.contains(&b'%')
        || (p.merge_slashes && b.windows(2).any(|w| w == b"//"))
        || (p.normalize && (!b.starts_with(b"/") || path.split('/').any(|s| s == "." || s == "..")))
}

/// The normalised form of `path` (the part of the target before `?`).
pub fn normalize<'a>(path: &'a str, p: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    if !needs_work(path, p) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Escapes: refuse what is never allowed, decode what is unreserved.
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            decoded.push(b[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) else {
            return Err(PathError::BadEscape);
        };
        let byte = hi << 4 | lo;
        match byte {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' if p.escaped_slashes == EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
            c if p.normalize && unreserved(c) => decoded.push(c),
            c => {
                // Kept encoded, in one spelling.
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
            }
        }
        i += 3;
    }
    // 2. Slashes.
    if p.merge_slashes {
        decoded.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // 3. Dot segments.
    let out = if p.normalize {
        remove_dot_segments(&decoded)?
    } else {
        decoded
    };
    // Only ASCII went in and only ASCII unreserved bytes were decoded.
    Ok(Cow::Owned(String::from_utf8(out).expect("ASCII in, ASCII out")))
}

/// RFC 3986 §5.2.4, segment by segment; `..` past the root is an error
/// rather than silently clamped, since a client that sends it is probing.
fn remove_dot_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    let mut segs: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = rel.split(|c| *c == b'/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in parts.into_iter().enumerate() {
        match seg {
            b"." => trailing_slash = i == last,
            b".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                segs.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: PathPolicy = PathPolicy {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, &ALL).map(Cow::into_owned)
    }

    #[test]
    fn every_respelling_of_a_path_becomes_one() {
        for p in [
            "/api/orders/x",
            "/api//orders/x",
            "//api/orders/x",
            "/api/./orders/x",
            "/api/x/../orders/x",
            "/api/%6Frders/x",
            "/%61pi/orders/x",
            "/%61%70%69/orders/./x",
            "/api/orders/y/../x",
        ] {
            assert_eq!(n(p).unwrap(), "/api/orders/x", "{p}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed_untouched() {
        for p in ["/", "/api/orders/x", "/a.b/c~d_e-f", "/x/.well-known"] {
            assert!(matches!(normalize(p, &ALL).unwrap(), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(n("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%2Fb"), Err(PathError::EscapedSlash));
        assert_eq!(n("/a%5cb"), Err(PathError::EscapedSlash));
        assert_eq!(n("/a%00b"), Err(PathError::EncodedNul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
    }

    #[test]
    fn reserved_escapes_stay_encoded_in_one_spelling() {
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        let keep = PathPolicy {
            escaped_slashes: EscapedSlashes::Keep,
            ..ALL
        };
        assert_eq!(normalize("/a%2fb/../c", &keep).unwrap(), "/c");
        assert_eq!(normalize("/a%2fb", &keep).unwrap(), "/a%2Fb", "kept, never a separator");
        assert_eq!(normalize("/a%00", &keep), Err(PathError::EncodedNul));
    }

    #[test]
    fn dot_segments_keep_a_trailing_slash_and_the_root() {
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/.").unwrap(), "/");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
    }

    #[test]
    fn switches_off_leave_their_step_out() {
        let off = PathPolicy {
            normalize: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
        };
        assert_eq!(normalize("/a//./%61", &off).unwrap(), "/a//./%61");
        assert_eq!(normalize("/a%2f", &off), Err(PathError::EscapedSlash));
        let merge_only = PathPolicy {
            merge_slashes: true,
            ..off
        };
        assert_eq!(normalize("/a//b", &merge_only).unwrap(), "/a/b");
    }
}
