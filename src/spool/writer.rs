//! The writer thread of a log: group commit.
//!
//! Appends from every partition arrive on one channel. Each round drains
//! what is waiting (up to `ROUND_BYTES`), encodes it into one buffer, writes
//! it with one `pwrite` at the end of the active segment, issues one
//! fdatasync (`always`), publishes the records to the index and readers, and
//! only then completes the appenders. While one round's fsync runs, the next
//! round's appends queue up, so fsyncs are shared by as many appends as are
//! concurrently waiting.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::codec;
use super::error::{FullCause, SpoolError};
use super::fs::{is_no_space, FsFile};
use super::index::{idx_path, seg_path, SegMeta};
use super::log::Shared;
use super::meta::{self, INDEX_MAGIC};
use super::options::{Clock, FsyncMode, SpoolObserver};

/// Most bytes one round writes; bounds the buffer and the latency of the
/// first append in a round.
const ROUND_BYTES: usize = 4 << 20;
/// While unavailable, how often the writer retries reopening.
const REOPEN_EVERY: Duration = Duration::from_millis(50);
/// In `interval` mode the bytes written since the last good fdatasync are
/// kept in memory, to be written again if that fdatasync fails; past this
/// the writer fdatasyncs early rather than hold more.
const UNSYNCED_MAX: usize = 16 << 20;

pub(crate) struct AppendReq {
    pub partition: u32,
    pub flags: u8,
    pub payload: Bytes,
    pub done: oneshot::Sender<Result<u64, SpoolError>>,
}

pub(crate) enum Msg {
    Append(AppendReq),
    /// fdatasync whatever is written, then answer (used by close).
    Sync(oneshot::Sender<Result<(), SpoolError>>),
}

pub(crate) struct WriterConfig {
    pub fsync: FsyncMode,
    /// None: no quota for this log (the dead-letter log).
    pub max_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub clock: Arc<dyn Clock>,
    pub observer: Arc<dyn SpoolObserver>,
}

pub(crate) struct Writer {
    sh: Arc<Shared>,
    cfg: WriterConfig,
    file: Option<Box<dyn FsFile>>,
    seg_id: u64,
    /// Written and published length of the active segment.
    len: u64,
    /// Writer's copy of the next offsets (equal to the published ones
    /// between rounds).
    next: Vec<u64>,
    /// Since when written bytes wait for an fsync (`interval` mode).
    dirty_since: Option<Instant>,
    /// `interval` mode: the bytes written to the active segment since the
    /// last good fdatasync, and where they start. Their appends already
    /// returned, so after a failed fdatasync (when the kernel may have
    /// dropped those pages and marked them clean) they are written again
    /// and fdatasynced before anything else is accepted.
    unsynced: Vec<u8>,
    unsynced_at: u64,
    /// `never` mode: the next offsets at the last good fdatasync, to name
    /// the records at risk when one fails.
    synced_next: Vec<u64>,
    queue: VecDeque<AppendReq>,
}

impl Writer {
    pub fn new(sh: Arc<Shared>, cfg: WriterConfig) -> Result<Self, SpoolError> {
        let (seg_id, len, next) = {
            let st = sh.lock();
            let (id, seg) = st.segs.iter().next_back().expect("a log has an active segment");
            (*id, seg.len, st.parts.iter().map(|p| p.next).collect::<Vec<u64>>())
        };
        let path = seg_path(&sh.dir, seg_id);
        let file = sh
            .fs
            .open_rw(&path, false)
            .map_err(|e| SpoolError::io("open", &path, e))?;
        let keyed = matches!(sh.formats.of(seg_id), codec::FrameFormat::Keyed(_));
        let mut w = Writer {
            sh,
            cfg,
            file: Some(file),
            seg_id,
            len,
            synced_next: next.clone(),
            next,
            dirty_since: None,
            unsynced: Vec::new(),
            unsynced_at: len,
            queue: VecDeque::new(),
        };
        if !keyed {
            // An upgraded spool: the format-1 segment is sealed as it is and
            // new records go to a keyed one.
            w.roll()?;
        }
        Ok(w)
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        let mut syncs = Vec::new();
        loop {
            if self.queue.is_empty() && syncs.is_empty() {
                let timeout = self.idle_timeout();
                match rx.recv_timeout(timeout) {
                    Ok(m) => self.take(m, &mut syncs),
                    Err(RecvTimeoutError::Timeout) => {
                        self.on_idle();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let mut queued: usize = self.queue.iter().map(|r| r.payload.len()).sum();
            while queued < ROUND_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        if let Msg::Append(r) = &m {
                            queued += r.payload.len();
                        }
                        self.take(m, &mut syncs);
                    }
                    Err(_) => break,
                }
            }
            self.round();
            // A steady stream of appends never lets the writer go idle, so
            // the interval deadline is also checked between rounds.
            if let (FsyncMode::Interval(d), Some(t)) = (self.cfg.fsync, self.dirty_since) {
                if t.elapsed() >= d {
                    let _ = self.sync_now();
                }
            }
            if self.queue.is_empty() && !syncs.is_empty() {
                let res = self.sync_now();
                for s in syncs.drain(..) {
                    let _ = s.send(res.as_ref().map(|_| ()).map_err(clone_err));
                }
            }
        }
        if self.dirty_since.is_some() {
            let _ = self.sync_now();
        }
    }

