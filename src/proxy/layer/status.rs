//! Status lookups: `GET {status_path_prefix}/requests/{id}` is answered
//! here, before routing — sluice's own answer, not proxied traffic, so it
//! is logged but not counted in `sluice_requests_total`.

use super::ReadyOr;
use crate::drain::id::RequestId;
use crate::drain::spooler::Spooler;
use crate::proxy::{Answer, ProxyError, Reply};
use crate::runtime::Shared;
use http::{Method, Request};
use hyper::body::Incoming;
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
fn status_id<'r>(prefix: &str, req: &'r Request<Incoming>) -> Option<&'r str> {
    if prefix.is_empty() || req.method() != Method::GET {
        return None;
    }
    req.uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("/requests/"))
}

impl<S> Service<Request<Incoming>> for StatusService<S>
where
    S: Service<Request<Incoming>, Response = Reply, Error = Infallible>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = ReadyOr<Either<S::Future>, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
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
            }));
        };
        let spooler = self.spooler.clone();
        let lookup: Lookup = Box::pin(async move {
            let result = match spooler.status(id).await {
                Some(view) => Ok(Answer::Status(view)),
                None => Err(ProxyError::NotFound),
            };
            Ok(Reply { route: None, result })
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
