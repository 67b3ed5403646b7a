//! The spool: a durable, partitioned, append-only log with acks and
//! committed offsets. No HTTP in here; sluice encodes a request into a
//! record at the edge and the drainer consumes partitions.
//!
//! This is the local backend (`spool.backend = "local"`, the default). The
//! other, on NATS JetStream, keeps the same record payload (an
//! [`crate::drain::envelope::Envelope`]) in streams; its layout and
//! invariants open [`crate::jetstream`].
//!
//! # Layout
//!
//! ```text
//! DIR/                       0700
//!   LOCK                     flock(LOCK_EX|LOCK_NB) by the one writer process
//!   MANIFEST                 format version, partition count, spool id, frame ceiling,
//!                            frame key, first keyed segment per log
//!   RESERVE                  256 KiB given up when a full device cannot write COMMITS
//!   log/                     the data log, shared by all partitions
//!     00000000000000000000.seg   segment files, named by sequence number
//!     00000000000000000000.idx   sparse index of a *sealed* segment
//!     COMMITS                committed offset, next offset, acks, per partition
//!   dlq/                     the dead-letter log: same format, one partition
//! ```
//! Every file is created 0600.
//!
//! # Why one shared log and not a file per partition
//!
//! A durable append waits for an fdatasync, so throughput is
//! (appends per fsync) / (fsync time), and appends per fsync is bounded by
//! how many appenders wait concurrently (64 in the target). Measured on this
//! machine (virtio disk, ext4), writing 64 KiB per commit round:
//! one file + one fdatasync took 0.26 ms (python probe) / 0.35 ms
//! (`benches/spool.rs` `fsync_round_64KiB/parallel_files/1`); eight files
//! (one per partition) fdatasynced in parallel took 1.64 ms / 0.75 ms, and
//! sequentially 1.46 ms: the device largely serialises them. With 64
//! appenders over 8 partitions that caps per-partition files at roughly
//! 40-85k records/s on a quiet disk, below the 50k target as soon as the
//! disk is busy; one shared file does one fsync per round whatever the
//! partition mix, and measures ~130k durable 1 KiB appends/s (see
//! BENCHMARKS.md). So all partitions append to one log (RocketMQ's
//! CommitLog shape), and each partition's records are found through an
//! in-memory index: per segment and partition the first/last offset,
//! count, bytes and a sparse list of `(offset, position)` every 64 KiB of
//! that partition's data. The costs, accepted: a partition reader skips
//! the other partitions' frames in the segments it reads (on the header
//! alone, without checksumming them, as long as the skip lands on a
//! plausible header; a gap found after such skips is read again with
//! every frame checked), and retention is by whole segment:
//! a segment is reclaimed when every partition in it is committed past it,
//! so one stuck partition holds back reclaim of segments it has records in.
//!
//! # Record frame (all integers little-endian)
//!
//! Format 2, what every new segment is written in:
//! ```text
//! 0   len        u32   bytes after the checksum: 21 + payload length
//! 4   mac        [16]  SipHash-1-3-128 under the manifest's frame_key, over
//!                      bytes 0..4 (len) and 20..20+len
//! 20  partition  u32
//! 24  offset     u64   dense per partition, never reused
//! 32  timestamp  u64   ms since the Unix epoch, from the injected clock
//! 40  flags      u8    opaque to the spool (the caller's encoding)
//! 41  payload    len - 21 bytes
//! ```
//! Format 1 is the same with a 4-byte CRC32C in place of the MAC (header
//! 29 bytes). A client's body is stored raw, so a body may hold bytes that
//! look like a frame; with CRC32C anyone can make them check out, and a
//! reader resynchronising inside that body after damage would take them
//! for a record of the client's making. The key (random, 128 bits, in the
//! manifest, never shown by any status) makes that impossible. A spool
//! made by format 1 is upgraded at open: its segments stay CRC32C and are
//! read as such; the manifest names, per log, the first keyed segment
//! (`keyed_from`), and the writer rolls to it before its first append.
//!
//! `len` must be in `21..=MAX_BODY_LEN` (64 MiB, a constant of the format,
//! stored in the manifest and checked at open); anything else is
//! corruption, never an allocation. `max_record` only limits new appends.
//! A zero-filled region decodes as `len = 0`: invalid.
//!
//! # Metadata files
//!
//! `MANIFEST`, `COMMITS` and `*.idx` are `magic[8] | crc32c u32 | JSON`,
//! each replaced atomically (temp file, fdatasync, rename, directory
//! fsync). A sealed segment's index is written after the segment is
//! fdatasynced, before the next segment is created.
//!
//! # Invariants
//!
//! - Per partition, offsets are dense and never reused: the writer takes the
//!   next offset from the index, which at open is the larger of the
//!   `COMMITS` `next` and the last offset on disk + 1, and `COMMITS` is
//!   written before any segment is deleted, so the floor survives the
//!   deletion of every segment.
//! - A record never spans two segments; a segment is sealed before a frame
//!   would take it past `segment_bytes`.
//! - Readers only see published bytes (written, and with `always` fsynced)
//!   and only up to each segment's published length.
//! - The committed offset of a partition only moves over a contiguous run of
//!   acked offsets. Acks are persisted by a housekeeper at most
//!   `commit_interval` (100 ms) after an ack, and at `checkpoint`/`close`;
//!   a crash loses at most that window, which means redelivery, not loss.
//! - A segment is deleted only when the committed offsets *as persisted in
//!   `COMMITS`* cover it (never on acks only memory knows), then the
//!   directory is fsynced. So at load, offsets of a partition missing
//!   before its first record on disk were committed, and count as such,
//!   unless a corrupt stretch in a scanned segment could hide them; those
//!   the reader dead-letters.
//! - A reader's position moves only when a batch is handed out: an error
//!   part-way (a segment that cannot be opened, a dead letter that cannot
//!   be written) leaves it where it was, and the next read returns the
//!   same records.
//! - No record is declared lost on a guess: gaps are believed only after a
//!   pass that checksummed every frame it crossed, and after a resync a
//!   frame is taken only if its offset is one the skipped bytes could hold
//!   (`codec::offset_window`). A lost record's dead letter keeps whatever
//!   bytes of its payload could still be read.
//! - The quota (`max_bytes`) counts segments, indexes and metadata (not
//!   the reserve). An append that would exceed it fails with `Full` before
//!   anything is written. The dead-letter log is counted but not refused
//!   (it holds records that are leaving their partitions); it is held to
//!   `dlq_max_bytes` and `dlq_retention` by dropping its oldest letters.
//!
//! # What each fsync mode promises
//!
//! In every mode `append` returns only after the record's bytes are written
//! to the file (so the record survives `kill -9`: the page cache is the
//! kernel's).
//! - `always`: and after an fdatasync covering them. Concurrent appends from
//!   all partitions share it (group commit, see `writer.rs`). Survives power
//!   loss.
//! - `interval(d)`: the writer fdatasyncs at most `d` after a write (and
//!   early past 16 MiB). A power loss can lose up to `d` of acknowledged
//!   appends. The bytes written since the last good fdatasync are kept in
//!   memory, so when an fdatasync fails (and the kernel may have dropped
//!   those pages while marking them clean) they are written again and
//!   fdatasynced before anything else is accepted.
//! - `never`: the OS writes back when it likes (still fsynced on segment
//!   roll and close). When such an fsync fails, the offset range at risk
//!   is logged per partition.
//!
//! # Recovery
//!
//! At open the sealed segments come from their indexes; only the active
//! (last) segment is scanned: the last trusted checkpoint is the seal of
//! the previous segment, so open reads at most `segment_bytes` of data
//! however large the backlog. The scan checks the checksum, partition
//! range and (after a resync) the offset window. An invalid frame followed by a valid one is
//! corruption in the middle and is skipped; an invalid frame with nothing
//! valid after it is a torn or zero-filled tail, and is truncated (counted
//! as `truncated_bytes`). A sealed segment whose index is missing or bad is
//! scanned once and its index rewritten.
//!
//! Corruption further back is found when read: a partition reader that
//! finds a gap in its offsets (the frame failed its checksum and was
//! skipped by resynchronising on the next valid frame) dead-letters each missing
//! offset with reason "corrupt", acks it, counts it as `corrupt_records`,
//! and moves on. The spool never refuses to start or stalls over one bad
//! record. (If the corrupt frame was the last one of its partition in the
//! active segment at open, its offset may be given out again; a later
//! frame, or `COMMITS`, prevents that in every other case.)
//!
//! # I/O errors
//!
//! - A failed write (ENOSPC or other): the file is cut back to the last
//!   published record, the batch's offsets are released, its appends fail
//!   (`Full { cause: NoSpace }` for ENOSPC), and the spool stays usable.
//! - A failed fdatasync: the batch's appends fail with `Failed`, the spool
//!   refuses appends (`Unavailable`) and the writer reopens the active
//!   segment, cuts it back to the published length, writes again what
//!   `interval` mode published since the last good fdatasync, and
//!   fdatasyncs that new state; it retries every 50 ms until that
//!   succeeds. An fsync is never retried on the same file state.
//! - ENOSPC anywhere an append needs space (the segment, a new segment, a
//!   sealed segment's index) is `Full { cause: NoSpace }`: 503 for a
//!   client, never a corrupt spool.
//! - `COMMITS` is replaced through a temporary file, which needs free
//!   blocks. On a device filled to the last block the reserve is deleted
//!   so the commit (which is what lets retention free space) still goes
//!   through; it is written again after the next reclaim. Each log
//!   checkpoints on its own: one log's error never stops the other.
//! - A missing `MANIFEST` next to a log with records, or a damaged one, is
//!   refused at open with an error naming it: sluice never guesses a key.

