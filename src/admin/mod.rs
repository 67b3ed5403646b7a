//! The admin port: `/healthz`, `/readyz`, `/metrics` (open) and
//! `/admin/*` (bearer token, or loopback only when no token is set).

use crate::drain::dlq;
use crate::drain::spooler::Spooler;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::server::{json_response, ResponseBody};
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Up once the listeners (and spool) are ready; down again as soon as
    /// shutdown begins, so load balancers stop sending first.
    pub ready: AtomicBool,
    /// `None`: no token configured, `/admin/*` answers loopback only.
    pub token: Option<String>,
    pub reloader: Arc<Reloader>,
    pub spooler: Arc<Spooler>,
}

/// The admin port's service for one connection. Not a layered stack: a
/// handful of low-traffic endpoints, answered by one function.
#[derive(Clone)]
pub struct AdminService {
    state: Arc<AdminState>,
    peer: SocketAddr,
}

impl AdminService {
    pub fn new(state: Arc<AdminState>, peer: SocketAddr) -> Self {
        AdminService { state, peer }
    }
}

impl tower::Service<Request<Incoming>> for AdminService {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        Box::pin(handle(self.state.clone(), self.peer, req).map_ok())
    }
}

trait MapOk: Future + Sized {
    fn map_ok(self) -> impl Future<Output = Result<Self::Output, std::convert::Infallible>> {
        async move { Ok(self.await) }
    }
}

impl<F: Future> MapOk for F {}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Compares without an early exit so the time taken says nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the caller may use `/admin/*`, else the refusal.
fn refuse(token: Option<&str>, peer: SocketAddr, headers: &http::HeaderMap) -> Option<Response<ResponseBody>> {
    match token {
        Some(token) => {
            let given = headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
                _ => {
                    let mut r = json_response(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"error": "unauthorized", "message": "send Authorization: Bearer TOKEN"}),
                        None,
                    );
                    r.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"sluice-admin\""),
                    );
                    Some(r)
                }
            }
        }
        None if peer.ip().is_loopback() => None,
        None => Some(json_response(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "forbidden", "message": "no admin token is configured, so /admin/* answers loopback peers only"}),
            None,
        )),
    }
}

async fn handle(state: Arc<AdminState>, peer: SocketAddr, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if state.ready.load(Ordering::Acquire) && state.spooler.is_available() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            // The JetStream spool's series are kept by its poller: a
            // scrape doesn't make NATS round trips.
            if let Some(local) = state.spooler.local() {
                state.metrics.set_spool_status(&local.spool.status());
            }
            let mut r = Response::new(ResponseBody::full(state.metrics.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (_, p) if p.starts_with("/admin/") => {
            if let Some(refusal) = refuse(state.token.as_deref(), peer, req.headers()) {
                return refusal;
            }
            admin_route(&state, req).await
        }
        _ => json_response(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found"}), None),
    }
}

async fn admin_route(state: &AdminState, req: Request<Incoming>) -> Response<ResponseBody> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/reload") => match state.reloader.reload() {
            Ok(outcome) => json_response(
                StatusCode::OK,
                &serde_json::json!({"applied": true, "needs_restart": outcome.needs_restart}),
                None,
            ),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"applied": false, "error": e.to_string(), "key": e.key()}),
                None,
            ),
        },
        (_, "/admin/reload") => method_not_allowed("POST"),
        (&Method::GET, "/admin/spool") => {
            let status = match state.spooler.spool_status().await {
                Ok(s) => s,
                Err(e) => return store_error(e),
            };
            let mut v = serde_json::to_value(&status).unwrap_or_default();
            v["paused"] = serde_json::Value::Bool(state.spooler.paused());
            json_response(StatusCode::OK, &v, None)
        }
        (&Method::POST, p @ ("/admin/drain/pause" | "/admin/drain/resume")) => {
            let paused = p.ends_with("pause");
            if let Err(e) = state.spooler.set_paused(paused).await {
                return store_error(e);
            }
            tracing::info!(
                paused,
                "replay {} by the admin API",
                if paused { "paused" } else { "resumed" }
            );
            json_response(StatusCode::OK, &serde_json::json!({ "paused": paused }), None)
        }
        (&Method::GET, "/admin/requests") => {
            let params = query_params(req.uri().query());
            let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let (Some(key), Some(route)) = (get("idempotency_key"), get("route")) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "give idempotency_key and route (a key is unique per route)"}),
                    None,
                );
            };
            let found = match state.spooler.id_for_key(route, key).await {
                Some(id) => state.spooler.status(id).await,
                None => None,
            };
            match found {
                Some(view) => json_response(StatusCode::OK, &serde_json::to_value(view).unwrap_or_default(), None),
                None => json_response(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found"}), None),
            }
        }
        (&Method::GET, "/admin/dlq") => {
            let (from, limit) = page_params(req.uri().query());
            let listed = match &*state.spooler {
                Spooler::Local(l) => dlq::list(&l.dead_letters(), from, limit).await,
                Spooler::JetStream(j) => dlq::list(&**j, from, limit).await,
            };
            match listed {
                Ok((items, next)) => json_response(
                    StatusCode::OK,
                    &serde_json::json!({"dead_letters": items, "next_from": next}),
                    None,
                ),
                Err(e) => dlq_error(e),
            }
        }
        (&Method::POST, path @ ("/admin/dlq/replay" | "/admin/dlq/purge")) => {
            let replay = path.ends_with("replay");
            let selection = match read_selection(req).await {
                Ok(s) => s,
                Err(r) => return r,
            };
            // In a task of its own: a client that goes away must not cancel
            // a replay between a letter's re-append and its purge (which
            // would leave it in the DLQ to be enqueued again later).
            let spooler = state.spooler.clone();
            let work = tokio::spawn(async move {
                let lock = spooler.dlq_lock();
                if replay {
                    let done = match &*spooler {
                        Spooler::Local(l) => dlq::replay(&l.dead_letters(), lock, &selection).await?,
                        Spooler::JetStream(j) => dlq::replay(&**j, lock, &selection).await?,
                    };
                    let replayed: Vec<_> = done
                        .pairs
                        .into_iter()
                        .map(|(old, new)| serde_json::json!({"id": old, "replayed_as": new}))
                        .collect();
                    Ok(serde_json::json!({ "replayed": replayed, "next_from": done.next_from, "before": done.before }))
                } else {
                    let n = match &*spooler {
                        Spooler::Local(l) => dlq::purge(&l.dead_letters(), lock, &selection).await?,
                        Spooler::JetStream(j) => dlq::purge(&**j, lock, &selection).await?,
                    };
                    Ok(serde_json::json!({ "purged": n }))
                }
            });
            match work.await {
                Ok(Ok(body)) => json_response(StatusCode::OK, &body, None),
                Ok(Err(e)) => dlq_error(e),
                Err(e) => {
                    tracing::error!(error = %e, "dead-letter operation panicked");
                    json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"error": "internal"}),
                        None,
                    )
                }
            }
        }
        (_, "/admin/drain/pause" | "/admin/drain/resume" | "/admin/dlq/replay" | "/admin/dlq/purge") => {
            method_not_allowed("POST")
        }
        _ => json_response(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found"}), None),
    }
}

