//! The one place where failures become HTTP responses. Every other module
//! returns small typed errors; this maps them to status, headers and the
//! JSON bodies of SPEC §4.

use super::body::ResponseBody;
use crate::metrics::DecisionLabel;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("rate limited on route {route}")]
    RateLimited { route: String, retry_after: Duration },
    #[error("upstream budget spent")]
    UpstreamBusy { retry_after: Duration },
    #[error("upstream unavailable (circuit open)")]
    UpstreamUnavailable { retry_after: Duration },
    #[error("request body over {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("spool full or failing")]
    SpoolFull { retry_after: Duration },
    #[error("cannot connect to the backend: {detail}")]
    Unreachable { detail: String },
    #[error("the backend failed: {detail}")]
    UpstreamFailed { detail: String },
    #[error("the backend did not answer within {after:?}")]
    UpstreamTimeout { after: Duration },
    #[error("not found")]
    NotFound,
    #[error("could not read the request body: {detail}")]
    BadRequest { detail: String },
}

/// Whole seconds for Retry-After, at least 1 (SPEC §4).
pub fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl ProxyError {
    pub fn decision(&self) -> DecisionLabel {
        match self {
            ProxyError::RateLimited { .. } => DecisionLabel::Rejected,
            ProxyError::UpstreamBusy { .. } | ProxyError::UpstreamUnavailable { .. } => DecisionLabel::Shed,
            ProxyError::TooLarge { .. } => DecisionLabel::TooLarge,
            ProxyError::SpoolFull { .. } => DecisionLabel::SpoolFull,
            ProxyError::Unreachable { .. } | ProxyError::UpstreamFailed { .. } | ProxyError::UpstreamTimeout { .. } => {
                DecisionLabel::UpstreamError
            }
            ProxyError::NotFound | ProxyError::BadRequest { .. } => DecisionLabel::Rejected,
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, retry, body) = match &self {
            ProxyError::RateLimited { route, retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(*retry_after),
                serde_json::json!({"error": "rate_limited", "route": route, "retry_after_ms": retry_after.as_millis() as u64}),
            ),
            ProxyError::UpstreamBusy { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "upstream_busy", "retry_after_ms": retry_after.as_millis() as u64}),
            ),
            ProxyError::UpstreamUnavailable { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "upstream_unavailable", "retry_after_ms": retry_after.as_millis() as u64}),
            ),
            ProxyError::SpoolFull { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "spool_full", "retry_after_ms": retry_after.as_millis() as u64}),
            ),
            ProxyError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                serde_json::json!({"error": "too_large", "limit_bytes": limit}),
            ),
            ProxyError::Unreachable { detail } => (
                StatusCode::BAD_GATEWAY,
                None,
                serde_json::json!({"error": "upstream_unreachable", "message": detail}),
            ),
            ProxyError::UpstreamFailed { detail } => (
                StatusCode::BAD_GATEWAY,
                None,
                serde_json::json!({"error": "upstream_failed", "message": detail}),
            ),
            ProxyError::UpstreamTimeout { after } => (
                StatusCode::GATEWAY_TIMEOUT,
                None,
                serde_json::json!({"error": "upstream_timeout", "timeout_ms": after.as_millis() as u64}),
            ),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, None, serde_json::json!({"error": "not_found"})),
            ProxyError::BadRequest { detail } => (
                StatusCode::BAD_REQUEST,
                None,
                serde_json::json!({"error": "bad_request", "message": detail}),
            ),
        };
        json_response(status, &body, retry)
    }
}

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
