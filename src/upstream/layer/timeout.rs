//! The exchange's timeout as a layer: no response head within
//! [`Outbound::timeout`] fails it with [`UpstreamError::Timeout`].
//!
//! Hand-written rather than tower's `Timeout`: the limit differs per
//! request (a live request gets what is left of `server.request_timeout`
//! when that is shorter than `upstream.timeout`), and the error stays typed.

use crate::upstream::error::{Failed, UpstreamError};
use crate::upstream::Outbound;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> TimeoutService<S> {
        TimeoutService { inner }
    }
}

#[derive(Clone)]
pub struct TimeoutService<S> {
    inner: S,
}

impl<S> Service<Outbound> for TimeoutService<S>
where
    S: Service<Outbound, Error = Failed>,
{
    type Response = S::Response;
    type Error = Failed;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let after = out.timeout;
        ResponseFuture {
            sleep: tokio::time::sleep(after),
            after,
            inner: self.inner.call(out),
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, Failed>>,
{
    type Output = Result<T, Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Failed::sent(UpstreamError::Timeout { after: *this.after }))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::testing::{outbound, status_service, StubResult};
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn a_hung_backend_times_out_with_the_requests_own_limit() {
        let svc = TimeoutLayer.layer(status_service(StubResult::Hang));
        let mut out = outbound();
        out.timeout = Duration::from_millis(250);
        let e = svc.oneshot(out).await.unwrap_err();
        assert!(matches!(e.error, UpstreamError::Timeout { after } if after == Duration::from_millis(250)));
        assert!(e.unsent.is_none(), "the request may have been sent");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_and_inner_errors_pass_unchanged() {
        let ok = TimeoutLayer.layer(status_service(StubResult::Status(204)));
        assert_eq!(ok.oneshot(outbound()).await.unwrap().status(), 204);
        let refused = TimeoutLayer.layer(status_service(StubResult::Refused));
        let e = refused.oneshot(outbound()).await.unwrap_err();
        assert!(matches!(e.error, UpstreamError::Connect { .. }));
    }
}
