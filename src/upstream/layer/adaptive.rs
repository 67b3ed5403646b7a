//! The adaptive replay limit as a layer: a replayed request goes on only
//! with room under the [`AdaptiveLimit`], and reports how the backend
//! answered (latency on success; overload on 5xx, 429 or a failure).
//!
//! Hand-written: the limit is our latency-aware AIMD, not a fixed
//! concurrency (tower's `ConcurrencyLimit`).

use crate::upstream::adaptive::{AdaptiveLimit, AdaptivePermit, Signal};
use crate::upstream::error::Failed;
use crate::upstream::Outbound;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct AdaptiveLayer {
    limit: Arc<AdaptiveLimit>,
}

impl AdaptiveLayer {
    pub fn new(limit: Arc<AdaptiveLimit>) -> Self {
        AdaptiveLayer { limit }
    }
}

impl<S> Layer<S> for AdaptiveLayer {
    type Service = AdaptiveService<S>;

    fn layer(&self, inner: S) -> AdaptiveService<S> {
        AdaptiveService {
            inner,
            limit: self.limit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdaptiveService<S> {
    inner: S,
    limit: Arc<AdaptiveLimit>,
}

type Acquire = Pin<Box<dyn Future<Output = AdaptivePermit> + Send>>;

impl<S, B> Service<Outbound> for AdaptiveService<S>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed> + Clone,
{
    type Response = Response<B>;
    type Error = Failed;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        if !self.limit.is_enabled() {
            return ResponseFuture::Calling {
                inner: self.inner.call(out),
                permit: None,
                started: Instant::now(),
            };
        }
        if let Some(permit) = self.limit.try_acquire() {
            return ResponseFuture::Calling {
                inner: self.inner.call(out),
                permit: Some(permit),
                started: Instant::now(),
            };
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Waiting {
            acquire: Box::pin(self.limit.clone().acquire()),
            pending: Some((inner, out)),
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<S, F> {
        Waiting { acquire: Acquire, pending: Option<(S, Outbound)> },
        Calling { #[pin] inner: F, permit: Option<AdaptivePermit>, started: Instant },
    }
}

/// What an exchange says about the backend's load.
fn signal<B>(result: &Result<Response<B>, Failed>, rtt: Duration) -> Signal {
    match result {
        Ok(resp) => match resp.status().as_u16() {
            200..=399 => Signal::Success(rtt),
            429 | 500..=599 => Signal::Overload {
                retry_after: crate::upstream::retry_after(resp.headers(), std::time::SystemTime::now()),
            },
            _ => Signal::Ignore,
        },
        Err(f) if f.error.is_backend_failure() => Signal::Overload { retry_after: None },
        Err(_) => Signal::Ignore,
    }
}

impl<S, B> Future for ResponseFuture<S, S::Future>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed>,
{
    type Output = Result<Response<B>, Failed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Proj::Waiting { acquire, pending } => {
                    let permit = std::task::ready!(acquire.as_mut().poll(cx));
                    let (mut inner, out) = pending.take().expect("polled after completion");
                    self.set(ResponseFuture::Calling {
                        inner: inner.call(out),
                        permit: Some(permit),
                        started: Instant::now(),
                    });
                }
                Proj::Calling { inner, permit, started } => {
                    let result = std::task::ready!(inner.poll(cx));
                    if let Some(p) = permit.take() {
                        p.report(signal(&result, started.elapsed()));
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::adaptive::AdaptiveConfig;
    use crate::upstream::testing::{outbound, status_service, StubResult};
    use tower::ServiceExt;

    fn limit(max: u32) -> Arc<AdaptiveLimit> {
        Arc::new(AdaptiveLimit::new(
            AdaptiveConfig::for_max(max),
            prometheus::Gauge::new("c", "c").unwrap(),
            prometheus::Gauge::new("r", "r").unwrap(),
        ))
    }

    #[tokio::test]
    async fn overload_shrinks_the_limit_and_success_grows_it() {
        let l = limit(64);
        let start = l.limit();
        let svc = AdaptiveLayer::new(l.clone()).layer(status_service(StubResult::Status(200)));
        for _ in 0..50 {
            svc.clone().oneshot(outbound()).await.unwrap();
        }
        assert!(l.limit() > start, "successes grow it: {start} -> {}", l.limit());
        let grown = l.limit();
        let failing = AdaptiveLayer::new(l.clone()).layer(status_service(StubResult::Timeout));
        failing.oneshot(outbound()).await.unwrap_err();
        assert!(l.limit() < grown, "a timeout cuts it");
        let busy = AdaptiveLayer::new(l.clone()).layer(status_service(StubResult::Busy));
        let before = l.limit();
        busy.oneshot(outbound()).await.unwrap_err();
        assert_eq!(l.limit(), before, "our own budget says nothing about the backend");
    }

    #[tokio::test]
    async fn a_dropped_request_frees_its_place() {
        let l = limit(1);
        let hang = AdaptiveLayer::new(l.clone()).layer(status_service(StubResult::Hang));
        let _ = tokio::time::timeout(Duration::from_millis(10), hang.clone().oneshot(outbound())).await;
        assert_eq!(l.in_flight(), 0);
    }
}