pub mod codec;
mod dlq;
mod dlq_ops;
mod error;
pub mod fs;
mod index;
mod inspect;
mod log;
mod meta;
mod open;
mod options;
mod partition_reader;
mod reader;
mod reserve;
mod status;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

pub use dlq::DeadLetter;
pub use dlq_ops::DlqSelection;
pub use error::{FullCause, SpoolError};
pub use fs::{Fs, FsFile, RealFs};
pub use inspect::{frame_locations, inspect, FrameLocation};
pub use options::{Clock, FsyncMode, NoopObserver, RecoveredKind, SpoolObserver, SpoolOptions, SystemClock};
pub use partition_reader::PartitionReader;
pub use reader::Record;
pub use status::{DlqStatus, PartitionStatus, SpoolStatus};

use log::Shared;
use meta::Manifest;
use reader::LogReader;
use writer::{AppendReq, Msg};

const MANIFEST_FILE: &str = "MANIFEST";
const LOCK_FILE: &str = "LOCK";
const LOG_DIR: &str = "log";
const DLQ_DIR: &str = "dlq";
const RESERVE_FILE: &str = "RESERVE";
/// How often the housekeeper looks for dead letters past retention when
/// nothing else wakes it.
const DLQ_TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// One log and its writer thread.
struct LogHandle {
    sh: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogHandle {
    fn sender(&self) -> Result<mpsc::Sender<Msg>, SpoolError> {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(SpoolError::Closed)
    }
}

struct Inner {
    opts: SpoolOptions,
    observer: Arc<dyn SpoolObserver>,
    manifest: Manifest,
    main: LogHandle,
    dlq: LogHandle,
    disk_bytes: Arc<AtomicU64>,
    closed: AtomicBool,
    housekeeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The flock on `LOCK`, held until close (or drop).
    lock: Mutex<Option<Box<dyn Send + Sync>>>,
    /// One `dlq_replay` at a time: two would both re-enqueue a letter.
    dlq_replaying: tokio::sync::Mutex<()>,
}

/// An open spool. Cheap to share behind the `Arc` that `open` returns.
pub struct Spool {
    inner: Arc<Inner>,
}

impl Spool {
    pub fn options(&self) -> &SpoolOptions {
        &self.inner.opts
    }

