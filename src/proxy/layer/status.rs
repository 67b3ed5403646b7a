//! Status lookups: `GET {status_path_prefix}/requests/{id}` is answered
//! here, before routing — sluice's own answer, not proxied traffic, so it
//! is logged but not counted in `sluice_requests_total`.

use super::ReadyOr;
use crate::drain::id::RequestId;
use crate::drain::spooler::Spooler;
use crate::proxy::{Answer, ProxyError, Reply};
use crate::runtime::Shared;
use http::{Method, Request};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct StatusLayer {
    spooler: Arc<Spooler>,
    shared: Arc<Shared>,
}

impl StatusLayer {
    pub fn new(spooler: Arc<Spooler>, shared: Arc<Shared>) -> Self {
        StatusLayer { spooler, shared }
    }
}

impl<S> Layer<S> for StatusLayer {
    type Service = StatusService<S>;

    fn layer(&self, inner: S) -> StatusService<S> {
        StatusService {
            inner,
            spooler: self.spooler.clone(),
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct StatusService<S> {
    inner: S,
    spooler: Arc<Spooler>,
    shared: Arc<Shared>,
}

type Lookup = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

/// The id of a `GET {prefix}/requests/{id}`, if this is one.
fn status_id<'r, B>(prefix: &str, req: &'r Request<B>) -> Option<&'r str> {
    if prefix.is_empty() || req.method() != Method::GET {
        return None;
    }
    req.uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("/requests/"))
}

impl<S, B> Service<Request<B>> for StatusService<S>
where
    S: Service<Request<B>, Response = Reply, Error = Infallible>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = ReadyOr<Either<S::Future>, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let id = {
            let rt = self.shared.runtime.load();
            status_id(&rt.config.server.status_path_prefix, &req).map(RequestId::parse)
        };
        let Some(id) = id else {
            return ReadyOr::Inner {
                inner: Either::Inner {
                    inner: self.inner.call(req),
                },
            };
        };
        let Some(id) = id else {
            return ReadyOr::ready(Ok(Reply {
                route: None,
                result: Err(ProxyError::NotFound),
                applied: None,
            }));
        };
        let spooler = self.spooler.clone();
        let lookup: Lookup = Box::pin(async move {
            let result = match spooler.status(id).await {
                Some(view) => Ok(Answer::Status(view)),
                None => Err(ProxyError::NotFound),
            };
            Ok(Reply {
                route: None,
                result,
                applied: None,
            })
        });
        ReadyOr::Inner {
            inner: Either::Lookup { lookup },
        }
    }
}

pin_project_lite::pin_project! {
    /// The lookup, or the rest of the stack.
    #[project = EitherProj]
    pub enum Either<F> {
        Lookup { lookup: Lookup },
        Inner { #[pin] inner: F },
    }
}

impl<F: Future<Output = Result<Reply, Infallible>>> Future for Either<F> {
    type Output = Result<Reply, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProj::Lookup { lookup } => lookup.as_mut().poll(cx),
            EitherProj::Inner { inner } => inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::fixture;
    use tower::ServiceExt;

    #[tokio::test]
    async fn status_urls_are_answered_here_and_not_counted_everything_else_passes() {
        let f = fixture("").await;
        let svc =
            StatusLayer::new(f.shared.spooler.clone(), f.shared.clone()).layer(tower::service_fn(|_: Request<()>| {
                std::future::ready(Ok::<_, Infallible>(Reply {
                    route: Some(f_stats()),
                    result: Err(ProxyError::Internal),
                    applied: None,
                }))
            }));
        let bogus = Request::get("/_sluice/requests/not-an-id").body(()).unwrap();
        let reply = svc.clone().oneshot(bogus).await.unwrap();
        assert!(reply.route.is_none(), "sluice's own answer is not counted");
        assert!(matches!(reply.result, Err(ProxyError::NotFound)));
        let post = Request::post("/_sluice/requests/x").body(()).unwrap();
        let reply = svc.oneshot(post).await.unwrap();
        assert!(reply.route.is_some(), "only a GET is a status lookup");
    }

    fn f_stats() -> Arc<crate::runtime::RouteStats> {
        let metrics = crate::metrics::Metrics::new();
        let config = crate::config::Config::parse(
            "t.toml",
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            &Default::default(),
        )
        .unwrap();
        crate::runtime::Runtime::build(Arc::new(config), &metrics, None, None).unmatched
    }
}
