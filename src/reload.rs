//! Config reload (SIGHUP and `/admin/reload`): re-read the file, keep the
//! running values of restart-only keys, and swap the runtime atomically.
//! A bad file changes nothing.

use crate::config::{Config, ConfigError, Overrides};
use crate::metrics::Metrics;
use crate::proxy::{Runtime, Shared};
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
    /// Serialises reloads so two can't interleave their read and swap.
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(shared: Arc<Shared>, metrics: Arc<Metrics>, overrides: Overrides) -> Self {
        Reloader {
            shared,
            metrics,
            overrides,
            lock: Mutex::new(()),
        }
    }

    pub fn reload(&self) -> Result<ReloadOutcome, ConfigError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
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
        let runtime = Runtime::build(Arc::new(next), &self.metrics, Some(&current));
        self.shared.runtime.store(Arc::new(runtime));
        Ok(ReloadOutcome { needs_restart })
    }
}
