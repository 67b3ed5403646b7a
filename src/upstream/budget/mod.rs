//! The upstream budget: a token bucket of `capacity` (burst
//! `capacity_burst`) and a cap of `max_concurrency` requests in flight.
//! Everything that reaches the backend takes from it, so the backend never
//! sees more than capacity + burst in a second nor more than
//! max_concurrency at once.

mod gcra;
mod shape;

use crate::cluster::bucket::Share as FleetShare;
use crate::cluster::Cluster;
use crate::config::{Rate, Scope, UpstreamConfig};
use arc_swap::ArcSwap;
use shape::{RateNow, Shape};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    pub capacity: Option<Rate>,
    pub capacity_burst: u32,
    pub max_concurrency: u32,
    /// `Global`: `capacity` is the fleet's, drawn through the cluster.
    pub scope: Scope,
}

impl From<&UpstreamConfig> for BudgetSpec {
    fn from(u: &UpstreamConfig) -> Self {
        BudgetSpec {
            capacity: u.capacity,
            capacity_burst: u.capacity_burst,
            max_concurrency: u.max_concurrency,
            scope: u.scope,
        }
    }
}

/// Why a slot and token aren't to be had right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    /// Try again after this long.
    Busy(Duration),
    /// Only the cluster store can say: ask it ([`Budget::acquire`]).
    AskStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// No budget came free before the deadline; `retry_after` is a hint
    /// for the client.
    #[error("upstream budget spent (retry after {retry_after:?})")]
    Exhausted { retry_after: Duration },
}

/// Held while a request is in flight to the backend.
pub struct BudgetPermit {
    slot: Option<OwnedSemaphorePermit>,
    /// Slots owed after a reload lowered `max_concurrency` while they
    /// were in use: a returning permit pays one off instead of coming back.
    debt: Arc<AtomicUsize>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let paid = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                .is_ok();
            if paid {
                slot.forget();
            }
        }
    }
}

pub struct Budget {
    cluster: Option<Arc<Cluster>>,
    shape: ArcSwap<Shape>,
    slots: Arc<Semaphore>,
    debt: Arc<AtomicUsize>,
    /// Serialises resizes (the slot arithmetic is read-modify-write).
    resizing: std::sync::Mutex<()>,
}

impl Budget {
    pub fn new(spec: BudgetSpec) -> Budget {
        Self::new_in(spec, None)
    }

    /// A budget whose `scope = "global"` capacity is drawn from `cluster`.
    pub fn new_in(spec: BudgetSpec, cluster: Option<Arc<Cluster>>) -> Budget {
        Budget {
            slots: Arc::new(Semaphore::new(spec.max_concurrency as usize)),
            debt: Arc::new(AtomicUsize::new(0)),
            shape: ArcSwap::from_pointee(Shape::new(spec, None, cluster.as_ref())),
            cluster,
            resizing: std::sync::Mutex::new(()),
        }
    }

    pub fn spec(&self) -> BudgetSpec {
        self.shape.load().spec.clone()
    }

