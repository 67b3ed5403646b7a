//! Operations on the dead-letter log of an open spool: moving a record
//! there, listing, reading, purging and replaying dead letters. The
//! envelope they are stored in is [`super::dlq`].

use super::dlq::{self, DeadLetter};
use super::reader::{LogReader, Record};
use super::{read_one, status, Spool, SpoolError};

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSelection {
    All,
    /// By `DeadLetter::dlq_offset`.
    Offsets(Vec<u64>),
}

impl Spool {
    /// Appends `rec` to the dead-letter log with `reason` and the last
    /// upstream status. The caller acks the original afterwards.
    pub async fn dead_letter(&self, rec: &Record, reason: &str, last_status: Option<u16>) -> Result<u64, SpoolError> {
        Self::submit(&self.inner.dlq, 0, 0, dlq::encode(rec, reason, last_status)).await
    }

    /// Up to `limit` dead letters not purged, from `from` (a dlq offset).
    pub async fn dlq_list(&self, from: u64, limit: usize) -> Result<Vec<DeadLetter>, SpoolError> {
        let sh = self.inner.dlq.sh.clone();
        let (start, acked, next) = {
            let st = sh.lock();
            let p = &st.parts[0];
            (from.max(p.committed), p.acked.clone(), p.next)
        };
        let mut out = Vec::new();
        let mut r = LogReader::new(sh, 0, start);
        while out.len() < limit && r.position() < next {
            let batch = r.read(limit - out.len(), 1 << 20)?;
            if batch.records.is_empty() && batch.lost.is_empty() {
                break;
            }
            out.extend(
                batch
                    .records
                    .iter()
                    .filter(|rec| !acked.contains(&rec.offset))
                    .filter_map(dlq::decode),
            );
        }
        Ok(out)
    }

    /// One dead letter by dlq offset.
    pub async fn dlq_get(&self, dlq_offset: u64) -> Result<Option<DeadLetter>, SpoolError> {
        let sh = &self.inner.dlq.sh;
        {
            let st = sh.lock();
            let p = &st.parts[0];
            if dlq_offset < p.committed || p.acked.contains(&dlq_offset) {
                return Ok(None);
            }
        }
        Ok(read_one(sh, 0, dlq_offset)?.as_ref().and_then(dlq::decode))
    }

    /// Drops dead letters; returns how many were dropped.
    pub fn dlq_purge(&self, which: &DlqSelection) -> Result<u64, SpoolError> {
        let sh = &self.inner.dlq.sh;
        let offsets: Vec<u64> = match which {
            DlqSelection::All => {
                let st = sh.lock();
                let p = &st.parts[0];
                (p.committed..p.next).filter(|o| !p.acked.contains(o)).collect()
            }
            DlqSelection::Offsets(v) => v.clone(),
        };
        let before = status::dlq_status(sh).records;
        for o in offsets {
            match sh.ack(0, o) {
                Ok(()) | Err(SpoolError::OffsetOutOfRange { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(before - status::dlq_status(sh).records)
    }

    /// Re-enqueues dead letters at the tail of their partitions (new
    /// offsets), then purges them. Returns `(dlq_offset, partition, new
    /// offset)` for each one replayed.
    pub async fn dlq_replay(&self, which: &DlqSelection) -> Result<Vec<(u64, u32, u64)>, SpoolError> {
        let letters = match which {
            DlqSelection::All => self.dlq_list(0, usize::MAX).await?,
            DlqSelection::Offsets(v) => {
                let mut out = Vec::new();
                for o in v {
                    if let Some(d) = self.dlq_get(*o).await? {
                        out.push(d);
                    }
                }
                out
            }
        };
        let mut done = Vec::new();
        for d in letters {
            let p = d.partition.min(self.partitions() - 1);
            let off = self.append_with_flags(p, d.flags, d.payload.clone()).await?;
            self.inner.dlq.sh.ack(0, d.dlq_offset)?;
            done.push((d.dlq_offset, p, off));
        }
        Ok(done)
    }
}
