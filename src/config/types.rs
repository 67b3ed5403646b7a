//! The runtime configuration types: what the rest of sluice reads, after
//! validation ([`super::validate`]) has filled in every default.

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::units::Rate;

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
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    /// `[tracing] otlp_endpoint`: replay spans are exported there.
    pub otlp_endpoint: Option<Uri>,
    pub routes: Vec<RouteConfig>,
}

/// Where a limit's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// In this process: each replica has its own.
    #[default]
    Local,
    /// In the cluster store: one limit for every replica together.
    Global,
}

/// What a global limit does while the cluster store can't be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Local buckets at the limit ÷ the replicas last seen alive.
    Local,
    /// As if over the limit.
    Reject,
    /// As if under it.
    Allow,
}

/// A secret read from a file or the environment: compared and cloned like
/// any value, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A `redis://` or `rediss://` URL as written. It may carry a password, so
/// it prints only as [`RedisUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(s: impl Into<String>) -> RedisUrl {
        RedisUrl(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password in its userinfo replaced by `***`.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
            return "<unparsable redis URL>".into();
        };
        let rest = &s[scheme_end..];
        // The userinfo ends at the last '@' before any query or fragment:
        // a password may hold '/', ':' or '?'-free anything, and must not
        // slip out because it looks like a path.
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        let Some(at) = rest[..end].rfind('@') else {
            return s.clone();
        };
        let userinfo = &rest[..at];
        let user = match userinfo.find(':') {
            Some(colon) => format!("{}:***", &userinfo[..colon]),
            None => userinfo.to_string(),
        };
        format!("{}{}{}", &s[..scheme_end], user, &rest[at..])
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `[cluster]`. Without `redis_url` there is no cluster and every limit is
/// local.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub redis_url: Option<RedisUrl>,
    /// From `password_file`, else `SLUICE_REDIS_PASSWORD`; overrides one
    /// in the URL.
    pub password: Option<Secret>,
    pub namespace: String,
    /// Longest a request waits on the store before the fallback decides.
    pub timeout: Duration,
    /// Fallback divisor; `None`: the replicas last seen alive.
    pub replicas: Option<u32>,
    pub on_store_error: OnStoreError,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            password: None,
            namespace: "sluice".into(),
            timeout: Duration::from_millis(50),
            replicas: None,
            on_store_error: OnStoreError::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`: the access log (reloadable) and the log format.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// One line per request (RUST_LOG must also let `sluice::access` info through).
    pub access: bool,
    pub format: LogFormat,
    /// Access lines go here instead of stderr; reopened on SIGUSR1.
    pub access_file: Option<PathBuf>,
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
    /// How request paths are normalised before routing (`proxy::path`).
    pub path: PathPolicy,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
}

/// What to do with `%2F` and `%5C` in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400.
    Reject,
    /// Forwarded as they are, never taken for a separator.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Decode escaped unreserved characters, resolve dot segments.
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
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
    /// `Global`: `capacity` is one number for the whole fleet.
    pub scope: Scope,
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
    /// Bound on dead letters kept; the oldest are dropped past it.
    pub dlq_max_bytes: u64,
    /// Dead letters older than this are dropped.
    pub dlq_retention: Duration,
    /// Where spooled records live: this node's disk, or a JetStream cluster.
    pub backend: SpoolBackend,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpoolBackend {
    Local,
    JetStream(Box<JetStreamConfig>),
}

impl SpoolBackend {
    pub fn jetstream(&self) -> Option<&JetStreamConfig> {
        match self {
            SpoolBackend::JetStream(js) => Some(js),
            SpoolBackend::Local => None,
        }
    }
}

/// `[spool.jetstream]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamConfig {
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    /// Extra CA certificates (PEM) for a TLS server; TLS is then required.
    pub ca_file: Option<PathBuf>,
    /// Streams are `<stream>-<partition>` and `<stream>-dlq`; the buckets
    /// `<stream>-state` and `<stream>-control`.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<partition>` and `<subject_prefix>.dlq`.
    pub subject_prefix: String,
    pub replicas: usize,
    /// Quota over all partition streams (each gets its share).
    pub max_bytes: u64,
    pub max_age: Duration,
    pub ack_wait: Duration,
    pub publish_timeout: Duration,
}

/// How sluice proves itself to the NATS servers (at most one way).
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    None,
    Token(Secret),
    UserPassword {
        user: String,
        password: Secret,
    },
    /// An nkey seed (`SU...`).
    NKey(Secret),
    /// A `.creds` file (JWT and seed), read by the client at connect.
    Creds(PathBuf),
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
    /// `[drain.signing]`: the keys replays are signed with.
    pub signing: Option<crate::drain::signing::Signer>,
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
    /// `path` and `path_prefix` compare ASCII case-insensitively.
    pub ignore_case: bool,
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
    pub scope: Scope,
    /// The longest `Prefer: wait=N` honoured; zero ignores it.
    pub prefer_wait_max: Duration,
}
