//! Opening a spool: the lock, the manifest (and the upgrade from format
//! 1), recovery of both logs, the writer threads and the housekeeper.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use super::log::{self, Formats, LoadReport, LogState, Shared};
use super::meta::{self, Manifest, MANIFEST_MAGIC};
use super::reserve::Reserve;
use super::writer::{Writer, WriterConfig};
use super::{
    Fs, Inner, LogHandle, RecoveredKind, Spool, SpoolError, SpoolObserver, SpoolOptions, DLQ_DIR, DLQ_TRIM_EVERY,
    LOCK_FILE, LOG_DIR, MANIFEST_FILE, RESERVE_FILE,
};

/// What a log needs besides its own directory and state.
pub(super) struct LogEnv {
    pub fs: Arc<dyn Fs>,
    pub disk_bytes: Arc<AtomicU64>,
    pub housekeep: Arc<Notify>,
    pub reserve: Arc<Reserve>,
}

pub(super) fn new_shared(
    dir: std::path::PathBuf,
    partitions: u32,
    formats: Formats,
    state: LogState,
    env: &LogEnv,
) -> Arc<Shared> {
    let published = state.parts.iter().map(|p| watch::Sender::new(p.next)).collect();
    let persisted = state.parts.iter().map(|p| p.committed).collect();
    Arc::new(Shared {
        dir,
        partitions,
        fs: env.fs.clone(),
        formats,
        persisted: Mutex::new(persisted),
        reserve: env.reserve.clone(),
        state: Mutex::new(state),
        published,
        disk_bytes: env.disk_bytes.clone(),
        available: AtomicBool::new(true),
        // Load may have moved committed offsets (a gap before the oldest
        // segment): write them down at the first checkpoint.
        commits_dirty: AtomicBool::new(true),
        checkpointing: Mutex::new(()),
        housekeep: env.housekeep.clone(),
        closed: watch::Sender::new(false),
    })
}

/// The frame formats of a log under `manifest`.
pub(super) fn formats(manifest: &Manifest, keyed_from: u64) -> Formats {
    match manifest.key() {
        Some(key) if manifest.format_version >= 2 => Formats { keyed_from, key },
        _ => Formats {
            keyed_from: u64::MAX,
            key: [0; 16],
        },
    }
}

/// The first segment a log writes in format 2 after an upgrade: the active
/// one if nothing is in it yet, else the next (the writer rolls to it
/// before its first append).
fn first_keyed_segment(state: &LogState) -> u64 {
    state
        .segs
        .values()
        .next_back()
        .map_or(0, |s| if s.len == 0 { s.id } else { s.id + 1 })
}

/// A spool directory whose manifest is gone but whose log is not: opening
/// it would mint a new key and misread every keyed frame, so refuse.
fn refuse_orphan_log(fs: &dyn Fs, dir: &Path) -> Result<(), SpoolError> {
    let log_dir = dir.join(LOG_DIR);
    let names = fs.list(&log_dir).unwrap_or_default();
    let data = names
        .iter()
        .filter(|n| n.ends_with(".seg"))
        .any(|n| file_len(fs, &log_dir.join(n)) > 0);
    if data {
        return Err(SpoolError::CorruptMeta {
            path: dir.join(MANIFEST_FILE),
            reason: "missing, but log/ holds records; restore it from a backup (sluice will not guess the frame key)"
                .into(),
        });
    }
    Ok(())
}

fn report_recovery(observer: &dyn SpoolObserver, dir: &Path, r: &LoadReport) {
    observer.recovered(RecoveredKind::Records, r.tail_records);
    observer.recovered(RecoveredKind::TruncatedBytes, r.truncated_bytes);
    if r.truncated_bytes > 0 || r.corrupt_regions > 0 || r.rebuilt_indexes > 0 {
        tracing::warn!(dir = %dir.display(), tail_records = r.tail_records, truncated_bytes = r.truncated_bytes,
            corrupt_regions = r.corrupt_regions, rebuilt_indexes = r.rebuilt_indexes, "spool recovery repaired the log");
    } else {
        tracing::info!(dir = %dir.display(), tail_records = r.tail_records, "spool recovered");
    }
}

pub(super) fn read_manifest(fs: &dyn Fs, dir: &Path) -> Result<Manifest, SpoolError> {
    let path = dir.join(MANIFEST_FILE);
    let m: Manifest = meta::load(fs, MANIFEST_MAGIC, &path)?;
    m.check(&path)?;
    Ok(m)
}

pub(super) fn file_len(fs: &dyn Fs, path: &Path) -> u64 {
    fs.open_read(path).and_then(|f| f.size()).unwrap_or(0)
}

