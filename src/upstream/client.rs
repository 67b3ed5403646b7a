//! The keep-alive connection pool to the backend, http or https (rustls
//! with the bundled web PKI roots plus an optional extra CA file).
//!
//! Why not hyper-util's legacy client: per request it spawns a task to
//! return the connection to its pool once the response body ends, and its
//! checkout machinery costs more than the rest of our request path. Here a
//! connection is a hyper `SendRequest` in a LIFO stack; the response body
//! carries a [`Lease`] and puts the connection back when it ends cleanly.
//!
//! [`Client`] is the innermost service of every upstream stack.

use super::body::{RequestBody, UpstreamBody};
use super::error::{Failed, UpstreamError};
use super::Outbound;
use crate::config::UpstreamConfig;
use http::{Request, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read upstream.ca_file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream.ca_file {path} holds no usable certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("upstream host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

pub struct Upstream {
    host: String,
    port: u16,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

pub type UpstreamClient = Arc<Upstream>;

/// A pooled connection lent to one exchange; back to the pool on
/// [`release`](Lease::release), closed if simply dropped.
pub struct Lease {
    sender: Option<SendRequest<RequestBody>>,
    pool: Arc<Upstream>,
}

impl Lease {
    /// The exchange finished cleanly: the connection may serve another.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.pool.max_idle {
                    idle.push(Idle {
                        sender,
                        since: Instant::now(),
                    });
                }
            }
        }
    }
}

pub fn build(cfg: &UpstreamConfig) -> Result<UpstreamClient, ClientError> {
    let https = cfg.url.scheme_str() == Some("https");
    let host = cfg.url.host().unwrap_or("127.0.0.1").to_string();
    let port = cfg.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tls = if https {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                if roots.add(cert).is_ok() {
                    added += 1;
                }
            }
            if added == 0 {
                return Err(ClientError::NoCertificate { path: path.clone() });
            }
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|_| ClientError::ServerName(host.clone()))?;
        Some((TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(Arc::new(Upstream {
        authority: format!("{host}:{port}"),
        host,
        port,
        tls,
        connect_timeout: cfg.timeout.min(Duration::from_secs(5)),
        idle: Mutex::new(Vec::new()),
        max_idle: cfg.pool_max_idle,
        idle_timeout: Duration::from_secs(60),
    }))
}

impl Upstream {
    fn checkout(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let connect_err = |source| UpstreamError::Connect {
            authority: self.authority.clone(),
            source,
        };
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, self.port)))
            .await
            .map_err(|_| connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))?
            .map_err(connect_err)?;
        let _ = stream.set_nodelay(true);
        let mut handshake = hyper::client::conn::http1::Builder::new();
        handshake.writev(false);
        match &self.tls {
            None => {
                let (sender, conn) = handshake
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| connect_err(std::io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), stream))
                    .await
                    .map_err(|_| {
                        connect_err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        ))
                    })?
                    .map_err(connect_err)?;
                let (sender, conn) = handshake
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| connect_err(std::io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream TLS connection ended with an error");
                    }
                });
                Ok(sender)
            }
        }
    }

    /// Sends `req` (origin-form URI) on a pooled or new connection. A
    /// request that a stale pooled connection refused before writing is
    /// retried on a fresh one; one that may have been written never is.
    /// When the request certainly never reached the backend it comes back
    /// in [`Failed::unsent`], so the caller may spool it instead.
    pub async fn send(self: Arc<Self>, mut req: Request<RequestBody>) -> Result<Response<UpstreamBody>, Failed> {
        // An HTTP/1.0 client may send no Host; HTTP/1.1 requires one, so
        // the backend gets its own authority (as nginx's proxy_set_header
        // Host $proxy_host default does).
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(&self.authority) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        loop {
            let (mut sender, fresh) = match self.checkout() {
                Some(s) => (s, false),
                None => match self.connect().await {
                    Ok(s) => (s, true),
                    Err(error) => return Err(Failed::unsent(error, req)),
                },
            };
            if !sender.is_ready() {
                // A just-released connection whose task hasn't yet marked
                // itself idle: wait the moment it takes, or give up on it
                // (one still busy, e.g. with a slow upload the backend
                // answered early, is dropped rather than waited for).
                let ready = tokio::time::timeout(Duration::from_millis(50), sender.ready()).await;
                if !matches!(ready, Ok(Ok(()))) {
                    if fresh {
                        let error = UpstreamError::Connect {
                            authority: self.authority.clone(),
                            source: std::io::Error::other("connection closed before use"),
                        };
                        return Err(Failed::unsent(error, req));
                    }
                    continue;
                }
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        sender: Some(sender),
                        pool: self.clone(),
                    };
                    return Ok(resp.map(|body| UpstreamBody::new(body, lease)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        continue;
                    }
                    Some(unsent) => {
                        let error = UpstreamError::Connect {
                            authority: self.authority.clone(),
                            source: std::io::Error::other(e.into_error()),
                        };
                        return Err(Failed::unsent(error, unsent));
                    }
                    None => return Err(Failed::sent(UpstreamError::Exchange(e.into_error()))),
                },
            }
        }
    }
}

/// The innermost service of an upstream stack: sends on the pool.
#[derive(Clone)]
pub struct Client(pub UpstreamClient);

impl tower::Service<Outbound> for Client {
    type Response = Response<UpstreamBody>;
    type Error = Failed;
    /// Boxed: hyper's send future can't be named, and the pool's checkout
    /// and connect steps make this the one async step of the path that
    /// isn't a small state machine of ours.
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Failed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        Box::pin(self.0.clone().send(out.request))
    }
}
