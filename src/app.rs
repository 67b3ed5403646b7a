//! Wires the pieces together: binds the listeners, builds the runtime and
//! the upstream client, serves the data and admin ports, handles signals,
//! and owns the shutdown sequence.

use crate::admin::{AdminService, AdminState};
use crate::config::{Config, Overrides};
use crate::drain::spooler::Spooler;
use crate::metrics::Metrics;
use crate::proxy::{data_stack, ConnInfo};
use crate::reload::{ReloadOutcome, Reloader};
use crate::runtime::{Runtime, Shared};
use crate::server::{self as listener, ConnGate, ConnLimits};

/// Connections the admin port keeps open at most (probes, scrapes, operators).
const ADMIN_MAX_CONNECTIONS: usize = 256;
use crate::shutdown::Shutdown;
use crate::upstream::client;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream client: {0}")]
    Client(#[from] client::ClientError),
    #[error("TLS on the data port: {0}")]
    Tls(#[from] listener::TlsError),
    #[error("cannot read admin.token_file {path}: {source}")]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token in {path} is empty")]
    EmptyToken { path: std::path::PathBuf },
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    #[error("spool status journal: {0}")]
    Outcomes(#[from] crate::drain::outcomes::OutcomeError),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Otlp(#[from] crate::otlp::OtlpError),
    #[error("spool.jetstream: {0}")]
    JetStream(#[from] crate::jetstream::JetStreamError),
}

/// Raises the soft limit on open files to the hard one, as nginx's
/// `worker_rlimit_nofile` and Envoy's docs advise: a container's usual
/// 1,024 would otherwise cap connections far below `max_connections`, and
/// the failure (EMFILE on accept) hits every client, not the idle ones.
fn raise_nofile_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid out-pointer; no memory is shared.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), soft = before, "cannot raise RLIMIT_NOFILE");
            return;
        }
    }
    tracing::info!(
        from = before,
        to = lim.rlim_cur,
        "open file limit (RLIMIT_NOFILE soft) raised to the hard limit"
    );
    // Each connection takes a descriptor, plus the spool's, the backend's…
    if (lim.rlim_cur as usize) < max_connections + 256 {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open file limit is below server.max_connections + 256: accepts will fail with EMFILE before the cap"
        );
    }
}

/// The spool options a config asks for.
pub fn spool_options(config: &Config) -> crate::spool::SpoolOptions {
    use crate::config::FsyncPolicy;
    let sp = &config.spool;
    let mut o = crate::spool::SpoolOptions::new(&sp.dir);
    o.partitions = sp.partitions;
    o.max_bytes = sp.max_bytes;
    o.segment_bytes = sp.segment_bytes;
    // `spool.max_record` limits the body; the record also carries the
    // request head, so the spool's own limit leaves room for it.
    o.max_record = (sp.max_record + config.server.max_header_bytes as u64 + 4096).min(sp.segment_bytes / 2);
    o.dlq_max_bytes = Some(sp.dlq_max_bytes);
    o.dlq_retention = sp.dlq_retention;
    o.fsync = match sp.fsync {
        FsyncPolicy::Always => crate::spool::FsyncMode::Always,
        FsyncPolicy::Interval => crate::spool::FsyncMode::Interval(sp.fsync_interval),
        FsyncPolicy::Never => crate::spool::FsyncMode::Never,
    };
    o
}