/// A query string's `name=value` pairs, percent-decoded (`+` is kept as
/// it is: keys may contain it).
fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b[i],
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                (c, _, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// `?from=N&limit=M` for paged lists: limit defaults to 100, at most 1000.
fn page_params(query: Option<&str>) -> (u64, usize) {
    let mut from = 0;
    let mut limit = 100;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("from", v)) => from = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(100),
            _ => {}
        }
    }
    (from, limit.clamp(1, 1000))
}

async fn read_selection(req: Request<Incoming>) -> Result<dlq::Selection, Response<ResponseBody>> {
    use http_body_util::BodyExt;
    let bad = |msg: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad_request", "message": msg}),
            None,
        )
    };
    let body = http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| bad(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "expected {{\"all\": true}}, {{\"ids\": [\"...\"]}} or filters (route, reason, since, until) with from and limit: {e}"
        ))
    })
}

fn dlq_error(e: dlq::DlqError) -> Response<ResponseBody> {
    let status = match &e {
        dlq::DlqError::Spool(s) if s.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        dlq::DlqError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
        dlq::DlqError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    json_response(status, &serde_json::json!({"error": e.to_string()}), None)
}

/// The JetStream spool didn't answer: 503, the operator may retry.
fn store_error(e: crate::jetstream::JetStreamError) -> Response<ResponseBody> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": e.to_string()}),
        None,
    )
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({"error": "method_not_allowed"}),
        None,
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(token: Option<&str>, peer: &str, auth: Option<&str>) -> Option<StatusCode> {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, a.parse().unwrap());
        }
        refuse(token, peer.parse().unwrap(), &h).map(|r| r.status())
    }

    #[test]
    fn without_a_token_only_loopback_peers_get_in() {
        assert_eq!(status(None, "127.0.0.1:5000", None), None);
        assert_eq!(status(None, "[::1]:5000", None), None);
        assert_eq!(status(None, "10.1.2.3:5000", None), Some(StatusCode::FORBIDDEN));
        assert_eq!(
            status(None, "10.1.2.3:5000", Some("Bearer anything")),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn with_a_token_every_peer_needs_it() {
        let t = Some("s3cret");
        assert_eq!(status(t, "10.1.2.3:5000", Some("Bearer s3cret")), None);
        assert_eq!(status(t, "127.0.0.1:5000", None), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(t, "10.1.2.3:5000", Some("Bearer nope")),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(t, "10.1.2.3:5000", Some("Basic czNjcmV0")),
            Some(StatusCode::UNAUTHORIZED)
        );
        let r = refuse(t, "10.1.2.3:5000".parse().unwrap(), &http::HeaderMap::new()).unwrap();
        assert!(r.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
    }
}