    fn take(&mut self, m: Msg, syncs: &mut Vec<oneshot::Sender<Result<(), SpoolError>>>) {
        match m {
            Msg::Append(r) => self.queue.push_back(r),
            Msg::Sync(s) => syncs.push(s),
        }
    }

    fn idle_timeout(&self) -> Duration {
        if !self.sh.available.load(Ordering::Acquire) {
            return REOPEN_EVERY;
        }
        match (self.cfg.fsync, self.dirty_since) {
            (FsyncMode::Interval(d), Some(t)) => d.saturating_sub(t.elapsed()),
            _ => Duration::from_secs(3600),
        }
    }

    fn on_idle(&mut self) {
        if !self.sh.available.load(Ordering::Acquire) {
            self.reopen();
            return;
        }
        if let (FsyncMode::Interval(d), Some(t)) = (self.cfg.fsync, self.dirty_since) {
            if t.elapsed() >= d {
                let _ = self.sync_now();
            }
        }
    }

    fn path(&self) -> std::path::PathBuf {
        seg_path(&self.sh.dir, self.seg_id)
    }

    /// fdatasync of the active segment; on error the spool goes unavailable
    /// and reopens (the same file state is never fsynced twice).
    fn sync_now(&mut self) -> Result<(), SpoolError> {
        if !self.sh.available.load(Ordering::Acquire) {
            return Err(SpoolError::Unavailable);
        }
        let t = Instant::now();
        let res = self.file.as_ref().map_or(Ok(()), |f| f.sync_data());
        self.cfg.observer.fsync_done(t.elapsed());
        match res {
            Ok(()) => {
                self.synced();
                Ok(())
            }
            Err(e) => {
                let err = SpoolError::Failed {
                    path: self.path(),
                    source: Arc::new(e),
                };
                tracing::error!(error = %err, "fsync failed; refusing appends and reopening the spool");
                self.report_at_risk();
                self.sh.available.store(false, Ordering::Release);
                self.file = None;
                self.reopen();
                Err(err)
            }
        }
    }

    /// Everything written so far is on disk.
    fn synced(&mut self) {
        self.dirty_since = None;
        self.unsynced.clear();
        self.unsynced_at = self.len;
        self.synced_next.clone_from(&self.next);
    }

    /// `never` mode keeps no copy of what it wrote: name what a failed
    /// fdatasync may have lost, so an operator knows which records to
    /// check (they were answered as accepted).
    fn report_at_risk(&self) {
        if self.cfg.fsync != FsyncMode::Never {
            return;
        }
        for (p, (from, to)) in self.synced_next.iter().zip(&self.next).enumerate() {
            if to > from {
                tracing::error!(
                    partition = p,
                    from = *from,
                    to = *to,
                    "fsync failed with fsync = never: these acknowledged records may not be on disk"
                );
            }
        }
    }

