//! A `scope = "global"` route's limit: its bucket lives in the cluster
//! store, shared by every replica, with the same rate, burst and key as a
//! local one. While the store can't be reached it decides by
//! `cluster.on_store_error`; `local` is this replica's own bucket at the
//! route's rate and burst ÷ the replicas last seen alive.

use super::keyed::key_hash;
use super::limiter::{LimitSpec, RouteLimiter, Verdict};
use crate::cluster::bucket::{Share, SharedBucket, Take};
use crate::cluster::{Cluster, HEARTBEAT_EVERY};
use crate::config::{KeySource, OnStoreError, Rate, RouteConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct GlobalLimit {
    bucket: SharedBucket,
    keyed: bool,
    spec: LimitSpec,
    /// The `local` fallback, built for the divisor it was last needed at.
    fallback: Mutex<Option<(u32, Arc<RouteLimiter>)>>,
}

impl GlobalLimit {
    pub fn new(cluster: Arc<Cluster>, route: &RouteConfig, spec: LimitSpec) -> GlobalLimit {
        // Under `route:`, so no route name can meet the cluster's own keys
        // (`<namespace>:replicas`, `<namespace>:upstream`).
        let key = format!("{}:route:{}", cluster.namespace(), route.name);
        GlobalLimit {
            bucket: SharedBucket::new(cluster, &route.name, key, route.rate, route.burst),
            keyed: route.key != KeySource::Global,
            spec,
            fallback: Mutex::new(None),
        }
    }

    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// A decision this replica can make without waiting: a leased token,
    /// a refusal the store just gave, or the fallback while the store is
    /// down. `None`: ask the store ([`check`](Self::check)).
    pub fn try_check(&self, key: &str) -> Option<Verdict> {
        if !self.bucket.cluster().is_up() {
            return Some(self.fallback(key));
        }
        if self.keyed {
            return None;
        }
        self.bucket.try_take_leased(Share::Live).map(as_verdict)
    }

    /// Asks the store, waiting at most `cluster.timeout`. A store that
    /// failed (and is now marked down) leaves it to the fallback; a store
    /// that is up but had no answer in time for this request (it queued
    /// behind others) counts as over the limit for now — never as a free
    /// pass, which under exactly the load a limit is for would let the
    /// fleet overshoot.
    pub async fn check(&self, key: &str) -> Verdict {
        let cluster = self.bucket.cluster();
        let asked = tokio::time::timeout(cluster.timeout(), async {
            if self.keyed {
                self.bucket.take_keyed(key_hash(key.as_bytes())).await
            } else {
                self.bucket.take_leased(Share::Live).await
            }
        })
        .await;
        match asked {
            Ok(Ok(take)) => as_verdict(take),
            _ if !cluster.is_up() => self.fallback(key),
            _ => Verdict::Limited {
                wait: cluster.timeout(),
            },
        }
    }

    fn fallback(&self, key: &str) -> Verdict {
        let cluster = self.bucket.cluster();
        cluster.note_fallback_decision();
        match cluster.on_store_error() {
            OnStoreError::Allow => Verdict::Allowed {
                remaining: self.spec.burst.saturating_sub(1),
            },
            OnStoreError::Reject => Verdict::Limited { wait: HEARTBEAT_EVERY },
            OnStoreError::Local => self.local(cluster.divisor()).check(key),
        }
    }

    fn local(&self, divisor: u32) -> Arc<RouteLimiter> {
        let mut slot = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some((d, limiter)) if *d == divisor => limiter.clone(),
            _ => {
                let spec = LimitSpec {
                    rate: divided(self.spec.rate, divisor),
                    burst: self.spec.burst.div_ceil(divisor).max(1),
                    ..self.spec.clone()
                };
                let limiter = Arc::new(RouteLimiter::with_clock(spec, Default::default()));
                *slot = Some((divisor, limiter.clone()));
                limiter
            }
        }
    }
}

/// `rate` ÷ `n`: the same count over n times the period.
pub fn divided(rate: Rate, n: u32) -> Rate {
    Rate {
        count: rate.count,
        per: rate.per.saturating_mul(n.max(1)),
    }
}

fn as_verdict(t: Take) -> Verdict {
    match t {
        Take::Granted { remaining } => Verdict::Allowed { remaining },
        Take::Limited { wait } => Verdict::Limited {
            wait: wait.max(Duration::from_millis(1)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, RedisUrl};
    use crate::metrics::Metrics;
    use crate::shutdown::Shutdown;

    /// A cluster whose store is a closed port: down from the start.
    async fn down_cluster(on_store_error: OnStoreError) -> (Arc<Cluster>, ClusterConfig) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = ClusterConfig {
            redis_url: Some(RedisUrl::new(format!("redis://127.0.0.1:{port}"))),
            replicas: Some(4),
            on_store_error,
            ..ClusterConfig::default()
        };
        let cluster = Cluster::start(&cfg, &Metrics::new(), Shutdown::new())
            .await
            .unwrap()
            .unwrap();
        assert!(!cluster.is_up(), "nothing listens there");
        (cluster, cfg)
    }

    fn route(burst: u32) -> (RouteConfig, LimitSpec) {
        let cfg = crate::config::Config::parse(
            "t.toml",
            &format!(
                "[upstream]\nurl = \"http://127.0.0.1:1\"\n[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n\
                 [[route]]\nname = \"r\"\nrate = \"1/m\"\nburst = {burst}\nscope = \"global\"\n"
            ),
            &Default::default(),
        )
        .unwrap();
        let r = cfg.routes[0].clone();
        let spec = LimitSpec {
            rate: r.rate,
            burst: r.burst,
            key: r.key.clone(),
            max_keys: r.max_keys,
        };
        (r, spec)
    }

    #[tokio::test]
    async fn with_the_store_down_each_mode_decides_without_waiting() {
        let (cluster, mut cfg) = down_cluster(OnStoreError::Local).await;
        let (r, spec) = route(40);
        let limit = GlobalLimit::new(cluster.clone(), &r, spec);
        // local: this replica's quarter of the burst (cluster.replicas = 4).
        let admitted = (0..20)
            .filter(|_| matches!(limit.try_check(""), Some(Verdict::Allowed { .. })))
            .count();
        assert_eq!(admitted, 10, "40 ÷ 4 replicas");
        cfg.on_store_error = OnStoreError::Reject;
        cluster.reconfigure(&cfg);
        assert!(matches!(limit.try_check(""), Some(Verdict::Limited { .. })));
        cfg.on_store_error = OnStoreError::Allow;
        cluster.reconfigure(&cfg);
        assert!(matches!(limit.check("").await, Verdict::Allowed { .. }));
        // A new divisor builds a new fallback bucket at the new share.
        cfg.on_store_error = OnStoreError::Local;
        cfg.replicas = Some(8);
        cluster.reconfigure(&cfg);
        let admitted = (0..20)
            .filter(|_| matches!(limit.try_check(""), Some(Verdict::Allowed { .. })))
            .count();
        assert_eq!(admitted, 5, "40 ÷ 8 replicas");
    }
}
