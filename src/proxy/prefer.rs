//! RFC 7240 `Prefer` on a `spool` route: the client chooses between
//! waiting and a 202. `respond-async` spools at once, token or not;
//! `wait=N` lets the request wait up to N seconds (capped by the route's
//! `prefer_wait_max`) for a token and for upstream budget before it is
//! spooled. What was honoured is answered in `Preference-Applied` and
//! removed from the `Prefer` the backend sees, live or replayed; any other
//! preference passes through untouched.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

pub static PREFER: HeaderName = HeaderName::from_static("prefer");
pub static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// What a request's `Prefer` asks of sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Preferences {
    pub respond_async: bool,
    /// `wait=N`, in seconds.
    pub wait: Option<u64>,
}

/// The decision, once the route's cap is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    RespondAsync,
    Wait(Duration),
}

impl Applied {
    pub fn header(self) -> HeaderValue {
        match self {
            Applied::RespondAsync => HeaderValue::from_static("respond-async"),
            Applied::Wait(d) => {
                HeaderValue::from_str(&format!("wait={}", d.as_secs())).expect("digits are a valid header value")
            }
        }
    }
}

/// Splits a field's value at the commas that separate preferences — not
/// those inside a quoted string — trimming each.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

/// The name of one preference (before `=` or `;`), trimmed, and its value
/// (unquoted).
fn split(pref: &str) -> (&str, Option<&str>) {
    let head = pref.split(';').next().unwrap_or("").trim();
    match head.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
        None => (head, None),
    }
}

/// Every preference in every readable `Prefer` field, in order.
fn each(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
}

pub fn parse(headers: &HeaderMap) -> Preferences {
    let mut out = Preferences::default();
    let mut wait_seen = false;
    for pref in each(headers) {
        match split(pref) {
            (name, None) if name.eq_ignore_ascii_case("respond-async") => out.respond_async = true,
            // RFC 7240 §2: the first occurrence of a preference counts,
            // even when its value can't be used.
            (name, Some(v)) if name.eq_ignore_ascii_case("wait") && !wait_seen => {
                wait_seen = true;
                out.wait = v.parse().ok();
            }
            _ => {}
        }
    }
    out
}

/// What sluice honours for a request whose route caps `wait` at
/// `wait_max` (zero: `wait` is ignored).
pub fn decide(prefs: Preferences, wait_max: Duration) -> Option<Applied> {
    if prefs.respond_async {
        return Some(Applied::RespondAsync);
    }
    match prefs.wait {
        Some(n) if !wait_max.is_zero() => Some(Applied::Wait(Duration::from_secs(n).min(wait_max))),
        _ => None,
    }
}

/// Takes what was honoured out of `Prefer`. Only the fields that held it
/// are rewritten (a field left empty goes); every other field is kept
/// byte for byte.
pub fn strip(headers: &mut HeaderMap, applied: Applied) {
    let honoured = match applied {
        Applied::RespondAsync => "respond-async",
        Applied::Wait(_) => "wait",
    };
    let is_honoured = |p: &str| split(p).0.eq_ignore_ascii_case(honoured);
    let fields: Vec<HeaderValue> = headers.get_all(&PREFER).iter().cloned().collect();
    if !fields
        .iter()
        .any(|v| v.to_str().is_ok_and(|t| split_list(t).into_iter().any(is_honoured)))
    {
        return;
    }
    headers.remove(&PREFER);
    for field in fields {
        let Ok(text) = field.to_str() else {
            headers.append(PREFER.clone(), field);
            continue;
        };
        let prefs = split_list(text);
        if !prefs.iter().any(|p| is_honoured(p)) {
            headers.append(PREFER.clone(), field);
            continue;
        }
        let rest: Vec<&str> = prefs.into_iter().filter(|p| !is_honoured(p)).collect();
        if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
            if !rest.is_empty() {
                headers.append(PREFER.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(PREFER.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_both_forms_across_fields_and_case() {
        let h = map(&["return=minimal, Respond-Async", "wait=10; foo"]);
        assert_eq!(
            parse(&h),
            Preferences {
                respond_async: true,
                wait: Some(10)
            }
        );
        assert_eq!(parse(&map(&["wait=5, wait=9"])).wait, Some(5), "the first counts");
        assert_eq!(parse(&map(&["wait=soon"])).wait, None);
        assert_eq!(parse(&map(&["wait=soon, wait=9"])).wait, None, "even unusable");
        // A comma inside a quoted value is no separator.
        assert!(!parse(&map(&[r#"foo="x, respond-async""#])).respond_async);
        assert_eq!(parse(&HeaderMap::new()), Preferences::default());
    }

    #[test]
    fn the_route_caps_wait_and_zero_ignores_it() {
        let wait = |n| Preferences {
            respond_async: false,
            wait: Some(n),
        };
        assert_eq!(
            decide(wait(100), Duration::from_secs(5)),
            Some(Applied::Wait(Duration::from_secs(5)))
        );
        assert_eq!(decide(wait(2), Duration::ZERO), None);
        assert_eq!(
            decide(
                Preferences {
                    respond_async: true,
                    wait: Some(2)
                },
                Duration::from_secs(5)
            ),
            Some(Applied::RespondAsync)
        );
    }

    #[test]
    fn strip_keeps_what_was_not_honoured() {
        let mut h = map(&["return=minimal, respond-async", "wait=3"]);
        strip(&mut h, Applied::RespondAsync);
        let fields: Vec<_> = h
            .get_all(&PREFER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            fields,
            ["return=minimal", "wait=3"],
            "only the field that held it changes"
        );
        strip(&mut h, Applied::Wait(Duration::from_secs(3)));
        assert_eq!(h[&PREFER], "return=minimal");
        // Quoted commas survive a rewrite; unreadable fields are kept.
        let mut q = map(&[r#"foo="a,b", respond-async"#]);
        q.append(PREFER.clone(), HeaderValue::from_bytes(b"x=\xff").unwrap());
        strip(&mut q, Applied::RespondAsync);
        let fields: Vec<_> = q.get_all(&PREFER).iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(fields, [br#"foo="a,b""#.to_vec(), b"x=\xff".to_vec()]);
        let mut only = map(&["respond-async"]);
        strip(&mut only, Applied::RespondAsync);
        assert!(!only.contains_key(&PREFER));
    }
}
