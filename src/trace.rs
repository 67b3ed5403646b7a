//! W3C trace context (`traceparent`) kept through the spool: a spooled
//! request keeps its client's `traceparent` in its record, and each
//! delivery attempt is a span of its own — the replayed `traceparent`
//! carries the client's trace id with a new parent id (the attempt's span
//! id), so the backend's spans hang under the attempt and the attempt
//! under the client's span. A request without a valid `traceparent` is
//! replayed without one (nor its `tracestate`).

pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

pub(crate) fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Appends `bytes` in lower-case hex (ids in headers and log lines).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

impl TraceParent {
    /// Parses a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`, lower
    /// case, ids not all zero (W3C Trace Context §3.2). A later version
    /// (not `ff`) is read from its first 55 characters when what follows
    /// them starts with `-` (§4.3); what we send is always version 00.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        let mut version = [0u8; 1];
        hex_into(v.get(..2)?, &mut version)?;
        let v = match version[0] {
            0 if v.len() == 55 => v,
            0 | 0xff => return None,
            _ if v.len() == 55 || (v.len() > 55 && v[55] == b'-') => &v[..55],
            _ => return None,
        };
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut tp = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        hex_into(&v[3..35], &mut tp.trace_id)?;
        hex_into(&v[36..52], &mut tp.parent_id)?;
        let mut flags = [0u8; 1];
        hex_into(&v[53..55], &mut flags)?;
        tp.flags = flags[0];
        if tp.trace_id == [0; 16] || tp.parent_id == [0; 8] {
            return None;
        }
        Some(tp)
    }

    pub fn from_headers(h: &HeaderMap) -> Option<TraceParent> {
        Self::parse(h.get(&TRACEPARENT)?.as_bytes())
    }

    /// The same trace under a new span of ours.
    pub fn child(&self) -> TraceParent {
        let mut span = [0u8; 8];
        while span == [0; 8] {
            span = rand::random();
        }
        TraceParent {
            parent_id: span,
            ..*self
        }
    }

    pub fn header(&self) -> HeaderValue {
        let text = format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.parent_id), self.flags);
        HeaderValue::from_str(&text).expect("hex is a valid header value")
    }
}

/// A trace id for the access log, from a request's `traceparent`.
pub fn trace_id(h: &HeaderMap) -> Option<[u8; 16]> {
    TraceParent::from_headers(h).map(|tp| tp.trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example_and_refuses_what_the_spec_refuses() {
        let tp = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.header(), EXAMPLE);
        // A later version: its first 55 characters, sent back as 00.
        let later = TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").unwrap();
        assert_eq!(later.header(), EXAMPLE);
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let tp = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        let a = tp.child();
        let b = tp.child();
        assert_eq!(a.trace_id, tp.trace_id);
        assert_eq!(a.flags, tp.flags);
        assert_ne!(a.parent_id, tp.parent_id);
        assert_ne!(a.parent_id, b.parent_id, "each attempt its own span");
    }
}
