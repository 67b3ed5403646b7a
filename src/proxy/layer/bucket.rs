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
    // Rendered on the stack, then copied once into an exactly sized
    // buffer (a Vec with spare capacity would cost a second allocation
    // when it becomes the header's storage).
    let mut stack = [0u8; 128];
    let mut v = Cursor {
        buf: &mut stack,
        len: 0,
    };
    v.push(b"\"");
    v.push(route.config.name.as_bytes());
    v.push(b"\";r=");
    v.push(itoa::Buffer::new().format(remaining).as_bytes());
    v.push(b";t=");
    v.push(itoa::Buffer::new().format(reset).as_bytes());
    let state = match v.overflowed() {
        false => HeaderValue::from_bytes(&v.buf[..v.len]),
        // A route name too long for the stack buffer (names are short).
        true => HeaderValue::from_str(&format!("\"{}\";r={remaining};t={reset}", route.config.name)),
    };
    RateLimitHeaders {
        policy: stats.policy_header.clone(),
        state: state.unwrap_or(HeaderValue::from_static("")),
    }
}

/// Appends into a fixed buffer, remembering if it ran out.
struct Cursor<'a> {
    buf: &'a mut [u8; 128],
    len: usize,
}

impl Cursor<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if end <= self.buf.len() {
            self.buf[self.len..end].copy_from_slice(bytes);
        }
        self.len = end;
    }

    fn overflowed(&self) -> bool {
        self.len > self.buf.len()
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
    Go {
        remaining: Option<u32>,
    },
    Spool,
    Refuse(ProxyError),
    Wait(Duration),
    /// A global route whose answer only the cluster store has.
    Ask,
}

/// The route's key for a request and how much of its `max_wait` is left.
fn key_and_wait<'a>(
    req: &'a Request<RequestBody>,
    m: &Matched,
    route: &Route,
    buf: &'a mut String,
) -> (&'a str, Duration) {
    let facts = RequestFacts {
        method: req.method(),
        host: None,
        path: req.uri().path(),
        headers: req.headers(),
        client_ip: m.client_ip,
    };
    let key = key_for(&route.config.key, &facts, buf);
    let wait_left = (m.start + m.max_wait()).saturating_duration_since(Instant::now());
    (key, wait_left)
}

fn verdict_of(decision: Decision, route: &Route, m: &Matched) -> Verdict {
    match decision {
        Decision::Forward { remaining } => Verdict::Go {
            remaining: Some(remaining),
        },
        Decision::Spool => Verdict::Spool,
        Decision::Reject { retry_after } => Verdict::Refuse(rate_limited(route, m.stats(), retry_after)),
        Decision::Wait { wait } => Verdict::Wait(wait),
    }
}

fn decide(req: &Request<RequestBody>, m: &Matched) -> Verdict {
    let Some(route) = m.route() else {
        return Verdict::Go { remaining: None };
    };
    // Behind an ordered backlog, or `Prefer: respond-async`: spooled
    // without a token.
    if m.behind_backlog || m.spool_now {
        return Verdict::Spool;
    }
    let mut key_buf = String::new();
    let (key, wait_left) = key_and_wait(req, m, route, &mut key_buf);
    let decision = match &route.global {
        None => route.admit(key, req.method(), wait_left),
        Some(global) => match global.try_check(key) {
            Some(v) => route.decide(v, req.method(), wait_left),
            None => return Verdict::Ask,
        },
    };
    verdict_of(decision, route, m)
}

/// [`decide`], asking the cluster store when only it can tell.
async fn decide_asking(req: &Request<RequestBody>, m: &Matched) -> Verdict {
    match decide(req, m) {
        Verdict::Ask => {}
        v => return v,
    }
    let Some(route) = m.route() else {
        return Verdict::Go { remaining: None };
    };
    let Some(global) = &route.global else {
        return Verdict::Refuse(ProxyError::Internal);
    };
    let mut key_buf = String::new();
    let (key, _) = key_and_wait(req, m, route, &mut key_buf);
    let v = global.check(key).await;
    // The time spent asking counts against `max_wait`.
    let wait_left = (m.start + m.max_wait()).saturating_duration_since(Instant::now());
    verdict_of(route.decide(v, req.method(), wait_left), route, m)
}

