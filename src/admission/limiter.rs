//! One route's token bucket(s): a single governor GCRA limiter for
//! `key = "global"`, or a keyed one over [`BoundedKeyedStore`].

use super::keyed::{key_hash, BoundedKeyedStore, KeyHash, SharedStore};
use crate::config::{KeySource, Rate};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The outcome of asking a bucket for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A token was taken; `remaining` are left in the bucket.
    Allowed { remaining: u32 },
    /// No token; one will be available after `wait`.
    Limited { wait: Duration },
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;
type Keyed<C> = RateLimiter<KeyHash, SharedStore, C, StateInformationMiddleware>;

enum Buckets<C: Clock> {
    Global(Direct<C>),
    /// governor has no accessor for its store, so we keep a handle of our
    /// own to ask whether a sweep is due.
    Keyed(Keyed<C>, Arc<BoundedKeyedStore>),
}

/// The parameters a limiter was built from; a reload keeps the limiter
/// (and so its bucket state) when these are unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    pub rate: Rate,
    pub burst: u32,
    pub key: KeySource,
    pub max_keys: usize,
}

pub struct RouteLimiter<C: Clock = DefaultClock> {
    spec: LimitSpec,
    buckets: Buckets<C>,
}

impl<C: Clock> RouteLimiter<C> {
    pub fn with_clock(spec: LimitSpec, clock: C) -> Self {
        let quota = quota(spec.rate, spec.burst);
        let buckets = match spec.key {
            KeySource::Global => Buckets::Global(
                RateLimiter::direct_with_clock(quota, clock).with_middleware::<StateInformationMiddleware>(),
            ),
            _ => {
                let store = Arc::new(BoundedKeyedStore::new(spec.max_keys));
                Buckets::Keyed(
                    RateLimiter::<KeyHash, SharedStore, C, governor::middleware::NoOpMiddleware<C::Instant>>::new(
                        quota,
                        SharedStore(store.clone()),
                        clock,
                    )
                    .with_middleware::<StateInformationMiddleware>(),
                    store,
                )
            }
        };
        RouteLimiter { spec, buckets }
    }

    pub fn spec(&self) -> &LimitSpec {
        &self.spec
    }

    /// Takes one token from the bucket of `key` (ignored for global).
    pub fn check(&self, key: &str) -> Verdict {
        match &self.buckets {
            Buckets::Global(l) => Self::verdict(l.check(), l.clock()),
            Buckets::Keyed(l, store) => {
                if store.sweep_due() {
                    l.retain_recent();
                }
                // Buckets are keyed by a fixed-size hash of the value, never
                // the value: a flood of long distinct values costs the same
                // bytes per key as short ones.
                Self::verdict(l.check_key(&key_hash(key.as_bytes())), l.clock())
            }
        }
    }

    fn verdict(r: Result<governor::middleware::StateSnapshot, governor::NotUntil<C::Instant>>, clock: &C) -> Verdict {
        match r {
            Ok(snap) => Verdict::Allowed {
                remaining: snap.remaining_burst_capacity(),
            },
            Err(not_until) => Verdict::Limited {
                wait: not_until.wait_time_from(clock.now()),
            },
        }
    }

    /// Buckets currently held (keyed limiters), for tests and metrics.
    pub fn keys_held(&self) -> usize {
        match &self.buckets {
            Buckets::Global(_) => 1,
            Buckets::Keyed(_, store) => store.len(),
        }
    }
}

fn quota(rate: Rate, burst: u32) -> Quota {
    let period = rate.interval().max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst is at least 1"))
}
