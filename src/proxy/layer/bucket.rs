//! The route's bucket: a token lets the request on (and its answer gets
//! the `RateLimit` headers); over the limit it may wait up to the route's
//! `max_wait`, then is marked for the spool (a `spool` route with a
//! spoolable method) or rejected with 429. An ordered route whose
//! partition has backlog sends the request to the spool without a token.
//!
//! Hand-written: tower's `RateLimit` is one bucket applied through
//! `poll_ready`; this is one governor bucket per key and route, decided
//! per request.

use super::{BoxAnswer, ReadyOr};
use crate::admission::{key_for, Decision, RequestFacts, Route};
use crate::proxy::error::RateLimitHeaders;
use crate::proxy::{Answer, Matched, ProxyError};
use crate::runtime::RouteStats;
use crate::upstream::body::RequestBody;
use http::header::HeaderValue;
use http::Request;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct BucketLayer;

impl<S> Layer<S> for BucketLayer {
    type Service = BucketService<S>;

    fn layer(&self, inner: S) -> BucketService<S> {
        BucketService { inner }
    }
}

#[derive(Clone)]
pub struct BucketService<S> {
    inner: S,
}

/// `RateLimit-Policy` and `RateLimit` in the structured-field syntax of
/// draft-ietf-httpapi-ratelimit-headers (-08 and later).
pub fn ratelimit_headers(route: &Route, stats: &RouteStats, remaining: u32, reset_secs: u64) -> RateLimitHeaders {
    let reset = if reset_secs > 0 {
        reset_secs
    } else {
        route.seconds_to_full(remaining)
    };
    // Built by hand into one buffer that becomes the header's storage.
    let name = route.config.name.as_bytes();
    let mut v = Vec::with_capacity(name.len() + 32);
    v.push(b'"');
    v.extend_from_slice(name);
    v.extend_from_slice(b"\";r=");
    v.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
    v.extend_from_slice(b";t=");
    v.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
    RateLimitHeaders {
        policy: stats.policy_header.clone(),
        state: HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).unwrap_or(HeaderValue::from_static("")),
    }
}

fn rate_limited(route: &Route, stats: &RouteStats, retry_after: Duration) -> ProxyError {
    let reset = crate::server::body::retry_after_secs(retry_after);
    ProxyError::RateLimited {
        route: route.config.name.clone(),
        retry_after,
        headers: Some(ratelimit_headers(route, stats, 0, reset)),
    }
}

/// What the bucket says about a request now.
enum Verdict {
    Go { remaining: Option<u32> },
    Spool,
    Refuse(ProxyError),
    Wait(Duration),
}

fn decide(req: &Request<RequestBody>, m: &Matched) -> Verdict {
    let Some(route) = m.route() else {
        return Verdict::Go { remaining: None };
    };
    if m.behind_backlog {
        return Verdict::Spool;
    }
    let facts = RequestFacts {
        method: req.method(),
        host: None,
        path: req.uri().path(),
        headers: req.headers(),
        client_ip: m.client_ip,
    };
    let mut key_buf = String::new();
    let key = key_for(&route.config.key, &facts, &mut key_buf);
    let wait_left = (m.start + route.config.max_wait).saturating_duration_since(Instant::now());
    match route.admit(key, req.method(), wait_left) {
        Decision::Forward { remaining } => Verdict::Go {
            remaining: Some(remaining),
        },
        Decision::Spool => Verdict::Spool,
        Decision::Reject { retry_after } => Verdict::Refuse(rate_limited(route, m.stats(), retry_after)),
        Decision::Wait { wait } => Verdict::Wait(wait),
    }
}

fn mark_for_spool(req: &mut Request<RequestBody>) {
    if let Some(m) = req.extensions_mut().get_mut::<Matched>() {
        m.spool_now = true;
    }
}

impl<S> Service<Request<RequestBody>> for BucketService<S>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answer;
    type Error = ProxyError;
    type Future = ReadyOr<Either<S::Future>, Result<Answer, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let Some(m) = req.extensions().get::<Matched>() else {
            return ReadyOr::ready(Err(ProxyError::Internal));
        };
        match decide(&req, m) {
            Verdict::Go { remaining } => {
                let headed = remaining.and_then(|r| m.route_index.map(|i| (m.runtime.clone(), i, r)));
                ReadyOr::Inner {
                    inner: Either::Going {
                        inner: self.inner.call(req),
                        headed,
                    },
                }
            }
            Verdict::Spool => {
                mark_for_spool(&mut req);
                ReadyOr::Inner {
                    inner: Either::Going {
                        inner: self.inner.call(req),
                        headed: None,
                    },
                }
            }
            Verdict::Refuse(e) => ReadyOr::ready(Err(e)),
            Verdict::Wait(wait) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ReadyOr::Inner {
                    inner: Either::Waiting {
                        waiting: Box::pin(wait_for_token(inner, req, wait)),
                    },
                }
            }
        }
    }
}

/// Sleeps until the bucket says yes or the route's `max_wait` runs out.
async fn wait_for_token<S>(
    mut inner: S,
    mut req: Request<RequestBody>,
    mut wait: Duration,
) -> Result<Answer, ProxyError>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ProxyError>,
{
    loop {
        tokio::time::sleep(wait).await;
        let Some(m) = req.extensions().get::<Matched>() else {
            return Err(ProxyError::Internal);
        };
        match decide(&req, m) {
            Verdict::Go { remaining } => {
                let headed = remaining.and_then(|r| m.route_index.map(|i| (m.runtime.clone(), i, r)));
                let answer = inner.call(req).await;
                return Ok(with_headers(answer?, headed));
            }
            Verdict::Spool => {
                mark_for_spool(&mut req);
                return inner.call(req).await;
            }
            Verdict::Refuse(e) => return Err(e),
            Verdict::Wait(w) => wait = w,
        }
    }
}

type Headed = Option<(Arc<crate::runtime::Runtime>, usize, u32)>;

fn with_headers(answer: Answer, headed: Headed) -> Answer {
    match (answer, headed) {
        (Answer::Forwarded(mut resp), Some((rt, i, remaining))) => {
            ratelimit_headers(&rt.table.routes()[i], &rt.stats[i], remaining, 0).apply(resp.headers_mut());
            Answer::Forwarded(resp)
        }
        (answer, _) => answer,
    }
}

pin_project! {
    #[project = EitherProj]
    pub enum Either<F> {
        Going { #[pin] inner: F, headed: Headed },
        Waiting { waiting: BoxAnswer },
    }
}

impl<F> Future for Either<F>
where
    F: Future<Output = Result<Answer, ProxyError>>,
{
    type Output = Result<Answer, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProj::Going { inner, headed } => {
                let answer = std::task::ready!(inner.poll(cx))?;
                Poll::Ready(Ok(with_headers(answer, headed.take())))
            }
            EitherProj::Waiting { waiting } => waiting.as_mut().poll(cx),
        }
    }
}
