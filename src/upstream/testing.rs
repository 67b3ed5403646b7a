//! Stubs for the layers' unit tests: an inner service that answers a
//! fixed way, and a response body that shows what it was given to hold.

use super::body::{Holder, InFlightGauge, RequestBody};
use super::budget::BudgetPermit;
use super::error::{Failed, UpstreamError};
use super::Outbound;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A body that records what the layers handed it.
#[derive(Default)]
pub struct StubBody {
    pub permit: Option<BudgetPermit>,
    pub in_flight: Option<InFlightGauge>,
}

impl std::fmt::Debug for StubBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubBody")
            .field("permit", &self.permit.is_some())
            .field("in_flight", &self.in_flight.is_some())
            .finish()
    }
}

impl Holder for StubBody {
    fn hold_permit(&mut self, permit: BudgetPermit) {
        self.permit = Some(permit);
    }

    fn hold_in_flight(&mut self, gauge: InFlightGauge) {
        self.in_flight = Some(gauge);
    }
}

#[derive(Clone, Copy, Debug)]
pub enum StubResult {
    Status(u16),
    Busy,
    Timeout,
    Refused,
    /// Never answers.
    Hang,
}

pub fn outbound() -> Outbound {
    Outbound {
        request: Request::new(RequestBody::full(bytes::Bytes::from_static(b"x"))),
        wait_until: None,
        timeout: Duration::from_secs(5),
        retry: false,
    }
}

type StubFuture = Pin<Box<dyn Future<Output = Result<Response<StubBody>, Failed>> + Send>>;

/// An inner service that answers every request with `result`.
pub fn status_service(
    result: StubResult,
) -> impl tower::Service<Outbound, Response = Response<StubBody>, Error = Failed, Future = StubFuture> + Clone {
    tower::service_fn(move |out: Outbound| -> StubFuture {
        Box::pin(async move {
            match result {
                StubResult::Status(s) => {
                    let mut r = Response::new(StubBody::default());
                    *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
                    Ok(r)
                }
                StubResult::Busy => Err(Failed::unsent(
                    UpstreamError::Busy {
                        retry_after: Duration::from_secs(1),
                    },
                    out.request,
                )),
                StubResult::Timeout => Err(Failed::sent(UpstreamError::Timeout {
                    after: Duration::from_secs(1),
                })),
                StubResult::Refused => Err(Failed::unsent(
                    UpstreamError::Connect {
                        authority: "test".into(),
                        source: std::io::ErrorKind::ConnectionRefused.into(),
                    },
                    out.request,
                )),
                StubResult::Hang => std::future::pending().await,
            }
        })
    })
}
