//! The public reader of one partition ([`PartitionReader`]): waits for
//! records and turns gaps left by corrupt frames into dead letters, so a
//! bad record never stalls its partition. The byte-level reading is
//! [`super::reader`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dlq;
use super::reader::{LogReader, Lost, Record};
use super::{Inner, RecoveredKind, Spool, SpoolError};

impl Spool {
    /// A reader of `partition` starting at its committed offset.
    ///
    /// Panics if the partition does not exist (partitions are fixed and
    /// known from `partitions()`).
    pub fn reader(&self, partition: u32) -> PartitionReader {
        let sh = self.inner.main.sh.clone();
        assert!(
            partition < sh.partitions,
            "partition {partition} does not exist (spool has {})",
            sh.partitions
        );
        let p = partition;
        let from = sh.lock().parts[p as usize].committed;
        PartitionReader {
            inner: self.inner.clone(),
            log: LogReader::new(sh, p, from),
            dead_letter_lost: true,
        }
    }
}

/// Reads one partition in offset order. Created by [`Spool::reader`].
pub struct PartitionReader {
    inner: Arc<Inner>,
    log: LogReader,
    /// Gaps (corrupt records) go to the dead-letter log with reason
    /// "corrupt" and are acked, so the committed offset moves past them.
    dead_letter_lost: bool,
}

impl PartitionReader {
    /// The offset the next record read will have (at least).
    pub fn position(&self) -> u64 {
        self.log.position()
    }

    /// Moves to `offset`; offsets already reclaimed are skipped.
    pub fn seek(&mut self, offset: u64) {
        self.log.seek(offset);
    }

    /// The next records in order, up to `max_records` and about
    /// `max_bytes` of payload (at least one record). Waits, without
    /// polling, until one exists. The read itself is a few `pread`s of a
    /// 256 KiB window done inline (the data is normally in the page cache).
    ///
    /// The position moves only when a batch is handed out: on an error
    /// (a segment that cannot be opened, a dead letter that cannot be
    /// written) the same records are read again by the next call. Records
    /// already acked (out of order, before a restart) are not handed out
    /// again.
    pub async fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, SpoolError> {
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(SpoolError::Closed);
            }
            self.log.wait().await?;
            let before = self.log.position();
            let mut batch = self.log.read(max_records, max_bytes)?;
            if !batch.lost.is_empty() {
                if let Err(e) = self.handle_lost(&batch.lost).await {
                    self.log.seek(before);
                    return Err(e);
                }
            }
            {
                let st = self.inner.main.sh.lock();
                let p = &st.parts[self.log_partition() as usize];
                batch
                    .records
                    .retain(|r| r.offset >= p.committed && !p.acked.contains(&r.offset));
            }
            if !batch.records.is_empty() {
                return Ok(batch.records);
            }
        }
    }

    async fn handle_lost(&self, lost: &[Lost]) -> Result<(), SpoolError> {
        let sh = &self.inner.main.sh;
        let partition = self.log_partition();
        // Already handled (dead-lettered and acked) before a restart.
        let lost: Vec<&Lost> = {
            let st = sh.lock();
            let p = &st.parts[partition as usize];
            lost.iter()
                .filter(|l| l.offset >= p.committed && !p.acked.contains(&l.offset))
                .collect()
        };
        if lost.is_empty() {
            return Ok(());
        }
        tracing::error!(
            partition,
            first = lost[0].offset,
            count = lost.len(),
            "corrupt records skipped; dead-lettered"
        );
        self.inner
            .observer
            .recovered(RecoveredKind::CorruptRecords, lost.len() as u64);
        for l in lost {
            let offset = l.offset;
            if self.dead_letter_lost {
                // What the damaged frame still held goes with it: an
                // operator can look at it, and the status lookup can still
                // match the request's id against it.
                let rec = Record {
                    partition,
                    offset,
                    timestamp_ms: l.timestamp_ms,
                    flags: 0,
                    payload: l.raw.clone(),
                };
                Spool::submit(&self.inner.dlq, 0, 0, dlq::encode(&rec, "corrupt", None)).await?;
                crate::crash::point("dlq_move");
            }
            sh.ack(partition, offset)?;
        }
        Ok(())
    }

    fn log_partition(&self) -> u32 {
        self.log.partition()
    }
}
