//! Dead letters: records moved out of their partition with a reason.
//!
//! The dead-letter log is a second log (`dlq/`) in the same frame format,
//! with one partition. Each record's payload is an envelope:
//!
//! ```text
//! partition u32 | offset u64 | timestamp_ms u64 | flags u8 |
//! last_status u16 (0 = none) | reason_len u16 | reason (UTF-8) | original payload
//! ```
//! all little-endian. Purging a dead letter acks it in the dead-letter log
//! (acks above the committed offset are persisted there, so a selective
//! purge survives restart); fully purged segments are reclaimed like any.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::reader::Record;

const ENVELOPE_FIXED: usize = 4 + 8 + 8 + 1 + 2 + 2;

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Position in the dead-letter log: the id to purge or replay it by.
    pub dlq_offset: u64,
    /// When it was dead-lettered.
    pub dead_at_ms: u64,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub flags: u8,
    pub reason: String,
    pub last_status: Option<u16>,
    #[serde(skip)]
    pub payload: Bytes,
    pub payload_len: usize,
}

pub(crate) fn encode(rec: &Record, reason: &str, last_status: Option<u16>) -> Bytes {
    let reason = truncate_utf8(reason, u16::MAX as usize);
    let mut b = BytesMut::with_capacity(ENVELOPE_FIXED + reason.len() + rec.payload.len());
    b.put_u32_le(rec.partition);
    b.put_u64_le(rec.offset);
    b.put_u64_le(rec.timestamp_ms);
    b.put_u8(rec.flags);
    b.put_u16_le(last_status.unwrap_or(0));
    b.put_u16_le(reason.len() as u16);
    b.put_slice(reason.as_bytes());
    b.put_slice(&rec.payload);
    b.freeze()
}

/// Decodes an envelope; `None` if it is not one (never panics).
pub(crate) fn decode(dlq: &Record) -> Option<DeadLetter> {
    let b = &dlq.payload;
    if b.len() < ENVELOPE_FIXED {
        return None;
    }
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let reason_len = u16_at(23) as usize;
    let body = ENVELOPE_FIXED + reason_len;
    if b.len() < body {
        return None;
    }
    let status = u16_at(21);
    Some(DeadLetter {
        dlq_offset: dlq.offset,
        dead_at_ms: dlq.timestamp_ms,
        partition: u32::from_le_bytes(b[0..4].try_into().ok()?),
        offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
        timestamp_ms: u64::from_le_bytes(b[12..20].try_into().ok()?),
        flags: b[20],
        reason: String::from_utf8_lossy(&b[ENVELOPE_FIXED..body]).into_owned(),
        last_status: (status != 0).then_some(status),
        payload: b.slice(body..),
        payload_len: b.len() - body,
    })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
