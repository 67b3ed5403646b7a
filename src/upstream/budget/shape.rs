//! The rate part of the budget as one reload installs it: this process's
//! bucket, or the fleet's (`upstream.scope = "global"`) with its fallback
//! while the cluster store is down.

use super::gcra::Gcra;
use super::BudgetSpec;
use crate::admission::divided;
use crate::cluster::bucket::{Share as FleetShare, SharedBucket, Take};
use crate::cluster::{Cluster, HEARTBEAT_EVERY};
use crate::config::{OnStoreError, Scope};
use std::sync::Arc;
use std::time::Duration;

/// The parts of the budget a reload replaces together.
pub(super) struct Shape {
    pub(super) spec: BudgetSpec,
    rate: Option<Gcra>,
    /// `upstream.scope = "global"`: the fleet's bucket, asked instead of
    /// `rate`.
    fleet: Option<Arc<SharedBucket>>,
    /// The fleet bucket's `local` fallback, for the divisor it was built at.
    fallback: std::sync::Mutex<Option<(u32, Arc<Gcra>)>>,
    /// Tokens and slots replay must leave untouched for live requests.
    replay_token_reserve: u32,
    pub(super) replay_slot_reserve: usize,
}

/// What the rate part says without waiting.
pub(super) enum RateNow {
    Took,
    Wait(Duration),
    AskStore,
}

impl Shape {
    pub(super) fn new(spec: BudgetSpec, previous: Option<&Shape>, cluster: Option<&Arc<Cluster>>) -> Shape {
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

    pub(super) fn replay_share(&self) -> FleetShare {
        FleetShare::Replay {
            reserve: self.replay_token_reserve,
        }
    }

    /// A token now, if this replica can tell without the store.
    pub(super) fn rate_now(&self, share: FleetShare) -> RateNow {
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
    pub(super) async fn take_rate(&self, share: FleetShare) -> Result<(), Duration> {
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