    pub fn partitions(&self) -> u32 {
        self.inner.opts.partitions
    }

    /// Appends a record; returns its offset once it is as durable as the
    /// fsync mode promises.
    pub async fn append(&self, partition: u32, payload: Bytes) -> Result<u64, SpoolError> {
        self.append_with_flags(partition, 0, payload).await
    }

    /// As `append`, with the opaque `flags` byte stored in the frame.
    pub async fn append_with_flags(&self, partition: u32, flags: u8, payload: Bytes) -> Result<u64, SpoolError> {
        let inner = &self.inner;
        inner.main.sh.check_partition(partition)?;
        if payload.len() as u64 > inner.opts.max_record {
            return Err(SpoolError::TooLarge {
                partition,
                len: payload.len() as u64,
                max: inner.opts.max_record,
            });
        }
        // Fail fast without queueing; the writer checks again exactly.
        let used = inner.disk_bytes.load(Ordering::Acquire);
        let frame = codec::frame_len(payload.len()) as u64;
        if used + frame > inner.opts.max_bytes {
            return Err(SpoolError::Full {
                partition,
                cause: FullCause::Quota,
                used,
                limit: inner.opts.max_bytes,
            });
        }
        Self::submit(&inner.main, partition, flags, payload).await
    }

    async fn submit(log: &LogHandle, partition: u32, flags: u8, payload: Bytes) -> Result<u64, SpoolError> {
        if !log.sh.available.load(Ordering::Acquire) {
            return Err(SpoolError::Unavailable);
        }
        let (done, rx) = oneshot::channel();
        log.sender()?
            .send(Msg::Append(AppendReq {
                partition,
                flags,
                payload,
                done,
            }))
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    /// One record by offset (for a status endpoint): `None` if it was
    /// reclaimed, is corrupt, or was never written.
    pub async fn read_at(&self, partition: u32, offset: u64) -> Result<Option<Record>, SpoolError> {
        self.inner.main.sh.check_partition(partition)?;
        read_one(&self.inner.main.sh, partition, offset)
    }

    /// Marks `offset` of `partition` finished. Any order; the committed
    /// offset advances over the contiguous acked run and is persisted
    /// within `commit_interval`.
    pub fn ack(&self, partition: u32, offset: u64) -> Result<(), SpoolError> {
        self.inner.main.sh.ack(partition, offset)
    }

    /// Committed offset (0 for a partition that does not exist).
    pub fn committed(&self, partition: u32) -> u64 {
        let st = self.inner.main.sh.lock();
        st.parts.get(partition as usize).map_or(0, |p| p.committed)
    }

    /// Next offset to be given out (0 for a partition that does not exist).
    pub fn next_offset(&self, partition: u32) -> u64 {
        let st = self.inner.main.sh.lock();
        st.parts.get(partition as usize).map_or(0, |p| p.next)
    }

    /// Whether appends are accepted (false while reopening after an fsync
    /// error, or after close): readiness.
    pub fn is_available(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
            && self.inner.main.sh.available.load(Ordering::Acquire)
            && self.inner.dlq.sh.available.load(Ordering::Acquire)
    }

    /// Persists acked commits now and reclaims fully committed segments
    /// (the housekeeper does this on its own within `commit_interval`).
    pub async fn checkpoint(&self) -> Result<(), SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.checkpoint_blocking())
            .await
            .map_err(|e| SpoolError::io("checkpoint", "", std::io::Error::other(e.to_string())))?
    }

