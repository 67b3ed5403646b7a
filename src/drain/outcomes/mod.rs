//! What became of spooled requests, for the status endpoint, and which
//! Idempotency-Keys were already spooled, for dedupe — bounded in memory
//! and in time, and surviving a restart.
//!
//! Both live in memory ([`store`]: bounded maps) and in a small journal of
//! fixed-size entries under `DIR/status/` ([`journal`]). At open the
//! entries younger than the retention window are loaded back. The
//! Idempotency-Key claim protocol is [`keys`].

use super::id::RequestId;
use std::path::PathBuf;

mod journal;
mod keys;
mod store;

pub use keys::{key_hash, KeyClaim, KeyHash};
pub use store::OutcomeStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Delivering,
    Delivered,
    Dead,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Queued => 0,
            State::Delivering => 1,
            State::Delivered => 2,
            State::Dead => 3,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        Some(match c {
            0 => State::Queued,
            1 => State::Delivering,
            2 => State::Delivered,
            3 => State::Dead,
            _ => return None,
        })
    }
}

/// Why an attempt got no answer from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    Connect,
    Timeout,
    /// The exchange failed after the connection was made (reset, bad
    /// response).
    Exchange,
    /// Any other failure before an answer.
    Other,
}

impl AttemptError {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Connect => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::Exchange => "exchange",
            AttemptError::Other => "error",
        }
    }

    fn code(self) -> u8 {
        match self {
            AttemptError::Connect => 1,
            AttemptError::Timeout => 2,
            AttemptError::Exchange => 3,
            AttemptError::Other => 4,
        }
    }

    fn from_code(c: u8) -> Option<AttemptError> {
        Some(match c {
            1 => AttemptError::Connect,
            2 => AttemptError::Timeout,
            3 => AttemptError::Exchange,
            4 => AttemptError::Other,
            _ => return None,
        })
    }
}

/// One delivery attempt, for the status timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRecord {
    /// When it was sent (Unix ms).
    pub at_ms: u64,
    /// The backend's answer, if it gave one.
    pub status: Option<u16>,
    pub error: Option<AttemptError>,
    /// From sending to the answer's head (or the failure).
    pub latency_ms: u32,
}

/// Attempts kept per request: the newest.
pub const HISTORY: usize = 10;

/// The final (or latest) word on one spooled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub id: RequestId,
    pub state: State,
    pub attempts: u32,
    pub upstream_status: Option<u16>,
    pub at_ms: u64,
    /// When the request was spooled.
    pub enqueued_ms: u64,
    /// Set when the dead letter was replayed under a new id.
    pub replayed_as: Option<RequestId>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error("status journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Unix milliseconds on the run clock ([`crate::clock`]): arrival times,
/// ages and expiry follow monotonic time within a run.
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

#[cfg(test)]
mod tests;
