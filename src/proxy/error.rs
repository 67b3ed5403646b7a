//! The one place where outcomes and failures become HTTP responses. Every
//! layer answers with an [`Answer`] or a small typed [`ProxyError`]; this
//! maps them to status, headers and the JSON bodies of SPEC §4, and names
//! the `decision` they are counted under.

use super::Answer;
use crate::drain::id::RequestId;
use crate::metrics::DecisionLabel;
use crate::server::{json_response, ResponseBody};
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::time::Duration;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static SLUICE_ID: HeaderName = HeaderName::from_static("sluice-id");

/// `RateLimit-Policy` and `RateLimit` values for one answer.
#[derive(Debug, Clone)]
pub struct RateLimitHeaders {
    pub policy: HeaderValue,
    pub state: HeaderValue,
}

impl RateLimitHeaders {
    pub fn apply(self, h: &mut http::HeaderMap) {
        h.insert(RATELIMIT_POLICY.clone(), self.policy);
        h.insert(RATELIMIT.clone(), self.state);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("rate limited on route {route}")]
    RateLimited {
        route: String,
        retry_after: Duration,
        headers: Option<RateLimitHeaders>,
    },
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
    /// The client's body did not arrive within `server.request_timeout`.
    #[error("the request body did not arrive within server.request_timeout")]
    RequestTimeout,
    /// A bug: something below panicked.
    #[error("internal error")]
    Internal,
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
            ProxyError::NotFound | ProxyError::BadRequest { .. } | ProxyError::RequestTimeout => {
                DecisionLabel::Rejected
            }
            ProxyError::Internal => DecisionLabel::InternalError,
        }
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let ms = |d: &Duration| d.as_millis() as u64;
        let (status, retry, body) = match &self {
            ProxyError::RateLimited { route, retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Some(*retry_after),
                serde_json::json!({"error": "rate_limited", "route": route, "retry_after_ms": ms(retry_after)}),
            ),
            ProxyError::UpstreamBusy { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "upstream_busy", "retry_after_ms": ms(retry_after)}),
            ),
            ProxyError::UpstreamUnavailable { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "upstream_unavailable", "retry_after_ms": ms(retry_after)}),
            ),
            ProxyError::SpoolFull { retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(*retry_after),
                serde_json::json!({"error": "spool_full", "retry_after_ms": ms(retry_after)}),
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
                serde_json::json!({"error": "upstream_timeout", "timeout_ms": ms(after)}),
            ),
            ProxyError::NotFound => (StatusCode::NOT_FOUND, None, serde_json::json!({"error": "not_found"})),
            ProxyError::BadRequest { detail } => (
                StatusCode::BAD_REQUEST,
                None,
                serde_json::json!({"error": "bad_request", "message": detail}),
            ),
            ProxyError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                None,
                serde_json::json!({"error": "request_timeout"}),
            ),
            ProxyError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                serde_json::json!({"error": "internal"}),
            ),
        };
        let mut resp = json_response(status, &body, retry);
        if let ProxyError::RateLimited {
            headers: Some(headers), ..
        } = self
        {
            headers.apply(resp.headers_mut());
        }
        resp
    }
}

/// Turns a request's outcome into its response and the decision it is
/// counted under. `status_prefix` is `server.status_path_prefix`, for the
/// 202's status URL.
pub fn render(result: Result<Answer, ProxyError>, status_prefix: &str) -> (Response<ResponseBody>, DecisionLabel) {
    match result {
        Ok(Answer::Forwarded(resp)) => (resp, DecisionLabel::Forwarded),
        Ok(Answer::Spooled(id, eta)) => (accepted(status_prefix, id, eta), DecisionLabel::Spooled),
        Ok(Answer::Status(view)) => (
            json_response(StatusCode::OK, &serde_json::to_value(view).unwrap_or_default(), None),
            DecisionLabel::Forwarded,
        ),
        Err(e) => {
            let decision = e.decision();
            (e.into_response(), decision)
        }
    }
}

/// The 202 for a spooled request: `Sluice-Id`, `Location`, the ETA as
/// `Retry-After` (whole seconds, rounded up; absent when there is none)
/// and a JSON body with `eta_ms` (`null` then).
fn accepted(status_prefix: &str, id: RequestId, eta: Option<Duration>) -> Response<ResponseBody> {
    let id_text = id.encode();
    let status_url = (!status_prefix.is_empty()).then(|| format!("{status_prefix}/requests/{id_text}"));
    let eta_ms = eta.map(|d| d.as_millis() as u64);
    let body = match &status_url {
        Some(url) => serde_json::json!({"id": id_text, "status_url": url, "eta_ms": eta_ms}),
        None => serde_json::json!({"id": id_text, "eta_ms": eta_ms}),
    };
    // From the milliseconds the body shows, so the two always agree.
    let retry_after = eta_ms.map(|ms| Duration::from_secs(ms.div_ceil(1000).max(1)));
    let mut resp = json_response(StatusCode::ACCEPTED, &body, retry_after);
    let h = resp.headers_mut();
    h.insert(
        SLUICE_ID.clone(),
        HeaderValue::from_str(&id_text).expect("ids are URL-safe"),
    );
    if let Some(url) = status_url {
        if let Ok(v) = HeaderValue::from_str(&url) {
            h.insert(http::header::LOCATION, v);
        }
    }
    resp
}

/// The error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// True when a body read failed because it went over its byte cap.
pub fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
