//! Config reload (SIGHUP and `/admin/reload`): re-read the file, keep the
//! running values of restart-only keys, and swap the runtime atomically.
//! A bad file changes nothing.

use crate::config::{Config, ConfigError, Overrides};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, Shared};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Keys that changed in the file but keep their running value until a
    /// restart.
    pub needs_restart: Vec<&'static str>,
}

pub struct Reloader {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    overrides: Overrides,
    /// Serialises reloads so two can't interleave their read and swap,
    /// and holds the version of the file the running config came from
    /// (taken just before each read), so the watcher never reloads a
    /// change that SIGHUP or `/admin/reload` already took.
    loaded: Mutex<Option<FileVersion>>,
}

impl Reloader {
    pub fn new(shared: Arc<Shared>, metrics: Arc<Metrics>, overrides: Overrides) -> Self {
        Reloader {
            shared,
            metrics,
            overrides,
            loaded: Mutex::new(None),
        }
    }

    /// Notes the version of the file the starting config was read from,
    /// the watcher's first point of comparison.
    fn note_loaded(&self, path: &std::path::Path) {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = file_version(path);
    }

    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut loaded)
    }

    /// Reloads only if the file differs from the version last loaded (good
    /// or bad: a refused file is not retried until it changes again).
    /// Returns whether it reloaded.
    fn reload_if_changed(&self, path: &std::path::Path) -> bool {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = file_version(path);
        if now.is_none() || now == *loaded {
            return false;
        }
        tracing::info!(path = %path.display(), "config file changed: reloading");
        // Logged and counted like any reload, good or bad.
        let _ = self.reload_locked(&mut loaded);
        true
    }

    fn reload_locked(&self, loaded: &mut Option<FileVersion>) -> Result<ReloadOutcome, ConfigError> {
        if let Some(path) = &self.shared.runtime.load().config.source_path {
            *loaded = file_version(path);
        }
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(o) => tracing::info!(needs_restart = ?o.needs_restart, "config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays"),
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let current = self.shared.runtime.load_full();
        let path = current.config.source_path.clone().ok_or_else(|| {
            ConfigError::Usage("running on the embedded default: there is no config file to reload".into())
        })?;
        let mut next = Config::load(Some(&path), &self.overrides)?;
        let needs_restart = current.config.restart_only_changes(&next);
        next.keep_restart_only(&current.config);
        let runtime = Runtime::build(
            Arc::new(next),
            &self.metrics,
            Some(&current),
            self.shared.cluster.as_ref(),
        );
        self.shared.install(runtime);
        Ok(ReloadOutcome { needs_restart })
    }
}

/// What identifies one version of the config file: following symlinks, so
/// Kubernetes' swap of a mounted ConfigMap's `..data` link shows up as a
/// new inode even when size and mtime happen to match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn file_version(path: &std::path::Path) -> Option<FileVersion> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileVersion {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Reloads whenever the config file changes, checking every `every`
/// (polling: it sees symlink swaps and editors' rename-over alike). A bad
/// new file is refused by the reload like any other; the watcher then
/// waits for the next change. The file's current version is taken when
/// this is called, not when the returned future first runs, so a change
/// made right after startup is not mistaken for the starting point; and
/// the comparison is with the version any reload last read, so one change
/// is loaded once however it was noticed.
pub fn watch_file(
    reloader: Arc<Reloader>,
    path: std::path::PathBuf,
    every: std::time::Duration,
    shutdown: crate::shutdown::Shutdown,
) -> impl std::future::Future<Output = ()> {
    reloader.note_loaded(&path);
    async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            reloader.reload_if_changed(&path);
        }
    }
}