    /// Reopens the active segment after an fsync error: cut it back to the
    /// published length (dropping the unfsynced batch whose appenders were
    /// told it failed), write again what `interval` mode published since
    /// the last good fdatasync, and fdatasync that new state.
    fn reopen(&mut self) {
        let path = self.path();
        let res = self.sh.fs.open_rw(&path, false).and_then(|f| {
            f.set_len(self.len)?;
            if !self.unsynced.is_empty() {
                f.write_all_at(&self.unsynced, self.unsynced_at)?;
            }
            f.sync_data()?;
            Ok(f)
        });
        match res {
            Ok(f) => {
                self.file = Some(f);
                let rewritten = self.unsynced.len();
                self.synced();
                self.sh.available.store(true, Ordering::Release);
                tracing::info!(path = %path.display(), len = self.len, rewritten, "spool reopened after fsync error");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "spool reopen failed; retrying");
            }
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> SpoolError) {
        for r in self.queue.drain(..) {
            let _ = r.done.send(Err(err()));
        }
    }

    /// Seals the active segment and starts the next: fsync it (in every
    /// mode, so a sealed segment's index never claims bytes the disk may
    /// not have), store its index, create the new file, fsync the dir.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_data() {
                self.report_at_risk();
                return Err(SpoolError::Failed {
                    path: self.path(),
                    source: Arc::new(e),
                });
            }
        }
        self.synced();
        let mut sealed: SegMeta = self.sh.lock().segs[&self.seg_id].clone();
        sealed.sealed = true;
        let ipath = idx_path(&self.sh.dir, self.seg_id);
        meta::store(&*self.sh.fs, INDEX_MAGIC, &ipath, &sealed).map_err(|e| match e {
            SpoolError::Io { ref source, .. } if is_no_space(source) => self.no_space(),
            e => e,
        })?;
        let idx_len = self.sh.fs.open_read(&ipath).and_then(|f| f.size()).unwrap_or(0);
        crate::crash::point("roll");
        let new_id = self.seg_id + 1;
        let path = seg_path(&self.sh.dir, new_id);
        let full = |e: &std::io::Error| is_no_space(e).then(|| self.no_space());
        let file = self
            .sh
            .fs
            .open_rw(&path, true)
            .map_err(|e| full(&e).unwrap_or_else(|| SpoolError::io("create", &path, e)))?;
        self.sh
            .fs
            .sync_dir(&self.sh.dir)
            .map_err(|e| full(&e).unwrap_or_else(|| SpoolError::io("fsync dir", &self.sh.dir, e)))?;
        {
            let mut st = self.sh.lock();
            if let Some(s) = st.segs.get_mut(&self.seg_id) {
                s.sealed = true;
            }
            st.segs.insert(new_id, SegMeta::new(new_id));
        }
        self.sh.disk_bytes.fetch_add(idx_len, Ordering::AcqRel);
        self.file = Some(file);
        self.seg_id = new_id;
        self.len = 0;
        self.synced();
        Ok(())
    }

    /// The device is full (the caller fills in the partition).
    fn no_space(&self) -> SpoolError {
        SpoolError::Full {
            partition: 0,
            cause: FullCause::NoSpace,
            used: self.sh.disk_bytes.load(Ordering::Acquire),
            limit: self.cfg.max_bytes.unwrap_or(u64::MAX),
        }
    }

    fn round(&mut self) {
        if !self.sh.available.load(Ordering::Acquire) {
            self.reopen();
            if !self.sh.available.load(Ordering::Acquire) {
                self.fail_all(|| SpoolError::Unavailable);
                return;
            }
        }
        let ts = self.cfg.clock.now_ms();
        let mut format = self.sh.formats.of(self.seg_id);
        let mut buf: Vec<u8> = Vec::new();
        // (request, offset, position, frame length)
        let mut batch: Vec<(AppendReq, u64, u64, u64)> = Vec::new();
        let used = self.sh.disk_bytes.load(Ordering::Acquire);
        while let Some(req) = self.queue.pop_front() {
            let flen = codec::frame_len(req.payload.len()) as u64;
            if let Some(limit) = self.cfg.max_bytes {
                if used + buf.len() as u64 + flen > limit {
                    let _ = req.done.send(Err(SpoolError::Full {
                        partition: req.partition,
                        cause: FullCause::Quota,
                        used,
                        limit,
                    }));
                    continue;
                }
            }
            if self.len + buf.len() as u64 + flen > self.cfg.segment_bytes && self.len + (buf.len() as u64) > 0 {
                if !buf.is_empty() {
                    // Finish this round in the current segment; the rest
                    // starts the next round in a new one.
                    self.queue.push_front(req);
                    break;
                }
                if let Err(e) = self.roll() {
                    tracing::error!(error = %e, "segment roll failed");
                    let fatal = matches!(e, SpoolError::Failed { .. });
                    let e = match e {
                        SpoolError::Full { cause, used, limit, .. } => SpoolError::Full {
                            partition: req.partition,
                            cause,
                            used,
                            limit,
                        },
                        e => e,
                    };
                    let _ = req.done.send(Err(e));
                    if fatal {
                        self.sh.available.store(false, Ordering::Release);
                        self.file = None;
                        self.reopen();
                    }
                    continue;
                }
                format = self.sh.formats.of(self.seg_id);
            }
            let p = req.partition as usize;
            let offset = self.next[p];
            self.next[p] += 1;
            let pos = self.len + buf.len() as u64;
            format.encode(&mut buf, req.partition, offset, ts, req.flags, &req.payload);
            batch.push((req, offset, pos, flen));
        }
        if batch.is_empty() {
            return;
        }
        let rollback = |w: &mut Writer, batch: &[(AppendReq, u64, u64, u64)]| {
            for (r, off, _, _) in batch.iter().rev() {
                w.next[r.partition as usize] = *off;
            }
        };
        let file = self.file.as_ref().expect("available writer has a file");
        if let Err(e) = file.write_all_at(&buf, self.len) {
            // Cut the file back to the last good record so a partial frame
            // never sits before the next batch.
            let cut = file.set_len(self.len);
            rollback(self, &batch);
            let limit = self.cfg.max_bytes.unwrap_or(u64::MAX);
            let path = self.path();
            tracing::warn!(path = %path.display(), error = %e, "segment write failed; batch refused");
            if cut.is_err() {
                self.sh.available.store(false, Ordering::Release);
                self.file = None;
            }
            let e = Arc::new(e);
            for (r, _, _, _) in batch {
                let err = if is_no_space(&e) {
                    SpoolError::Full {
                        partition: r.partition,
                        cause: FullCause::NoSpace,
                        used,
                        limit,
                    }
                } else {
                    SpoolError::Failed {
                        path: path.clone(),
                        source: e.clone(),
                    }
                };
                let _ = r.done.send(Err(err));
            }
            return;
        }
        crate::crash::point("append");
        match self.cfg.fsync {
            FsyncMode::Always => {
                if let Err(e) = self.sync_now() {
                    // sync_now cut the file back to `self.len`: the batch is
                    // gone and its offsets are free again.
                    rollback(self, &batch);
                    for (r, _, _, _) in batch {
                        let _ = r.done.send(Err(clone_err(&e)));
                    }
                    return;
                }
            }
            FsyncMode::Interval(_) => {
                self.dirty_since.get_or_insert_with(Instant::now);
                if self.unsynced.is_empty() {
                    self.unsynced_at = self.len;
                }
                self.unsynced.extend_from_slice(&buf);
            }
            FsyncMode::Never => {}
        }
        crate::crash::point("group_commit");
        self.len += buf.len() as u64;
        self.sh.disk_bytes.fetch_add(buf.len() as u64, Ordering::AcqRel);
        let mut touched = vec![false; self.next.len()];
        {
            let mut st = self.sh.lock();
            let seg = st.segs.get_mut(&self.seg_id).expect("active segment indexed");
            for (r, off, pos, flen) in &batch {
                seg.add(r.partition, *off, *pos, *flen, ts);
            }
            seg.len = self.len;
            for (r, off, _, _) in &batch {
                st.parts[r.partition as usize].next = off + 1;
                touched[r.partition as usize] = true;
            }
        }
        for (p, t) in touched.iter().enumerate() {
            if *t {
                self.sh.published[p].send_replace(self.next[p]);
            }
        }
        for (r, off, _, flen) in batch {
            self.cfg.observer.appended(r.partition, flen);
            let _ = r.done.send(Ok(off));
        }
        if self.unsynced.len() > UNSYNCED_MAX {
            let _ = self.sync_now();
        }
    }
}

fn clone_err(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Failed { path, source } => SpoolError::Failed {
            path: path.clone(),
            source: source.clone(),
        },
        SpoolError::Unavailable => SpoolError::Unavailable,
        other => SpoolError::Failed {
            path: Default::default(),
            source: Arc::new(io::Error::other(other.to_string())),
        },
    }
}
