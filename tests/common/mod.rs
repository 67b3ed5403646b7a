#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::spool::{Clock, Fs, FsFile, RealFs, RecoveredKind, SpoolObserver, SpoolOptions};

/// Wraps the real filesystem with switches for the faults the spool must
/// survive, and counts bytes read.
#[derive(Default)]
pub struct FaultFs {
    /// Writes store half their bytes, then fail with ENOSPC.
    pub enospc: AtomicBool,
    /// fdatasync fails with EIO while set.
    pub fail_fsync: AtomicBool,
    pub bytes_read: Arc<AtomicU64>,
    pub fsyncs: Arc<AtomicU64>,
}

struct FaultFile {
    inner: Box<dyn FsFile>,
    fs: Arc<FaultFs>,
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, pos)?;
        self.fs.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.fs.enospc.load(Ordering::Relaxed) {
            // A torn write: part of the buffer reaches the file.
            self.inner.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.fsyncs.fetch_add(1, Ordering::Relaxed);
        if self.fs.fail_fsync.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.sync_data()
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
        Ok(Box::new(FaultFile {
            inner: RealFs.open_rw(path, create)?,
            fs: self.0.clone(),
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(FaultFile {
            inner: RealFs.open_read(path)?,
            fs: self.0.clone(),
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
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
