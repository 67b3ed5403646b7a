//! The data port: listener, request handling, forwarding client, header
//! hygiene, and the one place where errors become responses.

pub mod body;
pub mod client;
pub mod error;
pub mod headers;
pub mod listener;
mod service;

pub use service::{ConnInfo, ProxyService};

use crate::admission::RouteTable;
use crate::config::{Config, UNMATCHED_ROUTE};
use crate::drain::spooler::Spooler;
use crate::metrics::{Metrics, RouteMetrics, Source, UpstreamMetrics};
use crate::upstream::adaptive::{AdaptiveConfig, AdaptiveLimit};
use crate::upstream::breaker::Breaker;
use crate::upstream::{Budget, BudgetSpec};
use arc_swap::ArcSwap;
use client::UpstreamClient;
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
    pub budget: Arc<Budget>,
}

impl Runtime {
    /// Builds the runtime for `config`, keeping bucket and budget state
    /// from `previous` where their parameters are unchanged.
    pub fn build(config: Arc<Config>, metrics: &Metrics, previous: Option<&Runtime>) -> Runtime {
        let table = RouteTable::build(&config.routes, previous.map(|p| &p.table));
        let stats = config
            .routes
            .iter()
            .map(|r| Arc::new(RouteStats::new(&r.name, Some(r.rate), metrics)))
            .collect();
        let spec = BudgetSpec::from(&config.upstream);
        // One budget for the life of the process: a reload resizes it in
        // place, so requests in flight stay counted.
        let budget = match previous {
            Some(p) => {
                p.budget.resize(spec);
                p.budget.clone()
            }
            None => Arc::new(Budget::new(spec)),
        };
        Runtime {
            table,
            stats,
            unmatched: Arc::new(RouteStats::new(UNMATCHED_ROUTE, None, metrics)),
            budget,
            config,
        }
    }
}

/// State shared by every connection of the data port (and the drainer).
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub live: UpstreamMetrics,
    pub spooler: Arc<Spooler>,
    pub breaker: Breaker,
    /// Replay's in-flight limit when `upstream.adaptive` is on.
    pub adaptive: AdaptiveLimit,
}

impl Shared {
    pub fn new(runtime: Runtime, client: UpstreamClient, metrics: Arc<Metrics>, spooler: Arc<Spooler>) -> Shared {
        let cfg = runtime.config.clone();
        Shared {
            breaker: Breaker::new(cfg.breaker, metrics.breaker_open.clone()),
            adaptive: AdaptiveLimit::new(
                AdaptiveConfig::for_max(cfg.upstream.max_concurrency),
                metrics.replay_limit.with_label_values(&["concurrency"]),
                metrics.replay_limit.with_label_values(&["rate"]),
            ),
            runtime: ArcSwap::from_pointee(runtime),
            client,
            live: metrics.upstream(Source::Live),
            metrics,
            spooler,
        }
    }

    /// Installs a new runtime (reload) and passes its limits on.
    pub fn install(&self, runtime: Runtime) {
        self.breaker.reconfigure(runtime.config.breaker);
        self.adaptive
            .reconfigure(AdaptiveConfig::for_max(runtime.config.upstream.max_concurrency));
        self.runtime.store(Arc::new(runtime));
    }
}
