//! Configuration: the file as written ([`file`]) is parsed with
//! `deny_unknown_fields`, then validated into the runtime types below.
//! Every error names the file, the line and the key path ([`error`]).
//!
//! Command-line flags override the file after validation; they are parsed
//! into typed values by clap, so they never produce a file error.

mod error;
mod file;
pub mod units;

pub use error::ConfigError;
pub use units::Rate;

use error::Source;
use file::*;
use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use units::{parse_duration, parse_rate};

/// The embedded default (SPEC §3): one `default` route that spools the
/// excess. The upstream comes from `--upstream`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");
const EMBEDDED_NAME: &str = "<embedded default>";

/// Name under which requests that match no route are counted.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; `None` for the embedded default. Reload
    /// re-reads it.
    pub source_path: Option<PathBuf>,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub spool: SpoolConfig,
    pub drain: DrainConfig,
    pub breaker: crate::upstream::breaker::BreakerConfig,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body: u64,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Empty disables the status endpoint.
    pub status_path_prefix: String,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsConfig>,
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// `None`: one per CPU core.
    pub workers: Option<usize>,
    pub status_retention: Duration,
    pub status_max_entries: usize,
    /// Zero: the file is not watched (SIGHUP and /admin/reload still work).
    pub config_poll_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdminConfig {
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub url: Uri,
    pub capacity: Option<Rate>,
    pub capacity_burst: u32,
    pub max_concurrency: u32,
    pub timeout: Duration,
    pub adaptive: bool,
    pub pool_max_idle: usize,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub partitions: u32,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub max_record: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Partition,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    pub ordering: Ordering,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub retry_on: Vec<u16>,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Global,
    ClientIp,
    Header(HeaderName),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Global => f.write_str("global"),
            KeySource::ClientIp => f.write_str("client_ip"),
            KeySource::Header(h) => write!(f, "header:{h}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    Spool,
    Reject,
    Wait,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub rate: Rate,
    pub burst: u32,
    pub key: KeySource,
    pub max_keys: usize,
    pub on_limit: OnLimit,
    pub max_wait: Duration,
    /// `None`: round robin.
    pub partition_key: Option<KeySource>,
    pub ordered: bool,
    pub spool_methods: Vec<Method>,
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<Uri>,
    pub spool_dir: Option<PathBuf>,
    /// Applies to the route named `default`.
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
}

impl Config {
    /// Loads `path`, or the embedded default when `None`, and applies the
    /// command-line overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: p.display().to_string(),
                    source,
                })?;
                let mut cfg = Config::parse(&p.display().to_string(), &text, overrides)?;
                cfg.source_path = Some(p.to_path_buf());
                Ok(cfg)
            }
            None => {
                if overrides.upstream.is_none() {
                    return Err(ConfigError::Usage(
                        "no config given: pass `-c FILE`, or `--upstream URL` to run on the embedded default \
                         (for example `sluice run --upstream http://127.0.0.1:3000`)"
                            .into(),
                    ));
                }
                Config::parse(EMBEDDED_NAME, EMBEDDED_DEFAULT, overrides)
            }
        }
    }

    /// Parses and validates config text; `file` is only used in errors.
    pub fn parse(file: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let src = Source::new(file, text);
        let raw: FileConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let mut cfg = validate(&src, raw, overrides.upstream.is_some())?;
        cfg.apply(overrides, &src)?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides, src: &Source<'_>) -> Result<(), ConfigError> {
        if let Some(a) = o.listen {
            self.server.listen = a;
        }
        if let Some(a) = o.admin_listen {
            self.server.admin_listen = a;
        }
        if let Some(u) = &o.upstream {
            self.upstream.url = u.clone();
        }
        if let Some(d) = &o.spool_dir {
            self.spool.dir = d.clone();
        }
        if o.rate.is_some() || o.burst.is_some() {
            let route = self.routes.iter_mut().find(|r| r.name == "default").ok_or_else(|| {
                ConfigError::Usage(format!(
                    "--rate/--burst apply to the route named \"default\", and {} has none",
                    src.file
                ))
            })?;
            if let Some(r) = o.rate {
                route.rate = r;
                route.burst = r.one_second_burst();
            }
            if let Some(b) = o.burst {
                if b == 0 {
                    return Err(ConfigError::Usage("--burst must be at least 1".into()));
                }
                route.burst = b;
            }
        }
        Ok(())
    }

    /// Keys whose change only takes effect after a restart, as dotted paths.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.server.listen != new.server.listen {
            out.push("server.listen");
        }
        if self.server.admin_listen != new.server.admin_listen {
            out.push("server.admin_listen");
        }
        if self.server.workers != new.server.workers {
            out.push("server.workers");
        }
        if self.server.status_retention != new.server.status_retention
            || self.server.status_max_entries != new.server.status_max_entries
        {
            out.push("server.status_retention");
        }
        if self.server.tls != new.server.tls {
            out.push("server.tls");
        }
        if self.spool.dir != new.spool.dir {
            out.push("spool.dir");
        }
        if self.spool.partitions != new.spool.partitions {
            out.push("spool.partitions");
        }
        if self.spool.fsync != new.spool.fsync || self.spool.fsync_interval != new.spool.fsync_interval {
            out.push("spool.fsync");
        }
        if self.spool.segment_bytes != new.spool.segment_bytes {
            out.push("spool.segment_bytes");
        }
        if self.spool.max_bytes != new.spool.max_bytes {
            out.push("spool.max_bytes");
        }
        if self.spool.max_record != new.spool.max_record {
            out.push("spool.max_record");
        }
        if self.server.max_header_bytes != new.server.max_header_bytes
            || self.server.max_headers != new.server.max_headers
            || self.server.header_read_timeout != new.server.header_read_timeout
        {
            out.push("server.max_header_bytes/max_headers/header_read_timeout");
        }
        if self.upstream.url != new.upstream.url {
            out.push("upstream.url");
        }
        if self.upstream.ca_file != new.upstream.ca_file {
            out.push("upstream.ca_file");
        }
        if self.upstream.pool_max_idle != new.upstream.pool_max_idle {
            out.push("upstream.pool_max_idle");
        }
        if self.admin.token_file != new.admin.token_file {
            out.push("admin.token_file");
        }
        out
    }

    /// Copies the restart-only keys from `running` so a reload never
    /// half-applies them.
    pub fn keep_restart_only(&mut self, running: &Config) {
        self.server.listen = running.server.listen;
        self.server.admin_listen = running.server.admin_listen;
        self.server.tls = running.server.tls.clone();
        self.server.workers = running.server.workers;
        self.server.status_retention = running.server.status_retention;
        self.server.status_max_entries = running.server.status_max_entries;
        self.spool.dir = running.spool.dir.clone();
        self.spool.partitions = running.spool.partitions;
        self.spool.fsync = running.spool.fsync;
        self.spool.fsync_interval = running.spool.fsync_interval;
        self.spool.segment_bytes = running.spool.segment_bytes;
        self.spool.max_bytes = running.spool.max_bytes;
        self.spool.max_record = running.spool.max_record;
        self.server.max_header_bytes = running.server.max_header_bytes;
        self.server.max_headers = running.server.max_headers;
        self.server.header_read_timeout = running.server.header_read_timeout;
        self.upstream.url = running.upstream.url.clone();
        self.upstream.ca_file = running.upstream.ca_file.clone();
        self.upstream.pool_max_idle = running.upstream.pool_max_idle;
        self.admin.token_file = running.admin.token_file.clone();
    }

    /// The routes as understood, for `sluice check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen {}  admin {}  upstream {}",
            self.server.listen, self.server.admin_listen, self.upstream.url
        );
        let cap = self
            .upstream
            .capacity
            .map(|c| format!("{c} (burst {})", self.upstream.capacity_burst))
            .unwrap_or_else(|| "unset".into());
        let _ = writeln!(
            s,
            "upstream budget: capacity {cap}, max_concurrency {}, adaptive {}",
            self.upstream.max_concurrency, self.upstream.adaptive
        );
        let _ = writeln!(
            s,
            "spool {} ({} partitions, fsync {:?}, max {} bytes)",
            self.spool.dir.display(),
            self.spool.partitions,
            self.spool.fsync,
            self.spool.max_bytes
        );
        let _ = writeln!(s, "routes (first match wins):");
        for (i, r) in self.routes.iter().enumerate() {
            let mut m = Vec::new();
            if let Some(p) = &r.matcher.path_prefix {
                m.push(format!("path_prefix={p}"));
            }
            if let Some(p) = &r.matcher.path {
                m.push(format!("path={p}"));
            }
            if let Some(h) = &r.matcher.host {
                m.push(format!("host={h}"));
            }
            if let Some(ms) = &r.matcher.methods {
                let ms: Vec<_> = ms.iter().map(|m| m.as_str()).collect();
                m.push(format!("methods={}", ms.join(",")));
            }
            if m.is_empty() {
                m.push("everything".into());
            }
            let _ = writeln!(
                s,
                "  {i}. {name:<12} match {m:<40} rate {rate} burst {burst} key {key} on_limit {on:?}{wait}",
                name = r.name,
                m = m.join(" "),
                rate = r.rate,
                burst = r.burst,
                key = r.key,
                on = r.on_limit,
                wait = if r.max_wait.is_zero() {
                    String::new()
                } else {
                    format!(" max_wait {}", humantime::format_duration(r.max_wait))
                },
            );
        }
        s
    }
}

