//! `Retry-After` (RFC 9110 §10.2.3), read the same way by replay's retry
//! schedule and by the adaptive limit's pause.

use http::header::{HeaderMap, DATE, RETRY_AFTER};
use std::time::{Duration, SystemTime};

/// How long a response's `Retry-After` asks to wait (RFC 9110 §10.2.3):
/// delta-seconds, or an HTTP-date measured from the response's own `Date`
/// when it has one (so a backend whose clock is off by some minutes still
/// gets the wait it meant), else from `now`. A date in the past is no
/// wait; anything unparseable is ignored (`None`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is "very long" (capped by the caller).
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let now = headers
        .get(DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        .unwrap_or(now);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn retry_after_takes_delta_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ra = |pairs: &[(&str, &str)]| retry_after(&headers(pairs), now);
        assert_eq!(ra(&[]), None);
        assert_eq!(ra(&[("retry-after", "120")]), Some(Duration::from_secs(120)));
        assert_eq!(ra(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        assert_eq!(
            ra(&[("retry-after", "99999999999999999999999")]),
            Some(Duration::from_secs(u64::MAX)),
            "too many digits is a very long wait, capped by the caller"
        );
        // IMF-fixdate, and the two obsolete forms RFC 9110 still accepts.
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(ra(&[("retry-after", &in_90s)]), Some(Duration::from_secs(90)));
        assert_eq!(
            ra(&[("retry-after", "Tuesday, 14-Nov-23 22:13:27 GMT")]),
            Some(Duration::from_secs(7)),
            "rfc850-date"
        );
        assert_eq!(
            ra(&[("retry-after", "Tue Nov 14 22:13:27 2023")]),
            Some(Duration::from_secs(7)),
            "asctime-date"
        );
        // A date in the past: no extra wait.
        let past = httpdate::fmt_http_date(now - Duration::from_secs(3600));
        assert_eq!(ra(&[("retry-after", &past)]), Some(Duration::ZERO));
        // Measured from the response's Date when it has one: a backend 10
        // minutes ahead asking for 30 s gets 30 s, not 10½ minutes.
        let ahead = now + Duration::from_secs(600);
        let date = httpdate::fmt_http_date(ahead);
        let at = httpdate::fmt_http_date(ahead + Duration::from_secs(30));
        assert_eq!(
            ra(&[("retry-after", &at), ("date", &date)]),
            Some(Duration::from_secs(30))
        );
        // A garbage Date falls back to our clock.
        assert_eq!(
            ra(&[("retry-after", &in_90s), ("date", "yesterday")]),
            Some(Duration::from_secs(90))
        );
        // Garbage is ignored.
        for bad in ["soon", "-5", "1.5", "5s", "", "Tue, 32 Nov 2023 22:13:20 GMT", "0x10"] {
            assert_eq!(ra(&[("retry-after", bad)]), None, "{bad:?}");
        }
    }
}
