//! Upstream metrics as a layer: `sluice_upstream_requests_total{source,class}`,
//! `sluice_upstream_duration_seconds{source}` (to the response head) and
//! `sluice_upstream_in_flight{source}` (until the response body ends).

use crate::metrics::UpstreamMetrics;
use crate::upstream::body::{Holder, InFlightGauge};
use crate::upstream::error::Failed;
use crate::upstream::Outbound;
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<UpstreamMetrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<UpstreamMetrics>) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> ObserveService<S> {
        ObserveService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Arc<UpstreamMetrics>,
}

impl<S, B> Service<Outbound> for ObserveService<S>
where
    S: Service<Outbound, Response = Response<B>, Error = Failed>,
    B: Holder,
{
    type Response = Response<B>;
    type Error = Failed;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        ResponseFuture {
            gauge: Some(InFlightGauge::new(self.metrics.in_flight.clone())),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            inner: self.inner.call(out),
        }
    }
}

pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        metrics: Arc<UpstreamMetrics>,
        gauge: Option<InFlightGauge>,
        started: Instant,
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, Failed>>,
    B: Holder,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        let took = this.started.elapsed().as_secs_f64();
        match &mut result {
            Ok(resp) => {
                this.metrics.observe(Some(resp.status().as_u16()), took);
                if let Some(g) = this.gauge.take() {
                    resp.body_mut().hold_in_flight(g);
                }
            }
            Err(_) => this.metrics.observe(None, took),
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Source};
    use crate::upstream::testing::{outbound, status_service, StubResult};
    use tower::ServiceExt;

    #[tokio::test]
    async fn counts_classes_and_in_flight_until_the_body_ends() {
        let metrics = Metrics::new();
        let m = Arc::new(metrics.upstream(Source::Live));
        let svc = ObserveLayer::new(m.clone()).layer(status_service(StubResult::Status(503)));
        let resp = svc.clone().oneshot(outbound()).await.unwrap();
        assert_eq!(m.in_flight.get(), 1, "the body still streams");
        drop(resp);
        assert_eq!(m.in_flight.get(), 0);
        let failing = ObserveLayer::new(m.clone()).layer(status_service(StubResult::Timeout));
        failing.oneshot(outbound()).await.unwrap_err();
        assert_eq!(m.in_flight.get(), 0);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"sluice_upstream_requests_total{class="5xx",source="live"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_upstream_requests_total{class="error",source="live"} 1"#),
            "{text}"
        );
    }
}