    /// Takes new limits in place (reload): requests in flight keep their
    /// slots and still count, and the rate bucket keeps its state, so the
    /// change never lets more through than either the old or new limits.
    pub fn resize(&self, spec: BudgetSpec) {
        let _one = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.shape.load_full();
        if old.spec == spec {
            return;
        }
        let (from, to) = (old.spec.max_concurrency as usize, spec.max_concurrency as usize);
        if to > from {
            let grow = to - from;
            // Cancel debt first: those slots were never given back.
            let mut paid = 0;
            let _ = self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                paid = d.min(grow);
                Some(d - paid)
            });
            self.slots.add_permits(grow - paid);
        } else if to < from {
            let shrink = from - to;
            let forgotten = self.slots.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        self.shape
            .store(Arc::new(Shape::new(spec, Some(&old), self.cluster.as_ref())));
    }

    /// Requests in flight through this budget.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        (self.shape.load().spec.max_concurrency as usize).saturating_sub(self.slots.available_permits())
    }

    /// Takes a slot and a token for a live request, waiting for them until
    /// `deadline`.
    pub async fn acquire(self: Arc<Self>, deadline: Instant) -> Result<BudgetPermit, BudgetError> {
        self.acquire_ref(deadline).await
    }

    async fn acquire_ref(&self, deadline: Instant) -> Result<BudgetPermit, BudgetError> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                // Closed never happens (we never close it); treat it like
                // a timeout rather than panic.
                _ => {
                    return Err(BudgetError::Exhausted {
                        retry_after: Duration::from_secs(1),
                    })
                }
            },
        };
        let shape = self.shape.load_full();
        loop {
            match shape.take_rate(FleetShare::Live).await {
                Ok(()) => break,
                Err(wait) => {
                    if Instant::now() + wait > deadline {
                        return Err(BudgetError::Exhausted { retry_after: wait });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(self.permit(slot))
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> BudgetPermit {
        BudgetPermit {
            slot: Some(slot),
            debt: self.debt.clone(),
        }
    }

    /// Takes a slot and a token only if both are free right now.
    #[cfg(test)]
    pub fn try_acquire(&self) -> Option<BudgetPermit> {
        self.try_acquire_live().ok()
    }

    /// For a live request: takes a slot and a token if both are free right
    /// now; otherwise says how long until one might be.
    pub fn try_acquire_live(&self) -> Result<BudgetPermit, NotNow> {
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotNow::Busy(Duration::from_secs(1)))?;
        let permit = self.permit(slot);
        match self.shape.load().rate_now(FleetShare::Live) {
            RateNow::Took => Ok(permit),
            RateNow::Wait(wait) => Err(NotNow::Busy(wait)),
            RateNow::AskStore => Err(NotNow::AskStore),
        }
    }

    /// For replay: takes a slot and a token only if live traffic would
    /// still find its reserve of both; otherwise says how long to wait
    /// before asking again.
    pub fn try_acquire_replay(&self) -> Result<BudgetPermit, NotNow> {
        let shape = self.shape.load();
        let permit = self.replay_slot(&shape).map_err(NotNow::Busy)?;
        match shape.rate_now(shape.replay_share()) {
            RateNow::Took => Ok(permit),
            RateNow::Wait(wait) => Err(NotNow::Busy(wait)),
            RateNow::AskStore => Err(NotNow::AskStore),
        }
    }

    /// A slot for replay, if live traffic would still find its reserve.
    fn replay_slot(&self, shape: &Shape) -> Result<BudgetPermit, Duration> {
        if self.slots.available_permits() <= shape.replay_slot_reserve {
            return Err(Duration::from_millis(5));
        }
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Duration::from_millis(5))?;
        Ok(self.permit(slot))
    }

    /// Waits (sleeping, not spinning) until replay may send one, asking
    /// the cluster store when only it can say.
    pub async fn acquire_replay(self: Arc<Self>) -> BudgetPermit {
        loop {
            let wait = match self.try_acquire_replay() {
                Ok(p) => return p,
                Err(NotNow::Busy(wait)) => wait,
                Err(NotNow::AskStore) => {
                    let shape = self.shape.load_full();
                    match self.replay_slot(&shape) {
                        Ok(permit) => match shape.take_rate(shape.replay_share()).await {
                            Ok(()) => return permit,
                            Err(wait) => wait,
                        },
                        Err(wait) => wait,
                    }
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::parse_rate;

    #[tokio::test]
    async fn concurrency_cap_sheds_at_the_deadline() {
        let b = Budget::new(BudgetSpec {
            capacity: None,
            capacity_burst: 1,
            max_concurrency: 2,
            scope: Scope::Local,
        });
        let now = Instant::now();
        let p1 = b.acquire_ref(now).await.unwrap();
        let _p2 = b.acquire_ref(now).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        assert!(b.acquire_ref(Instant::now()).await.is_err());
        assert!(b.try_acquire().is_none());
        drop(p1);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn replay_leaves_live_its_reserve() {
        let b = Budget::new(BudgetSpec {
            capacity: Some(parse_rate("10/s").unwrap()),
            capacity_burst: 4,
            max_concurrency: 100,
            scope: Scope::Local,
        });
        // Replay may take the bucket down to half its burst, no further.
        let mut held = Vec::new();
        held.push(b.try_acquire_replay().unwrap());
        held.push(b.try_acquire_replay().unwrap());
        let wait = b
            .try_acquire_replay()
            .err()
            .expect("reserve of 2 tokens is left for live");
        assert_eq!(wait, NotNow::Busy(Duration::from_millis(100)));
        // Live can still take the reserve.
        held.push(b.try_acquire().unwrap());
        held.push(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_millis(300)).await;
        held.push(b.try_acquire_replay().unwrap());
        assert!(b.try_acquire_replay().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn replay_leaves_concurrency_slots_for_live() {
        let b = Budget::new(BudgetSpec {
            capacity: None,
            capacity_burst: 1,
            max_concurrency: 16,
            scope: Scope::Local,
        });
        let mut held = Vec::new();
        while let Ok(p) = b.try_acquire_replay() {
            held.push(p);
        }
        assert_eq!(held.len(), 14, "replay leaves 16/8 = 2 slots");
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_keeps_in_flight_slots_counted_and_the_bucket_state() {
        let spec = |conc, cap: &str, burst| BudgetSpec {
            capacity: Some(parse_rate(cap).unwrap()),
            capacity_burst: burst,
            max_concurrency: conc,
            scope: Scope::Local,
        };
        let b = Budget::new(spec(4, "10/s", 4));
        let held: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
        // Shrink to 2 while 4 are in flight: nothing new until two return.
        b.resize(spec(2, "10/s", 4));
        assert!(b.try_acquire().is_none());
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert!(b.try_acquire().is_none(), "the first two returns pay the debt");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(held.next());
        let p = b.try_acquire().expect("one slot of the new two");
        drop(p);
        // Growing back cancels no more debt than is owed.
        b.resize(spec(6, "10/s", 4));
        let more: Vec<_> = (0..5).filter_map(|_| b.try_acquire()).collect();
        // Five slots are free (one of the first four is still held), but
        // the bucket refilled to 4 and one token went to `p`: 3 left.
        assert_eq!(more.len(), 3, "the bucket limits it now, not slots");
        // A new rate continues the old bucket: the burst was just spent,
        // so a reload doesn't refill it.
        b.resize(spec(6, "20/s", 4));
        assert!(b.try_acquire().is_none(), "no fresh burst from a reload");
    }

    #[tokio::test]
    async fn rate_cap_allows_burst_then_sheds() {
        let b = Budget::new(BudgetSpec {
            capacity: Some(parse_rate("10/s").unwrap()),
            capacity_burst: 3,
            max_concurrency: 100,
            scope: Scope::Local,
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(b.acquire_ref(Instant::now()).await.unwrap());
        }
        match b.acquire_ref(Instant::now()).await {
            Err(BudgetError::Exhausted { retry_after }) => assert!(retry_after <= Duration::from_millis(100)),
            Ok(_) => panic!("fourth token within the same instant must not be granted"),
        }
        // A deadline past the next token's arrival waits for it.
        let start = Instant::now();
        b.acquire_ref(start + Duration::from_millis(500)).await.unwrap();
        assert!(start.elapsed() <= Duration::from_millis(400));
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;
    use crate::cluster::HEARTBEAT_EVERY;
    use crate::config::units::parse_rate;
    use crate::config::OnStoreError;
    use crate::config::{ClusterConfig, RedisUrl};
    use crate::metrics::Metrics;
    use crate::shutdown::Shutdown;

    #[tokio::test]
    async fn a_fleet_budget_with_the_store_down_follows_on_store_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = ClusterConfig {
            redis_url: Some(RedisUrl::new(format!("redis://127.0.0.1:{port}"))),
            replicas: Some(2),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::start(&cfg, &Metrics::new(), Shutdown::new())
            .await
            .unwrap()
            .unwrap();
        let b = Budget::new_in(
            BudgetSpec {
                capacity: Some(parse_rate("1/m").unwrap()),
                capacity_burst: 8,
                max_concurrency: 100,
                scope: Scope::Global,
            },
            Some(cluster.clone()),
        );
        // local: half the burst each for two replicas; replay leaves live
        // half of that.
        let mut held = Vec::new();
        while let Ok(p) = b.try_acquire_replay() {
            held.push(p);
        }
        assert_eq!(held.len(), 2, "replay takes 4 - a reserve of 2");
        while let Ok(p) = b.try_acquire_live() {
            held.push(p);
        }
        assert_eq!(held.len(), 4, "the fleet's 8 ÷ 2 replicas");
        cfg.on_store_error = OnStoreError::Reject;
        cluster.reconfigure(&cfg);
        assert_eq!(b.try_acquire_live().err(), Some(NotNow::Busy(HEARTBEAT_EVERY)));
        cfg.on_store_error = OnStoreError::Allow;
        cluster.reconfigure(&cfg);
        assert!(b.try_acquire_live().is_ok());
    }
}
