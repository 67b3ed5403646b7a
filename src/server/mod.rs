//! Listener and connection plumbing shared by the data and admin ports:
//! accept, optional TLS ([`tls`]), hyper's auto (HTTP/1.1 and h2c) server
//! with a header-read timeout and caps on header size and count, and
//! per-connection graceful shutdown. What either port answers is a tower
//! service handed in by the caller; [`body`] is the response body both use.

pub mod body;
pub mod tls;
pub mod watch;

pub use body::{json_response, ResponseBody};
pub use tls::{tls_acceptor, TlsError};
pub use watch::{ConnWatch, WatchedIo};

use crate::shutdown::Shutdown;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// Idle (no byte either way, nothing being answered) this long: closed.
    pub keepalive_timeout: Duration,
    /// A write waiting this long for the client to take data: closed.
    pub send_timeout: Duration,
}

/// Caps the connections open on one listener, and counts them.
pub struct ConnGate {
    max: usize,
    open: std::sync::atomic::AtomicUsize,
    open_gauge: Option<prometheus::IntGauge>,
    refused: Option<prometheus::IntCounter>,
}

impl ConnGate {
    pub fn new(max: usize, open_gauge: Option<prometheus::IntGauge>, refused: Option<prometheus::IntCounter>) -> Self {
        ConnGate {
            max,
            open: std::sync::atomic::AtomicUsize::new(0),
            open_gauge,
            refused,
        }
    }

    /// A slot for a new connection, or `None` when all are taken.
    fn enter(self: &Arc<Self>) -> Option<GateSlot> {
        use std::sync::atomic::Ordering;
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            if let Some(c) = &self.refused {
                c.inc();
            }
            return None;
        }
        if let Some(g) = &self.open_gauge {
            g.inc();
        }
        Some(GateSlot(self.clone()))
    }
}

struct GateSlot(Arc<ConnGate>);

impl Drop for GateSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(g) = &self.0.open_gauge {
            g.dec();
        }
    }
}

fn builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No hyper header_read_timeout: the connection's watch times request
    // heads itself (see `watch`), so keep-alive can outlast it.
    b.http1()
        .timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Serves `listener` until `shutdown`, then lets each connection finish
/// its in-flight requests; `tracker` follows every connection task so the
/// caller can wait for them with its own grace deadline. `make_service`
/// gets each connection's peer and its [`ConnWatch`].
pub async fn serve<F, S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    make_service: F,
    limits: ConnLimits,
    gate: Arc<ConnGate>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) where
    F: Fn(SocketAddr, Arc<ConnWatch>) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(limits));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Past max_connections a new connection is closed at once: the
        // descriptors and memory of those already open are what is kept.
        let Some(slot) = gate.enter() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(ConnWatch::default());
        let service = TowerToHyperService::new(make_service(peer, watch.clone()));
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    let io = WatchedIo::new(TokioIo::new(stream), watch.clone(), limits.send_timeout);
                    serve_conn(&builder, io, service, watch, limits, shutdown).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let io = WatchedIo::new(TokioIo::new(tls_stream), watch.clone(), limits.send_timeout);
                            serve_conn(&builder, io, service, watch, limits, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<S>,
    watch: Arc<ConnWatch>,
    limits: ConnLimits,
    shutdown: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let watch_tunnel = watch.clone();
    // The watchdog and the shutdown signal run in a task of their own and
    // say when to close through one oneshot: the connection task, woken
    // several times per request, then polls one cheap receiver rather than
    // their futures.
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let dog = tokio::spawn(async move {
        let why = tokio::select! {
            biased;
            _ = shutdown.wait() => Close::Graceful,
            // Idle past keepalive_timeout, or a request head not complete
            // within header_read_timeout. Meanwhile the watch frees the
            // budget slots of responses past their deadline.
            _ = watch.watchdog(limits.keepalive_timeout, limits.header_read_timeout) => Close::Idle,
        };
        let _ = close_tx.send(why);
    });
    let _dog = AbortOnDrop(dog);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut close_rx = close_rx;
    tokio::select! {
        biased;
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            // Upgraded: the connection lives on as its tunnel, still
            // holding its slot, until either side closes it, it idles past
            // keepalive_timeout (the watchdog sees the client's bytes), or
            // shutdown.
            if let Some(tunnel) = watch_tunnel.take_tunnel() {
                let mut tunnel = AbortOnDrop(tunnel);
                tokio::select! {
                    _ = &mut tunnel.0 => {}
                    _ = &mut close_rx => tracing::debug!("upgraded tunnel closed: idle or shutting down"),
                }
            }
        }
        Ok(why) = &mut close_rx => match why {
            Close::Graceful => {
                // Finish the request in flight, refuse new ones on this
                // connection, then close.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            Close::Idle => tracing::debug!("idle connection closed"),
        },
    }
}

enum Close {
    Graceful,
    Idle,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
