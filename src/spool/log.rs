//! One log: a directory of segment files shared by a fixed set of
//! partitions, its in-memory index, acks and committed offsets, retention.
//! The spool has two: the data log (`log/`) and the dead-letter log (`dlq/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use super::codec::{self, FrameFormat};
use super::error::SpoolError;
use super::fs::{is_no_space, Fs};
use super::index::{idx_path, parse_name, seg_path, PartSpan, SegMeta};
use super::meta::{self, Commits, PartitionCommit, COMMITS_MAGIC, INDEX_MAGIC};
use super::reserve::Reserve;

pub(crate) const COMMITS_FILE: &str = "COMMITS";

#[derive(Debug, Default)]
pub(crate) struct PartState {
    /// Next offset to be published; readers see offsets below it.
    pub next: u64,
    pub committed: u64,
    /// Acked offsets above `committed`.
    pub acked: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// By id; the last one is the active segment the writer appends to.
    pub segs: BTreeMap<u64, SegMeta>,
    pub parts: Vec<PartState>,
}

/// Which frame format each segment of a log is in: segments from
/// `keyed_from` on are format 2 (keyed), older ones format 1 (CRC32C).
#[derive(Clone, Copy)]
pub(crate) struct Formats {
    pub keyed_from: u64,
    pub key: [u8; 16],
}

impl Formats {
    pub fn of(&self, seg: u64) -> FrameFormat {
        if seg >= self.keyed_from {
            FrameFormat::Keyed(self.key)
        } else {
            FrameFormat::Crc32c
        }
    }
}

