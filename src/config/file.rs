//! The config file exactly as written: serde structs with
//! `deny_unknown_fields`, every optional key an `Option` so validation can
//! tell "absent, take the default" from "present and wrong".

use super::units::SizeLit;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub spool: SpoolFile,
    #[serde(default)]
    pub drain: DrainFile,
    #[serde(default)]
    pub breaker: BreakerFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub cluster: ClusterFile,
    #[serde(default)]
    pub tracing: TracingFile,
    #[serde(default)]
    pub route: Vec<RouteFile>,
}

/// `[tracing]`: where replay spans are exported.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    pub otlp_endpoint: Option<String>,
}

/// `[cluster]`: limits shared by every replica through Redis.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub redis_url: Option<String>,
    pub password_file: Option<String>,
    pub namespace: Option<String>,
    pub timeout: Option<String>,
    pub replicas: Option<u32>,
    pub on_store_error: Option<OnStoreErrorFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreErrorFile {
    Local,
    Reject,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeFile {
    Local,
    Global,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub access: Option<bool>,
    pub format: Option<LogFormatFile>,
    pub access_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatFile {
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive upstream failures that open the breaker (0: never).
    pub failures: Option<u32>,
    /// How long it stays open before half-open probes.
    pub cooldown: Option<String>,
    /// Probes let through while half-open.
    pub probes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body: Option<SizeLit>,
    pub request_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub status_path_prefix: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<TlsFile>,
    /// Not in the SPEC example: how long a client may take to send its
    /// request head before the connection is closed (slowloris guard).
    pub header_read_timeout: Option<String>,
    /// Cap on the number of request header fields.
    pub max_headers: Option<usize>,
    /// Cap on the bytes of a request head.
    pub max_header_bytes: Option<SizeLit>,
    /// Runtime worker threads; default: one per CPU core.
    pub workers: Option<usize>,
    /// How long the status endpoint remembers outcomes and dedupes keys.
    pub status_retention: Option<String>,
    /// At most this many outcomes (and as many idempotency keys) in memory.
    pub status_max_entries: Option<usize>,
    /// How often the config file is checked for changes ("0s": never).
    pub config_poll_interval: Option<String>,
    pub normalize_path: Option<bool>,
    /// Idle HTTP/1 connections (and h2 ones with no stream) close after this.
    pub keepalive_timeout: Option<String>,
    /// Longest a response may wait for the client to take the next write.
    pub send_timeout: Option<String>,
    /// Open connections on the data port, at most.
    pub max_connections: Option<usize>,
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<EscapedSlashesFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashesFile {
    Reject,
    Keep,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Option<String>,
    pub capacity: Option<String>,
    pub capacity_burst: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub timeout: Option<String>,
    pub adaptive: Option<bool>,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle: Option<usize>,
    /// Extra CA certificates (PEM) to trust for an https upstream, on top
    /// of the bundled web PKI roots.
    pub ca_file: Option<String>,
    pub scope: Option<ScopeFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFile {
    pub dir: Option<String>,
    pub partitions: Option<u32>,
    pub max_bytes: Option<SizeLit>,
    pub segment_bytes: Option<SizeLit>,
    pub max_record: Option<SizeLit>,
    pub fsync: Option<FsyncFile>,
    pub fsync_interval: Option<String>,
    pub dlq_max_bytes: Option<SizeLit>,
    pub dlq_retention: Option<String>,
    pub backend: Option<SpoolBackendFile>,
    pub jetstream: Option<JetStreamFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolBackendFile {
    Local,
    Jetstream,
}

/// `[spool.jetstream]`: the spool on a NATS JetStream cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamFile {
    pub servers: Option<Vec<String>>,
    pub token_file: Option<String>,
    pub user: Option<String>,
    pub password_file: Option<String>,
    pub nkey_file: Option<String>,
    pub creds_file: Option<String>,
    pub ca_file: Option<String>,
    pub stream: Option<String>,
    pub subject_prefix: Option<String>,
    pub replicas: Option<usize>,
    pub max_bytes: Option<SizeLit>,
    pub max_age: Option<String>,
    pub ack_wait: Option<String>,
    pub publish_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncFile {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainFile {
    pub signing: Option<SigningFile>,
    pub ordering: Option<OrderingFile>,
    pub max_attempts: Option<u32>,
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
    pub retry_on: Option<Vec<u16>>,
    pub max_age: Option<String>,
}

/// `[drain.signing]`: replays carry Standard Webhooks signatures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningFile {
    pub secret_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderingFile {
    Partition,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: MatchFile,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub key: Option<String>,
    pub max_keys: Option<usize>,
    pub on_limit: Option<OnLimitFile>,
    pub max_wait: Option<String>,
    pub partition_key: Option<String>,
    pub ordered: Option<bool>,
    pub spool_methods: Option<Vec<String>>,
    pub scope: Option<ScopeFile>,
    /// The longest `Prefer: wait=N` honoured; `0s` ignores it.
    pub prefer_wait_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub ignore_case: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimitFile {
    Spool,
    Reject,
    Wait,
}
