//! Route match: the first route whose `match` fits, and everything the
//! layers below need to know about it, into the request's extensions as a
//! [`Matched`] — including one config snapshot, so a reload mid-request
//! never mixes two configs. The outcome from below comes back as a
//! [`Reply`] counted under the route (or `unmatched`).

use crate::admission::{key_for, RequestFacts};
use crate::proxy::{headers, path, prefer};
use crate::proxy::{Answer, ConnInfo, Matched, ProxyError, Reply};
use crate::runtime::{RouteStats, Shared};
use http::header::HOST;
use http::Request;
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct RouteMatchLayer {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl RouteMatchLayer {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnInfo>) -> Self {
        RouteMatchLayer { shared, conn }
    }
}

impl<S> Layer<S> for RouteMatchLayer {
    type Service = RouteMatchService<S>;

    fn layer(&self, inner: S) -> RouteMatchService<S> {
        RouteMatchService {
            inner,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RouteMatchService<S> {
    inner: S,
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

/// Lower-case host without port, from Host or the h2 authority.
fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        None => req.uri().authority()?.as_str(),
    };
    // Strip a port, minding IPv6 literals ("[::1]:8080").
    let host = match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

impl<S, B> Service<Request<B>> for RouteMatchService<S>
where
    S: Service<Request<B>, Response = Answer, Error = ProxyError>,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below never apply backpressure through readiness.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let runtime = self.shared.runtime.load_full();
        let cfg = &runtime.config;
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused.
        if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(HOST) {
            return ResponseFuture::refused(runtime.unmatched.clone(), "HTTP/1.1 request without Host".into());
        }
        // One spelling per path before anything looks at it: matched,
        // forwarded and spooled alike.
        match path::normalize(req.uri().path(), &cfg.server.path) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(clean)) => {
                if let Err(detail) = set_path(&mut req, &clean) {
                    return ResponseFuture::refused(runtime.unmatched.clone(), detail);
                }
            }
            Err(e) => return ResponseFuture::refused(runtime.unmatched.clone(), e.to_string()),
        }
        let client_ip = headers::client_ip(self.conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies);
        let host = host_of(&req);
        let facts = RequestFacts {
            method: req.method(),
            host: host.as_deref(),
            path: req.uri().path(),
            headers: req.headers(),
            client_ip,
        };
        let found = runtime.table.find_indexed(&facts);
        let route_index = found.map(|(i, _)| i);
        let partition = match found {
            Some((_, r)) if r.can_spool(facts.method) => {
                let mut buf = String::new();
                let key = match r.config.partition_key.as_ref() {
                    Some(src) => Some(key_for(src, &facts, &mut buf)),
                    // Without a partition key, a request with an
                    // Idempotency-Key goes where that key hashes: a repeat
                    // lands in the same partition on any replica, so a
                    // JetStream publish retry is de-duplicated by its
                    // message id (which only works within one stream).
                    None => facts.headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
                };
                Some(self.shared.spooler.partition_for(key.map(str::as_bytes)))
            }
            _ => None,
        };
        let behind_backlog = match (found, partition) {
            (Some((_, r)), Some(p)) => r.config.ordered && self.shared.spooler.has_backlog(p),
            _ => false,
        };
        drop(host);
        // The client's choice between waiting and a 202, on a request
        // that may be spooled.
        let applied = match (found, partition) {
            (Some((_, r)), Some(_)) if req.headers().contains_key(&prefer::PREFER) => {
                prefer::decide(prefer::parse(req.headers()), r.config.prefer_wait_max)
            }
            _ => None,
        };
        if let Some(a) = applied {
            prefer::strip(req.headers_mut(), a);
        }
        let matched = Matched {
            route_index,
            client_ip,
            partition,
            behind_backlog,
            spool_now: applied == Some(prefer::Applied::RespondAsync),
            start,
            prefer_wait: match applied {
                Some(prefer::Applied::Wait(d)) => Some(d),
                _ => None,
            },
            runtime,
        };
        let stats = matched.stats().clone();
        req.extensions_mut().insert(matched);
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            refused: None,
            stats: Some(stats),
            applied,
        }
    }
}

/// Replaces the path of the request target, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), String> {
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("normalised path: {e}"))?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|e| format!("normalised path: {e}"))?;
    Ok(())
}

pin_project! {
    pub struct ResponseFuture<F> {
        // `None` when the request was refused before routing.
        #[pin]
        inner: Option<F>,
        refused: Option<ProxyError>,
        stats: Option<Arc<RouteStats>>,
        applied: Option<prefer::Applied>,
    }
}

impl<F> ResponseFuture<F> {
    /// A path that can't be normalised: 400, counted as unmatched.
    fn refused(unmatched: Arc<RouteStats>, detail: String) -> Self {
        ResponseFuture {
            inner: None,
            refused: Some(ProxyError::BadRequest { detail }),
            stats: Some(unmatched),
            applied: None,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Answer, ProxyError>>,
{
    type Output = Result<Reply, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.inner.as_pin_mut() {
            Some(inner) => std::task::ready!(inner.poll(cx)),
            None => Err(this.refused.take().expect("a refused request has its error")),
        };
        Poll::Ready(Ok(Reply {
            route: this.stats.take(),
            result,
            applied: this.applied.take(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layer::testing::fixture;
    use std::sync::Mutex;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_route_and_its_spool_partition_go_into_the_extensions() {
        let f = fixture(
            r#"
[[route]]
name = "orders"
match = { path_prefix = "/orders", methods = ["POST"] }
rate = "10/s"
on_limit = "spool"
"#,
        )
        .await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let conn = Arc::new(ConnInfo::new("127.0.0.1:5000".parse().unwrap(), "http"));
        let svc = RouteMatchLayer::new(f.shared.clone(), conn).layer(tower::service_fn(move |req: Request<()>| {
            seen2.lock().unwrap().push(req.extensions().get::<Matched>().cloned());
            std::future::ready(Err::<Answer, _>(ProxyError::NotFound))
        }));
        let post = Request::post("/orders/1").header("host", "a.test").body(()).unwrap();
        let reply = svc.clone().oneshot(post).await.unwrap();
        assert_eq!(&*reply.route.unwrap().name, "orders");
        assert!(
            matches!(reply.result, Err(ProxyError::NotFound)),
            "the inner result passes up unchanged"
        );
        let get = Request::get("/other").header("host", "a.test").body(()).unwrap();
        let reply = svc.oneshot(get).await.unwrap();
        assert_eq!(&*reply.route.unwrap().name, "unmatched");
        let seen = seen.lock().unwrap();
        let (post, get) = (seen[0].as_ref().unwrap(), seen[1].as_ref().unwrap());
        assert_eq!(post.route_index, Some(0));
        assert!(post.partition.is_some(), "a POST on a spool route may be spooled");
        assert_eq!(get.route_index, None);
        assert!(get.partition.is_none());
    }
}