impl<S> BucketService<S>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    fn slow_path(
        &mut self,
        req: Request<RequestBody>,
        first_wait: Option<Duration>,
    ) -> ReadyOr<Either<S::Future>, Result<Answer, ProxyError>> {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ReadyOr::Inner {
            inner: Either::Waiting {
                waiting: Box::pin(wait_for_token(inner, req, first_wait)),
            },
        }
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
            Verdict::Wait(wait) => self.slow_path(req, Some(wait)),
            Verdict::Ask => self.slow_path(req, None),
        }
    }
}

/// Sleeps until the bucket says yes or the route's `max_wait` runs out,
/// asking the cluster store where only it can say (`first_wait` `None`:
/// ask at once).
async fn wait_for_token<S>(
    mut inner: S,
    mut req: Request<RequestBody>,
    first_wait: Option<Duration>,
) -> Result<Answer, ProxyError>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ProxyError>,
{
    let mut wait = first_wait.unwrap_or_default();
    loop {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(m) = req.extensions().get::<Matched>() else {
            return Err(ProxyError::Internal);
        };
        match decide_asking(&req, m).await {
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
            Verdict::Ask => return Err(ProxyError::Internal),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::{fixture, forwarding};
    use std::sync::Mutex;
    use tower::ServiceExt;

    const ROUTES: &str = r#"
[[route]]
name = "orders"
match = { path_prefix = "/orders" }
rate = "1/s"
burst = 1
on_limit = "spool"

[[route]]
name = "reads"
match = { path_prefix = "/" }
rate = "1/s"
burst = 1
on_limit = "reject"
"#;

    #[tokio::test]
    async fn a_token_forwards_with_ratelimit_headers_and_none_rejects_with_them() {
        let f = fixture(ROUTES).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = BucketLayer.layer(forwarding(seen.clone()));
        let Ok(Answer::Forwarded(resp)) = svc.clone().oneshot(f.request("GET", "/x", b"")).await else {
            panic!("the first request has a token");
        };
        assert_eq!(resp.headers()["ratelimit-policy"], "\"reads\";q=1;w=1");
        assert_eq!(resp.headers()["ratelimit"], "\"reads\";r=0;t=1");
        match svc.oneshot(f.request("GET", "/x", b"")).await {
            Err(ProxyError::RateLimited {
                route,
                headers: Some(h),
                ..
            }) => {
                assert_eq!(route, "reads");
                assert_eq!(h.state, "\"reads\";r=0;t=1");
            }
            _ => panic!("the second is over the limit"),
        }
        assert_eq!(seen.lock().unwrap().len(), 1, "a rejected request goes no further");
    }

    #[tokio::test]
    async fn over_the_limit_on_a_spool_route_is_marked_for_the_spool() {
        let f = fixture(ROUTES).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = BucketLayer.layer(forwarding(seen.clone()));
        svc.clone().oneshot(f.request("POST", "/orders", b"a")).await.unwrap();
        svc.clone().oneshot(f.request("POST", "/orders", b"b")).await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen[0].spool_now);
        assert!(seen[1].spool_now, "no token: spool it");
    }

    #[tokio::test]
    async fn behind_a_backlog_the_request_is_spooled_without_a_token() {
        let f = fixture(ROUTES).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = BucketLayer.layer(forwarding(seen.clone()));
        let mut req = f.request("POST", "/orders", b"a");
        req.extensions_mut().get_mut::<Matched>().unwrap().behind_backlog = true;
        svc.clone().oneshot(req).await.unwrap();
        assert!(seen.lock().unwrap()[0].spool_now);
        // The token is still there for the next request.
        svc.oneshot(f.request("POST", "/orders", b"b")).await.unwrap();
        assert!(!seen.lock().unwrap()[1].spool_now);
    }

    #[tokio::test]
    async fn an_inner_failure_passes_through_and_a_waiting_request_can_be_dropped() {
        let f = fixture(&ROUTES.replace("on_limit = \"reject\"", "on_limit = \"reject\"\nmax_wait = \"5s\"")).await;
        let failing = BucketLayer.layer(tower::service_fn(|_: Request<RequestBody>| async {
            Err::<Answer, _>(ProxyError::UpstreamBusy {
                retry_after: Duration::from_secs(1),
            })
        }));
        let r = failing.clone().oneshot(f.request("GET", "/x", b"")).await;
        assert!(matches!(r, Err(ProxyError::UpstreamBusy { .. })));
        // Now over the limit with max_wait: the request waits; dropping it
        // leaves nothing behind.
        let waiting = failing.oneshot(f.request("GET", "/x", b""));
        assert!(tokio::time::timeout(Duration::from_millis(20), waiting).await.is_err());
    }
}
