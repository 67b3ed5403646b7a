//! Why an exchange with the backend produced no response, and whether the
//! request may still be used (spooled, or tried again).

use super::body::RequestBody;
use http::Request;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The budget had no room before the request's wait ran out.
    #[error("upstream budget spent (retry after {retry_after:?})")]
    Busy { retry_after: Duration },
    /// The circuit breaker is open.
    #[error("upstream unavailable: circuit open (retry after {retry_after:?})")]
    Open { retry_after: Duration },
    /// Nothing was sent: the backend can't have acted on the request.
    #[error("connecting to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    /// The request may have reached the backend.
    #[error("exchanging with the backend")]
    Exchange(#[source] hyper::Error),
    /// No response head within the exchange's timeout.
    #[error("the backend did not answer within {after:?}")]
    Timeout { after: Duration },
}

impl UpstreamError {
    /// The backend's doing, as far as the circuit breaker and the adaptive
    /// limit are concerned: a connection refused or broken, or a timeout.
    /// Not: our own limits, or a client that broke off its upload.
    /// What the status timeline calls this failure.
    pub fn attempt_error(&self) -> crate::drain::outcomes::AttemptError {
        use crate::drain::outcomes::AttemptError;
        match self {
            UpstreamError::Connect { .. } => AttemptError::Connect,
            UpstreamError::Timeout { .. } => AttemptError::Timeout,
            UpstreamError::Exchange(_) => AttemptError::Exchange,
            _ => AttemptError::Other,
        }
    }

    pub fn is_backend_failure(&self) -> bool {
        match self {
            UpstreamError::Busy { .. } | UpstreamError::Open { .. } => false,
            UpstreamError::Exchange(e) => !e.is_user(),
            UpstreamError::Connect { .. } | UpstreamError::Timeout { .. } => true,
        }
    }

    /// The client's own body failed (it broke off its upload).
    pub fn is_client_body(&self) -> bool {
        matches!(self, UpstreamError::Exchange(e) if e.is_user())
    }
}

/// A failed exchange: the error, and the request when it certainly never
/// reached the backend (so the caller may spool it instead).
pub struct Failed {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

impl Failed {
    pub fn unsent(error: UpstreamError, request: Request<RequestBody>) -> Self {
        Failed {
            error,
            unsent: Some(request),
        }
    }

    pub fn sent(error: UpstreamError) -> Self {
        Failed { error, unsent: None }
    }
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failed")
            .field("error", &self.error)
            .field("unsent", &self.unsent.is_some())
            .finish()
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}
