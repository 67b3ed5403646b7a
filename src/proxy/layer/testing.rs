//! Helpers for the data layers' unit tests: a real [`Shared`] over a
//! temporary spool, and requests carrying their [`Matched`] as the route
//! match would leave it.

use crate::config::{Config, Overrides};
use crate::metrics::Metrics;
use crate::proxy::{Answer, Matched, ProxyError};
use crate::runtime::{Runtime, Shared};
use crate::upstream::body::RequestBody;
use http::Request;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::time::Instant;

pub struct Fixture {
    pub shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

/// A `Shared` for `routes_toml` (the `[[route]]` tables), with a spool in
/// a temporary directory and a backend that is never called.
pub async fn fixture(routes_toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[spool]\ndir = \"{}\"\npartitions = 2\n{routes_toml}",
        dir.path().join("spool").display()
    );
    let config = Config::parse("test.toml", &text, &Overrides::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let spool = crate::spool::Spool::open(
        crate::app::spool_options(&config),
        Arc::new(crate::metrics::SpoolMetrics::new(&metrics, config.spool.partitions)),
    )
    .await
    .unwrap();
    let outcomes = Arc::new(
        crate::drain::outcomes::OutcomeStore::open(
            &config.spool.dir,
            config.server.status_retention,
            config.server.status_max_entries,
        )
        .unwrap(),
    );
    let spooler = Arc::new(crate::drain::spooler::Spooler::Local(Arc::new(
        crate::drain::spooler::LocalSpooler::new(spool, outcomes),
    )));
    let client = crate::upstream::client::build(&config.upstream).unwrap();
    let runtime = Runtime::build(Arc::new(config), &metrics, None, None);
    Fixture {
        shared: Arc::new(Shared::new(runtime, client, metrics, spooler, None)),
        _dir: dir,
    }
}

impl Fixture {
    /// What the route match would attach to `req`.
    pub fn matched<B>(&self, req: &Request<B>) -> Matched {
        let runtime = self.shared.runtime.load_full();
        let path = req.uri().path();
        let route_index = runtime.table.routes().iter().position(|r| {
            r.config
                .matcher
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
                && r.config
                    .matcher
                    .methods
                    .as_ref()
                    .is_none_or(|m| m.contains(req.method()))
        });
        let partition = route_index
            .filter(|&i| runtime.table.routes()[i].can_spool(req.method()))
            .map(|_| 0);
        Matched {
            runtime,
            route_index,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            partition,
            behind_backlog: false,
            spool_now: false,
            start: Instant::now(),
            prefer_wait: None,
        }
    }

    /// A request with its `Matched`, body `body`.
    pub fn request(&self, method: &str, path: &str, body: &'static [u8]) -> Request<RequestBody> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-length", body.len())
            .body(RequestBody::full(bytes::Bytes::from_static(body)))
            .unwrap();
        let m = self.matched(&req);
        req.extensions_mut().insert(m);
        req
    }
}

/// An inner service that answers `Forwarded(200)` and records what it saw.
pub fn forwarding(
    seen: Arc<std::sync::Mutex<Vec<Matched>>>,
) -> impl tower::Service<
    Request<RequestBody>,
    Response = Answer,
    Error = ProxyError,
    Future = std::future::Ready<Result<Answer, ProxyError>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<RequestBody>| {
        if let Some(m) = req.extensions().get::<Matched>() {
            seen.lock().unwrap().push(m.clone());
        }
        std::future::ready(Ok(Answer::Forwarded(http::Response::new(
            crate::server::ResponseBody::empty(),
        ))))
    })
}
