//! The cluster: limits several replicas share through Redis (`[cluster]`,
//! `scope = "global"`).
//!
//! - [`store`]: the Redis connection and the two scripts (GCRA, heartbeat).
//! - [`bucket`]: a fleet-wide token bucket: one store call per keyed
//!   decision, or tokens leased in small batches and spent locally.
//!
//! This module owns whether the store is usable. A request never waits on
//! a store known to be down: the first failed or late call (past
//! `cluster.timeout`) marks it down, logs once and counts; from then on
//! global limits decide by `cluster.on_store_error` without asking, and
//! the heartbeat (every second) is what finds the store back. The
//! heartbeat also counts the replicas alive, the divisor of the `local`
//! fallback.

pub mod bucket;
pub mod store;

use crate::config::{ClusterConfig, OnStoreError};
use crate::metrics::{ClusterMetrics, Metrics};
use crate::shutdown::Shutdown;
use arc_swap::ArcSwap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{GcraParams, Grant, Store};

/// How often a replica says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long no longer counts.
const ALIVE_WINDOW: Duration = Duration::from_secs(3);
/// A heartbeat is not a request: it may take longer than `cluster.timeout`
/// (a store that answers it in 300 ms is up, if slow).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cluster store: {0}")]
    Store(#[source] redis::RedisError),
    #[error("cluster store did not answer {op} within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("cluster store is down; deciding by cluster.on_store_error")]
    Down,
    #[error("cluster store answered {got} values where {expected} were due")]
    Reply { expected: usize, got: usize },
    #[error("more keyed decisions waiting for the cluster store than it can take")]
    Backlog,
}

/// Keyed decisions waiting for the store, at most: past it, a decision
/// goes to the fallback at once rather than queue behind a slow store.
const KEYED_QUEUE: usize = 8192;
/// Keyed decisions sent in one call, at most.
const KEYED_BATCH: usize = 256;

/// A keyed decision waiting for the batcher.
struct KeyedAsk {
    key: String,
    params: GcraParams,
    reply: tokio::sync::oneshot::Sender<Option<Grant>>,
}

/// The store operations, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// One keyed decision.
    Gcra,
    /// A batch of tokens.
    Lease,
    Heartbeat,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Gcra => "gcra",
            Op::Lease => "lease",
            Op::Heartbeat => "heartbeat",
        }
    }
}

/// The reloadable part of `[cluster]`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    timeout: Duration,
    replicas: Option<u32>,
    on_store_error: OnStoreError,
}

pub struct Cluster {
    store: Store,
    namespace: String,
    /// Unique per process: host name, pid and a random part.
    id: String,
    settings: ArcSwap<Settings>,
    up: AtomicBool,
    alive: AtomicU32,
    metrics: ClusterMetrics,
    shutdown: Shutdown,
}

