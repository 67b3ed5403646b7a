//! Body-size limit: a declared `Content-Length` over `server.max_body` is
//! refused (413) before the request costs a token, and every other body
//! is capped while it streams (a chunked body that runs past the limit
//! ends in 413 too).
//!
//! Hand-written rather than tower-http's `RequestBodyLimit`: that one
//! answers the 413 itself, and the refused body must be drained (a
//! lingering close) so the client reads our answer, not a reset.

use super::ReadyOr;
use crate::proxy::{Answer, Matched, ProxyError};
use crate::upstream::body::{CapBody, RequestBody};
use http::header::CONTENT_LENGTH;
use http::Request;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

#[derive(Clone, Copy, Default)]
pub struct BodyLimitLayer;

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;

    fn layer(&self, inner: S) -> BodyLimitService<S> {
        BodyLimitService { inner }
    }
}

#[derive(Clone)]
pub struct BodyLimitService<S> {
    inner: S,
}

pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl<S, B> Service<Request<B>> for BodyLimitService<S>
where
    S: Service<Request<RequestBody>, Response = Answer, Error = ProxyError>,
    B: CapBody + http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Answer;
    type Error = ProxyError;
    type Future = ReadyOr<S::Future, Result<Answer, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = match req.extensions().get::<Matched>() {
            Some(m) => m.runtime.config.server.max_body,
            None => return ReadyOr::ready(Err(ProxyError::Internal)),
        };
        if declared_length(req.headers()).is_some_and(|n| n > limit) {
            linger(req.into_body());
            return ReadyOr::ready(Err(ProxyError::TooLarge { limit }));
        }
        ReadyOr::Inner {
            inner: self.inner.call(req.map(|body| body.capped(limit))),
        }
    }
}

/// Reads and discards (a bounded amount of) a refused request's body, so
/// the client, still sending it, reads our 413 instead of a connection
/// reset — what nginx calls a lingering close.
pub fn linger<B>(body: B)
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    const MAX_DISCARD: usize = 16 << 20;
    tokio::spawn(async move {
        let discard = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_DISCARD));
        let _ = tokio::time::timeout(Duration::from_secs(5), discard).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::{fixture, forwarding};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_declared_length_over_max_body_is_refused_before_the_inner_service() {
        let f = fixture("[server]\nmax_body = \"10B\"\n").await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let svc = BodyLimitLayer.layer(forwarding(seen.clone()));
        let refused = svc.clone().oneshot(f.request("POST", "/", b"01234567890")).await;
        assert!(matches!(refused, Err(ProxyError::TooLarge { limit: 10 })));
        assert!(seen.lock().unwrap().is_empty(), "refused before the inner service");
        let passed = svc.oneshot(f.request("POST", "/", b"0123456789")).await;
        assert!(matches!(passed, Ok(Answer::Forwarded(_))));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
