//! Validation: the file as written ([`super::file`]) into the runtime
//! types ([`super::types`]), with every default filled in and every error
//! naming its key path.

use http::Uri;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod cluster;
mod jetstream;
mod route;

use super::error::Source;
use super::file::*;
use super::types::*;
use super::units::{self, parse_duration, parse_rate};
use super::ConfigError;
use cluster::validate_cluster;
use jetstream::validate_jetstream;
use route::validate_route;

pub(super) fn validate(src: &Source<'_>, f: FileConfig, upstream_given: bool) -> Result<Config, ConfigError> {
    let dur = |path: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            Some(s) => parse_duration(s).map_err(|m| src.invalid(path, m)),
            None => Ok(default),
        }
    };
    let size = |path: &str, v: &Option<units::SizeLit>, default: u64| -> Result<u64, ConfigError> {
        match v {
            Some(s) => s.parse().map_err(|m| src.invalid(path, m)),
            None => Ok(default),
        }
    };
    let addr = |path: &str, v: &Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
        let s = v.as_deref().unwrap_or(default);
        s.parse().map_err(|_| {
            src.invalid(
                path,
                format!("invalid socket address {s:?}; expected IP:PORT such as \"0.0.0.0:8080\""),
            )
        })
    };

    // [server]
    let s = &f.server;
    let status_path_prefix = s.status_path_prefix.clone().unwrap_or_else(|| "/_sluice".into());
    if !status_path_prefix.is_empty() && (!status_path_prefix.starts_with('/') || status_path_prefix.ends_with('/')) {
        return Err(src.invalid(
            "server.status_path_prefix",
            "must start with '/' and not end with '/' (or be \"\" to disable the status endpoint)",
        ));
    }
    let mut trusted_proxies = Vec::new();
    for (i, p) in s.trusted_proxies.iter().flatten().enumerate() {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                src.invalid(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("invalid CIDR or address {p:?}"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let server = ServerConfig {
        listen: addr("server.listen", &s.listen, "0.0.0.0:8080")?,
        admin_listen: addr("server.admin_listen", &s.admin_listen, "0.0.0.0:9090")?,
        max_body: size("server.max_body", &s.max_body, 1 << 20)?,
        request_timeout: dur("server.request_timeout", &s.request_timeout, Duration::from_secs(30))?,
        shutdown_grace: dur("server.shutdown_grace", &s.shutdown_grace, Duration::from_secs(20))?,
        status_path_prefix,
        trusted_proxies,
        tls: s.tls.as_ref().map(|t| TlsConfig {
            cert: PathBuf::from(&t.cert),
            key: PathBuf::from(&t.key),
        }),
        header_read_timeout: dur(
            "server.header_read_timeout",
            &s.header_read_timeout,
            Duration::from_secs(10),
        )?,
        max_headers: s.max_headers.unwrap_or(100),
        max_header_bytes: size("server.max_header_bytes", &s.max_header_bytes, 64 << 10)? as usize,
        workers: s.workers,
        status_retention: dur(
            "server.status_retention",
            &s.status_retention,
            Duration::from_secs(24 * 3600),
        )?,
        status_max_entries: s.status_max_entries.unwrap_or(100_000),
        config_poll_interval: dur(
            "server.config_poll_interval",
            &s.config_poll_interval,
            Duration::from_secs(2),
        )?,
        keepalive_timeout: dur(
            "server.keepalive_timeout",
            &s.keepalive_timeout,
            Duration::from_secs(60),
        )?,
        send_timeout: dur("server.send_timeout", &s.send_timeout, Duration::from_secs(10))?,
        max_connections: s.max_connections.unwrap_or(10_000),
        path: PathPolicy {
            normalize: s.normalize_path.unwrap_or(true),
            merge_slashes: s.merge_slashes.unwrap_or(true),
            escaped_slashes: match s.escaped_slashes.unwrap_or(EscapedSlashesFile::Reject) {
                EscapedSlashesFile::Reject => EscapedSlashes::Reject,
                EscapedSlashesFile::Keep => EscapedSlashes::Keep,
            },
        },
    };
    if server.keepalive_timeout.is_zero() {
        return Err(src.invalid("server.keepalive_timeout", "must be above zero"));
    }
    if server.send_timeout.is_zero() {
        return Err(src.invalid("server.send_timeout", "must be above zero"));
    }
    if server.max_connections == 0 {
        return Err(src.invalid("server.max_connections", "must be at least 1"));
    }
    if server.status_max_entries == 0 {
        return Err(src.invalid("server.status_max_entries", "must be at least 1"));
    }
    if server.workers == Some(0) {
        return Err(src.invalid("server.workers", "must be at least 1"));
    }
    if server.request_timeout.is_zero() {
        return Err(src.invalid("server.request_timeout", "must be above zero"));
    }
    if server.header_read_timeout.is_zero() {
        return Err(src.invalid("server.header_read_timeout", "must be above zero"));
    }
    if server.max_headers == 0 {
        return Err(src.invalid("server.max_headers", "must be at least 1"));
    }
    if server.max_header_bytes < 8192 {
        return Err(src.invalid("server.max_header_bytes", "must be at least 8KiB"));
    }

    // [upstream]
    let u = &f.upstream;
    let url = match &u.url {
        Some(text) => {
            let uri: Uri = text
                .parse()
                .map_err(|e| src.invalid("upstream.url", format!("invalid URL {text:?}: {e}")))?;
            check_upstream_uri(&uri).map_err(|m| src.invalid("upstream.url", m))?;
            uri
        }
        None if upstream_given => Uri::from_static("http://127.0.0.1"),
        None => {
            return Err(src.invalid(
                "upstream.url",
                "required: the backend's URL, for example \"http://127.0.0.1:3000\"",
            ))
        }
    };
    let capacity = match &u.capacity {
        Some(c) => Some(parse_rate(c).map_err(|m| src.invalid("upstream.capacity", m))?),
        None => None,
    };
    let capacity_burst = match u.capacity_burst {
        Some(0) => return Err(src.invalid("upstream.capacity_burst", "must be at least 1")),
        Some(b) => b,
        None => capacity
            .map(|c| ((c.per_second() / 10.0).floor() as u32).max(1))
            .unwrap_or(1),
    };
    let max_concurrency = u.max_concurrency.unwrap_or(256);
    if max_concurrency == 0 {
        return Err(src.invalid("upstream.max_concurrency", "must be at least 1"));
    }
    let upstream = UpstreamConfig {
        url,
        capacity,
        capacity_burst,
        max_concurrency,
        timeout: dur("upstream.timeout", &u.timeout, Duration::from_secs(10))?,
        adaptive: u.adaptive.unwrap_or(capacity.is_none()),
        pool_max_idle: u.pool_max_idle.unwrap_or(256),
        ca_file: u.ca_file.as_ref().map(PathBuf::from),
        scope: scope(u.scope),
    };
    if upstream.timeout.is_zero() {
        return Err(src.invalid("upstream.timeout", "must be above zero"));
    }

    // [spool]
    let sp = &f.spool;
    let mut spool = SpoolConfig {
        dir: PathBuf::from(sp.dir.as_deref().unwrap_or("./sluice-spool")),
        partitions: sp.partitions.unwrap_or(8),
        max_bytes: size("spool.max_bytes", &sp.max_bytes, 10 << 30)?,
        segment_bytes: size("spool.segment_bytes", &sp.segment_bytes, 64 << 20)?,
        max_record: size("spool.max_record", &sp.max_record, 1 << 20)?,
        fsync: match sp.fsync.unwrap_or(FsyncFile::Always) {
            FsyncFile::Always => FsyncPolicy::Always,
            FsyncFile::Interval => FsyncPolicy::Interval,
            FsyncFile::Never => FsyncPolicy::Never,
        },
        fsync_interval: dur("spool.fsync_interval", &sp.fsync_interval, Duration::from_millis(5))?,
        dlq_max_bytes: 0,
        dlq_retention: dur(
            "spool.dlq_retention",
            &sp.dlq_retention,
            Duration::from_secs(7 * 24 * 3600),
        )?,
        backend: SpoolBackend::Local,
    };
    spool.dlq_max_bytes = size("spool.dlq_max_bytes", &sp.dlq_max_bytes, spool.max_bytes / 10)?;
    if spool.partitions == 0 || spool.partitions > 1024 {
        return Err(src.invalid("spool.partitions", "must be between 1 and 1024"));
    }
    if spool.segment_bytes < 4096 {
        return Err(src.invalid("spool.segment_bytes", "must be at least 4KiB"));
    }
    if spool.max_record == 0 || spool.max_record > spool.segment_bytes {
        return Err(src.invalid("spool.max_record", "must be above zero and at most spool.segment_bytes"));
    }
    if spool.max_bytes < spool.segment_bytes {
        return Err(src.invalid("spool.max_bytes", "must be at least spool.segment_bytes"));
    }
    if spool.dlq_max_bytes == 0 || spool.dlq_max_bytes > spool.max_bytes {
        return Err(src.invalid("spool.dlq_max_bytes", "must be above zero and at most spool.max_bytes"));
    }
    if spool.dlq_retention.is_zero() {
        return Err(src.invalid("spool.dlq_retention", "must be above zero"));
    }
    if spool.fsync == FsyncPolicy::Interval && spool.fsync_interval.is_zero() {
        return Err(src.invalid("spool.fsync_interval", "must be above zero with fsync = \"interval\""));
    }
    match (sp.backend.unwrap_or(SpoolBackendFile::Local), &sp.jetstream) {
        (SpoolBackendFile::Local, None) => {}
        (SpoolBackendFile::Local, Some(_)) => {
            return Err(src.invalid("spool.jetstream", "is only read with spool.backend = \"jetstream\""))
        }
        (SpoolBackendFile::Jetstream, j) => {
            spool.backend = SpoolBackend::JetStream(Box::new(validate_jetstream(
                src,
                j.as_ref().unwrap_or(&Default::default()),
                spool.max_record,
            )?));
            // The DLQ stream is bounded like the local DLQ: a tenth of the
            // spool's quota unless set.
            if sp.dlq_max_bytes.is_none() {
                if let Some(js) = spool.backend.jetstream() {
                    spool.dlq_max_bytes = (js.max_bytes / 10).max(spool.max_record);
                }
            }
        }
    }

    // [drain]
    let d = &f.drain;
    let drain = DrainConfig {
        ordering: match d.ordering.unwrap_or(OrderingFile::Partition) {
            OrderingFile::Partition => Ordering::Partition,
            OrderingFile::None => Ordering::None,
        },
        max_attempts: d.max_attempts.unwrap_or(10),
        backoff_initial: dur("drain.backoff_initial", &d.backoff_initial, Duration::from_millis(200))?,
        backoff_max: dur("drain.backoff_max", &d.backoff_max, Duration::from_secs(60))?,
        retry_on: d.retry_on.clone().unwrap_or_else(|| vec![408, 429, 500, 502, 503, 504]),
        max_age: dur("drain.max_age", &d.max_age, Duration::from_secs(24 * 3600))?,
        signing: match &d.signing {
            None => None,
            Some(s) => {
                let key = "drain.signing.secret_file";
                let path = s
                    .secret_file
                    .as_ref()
                    .ok_or_else(|| src.invalid(key, "required: a file of one or two whsec_ secrets"))?;
                let text =
                    std::fs::read_to_string(path).map_err(|e| src.invalid(key, format!("can't read {path:?}: {e}")))?;
                Some(
                    crate::drain::signing::Signer::parse(&text)
                        .map_err(|e| src.invalid(key, format!("{path:?}: {e}")))?,
                )
            }
        },
    };
    if drain.max_attempts == 0 {
        return Err(src.invalid("drain.max_attempts", "must be at least 1"));
    }
    if drain.backoff_max < drain.backoff_initial {
        return Err(src.invalid("drain.backoff_max", "must be at least drain.backoff_initial"));
    }
    for (i, code) in drain.retry_on.iter().enumerate() {
        if !(100..=599).contains(code) {
            return Err(src.invalid(&format!("drain.retry_on[{i}]"), format!("{code} is not an HTTP status")));
        }
    }

    if let Some(js) = spool.backend.jetstream() {
        if js.max_age <= drain.max_age {
            return Err(src.invalid(
                "spool.jetstream.max_age",
                format!(
                    "must exceed drain.max_age ({}): the stream would drop records the drainer still owes",
                    humantime::format_duration(drain.max_age)
                ),
            ));
        }
    }

    // [breaker]
    let b = &f.breaker;
    let breaker = crate::upstream::breaker::BreakerConfig {
        failures: b.failures.unwrap_or(5),
        cooldown: dur("breaker.cooldown", &b.cooldown, Duration::from_secs(5))?,
        probes: b.probes.unwrap_or(1),
    };
    if breaker.probes == 0 {
        return Err(src.invalid("breaker.probes", "must be at least 1"));
    }
    if breaker.cooldown.is_zero() {
        return Err(src.invalid("breaker.cooldown", "must be above zero"));
    }

    let cluster = validate_cluster(src, &f.cluster)?;
    let otlp_endpoint = match &f.tracing.otlp_endpoint {
        Some(text) => {
            let key = "tracing.otlp_endpoint";
            let uri: Uri = text
                .parse()
                .map_err(|e| src.invalid(key, format!("invalid URL {text:?}: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(src.invalid(
                    key,
                    format!(
                        "{text:?} must be an http:// URL of an OTLP/HTTP collector (e.g. \"http://127.0.0.1:4318\")"
                    ),
                ));
            }
            Some(uri)
        }
        None => None,
    };
    let no_store = |key: &str| {
        src.invalid(
            key,
            "\"global\" needs cluster.redis_url: a global limit lives in the cluster store",
        )
    };
    if upstream.scope == Scope::Global {
        if cluster.redis_url.is_none() {
            return Err(no_store("upstream.scope"));
        }
        if upstream.capacity.is_none() {
            return Err(src.invalid(
                "upstream.scope",
                "\"global\" needs upstream.capacity: the fleet-wide rate the backend can take",
            ));
        }
    }

    // [[route]]
    let mut routes = Vec::with_capacity(f.route.len());
    for (i, r) in f.route.iter().enumerate() {
        routes.push(validate_route(src, i, r)?);
    }
    for (i, r) in routes.iter().enumerate() {
        if r.max_wait >= server.request_timeout {
            return Err(src.invalid(
                &format!("route[{i}].max_wait"),
                "must be below server.request_timeout, or the wait leaves no time for the backend",
            ));
        }
        if r.prefer_wait_max >= server.request_timeout {
            return Err(src.invalid(
                &format!("route[{i}].prefer_wait_max"),
                "must be below server.request_timeout, or the wait leaves no time for the backend",
            ));
        }
        if r.scope == Scope::Global && cluster.redis_url.is_none() {
            return Err(no_store(&format!("route[{i}].scope")));
        }
        if routes[..i].iter().any(|o| o.name == r.name) {
            return Err(src.invalid(
                &format!("route[{i}].name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
    }

    Ok(Config {
        source_path: None,
        server,
        admin: AdminConfig {
            token_file: f.admin.token_file.as_ref().map(PathBuf::from),
        },
        upstream,
        spool,
        drain,
        breaker,
        log: LogConfig {
            access: f.log.access.unwrap_or(true),
            format: match f.log.format {
                Some(LogFormatFile::Json) => LogFormat::Json,
                Some(LogFormatFile::Text) | None => LogFormat::Text,
            },
            access_file: f.log.access_file.as_ref().map(PathBuf::from),
        },
        cluster,
        otlp_endpoint,
        routes,
    })
}

/// A secret kept in a file (a password, a token, a key): its text without
/// the line ending (spaces may be part of it); an empty file is an error
/// naming `key`.
fn secret_file(src: &Source<'_>, key: &str, path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| src.invalid(key, format!("can't read {path:?}: {e}")))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(src.invalid(key, format!("{path:?} is empty")));
    }
    Ok(Secret::new(secret))
}

/// A secret from the environment variable `name`, when it is set and not
/// empty.
fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).map(Secret::new)
}

fn scope(s: Option<ScopeFile>) -> Scope {
    match s {
        Some(ScopeFile::Global) => Scope::Global,
        Some(ScopeFile::Local) | None => Scope::Local,
    }
}

fn check_upstream_uri(uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{uri} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{uri} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{uri} must not have a path or query: requests keep their own path"
        ));
    }
    Ok(())
}

/// Validates a `--upstream` value like the file's `upstream.url`.
pub fn parse_upstream_flag(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    check_upstream_uri(&uri)?;
    Ok(uri)
}
