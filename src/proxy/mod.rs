//! The data port's request path as one tower stack ([`data_stack`]), its
//! layers ([`layer`]), header hygiene ([`headers`]), and the one place
//! where outcomes and errors become responses ([`error`]).
//!
//! Below the route match, every layer finds the request's [`Matched`] in
//! its extensions: the route, a consistent config snapshot, the client's
//! address and where the request would be spooled. Layers answer with an
//! [`Answer`] or a [`ProxyError`]; only [`error::render`] builds responses.

pub mod error;
pub mod headers;
pub mod layer;
pub mod path;
pub mod prefer;

pub use error::ProxyError;

use crate::admission::Route;
use crate::drain::id::RequestId;
use crate::drain::spooler::StatusView;
use crate::runtime::{RouteStats, Runtime, Shared};
use crate::server::{ConnWatch, ResponseBody};
use http::header::HeaderValue;
use http::Response;
use layer::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::time::Instant;
use tower::ServiceBuilder;

/// Facts about the connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "https": what X-Forwarded-Proto says.
    pub scheme: &'static str,
    /// The peer address as a header value, rendered once per connection
    /// rather than once per request.
    pub peer_header: HeaderValue,
    /// Frees live responses' budget slots at their deadline, and tells
    /// idle connections apart ([`crate::server::watch`]).
    pub watch: Arc<ConnWatch>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str) -> Self {
        Self::watched(peer, scheme, Arc::default())
    }

    pub fn watched(peer: SocketAddr, scheme: &'static str, watch: Arc<ConnWatch>) -> Self {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            scheme,
            peer_header,
            watch,
        }
    }
}

/// What the route match found, in the request's extensions for every
/// layer below it.
#[derive(Clone)]
pub struct Matched {
    /// The config this request runs under, start to end.
    pub runtime: Arc<Runtime>,
    /// Position in `runtime.table`; `None`: no route matched.
    pub route_index: Option<usize>,
    /// The client (see `server.trusted_proxies`), for keys.
    pub client_ip: IpAddr,
    /// The partition the request would be spooled to, when it may be.
    pub partition: Option<u32>,
    /// An ordered route whose partition has backlog: the request joins the
    /// spool instead of overtaking it.
    pub behind_backlog: bool,
    /// Set by the bucket: spool this request rather than forward it.
    pub spool_now: bool,
    /// When the request arrived: `max_wait` and `request_timeout` count from here.
    pub start: Instant,
    /// `Prefer: wait=N` as honoured (capped by `prefer_wait_max`).
    pub prefer_wait: Option<std::time::Duration>,
}

impl Matched {
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.route_index.map(|i| &self.runtime.table.routes()[i])
    }

    /// How long this request may wait for a token and for upstream
    /// budget: the client's honoured `Prefer: wait`, shorter or longer,
    /// else the route's `max_wait`.
    pub fn max_wait(&self) -> std::time::Duration {
        self.prefer_wait
            .unwrap_or_else(|| self.route().map_or(std::time::Duration::ZERO, |r| r.config.max_wait))
    }

    pub fn stats(&self) -> &Arc<RouteStats> {
        match self.route_index {
            Some(i) => &self.runtime.stats[i],
            None => &self.runtime.unmatched,
        }
    }
}

/// How a request below the route match was answered.
pub enum Answer {
    /// The backend's response, streaming.
    Forwarded(Response<ResponseBody>),
    /// Written to the spool, durable as `spool.fsync` promises, with the
    /// estimated time until its delivery.
    Spooled(RequestId, Option<std::time::Duration>),
    /// A status lookup's answer.
    Status(StatusView),
}

/// A request's outcome with the route it is counted under (`None`:
/// sluice's own status answers, which are logged but not counted).
pub struct Reply {
    pub route: Option<Arc<RouteStats>>,
    pub result: Result<Answer, ProxyError>,
    /// What of the client's `Prefer` was honoured (`Preference-Applied`).
    pub applied: Option<prefer::Applied>,
}

/// The data port's stack for one connection, top to bottom in request
/// order.
pub type DataStack = ObserveService<
    StatusService<
        RouteMatchService<CatchPanicService<BodyLimitService<BucketService<HygieneService<SpoolService<Forward>>>>>>,
    >,
>;

pub fn data_stack(shared: &Arc<Shared>, conn: ConnInfo) -> DataStack {
    let conn = Arc::new(conn);
    ServiceBuilder::new()
        // Outermost, so every request is counted and logged once whatever
        // happened below; answers and errors become responses here.
        .layer(ObserveLayer::new(shared.clone(), conn.clone()))
        // sluice's own status URLs, before routing: not proxied traffic.
        .layer(StatusLayer::new(shared.spooler.clone(), shared.clone()))
        // The route and one config snapshot, into the extensions.
        .layer(RouteMatchLayer::new(shared.clone(), conn.clone()))
        // A panic below answers 500 under its route; the connection lives.
        .layer(CatchPanicLayer)
        // An oversized body is refused before it costs a token.
        .layer(BodyLimitLayer)
        // The route's bucket: forward, wait, reject, or mark for the spool.
        .layer(BucketLayer)
        // The backend's view of the request (hop-by-hop out,
        // X-Forwarded-* in), whether it is forwarded or spooled.
        .layer(HygieneLayer::new(conn.clone()))
        // Spool what the bucket marked, and what the upstream stack hands
        // back unsent (budget spent, breaker open, connection refused).
        .layer(SpoolLayer::new(shared.spooler.clone()))
        // The live upstream stack: breaker, budget, metrics, timeout, client.
        .service(Forward::watched(shared.upstream.live_stack(), conn.watch.clone()))
}
