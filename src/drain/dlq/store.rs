//! Where dead letters live, as the DLQ operations see them: the local
//! spool's dead-letter log here; the JetStream DLQ stream implements the
//! same trait in [`crate::jetstream`].

use super::DlqError;
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::outcomes::{now_ms, Outcome, OutcomeStore, State};
use crate::spool::{DeadLetter, DlqSelection, Spool};

/// Where dead letters live: the local spool's dead-letter log, or a
/// JetStream DLQ stream. List, replay and purge (with their filters and
/// paging) are written once, over this.
#[allow(async_fn_in_trait)]
pub trait DeadLetters {
    fn partitions(&self) -> u32;
    /// The DLQ offset the next dead letter gets.
    async fn end(&self) -> Result<u64, DlqError>;
    /// Up to `n` letters from DLQ offset `from`, in order.
    async fn page(&self, from: u64, n: usize) -> Result<Vec<DeadLetter>, DlqError>;
    /// The letter at `dlq_offset`, if it is still there.
    async fn get(&self, dlq_offset: u64) -> Result<Option<DeadLetter>, DlqError>;
    /// Appends a request to the tail of `partition`; its new offset.
    async fn enqueue(&self, partition: u32, env: &Envelope) -> Result<u64, DlqError>;
    /// Drops the letters at `dlq_offsets`; how many were dropped.
    async fn remove(&self, dlq_offsets: Vec<u64>) -> Result<u64, DlqError>;
    /// Notes that `old` was replayed as `new` (its status shows it).
    async fn replayed(&self, old: RequestId, new: RequestId, last_status: Option<u16>, enqueued_ms: u64);
}

/// The local spool's dead letters, and its outcome store when there is one
/// (the offline CLI replays without one).
pub struct LocalDeadLetters<'a> {
    pub spool: &'a Spool,
    pub outcomes: Option<&'a OutcomeStore>,
}

impl DeadLetters for LocalDeadLetters<'_> {
    fn partitions(&self) -> u32 {
        self.spool.partitions()
    }

    async fn end(&self) -> Result<u64, DlqError> {
        Ok(self.spool.status().dlq.next_offset)
    }

    async fn page(&self, from: u64, n: usize) -> Result<Vec<DeadLetter>, DlqError> {
        Ok(self.spool.dlq_list(from, n).await?)
    }

    async fn get(&self, dlq_offset: u64) -> Result<Option<DeadLetter>, DlqError> {
        Ok(self.spool.dlq_get(dlq_offset).await?)
    }

    async fn enqueue(&self, partition: u32, env: &Envelope) -> Result<u64, DlqError> {
        Ok(self.spool.append(partition, env.encode()).await?)
    }

    async fn remove(&self, dlq_offsets: Vec<u64>) -> Result<u64, DlqError> {
        Ok(self.spool.dlq_purge(&DlqSelection::Offsets(dlq_offsets))?)
    }

    async fn replayed(&self, old: RequestId, new: RequestId, last_status: Option<u16>, enqueued_ms: u64) {
        if let Some(store) = self.outcomes {
            let previous = store.get(old.partition, old.offset);
            store.record(Outcome {
                id: old,
                state: State::Dead,
                attempts: previous.map_or(0, |p| p.attempts),
                upstream_status: last_status,
                at_ms: now_ms(),
                enqueued_ms,
                replayed_as: Some(new),
            });
        }
    }
}
