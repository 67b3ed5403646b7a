//! A token bucket the whole fleet shares, kept in the cluster store.
//!
//! Two ways to spend it:
//! - **keyed** (a route keyed by client or header): one GCRA decision in
//!   Redis per request — the buckets are many and each is touched rarely,
//!   so there is nothing to lease. Decisions that arrive while a call is
//!   in flight go together in the next call (one script run for the
//!   batch, [`Cluster::take_keyed`]), so Redis runs one script per batch,
//!   not per request.
//! - **leased** (an unkeyed route, `upstream.capacity`): the bucket is one
//!   hot key, so a replica takes a small batch of tokens in one call and
//!   spends them locally. The request that asks takes the first token; the
//!   rest are good for as long as the batch represents at the fleet's
//!   rate, then dropped (never spent late).
//!
//! What a lease costs in accuracy: a batch of `size` tokens leased at t
//! is good until t + ttl, where ttl is the time the rest of the batch is
//! worth at one replica's share of the rate ((size - 1) × replicas ×
//! interval); tokens never spent by then are dropped, never spent late.
//! Spending up to ttl late could let the fleet exceed rate × window +
//! burst by what the rate makes in a ttl, so the leased bucket's burst is
//! lowered by exactly that: (size - 1) × replicas tokens. The other cost
//! is undershoot: a replica whose own demand is below its share of the
//! rate can let a batch lapse, at most (size - 1) tokens per refill. A
//! batch is 2% of a second's tokens (at least 1, at most a quarter of the
//! burst), so below 50/s leases are single tokens and exact.

use super::store::{GcraParams, Grant};
use super::{Cluster, ClusterError, Op};
use crate::config::Rate;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the bucket said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token; `remaining` are free in the fleet's bucket (as of the last
    /// store call, for the RateLimit header).
    Granted { remaining: u32 },
    /// No token for `wait`.
    Limited { wait: Duration },
}

/// A batch of leased tokens on this replica.
#[derive(Debug)]
struct Stock {
    tokens: u32,
    good_until: Instant,
    /// Free in the fleet's bucket when the batch was leased.
    free_then: u32,
    /// The store said no until then: don't ask again before it.
    limited_until: Option<Instant>,
}

impl Stock {
    fn empty() -> Stock {
        Stock {
            tokens: 0,
            good_until: Instant::now(),
            free_then: 0,
            limited_until: None,
        }
    }

    /// A decision without the store, if this replica can make one.
    fn take_local(&mut self, now: Instant) -> Option<Take> {
        if self.tokens > 0 && now < self.good_until {
            self.tokens -= 1;
            return Some(Take::Granted {
                remaining: self.free_then + self.tokens,
            });
        }
        match self.limited_until {
            Some(until) if now < until => Some(Take::Limited { wait: until - now }),
            _ => None,
        }
    }
}

/// The batch shape of a leased bucket.
#[derive(Debug, Clone, Copy)]
struct Lease {
    size: u32,
}

/// What one refill asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Terms {
    size: u32,
    ttl: Duration,
    params: GcraParams,
}

impl Lease {
    /// The batch, how long it is good for and the bucket shape that pays
    /// for it, with `replicas` sharing the rate. The payment comes out of
    /// at most half the burst: past that the batch shrinks (to single
    /// tokens, which cost nothing), so the promise holds for any fleet
    /// size and the other half stays for replay's reserve and bursts.
    fn terms(self, exact: GcraParams, replicas: u32) -> Terms {
        let n = u64::from(replicas.max(1));
        let burst = 1 + exact.tolerance_us / exact.interval_us.max(1);
        let affordable = 1 + (burst - 1) / (2 * n);
        let size = u64::from(self.size).min(affordable).max(1) as u32;
        let late_us = exact.interval_us * u64::from(size - 1) * n;
        Terms {
            size,
            ttl: Duration::from_micros(late_us).max(Duration::from_millis(1)),
            params: GcraParams {
                interval_us: exact.interval_us,
                tolerance_us: exact.tolerance_us - late_us,
            },
        }
    }
}

