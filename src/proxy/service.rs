//! One request's path through the data port: route match → bucket →
//! upstream budget → backend, with the outcome counted and logged.

use super::body::{InFlight, RequestBody, ResponseBody};
use super::error::ProxyError;
use super::headers::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use super::{RouteStats, Runtime, Shared};
use crate::admission::{key_for, Decision, RequestFacts, Route};
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::spooler::SpoolingError;
use crate::metrics::DecisionLabel;
use crate::upstream::breaker::{Admit, Health};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static SLUICE_ID: HeaderName = HeaderName::from_static("sluice-id");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Facts about the connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "https": what X-Forwarded-Proto says.
    pub scheme: &'static str,
    /// The peer address as a header value, rendered once per connection
    /// rather than once per request.
    peer_header: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str) -> Self {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            scheme,
            peer_header,
        }
    }
}

/// The data port's service for one connection.
pub type ProxyService = super::listener::ConnService<Shared>;

impl super::listener::ConnHandler for Shared {
    type Conn = ConnInfo;

    fn handle(
        self: Arc<Self>,
        conn: ConnInfo,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
        handle(self, conn, req)
    }
}

/// What the handler did, for metrics and the access log.
struct Handled {
    stats: Arc<RouteStats>,
    decision: DecisionLabel,
    response: Response<ResponseBody>,
}

async fn handle(shared: Arc<Shared>, conn: ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let start = Instant::now();
    let log = tracing::enabled!(target: "sluice::access", tracing::Level::INFO);
    let method = log.then(|| req.method().clone());
    let path = log.then(|| req.uri().path().to_owned());
    let rt = shared.runtime.load_full();
    // Status lookups are sluice's own answers, not proxied traffic: logged,
    // but not counted in `sluice_requests_total`.
    if let Some(id) = status_id(&rt.config.server.status_path_prefix, &req) {
        let response = request_status(&shared, id).await;
        if let (Some(method), Some(path)) = (method, path) {
            log_access("-", "status", &response, &method, &path, &conn, start);
        }
        return response;
    }
    let Handled {
        stats,
        decision,
        response,
    } = route_request(&shared, &rt, &conn, req, start).await;
    stats.metrics.observe(decision, start.elapsed().as_secs_f64());
    if let (Some(method), Some(path)) = (method, path) {
        log_access(&stats.name, decision.as_str(), &response, &method, &path, &conn, start);
    }
    response
}

/// The id of a `GET {status_path_prefix}/requests/{id}`, if this is one.
fn status_id<'r>(prefix: &str, req: &'r Request<Incoming>) -> Option<&'r str> {
    if prefix.is_empty() || req.method() != http::Method::GET {
        return None;
    }
    req.uri()
        .path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("/requests/"))
}

