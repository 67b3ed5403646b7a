//! The upstream budget: a token bucket of `capacity` (burst
//! `capacity_burst`) and a cap of `max_concurrency` requests in flight.
//! Everything that reaches the backend takes from it, so the backend never
//! sees more than capacity + burst in a second nor more than
//! max_concurrency at once.

use crate::admission::divided;
use crate::cluster::bucket::{Share as FleetShare, SharedBucket, Take};
use crate::cluster::{Cluster, HEARTBEAT_EVERY};
use crate::config::{OnStoreError, Rate, Scope, UpstreamConfig};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// A GCRA token bucket on tokio's clock (so tests can pause time), with
/// one thing governor's lacks: taking a token only if at least `reserve`
/// remain afterwards. That is how replay leaves live traffic its share.
struct Gcra {
    epoch: Instant,
    /// Emission interval: one token per `t_ns`.
    t_ns: u64,
    /// Burst tolerance: (burst - 1) intervals.
    tau_ns: u64,
    /// Theoretical arrival time, ns since `epoch`.
    tat: AtomicU64,
}

impl Gcra {
    fn new(rate: Rate, burst: u32) -> Gcra {
        let t_ns = (rate.interval().as_nanos() as u64).max(1);
        Gcra {
            epoch: Instant::now(),
            t_ns,
            tau_ns: t_ns * u64::from(burst.max(1) - 1),
            tat: AtomicU64::new(0),
        }
    }

    /// A bucket with new parameters that continues this one's state, so a
    /// reload hands out no fresh burst.
    fn successor(&self, rate: Rate, burst: u32) -> Gcra {
        let next = Gcra::new(rate, burst);
        let tat = self.tat.load(Ordering::Acquire);
        // Re-express the theoretical arrival time on the new epoch.
        let shifted = (self.epoch + Duration::from_nanos(tat)).saturating_duration_since(next.epoch);
        next.tat.store(shifted.as_nanos() as u64, Ordering::Release);
        next
    }

    /// Takes one token if `reserve` tokens remain after it; otherwise how
    /// long until that would be true.
    fn try_take(&self, reserve: u32) -> Result<(), Duration> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let new_tat = tat.max(now) + self.t_ns;
            let allow_at = (new_tat + u64::from(reserve) * self.t_ns).saturating_sub(self.t_ns + self.tau_ns);
            if now < allow_at {
                return Err(Duration::from_nanos(allow_at - now));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// The parts of the budget a reload replaces together.
struct Shape {
    spec: BudgetSpec,
    rate: Option<Gcra>,
    /// `upstream.scope = "global"`: the fleet's bucket, asked instead of
    /// `rate`.
    fleet: Option<Arc<SharedBucket>>,
    /// The fleet bucket's `local` fallback, for the divisor it was built at.
    fallback: std::sync::Mutex<Option<(u32, Arc<Gcra>)>>,
    /// Tokens and slots replay must leave untouched for live requests.
    replay_token_reserve: u32,
    replay_slot_reserve: usize,
}

/// What the rate part says without waiting.
enum RateNow {
    Took,
    Wait(Duration),
    AskStore,
}

impl Shape {
    fn new(spec: BudgetSpec, previous: Option<&Shape>, cluster: Option<&Arc<Cluster>>) -> Shape {
        let rate = spec.capacity.map(|c| match previous.and_then(|p| p.rate.as_ref()) {
            Some(old) => old.successor(c, spec.capacity_burst),
            None => Gcra::new(c, spec.capacity_burst),
        });
        let fleet = match (spec.scope, spec.capacity, cluster) {
            (Scope::Global, Some(capacity), Some(cluster)) => Some(
                previous
                    .filter(|p| p.spec.capacity == spec.capacity && p.spec.capacity_burst == spec.capacity_burst)
                    .and_then(|p| p.fleet.clone())
                    .unwrap_or_else(|| {
                        Arc::new(SharedBucket::new(
                            cluster.clone(),
                            "upstream",
                            format!("{}:upstream", cluster.namespace()),
                            capacity,
                            spec.capacity_burst,
                        ))
                    }),
            ),
            _ => None,
        };
        Shape {
            rate,
            fleet,
            fallback: std::sync::Mutex::new(None),
            replay_token_reserve: spec.capacity_burst / 2,
            replay_slot_reserve: spec.max_concurrency as usize / 8,
            spec,
        }
    }

    fn reserve(&self, share: FleetShare) -> u32 {
        match share {
            FleetShare::Live => 0,
            FleetShare::Replay { .. } => self.replay_token_reserve,
        }
    }

    fn replay_share(&self) -> FleetShare {
        FleetShare::Replay {
            reserve: self.replay_token_reserve,
        }
    }

    /// A token now, if this replica can tell without the store.
    fn rate_now(&self, share: FleetShare) -> RateNow {
        let Some(fleet) = &self.fleet else {
            return match &self.rate {
                None => RateNow::Took,
                Some(g) => match g.try_take(self.reserve(share)) {
                    Ok(()) => RateNow::Took,
                    Err(wait) => RateNow::Wait(wait),
                },
            };
        };
        if !fleet.cluster().is_up() {
            return self.fallback(fleet, share);
        }
        match fleet.try_take_leased(share) {
            Some(Take::Granted { .. }) => RateNow::Took,
            Some(Take::Limited { wait }) => RateNow::Wait(wait),
            None => RateNow::AskStore,
        }
    }

    /// A token, asking the store if need be (at most `cluster.timeout`).
    async fn take_rate(&self, share: FleetShare) -> Result<(), Duration> {
        match self.rate_now(share) {
            RateNow::Took => Ok(()),
            RateNow::Wait(wait) => Err(wait),
            RateNow::AskStore => {
                let Some(fleet) = &self.fleet else { return Ok(()) };
                let asked = tokio::time::timeout(fleet.cluster().timeout(), fleet.take_leased(share)).await;
                match asked {
                    Ok(Ok(Take::Granted { .. })) => Ok(()),
                    Ok(Ok(Take::Limited { wait })) => Err(wait),
                    // Up, but no answer in time for this request: over the
                    // limit for now (see `GlobalLimit::check`).
                    _ if fleet.cluster().is_up() => Err(fleet.cluster().timeout()),
                    _ => match self.fallback(fleet, share) {
                        RateNow::Took => Ok(()),
                        RateNow::Wait(wait) => Err(wait),
                        RateNow::AskStore => Err(HEARTBEAT_EVERY),
                    },
                }
            }
        }
    }

    /// The store can't be asked: `cluster.on_store_error` decides.
    fn fallback(&self, fleet: &SharedBucket, share: FleetShare) -> RateNow {
        let cluster = fleet.cluster();
        cluster.note_fallback_decision();
        match cluster.on_store_error() {
            OnStoreError::Allow => RateNow::Took,
            OnStoreError::Reject => RateNow::Wait(HEARTBEAT_EVERY),
            OnStoreError::Local => {
                let n = cluster.divisor();
                let local = {
                    let mut slot = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
                    match &*slot {
                        Some((d, g)) if *d == n => g.clone(),
                        _ => {
                            let capacity = self.spec.capacity.expect("a fleet budget has a capacity");
                            let g = Arc::new(Gcra::new(divided(capacity, n), self.spec.capacity_burst.div_ceil(n)));
                            *slot = Some((n, g.clone()));
                            g
                        }
                    }
                };
                // The reserve shrinks with the burst it is part of.
                match local.try_take(self.reserve(share).div_ceil(n)) {
                    Ok(()) => RateNow::Took,
                    Err(wait) => RateNow::Wait(wait),
                }
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
    use crate::config::units::parse_rate;
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
