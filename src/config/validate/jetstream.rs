//! `[spool.jetstream]`: the spool on a NATS JetStream cluster.

use crate::config::error::Source;
use crate::config::file::JetStreamFile;
use crate::config::types::{JetStreamConfig, NatsAuth};
use crate::config::units::parse_duration;
use crate::config::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

/// The variables secrets may come from when no file names them.
pub const NATS_TOKEN_ENV: &str = "SLUICE_NATS_TOKEN";
pub const NATS_PASSWORD_ENV: &str = "SLUICE_NATS_PASSWORD";

/// Stream, bucket and subject names go into NATS subjects and API calls:
/// letters, digits, `-` and `_` only (no `.`, `*`, `>` or spaces).
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 48 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn validate_jetstream(
    src: &Source<'_>,
    j: &JetStreamFile,
    max_record: u64,
) -> Result<JetStreamConfig, ConfigError> {
    let servers = j
        .servers
        .clone()
        .unwrap_or_else(|| vec!["nats://127.0.0.1:4222".to_string()]);
    if servers.is_empty() {
        return Err(src.invalid("spool.jetstream.servers", "needs at least one nats:// URL"));
    }
    for (i, s) in servers.iter().enumerate() {
        if s.contains('@') {
            // Not echoed: it may hold a password.
            return Err(src.invalid(
                "spool.jetstream.servers",
                format!("servers[{i}] carries credentials; give them in token_file, user/password_file, nkey_file or creds_file, never in the URL"),
            ));
        }
        let ok = ["nats://", "tls://"].iter().any(|p| {
            s.strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('@') && !rest.contains('/'))
        });
        if !ok {
            return Err(src.invalid(
                "spool.jetstream.servers",
                format!("{s:?} must be nats://host:port or tls://host:port"),
            ));
        }
    }
    let given = [
        j.token_file.is_some(),
        j.user.is_some(),
        j.nkey_file.is_some(),
        j.creds_file.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(src.invalid(
            "spool.jetstream",
            "give at most one of token_file, user (with password_file), nkey_file, creds_file",
        ));
    }
    if j.password_file.is_some() && j.user.is_none() {
        return Err(src.invalid("spool.jetstream.password_file", "needs spool.jetstream.user"));
    }
    let auth = if let Some(path) = &j.token_file {
        NatsAuth::Token(super::secret_file(src, "spool.jetstream.token_file", path)?)
    } else if let Some(user) = &j.user {
        let password = match &j.password_file {
            Some(path) => super::secret_file(src, "spool.jetstream.password_file", path)?,
            None => super::env_secret(NATS_PASSWORD_ENV).ok_or_else(|| {
                src.invalid(
                    "spool.jetstream.user",
                    format!("needs a password: spool.jetstream.password_file or {NATS_PASSWORD_ENV}"),
                )
            })?,
        };
        NatsAuth::UserPassword {
            user: user.clone(),
            password,
        }
    } else if let Some(path) = &j.nkey_file {
        let seed = super::secret_file(src, "spool.jetstream.nkey_file", path)?;
        if !seed.expose().starts_with("SU") {
            return Err(src.invalid(
                "spool.jetstream.nkey_file",
                format!("{path:?} must hold a user nkey seed (it starts with SU)"),
            ));
        }
        NatsAuth::NKey(seed)
    } else if let Some(path) = &j.creds_file {
        std::fs::metadata(path)
            .map_err(|e| src.invalid("spool.jetstream.creds_file", format!("can't read {path:?}: {e}")))?;
        NatsAuth::Creds(PathBuf::from(path))
    } else if let Some(token) = super::env_secret(NATS_TOKEN_ENV) {
        NatsAuth::Token(token)
    } else {
        NatsAuth::None
    };
    let ca_file = match &j.ca_file {
        Some(path) => {
            std::fs::metadata(path)
                .map_err(|e| src.invalid("spool.jetstream.ca_file", format!("can't read {path:?}: {e}")))?;
            Some(PathBuf::from(path))
        }
        None => None,
    };
    let name = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
        let s = v.clone().unwrap_or_else(|| "sluice".to_string());
        if !is_name(&s) {
            return Err(src.invalid(key, format!("{s:?} must be 1-48 characters of [A-Za-z0-9_-]")));
        }
        Ok(s)
    };
    let stream = name("spool.jetstream.stream", &j.stream)?;
    let subject_prefix = name("spool.jetstream.subject_prefix", &j.subject_prefix)?;
    let replicas = j.replicas.unwrap_or(1);
    if replicas != 1 && replicas != 3 {
        return Err(src.invalid(
            "spool.jetstream.replicas",
            "must be 1 or 3 (3 keeps every acknowledged record on a quorum of a 3-node cluster)",
        ));
    }
    let max_bytes = match &j.max_bytes {
        Some(s) => s.parse().map_err(|m| src.invalid("spool.jetstream.max_bytes", m))?,
        None => 1 << 30,
    };
    if max_bytes < max_record {
        return Err(src.invalid(
            "spool.jetstream.max_bytes",
            "must be at least spool.max_record (it is the quota of all partition streams together)",
        ));
    }
    let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        let d = match v {
            Some(s) => parse_duration(s).map_err(|m| src.invalid(key, m))?,
            None => default,
        };
        if d.is_zero() {
            return Err(src.invalid(key, "must be above zero"));
        }
        Ok(d)
    };
    Ok(JetStreamConfig {
        servers,
        auth,
        ca_file,
        stream,
        subject_prefix,
        replicas,
        max_bytes,
        max_age: dur(
            "spool.jetstream.max_age",
            &j.max_age,
            Duration::from_secs(7 * 24 * 3600),
        )?,
        ack_wait: dur("spool.jetstream.ack_wait", &j.ack_wait, Duration::from_secs(30))?,
        publish_timeout: dur(
            "spool.jetstream.publish_timeout",
            &j.publish_timeout,
            Duration::from_secs(2),
        )?,
    })
}
