#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::spool::{Clock, Fs, FsFile, RealFs, RecoveredKind, SpoolObserver, SpoolOptions};

/// One kind of filesystem call a [`Rule`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Write,
    /// `open_rw` with create.
    Create,
    Sync,
    Read,
    OpenRead,
    Rename,
}

pub const EIO: i32 = 5;
pub const ENOSPC: i32 = 28;
pub const EMFILE: i32 = 24;

/// Fails `op` on paths containing `path_has` with `errno`, `times` times
/// (0: until removed).
#[derive(Debug, Clone)]
pub struct Rule {
    pub op: FsOp,
    pub path_has: &'static str,
    pub errno: i32,
    pub times: u32,
}

type RenameHook = Box<dyn FnMut(&Path) + Send>;

/// Wraps the real filesystem with switches for the faults the spool must
/// survive, and counts bytes read.
#[derive(Default)]
pub struct FaultFs {
    /// Writes store half their bytes, then fail with ENOSPC.
    pub enospc: AtomicBool,
    /// fdatasync fails with EIO while set.
    pub fail_fsync: AtomicBool,
    /// When an fdatasync fails, the file loses what was written since its
    /// last good one (the kernel dropped the dirty pages).
    pub drop_unsynced_on_fsync_error: AtomicBool,
    pub rules: Mutex<Vec<Rule>>,
    /// A device of this many bytes (in 4 KiB blocks) under `root`: a write
    /// that needs a block more fails with ENOSPC. 0: unlimited.
    pub device_bytes: AtomicU64,
    pub root: Mutex<Option<PathBuf>>,
    /// Called before each rename, with the destination.
    pub on_rename: Mutex<Option<RenameHook>>,
    pub bytes_read: Arc<AtomicU64>,
    pub fsyncs: Arc<AtomicU64>,
}

const BLOCK: u64 = 4096;

fn blocks(len: u64) -> u64 {
    len.div_ceil(BLOCK) * BLOCK
}

/// Bytes the files under `dir` take on a device of 4 KiB blocks.
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => blocks(m.len()),
            Err(_) => 0,
        })
        .sum()
}

impl FaultFs {
    pub fn add(&self, op: FsOp, path_has: &'static str, errno: i32, times: u32) {
        self.rules.lock().unwrap().push(Rule {
            op,
            path_has,
            errno,
            times,
        });
    }

    pub fn clear_rules(&self) {
        self.rules.lock().unwrap().clear();
    }