/// A running sluice: its bound addresses and the handles to steer it.
pub struct Running {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Shutdown,
    reloader: Arc<Reloader>,
    pub shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Running {
    /// Same as SIGHUP.
    pub fn reload(&self) -> Result<ReloadOutcome, crate::config::ConfigError> {
        self.reloader.reload()
    }

    /// Begins shutdown (same as SIGTERM) and waits for it to finish.
    pub async fn shutdown(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }

    /// Waits until the app stops by itself (after a signal).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }
}

fn admin_token(config: &Config) -> Result<Option<String>, AppError> {
    if let Some(path) = &config.admin.token_file {
        let t = std::fs::read_to_string(path).map_err(|source| AppError::Token {
            path: path.clone(),
            source,
        })?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(AppError::EmptyToken { path: path.clone() });
        }
        return Ok(Some(t));
    }
    Ok(std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn bind_data(addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, AppError> {
    let err = |source| AppError::Bind {
        addr,
        what: "server.listen",
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, what, source })
}

/// Binds, starts serving, and returns at once.
pub async fn start(config: Config, overrides: Overrides) -> Result<Running, AppError> {
    let metrics = Arc::new(Metrics::new());
    let token = admin_token(&config)?;
    let upstream_client = client::build(&config.upstream)?;
    let tls = config.server.tls.as_ref().map(listener::tls_acceptor).transpose()?;
    // One data listener per worker thread, sharing the port through
    // SO_REUSEPORT: like nginx's worker processes, each thread runs its own
    // single-threaded runtime and keeps its connections to itself, which on
    // a small machine beats a work-stealing scheduler (BENCHMARKS.md).
    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let data_listener = bind_data(config.server.listen, workers > 1)?;
    let admin_listener = bind(config.server.admin_listen, "server.admin_listen").await?;
    for w in config.spool_fit_warnings() {
        tracing::warn!("{w}");
    }
    raise_nofile_limit(config.server.max_connections);
    // The local spool (and its directory) only with the local backend.
    let (spool, spooler) = match config.spool.backend.jetstream() {
        None => {
            let spool = crate::spool::Spool::open(
                spool_options(&config),
                Arc::new(crate::metrics::SpoolMetrics::new(&metrics, config.spool.partitions)),
            )
            .await?;
            let outcomes = Arc::new(crate::drain::outcomes::OutcomeStore::open(
                &config.spool.dir,
                config.server.status_retention,
                config.server.status_max_entries,
            )?);
            let local = Arc::new(crate::drain::spooler::LocalSpooler::new(spool.clone(), outcomes));
            (Some(spool), Spooler::Local(local))
        }
        Some(_) => (
            None,
            Spooler::JetStream(crate::jetstream::connect(&config, &metrics).await?),
        ),
    };
    let spooler = Arc::new(spooler);
    let data_addr = data_listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.server.listen,
        what: "server.listen",
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| AppError::Bind {
        addr: config.server.admin_listen,
        what: "server.admin_listen",
        source,
    })?;

    let limits = ConnLimits {
        header_read_timeout: config.server.header_read_timeout,
        max_headers: config.server.max_headers,
        max_header_bytes: config.server.max_header_bytes,
        keepalive_timeout: config.server.keepalive_timeout,
        send_timeout: config.server.send_timeout,
    };
    // One cap for the data port across every worker's listener.
    let data_gate = Arc::new(ConnGate::new(
        config.server.max_connections,
        Some(metrics.connections_open.clone()),
        Some(metrics.connections_refused.clone()),
    ));
    // The admin port is for operators and probes: a small cap of its own.
    let admin_gate = Arc::new(ConnGate::new(ADMIN_MAX_CONNECTIONS, None, None));
    let grace = config.server.shutdown_grace;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let spans = config
        .otlp_endpoint
        .as_ref()
        .map(crate::otlp::ReplaySpans::start)
        .transpose()?;
    // Stopped after replay, which draws on the global budget to the end.
    // Started last of what can fail, so a failed start leaves no
    // heartbeat running.
    let cluster_shutdown = Shutdown::new();
    let cluster = crate::cluster::Cluster::start(&config.cluster, &metrics, cluster_shutdown.clone()).await?;
    let runtime = Runtime::build(Arc::new(config), &metrics, None, cluster.as_ref());
    let mut shared = Shared::new(runtime, upstream_client, metrics.clone(), spooler.clone(), cluster);
    shared.spans = spans;
    let shared = Arc::new(shared);
    let drain_shutdown = Shutdown::new();
    let mut drain_tasks = match &*spooler {
        Spooler::Local(local) => {
            crate::drain::replay::Drainer::new(local.clone(), shared.clone(), &metrics).start(drain_shutdown.clone())
        }
        Spooler::JetStream(js) => {
            js.spawn_watchers(metrics.clone(), cluster_shutdown.clone());
            crate::jetstream::JetStreamDrainer::new(js.clone(), shared.clone(), &metrics).start(drain_shutdown.clone())
        }
    };
    let reloader = Arc::new(Reloader::new(shared.clone(), metrics.clone(), overrides));
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
        token,
        reloader: reloader.clone(),
        spooler: spooler.clone(),
    });

    let shutdown = Shutdown::new();
    let admin_shutdown = Shutdown::new();
    let data_tracker = TaskTracker::new();
    let admin_tracker = TaskTracker::new();

    // Workers 1..n: their own threads and runtimes, on the same port.
    let mut worker_threads = Vec::new();
    for n in 1..workers {
        let listener = bind_data(data_addr, true)?;
        let (shared, tls, shutdown, tracker) = (shared.clone(), tls.clone(), shutdown.clone(), data_tracker.clone());
        let gate = data_gate.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{n}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker runtime; this worker stays idle");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener.into_std().expect("a bound listener")) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "worker cannot register its listener");
                            return;
                        }
                    };
                    listener::serve(
                        listener,
                        tls,
                        move |peer, watch| data_stack(&shared, ConnInfo::watched(peer, scheme, watch)),
                        limits,
                        gate,
                        shutdown,
                        tracker.clone(),
                    )
                    .await;
                    // Let this runtime's connections finish (the main
                    // shutdown sequence bounds the wait with the grace).
                    tracker.wait().await;
                });
            })
            .map_err(|source| AppError::Bind {
                addr: data_addr,
                what: "server.workers",
                source,
            })?;
        worker_threads.push(thread);
    }
    let data = {
        let shared = shared.clone();
        tokio::spawn(listener::serve(
            data_listener,
            tls,
            move |peer, watch| data_stack(&shared, ConnInfo::watched(peer, scheme, watch)),
            limits,
            data_gate.clone(),
            shutdown.clone(),
            data_tracker.clone(),
        ))
    };
    let admin = {
        let st = admin_state.clone();
        tokio::spawn(listener::serve(
            admin_listener,
            None,
            move |peer, _watch| AdminService::new(st.clone(), peer),
            limits,
            admin_gate,
            admin_shutdown.clone(),
            admin_tracker.clone(),
        ))
    };
    if let Some(path) = shared.runtime.load().config.source_path.clone() {
        let every = shared.runtime.load().config.server.config_poll_interval;
        if !every.is_zero() {
            tokio::spawn(crate::reload::watch_file(
                reloader.clone(),
                path,
                every,
                shutdown.clone(),
            ));
        }
    }
    admin_state.ready.store(true, Ordering::Release);
    tracing::info!(data = %data_addr, admin = %admin_addr, "listening");

    let task = {
        let shutdown = shutdown.clone();
        let shared_for_shutdown = shared.clone();
        let spooler_at_exit = spooler.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            // Readiness first, so a load balancer stops sending while we
            // still finish what we have.
            admin_state.ready.store(false, Ordering::Release);
            tracing::info!(grace = ?grace, "shutting down: no new connections, finishing in-flight requests");
            let _ = data.await;
            data_tracker.close();
            if tokio::time::timeout(grace, data_tracker.wait()).await.is_err() {
                tracing::warn!(grace = ?grace, "shutdown grace ran out with requests still in flight");
            }
            // Worker threads end with their connections; past the grace
            // they are left to process exit.
            for t in worker_threads {
                if t.is_finished() {
                    let _ = t.join();
                }
            }
            // Replay stops; what it had not acked is delivered after the
            // next start (at least once).
            drain_shutdown.trigger();
            while drain_tasks.join_next().await.is_some() {}
            if let Spooler::JetStream(js) = &*spooler_at_exit {
                js.close().await;
            }
            cluster_shutdown.trigger();
            // The last attempts' spans, exported before we go.
            let spans = shared_for_shutdown.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(s) = &spans.spans {
                    s.shutdown();
                }
            })
            .await;
            if let Some(spool) = &spool {
                if let Err(e) = spool.close().await {
                    tracing::error!(error = %e, "closing the spool failed; recovery will repair it at the next start");
                }
            }
            admin_shutdown.trigger();
            let _ = admin.await;
            admin_tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(1), admin_tracker.wait()).await;
            // The last requests' lines, written before we go.
            let log = shared_for_shutdown.clone();
            let _ = tokio::task::spawn_blocking(move || log.access_log.flush(Duration::from_secs(2))).await;
            tracing::info!("stopped");
        })
    };

    Ok(Running {
        data_addr,
        admin_addr,
        shutdown,
        reloader,
        shared,
        task,
    })
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the config.
pub async fn run(config: Config, overrides: Overrides) -> Result<(), AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers before the listeners: once "listening" is logged, a SIGHUP
    // or SIGUSR1 must reload or reopen, never take the default action
    // (which ends the process).
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let mut usr1 = signal(SignalKind::user_defined1()).expect("installing a SIGUSR1 handler");
    let running = start(config, overrides).await?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1 received: reopening log.access_file");
                running.shared.access_log.reopen();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading config");
                // The outcome is logged and counted by the reloader.
                let _ = running.reload();
            }
        }
    }
    running.shutdown().await;
    Ok(())
}