impl Spool {
    /// Opens (creating if needed) the spool in `opts.dir`: takes the lock,
    /// checks the manifest, recovers both logs and starts the writer
    /// threads and the commit housekeeper. Must be called within a Tokio
    /// runtime.
    pub async fn open(opts: SpoolOptions, observer: Arc<dyn SpoolObserver>) -> Result<Arc<Spool>, SpoolError> {
        opts.validate()?;
        let interval = opts.commit_interval;
        let inner = tokio::task::spawn_blocking(move || Self::open_blocking(opts, observer))
            .await
            .map_err(|e| SpoolError::io("open", "", std::io::Error::other(e.to_string())))??;
        let inner = Arc::new(inner);
        let weak = Arc::downgrade(&inner);
        let notify = inner.main.sh.housekeep.clone();
        let task = tokio::spawn(async move {
            loop {
                // Woken by acks and dead letters; the timeout lets
                // dead-letter retention run on a quiet spool too.
                let _ = tokio::time::timeout(DLQ_TRIM_EVERY, notify.notified()).await;
                // Let acks accumulate: one commit file write per interval.
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                let res = tokio::task::spawn_blocking(move || inner.checkpoint_blocking()).await;
                if let Ok(Err(e)) = res {
                    tracing::error!(error = %e, "spool checkpoint failed; will retry");
                }
            }
        });
        *inner.housekeeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(Arc::new(Spool { inner }))
    }

    fn open_blocking(opts: SpoolOptions, observer: Arc<dyn SpoolObserver>) -> Result<Inner, SpoolError> {
        let fs = opts.fs.clone();
        let dir = opts.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| SpoolError::io("create dir", &dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs.lock(&lock_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                SpoolError::Locked { path: dir.clone() }
            } else {
                SpoolError::io("lock", &lock_path, e)
            }
        })?;
        let mpath = dir.join(MANIFEST_FILE);
        let mut manifest = if fs.exists(&mpath) {
            let m = read_manifest(&*fs, &dir)?;
            if m.partitions != opts.partitions {
                return Err(SpoolError::PartitionMismatch {
                    path: dir.clone(),
                    on_disk: m.partitions,
                    requested: opts.partitions,
                });
            }
            m
        } else {
            refuse_orphan_log(&*fs, &dir)?;
            let m = Manifest::new(opts.partitions, opts.clock.now_ms());
            meta::store(&*fs, MANIFEST_MAGIC, &mpath, &m)?;
            m
        };
        let (main_state, main_report) = log::load(
            &*fs,
            &dir.join(LOG_DIR),
            opts.partitions,
            formats(&manifest, manifest.keyed_from.log),
            false,
        )?;
        let (dlq_state, dlq_report) = log::load(
            &*fs,
            &dir.join(DLQ_DIR),
            1,
            formats(&manifest, manifest.keyed_from.dlq),
            false,
        )?;
        if manifest.format_version < meta::FORMAT_VERSION {
            // Upgrade: what is on disk stays format 1 and is read as such;
            // new segments are keyed. The manifest is replaced before any
            // keyed byte is written.
            manifest.format_version = meta::FORMAT_VERSION;
            manifest.frame_key = Some(meta::FrameKey::random());
            manifest.keyed_from = meta::KeyedFrom {
                log: first_keyed_segment(&main_state),
                dlq: first_keyed_segment(&dlq_state),
            };
            meta::store(&*fs, MANIFEST_MAGIC, &mpath, &manifest)?;
            tracing::info!(dir = %dir.display(), "spool upgraded to format 2 (keyed frame checksums) for new segments");
        }
        // The spool dir's own entry, and log/ and dlq/ in it, made durable.
        for d in [dir.parent().filter(|p| !p.as_os_str().is_empty()), Some(&*dir)]
            .into_iter()
            .flatten()
        {
            fs.sync_dir(d).map_err(|e| SpoolError::io("fsync dir", d, e))?;
        }
        report_recovery(&*observer, &dir.join(LOG_DIR), &main_report);
        report_recovery(&*observer, &dir.join(DLQ_DIR), &dlq_report);
        let disk_bytes = Arc::new(AtomicU64::new(
            main_report.disk_bytes + dlq_report.disk_bytes + file_len(&*fs, &mpath),
        ));
        let env = LogEnv {
            fs: fs.clone(),
            disk_bytes: disk_bytes.clone(),
            housekeep: Arc::new(Notify::new()),
            reserve: Arc::new(Reserve::open(&*fs, dir.join(RESERVE_FILE))),
        };
        let main_formats = formats(&manifest, manifest.keyed_from.log);
        let main_sh = new_shared(dir.join(LOG_DIR), opts.partitions, main_formats, main_state, &env);
        let dlq_sh = new_shared(
            dir.join(DLQ_DIR),
            1,
            formats(&manifest, manifest.keyed_from.dlq),
            dlq_state,
            &env,
        );
        let start = |sh: &Arc<Shared>, max_bytes: Option<u64>, name: &str| {
            let w = Writer::new(
                sh.clone(),
                WriterConfig {
                    fsync: opts.fsync,
                    max_bytes,
                    segment_bytes: opts.segment_bytes,
                    clock: opts.clock.clone(),
                    observer: observer.clone(),
                },
            )?;
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("spool-{name}"))
                .spawn(move || w.run(rx))
                .map_err(|e| SpoolError::io("spawn writer", &sh.dir, e))?;
            Ok::<_, SpoolError>(LogHandle {
                sh: sh.clone(),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            })
        };
        let main = start(&main_sh, Some(opts.max_bytes), "writer")?;
        let dlq = start(&dlq_sh, None, "dlq-writer")?;
        Ok(Inner {
            opts,
            observer,
            manifest,
            main,
            dlq,
            disk_bytes,
            closed: AtomicBool::new(false),
            housekeeper: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            dlq_replaying: tokio::sync::Mutex::new(()),
        })
    }
}
