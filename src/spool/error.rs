use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why an append found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullCause {
    /// The spool's own `max_bytes` quota.
    Quota,
    /// The device said ENOSPC (or EDQUOT) on write.
    NoSpace,
}

/// Every way the spool fails, with what a caller needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Nothing was written; retry once space is freed (acks reclaim it).
    #[error("spool full ({cause:?}) appending to partition {partition}: {used} of {limit} bytes in use")]
    Full {
        partition: u32,
        cause: FullCause,
        used: u64,
        limit: u64,
    },
    #[error("record of {len} bytes for partition {partition} is over max_record ({max} bytes)")]
    TooLarge { partition: u32, len: u64, max: u64 },
    #[error("partition {partition} does not exist (spool has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("offset {offset} of partition {partition} has not been written (next is {next})")]
    OffsetOutOfRange { partition: u32, offset: u64, next: u64 },
    /// The fsync covering this append failed; the append is not durable and
    /// was cut from the file. The spool is reopening.
    #[error("fsync of {path} failed; append not durable")]
    Failed {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The spool is reopening after an fsync error and refuses appends.
    #[error("spool unavailable: reopening after an fsync error")]
    Unavailable,
    #[error("spool is closed")]
    Closed,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool directory {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("{path} is not a spool: {reason}")]
    NotASpool { path: PathBuf, reason: String },
    #[error("spool at {path} was created with {on_disk} partitions, but {requested} were configured; partitions are fixed when a spool is created")]
    PartitionMismatch {
        path: PathBuf,
        on_disk: u32,
        requested: u32,
    },
    #[error("{path} is corrupt: {reason}")]
    CorruptMeta { path: PathBuf, reason: String },
    #[error("invalid spool option {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True for errors that a later retry of the same append may not hit
    /// (full, reopening): callers answer 503 with Retry-After.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SpoolError::Full { .. } | SpoolError::Unavailable | SpoolError::Failed { .. }
        )
    }
}