/// The access log line: one per request.
fn log_access(
    route: &str,
    decision: &str,
    response: &Response<ResponseBody>,
    method: &http::Method,
    path: &str,
    conn: &ConnInfo,
    start: Instant,
) {
    tracing::info!(
        target: "sluice::access",
        route,
        decision,
        status = response.status().as_u16(),
        method = method.as_str(),
        path,
        client = %conn.peer.ip(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

fn host_of(req: &Request<Incoming>) -> Option<Cow<'_, str>> {
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

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn route_request(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    req: Request<Incoming>,
    start: Instant,
) -> Handled {
    let cfg = &rt.config;
    let client_ip = headers::client_ip(conn.peer.ip(), req.headers(), &cfg.server.trusted_proxies);
    let host = host_of(&req);
    let facts = RequestFacts {
        method: req.method(),
        host: host.as_deref(),
        path: req.uri().path(),
        headers: req.headers(),
        client_ip,
    };
    let matched = rt.table.find_indexed(&facts);
    let stats = match matched {
        Some((i, _)) => rt.stats[i].clone(),
        None => rt.unmatched.clone(),
    };
    let fail = |stats: Arc<RouteStats>, e: ProxyError| Handled {
        stats,
        decision: e.decision(),
        response: e.into_response(),
    };

    // Refuse an oversized body before it costs a token.
    if content_length(&req).is_some_and(|n| n > cfg.server.max_body) {
        let refused = fail(
            stats,
            ProxyError::TooLarge {
                limit: cfg.server.max_body,
            },
        );
        linger(req.into_body());
        return refused;
    }

    // Where this request would be spooled, if it may be.
    let route = matched.map(|(_, r)| r.clone());
    let spool_partition = match &route {
        Some(r) if r.can_spool(facts.method) => {
            let mut buf = String::new();
            let key = r
                .config
                .partition_key
                .as_ref()
                .map(|src| key_for(src, &facts, &mut buf));
            Some(shared.spooler.partition_for(key.map(str::as_bytes)))
        }
        _ => None,
    };

    // An ordered route keeps a partition's requests behind its backlog.
    if let (Some(r), Some(p)) = (&route, spool_partition) {
        if r.config.ordered && shared.spooler.has_backlog(p) {
            return spool_client_request(shared, rt, conn, r, stats, req, p).await;
        }
    }

    // Gate 1: the route's bucket.
    let mut remaining = None;
    if let Some(route) = &route {
        let mut key_buf = String::new();
        let key = key_for(&route.config.key, &facts, &mut key_buf);
        let deadline = start + route.config.max_wait;
        loop {
            let wait_left = deadline.saturating_duration_since(Instant::now());
            match route.admit(key, facts.method, wait_left) {
                Decision::Forward { remaining: r } => {
                    remaining = Some(r);
                    break;
                }
                Decision::Wait { wait } => tokio::time::sleep(wait).await,
                Decision::Spool => {
                    let p = spool_partition.expect("Spool is only decided for spoolable requests");
                    return spool_client_request(shared, rt, conn, route, stats, req, p).await;
                }
                Decision::Reject { retry_after } => return rate_limited(stats, route, retry_after),
            }
        }
    }

    // The breaker: while the backend is failing, don't pile on.
    let probe = match shared.breaker.admit() {
        Admit::Pass => false,
        Admit::Probe => true,
        Admit::Refuse { retry_after } => {
            if let (Some(r), Some(p)) = (&route, spool_partition) {
                return spool_client_request(shared, rt, conn, r, stats, req, p).await;
            }
            return fail(stats, ProxyError::UpstreamUnavailable { retry_after });
        }
    };

    // Gate 2: the upstream budget, shared with replay.
    let budget_deadline = start + route.as_ref().map_or(Duration::ZERO, |r| r.config.max_wait);
    let permit = match rt.budget.acquire(budget_deadline).await {
        Ok(p) => p,
        Err(crate::upstream::BudgetError::Exhausted { retry_after }) => {
            if probe {
                shared.breaker.release_probe();
            }
            if let (Some(r), Some(p)) = (&route, spool_partition) {
                return spool_client_request(shared, rt, conn, r, stats, req, p).await;
            }
            return fail(stats, ProxyError::UpstreamBusy { retry_after });
        }
    };

    let forwarded = forward(shared, rt, conn, req, permit, start).await;
    match &forwarded {
        Ok(resp) => shared.breaker.record(Health::of(Some(resp.status().as_u16())), probe),
        Err(ForwardError::Unsent(..))
        | Err(ForwardError::Failed(
            ProxyError::Unreachable { .. } | ProxyError::UpstreamFailed { .. } | ProxyError::UpstreamTimeout { .. },
        )) => shared.breaker.record(Health::Failed, probe),
        // Not the backend's doing (a too-large body, a client that broke
        // off its upload): the probe slot is given back unjudged.
        Err(ForwardError::Failed(_)) => {
            if probe {
                shared.breaker.release_probe();
            }
        }
    }
    match forwarded {
        Ok(mut response) => {
            if let (Some(route), Some(r)) = (&route, remaining) {
                add_ratelimit_headers(response.headers_mut(), route, &stats, r, 0);
            }
            Handled {
                stats,
                decision: DecisionLabel::Forwarded,
                response,
            }
        }
        // Refused before anything was sent: a spoolable request is spooled.
        Err(ForwardError::Unsent(req, error)) => match (&route, spool_partition) {
            (Some(r), Some(p)) => {
                let (parts, body) = (*req).into_parts();
                spool_parts(shared, rt, r, stats, parts, body, p).await
            }
            _ => fail(stats, error),
        },
        Err(ForwardError::Failed(e)) => fail(stats, e),
    }
}

/// Spools a request straight from the client.
async fn spool_client_request(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    route: &Route,
    stats: Arc<RouteStats>,
    req: Request<Incoming>,
    partition: u32,
) -> Handled {
    let (mut parts, body) = req.into_parts();
    prepare_parts(&mut parts, conn, false);
    spool_parts(shared, rt, route, stats, parts, body, partition).await
}

/// Reads the body whole (up to `spool.max_record`), appends the request to
/// the spool and answers 202 once it is durable.
async fn spool_parts<B>(
    shared: &Shared,
    rt: &Runtime,
    route: &Route,
    stats: Arc<RouteStats>,
    parts: http::request::Parts,
    body: B,
    partition: u32,
) -> Handled
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cfg = &rt.config;
    let fail = |stats: Arc<RouteStats>, e: ProxyError| Handled {
        stats,
        decision: e.decision(),
        response: e.into_response(),
    };
    let limit = cfg.spool.max_record.min(cfg.server.max_body);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        linger(body);
        return fail(stats, ProxyError::TooLarge { limit });
    }
    let body = match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit as usize)).await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if is_body_too_large(&*e) {
                return fail(stats, ProxyError::TooLarge { limit });
            }
            return fail(
                stats,
                ProxyError::BadRequest {
                    detail: error_chain(&*e),
                },
            );
        }
    };
    let idempotency_key = parts
        .headers
        .get(&IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let key_hash = idempotency_key
        .as_deref()
        .map(|k| crate::drain::outcomes::key_hash(&route.config.name, k));
    let envelope = Envelope {
        token: RequestId::new_token(),
        arrived_ms: crate::drain::outcomes::now_ms(),
        attempt_base: 0,
        route: route.config.name.clone(),
        method: parts.method,
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        idempotency_key,
        headers: parts.headers,
        body,
    };
    match shared.spooler.spool(envelope, partition, key_hash).await {
        Ok(id) => Handled {
            stats,
            decision: DecisionLabel::Spooled,
            response: accepted(&cfg.server.status_path_prefix, id),
        },
        Err(SpoolingError::TooLarge { limit, .. }) => fail(stats, ProxyError::TooLarge { limit }),
        Err(SpoolingError::Unavailable(e)) => {
            tracing::warn!(error = %e, route = %route.config.name, "spool refused a request");
            fail(
                stats,
                ProxyError::SpoolFull {
                    retry_after: Duration::from_secs(5),
                },
            )
        }
    }
}

