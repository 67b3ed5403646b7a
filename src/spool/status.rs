//! A point-in-time view of a spool, for `/admin/spool`, metrics and the
//! offline `sluice spool status` command.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::log::Shared;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionStatus {
    pub partition: u32,
    /// Lowest offset still on disk.
    pub first_offset: u64,
    /// Offset the next append gets.
    pub next_offset: u64,
    /// Every offset below it is finished; replay resumes here.
    pub committed_offset: u64,
    /// Records at or above the committed offset not yet acked.
    pub backlog_records: u64,
    /// Frame bytes at or above the committed offset.
    pub backlog_bytes: u64,
    /// Timestamp of the first unacked record.
    pub oldest_timestamp_ms: Option<u64>,
    pub oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DlqStatus {
    /// Dead letters not purged.
    pub records: u64,
    pub bytes: u64,
    pub next_offset: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpoolStatus {
    pub dir: PathBuf,
    pub spool_id: String,
    pub partitions: Vec<PartitionStatus>,
    pub dlq: DlqStatus,
    /// Every byte the spool keeps on disk (segments, indexes, metadata).
    pub disk_bytes: u64,
    /// The running spool's fsync mode; `None` from an offline inspection.
    pub fsync: Option<String>,
    pub available: bool,
}

impl SpoolStatus {
    pub fn backlog_records(&self) -> u64 {
        self.partitions.iter().map(|p| p.backlog_records).sum()
    }
    pub fn backlog_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.backlog_bytes).sum()
    }
}

pub(crate) fn partition_status(sh: &Shared, now_ms: u64) -> Vec<PartitionStatus> {
    (0..sh.partitions)
        .map(|partition| {
            let (first, next, committed, backlog) = {
                let st = sh.lock();
                let ps = &st.parts[partition as usize];
                let backlog = ps.next - ps.committed - ps.acked.len() as u64;
                (Shared::first_offset(&st, partition), ps.next, ps.committed, backlog)
            };
            // The first unacked record is the committed offset (unless it
            // is lost, in which case no age is shown). Read outside the lock.
            let found = if backlog > 0 {
                sh.locate_header(partition, committed)
            } else {
                None
            };
            let bytes = {
                let st = sh.lock();
                Shared::bytes_from(&st, partition, committed, found.map(|(s, _, b)| (s, b)))
            };
            let ts = found.map(|f| f.1);
            PartitionStatus {
                partition,
                first_offset: first,
                next_offset: next,
                committed_offset: committed,
                backlog_records: backlog,
                backlog_bytes: bytes,
                oldest_timestamp_ms: ts,
                oldest_age_seconds: ts.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
            }
        })
        .collect()
}

pub(crate) fn dlq_status(sh: &Shared) -> DlqStatus {
    let committed = sh.lock().parts[0].committed;
    // Exact from the first dead letter on (a header walk outside the lock),
    // since `dlq_max_bytes` is enforced against it.
    let found = sh.locate_header(0, committed);
    let st = sh.lock();
    let ps = &st.parts[0];
    DlqStatus {
        records: ps.next - ps.committed - ps.acked.len() as u64,
        bytes: Shared::bytes_from(&st, 0, ps.committed, found.map(|(s, _, b)| (s, b))),
        next_offset: ps.next,
    }
}

impl fmt::Display for SpoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spool {} ({})", self.dir.display(), self.spool_id)?;
        writeln!(
            f,
            "disk {} bytes, fsync {}, {}",
            self.disk_bytes,
            self.fsync.as_deref().unwrap_or("-"),
            if self.available {
                "available"
            } else {
                "UNAVAILABLE (reopening)"
            }
        )?;
        writeln!(
            f,
            "{:>9} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10}",
            "partition", "first", "next", "committed", "backlog", "bytes", "oldest_s"
        )?;
        for p in &self.partitions {
            let age = p
                .oldest_age_seconds
                .map_or_else(|| "-".to_string(), |a| format!("{a:.1}"));
            writeln!(
                f,
                "{:>9} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10}",
                p.partition, p.first_offset, p.next_offset, p.committed_offset, p.backlog_records, p.backlog_bytes, age
            )?;
        }
        writeln!(
            f,
            "total backlog {} records, {} bytes",
            self.backlog_records(),
            self.backlog_bytes()
        )?;
        write!(f, "dead letters {} ({} bytes)", self.dlq.records, self.dlq.bytes)
    }
}