pub struct SharedBucket {
    cluster: Arc<Cluster>,
    /// The whole key (leased) or the prefix before the key's hash (keyed).
    key: String,
    exact: GcraParams,
    lease: Lease,
    /// Indexed by [`Share`]: live leases leave no reserve, replay's leave
    /// one, so they are separate batches.
    stocks: [Mutex<Stock>; 2],
    /// One lease call at a time per share: a burst of requests that find
    /// the stock empty waits for one refill rather than sending many.
    refilling: [tokio::sync::Mutex<()>; 2],
    refills: prometheus::IntCounter,
    /// Keyed buckets the store said no to, and until when: no replica can
    /// make a token appear sooner (a GCRA bucket's next token only moves
    /// later), so until then this replica refuses without asking — a
    /// client hammering one key costs Redis one call per token, not one
    /// per request. At most [`REFUSED_MAX`] keys.
    refused: dashmap::DashMap<u128, Instant>,
}

/// Keys remembered as refused, at most; past it (after dropping those
/// whose time has come) refusals are not remembered.
const REFUSED_MAX: usize = 16_384;

/// Whose tokens: live ones, or replay's, which leave a reserve free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    Live,
    Replay { reserve: u32 },
}

impl Share {
    fn index(self) -> usize {
        match self {
            Share::Live => 0,
            Share::Replay { .. } => 1,
        }
    }

    fn reserve(self) -> u32 {
        match self {
            Share::Live => 0,
            Share::Replay { reserve } => reserve,
        }
    }
}

