//! Spool-on-limit: a request the bucket marked, or one the upstream stack
//! handed back unsent (budget spent, breaker open, connection refused) on
//! a `spool` route with a spoolable method, is read whole (up to
//! `spool.max_record`), appended to its partition, and answered 202 once
//! durable.

use super::forward::ForwardError;
use super::BoxAnswer;
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::spooler::{Spooler, SpoolingError};
use crate::proxy::error::{error_chain, is_body_too_large};
use crate::proxy::headers;
use crate::proxy::{Answer, Matched, ProxyError};
use crate::runtime::Runtime;
use crate::upstream::body::RequestBody;
use http::header::HeaderName;
use http::Request;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[derive(Clone)]
pub struct SpoolLayer {
    spooler: Arc<Spooler>,
}

impl SpoolLayer {
    pub fn new(spooler: Arc<Spooler>) -> Self {
        SpoolLayer { spooler }
    }
}

impl<S> Layer<S> for SpoolLayer {
    type Service = SpoolService<S>;

    fn layer(&self, inner: S) -> SpoolService<S> {
        SpoolService {
            inner,
            spooler: self.spooler.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SpoolService<S> {
    inner: S,
    spooler: Arc<Spooler>,
}

/// Where a request goes if it is spooled.
#[derive(Clone)]
struct Target {
    runtime: Arc<Runtime>,
    route_index: usize,
    partition: u32,
    /// `server.request_timeout` from arrival: the body must be in by then.
    deadline: tokio::time::Instant,
}

impl Target {
    fn of(m: &Matched) -> Option<Target> {
        Some(Target {
            runtime: m.runtime.clone(),
            route_index: m.route_index?,
            partition: m.partition?,
            deadline: m.start + m.runtime.config.server.request_timeout,
        })
    }
}

impl<S> Service<Request<RequestBody>> for SpoolService<S>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ForwardError>,
{
    type Response = Answer;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx).map_err(|e| e.error)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let (target, spool_now) = match req.extensions().get::<Matched>() {
            // Only a spoolable request on a `spool` route has a partition.
            Some(m) if m.partition.is_some() => (Target::of(m), m.spool_now),
            _ => (None, false),
        };
        match target {
            Some(t) if spool_now => ResponseFuture::Spooling {
                spooling: Box::pin(spool(self.spooler.clone(), t, req)),
            },
            target => ResponseFuture::Forwarding {
                inner: self.inner.call(req),
                target,
                spooler: self.spooler.clone(),
            },
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Forwarding { #[pin] inner: F, target: Option<Target>, spooler: Arc<Spooler> },
        Spooling { spooling: BoxAnswer },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Answer, ForwardError>>,
{
    type Output = Result<Answer, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Proj::Spooling { spooling } => return spooling.as_mut().poll(cx),
                Proj::Forwarding { inner, target, spooler } => {
                    let failed = match std::task::ready!(inner.poll(cx)) {
                        Ok(answer) => return Poll::Ready(Ok(answer)),
                        Err(f) => f,
                    };
                    // Never reached the backend: a spoolable request is
                    // spooled rather than failed.
                    match (failed.unsent, target.take()) {
                        (Some(req), Some(t)) => {
                            let spooling = Box::pin(spool(spooler.clone(), t, req));
                            self.set(ResponseFuture::Spooling { spooling });
                        }
                        _ => return Poll::Ready(Err(failed.error)),
                    }
                }
            }
        }
    }
}

/// Reads the body whole (up to `spool.max_record`), appends the request to
/// the spool and answers once it is durable.
async fn spool(spooler: Arc<Spooler>, target: Target, req: Request<RequestBody>) -> Result<Answer, ProxyError> {
    let cfg = &target.runtime.config;
    let route = &target.runtime.table.routes()[target.route_index];
    let limit = cfg.spool.max_record.min(cfg.server.max_body);
    let (mut parts, body) = req.into_parts();
    // A spooled request is replayed as a plain request: no upgrade.
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if super::body_limit::declared_length(&parts.headers).is_some_and(|n| n > limit) {
        super::body_limit::linger(body);
        return Err(ProxyError::TooLarge { limit });
    }
    // A client trickling its body must not hold the request (and its
    // memory) past the request's deadline.
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit as usize));
    let Ok(read) = tokio::time::timeout_at(target.deadline, read).await else {
        return Err(ProxyError::RequestTimeout);
    };
    let body = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if is_body_too_large(&*e) => return Err(ProxyError::TooLarge { limit }),
        Err(e) => {
            return Err(ProxyError::BadRequest {
                detail: error_chain(&*e),
            })
        }
    };
    let idempotency_key = parts
        .headers
        .get(&IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let key_hash = idempotency_key
        .as_deref()
        .map(|k| crate::drain::outcomes::key_hash(&route.config.name, k));
    let envelope = Envelope {
        token: RequestId::new_token(),
        arrived_ms: crate::drain::outcomes::now_ms(),
        attempt_base: 0,
        route: route.config.name.clone(),
        method: parts.method,
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        idempotency_key,
        headers: parts.headers,
        body,
    };
    // The append runs as a task of its own: once the request is whole, a
    // client that goes away can't cancel it half way, and its
    // Idempotency-Key claim is settled by the append's result (a retry
    // with the same key then finds the first id instead of a second copy).
    let partition = target.partition;
    let intake = spooler.clone();
    let appended = tokio::spawn(async move { intake.spool(envelope, partition, key_hash).await }).await;
    let Ok(appended) = appended else {
        return Err(ProxyError::Internal);
    };
    match appended {
        Ok(id) => Ok(Answer::Spooled(id, spooler.eta(id))),
        Err(SpoolingError::TooLarge { limit, .. }) => Err(ProxyError::TooLarge { limit }),
        Err(e @ (SpoolingError::Unavailable(_) | SpoolingError::Store(_))) => {
            tracing::warn!(error = %e, route = %route.config.name, "spool refused a request");
            Err(ProxyError::SpoolFull {
                retry_after: Duration::from_secs(5),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::{fixture, Fixture};
    use crate::upstream::UpstreamError;
    use tower::ServiceExt;

    const ROUTES: &str = r#"
[[route]]
name = "orders"
match = { path_prefix = "/orders" }
rate = "100/s"
on_limit = "spool"
"#;

    /// An inner (forwarding) service that fails as `error` says, handing
    /// the request back when `unsent`.
    fn failing(
        unsent: bool,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Answer,
        Error = ForwardError,
        Future = std::future::Ready<Result<Answer, ForwardError>>,
    > + Clone {
        tower::service_fn(move |req: Request<RequestBody>| {
            let error = ProxyError::from_upstream(
                UpstreamError::Busy {
                    retry_after: Duration::from_secs(1),
                },
                0,
            );
            std::future::ready(Err(ForwardError {
                error,
                unsent: unsent.then_some(req),
            }))
        })
    }

    fn backlog(f: &Fixture) -> u64 {
        f.shared.spooler.local().unwrap().spool.status().backlog_records()
    }

    #[tokio::test]
    async fn a_marked_request_and_an_unsent_one_are_spooled_a_sent_one_is_not() {
        let f = fixture(ROUTES).await;
        let svc = SpoolLayer::new(f.shared.spooler.clone());
        let mut marked = f.request("POST", "/orders", b"a");
        marked.extensions_mut().get_mut::<Matched>().unwrap().spool_now = true;
        let r = svc.layer(failing(false)).oneshot(marked).await;
        assert!(matches!(r, Ok(Answer::Spooled(..))));
        let r = svc
            .layer(failing(true))
            .oneshot(f.request("POST", "/orders", b"b"))
            .await;
        assert!(matches!(r, Ok(Answer::Spooled(..))), "handed back unsent: spooled");
        let r = svc
            .layer(failing(false))
            .oneshot(f.request("POST", "/orders", b"c"))
            .await;
        assert!(
            matches!(r, Err(ProxyError::UpstreamBusy { .. })),
            "may have reached the backend: not spooled"
        );
        let r = svc.layer(failing(true)).oneshot(f.request("GET", "/orders", b"")).await;
        assert!(
            matches!(r, Err(ProxyError::UpstreamBusy { .. })),
            "a GET is never spooled"
        );
        assert_eq!(backlog(&f), 2);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_settled_by_the_append_even_if_the_client_leaves() {
        let f = fixture(ROUTES).await;
        let svc = SpoolLayer::new(f.shared.spooler.clone()).layer(failing(false));
        let keyed = || {
            let mut req = f.request("POST", "/orders", b"pay");
            req.headers_mut().insert("idempotency-key", "k-1".parse().unwrap());
            req.extensions_mut().get_mut::<Matched>().unwrap().spool_now = true;
            req
        };
        // The first client goes away as soon as its request is whole.
        let mut first = Box::pin(svc.clone().oneshot(keyed()));
        let _ = tokio::time::timeout(Duration::ZERO, first.as_mut()).await;
        drop(first);
        // Its retry gets the first request's id, not a second record.
        let Ok(Answer::Spooled(id, _)) = svc.clone().oneshot(keyed()).await else {
            panic!("the retry is answered 202");
        };
        let Ok(Answer::Spooled(again, _)) = svc.oneshot(keyed()).await else {
            panic!("and so is the next");
        };
        assert_eq!(id.encode(), again.encode());
        assert_eq!(backlog(&f), 1, "written once");
    }
}
