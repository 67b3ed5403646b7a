//! What the data port, the drainer and reload share: the config snapshot
//! a reload swaps ([`Runtime`]), and the long-lived parts around it
//! ([`Shared`]: the upstream parts, the spool intake, metrics).

use crate::accesslog::AccessLog;
use crate::admission::RouteTable;
use crate::cluster::Cluster;
use crate::config::{Config, UNMATCHED_ROUTE};
use crate::drain::spooler::Spooler;
use crate::metrics::{Metrics, RouteMetrics, Source};
use crate::upstream::adaptive::{AdaptiveConfig, AdaptiveLimit};
use crate::upstream::breaker::Breaker;
use crate::upstream::client::UpstreamClient;
use crate::upstream::{Budget, BudgetSpec, UpstreamParts};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// A route's name and pre-resolved metric handles.
pub struct RouteStats {
    pub name: Arc<str>,
    pub metrics: RouteMetrics,
    /// `RateLimit-Policy` never changes for a route: rendered once.
    pub policy_header: http::HeaderValue,
}

impl RouteStats {
    fn new(name: &str, rate: Option<crate::config::Rate>, metrics: &Metrics) -> Self {
        let policy = rate
            .map(|r| format!("\"{name}\";q={};w={}", r.count, r.per.as_secs().max(1)))
            .unwrap_or_default();
        RouteStats {
            name: Arc::from(name),
            metrics: metrics.route(name),
            policy_header: http::HeaderValue::from_str(&policy).unwrap_or(http::HeaderValue::from_static("")),
        }
    }
}

/// Everything a reload replaces at once, swapped atomically so a request
/// sees one consistent config from start to end.
pub struct Runtime {
    pub config: Arc<Config>,
    pub table: RouteTable,
    /// Parallel to `table.routes()`.
    pub stats: Vec<Arc<RouteStats>>,
    pub unmatched: Arc<RouteStats>,
}

impl Runtime {
    /// Builds the runtime for `config`, keeping bucket state from
    /// `previous` where a route's limits are unchanged.
    pub fn build(
        config: Arc<Config>,
        metrics: &Metrics,
        previous: Option<&Runtime>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Runtime {
        let table = RouteTable::build_in(&config.routes, previous.map(|p| &p.table), cluster);
        let stats = config
            .routes
            .iter()
            .map(|r| Arc::new(RouteStats::new(&r.name, Some(r.rate), metrics)))
            .collect();
        Runtime {
            table,
            stats,
            unmatched: Arc::new(RouteStats::new(UNMATCHED_ROUTE, None, metrics)),
            config,
        }
    }
}

/// State shared by every connection of the data port, the drainer and
/// reload.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub upstream: UpstreamParts,
    pub metrics: Arc<Metrics>,
    pub spooler: Arc<Spooler>,
    pub access_log: AccessLog,
    /// The store of global limits, if `[cluster]` has one.
    pub cluster: Option<Arc<Cluster>>,
    /// Where replay spans go, with `[tracing] otlp_endpoint`.
    pub spans: Option<crate::otlp::ReplaySpans>,
}

impl Shared {
    pub fn new(
        runtime: Runtime,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        spooler: Arc<Spooler>,
        cluster: Option<Arc<Cluster>>,
    ) -> Shared {
        let cfg = runtime.config.clone();
        let upstream = UpstreamParts {
            client,
            // One budget for the life of the process: a reload resizes it
            // in place, so requests in flight stay counted.
            budget: Arc::new(Budget::new_in(BudgetSpec::from(&cfg.upstream), cluster.clone())),
            breaker: Arc::new(Breaker::new(cfg.breaker, metrics.breaker_open.clone())),
            adaptive: Arc::new(AdaptiveLimit::new(
                AdaptiveConfig::for_max(cfg.upstream.max_concurrency),
                metrics.replay_limit.with_label_values(&["concurrency"]),
                metrics.replay_limit.with_label_values(&["rate"]),
            )),
            live_metrics: Arc::new(metrics.upstream(Source::Live)),
            replay_metrics: Arc::new(metrics.upstream(Source::Replay)),
        };
        upstream.adaptive.set_enabled(cfg.upstream.adaptive);
        let access_log = AccessLog::start(&cfg.log, metrics.log_dropped.clone());
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            upstream,
            metrics,
            spooler,
            access_log,
            cluster,
            spans: None,
        }
    }

    /// Installs a new runtime (reload) and passes its limits on.
    pub fn install(&self, runtime: Runtime) {
        let cfg = &runtime.config;
        self.upstream.budget.resize(BudgetSpec::from(&cfg.upstream));
        self.upstream.breaker.reconfigure(cfg.breaker);
        self.upstream
            .adaptive
            .reconfigure(AdaptiveConfig::for_max(cfg.upstream.max_concurrency));
        self.upstream.adaptive.set_enabled(cfg.upstream.adaptive);
        self.access_log.configure(&cfg.log);
        if let Some(c) = &self.cluster {
            c.reconfigure(&cfg.cluster);
        }
        self.runtime.store(Arc::new(runtime));
    }
}