    fn check(&self, op: FsOp, path: &Path) -> io::Result<()> {
        let mut rules = self.rules.lock().unwrap();
        let p = path.to_string_lossy();
        if let Some(i) = rules.iter().position(|r| r.op == op && p.contains(r.path_has)) {
            let errno = rules[i].errno;
            if rules[i].times > 0 {
                rules[i].times -= 1;
                if rules[i].times == 0 {
                    rules.remove(i);
                }
            }
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// Whether growing a file from `from` to `to` bytes fits the device.
    fn fits(&self, from: u64, to: u64) -> bool {
        let cap = self.device_bytes.load(Ordering::Relaxed);
        let root = self.root.lock().unwrap().clone();
        match root {
            Some(root) if cap > 0 && blocks(to) > blocks(from) => tree_bytes(&root) + blocks(to) - blocks(from) <= cap,
            _ => true,
        }
    }
}

struct FaultFile {
    inner: Box<dyn FsFile>,
    fs: Arc<FaultFs>,
    path: PathBuf,
    /// Length at the last good fdatasync (or open).
    synced_len: Mutex<u64>,
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.fs.check(FsOp::Read, &self.path)?;
        let n = self.inner.read_at(buf, pos)?;
        self.fs.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.fs.check(FsOp::Write, &self.path)?;
        if self.fs.enospc.load(Ordering::Relaxed) {
            // A torn write: part of the buffer reaches the file.
            self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        let size = self.inner.size()?;
        if !self.fs.fits(size, pos + buf.len() as u64) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.fsyncs.fetch_add(1, Ordering::Relaxed);
        let failed = if self.fs.fail_fsync.load(Ordering::Relaxed) {
            Err(io::Error::from_raw_os_error(EIO))
        } else {
            self.fs.check(FsOp::Sync, &self.path)
        };
        if let Err(e) = failed {
            if self.fs.drop_unsynced_on_fsync_error.load(Ordering::Relaxed) {
                let synced = *self.synced_len.lock().unwrap();
                let size = self.inner.size()?;
                if size > synced {
                    self.inner.write_all_at(&vec![0u8; (size - synced) as usize], synced)?;
                }
            }
            return Err(e);
        }
        self.inner.sync_data()?;
        *self.synced_len.lock().unwrap() = self.inner.size()?;
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

fn libc_enospc() -> i32 {
    28
}

/// `Fs` for an `Arc<FaultFs>` (the spool needs an owned trait object).
#[derive(Clone)]
pub struct FaultFsHandle(pub Arc<FaultFs>);

impl Fs for FaultFsHandle {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn open_rw(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        if create && !path.exists() {
            self.0.check(FsOp::Create, path)?;
        }
        let inner = RealFs.open_rw(path, create)?;
        let len = inner.size()?;
        Ok(Box::new(FaultFile {
            inner,
            fs: self.0.clone(),
            path: path.to_owned(),
            synced_len: Mutex::new(len),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.0.check(FsOp::OpenRead, path)?;
        let inner = RealFs.open_read(path)?;
        let len = inner.size()?;
        Ok(Box::new(FaultFile {
            inner,
            fs: self.0.clone(),
            path: path.to_owned(),
            synced_len: Mutex::new(len),
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.check(FsOp::Rename, to)?;
        if let Some(hook) = self.0.on_rename.lock().unwrap().as_mut() {
            hook(to);
        }
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        RealFs.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        RealFs.lock(path)
    }
}

pub fn fault_opts(dir: &Path) -> (SpoolOptions, Arc<FaultFs>) {
    let f = Arc::new(FaultFs::default());
    let mut o = SpoolOptions::new(dir);
    o.fs = Arc::new(FaultFsHandle(f.clone()));
    (o, f)
}

/// A clock the test moves by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records what the spool reports.
#[derive(Default)]
pub struct TestObserver {
    pub recovered: Mutex<Vec<(RecoveredKind, u64)>>,
    pub appended: AtomicU64,
    pub fsyncs: AtomicU64,
}

impl TestObserver {
    pub fn total(&self, kind: RecoveredKind) -> u64 {
        self.recovered
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }
}

impl SpoolObserver for TestObserver {
    fn fsync_done(&self, _d: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    fn appended(&self, _partition: u32, _bytes: u64) {
        self.appended.fetch_add(1, Ordering::Relaxed);
    }
    fn recovered(&self, what: RecoveredKind, n: u64) {
        self.recovered.lock().unwrap().push((what, n));
    }
}

pub fn small_opts(dir: &Path) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.partitions = 4;
    o.segment_bytes = 4096;
    o.max_record = 1024;
    o.max_bytes = 1 << 30;
    o.commit_interval = Duration::from_millis(5);
    o
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn payload(p: u32, i: u64, len: usize) -> bytes::Bytes {
    let mut v = format!("p{p}-r{i}-").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.truncate(len.max(8));
    bytes::Bytes::from(v)
}

pub fn segs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Reads `count` records of a partition from `r`, in order (each batch
/// bounded by a 5 s deadline: a stalled reader fails the test).
pub async fn read_n(r: &mut sluice::spool::PartitionReader, count: usize) -> Vec<sluice::spool::Record> {
    let mut out = Vec::new();
    while out.len() < count {
        let b = tokio::time::timeout(Duration::from_secs(5), r.next_batch(64, 1 << 20))
            .await
            .expect("reader stalled")
            .unwrap();
        out.extend(b);
    }
    out
}

/// Where record `offset` of `partition` sits on disk.
pub fn frame_at(dir: &Path, partition: u32, offset: u64) -> sluice::spool::FrameLocation {
    sluice::spool::frame_locations(dir)
        .unwrap()
        .into_iter()
        .find(|f| f.partition == partition && f.offset == offset)
        .expect("record on disk")
}

/// One partition and segments of 1 KiB (records up to 256 bytes), so a
/// few dozen appends span many segments.
pub fn one_partition_small_segments(o: &mut SpoolOptions) {
    o.partitions = 1;
    o.segment_bytes = 1024;
    o.max_record = 256;
}
