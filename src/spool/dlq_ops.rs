//! Operations on the dead-letter log of an open spool: moving a record
//! there, listing, reading, purging and replaying dead letters. The
//! envelope they are stored in is [`super::dlq`].

use super::codec;
use super::dlq::{self, DeadLetter};
use super::reader::{LogReader, Record};
use super::{read_one, status, Inner, Spool, SpoolError};

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
        let at = Self::submit(&self.inner.dlq, 0, 0, dlq::encode(rec, reason, last_status)).await?;
        // Let the housekeeper hold the dead-letter log to its bounds.
        self.inner.dlq.sh.housekeep.notify_one();
        Ok(at)
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
    /// One replay at a time, selecting under the lock, so two callers never
    /// both re-enqueue a letter (`drain::dlq` has its own lock for the
    /// request-level replay the admin API and CLI use).
    pub async fn dlq_replay(&self, which: &DlqSelection) -> Result<Vec<(u64, u32, u64)>, SpoolError> {
        let _one_at_a_time = self.inner.dlq_replaying.lock().await;
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

impl Inner {
    /// Drops the oldest dead letters while the dead-letter log holds more
    /// than `dlq_max_bytes` of them or they are older than
    /// `dlq_retention`; each one is logged and counted. Without a bound the
    /// dead-letter log, which the quota counts but never refuses, could
    /// take the whole volume and stop intake for good.
    pub(crate) fn trim_dlq(&self) -> Result<(), SpoolError> {
        let sh = &self.dlq.sh;
        // The housekeeper and an explicit checkpoint may trim at once: one
        // at a time, or a dead letter would be dropped (and counted) twice.
        let _one_at_a_time = sh.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.opts.dlq_max_bytes();
        let cutoff = self
            .opts
            .clock
            .now_ms()
            .saturating_sub(self.opts.dlq_retention.as_millis() as u64);
        let mut over = status::dlq_status(sh).bytes.saturating_sub(limit);
        let (committed, next) = {
            let st = sh.lock();
            (st.parts[0].committed, st.parts[0].next)
        };
        if committed >= next {
            return Ok(());
        }
        if over == 0 && sh.locate_header(0, committed).is_none_or(|(_, ts, _)| ts >= cutoff) {
            return Ok(());
        }
        let mut reader = LogReader::new(sh.clone(), 0, committed);
        let (mut by_bytes, mut by_age) = (0u64, 0u64);
        'pages: while reader.position() < next {
            let batch = reader.read(256, 4 << 20)?;
            // Corrupt dead letters hold nothing to keep.
            for l in &batch.lost {
                sh.ack(0, l.offset)?;
            }
            if batch.records.is_empty() && batch.lost.is_empty() {
                break;
            }
            for rec in &batch.records {
                let frame = codec::frame_len(rec.payload.len()) as u64;
                let purged = sh.lock().parts[0].acked.contains(&rec.offset);
                if !purged {
                    if over > 0 {
                        by_bytes += 1;
                    } else if rec.timestamp_ms < cutoff {
                        by_age += 1;
                    } else {
                        break 'pages;
                    }
                    sh.ack(0, rec.offset)?;
                }
                over = over.saturating_sub(frame);
            }
        }
        for (reason, n) in [("max_bytes", by_bytes), ("retention", by_age)] {
            if n > 0 {
                tracing::warn!(
                    reason,
                    dropped = n,
                    dlq_max_bytes = limit,
                    "oldest dead letters dropped"
                );
                self.observer.dlq_dropped(reason, n);
            }
        }
        Ok(())
    }
}