/// What the log shares between the writer thread, readers and the spool.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub partitions: u32,
    pub fs: Arc<dyn Fs>,
    pub formats: Formats,
    pub state: Mutex<LogState>,
    /// The committed offsets as last written to `COMMITS`: retention
    /// deletes only what these cover, never what only memory knows.
    pub persisted: Mutex<Vec<u64>>,
    /// Freed when `COMMITS` cannot be written for want of space, so a full
    /// disk can still commit and reclaim (shared by both logs).
    pub reserve: Arc<Reserve>,
    /// Published next offset per partition: readers at the tail wait on it.
    pub published: Vec<watch::Sender<u64>>,
    /// Bytes on disk for the whole spool (both logs and metadata), shared.
    pub disk_bytes: Arc<AtomicU64>,
    /// False while reopening after an fsync error.
    pub available: AtomicBool,
    pub commits_dirty: AtomicBool,
    /// Serialises checkpoints: the housekeeper and an explicit
    /// `checkpoint`/`close` must not write `COMMITS` (through the same
    /// temporary file) at once, nor an older snapshot after a newer one.
    pub checkpointing: Mutex<()>,
    /// Wakes the housekeeper to persist commits and reclaim segments.
    pub housekeep: Arc<Notify>,
    /// Set at close, so readers waiting at the tail return `Closed`.
    pub closed: watch::Sender<bool>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves consistent data (every
        // update is a few assignments), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn check_partition(&self, partition: u32) -> Result<(), SpoolError> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(SpoolError::NoSuchPartition {
                partition,
                partitions: self.partitions,
            })
        }
    }

    pub fn ack(&self, partition: u32, offset: u64) -> Result<(), SpoolError> {
        self.check_partition(partition)?;
        let mut st = self.lock();
        let p = &mut st.parts[partition as usize];
        if offset >= p.next {
            return Err(SpoolError::OffsetOutOfRange {
                partition,
                offset,
                next: p.next,
            });
        }
        if offset < p.committed || !p.acked.insert(offset) {
            return Ok(());
        }
        while p.acked.remove(&p.committed) {
            p.committed += 1;
        }
        drop(st);
        self.commits_dirty.store(true, Ordering::Release);
        self.housekeep.notify_one();
        Ok(())
    }

    /// Persists the commits if acks changed them, then deletes sealed
    /// segments wholly below the *persisted* committed offsets, so after a
    /// crash no commit on disk points below a deleted segment's records.
    pub fn checkpoint(&self) -> Result<u64, SpoolError> {
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        if self.commits_dirty.swap(false, Ordering::AcqRel) {
            let commits = self.snapshot_commits();
            if let Err(e) = self.store_commits(&commits) {
                self.commits_dirty.store(true, Ordering::Release);
                return Err(e);
            }
            *self.persisted.lock().unwrap_or_else(|p| p.into_inner()) =
                commits.partitions.iter().map(|p| p.committed).collect();
            crate::crash::point("checkpoint");
        }
        let freed = self.reclaim()?;
        if freed > 0 {
            self.reserve.restore(&*self.fs);
        }
        Ok(freed)
    }

    /// Writes `COMMITS` through a temporary file. That needs free blocks;
    /// on a full device the reserve is given up so the commit (which is
    /// what lets retention free space) can still be written.
    fn store_commits(&self, commits: &Commits) -> Result<(), SpoolError> {
        let path = self.dir.join(COMMITS_FILE);
        match meta::store(&*self.fs, COMMITS_MAGIC, &path, commits) {
            Err(SpoolError::Io { source, .. }) if is_no_space(&source) && self.reserve.release(&*self.fs) => {
                tracing::warn!(dir = %self.dir.display(), "device full: released the spool's reserve to write commits");
                meta::store(&*self.fs, COMMITS_MAGIC, &path, commits)
            }
            other => other,
        }
    }

    pub fn snapshot_commits(&self) -> Commits {
        let st = self.lock();
        Commits {
            partitions: st
                .parts
                .iter()
                .map(|p| PartitionCommit {
                    committed: p.committed,
                    next: p.next,
                    acked: p.acked.iter().copied().collect(),
                })
                .collect(),
        }
    }

    fn reclaim(&self) -> Result<u64, SpoolError> {
        let persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let doomed: Vec<u64> = {
            let mut st = self.lock();
            let ids: Vec<u64> = st
                .segs
                .values()
                .take_while(|s| {
                    s.sealed
                        && s.parts
                            .iter()
                            .all(|(p, span)| persisted.get(*p as usize).is_some_and(|c| *c > span.last))
                })
                .map(|s| s.id)
                .collect();
            for id in &ids {
                st.segs.remove(id);
            }
            ids
        };
        let mut freed = 0;
        for id in &doomed {
            for path in [seg_path(&self.dir, *id), idx_path(&self.dir, *id)] {
                let len = self.fs.open_read(&path).and_then(|f| f.size()).unwrap_or(0);
                match self.fs.remove_file(&path) {
                    Ok(()) => {
                        freed += len;
                        crate::crash::point("retention");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SpoolError::io("remove", path, e)),
                }
            }
        }
        if !doomed.is_empty() {
            self.disk_bytes.fetch_sub(freed, Ordering::AcqRel);
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| SpoolError::io("fsync dir", &self.dir, e))?;
            tracing::debug!(dir = %self.dir.display(), segments = doomed.len(), freed, "reclaimed segments");
        }
        Ok(freed)
    }

    /// Lowest offset of `partition` still on disk.
    pub fn first_offset(st: &LogState, partition: u32) -> u64 {
        st.segs
            .values()
            .filter_map(|s| s.parts.get(&partition))
            .map(|s| s.first)
            .next()
            .unwrap_or(st.parts[partition as usize].next)
    }

    /// Frame bytes of `partition` at or above `from` (approximate to one
    /// sparse interval inside the segment holding `from`).
    /// `exact` is `(segment, bytes before `from` in it)` from
    /// `locate_header`, when known.
    pub fn bytes_from(st: &LogState, partition: u32, from: u64, exact: Option<(u64, u64)>) -> u64 {
        st.segs
            .values()
            .filter_map(|s| Some((s.id, s.parts.get(&partition)?)))
            .map(|(id, span): (u64, &PartSpan)| {
                if span.last < from {
                    0
                } else if span.first >= from {
                    span.bytes
                } else {
                    match exact {
                        Some((seg, before)) if seg == id => span.bytes - before,
                        _ => span.bytes - span.seek(from).2,
                    }
                }
            })
            .sum()
    }

    /// Walks the headers (not the payloads) of `partition` from the
    /// sparse entry before `offset` to the record itself, for the oldest
    /// unacked record's timestamp and the exact backlog bytes. Returns
    /// `(segment id, timestamp, this partition's bytes before the record in
    /// that segment)`; `None` if the record is missing or corrupt. The CRC is
    /// not checked: this is a status figure.
    pub fn locate_header(&self, partition: u32, offset: u64) -> Option<(u64, u64, u64)> {
        let (seg, mut pos, mut cum, end) = {
            let st = self.lock();
            let s = st
                .segs
                .values()
                .find(|s| s.parts.get(&partition).is_some_and(|p| p.last >= offset))?;
            let (_, pos, cum) = s.parts[&partition].seek(offset);
            (s.id, pos, cum, s.len)
        };
        let f = self.fs.open_read(&seg_path(&self.dir, seg)).ok()?;
        let format = self.formats.of(seg);
        let header_len = format.header_len();
        let mut hdr = [0u8; 64];
        let hdr = &mut hdr[..header_len];
        while pos + header_len as u64 <= end {
            if f.read_at(hdr, pos).ok()? < header_len {
                return None;
            }
            let h = format.header(hdr)?;
            let frame = (format.prefix_len() + h.body_len as usize) as u64;
            if h.partition == partition && h.offset >= offset {
                return (h.offset == offset).then_some((seg, h.timestamp_ms, cum));
            }
            if h.partition == partition {
                cum += frame;
            }
            pos += frame;
        }
        None
    }
}

