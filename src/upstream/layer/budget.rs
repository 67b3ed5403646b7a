//! The upstream budget as a layer: a request goes on only with a slot and
//! a token from the [`Budget`], held until its response body ends.
//!
//! Hand-written: tower's `ConcurrencyLimit` and `RateLimit` apply
//! backpressure through `poll_ready`, which would stall a whole
//! connection; here each request waits only as long as its own deadline
//! allows, and replay takes only what live traffic leaves.

use crate::upstream::body::Holder;
use crate::upstream::budget::{Budget, BudgetError, BudgetPermit, NotNow};
use crate::upstream::error::{Failed, UpstreamError};
use crate::upstream::Outbound;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

/// Whose share of the budget a stack takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// Live traffic: first call on the budget, waits until the request's
    /// `wait_until`.
    Live,
    /// Replay: only what leaves live traffic its reserve; waits as long as
    /// it takes.
    Replay,
}

#[derive(Clone)]
pub struct BudgetLayer {
    budget: Arc<Budget>,
    share: Share,
}

impl BudgetLayer {
    pub fn new(budget: Arc<Budget>, share: Share) -> Self {
        BudgetLayer { budget, share }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;

    fn layer(&self, inner: S) -> BudgetService<S> {
        BudgetService {
            inner,
            budget: self.budget.clone(),
            share: self.share,
        }
    }
}

#[derive(Clone)]
pub struct BudgetService<S> {
    inner: S,
    budget: Arc<Budget>,
    share: Share,
}

type Acquire = Pin<Box<dyn Future<Output = Result<BudgetPermit, BudgetError>> + Send>>;

impl<S, B> Service<Outbound> for BudgetService<S>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed> + Clone,
    B: Holder,
{
    type Response = Response<B>;
    type Error = Failed;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        // The common case takes both at once and allocates nothing; only a
        // request that has to wait boxes its wait.
        let tried = match self.share {
            Share::Live => self.budget.try_acquire_live(),
            Share::Replay => self.budget.try_acquire_replay(),
        };
        let retry_after = match tried {
            Ok(permit) => {
                return ResponseFuture::Calling {
                    inner: self.inner.call(out),
                    permit: Some(permit),
                }
            }
            Err(NotNow::Busy(retry_after)) => Some(retry_after),
            // Only the cluster store can say; asking it is bounded by
            // `cluster.timeout`, so even a request with no time to wait
            // may ask.
            Err(NotNow::AskStore) => None,
        };
        let acquire: Acquire = match (self.share, out.wait_until, retry_after) {
            (Share::Live, Some(deadline), _) if deadline > Instant::now() => {
                Box::pin(self.budget.clone().acquire(deadline))
            }
            (Share::Live, _, None) => Box::pin(self.budget.clone().acquire(Instant::now())),
            (Share::Live, _, Some(retry_after)) => {
                return ResponseFuture::Refused {
                    failure: Some(Failed::unsent(UpstreamError::Busy { retry_after }, out.request)),
                }
            }
            (Share::Replay, _, _) => {
                let budget = self.budget.clone();
                Box::pin(async move { Ok(budget.acquire_replay().await) })
            }
        };
        // The inner service is taken for the wait; a ready clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Waiting {
            acquire,
            pending: Some((inner, out)),
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<S, F> {
        Waiting { acquire: Acquire, pending: Option<(S, Outbound)> },
        Calling { #[pin] inner: F, permit: Option<BudgetPermit> },
        Refused { failure: Option<Failed> },
    }
}

impl<S, B> Future for ResponseFuture<S, S::Future>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed>,
    B: Holder,
{
    type Output = Result<Response<B>, Failed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                Proj::Refused { failure } => return Poll::Ready(Err(failure.take().expect("polled after completion"))),
                Proj::Waiting { acquire, pending } => {
                    let acquired = std::task::ready!(acquire.as_mut().poll(cx));
                    let (mut inner, out) = pending.take().expect("polled after completion");
                    let next = match acquired {
                        Ok(permit) => ResponseFuture::Calling {
                            inner: inner.call(out),
                            permit: Some(permit),
                        },
                        Err(BudgetError::Exhausted { retry_after }) => ResponseFuture::Refused {
                            failure: Some(Failed::unsent(UpstreamError::Busy { retry_after }, out.request)),
                        },
                    };
                    self.set(next);
                }
                Proj::Calling { inner, permit } => {
                    let mut result = std::task::ready!(inner.poll(cx));
                    // The permit stays with the response body; on failure it
                    // is simply dropped here.
                    if let (Ok(resp), Some(p)) = (&mut result, permit.take()) {
                        resp.body_mut().hold_permit(p);
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
    use crate::upstream::budget::BudgetSpec;
    use crate::upstream::testing::{outbound, status_service, StubResult};
    use std::time::Duration;
    use tower::ServiceExt;

    fn budget(max_concurrency: u32) -> Arc<Budget> {
        Arc::new(Budget::new(BudgetSpec {
            capacity: None,
            capacity_burst: 1,
            max_concurrency,
            scope: crate::config::Scope::Local,
        }))
    }

    #[tokio::test]
    async fn the_permit_lives_as_long_as_the_response_body() {
        let b = budget(1);
        let svc = BudgetLayer::new(b.clone(), Share::Live).layer(status_service(StubResult::Status(200)));
        let resp = svc.clone().oneshot(outbound()).await.unwrap();
        assert!(resp.body().permit.is_some());
        assert_eq!(b.in_flight(), 1);
        // Spent: a request with no time to wait is refused, its request
        // handed back for spooling.
        let e = svc.clone().oneshot(outbound()).await.unwrap_err();
        assert!(matches!(e.error, UpstreamError::Busy { .. }));
        assert!(e.unsent.is_some());
        drop(resp);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_inner_failure_gives_the_permit_back() {
        let b = budget(1);
        let svc = BudgetLayer::new(b.clone(), Share::Live).layer(status_service(StubResult::Timeout));
        svc.oneshot(outbound()).await.unwrap_err();
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_request_gives_the_permit_back_while_waiting_or_sending() {
        let b = budget(1);
        let hang = BudgetLayer::new(b.clone(), Share::Live).layer(status_service(StubResult::Hang));
        let first = tokio::spawn(hang.clone().oneshot(outbound()));
        tokio::task::yield_now().await;
        assert_eq!(b.in_flight(), 1);
        // A second request waits for the slot, then its client goes away.
        let mut waiting = outbound();
        waiting.wait_until = Some(Instant::now() + Duration::from_secs(10));
        let _ = tokio::time::timeout(Duration::from_millis(20), hang.clone().oneshot(waiting)).await;
        first.abort();
        let _ = first.await;
        assert_eq!(b.in_flight(), 0, "the sender's permit is back");
        // And the waiter left nothing behind: the slot can be taken.
        let ok = BudgetLayer::new(b.clone(), Share::Live).layer(status_service(StubResult::Status(200)));
        ok.oneshot(outbound()).await.unwrap();
    }

    #[tokio::test]
    async fn a_live_request_waits_until_its_deadline_for_a_slot() {
        let b = budget(1);
        let svc = BudgetLayer::new(b.clone(), Share::Live).layer(status_service(StubResult::Status(200)));
        let held = svc.clone().oneshot(outbound()).await.unwrap();
        let mut waiting = outbound();
        waiting.wait_until = Some(Instant::now() + Duration::from_secs(5));
        let waiter = tokio::spawn(svc.clone().oneshot(waiting));
        // Let the waiter start waiting before the slot comes free.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let resp = waiter.await.unwrap().unwrap();
        assert!(resp.body().permit.is_some());
    }
}
