//! Dead-letter operations shared by the admin API (online) and the CLI
//! (offline): list, replay (append again at the tail of the partition
//! with a new id and the same Idempotency-Key), purge — all, selected by
//! request id, or by filters (route, reason, when it died) that combine.
//! Replay goes a page at a time (`limit` letters from DLQ offset `from`),
//! so a bulk replay is bounded per call and resumable.
//!
//! Replay and purge of one spool are serialised by its [`DlqLock`], and
//! replay checks again under the lock that each letter it selected is
//! still in the DLQ before appending it, so two operators (or one
//! impatient script) replaying the same letter at once enqueue it once.
//! What the lock can't cover is a crash between a letter's re-append and
//! its removal from the DLQ: after the restart the letter is still there,
//! and replaying it again gives a second copy. Both copies carry the same
//! Idempotency-Key, which is how the backend tells them apart.

mod select;
mod store;

pub use select::{letter_is, letter_token, rfc3339_ms, Selection, REASONS};
pub use store::{DeadLetters, LocalDeadLetters};

use super::envelope::Envelope;
use super::id::RequestId;
use super::outcomes::now_ms;
use crate::spool::{DeadLetter, SpoolError};
use select::{parse_selection, Chosen};
/// Serialises the replay and purge of one spool's dead letters. The
/// running sluice keeps one in its [`super::spooler::Spooler`]; the
/// offline CLI makes its own (the spool directory's lock already keeps
/// every other process out).
#[derive(Debug, Default)]
pub struct DlqLock(tokio::sync::Mutex<()>);

/// A dead letter as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterView {
    /// The request's id, when its record could be decoded.
    pub id: Option<String>,
    pub dlq_offset: u64,
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
    pub last_status: Option<u16>,
    pub dead_at_ms: u64,
    pub enqueued_at_ms: u64,
    pub route: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub bytes: usize,
}

/// Letters replayed per call, at most.
pub const REPLAY_PAGE_MAX: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("select dead letters with {{\"all\": true}}, {{\"ids\": [...]}} or filters (route, reason, since, until)")]
    EmptySelection,
    #[error("{0:?} is not a request id")]
    BadId(String),
    #[error("give ids or filters, not both: ids name their letters already")]
    IdsWithFilters,
    #[error("{field} {value:?} is not an RFC 3339 time (e.g. \"2026-11-30T12:00:00Z\")")]
    BadTime { field: &'static str, value: String },
    #[error("limit must be between 1 and {REPLAY_PAGE_MAX}")]
    BadLimit,
    #[error("reason {0:?} is none of max_attempts, rejected, expired, corrupt, undecodable")]
    BadReason(String),
    #[error("from, limit and before page a replay; a purge takes its whole selection at once")]
    PagedPurge,
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Store(#[from] crate::jetstream::JetStreamError),
}

impl DlqError {
    /// The caller's mistake, not the spool's.
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, DlqError::Spool(_) | DlqError::Store(_))
    }
}

/// What replay did, and where to go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// (old id, new id) of each letter re-enqueued.
    pub pairs: Vec<(String, String)>,
    /// Where the next page starts (`None`: the DLQ was read to its end).
    pub next_from: Option<u64>,
    /// The bound to pass back with `next_from`.
    pub before: u64,
}

fn view(d: &DeadLetter) -> DeadLetterView {
    let env = Envelope::decode(d.payload.clone()).ok();
    DeadLetterView {
        id: env.as_ref().map(|e| {
            RequestId {
                partition: d.partition,
                offset: d.offset,
                token: e.token,
            }
            .encode()
        }),
        dlq_offset: d.dlq_offset,
        partition: d.partition,
        offset: d.offset,
        reason: d.reason.clone(),
        last_status: d.last_status,
        dead_at_ms: d.dead_at_ms,
        enqueued_at_ms: env.as_ref().map_or(d.timestamp_ms, |e| e.arrived_ms),
        route: env.as_ref().map(|e| e.route.clone()),
        method: env.as_ref().map(|e| e.method.to_string()),
        path: env.as_ref().map(|e| e.path_and_query.clone()),
        bytes: d.payload_len,
    }
}

/// A page of dead letters from `from` (a dlq offset), and where the next
/// page starts.
pub async fn list(
    spool: &impl DeadLetters,
    from: u64,
    limit: usize,
) -> Result<(Vec<DeadLetterView>, Option<u64>), DlqError> {
    let page = spool.page(from, limit.saturating_add(1)).await?;
    let next = (page.len() > limit).then(|| page[limit].dlq_offset);
    Ok((page.iter().take(limit).map(view).collect(), next))
}

