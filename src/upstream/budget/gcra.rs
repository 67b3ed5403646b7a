//! The capacity bucket of one process: GCRA on tokio's clock, with a
//! reserve.

use crate::config::Rate;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A GCRA token bucket on tokio's clock (so tests can pause time), with
/// one thing governor's lacks: taking a token only if at least `reserve`
/// remain afterwards. That is how replay leaves live traffic its share.
pub(super) struct Gcra {
    epoch: Instant,
    /// Emission interval: one token per `t_ns`.
    t_ns: u64,
    /// Burst tolerance: (burst - 1) intervals.
    tau_ns: u64,
    /// Theoretical arrival time, ns since `epoch`.
    tat: AtomicU64,
}

impl Gcra {
    pub(super) fn new(rate: Rate, burst: u32) -> Gcra {
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
    pub(super) fn successor(&self, rate: Rate, burst: u32) -> Gcra {
        let next = Gcra::new(rate, burst);
        let tat = self.tat.load(Ordering::Acquire);
        // Re-express the theoretical arrival time on the new epoch.
        let shifted = (self.epoch + Duration::from_nanos(tat)).saturating_duration_since(next.epoch);
        next.tat.store(shifted.as_nanos() as u64, Ordering::Release);
        next
    }

    /// Takes one token if `reserve` tokens remain after it; otherwise how
    /// long until that would be true.
    pub(super) fn try_take(&self, reserve: u32) -> Result<(), Duration> {
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
