//! Dead letters on JetStream: the DLQ stream, read and edited by the same
//! list / replay / purge code as the local spool's dead-letter log
//! ([`crate::drain::dlq`]); a letter's DLQ offset is its stream sequence.
//!
//! Replay publishes the request to its partition stream, then deletes the
//! letter. Replays are serialised per replica, not across the fleet: two
//! operators replaying one letter on two replicas at once can enqueue it
//! twice (both copies carry the same Idempotency-Key).

use super::drain::{DLQ_DEAD_AT, DLQ_PARTITION, DLQ_REASON, DLQ_SEQUENCE, DLQ_STATUS};
use super::intake::StatusRecord;
use super::{JetStreamError, JetStreamSpool};
use crate::drain::dlq::{DeadLetters, DlqError};
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::outcomes::{now_ms, State};
use crate::spool::DeadLetter;
use crate::trace::hex;
use async_nats::jetstream::message::StreamMessage;

fn header<T: std::str::FromStr>(m: &StreamMessage, name: &str) -> Option<T> {
    m.headers.get(name)?.as_str().parse().ok()
}

fn letter(m: StreamMessage) -> DeadLetter {
    let time_ms = (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    DeadLetter {
        dlq_offset: m.sequence,
        dead_at_ms: header(&m, DLQ_DEAD_AT).unwrap_or(time_ms),
        partition: header(&m, DLQ_PARTITION).unwrap_or(0),
        offset: header(&m, DLQ_SEQUENCE).unwrap_or(0),
        timestamp_ms: time_ms,
        flags: 0,
        reason: header(&m, DLQ_REASON).unwrap_or_else(|| "unknown".to_string()),
        last_status: header(&m, DLQ_STATUS),
        payload_len: m.payload.len(),
        payload: m.payload,
    }
}

impl JetStreamSpool {
    async fn dlq_bounds(&self) -> Result<(u64, u64), JetStreamError> {
        let info = self
            .dlq
            .get_info()
            .await
            .map_err(|e| JetStreamError::nats("DLQ stream info", e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }
}

impl DeadLetters for JetStreamSpool {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    async fn end(&self) -> Result<u64, DlqError> {
        Ok(self.dlq_bounds().await?.1 + 1)
    }

    async fn page(&self, from: u64, n: usize) -> Result<Vec<DeadLetter>, DlqError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let (first, last) = self.dlq_bounds().await?;
        let subject = self.dlq_subject();
        let mut out = Vec::new();
        let mut seq = from.max(first).max(1);
        // Each call finds the next letter at or after `seq`, so the gaps
        // replays and purges leave cost nothing.
        while seq <= last && out.len() < n {
            let next = self
                .dlq
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match next {
                Ok(m) => {
                    seq = m.sequence + 1;
                    out.push(letter(m));
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(JetStreamError::nats("reading dead letters", e).into()),
            }
        }
        Ok(out)
    }

    async fn get(&self, dlq_offset: u64) -> Result<Option<DeadLetter>, DlqError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        match self.dlq.get_raw_message(dlq_offset).await {
            Ok(m) => Ok(Some(letter(m))),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(JetStreamError::nats("reading a dead letter", e).into()),
        }
    }

    async fn enqueue(&self, partition: u32, env: &Envelope) -> Result<u64, DlqError> {
        let (seq, _) = self
            .publish(partition, env.encode(), &format!("replay-{}", hex(&env.token)))
            .await?;
        Ok(seq)
    }

    async fn remove(&self, dlq_offsets: Vec<u64>) -> Result<u64, DlqError> {
        let mut n = 0;
        for seq in dlq_offsets {
            match self.dlq.delete_message(seq).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                // Gone already (another replica, or retention).
                Err(e) if e.to_string().contains("no message found") => {}
                Err(e) => return Err(JetStreamError::nats("deleting a dead letter", e).into()),
            }
        }
        Ok(n)
    }

    async fn replayed(&self, old: RequestId, new: RequestId, last_status: Option<u16>, enqueued_ms: u64) {
        let mut rec = match self.status_record(old).await {
            Ok(Some((rec, _))) => rec,
            _ => StatusRecord {
                token: hex(&old.token),
                state: State::Dead,
                attempts: 0,
                enqueued_ms,
                at_ms: now_ms(),
                upstream_status: last_status,
                replayed_as: None,
                history: Vec::new(),
            },
        };
        rec.state = State::Dead;
        rec.replayed_as = Some(new.encode());
        if let Err(e) = self.put_status(old, &rec).await {
            tracing::warn!(error = %e, "recording a replayed dead letter's new id failed");
        }
    }
}