/// Dead letters are visited a page at a time, so a large DLQ is never
/// held in memory whole.
const PAGE: usize = 256;

/// The selected dead letters of one page starting at `from`, and where the
/// next page starts.
async fn select_page(
    spool: &impl DeadLetters,
    chosen: &Chosen,
    from: u64,
) -> Result<(Vec<DeadLetter>, Option<u64>), DlqError> {
    let page = spool.page(from, PAGE).await?;
    let next = (page.len() == PAGE).then(|| page[PAGE - 1].dlq_offset + 1);
    Ok((page.into_iter().filter(|d| chosen.matches(d)).collect(), next))
}

/// Drops the selected dead letters; returns how many.
pub async fn purge(spool: &impl DeadLetters, lock: &DlqLock, sel: &Selection) -> Result<u64, DlqError> {
    let chosen = parse_selection(sel)?;
    if sel.from.is_some() || sel.limit.is_some() || sel.before.is_some() {
        return Err(DlqError::PagedPurge);
    }
    let _serial = lock.0.lock().await;
    let mut offsets = Vec::new();
    let mut from = Some(0);
    while let Some(start) = from {
        let (page, next) = select_page(spool, &chosen, start).await?;
        offsets.extend(page.iter().map(|d| d.dlq_offset));
        from = next;
    }
    spool.remove(offsets).await
}

