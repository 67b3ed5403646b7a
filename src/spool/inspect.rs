//! Offline inspection: the status of a spool directory read without the
//! lock and without writing, for `sluice spool status` while sluice runs.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Notify;

use super::log::{self, LoadReport, LogState};
use super::reserve::Reserve;
use super::{
    open::{file_len, formats, new_shared, read_manifest, LogEnv},
    status, DLQ_DIR, LOG_DIR, MANIFEST_FILE, RESERVE_FILE,
};
use super::{Clock, Fs, RealFs, SpoolError, SpoolStatus, SystemClock};

/// Reads the status of the spool in `dir` without taking the lock or
/// writing anything: safe while sluice runs. A missing directory, or one
/// without a manifest, is an error.
pub fn inspect(dir: &Path) -> Result<SpoolStatus, SpoolError> {
    let fs: Arc<dyn Fs> = Arc::new(RealFs);
    if !dir.is_dir() {
        return Err(SpoolError::NotASpool {
            path: dir.to_owned(),
            reason: "no such directory".into(),
        });
    }
    if !dir.join(MANIFEST_FILE).exists() {
        return Err(SpoolError::NotASpool {
            path: dir.to_owned(),
            reason: format!("no {MANIFEST_FILE} file"),
        });
    }
    let manifest = read_manifest(&*fs, dir)?;
    let env = LogEnv {
        fs: fs.clone(),
        disk_bytes: Arc::new(AtomicU64::new(0)),
        housekeep: Arc::new(Notify::new()),
        reserve: Arc::new(Reserve::untouched(dir.join(RESERVE_FILE))),
    };
    let main_formats = formats(&manifest, manifest.keyed_from.log);
    let (main_state, main_report) = log::load(&*fs, &dir.join(LOG_DIR), manifest.partitions, main_formats, true)?;
    let main = new_shared(dir.join(LOG_DIR), manifest.partitions, main_formats, main_state, &env);
    let dlq_dir = dir.join(DLQ_DIR);
    let dlq_formats = formats(&manifest, manifest.keyed_from.dlq);
    let (dlq_state, dlq_report) = if dlq_dir.is_dir() {
        log::load(&*fs, &dlq_dir, 1, dlq_formats, true)?
    } else {
        let mut st = LogState::default();
        st.parts.push(Default::default());
        (st, LoadReport::default())
    };
    let dlq = new_shared(dlq_dir, 1, dlq_formats, dlq_state, &env);
    Ok(SpoolStatus {
        dir: dir.to_owned(),
        spool_id: manifest.spool_id.clone(),
        partitions: status::partition_status(&main, SystemClock.now_ms()),
        dlq: status::dlq_status(&dlq),
        disk_bytes: main_report.disk_bytes + dlq_report.disk_bytes + file_len(&*fs, &dir.join(MANIFEST_FILE)),
        fsync: None,
        available: true,
    })
}

/// Where one valid frame sits on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLocation {
    pub segment: std::path::PathBuf,
    pub pos: u64,
    /// The whole frame.
    pub len: u64,
    /// Bytes before the payload (the format's header).
    pub header_len: u64,
    pub partition: u32,
    pub offset: u64,
}

/// Every frame of the data log that passes its checksum, in file order:
/// read-only, for forensics and for the fault tests that damage chosen
/// frames (they cannot find them without the spool's frame key).
pub fn frame_locations(dir: &Path) -> Result<Vec<FrameLocation>, SpoolError> {
    let fs = RealFs;
    let manifest = read_manifest(&fs, dir)?;
    let formats = formats(&manifest, manifest.keyed_from.log);
    let log_dir = dir.join(LOG_DIR);
    let mut ids: Vec<u64> = fs
        .list(&log_dir)
        .map_err(|e| SpoolError::io("list", &log_dir, e))?
        .iter()
        .filter_map(|n| super::index::parse_name(n, "seg"))
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let path = super::index::seg_path(&log_dir, id);
        let buf = std::fs::read(&path).map_err(|e| SpoolError::io("read", &path, e))?;
        let format = formats.of(id);
        format.scan(&buf, |pos, r, _| {
            out.push(FrameLocation {
                segment: path.clone(),
                pos: pos as u64,
                len: r.frame_len(format) as u64,
                header_len: format.header_len() as u64,
                partition: r.partition,
                offset: r.offset,
            });
            true
        });
    }
    Ok(out)
}
