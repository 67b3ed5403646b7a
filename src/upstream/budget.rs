//! The upstream budget: a token bucket of `capacity` (burst
//! `capacity_burst`) and a cap of `max_concurrency` requests in flight.
//! Everything that reaches the backend takes from it, so the backend never
//! sees more than capacity + burst in a second nor more than
//! max_concurrency at once.

use crate::config::{Rate, UpstreamConfig};
use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    pub capacity: Option<Rate>,
    pub capacity_burst: u32,
    pub max_concurrency: u32,
}

impl From<&UpstreamConfig> for BudgetSpec {
    fn from(u: &UpstreamConfig) -> Self {
        BudgetSpec {
            capacity: u.capacity,
            capacity_burst: u.capacity_burst,
            max_concurrency: u.max_concurrency,
        }
    }
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
    _slot: OwnedSemaphorePermit,
}

pub struct Budget {
    spec: BudgetSpec,
    rate: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
    slots: Arc<Semaphore>,
}

impl Budget {
    pub fn new(spec: BudgetSpec) -> Budget {
        let rate = spec.capacity.map(|c| {
            let quota = Quota::with_period(c.interval().max(Duration::from_nanos(1)))
                .expect("non-zero period")
                .allow_burst(NonZeroU32::new(spec.capacity_burst.max(1)).expect("burst >= 1"));
            RateLimiter::direct(quota)
        });
        Budget {
            slots: Arc::new(Semaphore::new(spec.max_concurrency as usize)),
            rate,
            spec,
        }
    }

    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    /// Requests in flight through this budget.
    pub fn in_flight(&self) -> usize {
        (self.spec.max_concurrency as usize).saturating_sub(self.slots.available_permits())
    }

    /// Takes a slot and a token, waiting for them until `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Result<BudgetPermit, BudgetError> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    // Closed never happens (we never close it); treat like
                    // a timeout rather than panic.
                    _ => {
                        return Err(BudgetError::Exhausted {
                            retry_after: Duration::from_secs(1),
                        })
                    }
                }
            }
        };
        if let Some(rate) = &self.rate {
            loop {
                match rate.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        if Instant::now() + wait > deadline {
                            return Err(BudgetError::Exhausted { retry_after: wait });
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(BudgetPermit { _slot: slot })
    }

    /// Takes a slot and a token only if both are free right now.
    pub fn try_acquire(&self) -> Option<BudgetPermit> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        if let Some(rate) = &self.rate {
            rate.check().ok()?;
        }
        Some(BudgetPermit { _slot: slot })
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
        });
        let now = Instant::now();
        let p1 = b.acquire(now).await.unwrap();
        let _p2 = b.acquire(now).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        assert!(b.acquire(Instant::now()).await.is_err());
        assert!(b.try_acquire().is_none());
        drop(p1);
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test]
    async fn rate_cap_allows_burst_then_sheds() {
        let b = Budget::new(BudgetSpec {
            capacity: Some(parse_rate("10/s").unwrap()),
            capacity_burst: 3,
            max_concurrency: 100,
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(b.acquire(Instant::now()).await.unwrap());
        }
        match b.acquire(Instant::now()).await {
            Err(BudgetError::Exhausted { retry_after }) => assert!(retry_after <= Duration::from_millis(100)),
            Ok(_) => panic!("fourth token within the same instant must not be granted"),
        }
        // A deadline past the next token's arrival waits for it.
        let start = Instant::now();
        b.acquire(start + Duration::from_millis(500)).await.unwrap();
        assert!(start.elapsed() <= Duration::from_millis(400));
    }
}