/// Appends each selected dead letter again at the tail of its partition
/// and drops it from the DLQ. The new record keeps the request's
/// Idempotency-Key (the client's, or else the old id), so a backend that
/// dedupes sees the same key; the old id's status shows `replayed_as`.
/// At most `sel.limit` (default 1000) letters per call, from DLQ offset
/// `sel.from`; the answer says where the next page starts.
///
/// Holds `lock` throughout. Not cancel-safe: dropped between a letter's
/// append and its purge, the letter stays in the DLQ after being
/// re-enqueued, so callers that may be cancelled (a request handler whose
/// client goes away) run it in a task of its own.
pub async fn replay(spool: &impl DeadLetters, lock: &DlqLock, sel: &Selection) -> Result<Replayed, DlqError> {
    let chosen = parse_selection(sel)?;
    let limit = sel.limit.unwrap_or(REPLAY_PAGE_MAX);
    let _serial = lock.0.lock().await;
    let before = match sel.before {
        Some(b) => b,
        None => spool.end().await?,
    };
    let mut done = Vec::new();
    let mut letters = Vec::new();
    let mut from = Some(sel.from.unwrap_or(0));
    loop {
        if letters.is_empty() {
            let Some(start) = from else { break };
            if start >= before {
                break;
            }
            let (page, next) = select_page(spool, &chosen, start).await?;
            letters = page.into_iter().filter(|d| d.dlq_offset < before).collect();
            letters.reverse();
            from = next;
            continue;
        }
        if done.len() == limit {
            // Full page: the next one starts at the first letter not
            // looked at.
            return Ok(Replayed {
                next_from: letters.last().map(|d| d.dlq_offset).or(from).filter(|&n| n < before),
                pairs: done,
                before,
            });
        }
        let Some(d) = letters.pop() else { break };
        // Still there? It was selected from a page read a moment ago; if
        // it has gone since (the spool's own DLQ retention drops old
        // letters without this lock) it must not be enqueued.
        if spool.get(d.dlq_offset).await?.is_none() {
            continue;
        }
        let partition = d.partition.min(spool.partitions() - 1);
        let Ok(mut env) = Envelope::decode(d.payload.clone()) else {
            // Not a request we can send (e.g. a corrupt record's stub):
            // leave it for an operator to purge.
            tracing::warn!(
                dlq_offset = d.dlq_offset,
                "dead letter is not a decodable request; not replayed"
            );
            continue;
        };
        let old = RequestId {
            partition: d.partition,
            offset: d.offset,
            token: env.token,
        };
        if env.idempotency_key.is_none() {
            env.idempotency_key = Some(old.encode());
        }
        env.token = RequestId::new_token();
        // A replayed dead letter starts its max_age over: otherwise one that
        // died of old age would expire again at once.
        let enqueued_ms = env.arrived_ms;
        env.arrived_ms = now_ms();
        let new_offset = spool.enqueue(partition, &env).await?;
        let new = RequestId {
            partition,
            offset: new_offset,
            token: env.token,
        };
        spool.remove(vec![d.dlq_offset]).await?;
        spool.replayed(old, new, d.last_status, enqueued_ms).await;
        done.push((old.encode(), new.encode()));
    }
    Ok(Replayed {
        pairs: done,
        next_from: None,
        before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method};

    fn envelope(token: [u8; 16]) -> Bytes {
        Envelope {
            token,
            arrived_ms: 1_700_000_000_000,
            attempt_base: 0,
            route: "orders".into(),
            method: Method::POST,
            path_and_query: "/orders".into(),
            idempotency_key: None,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"a body that got damaged on disk"),
        }
        .encode()
    }

    /// A "corrupt" dead letter as the spool writes one: the frame's
    /// payload as far as it could be read.
    fn corrupt_letter(payload: Bytes) -> DeadLetter {
        DeadLetter {
            dlq_offset: 12,
            dead_at_ms: 1_700_000_001_000,
            partition: 2,
            offset: 40,
            timestamp_ms: 0,
            flags: 0,
            reason: "corrupt".into(),
            last_status: None,
            payload_len: payload.len(),
            payload,
        }
    }

    #[test]
    fn a_corrupt_letters_token_is_read_from_its_raw_bytes() {
        let token = RequestId::new_token();
        let id = RequestId {
            partition: 2,
            offset: 40,
            token,
        };
        let whole = envelope(token);

        // Intact, damaged past the token, or cut short after it: found.
        let mut damaged = whole.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        damaged[20] ^= 0xff;
        for payload in [
            whole.clone(),
            Bytes::from(damaged),
            whole.slice(..17),
            whole.slice(..30),
        ] {
            let d = corrupt_letter(payload.clone());
            assert_eq!(letter_token(&d), Some(token), "{} bytes", payload.len());
            assert!(letter_is(&id, &d), "{} bytes", payload.len());
        }
        // Even a damaged version byte leaves the token where it was.
        let mut bad_version = whole.to_vec();
        bad_version[0] = 0xee;
        assert!(letter_is(&id, &corrupt_letter(Bytes::from(bad_version))));

        // Cut inside the token, or empty (the spool had nothing): no token.
        for cut in [0, 1, 9, 16] {
            let d = corrupt_letter(whole.slice(..cut));
            assert_eq!(letter_token(&d), None, "cut at {cut}");
            assert!(!letter_is(&id, &d), "cut at {cut}");
        }
        // A damaged token, another token, or another position: not this id.
        let mut bad_token = whole.to_vec();
        bad_token[5] ^= 1;
        assert!(!letter_is(&id, &corrupt_letter(Bytes::from(bad_token))));
        let other = RequestId {
            token: RequestId::new_token(),
            ..id
        };
        assert!(!letter_is(&other, &corrupt_letter(whole.clone())));
        for (partition, offset) in [(3, 40), (2, 41)] {
            let moved = RequestId {
                partition,
                offset,
                ..id
            };
            assert!(!letter_is(&moved, &corrupt_letter(whole.clone())));
        }
    }

    #[test]
    fn times_with_offsets_are_rfc3339_too() {
        let utc = rfc3339_ms("2026-11-30T12:00:00Z").unwrap();
        assert_eq!(rfc3339_ms("2026-11-30T13:00:00+01:00"), Some(utc));
        assert_eq!(rfc3339_ms("2026-11-30T06:30:00-05:30"), Some(utc));
        assert_eq!(rfc3339_ms("2026-11-30T12:00:00.250Z"), Some(utc + 250));
        for bad in ["yesterday", "2026-11-30T12:00:00", "2026-11-30T12:00:00+1:00", "+01:00"] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn selection_by_id_finds_a_letter_whose_envelope_no_longer_decodes() {
        let token = RequestId::new_token();
        let id = RequestId {
            partition: 2,
            offset: 40,
            token,
        };
        let sel = Selection {
            ids: vec![id.encode()],
            ..Default::default()
        };
        let chosen = parse_selection(&sel).unwrap();
        let d = corrupt_letter(envelope(token).slice(..25));
        assert!(Envelope::decode(d.payload.clone()).is_err());
        assert!(chosen.matches(&d), "purge by id reaches a corrupt letter");
        assert!(!chosen.matches(&corrupt_letter(Bytes::new())));
        // A letter that can't be decoded has no route: a route filter
        // passes it by, a reason filter alone does not.
        let by_route = parse_selection(&Selection {
            route: Some("orders".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!by_route.matches(&d));
        let by_reason = parse_selection(&Selection {
            reason: Some(d.reason.clone()),
            ..Default::default()
        })
        .unwrap();
        assert!(by_reason.matches(&d));
    }
}
