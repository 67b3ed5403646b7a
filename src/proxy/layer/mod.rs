//! The data port's layers, one concern each, in request order.

mod body_limit;
mod bucket;
mod catch_panic;
mod forward;
mod hygiene;
mod observe;
mod route_match;
mod spool;
mod status;
#[cfg(test)]
pub(crate) mod testing;

pub use body_limit::{BodyLimitLayer, BodyLimitService};
pub use bucket::{BucketLayer, BucketService};
pub use catch_panic::{CatchPanicLayer, CatchPanicService};
pub use forward::{Forward, ForwardError};
pub use hygiene::{HygieneLayer, HygieneService};
pub use observe::{ObserveLayer, ObserveService};
pub use route_match::{RouteMatchLayer, RouteMatchService};
pub use spool::{SpoolLayer, SpoolService};
pub use status::{StatusLayer, StatusService};

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// A layer's future: an answer it knew at once, or its inner service's.
    #[project = ReadyOrProj]
    pub enum ReadyOr<F, T> {
        Ready { value: Option<T> },
        Inner { #[pin] inner: F },
    }
}

impl<F, T> ReadyOr<F, T> {
    pub fn ready(value: T) -> Self {
        ReadyOr::Ready { value: Some(value) }
    }
}

impl<F: Future<Output = T>, T> Future for ReadyOr<F, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            ReadyOrProj::Ready { value } => Poll::Ready(value.take().expect("polled after completion")),
            ReadyOrProj::Inner { inner } => inner.poll(cx),
        }
    }
}

/// Boxed where a layer's path has to wait (a token, the spool): those
/// paths are rare or cost far more than an allocation.
pub type BoxAnswer = Pin<Box<dyn Future<Output = Result<super::Answer, super::ProxyError>> + Send>>;
