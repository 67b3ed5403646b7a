//! The adaptive replay limit: how many replayed requests may be in flight,
//! discovered from the backend's behaviour rather than configured.
//!
//! The algorithm is AIMD driven by latency as well as errors, in the
//! manner of Netflix's concurrency-limits:
//! - every success whose latency stays within `tolerance ×` the baseline
//!   adds `1/limit` (about +1 per round trip of the whole window);
//! - a success slower than that multiplies the limit by 0.9 (the backend
//!   is queueing: we are past its capacity);
//! - a 5xx, 429, timeout or connection error multiplies it by 0.7, and a
//!   `Retry-After` pauses replay for that long.
//!
//! The baseline is the lowest latency seen. It only moves up while the
//! limit is near its minimum: concurrency is then too low for queueing to
//! explain the latency, so the backend itself became slower, and the
//! baseline follows (10% of the gap per sample) instead of pinning the
//! limit at its floor forever. We chose AIMD over Vegas and Gradient2 because its behaviour
//! is easy to predict and test: it needs no estimate of the backend's
//! queue size (Vegas) and no tuning of two smoothing windows (Gradient2),
//! and on a saturated backend it oscillates between the backend's
//! concurrency and twice that, so replay keeps the backend busy (measured
//! in BENCHMARKS.md).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    pub min_limit: f64,
    /// Never above this (the configured `max_concurrency`).
    pub max_limit: f64,
    pub initial: f64,
    /// A latency above `tolerance × baseline` counts as queueing.
    pub tolerance: f64,
}

impl AdaptiveConfig {
    pub fn for_max(max_concurrency: u32) -> AdaptiveConfig {
        let max = f64::from(max_concurrency.max(1));
        AdaptiveConfig {
            min_limit: 1.0,
            max_limit: max,
            initial: 4.0_f64.min(max),
            tolerance: 2.0,
        }
    }
}

/// What one replayed exchange showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success(Duration),
    /// 5xx, 429, timeout, connection error; with the backend's Retry-After.
    Overload {
        retry_after: Option<Duration>,
    },
    /// A 4xx or similar: says nothing about load.
    Ignore,
}

#[derive(Debug)]
struct State {
    limit: f64,
    baseline: Option<Duration>,
    /// Smoothed latency, for the derived rate.
    smoothed: Option<Duration>,
    paused_until: Option<Instant>,
}

pub struct AdaptiveLimit {
    /// `upstream.adaptive`: when off, replay is limited by the budget alone.
    enabled: std::sync::atomic::AtomicBool,
    config: Mutex<AdaptiveConfig>,
    state: Mutex<State>,
    in_flight: AtomicU32,
    freed: Notify,
    concurrency_gauge: prometheus::Gauge,
    rate_gauge: prometheus::Gauge,
}

/// One replayed request's place under the limit; report how it went.
pub struct AdaptivePermit {
    limit: Arc<AdaptiveLimit>,
    reported: bool,
}

impl AdaptivePermit {
    pub fn report(mut self, signal: Signal) {
        self.limit.on_signal(signal);
        self.reported = true;
    }
}

impl Drop for AdaptivePermit {
    fn drop(&mut self) {
        if !self.reported {
            self.limit.on_signal(Signal::Ignore);
        }
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.limit.freed.notify_waiters();
    }
}

impl AdaptiveLimit {
    pub fn new(config: AdaptiveConfig, concurrency_gauge: prometheus::Gauge, rate_gauge: prometheus::Gauge) -> Self {
        concurrency_gauge.set(config.initial);
        rate_gauge.set(0.0);
        AdaptiveLimit {
            enabled: std::sync::atomic::AtomicBool::new(true),
            state: Mutex::new(State {
                limit: config.initial,
                baseline: None,
                smoothed: None,
                paused_until: None,
            }),
            config: Mutex::new(config),
            in_flight: AtomicU32::new(0),
            freed: Notify::new(),
            concurrency_gauge,
            rate_gauge,
        }
    }

