//! Body types on both sides of the proxy, as enums rather than boxed trait
//! objects so the hot path allocates nothing for them.

use super::client::Lease;
use crate::upstream::BudgetPermit;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Full, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Released when the backend's response body ends (or is dropped): the
/// request counts against the budget and the in-flight gauge until then.
pub struct InFlight {
    _permit: Option<BudgetPermit>,
    gauge: prometheus::IntGauge,
    /// The pooled connection, returned to the pool only when the body
    /// ends cleanly.
    lease: Option<Lease>,
}

impl InFlight {
    pub fn new(permit: Option<BudgetPermit>, gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlight {
            _permit: permit,
            gauge,
            lease: None,
        }
    }

    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    fn finished_cleanly(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

pin_project! {
    /// What the client receives.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin] inner: Incoming,
            guard: Option<InFlight>,
            // The whole live request must end by this instant
            // (`server.request_timeout`); a body still streaming then is
            // cut off, freeing its budget slot.
            deadline: tokio::time::Instant,
            // Armed only once the body has to wait for data, so a body that
            // is already complete costs no timer.
            timer: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        Full { #[pin] inner: Full<Bytes> },
    }
}

/// The live response body outlived `server.request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("response body still streaming at the request deadline")]
pub struct BodyDeadline;

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full {
            inner: Full::new(b.into()),
        }
    }

    pub fn empty() -> Self {
        ResponseBody::Full {
            inner: Full::new(Bytes::new()),
        }
    }

    pub fn upstream(inner: Incoming, mut guard: InFlight, deadline: tokio::time::Instant) -> Self {
        if inner.is_end_stream() {
            // Nothing to stream (e.g. 204, HEAD): the exchange is over.
            guard.finished_cleanly();
        }
        ResponseBody::Upstream {
            inner,
            guard: Some(guard),
            deadline,
            timer: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Upstream {
                mut inner,
                guard,
                deadline,
                timer,
            } => {
                let poll = inner.as_mut().poll_frame(cx);
                if poll.is_pending() {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*deadline)));
                    if t.as_mut().poll(cx).is_ready() {
                        guard.take();
                        return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
                    }
                    return Poll::Pending;
                }
                let poll = poll.map_err(|e| Box::new(e) as BoxError);
                match &poll {
                    // hyper stops polling once `is_end_stream` says so, so
                    // the last data frame may be all we ever see.
                    Poll::Ready(None) => {
                        if let Some(mut g) = guard.take() {
                            g.finished_cleanly();
                        }
                    }
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        if let Some(mut g) = guard.take() {
                            g.finished_cleanly();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        guard.take();
                    }
                    _ => {}
                }
                poll
            }
            ResponseBodyProj::Full { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Full { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Full { inner } => inner.size_hint(),
        }
    }
}

pin_project! {
    /// What the backend receives: the client's body streamed through a
    /// byte cap, or a buffered body (replay).
    #[project = RequestBodyProj]
    pub enum RequestBody {
        Streaming { #[pin] inner: Limited<Incoming> },
        Full { #[pin] inner: Full<Bytes> },
    }
}

impl RequestBody {
    pub fn streaming(inner: Incoming, max: u64) -> Self {
        RequestBody::Streaming {
            inner: Limited::new(inner, usize::try_from(max).unwrap_or(usize::MAX)),
        }
    }

    pub fn full(b: Bytes) -> Self {
        RequestBody::Full { inner: Full::new(b) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RequestBodyProj::Streaming { inner } => inner.poll_frame(cx),
            RequestBodyProj::Full { inner } => inner.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming { inner } => inner.is_end_stream(),
            RequestBody::Full { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming { inner } => inner.size_hint(),
            RequestBody::Full { inner } => inner.size_hint(),
        }
    }
}
