//! What a client receives on either port: a buffered body (sluice's own
//! answers) or the backend's streamed one, with the live request's
//! deadline. An enum rather than a boxed trait object, so the hot path
//! allocates nothing for it.

use crate::server::watch::Ticket;
use crate::upstream::body::{BoxError, UpstreamBody};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pin_project! {
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin] inner: UpstreamBody,
            // The whole live request must end by this instant
            // (`server.request_timeout`); a body still streaming then is
            // cut off, freeing its budget slot.
            deadline: tokio::time::Instant,
            // Armed only once the body has to wait for data, so a body that
            // is already complete costs no timer.
            timer: Option<Pin<Box<tokio::time::Sleep>>>,
            // The budget slot, held by the connection's watch, which frees
            // it at the deadline even if this body is never polled again
            // (a client that stopped reading).
            ticket: Option<Ticket>,
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

    pub fn upstream(inner: UpstreamBody, deadline: tokio::time::Instant, ticket: Option<Ticket>) -> Self {
        ResponseBody::Upstream {
            inner,
            deadline,
            timer: None,
            ticket,
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
                deadline,
                timer,
                ticket,
            } => {
                if ticket.as_ref().is_some_and(|t| !t.alive()) {
                    // The watch freed the slot at the deadline.
                    inner.get_mut().abandon();
                    return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
                }
                let poll = inner.as_mut().poll_frame(cx);
                if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
                    || (matches!(poll, Poll::Ready(Some(Ok(_)))) && inner.is_end_stream())
                {
                    // Done: the slot goes back now, not when hyper drops us.
                    *ticket = None;
                }
                if poll.is_pending() {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*deadline)));
                    if t.as_mut().poll(cx).is_ready() {
                        inner.get_mut().abandon();
                        return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
                    }
                    return Poll::Pending;
                }
                poll.map_err(|e| Box::new(e) as BoxError)
            }
            ResponseBodyProj::Full { inner } => inner.poll_frame(cx).map_err(|never| match never {}),
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

/// Whole seconds for Retry-After, at least 1 (SPEC §4).
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// A JSON answer of sluice's own, with `Retry-After` when given.
pub fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    retry_after: Option<Duration>,
) -> Response<ResponseBody> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(d) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
    }
    resp
}
