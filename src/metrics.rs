//! One Prometheus registry and typed handles to every metric of SPEC §7.
//!
//! Label values are bounded by construction: route names come from the
//! config (plus `unmatched`), partitions from the spool's fixed count, and
//! every other label from a closed enum below. Keys and paths never become
//! labels.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The `decision` label of `sluice_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionLabel {
    Forwarded,
    Spooled,
    Rejected,
    Shed,
    SpoolFull,
    TooLarge,
    UpstreamError,
    /// A bug: a panic below the route match answered 500.
    InternalError,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 8] = [
        DecisionLabel::Forwarded,
        DecisionLabel::Spooled,
        DecisionLabel::Rejected,
        DecisionLabel::Shed,
        DecisionLabel::SpoolFull,
        DecisionLabel::TooLarge,
        DecisionLabel::UpstreamError,
        DecisionLabel::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Forwarded => "forwarded",
            DecisionLabel::Spooled => "spooled",
            DecisionLabel::Rejected => "rejected",
            DecisionLabel::Shed => "shed",
            DecisionLabel::SpoolFull => "spool_full",
            DecisionLabel::TooLarge => "too_large",
            DecisionLabel::UpstreamError => "upstream_error",
            DecisionLabel::InternalError => "internal_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `source` label of the upstream metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Live,
    Replay,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Replay => "replay",
        }
    }
}