/// The 202 for a spooled request: `Sluice-Id`, `Location` and a JSON body.
fn accepted(status_prefix: &str, id: RequestId) -> Response<ResponseBody> {
    let id_text = id.encode();
    let status_url = (!status_prefix.is_empty()).then(|| format!("{status_prefix}/requests/{id_text}"));
    let body = match &status_url {
        Some(url) => serde_json::json!({"id": id_text, "status_url": url}),
        None => serde_json::json!({"id": id_text}),
    };
    let mut resp = super::error::json_response(StatusCode::ACCEPTED, &body, None);
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

/// `GET {status_path_prefix}/requests/{id}`.
async fn request_status(shared: &Shared, id_text: &str) -> Response<ResponseBody> {
    let view = match RequestId::parse(id_text) {
        Some(id) => shared.spooler.status(id).await,
        None => None,
    };
    match view {
        Some(v) => super::error::json_response(StatusCode::OK, &serde_json::to_value(v).unwrap_or_default(), None),
        None => ProxyError::NotFound.into_response(),
    }
}

fn rate_limited(stats: Arc<RouteStats>, route: &Route, retry_after: Duration) -> Handled {
    let e = ProxyError::RateLimited {
        route: route.config.name.clone(),
        retry_after,
    };
    let decision = e.decision();
    let mut response = e.into_response();
    let reset = super::error::retry_after_secs(retry_after);
    add_ratelimit_headers(response.headers_mut(), route, &stats, 0, reset);
    Handled {
        stats,
        decision,
        response,
    }
}

/// `RateLimit-Policy` and `RateLimit` in the structured-field syntax of
/// draft-ietf-httpapi-ratelimit-headers (-08 and later).
fn add_ratelimit_headers(h: &mut http::HeaderMap, route: &Route, stats: &RouteStats, remaining: u32, reset_secs: u64) {
    let reset = if reset_secs > 0 {
        reset_secs
    } else {
        route.seconds_to_full(remaining)
    };
    h.insert(RATELIMIT_POLICY.clone(), stats.policy_header.clone());
    // Built by hand into one buffer that becomes the header's storage.
    let name = route.config.name.as_bytes();
    let mut v = Vec::with_capacity(name.len() + 32);
    v.push(b'"');
    v.extend_from_slice(name);
    v.extend_from_slice(b"\";r=");
    v.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
    v.extend_from_slice(b";t=");
    v.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)) {
        h.insert(RATELIMIT.clone(), v);
    }
}

fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reads and discards (a bounded amount of) a refused request's body, so
/// the client, still sending it, reads our 413 instead of a connection
/// reset — what nginx calls a lingering close.
fn linger<B>(body: B)
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    const MAX_DISCARD: usize = 16 << 20;
    tokio::spawn(async move {
        let discard = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_DISCARD));
        let _ = tokio::time::timeout(Duration::from_secs(5), discard).await;
    });
}

/// Rewrites a client request's head for the backend: hop-by-hop headers
/// out, X-Forwarded-* in, Host preserved, origin-form URI, HTTP/1.1.
fn prepare_parts(parts: &mut http::request::Parts, conn: &ConnInfo, upgrade: bool) {
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
    for name in ["sluice-id", "sluice-attempt", "sluice-partition", "sluice-sequence"] {
        parts.headers.remove(name);
    }
    headers::append_forwarded_for(&mut parts.headers, &conn.peer_header);
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme));
    if let Some(h) = host {
        parts.headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        parts.headers.insert(HOST, h);
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

/// How a forward ended when it didn't produce a response.
enum ForwardError {
    Failed(ProxyError),
    /// The request certainly never reached the backend (connection
    /// refused): it may still be spooled.
    Unsent(Box<Request<RequestBody>>, ProxyError),
}

impl From<ProxyError> for ForwardError {
    fn from(e: ProxyError) -> Self {
        ForwardError::Failed(e)
    }
}

async fn forward(
    shared: &Shared,
    rt: &Runtime,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    permit: crate::upstream::BudgetPermit,
    start: Instant,
) -> Result<Response<ResponseBody>, ForwardError> {
    let cfg = &rt.config;
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    prepare_parts(&mut parts, conn, upgrade);
    let up_req = Request::from_parts(parts, RequestBody::streaming(body, cfg.server.max_body));

    let timeout = cfg
        .upstream
        .timeout
        .min(cfg.server.request_timeout.saturating_sub(start.elapsed()));
    let guard = InFlight::new(Some(permit), shared.live.in_flight.clone());
    let sent_at = Instant::now();
    let result = tokio::time::timeout(timeout, shared.client.send(up_req)).await;
    let took = sent_at.elapsed().as_secs_f64();
    let resp = match result {
        Err(_) => {
            shared.live.observe(None, took);
            return Err(ProxyError::UpstreamTimeout { after: timeout }.into());
        }
        Ok(Err(failure)) => {
            shared.live.observe(None, took);
            let e = failure.error;
            if is_body_too_large(&e) {
                return Err(ProxyError::TooLarge {
                    limit: cfg.server.max_body,
                }
                .into());
            }
            let detail = error_chain(&e);
            if client_body_failed(&e) {
                return Err(ProxyError::BadRequest { detail }.into());
            }
            if !e.is_connect() {
                return Err(ProxyError::UpstreamFailed { detail }.into());
            }
            let error = ProxyError::Unreachable { detail };
            return Err(match failure.unsent {
                Some(req) => ForwardError::Unsent(Box::new(req), error),
                None => ForwardError::Failed(error),
            });
        }
        Ok(Ok(r)) => r,
    };
    let (mut resp, lease) = resp;
    shared.live.observe(Some(resp.status().as_u16()), took);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
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
            // The tunnel is long-lived: it stops counting against the
            // budget once established.
            drop(guard);
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }
    }

    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    // An HTTP/1.0 backend must not downgrade the client's connection.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, guard.with_lease(lease), start + cfg.server.request_timeout),
    ))
}

/// True when the exchange failed because the client's own body did (it
/// broke off its upload): the client's fault, not the backend's.
fn client_body_failed(e: &super::client::UpstreamError) -> bool {
    match e {
        super::client::UpstreamError::Exchange(h) => h.is_user(),
        super::client::UpstreamError::Connect { .. } => false,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}
