use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::codec::{BODY_FIXED_LEN, MAX_BODY_LEN};
use super::error::SpoolError;
use super::fs::{Fs, RealFs};

/// When an append counts as durable. See the promises in `mod.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "interval_ms")]
pub enum FsyncMode {
    /// `append` returns after an fdatasync covering the record.
    Always,
    /// `append` returns after the write; the writer fdatasyncs at most this
    /// long after a write.
    Interval(#[serde(serialize_with = "ser_ms")] Duration),
    /// `append` returns after the write; the OS decides when it hits disk.
    Never,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncMode::Always => f.write_str("always"),
            FsyncMode::Interval(d) => write!(f, "interval ({} ms)", d.as_millis()),
            FsyncMode::Never => f.write_str("never"),
        }
    }
}

/// Wall-clock source for record timestamps, injected so tests control age.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }
}

/// What recovery did, for `sluice_spool_recovered_total{what}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredKind {
    /// Records found by the tail scan at open.
    Records,
    /// Bytes cut from torn or zero-filled tails.
    TruncatedBytes,
    /// Records found corrupt (at read) and dead-lettered.
    CorruptRecords,
}

impl RecoveredKind {
    pub fn label(self) -> &'static str {
        match self {
            RecoveredKind::Records => "records",
            RecoveredKind::TruncatedBytes => "truncated_bytes",
            RecoveredKind::CorruptRecords => "corrupt_records",
        }
    }
}

/// Hooks for metrics, so the spool does not depend on a metrics crate.
/// Called from the writer thread and readers: keep them cheap.
pub trait SpoolObserver: Send + Sync + 'static {
    fn fsync_done(&self, _d: Duration) {}
    fn appended(&self, _partition: u32, _bytes: u64) {}
    fn recovered(&self, _what: RecoveredKind, _n: u64) {}
    /// Dead letters dropped to keep the dead-letter log within
    /// `dlq_max_bytes` (`reason` "max_bytes") or `dlq_retention`
    /// ("retention").
    fn dlq_dropped(&self, _reason: &'static str, _n: u64) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;
impl SpoolObserver for NoopObserver {}

/// How to open a spool. Start from [`SpoolOptions::new`] and set fields.
#[derive(Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Fixed at creation; reopening with another count is an error.
    pub partitions: u32,
    /// Quota on every byte the spool keeps on disk.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started before it would exceed this.
    pub segment_bytes: u64,
    /// Largest payload accepted by `append` (not a format limit).
    pub max_record: u64,
    pub fsync: FsyncMode,
    /// How long acks may wait before the committed offsets are persisted
    /// (a lagging commit only means redelivery after a crash).
    pub commit_interval: Duration,
    /// Bound on the dead-letter log's records; past it the oldest are
    /// dropped. `None`: `max_bytes` / 10.
    pub dlq_max_bytes: Option<u64>,
    /// Dead letters older than this are dropped.
    pub dlq_retention: Duration,
    pub fs: Arc<dyn Fs>,
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for SpoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolOptions")
            .field("dir", &self.dir)
            .field("partitions", &self.partitions)
            .field("max_bytes", &self.max_bytes)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record", &self.max_record)
            .field("fsync", &self.fsync)
            .field("commit_interval", &self.commit_interval)
            .field("dlq_max_bytes", &self.dlq_max_bytes())
            .field("dlq_retention", &self.dlq_retention)
            .finish_non_exhaustive()
    }
}

impl Default for SpoolOptions {
    /// The SPEC defaults in `./sluice-spool`.
    fn default() -> Self {
        SpoolOptions::new("./sluice-spool")
    }
}

impl SpoolOptions {
    /// The SPEC defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            dir: dir.into(),
            partitions: 8,
            max_bytes: 10 << 30,
            segment_bytes: 64 << 20,
            max_record: 1 << 20,
            fsync: FsyncMode::Always,
            commit_interval: Duration::from_millis(100),
            dlq_max_bytes: None,
            dlq_retention: Duration::from_secs(7 * 24 * 3600),
            fs: Arc::new(RealFs),
            clock: Arc::new(SystemClock),
        }
    }

    /// The dead-letter log's bound in effect.
    pub fn dlq_max_bytes(&self) -> u64 {
        self.dlq_max_bytes.unwrap_or(self.max_bytes / 10)
    }

    pub(crate) fn validate(&self) -> Result<(), SpoolError> {
        let bad = |field, reason: String| Err(SpoolError::InvalidOption { field, reason });
        if self.partitions == 0 || self.partitions > 4096 {
            return bad("partitions", format!("{} is not in 1..=4096", self.partitions));
        }
        let ceiling = (MAX_BODY_LEN as usize - BODY_FIXED_LEN) as u64;
        if self.max_record == 0 || self.max_record > ceiling {
            return bad(
                "max_record",
                format!("{} is not in 1..={ceiling} (the format ceiling)", self.max_record),
            );
        }
        let frame = super::codec::frame_len(self.max_record as usize) as u64;
        if self.segment_bytes < frame {
            return bad(
                "segment_bytes",
                format!(
                    "{} cannot hold one record of max_record ({} bytes framed)",
                    self.segment_bytes, frame
                ),
            );
        }
        // Open reads the active segment whole to scan it: keep that bounded.
        if self.segment_bytes > 1 << 30 {
            return bad("segment_bytes", format!("{} is above 1 GiB", self.segment_bytes));
        }
        if self.max_bytes < self.segment_bytes {
            return bad(
                "max_bytes",
                format!("{} is below segment_bytes ({})", self.max_bytes, self.segment_bytes),
            );
        }
        if let FsyncMode::Interval(d) = self.fsync {
            if d.is_zero() {
                return bad("fsync_interval", "must be above zero".into());
            }
        }
        Ok(())
    }
}
