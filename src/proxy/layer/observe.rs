//! Access log and metrics: the outermost layer. Every request is counted
//! (`sluice_requests_total`, `sluice_request_duration_seconds` under its
//! route and decision) and logged once, and here — through
//! [`error::render`](crate::proxy::error::render), the one place — its
//! answer or error becomes the response.

use crate::accesslog::AccessRecord;
use crate::proxy::error::render;
use crate::proxy::{ConnInfo, Reply};
use crate::runtime::Shared;
use crate::server::watch::Active;
use crate::server::ResponseBody;
use http::{Method, Request, Response};
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
    // The target as it came (its path is logged): a clone shares the
    // buffer, where copying the path would allocate.
    uri: http::Uri,
    conn: Arc<ConnInfo>,
    trace_id: Option<[u8; 16]>,
}

impl<S, B> Service<Request<B>> for ObserveService<S>
where
    S: Service<Request<B>, Response = Reply, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let log = self.shared.access_log.enabled().then(|| LogFacts {
            method: req.method().clone(),
            uri: req.uri().clone(),
            conn: self.conn.clone(),
            trace_id: crate::trace::trace_id(req.headers()),
        });
        ResponseFuture {
            start: Instant::now(),
            log,
            shared: self.shared.clone(),
            _active: self.conn.watch.active(req.version()),
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
        // The connection is busy answering until this future is done (a
        // request waiting for a token sends no byte, yet is not idle).
        _active: Active,
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
        let spooled = matches!(reply.result, Ok(crate::proxy::Answer::Spooled(..)));
        // Applied to an answer, not to an error sluice gave instead.
        let applied = reply.applied.filter(|_| reply.result.is_ok());
        let (mut response, decision) = if spooled {
            render(
                reply.result,
                &this.shared.runtime.load().config.server.status_path_prefix,
            )
        } else {
            render(reply.result, "")
        };
        if let Some(applied) = applied {
            // Appended: the backend may have applied preferences of its
            // own (those sluice passed on).
            response
                .headers_mut()
                .append(crate::proxy::prefer::PREFERENCE_APPLIED.clone(), applied.header());
        }
        let elapsed = this.start.elapsed();
        if let Some(route) = &reply.route {
            route.metrics.observe(decision, elapsed.as_secs_f64());
        }
        if let Some(log) = this.log.take() {
            let (route, decision): (Arc<str>, &'static str) = match &reply.route {
                Some(r) => (r.name.clone(), decision.as_str()),
                // sluice's own status answers.
                None => (Arc::from("-"), "status"),
            };
            // Handed to the writer thread: no formatting or I/O here.
            this.shared.access_log.log(AccessRecord {
                at_ms: crate::clock::now_ms(),
                route,
                decision,
                status: response.status().as_u16(),
                method: log.method,
                uri: log.uri,
                client: log.conn.peer_header.clone(),
                duration_us: elapsed.as_micros() as u64,
                trace_id: log.trace_id,
            });
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::fixture;
    use crate::proxy::ProxyError;
    use tower::ServiceExt;

    #[tokio::test]
    async fn errors_become_responses_counted_under_their_route() {
        let f = fixture("").await;
        let stats = f.shared.runtime.load().unmatched.clone();
        let conn = Arc::new(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), "http"));
        let svc = ObserveLayer::new(f.shared.clone(), conn).layer(tower::service_fn(move |_: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Reply {
                route: Some(stats.clone()),
                result: Err(ProxyError::Internal),
                applied: None,
            }))
        }));
        let resp = svc.oneshot(Request::get("/x").body(()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 500);
        let text = String::from_utf8(f.shared.metrics.render()).unwrap();
        assert!(
            text.contains(r#"sluice_requests_total{decision="internal_error",route="unmatched"} 1"#),
            "{text}"
        );
    }
}
