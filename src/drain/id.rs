//! Request ids: opaque, URL-safe and unguessable, yet resolving to a spool
//! position without any in-memory map.
//!
//! An id is base64url (no padding) of `partition u32 | offset u64 |
//! token [16]`. The token is random and also stored inside the record, so
//! a lookup reads the record at (partition, offset) and answers only if
//! the tokens match: knowing one id tells nothing about another's token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub partition: u32,
    pub offset: u64,
    pub token: [u8; 16],
}

const RAW_LEN: usize = 4 + 8 + 16;

impl RequestId {
    pub fn new_token() -> [u8; 16] {
        rand::random()
    }

    pub fn encode(&self) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..4].copy_from_slice(&self.partition.to_be_bytes());
        raw[4..12].copy_from_slice(&self.offset.to_be_bytes());
        raw[12..].copy_from_slice(&self.token);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not a well-formed id.
    pub fn parse(s: &str) -> Option<RequestId> {
        if s.len() != 38 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        if raw.len() != RAW_LEN {
            return None;
        }
        let mut token = [0u8; 16];
        token.copy_from_slice(&raw[12..]);
        Some(RequestId {
            partition: u32::from_be_bytes(raw[..4].try_into().ok()?),
            offset: u64::from_be_bytes(raw[4..12].try_into().ok()?),
            token,
        })
    }

    /// Constant-time token comparison.
    pub fn token_matches(&self, other: &[u8; 16]) -> bool {
        self.token.iter().zip(other).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let id = RequestId {
            partition: 3,
            offset: 123_456_789,
            token: RequestId::new_token(),
        };
        let s = id.encode();
        assert_eq!(s.len(), 38);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(RequestId::parse(&s), Some(id));
        assert_eq!(RequestId::parse("nope"), None);
        assert_eq!(RequestId::parse(&format!("{s}A")), None);
        assert_eq!(RequestId::parse(&"!".repeat(38)), None);
        let other = RequestId {
            token: RequestId::new_token(),
            ..id
        };
        assert!(!id.token_matches(&other.token));
        assert!(id.token_matches(&id.token));
    }
}
