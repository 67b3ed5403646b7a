//! Optional export of replay spans (`[tracing] otlp_endpoint`): each
//! delivery attempt of a request that came with a `traceparent` is a
//! client span, child of the client's span, exported as OTLP/HTTP JSON by
//! opentelemetry's batch processor. The span's id is the parent id of the
//! replayed `traceparent`, so the backend's own spans hang under it.
//!
//! The SDK's batch processor exports from a thread of its own with a
//! blocking executor; [`SpawningClient`] hands each export to the main
//! tokio runtime (where hyper's connection tasks can run) and waits for
//! the answer, so exporting never needs a runtime on the exporting thread.

use crate::trace::TraceParent;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long an export may take, and how often the batch goes out.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Spans held for export at most; past it new ones are dropped (counted by
/// the SDK), never waited for.
const QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("tracing.otlp_endpoint {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// An HTTP client for the exporter that runs each request on `runtime`.
struct SpawningClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for SpawningClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawningClient")
    }
}

type HttpResult = Result<http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for SpawningClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send + 'b>>
    where
        'a: 'b,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let req = http::Request::from_parts(parts, Full::new(body));
            let resp = tokio::time::timeout(EXPORT_TIMEOUT, client.request(req))
                .await
                .map_err(|_| "OTLP export timed out")??;
            let (parts, body) = resp.into_parts();
            // Collectors answer with a small status message; bounded.
            let body = http_body_util::Limited::new(body, 1 << 20).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as opentelemetry_http::HttpError)? })
    }
}

/// Where replay spans go.
pub struct ReplaySpans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// One attempt's span, open while the attempt runs. Dropped without
/// [`end`](AttemptSpan::end) (the drainer stopped mid-attempt), it is
/// ended as `cancelled`: the request may have reached the backend.
pub struct AttemptSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: TraceParent,
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.set_attribute(KeyValue::new("error.type", "cancelled"));
            span.set_status(opentelemetry::trace::Status::error("cancelled"));
            span.end();
        }
    }
}

impl AttemptSpan {
    /// The `traceparent` to send: the client's trace, this span as parent.
    pub fn traceparent(&self) -> TraceParent {
        self.traceparent
    }

    /// Ends the span with what the backend answered (or why it didn't).
    pub fn end(mut self, status: Option<u16>, error: Option<&'static str>) {
        let Some(mut span) = self.span.take() else { return };
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            if s >= 500 {
                span.set_status(opentelemetry::trace::Status::error("server error"));
            }
        }
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("error.type", e));
            span.set_status(opentelemetry::trace::Status::error(e));
        }
        span.end();
    }
}

/// `endpoint`, with `/v1/traces` when it names no path (a collector's base
/// URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` does).
pub fn traces_url(endpoint: &http::Uri) -> String {
    let text = endpoint.to_string();
    if matches!(endpoint.path(), "" | "/") {
        format!("{}/v1/traces", text.trim_end_matches('/'))
    } else {
        text
    }
}

impl ReplaySpans {
    /// Starts the exporter; must run inside the main tokio runtime.
    pub fn start(endpoint: &http::Uri) -> Result<ReplaySpans, OtlpError> {
        let url = traces_url(endpoint);
        let client = SpawningClient {
            runtime: tokio::runtime::Handle::current(),
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| OtlpError::Exporter {
                endpoint: url.clone(),
                reason: e.to_string(),
            })?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .with_max_queue_size(QUEUE)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("sluice")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sluice");
        tracing::info!(endpoint = %url, "exporting replay spans (OTLP/HTTP JSON)");
        Ok(ReplaySpans { provider, tracer })
    }

    /// Opens the span of one attempt at delivering request `id`, a child of
    /// the client's span.
    pub fn attempt(&self, client: &TraceParent, id: &str, attempt: u32) -> AttemptSpan {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let parent = SpanContext::new(
            TraceId::from_bytes(client.trace_id),
            SpanId::from_bytes(client.parent_id),
            TraceFlags::new(client.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        let span = self
            .tracer
            .span_builder("sluice replay")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("sluice.id", id.to_string()),
                KeyValue::new("sluice.attempt", i64::from(attempt)),
            ])
            .start_with_context(&self.tracer, &cx);
        let ours = span.span_context();
        let traceparent = TraceParent {
            parent_id: ours.span_id().to_bytes(),
            ..*client
        };
        AttemptSpan {
            span: Some(span),
            traceparent,
        }
    }

    /// Exports what is queued and stops (blocking: call off the runtime).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flushing replay spans at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_a_full_one_is_kept() {
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(traces_url(&u("http://otel:4318")), "http://otel:4318/v1/traces");
        assert_eq!(traces_url(&u("http://otel:4318/")), "http://otel:4318/v1/traces");
        assert_eq!(
            traces_url(&u("http://otel:4318/custom/traces")),
            "http://otel:4318/custom/traces"
        );
    }
}
