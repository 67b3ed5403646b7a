//! The circuit breaker as a layer: asks [`Breaker::admit`] before the
//! request goes on, and reports how the exchange went.
//!
//! Hand-written (tower has no breaker); the probe slot is held by a ticket
//! that gives it back when the future is dropped unjudged (a client that
//! went away), so a lost probe never holds the breaker half-open.

use crate::upstream::breaker::{Admit, Breaker, Health, Role};
use crate::upstream::error::{Failed, UpstreamError};
use crate::upstream::Outbound;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
    role: Role,
}

impl BreakerLayer {
    pub fn new(breaker: Arc<Breaker>, role: Role) -> Self {
        BreakerLayer { breaker, role }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            role: self.role,
        }
    }
}

#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
    role: Role,
}

/// A half-open probe slot, given back unless the exchange was judged.
struct Ticket {
    breaker: Arc<Breaker>,
    probe: bool,
    /// False for a replayed record's retry (see `Breaker::record`).
    counts: bool,
    settled: bool,
}

impl Ticket {
    fn settle(&mut self, health: Option<Health>) {
        self.settled = true;
        match health {
            Some(h) => self.breaker.record(h, self.probe, self.counts),
            None if self.probe => self.breaker.release_probe(),
            None => {}
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.release_probe();
        }
    }
}

impl<S, B> Service<Outbound> for BreakerService<S>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed>,
{
    type Response = Response<B>;
    type Error = Failed;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let probe = match self.breaker.admit(self.role) {
            Admit::Pass => false,
            Admit::Probe => true,
            Admit::Refuse { retry_after } => {
                return ResponseFuture::Refused {
                    failure: Some(Failed::unsent(UpstreamError::Open { retry_after }, out.request)),
                }
            }
        };
        let retry = out.retry;
        ResponseFuture::Sent {
            inner: self.inner.call(out),
            ticket: Ticket {
                breaker: self.breaker.clone(),
                probe,
                counts: !retry,
                settled: false,
            },
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Refused { failure: Option<Failed> },
        Sent { #[pin] inner: F, ticket: Ticket },
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, Failed>>,
{
    type Output = Result<Response<B>, Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { failure } => Poll::Ready(Err(failure.take().expect("polled after completion"))),
            Proj::Sent { inner, ticket } => {
                let result = std::task::ready!(inner.poll(cx));
                let health = match &result {
                    Ok(resp) => Some(Health::of(Some(resp.status().as_u16()))),
                    Err(f) if f.error.is_backend_failure() => Some(Health::Failed),
                    // Not the backend's doing (our own budget, a client that
                    // broke off its upload): the probe goes back unjudged.
                    Err(_) => None,
                };
                ticket.settle(health);
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::breaker::BreakerConfig;
    use crate::upstream::testing::{outbound, status_service, StubResult};
    use std::time::Duration;
    use tower::ServiceExt;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            BreakerConfig {
                failures: 2,
                cooldown: Duration::from_millis(50),
                probes: 1,
            },
            prometheus::IntGauge::new("b", "b").unwrap(),
        ))
    }

    #[tokio::test]
    async fn failures_open_it_and_an_open_breaker_hands_the_request_back() {
        let b = breaker();
        let svc = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Status(503)));
        for _ in 0..2 {
            assert_eq!(svc.clone().oneshot(outbound()).await.unwrap().status(), 503);
        }
        let refused = svc.clone().oneshot(outbound()).await.unwrap_err();
        assert!(matches!(refused.error, UpstreamError::Open { .. }));
        assert!(refused.unsent.is_some(), "an unsent request comes back for spooling");
    }

    #[tokio::test]
    async fn inner_errors_that_are_ours_do_not_count() {
        let b = breaker();
        let svc = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Busy));
        for _ in 0..5 {
            let e = svc.clone().oneshot(outbound()).await.unwrap_err();
            assert!(matches!(e.error, UpstreamError::Busy { .. }));
        }
        assert!(!b.is_open());
        let failing = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Timeout));
        for _ in 0..2 {
            failing.clone().oneshot(outbound()).await.unwrap_err();
        }
        assert!(b.is_open(), "timeouts are the backend's failures");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_its_slot_back() {
        let b = breaker();
        let failing = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Status(502)));
        for _ in 0..2 {
            failing.clone().oneshot(outbound()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Half-open: this request is the probe; its client goes away.
        let hanging = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Hang));
        let fut = hanging.clone().oneshot(outbound());
        let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
        // The slot is free again: the next request probes and closes it.
        let ok = BreakerLayer::new(b.clone(), Role::Live).layer(status_service(StubResult::Status(200)));
        assert_eq!(ok.oneshot(outbound()).await.unwrap().status(), 200);
        assert!(!b.is_open());
    }
}
