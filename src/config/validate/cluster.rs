//! `[cluster]`: the Redis store of global limits.

use crate::config::error::Source;
use crate::config::file::{ClusterFile, OnStoreErrorFile};
use crate::config::types::{ClusterConfig, OnStoreError, RedisUrl};
use crate::config::units::parse_duration;
use crate::config::ConfigError;
use std::time::Duration;

/// The variable a Redis password may come from when there's no
/// `cluster.password_file`.
pub const REDIS_PASSWORD_ENV: &str = "SLUICE_REDIS_PASSWORD";

pub(super) fn validate_cluster(src: &Source<'_>, c: &ClusterFile) -> Result<ClusterConfig, ConfigError> {
    let mut out = ClusterConfig::default();
    if let Some(url) = &c.redis_url {
        let url = RedisUrl::new(url.trim());
        let text = url.expose();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(src.invalid(
                "cluster.redis_url",
                format!("{url} must start with redis:// or rediss://"),
            ));
        }
        if redis::IntoConnectionInfo::into_connection_info(text).is_err() {
            // Not the driver's message: it can quote pieces of the URL,
            // password included.
            return Err(src.invalid(
                "cluster.redis_url",
                format!("{url} is not a usable Redis URL; expected redis[s]://[user[:password]@]host[:port][/db] (a password with reserved characters percent-encoded)"),
            ));
        }
        out.redis_url = Some(url);
    }
    out.password = match &c.password_file {
        Some(path) => Some(super::secret_file(src, "cluster.password_file", path)?),
        None => super::env_secret(REDIS_PASSWORD_ENV),
    };
    if let Some(ns) = &c.namespace {
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.' | ':' | '{' | '}'))
        {
            return Err(src.invalid(
                "cluster.namespace",
                "must be 1-64 characters of [A-Za-z0-9_.:{}-] (it prefixes every Redis key)",
            ));
        }
        out.namespace = ns.clone();
    }
    if let Some(t) = &c.timeout {
        out.timeout = parse_duration(t).map_err(|m| src.invalid("cluster.timeout", m))?;
        if out.timeout.is_zero() || out.timeout > Duration::from_secs(10) {
            return Err(src.invalid(
                "cluster.timeout",
                "must be above zero and at most 10s: every request that asks the store may wait this long",
            ));
        }
    }
    if let Some(n) = c.replicas {
        if n == 0 {
            return Err(src.invalid("cluster.replicas", "must be at least 1"));
        }
        out.replicas = Some(n);
    }
    out.on_store_error = match c.on_store_error.unwrap_or(OnStoreErrorFile::Local) {
        OnStoreErrorFile::Local => OnStoreError::Local,
        OnStoreErrorFile::Reject => OnStoreError::Reject,
        OnStoreErrorFile::Allow => OnStoreError::Allow,
    };
    Ok(out)
}
