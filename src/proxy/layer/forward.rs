//! The bottom of the data stack: hands the request to the live upstream
//! stack with its limits (what is left of `max_wait` for budget, of
//! `request_timeout` for the answer), and turns what comes back into an
//! [`Answer`] — the response streamed under the request's deadline, an
//! upgraded connection tunnelled both ways — or a [`ForwardError`] that
//! still carries the request when it never reached the backend.

use crate::proxy::error::{error_chain, is_body_too_large};
use crate::proxy::headers;
use crate::proxy::{Answer, Matched, ProxyError};
use crate::server::{ConnWatch, ResponseBody};
use crate::upstream::body::{RequestBody, UpstreamBody};
use crate::upstream::{Failed, LiveStack, Outbound, UpstreamError};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::Service;

/// A forward that produced no response: the error to answer with, and the
/// request when it certainly never reached the backend (it may be spooled).
pub struct ForwardError {
    pub error: ProxyError,
    pub unsent: Option<Request<RequestBody>>,
}

impl From<ProxyError> for ForwardError {
    fn from(error: ProxyError) -> Self {
        ForwardError { error, unsent: None }
    }
}

#[derive(Clone)]
pub struct Forward<S = LiveStack> {
    upstream: S,
    /// The client connection's watch: a response's budget slot goes to it,
    /// to be freed at the request's deadline even if the client never
    /// reads the body.
    watch: Arc<ConnWatch>,
}

impl<S> Forward<S> {
    pub fn new(upstream: S) -> Self {
        Self::watched(upstream, Arc::default())
    }

    pub fn watched(upstream: S, watch: Arc<ConnWatch>) -> Self {
        Forward { upstream, watch }
    }
}

impl<S> Service<Request<RequestBody>> for Forward<S>
where
    S: Service<Outbound, Response = Response<UpstreamBody>, Error = Failed>,
{
    type Response = Answer;
    type Error = ForwardError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        self.upstream
            .poll_ready(cx)
            .map_err(|f| ForwardError::from(ProxyError::from_upstream(f.error, 0)))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let Some(m) = req.extensions().get::<Matched>() else {
            return ResponseFuture::Refused {
                error: Some(ProxyError::Internal.into()),
            };
        };
        let cfg = &m.runtime.config;
        let max_wait = m.max_wait();
        let deadline = m.start + cfg.server.request_timeout;
        let timeout = cfg
            .upstream
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let wait_until = Some(m.start + max_wait);
        let max_body = cfg.server.max_body;
        // The hygiene layer kept the upgrade headers only for a real
        // upgrade handshake.
        let client_upgrade = headers::is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let out = Outbound {
            request: req,
            wait_until,
            timeout,
            retry: false,
        };
        ResponseFuture::Sending {
            inner: self.upstream.call(out),
            client_upgrade,
            deadline,
            max_body,
            watch: self.watch.clone(),
        }
    }
}

pin_project! {
    #[project = Proj]
    pub enum ResponseFuture<F> {
        Sending {
            #[pin] inner: F,
            client_upgrade: Option<OnUpgrade>,
            deadline: Instant,
            max_body: u64,
            watch: Arc<ConnWatch>,
        },
        Refused { error: Option<ForwardError> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<UpstreamBody>, Failed>>,
{
    type Output = Result<Answer, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Refused { error } => Poll::Ready(Err(error.take().expect("polled after completion"))),
            Proj::Sending {
                inner,
                client_upgrade,
                deadline,
                max_body,
                watch,
            } => match std::task::ready!(inner.poll(cx)) {
                Ok(resp) => Poll::Ready(Ok(Answer::Forwarded(respond(
                    resp,
                    client_upgrade.take(),
                    *deadline,
                    watch,
                )))),
                Err(Failed { error, unsent }) => Poll::Ready(Err(ForwardError {
                    error: ProxyError::from_upstream(error, *max_body),
                    unsent,
                })),
            },
        }
    }
}

/// The backend's response as the client gets it.
fn respond(
    mut resp: Response<UpstreamBody>,
    client_upgrade: Option<OnUpgrade>,
    deadline: Instant,
    watch: &Arc<ConnWatch>,
) -> Response<ResponseBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let tunnel = tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, backend)) => {
                        let mut client = TokioIo::new(client);
                        let mut backend = TokioIo::new(backend);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                            tracing::debug!(error = %e, "upgraded tunnel closed with an error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            // The connection keeps the tunnel (its slot, its idle timer,
            // shutdown) once hyper hands it over.
            watch.adopt_tunnel(tunnel);
            let (mut parts, mut body) = resp.into_parts();
            // The tunnel is long-lived: it stops counting against the
            // budget once established.
            body.release_holdings();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ResponseBody::empty());
        }
    }
    let (mut parts, mut body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    // An HTTP/1.0 backend must not downgrade the client's connection.
    parts.version = Version::HTTP_11;
    // A body with nothing left to stream already gave its slot back.
    let ticket = (!http_body::Body::is_end_stream(&body)).then(|| watch.hold_until(deadline, body.take_slot()));
    Response::from_parts(parts, ResponseBody::upstream(body, deadline, ticket))
}