    pub fn status(&self) -> SpoolStatus {
        let inner = &self.inner;
        SpoolStatus {
            dir: inner.opts.dir.clone(),
            spool_id: inner.manifest.spool_id.clone(),
            partitions: status::partition_status(&inner.main.sh, inner.opts.clock.now_ms()),
            dlq: status::dlq_status(&inner.dlq.sh),
            disk_bytes: inner.disk_bytes.load(Ordering::Acquire),
            fsync: Some(inner.opts.fsync.to_string()),
            available: self.is_available(),
        }
    }

    /// Every byte the spool keeps on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes.load(Ordering::Acquire)
    }

    /// fdatasyncs what is written, persists commits, stops the writers.
    /// Appends and reads after close fail with `Closed`, and the directory
    /// lock is released, so the spool can be opened again.
    pub async fn close(&self) -> Result<(), SpoolError> {
        let inner = self.inner.clone();
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(t) = inner.housekeeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        inner.main.sh.closed.send_replace(true);
        inner.dlq.sh.closed.send_replace(true);
        let mut first_err = None;
        for log in [&inner.main, &inner.dlq] {
            if let Ok(tx) = log.sender() {
                let (s, r) = oneshot::channel();
                if tx.send(Msg::Sync(s)).is_ok() {
                    if let Ok(Err(e)) = r.await {
                        first_err.get_or_insert(e);
                    }
                }
            }
            log.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        let res = tokio::task::spawn_blocking(move || {
            for log in [&inner.main, &inner.dlq] {
                if let Some(t) = log.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = t.join();
                }
                log.sh.commits_dirty.store(true, Ordering::Release);
            }
            let res = inner.checkpoint_blocking();
            inner.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
            res
        })
        .await
        .map_err(|e| SpoolError::io("close", "", std::io::Error::other(e.to_string())))?;
        match first_err {
            Some(e) => Err(e),
            None => res,
        }
    }
}

impl Inner {
    /// Checkpoints each log on its own (one log's error must not keep the
    /// other from committing and reclaiming), then trims the dead-letter
    /// log to its bounds. Returns the first error.
    fn checkpoint_blocking(&self) -> Result<(), SpoolError> {
        let main = self.main.sh.checkpoint();
        let dlq = self.dlq.sh.checkpoint();
        let trim = self.trim_dlq();
        main.and(dlq).and(trim).map(|_| ())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the senders ends the writer threads (they fsync what is
        // dirty on the way out); join so the lock outlives them.
        for log in [&self.main, &self.dlq] {
            log.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = log.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}

fn read_one(sh: &Arc<Shared>, partition: u32, offset: u64) -> Result<Option<Record>, SpoolError> {
    if offset >= sh.lock().parts[partition as usize].next {
        return Ok(None);
    }
    let mut r = LogReader::new(sh.clone(), partition, offset);
    let batch = r.read(1, 0)?;
    Ok(batch.records.into_iter().next().filter(|r| r.offset == offset))
}
