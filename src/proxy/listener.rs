//! Accept loop shared by the data and admin ports: hyper's auto (HTTP/1.1
//! and h2c) server with a header-read timeout and caps on header size and
//! count, optional TLS, and per-connection graceful shutdown.

use crate::config::TlsConfig;
use crate::shutdown::Shutdown;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

/// Something that answers requests of one connection: the data port's
/// proxy and the admin port both serve through [`ConnService`].
pub trait ConnHandler: Send + Sync + 'static {
    /// What the handler knows about the connection (peer, scheme).
    type Conn: Clone + Send + Sync + 'static;

    fn handle(
        self: Arc<Self>,
        conn: Self::Conn,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<crate::proxy::body::ResponseBody>> + Send + 'static;
}

/// The tower service for one connection: the shared handler plus that
/// connection's facts.
pub struct ConnService<H: ConnHandler> {
    handler: Arc<H>,
    conn: H::Conn,
}

impl<H: ConnHandler> ConnService<H> {
    pub fn new(handler: Arc<H>, conn: H::Conn) -> Self {
        ConnService { handler, conn }
    }
}

impl<H: ConnHandler> Clone for ConnService<H> {
    fn clone(&self) -> Self {
        ConnService {
            handler: self.handler.clone(),
            conn: self.conn.clone(),
        }
    }
}

impl<H: ConnHandler> tower::Service<Request<Incoming>> for ConnService<H> {
    type Response = Response<crate::proxy::body::ResponseBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let fut = self.handler.clone().handle(self.conn.clone(), req);
        Box::pin(async move { Ok(fut.await) })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn tls_acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })
    };
    let cert_pem = read(&cfg.cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice()).flatten().collect();
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: cfg.cert.clone(),
            what: "certificate",
        });
    }
    let key_pem = read(&cfg.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Missing {
            path: cfg.key.clone(),
            what: "private key",
        })?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
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
/// caller can wait for them with its own grace deadline.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    make_service: F,
    limits: ConnLimits,
    shutdown: Shutdown,
    tracker: TaskTracker,
) where
    F: Fn(SocketAddr) -> S,
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
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make_service(peer));
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_conn(&builder, TokioIo::new(stream), service, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_conn(&builder, TokioIo::new(tls_stream), service, shutdown).await,
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
    shutdown: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.wait() => {
            // Finish the request in flight, refuse new ones on this
            // connection, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