impl SharedBucket {
    /// The bucket of a route (`key` is `<namespace>:route:<route>`) or of the
    /// upstream budget; `limit` is its metric label.
    pub fn new(cluster: Arc<Cluster>, limit: &str, key: String, rate: Rate, burst: u32) -> SharedBucket {
        let interval_us = (rate.interval().as_micros() as u64).max(1);
        let burst = burst.max(1);
        let exact = GcraParams {
            interval_us,
            tolerance_us: interval_us * u64::from(burst - 1),
        };
        let size = ((rate.per_second() * 0.02).ceil() as u32).clamp(1, (burst / 4).max(1));
        let lease = Lease { size };
        let refills = cluster.metrics().lease_refills.with_label_values(&[limit]);
        SharedBucket {
            cluster,
            key,
            exact,
            lease,
            stocks: [Mutex::new(Stock::empty()), Mutex::new(Stock::empty())],
            refilling: [tokio::sync::Mutex::new(()), tokio::sync::Mutex::new(())],
            refills,
            refused: dashmap::DashMap::new(),
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// One decision for the bucket of `key_hash` (a keyed route).
    pub async fn take_keyed(&self, key_hash: u128) -> Result<Take, ClusterError> {
        if let Some(wait) = self.refused_for(key_hash) {
            return Ok(Take::Limited { wait });
        }
        let key = format!("{}:{key_hash:032x}", self.key);
        let asked_at = Instant::now();
        let grant = self.cluster.take_keyed(key, self.exact).await?;
        let take = as_take(grant);
        if let Take::Limited { wait } = take {
            self.remember_refusal(key_hash, asked_at + wait);
        }
        Ok(take)
    }

    /// How long `key_hash` is still known to be refused, if it is.
    fn refused_for(&self, key_hash: u128) -> Option<Duration> {
        let until = *self.refused.get(&key_hash)?;
        let now = Instant::now();
        if now < until {
            return Some(until - now);
        }
        self.refused.remove_if(&key_hash, |_, u| *u <= now);
        None
    }

    fn remember_refusal(&self, key_hash: u128, until: Instant) {
        if self.refused.len() >= REFUSED_MAX {
            let now = Instant::now();
            self.refused.retain(|_, u| *u > now);
            if self.refused.len() >= REFUSED_MAX {
                return;
            }
        }
        self.refused.insert(key_hash, until);
    }

    /// A leased token if this replica holds one (or knows the store just
    /// said no); `None` when only the store can tell.
    pub fn try_take_leased(&self, share: Share) -> Option<Take> {
        let mut stock = self.stocks[share.index()].lock().unwrap_or_else(|p| p.into_inner());
        stock.take_local(Instant::now())
    }

    /// A leased token, refilling the batch from the store when it is spent.
    /// The caller bounds the whole wait with `cluster.timeout`.
    pub async fn take_leased(&self, share: Share) -> Result<Take, ClusterError> {
        if let Some(t) = self.try_take_leased(share) {
            return Ok(t);
        }
        if !self.cluster.is_up() {
            return Err(ClusterError::Down);
        }
        let terms = self.lease.terms(self.exact, self.cluster.lease_divisor());
        // Batches are refilled one at a time, so a burst of requests that
        // find the stock empty waits for one call; single tokens are each
        // their own request's and need no queue.
        let _one = if terms.size > 1 {
            let guard = self.refilling[share.index()].lock().await;
            if let Some(t) = self.try_take_leased(share) {
                return Ok(t);
            }
            Some(guard)
        } else {
            None
        };
        // The reserve is at most half of what the leased bucket holds, or
        // replay could never be granted a token.
        let holds = 1 + terms.params.tolerance_us / terms.params.interval_us.max(1);
        let reserve = share.reserve().min(holds as u32 / 2);
        // Measured from before the call: the grant is that old when it
        // arrives, and no token may be spent later than its ttl allows.
        let asked_at = Instant::now();
        let grant = self
            .cluster
            .call(
                Op::Lease,
                self.cluster.store().take(&self.key, terms.params, terms.size, reserve),
            )
            .await?;
        self.refills.inc();
        let now = Instant::now();
        let ttl = terms.ttl;
        let mut stock = self.stocks[share.index()].lock().unwrap_or_else(|p| p.into_inner());
        if grant.granted == 0 {
            stock.limited_until = Some(now + grant.wait);
            return Ok(Take::Limited { wait: grant.wait });
        }
        // The first token is this request's; the rest are the stock.
        *stock = Stock {
            tokens: grant.granted - 1,
            good_until: asked_at + ttl,
            free_then: grant.free,
            limited_until: None,
        };
        Ok(Take::Granted {
            remaining: grant.free + stock.tokens,
        })
    }
}

fn as_take(g: Grant) -> Take {
    if g.granted > 0 {
        Take::Granted { remaining: g.free }
    } else {
        Take::Limited { wait: g.wait }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_paid_for_out_of_the_burst() {
        let exact = GcraParams {
            interval_us: 10_000,
            tolerance_us: 19 * 10_000,
        };
        let t = Lease { size: 2 }.terms(exact, 3);
        assert_eq!(t.ttl, Duration::from_millis(30), "one spare token at a third of 100/s");
        assert_eq!(
            t.params.tolerance_us,
            16 * 10_000,
            "burst 20 less the 3 tokens a ttl is worth"
        );
        let t = Lease { size: 1 }.terms(exact, 3);
        assert_eq!(t.ttl, Duration::from_millis(1));
        assert_eq!(t.params, exact, "single-token leases are exact");
        // Many replicas: the batch shrinks rather than the promise break.
        // Burst 20, 10 replicas: at most 1 + 19/20 = 1 token per batch.
        let t = Lease { size: 4 }.terms(exact, 10);
        assert_eq!(t.size, 1);
        assert_eq!(t.params, exact);
        // Burst 20, 3 replicas: 1 + 19/6 = 4 affordable, the cost 9 tokens,
        // under half the burst.
        let t = Lease { size: 4 }.terms(exact, 3);
        assert_eq!(t.size, 4);
        assert_eq!(t.params.tolerance_us, (19 - 9) * 10_000);
    }

    #[test]
    fn a_stock_spends_its_tokens_then_expires_and_remembers_a_refusal() {
        let now = Instant::now();
        let mut s = Stock {
            tokens: 2,
            good_until: now + Duration::from_millis(10),
            free_then: 5,
            limited_until: None,
        };
        assert_eq!(s.take_local(now), Some(Take::Granted { remaining: 6 }));
        assert_eq!(s.take_local(now), Some(Take::Granted { remaining: 5 }));
        assert_eq!(s.take_local(now), None, "spent: ask the store");
        s.tokens = 3;
        assert_eq!(
            s.take_local(now + Duration::from_millis(10)),
            None,
            "a batch past its ttl is never spent late"
        );
        s.tokens = 0;
        s.limited_until = Some(now + Duration::from_millis(30));
        assert_eq!(
            s.take_local(now + Duration::from_millis(10)),
            Some(Take::Limited {
                wait: Duration::from_millis(20)
            })
        );
        assert_eq!(s.take_local(now + Duration::from_millis(30)), None);
    }
}
