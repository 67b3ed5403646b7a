//! How soon a queued request will be delivered: the records ahead of it in
//! its partition (itself included) ÷ that partition's deliveries per second
//! over the last 10 s (over the last 30 s when the last 10 had none; no
//! estimate without a delivery in the last 30 s). Deliveries are counted
//! in 100 ms slots, so the estimate costs a few counters per partition and
//! nothing per request beyond one lock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const SLOT: Duration = Duration::from_millis(100);
/// 30 s of slots.
const SLOTS: usize = 300;
const RECENT: Duration = Duration::from_secs(10);
const LONGEST: Duration = Duration::from_secs(30);

/// One partition's deliveries.
struct Window {
    counts: [u32; SLOTS],
    /// The slot number (since `epoch`) each entry counts for.
    slot_of: [u64; SLOTS],
    /// Start of the current run of deliveries (none more than 30 s apart):
    /// a window not yet full is measured over the time it covers.
    run_since: Option<Instant>,
    last: Option<Instant>,
}

pub struct DeliveryRates {
    epoch: Instant,
    partitions: Vec<Mutex<Window>>,
}

impl DeliveryRates {
    pub fn new(partitions: u32) -> DeliveryRates {
        DeliveryRates {
            epoch: Instant::now(),
            partitions: (0..partitions)
                .map(|_| {
                    Mutex::new(Window {
                        counts: [0; SLOTS],
                        slot_of: [u64::MAX; SLOTS],
                        run_since: None,
                        last: None,
                    })
                })
                .collect(),
        }
    }

    fn slot(&self, at: Instant) -> u64 {
        (at.duration_since(self.epoch).as_millis() / SLOT.as_millis()) as u64
    }

    /// Counts one delivery from `partition` now.
    pub fn delivered(&self, partition: u32) {
        self.delivered_at(partition, Instant::now(), 1);
    }

    /// Counts `n` deliveries from `partition` now (learnt all at once, as
    /// from a poll of a shared log).
    pub fn delivered_n(&self, partition: u32, n: u32) {
        if n > 0 {
            self.delivered_at(partition, Instant::now(), n);
        }
    }

    fn delivered_at(&self, partition: u32, at: Instant, count: u32) {
        let Some(w) = self.partitions.get(partition as usize) else {
            return;
        };
        let mut w = w.lock().unwrap_or_else(|p| p.into_inner());
        if w.last.is_none_or(|l| at.saturating_duration_since(l) > LONGEST) {
            w.run_since = Some(at);
        }
        w.last = Some(at);
        let n = self.slot(at);
        let i = (n % SLOTS as u64) as usize;
        if w.slot_of[i] != n {
            w.slot_of[i] = n;
            w.counts[i] = 0;
        }
        w.counts[i] = w.counts[i].saturating_add(count);
    }

    /// Deliveries per second from `partition` lately; `None` without one in
    /// the last 30 s.
    fn rate(&self, partition: u32) -> Option<f64> {
        self.rate_at(partition, Instant::now())
    }

    fn rate_at(&self, partition: u32, now: Instant) -> Option<f64> {
        let w = self
            .partitions
            .get(partition as usize)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let run_since = w.run_since?;
        let now_slot = self.slot(now);
        // Both windows' counts in one pass over the slots.
        let recent_slots = (RECENT.as_millis() / SLOT.as_millis()) as u64;
        let (mut recent, mut longest) = (0u64, 0u64);
        for i in 0..SLOTS {
            if w.slot_of[i] == u64::MAX {
                continue;
            }
            let age = now_slot.saturating_sub(w.slot_of[i]);
            if age < SLOTS as u64 {
                longest += u64::from(w.counts[i]);
                if age < recent_slots {
                    recent += u64::from(w.counts[i]);
                }
            }
        }
        for (span, n) in [(RECENT, recent), (LONGEST, longest)] {
            if n > 0 {
                // A run younger than the window is measured over its age,
                // but over a second at least: a first delivery or two say
                // little about the pace (and a short span would promise
                // far too soon).
                let covered = now
                    .saturating_duration_since(run_since)
                    .max(Duration::from_secs(1))
                    .min(span);
                return Some(n as f64 / covered.as_secs_f64());
            }
        }
        None
    }

    /// When a request with `ahead` records before it in `partition` will
    /// likely be delivered, from now.
    pub fn eta(&self, partition: u32, ahead: u64) -> Option<Duration> {
        let rate = self.rate(partition)?;
        Some(Duration::from_secs_f64((ahead + 1) as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_gives_ahead_over_rate() {
        let r = DeliveryRates::new(2);
        let t0 = r.epoch;
        // 20 a second for 12 s on partition 0.
        for i in 0..240u64 {
            r.delivered_at(0, t0 + Duration::from_millis(i * 50), 1);
        }
        let now = t0 + Duration::from_millis(12_000);
        let rate = r.rate_at(0, now).unwrap();
        assert!((rate - 20.0).abs() < 1.0, "{rate}");
        assert_eq!(r.rate_at(1, now), None, "another partition has its own");
    }

    #[test]
    fn a_young_run_is_measured_over_its_age_and_an_old_one_forgotten() {
        let r = DeliveryRates::new(1);
        let t0 = r.epoch;
        // 10 a second for 2 s: the rate is 10, not 2 (20 over a 10 s window).
        for i in 0..20u64 {
            r.delivered_at(0, t0 + Duration::from_millis(i * 100), 1);
        }
        let rate = r.rate_at(0, t0 + Duration::from_millis(2000)).unwrap();
        assert!((rate - 10.0).abs() < 1.5, "{rate}");
        // One delivery says little: measured over a second, not 100 ms.
        let one = DeliveryRates::new(1);
        one.delivered_at(0, one.epoch + Duration::from_millis(50), 1);
        let rate = one.rate_at(0, one.epoch + Duration::from_millis(60)).unwrap();
        assert!(rate <= 1.0, "{rate}");
        // 20 s later: nothing in the last 10 s, 20 in the last 30 s.
        let rate = r.rate_at(0, t0 + Duration::from_secs(22)).unwrap();
        assert!((rate - 20.0 / 22.0).abs() < 0.2, "{rate}");
        assert_eq!(r.rate_at(0, t0 + Duration::from_secs(40)), None, "none in 30 s");
    }
}