fn validate(src: &Source<'_>, f: FileConfig, upstream_given: bool) -> Result<Config, ConfigError> {
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
    };
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
    };
    if upstream.timeout.is_zero() {
        return Err(src.invalid("upstream.timeout", "must be above zero"));
    }

    // [spool]
    let sp = &f.spool;
    let spool = SpoolConfig {
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
    };
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
    if spool.fsync == FsyncPolicy::Interval && spool.fsync_interval.is_zero() {
        return Err(src.invalid("spool.fsync_interval", "must be above zero with fsync = \"interval\""));
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
        routes,
    })
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

fn parse_key_source(s: &str) -> Result<KeySource, String> {
    match s {
        "global" => Ok(KeySource::Global),
        "client_ip" => Ok(KeySource::ClientIp),
        _ => match s.strip_prefix("header:") {
            Some(name) => HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            None => Err(format!(
                "invalid key {s:?}; expected \"global\", \"client_ip\" or \"header:NAME\""
            )),
        },
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    let up = s.to_ascii_uppercase();
    Method::from_bytes(up.as_bytes()).map_err(|_| format!("{s:?} is not an HTTP method"))
}

fn validate_route(src: &Source<'_>, i: usize, r: &RouteFile) -> Result<RouteConfig, ConfigError> {
    let p = |k: &str| format!("route[{i}].{k}");
    let name = r.name.clone().ok_or_else(|| src.invalid(&p("name"), "required"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(src.invalid(
            &p("name"),
            "must be 1-64 characters of [A-Za-z0-9_.-] (it becomes a metric label and a header token)",
        ));
    }
    if name == UNMATCHED_ROUTE {
        return Err(src.invalid(&p("name"), "\"unmatched\" is reserved for requests that match no route"));
    }
    let m = &r.matcher;
    if m.path.is_some() && m.path_prefix.is_some() {
        return Err(src.invalid(&p("match"), "give either path or path_prefix, not both"));
    }
    for (k, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                return Err(src.invalid(&p(&format!("match.{k}")), format!("{v:?} must start with '/'")));
            }
        }
    }
    let methods = match &m.methods {
        Some(list) => {
            let mut out = Vec::new();
            for (j, s) in list.iter().enumerate() {
                out.push(parse_method(s).map_err(|msg| src.invalid(&p(&format!("match.methods[{j}]")), msg))?);
            }
            Some(out)
        }
        None => None,
    };
    let rate_text = r
        .rate
        .as_ref()
        .ok_or_else(|| src.invalid(&p("rate"), "required, e.g. rate = \"50/s\""))?;
    let rate = parse_rate(rate_text).map_err(|m| src.invalid(&p("rate"), m))?;
    let burst = match r.burst {
        Some(0) => return Err(src.invalid(&p("burst"), "must be at least 1")),
        Some(b) => b,
        None => rate.one_second_burst(),
    };
    let key = match &r.key {
        Some(k) => parse_key_source(k).map_err(|m| src.invalid(&p("key"), m))?,
        None => KeySource::Global,
    };
    let max_keys = r.max_keys.unwrap_or(100_000);
    if max_keys == 0 {
        return Err(src.invalid(&p("max_keys"), "must be at least 1"));
    }
    let on_limit = match r.on_limit.unwrap_or(OnLimitFile::Reject) {
        OnLimitFile::Spool => OnLimit::Spool,
        OnLimitFile::Reject => OnLimit::Reject,
        OnLimitFile::Wait => OnLimit::Wait,
    };
    let max_wait = match &r.max_wait {
        Some(s) => parse_duration(s).map_err(|m| src.invalid(&p("max_wait"), m))?,
        None => Duration::ZERO,
    };
    if on_limit == OnLimit::Wait && max_wait.is_zero() {
        return Err(src.invalid(&p("max_wait"), "on_limit = \"wait\" needs a max_wait above zero"));
    }
    let partition_key = match &r.partition_key {
        Some(k) => Some(parse_key_source(k).map_err(|m| src.invalid(&p("partition_key"), m))?),
        None => None,
    };
    let spool_methods = match &r.spool_methods {
        Some(list) => {
            let mut out = Vec::new();
            for (j, s) in list.iter().enumerate() {
                let m = parse_method(s).map_err(|msg| src.invalid(&p(&format!("spool_methods[{j}]")), msg))?;
                if matches!(
                    m,
                    Method::GET | Method::HEAD | Method::OPTIONS | Method::CONNECT | Method::TRACE
                ) {
                    return Err(src.invalid(
                        &p(&format!("spool_methods[{j}]")),
                        format!("{m} can't be spooled: its answer can't be deferred"),
                    ));
                }
                out.push(m);
            }
            out
        }
        None => vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
    };
    Ok(RouteConfig {
        name,
        matcher: RouteMatch {
            path_prefix: m.path_prefix.clone(),
            path: m.path.clone(),
            methods,
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        },
        rate,
        burst,
        key,
        max_keys,
        on_limit,
        max_wait,
        partition_key,
        ordered: r.ordered.unwrap_or(false),
        spool_methods,
    })
}

#[cfg(test)]
mod tests;