/// What `load` found, for logging and the observer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LoadReport {
    pub tail_records: u64,
    pub truncated_bytes: u64,
    pub corrupt_regions: u64,
    pub rebuilt_indexes: u64,
    pub disk_bytes: u64,
    /// Offsets counted as committed because they lay wholly before the
    /// oldest segment on disk (deleted on commits a crash kept from disk).
    pub committed_gap: u64,
}

/// What scanning one segment found, besides its index.
struct SegScan {
    scan: codec::Scan,
    file_len: u64,
    /// Partitions for which corrupt bytes came before their first valid
    /// frame in this segment (or anywhere in it, if they have none): a
    /// missing offset of theirs may be in here.
    unclear: BTreeSet<u32>,
}

/// Scans a whole segment, checksumming every frame, to rebuild its index.
/// `expected` is each partition's next offset as far as earlier segments
/// tell (`None`: no earlier record seen).
fn scan_segment(
    fs: &dyn Fs,
    dir: &Path,
    id: u64,
    partitions: u32,
    format: FrameFormat,
    expected: &mut [Option<u64>],
) -> Result<(SegMeta, SegScan), SpoolError> {
    let path = seg_path(dir, id);
    let f = fs.open_read(&path).map_err(|e| SpoolError::io("open", &path, e))?;
    let file_len = f.size().map_err(|e| SpoolError::io("stat", &path, e))?;
    let mut buf = vec![0u8; file_len as usize];
    let n = f.read_at(&mut buf, 0).map_err(|e| SpoolError::io("read", &path, e))?;
    buf.truncate(n);
    let mut seg = SegMeta::new(id);
    let mut seen = vec![false; partitions as usize];
    let mut unclear = BTreeSet::new();
    let scan = format.scan(&buf, |pos, r, skipped| {
        if r.partition >= partitions {
            return false;
        }
        let p = r.partition as usize;
        if skipped > 0 {
            if let Some(e) = expected[p] {
                if !codec::offset_window(format, e, skipped).contains(&r.offset) {
                    return false;
                }
            }
            // Whatever the garbage hid may belong to any partition not yet
            // seen in this segment.
            for (q, s) in seen.iter().enumerate() {
                if !s {
                    unclear.insert(q as u32);
                }
            }
        }
        seen[p] = true;
        let e = expected[p].get_or_insert(0);
        // A frame below the partition's next offset is a stale duplicate,
        // never a record to deliver again.
        if r.offset >= *e {
            *e = r.offset + 1;
            seg.add(
                r.partition,
                r.offset,
                pos as u64,
                r.frame_len(format) as u64,
                r.timestamp_ms,
            );
        }
        true
    });
    if scan.valid_end < buf.len() {
        // A torn tail may have held any partition's next record.
        for (q, s) in seen.iter().enumerate() {
            if !s {
                unclear.insert(q as u32);
            }
        }
    }
    seg.len = scan.valid_end as u64;
    Ok((
        seg,
        SegScan {
            scan,
            file_len,
            unclear,
        },
    ))
}

