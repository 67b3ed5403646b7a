//! Access log and metrics: the outermost layer. Every request is counted
//! (`sluice_requests_total`, `sluice_request_duration_seconds` under its
//! route and decision) and logged once, and here — through
//! [`error::render`](crate::proxy::error::render), the one place — its
//! answer or error becomes the response.

use crate::proxy::error::render;
use crate::proxy::{ConnInfo, Reply};
use crate::runtime::Shared;
use crate::server::ResponseBody;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl ObserveLayer {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnInfo>) -> Self {
        ObserveLayer { shared, conn }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> ObserveService<S> {
        ObserveService {
            inner,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// What the access line needs from the request, kept only when the line
/// will be written.
struct LogFacts {
    method: Method,
    path: String,
    conn: Arc<ConnInfo>,
}

impl<S> Service<Request<Incoming>> for ObserveService<S>
where
    S: Service<Request<Incoming>, Response = Reply, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let log = tracing::enabled!(target: "sluice::access", tracing::Level::INFO).then(|| LogFacts {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            conn: self.conn.clone(),
        });
        ResponseFuture {
            start: Instant::now(),
            log,
            shared: self.shared.clone(),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        log: Option<LogFacts>,
        shared: Arc<Shared>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(reply) = std::task::ready!(this.inner.poll(cx));
        let spooled = matches!(reply.result, Ok(crate::proxy::Answer::Spooled(_)));
        let (response, decision) = if spooled {
            render(
                reply.result,
                &this.shared.runtime.load().config.server.status_path_prefix,
            )
        } else {
            render(reply.result, "")
        };
        let elapsed = this.start.elapsed();
        if let Some(route) = &reply.route {
            route.metrics.observe(decision, elapsed.as_secs_f64());
        }
        if let Some(log) = this.log.take() {
            let (route, decision) = match &reply.route {
                Some(r) => (&*r.name, decision.as_str()),
                // sluice's own status answers.
                None => ("-", "status"),
            };
            tracing::info!(
                target: "sluice::access",
                route,
                decision,
                status = response.status().as_u16(),
                method = log.method.as_str(),
                path = log.path,
                client = %log.conn.peer.ip(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
        Poll::Ready(Ok(response))
    }
}