thread_local! {
    /// This thread's keyed-decision batchers, by cluster. Each data-port
    /// worker runs its own single-threaded runtime; a batcher on it
    /// gathers that thread's decisions, and all of them share the one
    /// multiplexed connection (a connection per thread would have to be
    /// made within `cluster.timeout` on first use, and after an outage
    /// each would fail once more, marking the store down again).
    static BATCHERS: std::cell::RefCell<Vec<(usize, tokio::sync::mpsc::Sender<KeyedAsk>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Cluster {
    /// Connects (or, with the store down, starts on the fallback and keeps
    /// trying) and starts the heartbeat. `None` without `cluster.redis_url`.
    pub async fn start(
        cfg: &ClusterConfig,
        metrics: &Metrics,
        shutdown: Shutdown,
    ) -> Result<Option<Arc<Cluster>>, ClusterError> {
        let Some(url) = &cfg.redis_url else {
            return Ok(None);
        };
        let store = Store::new(url, cfg.password.as_ref())?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let cluster = Arc::new(Cluster {
            store,
            namespace: cfg.namespace.clone(),
            id: format!("{}-{}-{:08x}", host.trim(), std::process::id(), rand::random::<u32>()),
            settings: ArcSwap::from_pointee(Settings::from(cfg)),
            up: AtomicBool::new(false),
            alive: AtomicU32::new(1),
            metrics: ClusterMetrics::register(metrics),
            shutdown: shutdown.clone(),
        });
        cluster.metrics.replicas.set(1);
        // The first beat decides the starting state, so a store that is up
        // is used from the first request.
        if let Err(e) = cluster.beat().await {
            tracing::warn!(store = %url, error = %e, "cluster store unreachable at start: global limits start on their fallback (cluster.on_store_error) and resume when it answers");
        }
        tokio::spawn(cluster.clone().heartbeat_loop(shutdown));
        Ok(Some(cluster))
    }

    /// Takes the reloadable keys (`timeout`, `replicas`, `on_store_error`).
    pub fn reconfigure(&self, cfg: &ClusterConfig) {
        let next = Settings::from(cfg);
        if **self.settings.load() != next {
            self.settings.store(Arc::new(next));
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn timeout(&self) -> Duration {
        self.settings.load().timeout
    }

    pub fn on_store_error(&self) -> OnStoreError {
        self.settings.load().on_store_error
    }

    /// Whether requests may ask the store.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The `local` fallback's divisor: `cluster.replicas` if set, else the
    /// replicas last seen alive (at least 1).
    pub fn divisor(&self) -> u32 {
        self.settings
            .load()
            .replicas
            .unwrap_or_else(|| self.alive.load(Ordering::Relaxed))
            .max(1)
    }

    /// The replicas leases are sized for: the most of those seen alive and
    /// `cluster.replicas` (a lease sized for too few replicas could let
    /// the fleet overshoot).
    pub fn lease_divisor(&self) -> u32 {
        let alive = self.alive.load(Ordering::Relaxed);
        self.settings.load().replicas.unwrap_or(0).max(alive).max(1)
    }

    /// Counts one decision made without the store.
    pub fn note_fallback_decision(&self) {
        self.metrics.fallback_decisions.inc();
    }

    /// One token from the bucket at `key`, batched with the other keyed
    /// decisions of this thread waiting at the moment. The caller bounds
    /// the wait.
    pub async fn take_keyed(self: &Arc<Self>, key: String, params: GcraParams) -> Result<Grant, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Down);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send_keyed(KeyedAsk { key, params, reply })?;
        answer.await.ok().flatten().ok_or(ClusterError::Down)
    }

    /// Hands `ask` to this thread's batcher, starting one (on this
    /// thread's runtime, sharing the one multiplexed connection) on first
    /// use.
    fn send_keyed(self: &Arc<Self>, ask: KeyedAsk) -> Result<(), ClusterError> {
        let me = Arc::as_ptr(self) as usize;
        BATCHERS.with(|cell| {
            let mut batchers = cell.borrow_mut();
            batchers.retain(|(_, tx)| !tx.is_closed());
            if let Some((_, tx)) = batchers.iter().find(|(id, _)| *id == me) {
                return tx.try_send(ask).map_err(|_| ClusterError::Backlog);
            }
            let (tx, asks) = tokio::sync::mpsc::channel(KEYED_QUEUE);
            tokio::spawn(self.clone().keyed_loop(asks, self.shutdown.clone()));
            let sent = tx.try_send(ask).map_err(|_| ClusterError::Backlog);
            batchers.push((me, tx));
            sent
        })
    }

    async fn keyed_loop(self: Arc<Self>, mut asks: tokio::sync::mpsc::Receiver<KeyedAsk>, shutdown: Shutdown) {
        let mut batch = Vec::with_capacity(KEYED_BATCH);
        loop {
            tokio::select! {
                n = asks.recv_many(&mut batch, KEYED_BATCH) => if n == 0 { return },
                _ = shutdown.wait() => return,
            }
            // Asks whose requester gave up (its timeout passed) are dropped
            // unasked.
            batch.retain(|a| !a.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            // One token each, no reserve.
            let keys: Vec<(String, GcraParams, u32, u32)> = batch
                .iter_mut()
                .map(|a| (std::mem::take(&mut a.key), a.params, 1, 0))
                .collect();
            match self.call(Op::Gcra, self.store.take_each(&keys)).await {
                Ok(grants) => {
                    for (ask, grant) in batch.drain(..).zip(grants) {
                        let _ = ask.reply.send(Some(grant));
                    }
                }
                Err(_) => {
                    for ask in batch.drain(..) {
                        let _ = ask.reply.send(None);
                    }
                }
            }
        }
    }

    /// Runs one store call under `cluster.timeout`, timing it; a failure
    /// or a late answer marks the store down.
    pub async fn call<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Down);
        }
        let limit = self.timeout();
        self.timed(op, limit, call).await
    }

    async fn timed<T>(
        &self,
        op: Op,
        limit: Duration,
        call: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Timeout {
                op: op.as_str(),
                after: limit,
            }),
        };
        self.metrics
            .store_duration
            .with_label_values(&[op.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics.store_errors.with_label_values(&[op.as_str()]).inc();
            self.mark_down(e);
        }
        result
    }

    fn mark_down(&self, why: &ClusterError) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.store_up.set(0);
            self.metrics.fallbacks.inc();
            let s = self.settings.load();
            tracing::warn!(error = %why, on_store_error = ?s.on_store_error, divisor = self.divisor(),
                "cluster store unreachable: global limits fall back until it answers again");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.store_up.set(1);
            tracing::info!(
                replicas = self.alive.load(Ordering::Relaxed),
                "cluster store answers: global limits in force"
            );
        }
    }

    async fn beat(&self) -> Result<(), ClusterError> {
        let key = format!("{}:replicas", self.namespace);
        let started = Instant::now();
        let n = self
            .timed(
                Op::Heartbeat,
                HEARTBEAT_TIMEOUT,
                self.store.heartbeat(&key, &self.id, ALIVE_WINDOW),
            )
            .await?;
        self.alive.store(n.max(1), Ordering::Relaxed);
        self.metrics.replicas.set(i64::from(n.max(1)));
        // Back in use only when it answers as fast as requests need: a
        // store that answers heartbeats in 300 ms but requests must within
        // 50 ms would otherwise flap up and down every second.
        if started.elapsed() <= self.timeout() {
            self.mark_up();
        }
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            // Failures are counted and logged (once) by `timed`.
            let _ = self.beat().await;
        }
        if self.is_up() {
            let key = format!("{}:replicas", self.namespace);
            let _ = tokio::time::timeout(HEARTBEAT_TIMEOUT, self.store.leave(&key, &self.id)).await;
        }
    }
}

impl From<&ClusterConfig> for Settings {
    fn from(c: &ClusterConfig) -> Self {
        Settings {
            timeout: c.timeout,
            replicas: c.replicas,
            on_store_error: c.on_store_error,
        }
    }
}
