//! The backend's view of a request, whether it is forwarded now or
//! spooled for later: hop-by-hop headers out, client `Sluice-*` headers
//! out, `X-Forwarded-*` in, Host preserved, origin-form URI, HTTP/1.1.

use crate::proxy::headers::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::proxy::ConnInfo;
use http::header::{HeaderValue, HOST};
use http::{Request, Uri, Version};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct HygieneLayer {
    conn: Arc<ConnInfo>,
}

impl HygieneLayer {
    pub fn new(conn: Arc<ConnInfo>) -> Self {
        HygieneLayer { conn }
    }
}

impl<S> Layer<S> for HygieneLayer {
    type Service = HygieneService<S>;

    fn layer(&self, inner: S) -> HygieneService<S> {
        HygieneService {
            inner,
            conn: self.conn.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HygieneService<S> {
    inner: S,
    conn: Arc<ConnInfo>,
}

impl<S, B> Service<Request<B>> for HygieneService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.version == Version::HTTP_11 && headers::is_upgrade(&parts.headers);
        prepare_for_backend(&mut parts, &self.conn, upgrade);
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Rewrites a client request's head for the backend. With `upgrade`, the
/// upgrade handshake's `Connection`/`Upgrade` pair is kept.
pub fn prepare_for_backend(parts: &mut http::request::Parts, conn: &ConnInfo, upgrade: bool) {
    // The original Host (h1) or authority (h2), preserved for the backend.
    let host = match parts.headers.get(HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // Sluice-* headers are ours to set on replay; a client can't forge them.
    if parts.headers.keys().any(|k| k.as_str().starts_with("sluice-")) {
        for name in ["sluice-id", "sluice-attempt", "sluice-partition", "sluice-sequence"] {
            parts.headers.remove(name);
        }
    }
    headers::append_forwarded_for(&mut parts.headers, &conn.peer_header);
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme));
    if let Some(h) = host {
        parts.headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        // h2 carries the authority in the URI: the backend (HTTP/1.1)
        // needs it as Host. An h1 Host is already in place.
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, h);
        }
    }
    // Origin-form for the backend: the path and query only.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(uri_parts) {
            parts.uri = uri;
        }
    }
    // We speak HTTP/1.1 to the backend whatever the client spoke.
    parts.version = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_backend_sees_a_clean_head() {
        let conn = Arc::new(ConnInfo::new("10.1.2.3:4000".parse().unwrap(), "http"));
        let svc = HygieneLayer::new(conn).layer(tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req)
        }));
        let req = Request::builder()
            .uri("http://example.com/a?b=1")
            .version(Version::HTTP_10)
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("sluice-id", "forged")
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .unwrap();
        let seen = svc.oneshot(req).await.unwrap();
        assert_eq!(seen.uri(), "/a?b=1");
        assert_eq!(seen.version(), Version::HTTP_11);
        let h = seen.headers();
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert!(h.get("sluice-id").is_none());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(h["host"], "example.com");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
