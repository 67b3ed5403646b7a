//! A spooled HTTP request as a spool record payload: everything replay
//! needs to send it again, in a small versioned binary format.
//!
//! ```text
//! u8   version (1)
//! [16] token          random; the unguessable part of the request id
//! u64  arrived_ms     unix millis when the request arrived
//! u8   attempt_base   attempts made before this record (DLQ replays)
//! u16  len + bytes    route name
//! u16  len + bytes    method
//! u32  len + bytes    path and query
//! u16  len + bytes    Idempotency-Key (0: none)
//! u16  header count, then per header: u16 len + name, u32 len + value
//! u32  len + bytes    body
//! ```
//! All integers big-endian. Lengths are checked against the bytes left, so
//! a corrupt payload is an error, never a large allocation.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub token: [u8; 16],
    pub arrived_ms: u64,
    pub attempt_base: u8,
    pub route: String,
    pub method: Method,
    pub path_and_query: String,
    pub idempotency_key: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("envelope truncated while reading {field}")]
    Truncated { field: &'static str },
    #[error("envelope field {field} is invalid")]
    Invalid { field: &'static str },
}

impl Envelope {
    pub fn encode(&self) -> Bytes {
        let header_bytes: usize = self.headers.iter().map(|(k, v)| 6 + k.as_str().len() + v.len()).sum();
        let mut b =
            BytesMut::with_capacity(64 + self.route.len() + self.path_and_query.len() + header_bytes + self.body.len());
        b.put_u8(VERSION);
        b.put_slice(&self.token);
        b.put_u64(self.arrived_ms);
        b.put_u8(self.attempt_base);
        put16(&mut b, self.route.as_bytes());
        put16(&mut b, self.method.as_str().as_bytes());
        put32(&mut b, self.path_and_query.as_bytes());
        put16(&mut b, self.idempotency_key.as_deref().unwrap_or("").as_bytes());
        b.put_u16(self.headers.len().min(u16::MAX as usize) as u16);
        for (k, v) in self.headers.iter().take(u16::MAX as usize) {
            put16(&mut b, k.as_str().as_bytes());
            put32(&mut b, v.as_bytes());
        }
        put32(&mut b, &self.body);
        b.freeze()
    }

    pub fn decode(mut data: Bytes) -> Result<Envelope, EnvelopeError> {
        let version = take_u8(&mut data, "version")?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let token_bytes = take(&mut data, 16, "token")?;
        let mut token = [0u8; 16];
        token.copy_from_slice(&token_bytes);
        let arrived_ms = u64::from_be_bytes(take(&mut data, 8, "arrived_ms")?.as_ref().try_into().unwrap());
        let attempt_base = take_u8(&mut data, "attempt_base")?;
        let route = string(take16(&mut data, "route")?, "route")?;
        let method = Method::from_bytes(&take16(&mut data, "method")?)
            .map_err(|_| EnvelopeError::Invalid { field: "method" })?;
        let path_and_query = string(take32(&mut data, "path")?, "path")?;
        let key = string(take16(&mut data, "idempotency_key")?, "idempotency_key")?;
        let count = u16::from_be_bytes(take(&mut data, 2, "header count")?.as_ref().try_into().unwrap());
        let mut headers = HeaderMap::with_capacity(count as usize);
        for _ in 0..count {
            let name = HeaderName::from_bytes(&take16(&mut data, "header name")?)
                .map_err(|_| EnvelopeError::Invalid { field: "header name" })?;
            let value = HeaderValue::from_maybe_shared(take32(&mut data, "header value")?)
                .map_err(|_| EnvelopeError::Invalid { field: "header value" })?;
            headers.append(name, value);
        }
        let body = take32(&mut data, "body")?;
        Ok(Envelope {
            token,
            arrived_ms,
            attempt_base,
            route,
            method,
            path_and_query,
            idempotency_key: (!key.is_empty()).then_some(key),
            headers,
            body,
        })
    }
}

fn put16(b: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(u16::MAX as usize);
    b.put_u16(n as u16);
    b.put_slice(&s[..n]);
}

fn put32(b: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(u32::MAX as usize);
    b.put_u32(n as u32);
    b.put_slice(&s[..n]);
}

fn take(data: &mut Bytes, n: usize, field: &'static str) -> Result<Bytes, EnvelopeError> {
    if data.len() < n {
        return Err(EnvelopeError::Truncated { field });
    }
    Ok(data.split_to(n))
}

fn take_u8(data: &mut Bytes, field: &'static str) -> Result<u8, EnvelopeError> {
    Ok(take(data, 1, field)?[0])
}

fn take16(data: &mut Bytes, field: &'static str) -> Result<Bytes, EnvelopeError> {
    let n = u16::from_be_bytes(take(data, 2, field)?.as_ref().try_into().unwrap()) as usize;
    take(data, n, field)
}

fn take32(data: &mut Bytes, field: &'static str) -> Result<Bytes, EnvelopeError> {
    let n = u32::from_be_bytes(take(data, 4, field)?.as_ref().try_into().unwrap()) as usize;
    take(data, n, field)
}

fn string(b: Bytes, field: &'static str) -> Result<String, EnvelopeError> {
    String::from_utf8(b.to_vec()).map_err(|_| EnvelopeError::Invalid { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Envelope {
            token: [7; 16],
            arrived_ms: 1_700_000_000_123,
            attempt_base: 0,
            route: "orders".into(),
            method: Method::POST,
            path_and_query: "/api/orders?x=1".into(),
            idempotency_key: Some("k-1".into()),
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(e.encode()).unwrap(), e);
        let mut none = sample();
        none.idempotency_key = None;
        none.body = Bytes::new();
        assert_eq!(Envelope::decode(none.encode()).unwrap(), none);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut v = sample().encode().to_vec();
        v[0] = 9;
        assert_eq!(Envelope::decode(Bytes::from(v)), Err(EnvelopeError::Version(9)));
    }
}
