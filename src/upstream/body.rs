//! Bodies on the backend side: what the backend receives
//! ([`RequestBody`]) and what it answers ([`UpstreamBody`]). Enums and
//! concrete types rather than boxed trait objects, so the hot path
//! allocates nothing for them.

use super::budget::BudgetPermit;
use super::client::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Full, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// What the backend receives: the client's body streamed through a
    /// byte cap, or a buffered body (a spooled request, replayed).
    #[project = RequestBodyProj]
    pub enum RequestBody {
        Streaming { #[pin] inner: Limited<Incoming> },
        Full { #[pin] inner: Full<Bytes> },
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Streaming { .. } => f.write_str("RequestBody::Streaming"),
            RequestBody::Full { inner } => write!(f, "RequestBody::Full({:?})", inner.size_hint().exact()),
        }
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

/// A client's body on its way to the backend, capped at `max` bytes.
pub trait CapBody {
    fn capped(self, max: u64) -> RequestBody;
}

impl CapBody for Incoming {
    fn capped(self, max: u64) -> RequestBody {
        RequestBody::streaming(self, max)
    }
}

/// Already buffered (its length is known and was checked).
impl CapBody for RequestBody {
    fn capped(self, _max: u64) -> RequestBody {
        self
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

/// What an exchange holds until the backend's response body ends: the
/// pooled connection, the budget permit and the in-flight gauge. Each
/// layer of an upstream stack hands its part over with [`UpstreamBody::hold`]
/// and friends, so a streaming response keeps counting against the budget
/// until its last byte, and a client that goes away frees everything.
#[derive(Default)]
pub struct Held {
    /// Back to the pool only when the body ends cleanly; closed otherwise.
    lease: Option<Lease>,
    permit: Option<BudgetPermit>,
    in_flight: Option<InFlightGauge>,
}

impl Held {
    fn finished_cleanly(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.permit = None;
        self.in_flight = None;
    }

    fn abandon(&mut self) {
        *self = Held::default();
    }
}

/// An exchange's budget slot, taken out of its body: freed when dropped.
#[derive(Default)]
pub struct Slot {
    _permit: Option<BudgetPermit>,
    _in_flight: Option<InFlightGauge>,
}

impl Slot {
    /// A slot holding only an in-flight count (for tests of whatever
    /// frees slots).
    #[cfg(test)]
    pub fn counting(gauge: InFlightGauge) -> Slot {
        Slot {
            _permit: None,
            _in_flight: Some(gauge),
        }
    }
}

/// Counts one exchange in `sluice_upstream_in_flight` while it lives.
pub struct InFlightGauge(prometheus::IntGauge);

impl InFlightGauge {
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        InFlightGauge(gauge)
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A response body that keeps what an exchange holds until it ends, so
/// the layers of an upstream stack can hand their part over.
pub trait Holder {
    fn hold_permit(&mut self, permit: BudgetPermit);
    fn hold_in_flight(&mut self, gauge: InFlightGauge);
}

impl Holder for UpstreamBody {
    fn hold_permit(&mut self, permit: BudgetPermit) {
        self.held.permit = Some(permit);
        self.settle_if_empty();
    }

    fn hold_in_flight(&mut self, gauge: InFlightGauge) {
        self.held.in_flight = Some(gauge);
        self.settle_if_empty();
    }
}

pin_project! {
    /// The backend's response body, with what the exchange holds.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        held: Held,
    }
}

impl UpstreamBody {
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        let mut body = UpstreamBody {
            inner,
            held: Held {
                lease: Some(lease),
                ..Held::default()
            },
        };
        body.settle_if_empty();
        body
    }

    /// Hands over the budget slot this exchange holds (permit and
    /// in-flight count), so something that runs whether or not this body
    /// is polled can free it at the request's deadline.
    pub fn take_slot(&mut self) -> Slot {
        Slot {
            _permit: self.held.permit.take(),
            _in_flight: self.held.in_flight.take(),
        }
    }

    /// The exchange no longer holds a budget slot (an upgraded tunnel is
    /// long-lived and stops counting once established).
    pub fn release_holdings(&mut self) {
        self.held.permit = None;
        self.held.in_flight = None;
    }

    /// Stops the exchange now: the connection is closed, the permit and
    /// the in-flight count given back.
    pub fn abandon(&mut self) {
        self.held.abandon();
    }

    /// A body with nothing to stream (204, HEAD) ends the exchange at once.
    fn settle_if_empty(&mut self) {
        if self.inner.is_end_stream() {
            self.held.finished_cleanly();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let poll = this.inner.as_mut().poll_frame(cx);
        match &poll {
            // hyper stops polling once `is_end_stream` says so, so the last
            // data frame may be all we ever see.
            Poll::Ready(None) => this.held.finished_cleanly(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.held.finished_cleanly(),
            Poll::Ready(Some(Err(_))) => this.held.abandon(),
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
