//! A panic below the route match answers 500 `{"error":"internal"}`,
//! counted as decision `internal_error` under the request's route, instead
//! of taking the connection's task down.
//!
//! Hand-written rather than tower-http's `CatchPanic`: that one builds the
//! response itself, and here only `error::render` builds responses.

use crate::proxy::ProxyError;
use pin_project_lite::pin_project;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanicService<S>;

    fn layer(&self, inner: S) -> CatchPanicService<S> {
        CatchPanicService { inner }
    }
}

#[derive(Clone)]
pub struct CatchPanicService<S> {
    inner: S,
}

impl<S, R, T> Service<R> for CatchPanicService<S>
where
    S: Service<R, Response = T, Error = ProxyError>,
{
    type Response = T;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(inner) => ResponseFuture::Running { inner },
            Err(_) => {
                tracing::error!("request handling panicked; answered 500");
                ResponseFuture::Panicked
            }
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Running { #[pin] inner: F },
        Panicked,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = match self.as_mut().project() {
            Proj::Panicked => return Poll::Ready(Err(ProxyError::Internal)),
            Proj::Running { inner } => catch_unwind(AssertUnwindSafe(|| inner.poll(cx))),
        };
        match polled {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("request handling panicked; answered 500");
                // The panicked future is dropped here, never polled again.
                self.set(ResponseFuture::Panicked);
                Poll::Ready(Err(ProxyError::Internal))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panic_in_call_or_in_the_future_is_an_internal_error() {
        let in_call = CatchPanicLayer.layer(tower::service_fn(
            |_: ()| -> std::future::Ready<Result<(), ProxyError>> { panic!("in call") },
        ));
        assert!(matches!(in_call.oneshot(()).await, Err(ProxyError::Internal)));
        let in_future = CatchPanicLayer.layer(tower::service_fn(|_: ()| async {
            if true {
                panic!("in the future");
            }
            Ok::<(), ProxyError>(())
        }));
        assert!(matches!(in_future.oneshot(()).await, Err(ProxyError::Internal)));
        let fine = CatchPanicLayer.layer(tower::service_fn(|_: ()| async { Ok::<u8, ProxyError>(7) }));
        assert_eq!(fine.oneshot(()).await.unwrap(), 7);
    }
}
