//! Offline inspection: the status of a spool directory read without the
//! lock and without writing, for `sluice spool status` while sluice runs.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Notify;

use super::log::{self, LoadReport, LogState};
use super::{file_len, new_shared, read_manifest, status, DLQ_DIR, LOG_DIR, MANIFEST_FILE};
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
    let disk = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let (main_state, main_report) = log::load(&*fs, &dir.join(LOG_DIR), manifest.partitions, true)?;
    let main = new_shared(
        dir.join(LOG_DIR),
        manifest.partitions,
        fs.clone(),
        main_state,
        disk.clone(),
        notify.clone(),
    );
    let dlq_dir = dir.join(DLQ_DIR);
    let (dlq_state, dlq_report) = if dlq_dir.is_dir() {
        log::load(&*fs, &dlq_dir, 1, true)?
    } else {
        let mut st = LogState::default();
        st.parts.push(Default::default());
        (st, LoadReport::default())
    };
    let dlq = new_shared(dlq_dir, 1, fs.clone(), dlq_state, disk, notify);
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
