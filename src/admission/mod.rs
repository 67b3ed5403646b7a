//! Admission: which route a request belongs to and whether its bucket lets
//! it through now. The decision is pure — it knows routes and buckets, not
//! bodies, sockets or disks — so the proxy acts on it and tests call it
//! with a fake clock.

mod global;
mod keyed;
mod limiter;

pub use global::{divided, GlobalLimit};
pub use limiter::{LimitSpec, RouteLimiter, Verdict};

use crate::cluster::Cluster;
use crate::config::{KeySource, OnLimit, RouteConfig, Scope};
use governor::clock::{Clock, DefaultClock};
use http::{HeaderMap, Method};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What to do with one request, as far as its route's bucket is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken: go on to the upstream budget.
    Forward { remaining: u32 },
    /// Over the limit on a `spool` route with a spoolable method.
    Spool,
    /// Over the limit; a token comes back after `retry_after`.
    Reject { retry_after: Duration },
    /// Over the limit, but a token comes within the route's `max_wait`:
    /// sleep `wait` and ask again.
    Wait { wait: Duration },
}

pub struct Route<C: Clock = DefaultClock> {
    pub config: RouteConfig,
    pub limiter: Arc<RouteLimiter<C>>,
    /// `scope = "global"`: the fleet's bucket, asked instead of `limiter`.
    pub global: Option<Arc<GlobalLimit>>,
}

impl<C: Clock> Route<C> {
    pub fn can_spool(&self, method: &Method) -> bool {
        self.config.on_limit == OnLimit::Spool && self.config.spool_methods.contains(method)
    }

    /// Asks the bucket of `key` for a token. `wait_left` is how much of the
    /// route's `max_wait` this request has not yet spent.
    pub fn admit(&self, key: &str, method: &Method, wait_left: Duration) -> Decision {
        self.decide(self.limiter.check(key), method, wait_left)
    }

    /// What a bucket's verdict means for a request of `method` with
    /// `wait_left` of its `max_wait` unspent.
    pub fn decide(&self, verdict: Verdict, method: &Method, wait_left: Duration) -> Decision {
        match verdict {
            Verdict::Allowed { remaining } => Decision::Forward { remaining },
            Verdict::Limited { wait } => {
                if !wait_left.is_zero() && wait <= wait_left {
                    Decision::Wait { wait }
                } else if self.can_spool(method) {
                    Decision::Spool
                } else {
                    Decision::Reject { retry_after: wait }
                }
            }
        }
    }

    /// Seconds until the bucket is full again after `remaining` is left,
    /// for the `t` parameter of the `RateLimit` header.
    pub fn seconds_to_full(&self, remaining: u32) -> u64 {
        let missing = self.config.burst.saturating_sub(remaining);
        let secs = self.config.rate.interval().as_secs_f64() * f64::from(missing);
        secs.ceil() as u64
    }
}

/// The facts about a request that admission looks at.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Lower-case host without port, from Host or the h2 authority.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// Routes in file order; the first match wins.
pub struct RouteTable<C: Clock = DefaultClock> {
    routes: Vec<Arc<Route<C>>>,
}

impl RouteTable<DefaultClock> {
    /// Builds the table for `configs`, keeping the limiter (and its bucket
    /// state) of any route in `previous` with the same name and limits, so
    /// a reload doesn't hand every client a fresh burst.
    pub fn build(configs: &[RouteConfig], previous: Option<&RouteTable>) -> Self {
        Self::build_with(configs, previous, DefaultClock::default)
    }

    /// As [`build`](Self::build), giving each `scope = "global"` route its
    /// fleet-wide bucket in `cluster` (kept from `previous` when its
    /// limits are unchanged, with its leased tokens).
    pub fn build_in(configs: &[RouteConfig], previous: Option<&RouteTable>, cluster: Option<&Arc<Cluster>>) -> Self {
        let mut table = Self::build(configs, previous);
        let Some(cluster) = cluster else {
            return table;
        };
        for route in &mut table.routes {
            if route.config.scope != Scope::Global {
                continue;
            }
            let spec = route.limiter.spec().clone();
            let reused = previous
                .and_then(|p| p.routes.iter().find(|r| r.config.name == route.config.name))
                .and_then(|r| r.global.clone())
                .filter(|g| *g.spec() == spec);
            let global = reused.unwrap_or_else(|| Arc::new(GlobalLimit::new(cluster.clone(), &route.config, spec)));
            if let Some(r) = Arc::get_mut(route) {
                r.global = Some(global);
            }
        }
        table
    }
}

impl<C: Clock> RouteTable<C> {
    pub fn build_with(configs: &[RouteConfig], previous: Option<&RouteTable<C>>, clock: impl Fn() -> C) -> Self {
        let routes = configs
            .iter()
            .map(|cfg| {
                let spec = LimitSpec {
                    rate: cfg.rate,
                    burst: cfg.burst,
                    key: cfg.key.clone(),
                    max_keys: cfg.max_keys,
                };
                let reused = previous
                    .and_then(|p| p.routes.iter().find(|r| r.config.name == cfg.name))
                    .filter(|r| *r.limiter.spec() == spec)
                    .map(|r| r.limiter.clone());
                let limiter = reused.unwrap_or_else(|| Arc::new(RouteLimiter::with_clock(spec, clock())));
                Arc::new(Route {
                    config: cfg.clone(),
                    limiter,
                    global: None,
                })
            })
            .collect();
        RouteTable { routes }
    }

    pub fn routes(&self) -> &[Arc<Route<C>>] {
        &self.routes
    }

    pub fn find(&self, req: &RequestFacts<'_>) -> Option<&Arc<Route<C>>> {
        self.find_indexed(req).map(|(_, r)| r)
    }

    /// Like [`find`](Self::find), with the route's position in the table.
    pub fn find_indexed(&self, req: &RequestFacts<'_>) -> Option<(usize, &Arc<Route<C>>)> {
        self.routes.iter().enumerate().find(|(_, r)| matches(&r.config, req))
    }
}

fn matches(cfg: &RouteConfig, req: &RequestFacts<'_>) -> bool {
    let m = &cfg.matcher;
    if let Some(p) = &m.path {
        let same = if m.ignore_case {
            req.path.eq_ignore_ascii_case(p)
        } else {
            req.path == p
        };
        if !same {
            return false;
        }
    }
    if let Some(p) = &m.path_prefix {
        let under = if m.ignore_case {
            req.path
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        } else {
            req.path.starts_with(p.as_str())
        };
        if !under {
            return false;
        }
    }
    if let Some(methods) = &m.methods {
        if !methods.contains(req.method) {
            return false;
        }
    }
    if let Some(want) = &m.host {
        let Some(host) = req.host else { return false };
        let ok = match want.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => host == want,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The bucket key of a request under `source`. A missing header is the
/// empty key (SPEC §2); a non-UTF-8 value is used lossily.
pub fn key_for<'a>(source: &KeySource, req: &RequestFacts<'a>, ip_buf: &'a mut String) -> &'a str {
    match source {
        KeySource::Global => "",
        KeySource::ClientIp => {
            use std::fmt::Write;
            ip_buf.clear();
            let _ = write!(ip_buf, "{}", req.client_ip);
            ip_buf.as_str()
        }
        KeySource::Header(name) => match req.headers.get(name) {
            Some(v) => match v.to_str() {
                Ok(s) => s,
                Err(_) => {
                    *ip_buf = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    ip_buf.as_str()
                }
            },
            None => "",
        },
    }
}

#[cfg(test)]
mod tests;
