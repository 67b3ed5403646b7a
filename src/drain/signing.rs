//! Signed replays (`[drain.signing]`), in the Standard Webhooks format, so
//! a backend that other callers can reach can tell a replay from sluice
//! from a forgery:
//!
//! - `webhook-id`: the record's Sluice-Id (the same on every attempt; a
//!   dead letter replayed from the DLQ gets a new one, so receivers dedupe
//!   on `Idempotency-Key`, which stays);
//! - `webhook-timestamp`: the attempt's time, in Unix seconds;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//!   for each configured secret, space-separated — two during a rotation,
//!   so a receiver holding either key accepts.
//!
//! A secret is `whsec_` + the base64 of its key bytes, one per line of
//! `secret_file`.

use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ring::hmac;

pub static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

const PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("line {line}: a secret must start with \"whsec_\"")]
    Prefix { line: usize },
    #[error("line {line}: the part after \"whsec_\" is not base64")]
    Base64 { line: usize },
    #[error("line {line}: the secret is empty")]
    Empty { line: usize },
    #[error("holds {0} secrets; give one, or two while rotating")]
    Count(usize),
}

/// The keys replays are signed with. Compared by key bytes; never printed.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<(Vec<u8>, hmac::Key)>,
}

impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len() && self.keys.iter().zip(&other.keys).all(|(a, b)| a.0 == b.0)
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secret(s), redacted)", self.keys.len())
    }
}

impl Signer {
    /// Parses a secret file: one or two `whsec_` secrets, one per line
    /// (blank lines ignored).
    pub fn parse(text: &str) -> Result<Signer, SigningError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let b64 = line.strip_prefix(PREFIX).ok_or(SigningError::Prefix { line: i + 1 })?;
            // Padded or not, as receivers accept both.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64.trim_end_matches('=')))
                .map_err(|_| SigningError::Base64 { line: i + 1 })?;
            if bytes.is_empty() {
                return Err(SigningError::Empty { line: i + 1 });
            }
            let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
            keys.push((bytes, key));
        }
        if keys.is_empty() || keys.len() > 2 {
            return Err(SigningError::Count(keys.len()));
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` value for a message.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut out = String::new();
        for (_, key) in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(itoa::Buffer::new().format(timestamp).as_bytes());
            ctx.update(b".");
            ctx.update(body);
            let tag = ctx.sign();
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(tag.as_ref()));
        }
        out
    }

    /// Adds the three headers for one attempt at `timestamp`.
    pub fn sign(&self, headers: &mut HeaderMap, id: &HeaderValue, timestamp: u64, body: &[u8]) {
        let id_text = id.to_str().unwrap_or_default();
        let sig = self.signature(id_text, timestamp, body);
        headers.insert(WEBHOOK_ID.clone(), id.clone());
        headers.insert(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(timestamp));
        if let Ok(v) = HeaderValue::from_str(&sig) {
            headers.insert(WEBHOOK_SIGNATURE.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_specifications_test_vector() {
        let s = Signer::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert_eq!(
            s.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_sign_twice_and_bad_files_say_which_line() {
        let s = Signer::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_c2Vjb25k\n").unwrap();
        let sig = s.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
        assert_eq!(Signer::parse("abc").unwrap_err(), SigningError::Prefix { line: 1 });
        assert_eq!(
            Signer::parse("whsec_a\nwhsec_***").unwrap_err(),
            SigningError::Base64 { line: 1 }
        );
        assert_eq!(Signer::parse("").unwrap_err(), SigningError::Count(0));
        assert_eq!(
            Signer::parse("whsec_c2Vjb25k\nwhsec_c2Vjb25k\nwhsec_c2Vjb25k").unwrap_err(),
            SigningError::Count(3)
        );
        assert!(!format!("{s:?}").contains("MfKQ"), "never printed");
    }
}