/// `class` label values of `sluice_upstream_requests_total`.
const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// Index into [`CLASSES`]: a status class, or "error" for no response.
fn class_index(status: Option<u16>) -> usize {
    match status {
        Some(200..=299) => 0,
        Some(300..=399) => 1,
        Some(400..=499) => 2,
        Some(500..=599) => 3,
        _ => 4,
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_in_flight: IntGaugeVec,
    pub spool_backlog_records: IntGaugeVec,
    pub spool_backlog_bytes: IntGaugeVec,
    pub spool_oldest_age: GaugeVec,
    pub spool_appended: IntCounterVec,
    pub spool_fsync_duration: Histogram,
    pub spool_disk_bytes: IntGauge,
    pub spool_recovered: IntCounterVec,
    pub dlq_dropped: IntCounterVec,
    pub connections_open: IntGauge,
    pub log_dropped: prometheus::IntCounter,
    pub connections_refused: prometheus::IntCounter,
    pub replay_total: IntCounterVec,
    pub replay_limit: GaugeVec,
    pub breaker_open: IntGauge,
    pub dlq_records: IntGauge,
    pub config_reloads: IntCounterVec,
}

/// Pre-resolved per-route handles, so the hot path does no label hashing.
#[derive(Clone)]
pub struct RouteMetrics {
    requests: Vec<prometheus::IntCounter>,
    durations: Vec<Histogram>,
}

impl RouteMetrics {
    pub fn observe(&self, decision: DecisionLabel, seconds: f64) {
        self.requests[decision.index()].inc();
        self.durations[decision.index()].observe(seconds);
    }
}

/// Pre-resolved handles for one upstream `source`.
#[derive(Clone)]
pub struct UpstreamMetrics {
    classes: [prometheus::IntCounter; 5],
    duration: Histogram,
    pub in_flight: prometheus::IntGauge,
}

impl UpstreamMetrics {
    pub fn observe(&self, status: Option<u16>, seconds: f64) {
        self.classes[class_index(status)].inc();
        self.duration.observe(seconds);
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric registered once");
                m
            }};
        }
        let hist = |name: &str, help: &str| HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let m = Metrics {
            requests: reg!(IntCounterVec::new(
                Opts::new(
                    "sluice_requests_total",
                    "Requests on the data port by route and admission decision."
                ),
                &["route", "decision"]
            )),
            request_duration: reg!(HistogramVec::new(
                hist(
                    "sluice_request_duration_seconds",
                    "Time from request to response head, by route and decision."
                ),
                &["route", "decision"]
            )),
            upstream_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "sluice_upstream_requests_total",
                    "Requests sent to the backend by source and status class."
                ),
                &["source", "class"]
            )),
            upstream_duration: reg!(HistogramVec::new(
                hist(
                    "sluice_upstream_duration_seconds",
                    "Backend response time (to response head) by source."
                ),
                &["source"]
            )),
            upstream_in_flight: reg!(IntGaugeVec::new(
                Opts::new(
                    "sluice_upstream_in_flight",
                    "Requests in flight to the backend by source."
                ),
                &["source"]
            )),
            spool_backlog_records: reg!(IntGaugeVec::new(
                Opts::new(
                    "sluice_spool_backlog_records",
                    "Records in the spool not yet delivered, by partition."
                ),
                &["partition"]
            )),
            spool_backlog_bytes: reg!(IntGaugeVec::new(
                Opts::new(
                    "sluice_spool_backlog_bytes",
                    "Bytes of records not yet delivered, by partition."
                ),
                &["partition"]
            )),
            spool_oldest_age: reg!(GaugeVec::new(
                Opts::new(
                    "sluice_spool_oldest_age_seconds",
                    "Age of the oldest undelivered record, by partition."
                ),
                &["partition"]
            )),
            spool_appended: reg!(IntCounterVec::new(
                Opts::new(
                    "sluice_spool_appended_total",
                    "Records appended to the spool, by partition."
                ),
                &["partition"]
            )),
            spool_fsync_duration: reg!(Histogram::with_opts(hist(
                "sluice_spool_fsync_duration_seconds",
                "Duration of spool fsyncs (one per group commit)."
            ))),
            spool_disk_bytes: reg!(IntGauge::new(
                "sluice_spool_disk_bytes",
                "Bytes the spool occupies on disk."
            )),
            spool_recovered: reg!(IntCounterVec::new(
                Opts::new(
                    "sluice_spool_recovered_total",
                    "What spool recovery found: records, truncated bytes, corrupt records."
                ),
                &["what"]
            )),
            log_dropped: reg!(prometheus::IntCounter::new(
                "sluice_log_dropped_total",
                "Access log lines dropped because the writer fell behind (requests never wait for the log)."
            )),
            connections_open: reg!(IntGauge::new(
                "sluice_connections_open",
                "Client connections open on the data port."
            )),
            connections_refused: reg!(prometheus::IntCounter::new(
                "sluice_connections_refused_total",
                "Client connections closed at once because server.max_connections were open."
            )),
            dlq_dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "sluice_dlq_dropped_total",
                    "Dead letters dropped to keep the dead-letter log within spool.dlq_max_bytes or spool.dlq_retention."
                ),
                &["reason"]
            )),
            replay_total: reg!(IntCounterVec::new(
                Opts::new("sluice_replay_total", "Replay outcomes of spooled records."),
                &["outcome"]
            )),
            replay_limit: reg!(GaugeVec::new(
                Opts::new(
                    "sluice_replay_limit",
                    "Current replay limit: rate (per second) and concurrency."
                ),
                &["kind"]
            )),
            breaker_open: reg!(IntGauge::new(
                "sluice_breaker_open",
                "1 while the upstream circuit breaker is open."
            )),
            dlq_records: reg!(IntGauge::new("sluice_dlq_records", "Records in the dead-letter queue.")),
            config_reloads: reg!(IntCounterVec::new(
                Opts::new("sluice_config_reloads_total", "Config reloads by result."),
                &["result"]
            )),
            registry,
        };
        // Series that should read 0 rather than be absent before their
        // first event, so rate() and alerts work from the start.
        for s in ["live", "replay"] {
            for c in CLASSES {
                m.upstream_requests.with_label_values(&[s, c]);
            }
            m.upstream_in_flight.with_label_values(&[s]);
        }
        for o in ["delivered", "retried", "dead", "expired"] {
            m.replay_total.with_label_values(&[o]);
        }
        for w in ["records", "truncated_bytes", "corrupt_records"] {
            m.spool_recovered.with_label_values(&[w]);
        }
        for r in DLQ_DROP_REASONS {
            m.dlq_dropped.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            m.config_reloads.with_label_values(&[r]);
        }
        m
    }

    pub fn route(&self, name: &str) -> RouteMetrics {
        RouteMetrics {
            requests: DecisionLabel::ALL
                .iter()
                .map(|d| self.requests.with_label_values(&[name, d.as_str()]))
                .collect(),
            durations: DecisionLabel::ALL
                .iter()
                .map(|d| self.request_duration.with_label_values(&[name, d.as_str()]))
                .collect(),
        }
    }

    pub fn upstream(&self, source: Source) -> UpstreamMetrics {
        let s = source.as_str();
        UpstreamMetrics {
            classes: CLASSES.map(|c| self.upstream_requests.with_label_values(&[s, c])),
            duration: self.upstream_duration.with_label_values(&[s]),
            in_flight: self.upstream_in_flight.with_label_values(&[s]),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec can't fail on I/O; a failure would be a bug
        // in metric definitions, which registration already checked.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds the spool's events into the registry; the spool itself knows no
/// metrics crate.
pub struct SpoolMetrics {
    fsync: Histogram,
    appended: Vec<prometheus::IntCounter>,
    recovered: [prometheus::IntCounter; 3],
    dlq_dropped: [prometheus::IntCounter; 2],
}

/// The `reason` label of `sluice_dlq_dropped_total`, as the spool reports it.
const DLQ_DROP_REASONS: [&str; 2] = ["max_bytes", "retention"];

impl SpoolMetrics {
    pub fn new(metrics: &Metrics, partitions: u32) -> SpoolMetrics {
        SpoolMetrics {
            fsync: metrics.spool_fsync_duration.clone(),
            appended: (0..partitions)
                .map(|p| metrics.spool_appended.with_label_values(&[&p.to_string()]))
                .collect(),
            recovered: ["records", "truncated_bytes", "corrupt_records"]
                .map(|w| metrics.spool_recovered.with_label_values(&[w])),
            dlq_dropped: DLQ_DROP_REASONS.map(|r| metrics.dlq_dropped.with_label_values(&[r])),
        }
    }
}

impl crate::spool::SpoolObserver for SpoolMetrics {
    fn fsync_done(&self, d: std::time::Duration) {
        self.fsync.observe(d.as_secs_f64());
    }

    fn appended(&self, partition: u32, _bytes: u64) {
        if let Some(c) = self.appended.get(partition as usize) {
            c.inc();
        }
    }

    fn recovered(&self, what: crate::spool::RecoveredKind, n: u64) {
        let i = match what {
            crate::spool::RecoveredKind::Records => 0,
            crate::spool::RecoveredKind::TruncatedBytes => 1,
            crate::spool::RecoveredKind::CorruptRecords => 2,
        };
        self.recovered[i].inc_by(n);
    }

    fn dlq_dropped(&self, reason: &'static str, n: u64) {
        if let Some(i) = DLQ_DROP_REASONS.iter().position(|r| *r == reason) {
            self.dlq_dropped[i].inc_by(n);
        }
    }
}

impl Metrics {
    /// Sets the spool gauges from a status snapshot (called at scrape).
    pub fn set_spool_status(&self, st: &crate::spool::SpoolStatus) {
        for p in &st.partitions {
            let label = p.partition.to_string();
            self.spool_backlog_records
                .with_label_values(&[&label])
                .set(p.backlog_records as i64);
            self.spool_backlog_bytes
                .with_label_values(&[&label])
                .set(p.backlog_bytes as i64);
            self.spool_oldest_age
                .with_label_values(&[&label])
                .set(p.oldest_age_seconds.unwrap_or(0.0));
        }
        self.spool_disk_bytes.set(st.disk_bytes as i64);
        self.dlq_records.set(st.dlq.records as i64);
    }
}

impl Metrics {
    /// `sluice_spool_store_up`, registered only with a spool that has a
    /// store to lose (JetStream).
    pub fn spool_store_up(&self) -> IntGauge {
        let gauge = IntGauge::new(
            "sluice_spool_store_up",
            "1 while the spool's store (the NATS cluster) is connected; 0 while spooling answers 503.",
        )
        .expect("a valid metric");
        // A second registration (two apps on one registry in tests) is
        // harmless.
        let _ = self.registry.register(Box::new(gauge.clone()));
        gauge
    }
}

/// The `[cluster]` series, registered only when a cluster store is
/// configured (a lone sidecar has no store to be down).
#[derive(Clone)]
pub struct ClusterMetrics {
    pub store_up: IntGauge,
    pub replicas: IntGauge,
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    pub lease_refills: IntCounterVec,
    pub fallbacks: prometheus::IntCounter,
    pub fallback_decisions: prometheus::IntCounter,
}

/// The `op` label of the store series.
pub const CLUSTER_OPS: [&str; 3] = ["gcra", "lease", "heartbeat"];

impl ClusterMetrics {
    pub fn register(metrics: &Metrics) -> ClusterMetrics {
        let reg = |m: Box<dyn prometheus::core::Collector>| {
            // Registered once per process; a second registration (tests
            // starting two apps on one registry) is harmless.
            let _ = metrics.registry.register(m);
        };
        let store_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let m = ClusterMetrics {
            store_up: IntGauge::new(
                "sluice_cluster_store_up",
                "1 while the cluster store (Redis) answers; 0 while global limits run on their fallback.",
            )
            .expect("valid"),
            replicas: IntGauge::new(
                "sluice_cluster_replicas",
                "Replicas seen alive through the cluster store's heartbeats (the fallback divisor).",
            )
            .expect("valid"),
            store_duration: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_cluster_store_duration_seconds",
                    "Round trips to the cluster store by operation.",
                )
                .buckets(store_buckets),
                &["op"],
            )
            .expect("valid"),
            store_errors: IntCounterVec::new(
                Opts::new(
                    "sluice_cluster_store_errors_total",
                    "Cluster store calls that failed or timed out, by operation.",
                ),
                &["op"],
            )
            .expect("valid"),
            lease_refills: IntCounterVec::new(
                Opts::new(
                    "sluice_cluster_lease_refills_total",
                    "Batches of tokens leased from a global limit, by limit (route name or \"upstream\").",
                ),
                &["limit"],
            )
            .expect("valid"),
            fallbacks: prometheus::IntCounter::new(
                "sluice_cluster_fallbacks_total",
                "Times the cluster store was found unreachable and global limits fell back.",
            )
            .expect("valid"),
            fallback_decisions: prometheus::IntCounter::new(
                "sluice_cluster_fallback_decisions_total",
                "Global-limit decisions made by cluster.on_store_error because the store was unreachable.",
            )
            .expect("valid"),
        };
        reg(Box::new(m.store_up.clone()));
        reg(Box::new(m.replicas.clone()));
        reg(Box::new(m.store_duration.clone()));
        reg(Box::new(m.store_errors.clone()));
        reg(Box::new(m.lease_refills.clone()));
        reg(Box::new(m.fallbacks.clone()));
        reg(Box::new(m.fallback_decisions.clone()));
        for op in CLUSTER_OPS {
            m.store_errors.with_label_values(&[op]);
        }
        m
    }
}