    pub fn reconfigure(&self, config: AdaptiveConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.limit = st.limit.clamp(config.min_limit, config.max_limit);
        self.concurrency_gauge.set(st.limit);
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).limit
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes room under the current limit if there is some right now
    /// (and no Retry-After pause is running).
    pub fn try_acquire(self: &Arc<Self>) -> Option<AdaptivePermit> {
        let pause = self.state.lock().unwrap_or_else(|p| p.into_inner()).paused_until;
        if pause.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let limit = self.limit().floor().max(1.0) as u32;
        let took = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur < limit).then_some(cur + 1)
            })
            .is_ok();
        took.then(|| AdaptivePermit {
            limit: self.clone(),
            reported: false,
        })
    }

    /// Waits for room under the current limit (and for any Retry-After
    /// pause to end).
    pub async fn acquire(self: Arc<Self>) -> AdaptivePermit {
        loop {
            let pause = self.state.lock().unwrap_or_else(|p| p.into_inner()).paused_until;
            if let Some(until) = pause {
                if Instant::now() < until {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
            let freed = self.freed.notified();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            // Re-checked on every release (and at least every 100 ms, in
            // case the limit grew without a release).
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
        }
    }

    fn on_signal(&self, signal: Signal) {
        let cfg = *self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match signal {
            Signal::Ignore => return,
            Signal::Overload { retry_after } => {
                st.limit = (st.limit * 0.7).max(cfg.min_limit);
                if let Some(d) = retry_after {
                    st.paused_until = Instant::now().checked_add(d.min(Duration::from_secs(3600)));
                }
            }
            Signal::Success(rtt) => {
                let near_floor = st.limit <= cfg.min_limit * 2.0;
                let baseline = match st.baseline {
                    None => rtt,
                    Some(b) if rtt < b => rtt,
                    Some(b) if near_floor => b + (rtt - b) / 10,
                    Some(b) => b,
                };
                st.baseline = Some(baseline);
                st.smoothed = Some(match st.smoothed {
                    None => rtt,
                    Some(s) => s.mul_f64(0.9) + rtt.mul_f64(0.1),
                });
                if rtt.as_secs_f64() > baseline.as_secs_f64() * cfg.tolerance {
                    st.limit = (st.limit * 0.9).max(cfg.min_limit);
                } else {
                    st.limit = (st.limit + 1.0 / st.limit).min(cfg.max_limit);
                }
            }
        }
        self.concurrency_gauge.set(st.limit);
        if let Some(s) = st.smoothed {
            if !s.is_zero() {
                self.rate_gauge.set(st.limit / s.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32) -> Arc<AdaptiveLimit> {
        Arc::new(AdaptiveLimit::new(
            AdaptiveConfig::for_max(max),
            prometheus::Gauge::new("c", "c").unwrap(),
            prometheus::Gauge::new("r", "r").unwrap(),
        ))
    }

    /// A backend with `workers` parallel slots of `service` time each: the
    /// latency a request sees at `in_flight` concurrency.
    fn latency(in_flight: f64, workers: f64, service: Duration) -> Duration {
        service.mul_f64((in_flight / workers).max(1.0))
    }

    #[test]
    fn grows_while_fast_and_settles_near_the_backends_concurrency() {
        let l = limit(256);
        let service = Duration::from_millis(20);
        for _ in 0..5000 {
            let cur = l.limit().floor();
            l.on_signal(Signal::Success(latency(cur, 16.0, service)));
        }
        let settled = l.limit();
        assert!((16.0..=36.0).contains(&settled), "settled at {settled}");
        // The backend halves: the limit follows it down.
        for _ in 0..5000 {
            let cur = l.limit().floor();
            l.on_signal(Signal::Success(latency(cur, 8.0, service)));
        }
        let halved = l.limit();
        assert!((8.0..=18.0).contains(&halved), "after halving: {halved}");
        // And back up when the capacity returns.
        for _ in 0..5000 {
            let cur = l.limit().floor();
            l.on_signal(Signal::Success(latency(cur, 16.0, service)));
        }
        assert!(l.limit() >= 16.0, "recovered to {}", l.limit());
    }

    #[test]
    fn a_backend_that_really_became_slower_is_not_starved() {
        let l = limit(256);
        for _ in 0..3000 {
            let cur = l.limit().floor();
            l.on_signal(Signal::Success(latency(cur, 16.0, Duration::from_millis(10))));
        }
        // Every request now takes three times as long, at any concurrency.
        for _ in 0..20_000 {
            let cur = l.limit().floor();
            l.on_signal(Signal::Success(latency(cur, 16.0, Duration::from_millis(30))));
        }
        assert!(l.limit() >= 16.0, "limit {} stayed starved", l.limit());
    }

    #[test]
    fn overload_cuts_and_never_leaves_the_bounds() {
        let l = limit(10);
        for _ in 0..1000 {
            l.on_signal(Signal::Success(Duration::from_millis(1)));
        }
        assert_eq!(l.limit(), 10.0, "capped at max_concurrency");
        l.on_signal(Signal::Overload { retry_after: None });
        assert!((l.limit() - 7.0).abs() < 1e-9);
        for _ in 0..100 {
            l.on_signal(Signal::Overload { retry_after: None });
        }
        assert_eq!(l.limit(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_and_permits_respect_the_limit() {
        let l = limit(2);
        let a = l.clone().acquire().await;
        let b = l.clone().acquire().await;
        assert_eq!(l.in_flight(), 2);
        assert!(tokio::time::timeout(Duration::from_millis(50), l.clone().acquire())
            .await
            .is_err());
        a.report(Signal::Overload {
            retry_after: Some(Duration::from_secs(3)),
        });
        drop(b);
        let start = Instant::now();
        let _c = l.clone().acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(3), "Retry-After is honoured");
    }
}