/// Loads a log directory. Sealed segments come from their index files; only
/// the active (last) segment is scanned, so opening a large backlog reads at
/// most `segment_bytes` of data. Unless `read_only`, a torn or zero-filled
/// tail is truncated, missing indexes are rebuilt and an empty log gets its
/// first segment.
pub(crate) fn load(
    fs: &dyn Fs,
    dir: &Path,
    partitions: u32,
    formats: Formats,
    read_only: bool,
) -> Result<(LogState, LoadReport), SpoolError> {
    let mut report = LoadReport::default();
    if !read_only {
        fs.create_dir_all(dir)
            .map_err(|e| SpoolError::io("create dir", dir, e))?;
    }
    let names = fs.list(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    let mut seg_ids: Vec<u64> = names.iter().filter_map(|n| parse_name(n, "seg")).collect();
    seg_ids.sort_unstable();
    if !read_only {
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = fs.remove_file(&dir.join(n));
        }
        // An index without its segment is left over from a reclaim that
        // crashed between the two removes.
        for n in &names {
            if let Some(id) = parse_name(n, "idx") {
                if seg_ids.binary_search(&id).is_err() {
                    let _ = fs.remove_file(&dir.join(n));
                }
            }
        }
    }
    let commits_path = dir.join(COMMITS_FILE);
    let commits: Commits = if fs.exists(&commits_path) {
        match meta::load(fs, COMMITS_MAGIC, &commits_path) {
            Ok(c) => c,
            Err(e) => {
                // Both the old and new commit files are written whole and
                // renamed, so this is media corruption; starting from zero
                // redelivers but loses nothing.
                tracing::error!(error = %e, "commit file unreadable; redelivering from the first record on disk");
                Commits::default()
            }
        }
    } else {
        Commits::default()
    };
    let pc = |p: usize| commits.partitions.get(p).cloned().unwrap_or_default();
    // Continuity is checked against earlier segments only; the commit
    // file's `next` is a floor for new offsets, applied at the end.
    let mut expected: Vec<Option<u64>> = vec![None; partitions as usize];
    // Partitions whose missing offsets may sit in a corrupt stretch of a
    // scanned segment (see `SegScan::unclear`).
    let mut unclear: BTreeSet<u32> = BTreeSet::new();

    let mut st = LogState::default();
    if seg_ids.is_empty() {
        if !read_only {
            let path = seg_path(dir, 0);
            fs.open_rw(&path, true)
                .map_err(|e| SpoolError::io("create", &path, e))?;
            fs.sync_dir(dir).map_err(|e| SpoolError::io("fsync dir", dir, e))?;
        }
        st.segs.insert(0, SegMeta::new(0));
    }
    for (i, &id) in seg_ids.iter().enumerate() {
        let last = i + 1 == seg_ids.len();
        let ipath = idx_path(dir, id);
        let indexed: Option<SegMeta> = if last {
            None
        } else {
            meta::load::<SegMeta>(fs, INDEX_MAGIC, &ipath)
                .ok()
                .filter(|m| m.id == id)
        };
        let seg = match indexed {
            Some(m) => {
                for (p, span) in &m.parts {
                    if let Some(e) = expected.get_mut(*p as usize) {
                        *e = Some(e.unwrap_or(0).max(span.last + 1));
                    }
                }
                report.disk_bytes += m.len;
                m
            }
            None => {
                let (mut seg, found) = scan_segment(fs, dir, id, partitions, formats.of(id), &mut expected)?;
                let (scan, file_len) = (found.scan, found.file_len);
                unclear.extend(found.unclear);
                report.corrupt_regions += scan.corrupt_regions;
                if last {
                    report.tail_records = scan.records;
                } else {
                    report.rebuilt_indexes += 1;
                }
                let cut = file_len - seg.len;
                if cut > 0 {
                    report.truncated_bytes += cut;
                    let path = seg_path(dir, id);
                    tracing::warn!(path = %path.display(), at = seg.len, bytes = cut, "torn or zero-filled tail");
                    if !read_only {
                        let f = fs.open_rw(&path, false).map_err(|e| SpoolError::io("open", &path, e))?;
                        f.set_len(seg.len)
                            .and_then(|_| f.sync_data())
                            .map_err(|e| SpoolError::io("truncate", &path, e))?;
                    }
                }
                if !last {
                    seg.sealed = true;
                    if !read_only {
                        meta::store(fs, INDEX_MAGIC, &ipath, &seg)?;
                    }
                }
                report.disk_bytes += seg.len;
                seg
            }
        };
        st.segs.insert(id, seg);
    }
    for n in fs.list(dir).map_err(|e| SpoolError::io("list", dir, e))? {
        if n.ends_with(".idx") || n == COMMITS_FILE {
            if let Ok(f) = fs.open_read(&dir.join(&n)) {
                report.disk_bytes += f.size().unwrap_or(0);
            }
        }
    }
    st.parts = (0..partitions as usize)
        .map(|p| {
            let c = pc(p);
            let next = expected[p].unwrap_or(0).max(c.next);
            let mut committed = c.committed.min(next);
            // Offsets below the partition's first record on disk whose
            // segments are gone were committed, or the segments would still
            // be here (retention follows persisted commits; a spool from an
            // older sluice could delete ahead of them). Only where a
            // corrupt stretch could hide them are they left for the reader
            // to dead-letter.
            let first_on_disk = st
                .segs
                .values()
                .find_map(|s| s.parts.get(&(p as u32)).map(|span| span.first));
            // With no record of the partition on disk, nothing says its
            // missing offsets were reclaimed (retention follows persisted
            // commits): published but never on disk, they are lost, and the
            // reader dead-letters them rather than this counting them done.
            let floor = first_on_disk.unwrap_or(committed);
            if committed < floor && !unclear.contains(&(p as u32)) {
                report.committed_gap += floor - committed;
                tracing::warn!(dir = %dir.display(), partition = p, from = committed, to = floor,
                    "offsets before the oldest segment on disk counted as committed");
                committed = floor;
            }
            let mut acked: BTreeSet<u64> = c.acked.into_iter().filter(|o| *o >= committed && *o < next).collect();
            // An acked run that now starts at the committed offset (raised
            // above) is committed too.
            while acked.remove(&committed) {
                committed += 1;
            }
            PartState { next, committed, acked }
        })
        .collect();
    Ok((st, report))
}