impl ProxyError {
    /// What the client is told when the live upstream stack failed.
    /// `max_body` names the limit when the client's own body ran over it.
    pub fn from_upstream(error: UpstreamError, max_body: u64) -> ProxyError {
        match error {
            UpstreamError::Busy { retry_after } => ProxyError::UpstreamBusy { retry_after },
            UpstreamError::Open { retry_after } => ProxyError::UpstreamUnavailable { retry_after },
            UpstreamError::Timeout { after } => ProxyError::UpstreamTimeout { after },
            e @ UpstreamError::Connect { .. } => ProxyError::Unreachable {
                detail: error_chain(&e),
            },
            UpstreamError::Exchange(e) => {
                if is_body_too_large(&e) {
                    return ProxyError::TooLarge { limit: max_body };
                }
                let detail = error_chain(&e);
                if e.is_user() {
                    // The client broke off its upload: its fault, not the backend's.
                    ProxyError::BadRequest { detail }
                } else {
                    ProxyError::UpstreamFailed { detail }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::fixture;
    use std::time::Duration;
    use tower::ServiceExt;

    type Upstream = std::future::Ready<Result<Response<UpstreamBody>, Failed>>;

    #[tokio::test]
    async fn upstream_failures_map_to_client_errors_and_an_unsent_request_comes_back() {
        let f = fixture("").await;
        let busy = Forward::new(tower::service_fn(|out: Outbound| -> Upstream {
            std::future::ready(Err(Failed::unsent(
                UpstreamError::Busy {
                    retry_after: Duration::from_secs(2),
                },
                out.request,
            )))
        }));
        let Err(e) = busy.oneshot(f.request("POST", "/", b"x")).await else {
            panic!("busy is an error");
        };
        assert!(matches!(e.error, ProxyError::UpstreamBusy { retry_after } if retry_after == Duration::from_secs(2)));
        assert!(e.unsent.is_some(), "never sent: may be spooled");
        let timed_out = Forward::new(tower::service_fn(|out: Outbound| -> Upstream {
            std::future::ready(Err(Failed::sent(UpstreamError::Timeout { after: out.timeout })))
        }));
        let Err(e) = timed_out.oneshot(f.request("POST", "/", b"x")).await else {
            panic!("a timeout is an error");
        };
        assert!(matches!(e.error, ProxyError::UpstreamTimeout { .. }));
        assert!(e.unsent.is_none(), "may have reached the backend: never spooled");
    }

    #[tokio::test]
    async fn the_exchange_gets_the_requests_limits() {
        let f = fixture("[server]\nrequest_timeout = \"3s\"\n").await;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let svc = Forward::new(tower::service_fn(move |out: Outbound| -> Upstream {
            *seen2.lock().unwrap() = Some((out.timeout, out.wait_until));
            std::future::ready(Err(Failed::sent(UpstreamError::Timeout { after: out.timeout })))
        }));
        let _ = svc.oneshot(f.request("GET", "/", b"")).await;
        let (timeout, wait_until) = seen.lock().unwrap().unwrap();
        assert!(
            timeout <= Duration::from_secs(3),
            "the shorter of request_timeout and upstream.timeout"
        );
        assert!(
            wait_until.is_some(),
            "a live request waits for budget only until its max_wait"
        );
    }
}
