//! The circuit breaker: consecutive upstream failures (connection errors,
//! timeouts, 502/503/504 — live, or a replayed record's *first* attempt)
//! open it; while open, live requests don't reach the backend (spoolable
//! ones are spooled, others get 503) and replay pauses; after `cooldown` it
//! lets `probes` requests through (half-open) and closes on their success,
//! or opens again.
//!
//! A few spooled records that a healthy backend always refuses must not
//! keep live traffic out. So a replayed record's retries never count
//! toward opening it (a poison record would otherwise open it again and
//! again), and in half-open the probe belongs to live traffic: replay
//! probes only when no live request came within `cooldown`. Live traffic
//! to a healthy backend is then refused for at most one cooldown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// 0 disables the breaker.
    pub failures: u32,
    pub cooldown: Duration,
    pub probes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, since: Instant },
}

/// Who is asking: live traffic, or the drainer replaying the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Live,
    Replay,
}

/// What the breaker says about sending one request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Pass,
    /// Send it as a half-open probe: report its result with `probe = true`.
    Probe,
    /// Don't send it; the breaker is open for about this long.
    Refuse { retry_after: Duration },
}

/// How an exchange with the backend went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Failed,
}

impl Health {
    /// Connection errors, timeouts and 502/503/504 count as failures; other
    /// statuses (a 500 or 4xx is the backend answering) do not.
    pub fn of(status: Option<u16>) -> Health {
        match status {
            None | Some(502..=504) => Health::Failed,
            Some(_) => Health::Ok,
        }
    }
}

pub struct Breaker {
    config: Mutex<BreakerConfig>,
    state: Mutex<State>,
    consecutive: AtomicU32,
    gauge: prometheus::IntGauge,
    /// When the last live request asked (ms since `born`; 0 = never).
    last_live_ms: std::sync::atomic::AtomicU64,
    born: Instant,
}

impl Breaker {
    pub fn new(config: BreakerConfig, gauge: prometheus::IntGauge) -> Breaker {
        gauge.set(0);
        Breaker {
            config: Mutex::new(config),
            state: Mutex::new(State::Closed),
            consecutive: AtomicU32::new(0),
            gauge,
            last_live_ms: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// Whether a live request asked within `window`.
    fn live_within(&self, window: Duration) -> bool {
        let last = self.last_live_ms.load(Ordering::Relaxed);
        last != 0 && self.born.elapsed().saturating_sub(Duration::from_millis(last - 1)) < window
    }

    /// Takes new thresholds (reload); the current state stays.
    pub fn reconfigure(&self, config: BreakerConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    fn config(&self) -> BreakerConfig {
        *self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open or half-open.
    pub fn is_open(&self) -> bool {
        !matches!(*self.state.lock().unwrap_or_else(|p| p.into_inner()), State::Closed)
    }

    pub fn admit(&self, role: Role) -> Admit {
        let cfg = self.config();
        if cfg.failures == 0 {
            return Admit::Pass;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*st, State::Closed) {
            // Live traffic is only noted while the breaker is not closed:
            // that is when replay asks whether any came (and it is refused
            // or probing, so it keeps asking), and it spares a clock read
            // per request in the usual, closed, case.
            return Admit::Pass;
        }
        // Not closed: the probe is live traffic's, unless there is none.
        if role == Role::Live {
            self.note_live();
        } else if self.live_within(cfg.cooldown) {
            let retry_after = match *st {
                State::Open { until } => until.saturating_duration_since(Instant::now()),
                _ => Duration::ZERO,
            };
            return Admit::Refuse {
                retry_after: retry_after.max(Duration::from_millis(100)),
            };
        }
        match *st {
            State::Closed => Admit::Pass,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Admit::Refuse {
                        retry_after: until - now,
                    };
                }
                *st = State::HalfOpen {
                    in_flight: 1,
                    since: now,
                };
                Admit::Probe
            }
            State::HalfOpen { in_flight, since } if in_flight < cfg.probes.max(1) => {
                *st = State::HalfOpen {
                    in_flight: in_flight + 1,
                    since,
                };
                Admit::Probe
            }
            // Probes that never reported (their request was dropped) must
            // not hold the breaker half-open for ever: after a cooldown
            // without an answer, start a new round of probes.
            State::HalfOpen { since, .. } if since.elapsed() >= cfg.cooldown => {
                *st = State::HalfOpen {
                    in_flight: 1,
                    since: Instant::now(),
                };
                Admit::Probe
            }
            State::HalfOpen { .. } => Admit::Refuse {
                retry_after: cfg.cooldown,
            },
        }
    }

    fn note_live(&self) {
        let ms = self.born.elapsed().as_millis() as u64 + 1;
        self.last_live_ms.store(ms, Ordering::Relaxed);
    }

    /// A probe that was admitted but never sent (its request was spooled,
    /// shed or refused for its own reasons): frees its slot.
    pub fn release_probe(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::HalfOpen { in_flight, since } = *st {
            *st = State::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
                since,
            };
        }
    }

    /// Reports the result of an exchange that [`admit`](Self::admit) let
    /// through (or any other exchange with the backend, `probe = false`).
    /// `counts = false` for a replayed record's retry: its failure says
    /// more about the record than about the backend, so it never opens the
    /// breaker (a failed *probe* still re-opens it).
    pub fn record(&self, health: Health, probe: bool, counts: bool) {
        let cfg = self.config();
        if cfg.failures == 0 {
            return;
        }
        if health == Health::Failed && !probe && !counts {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (health, *st) {
            (Health::Ok, State::HalfOpen { .. }) if probe => {
                tracing::info!("upstream circuit breaker closed: a probe succeeded");
                *st = State::Closed;
                self.consecutive.store(0, Ordering::Relaxed);
                self.gauge.set(0);
            }
            (Health::Ok, State::Closed) => {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            (Health::Failed, State::HalfOpen { .. }) if probe => {
                tracing::warn!(cooldown = ?cfg.cooldown, "upstream circuit breaker re-opened: a probe failed");
                *st = State::Open {
                    until: Instant::now() + cfg.cooldown,
                };
            }
            (Health::Failed, State::Closed) => {
                let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= cfg.failures {
                    tracing::warn!(failures = n, cooldown = ?cfg.cooldown, "upstream circuit breaker opened");
                    *st = State::Open {
                        until: Instant::now() + cfg.cooldown,
                    };
                    self.gauge.set(1);
                }
            }
            // Results of requests sent before the breaker opened don't move it.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(
            BreakerConfig {
                failures,
                cooldown: Duration::from_secs(5),
                probes: 1,
            },
            prometheus::IntGauge::new("t", "t").unwrap(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_records_retries_never_open_it() {
        let b = breaker(3);
        for _ in 0..10 {
            assert_eq!(b.admit(Role::Replay), Admit::Pass);
            b.record(Health::Failed, false, false);
        }
        assert!(!b.is_open(), "ten failed retries of poison records");
        for _ in 0..3 {
            b.record(Health::Failed, false, true);
        }
        assert!(b.is_open(), "three first attempts that fail do open it");
    }

    #[tokio::test(start_paused = true)]
    async fn in_half_open_the_probe_is_live_traffics() {
        let b = breaker(1);
        assert_eq!(b.admit(Role::Live), Admit::Pass);
        b.record(Health::Failed, false, true);
        assert!(b.is_open());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            matches!(b.admit(Role::Live), Admit::Refuse { .. }),
            "open: live is refused"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        // Live traffic came within the cooldown: replay may not probe…
        assert!(matches!(b.admit(Role::Replay), Admit::Refuse { .. }));
        // …live does, and its success closes the breaker.
        assert_eq!(b.admit(Role::Live), Admit::Probe);
        b.record(Health::Ok, true, true);
        assert!(!b.is_open());
        // Open again with no live traffic for a cooldown: replay probes.
        b.record(Health::Failed, false, true);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.admit(Role::Replay), Admit::Probe);
    }

    #[test]
    fn health_classes() {
        assert_eq!(Health::of(None), Health::Failed);
        assert_eq!(Health::of(Some(503)), Health::Failed);
        assert_eq!(Health::of(Some(500)), Health::Ok);
        assert_eq!(Health::of(Some(404)), Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_closes_on_a_good_probe() {
        let b = breaker(3);
        b.record(Health::Failed, false, true);
        b.record(Health::Failed, false, true);
        b.record(Health::Ok, false, true);
        b.record(Health::Failed, false, true);
        b.record(Health::Failed, false, true);
        assert_eq!(
            b.admit(Role::Live),
            Admit::Pass,
            "a success in between resets the count"
        );
        b.record(Health::Failed, false, true);
        assert!(b.is_open());
        assert_eq!(b.gauge.get(), 1);
        assert!(matches!(b.admit(Role::Live), Admit::Refuse { .. }));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(Role::Live), Admit::Probe);
        assert!(
            matches!(b.admit(Role::Live), Admit::Refuse { .. }),
            "one probe at a time"
        );
        b.record(Health::Failed, true, true);
        assert!(
            matches!(b.admit(Role::Live), Admit::Refuse { .. }),
            "a failed probe re-opens"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(Role::Live), Admit::Probe);
        b.record(Health::Ok, true, true);
        assert!(!b.is_open());
        assert_eq!(b.gauge.get(), 0);
        assert_eq!(b.admit(Role::Live), Admit::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_hold_it_half_open() {
        let b = breaker(1);
        b.record(Health::Failed, false, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.admit(Role::Live), Admit::Probe);
        // The probe's request vanished without a report.
        assert!(matches!(b.admit(Role::Live), Admit::Refuse { .. }));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            b.admit(Role::Live),
            Admit::Probe,
            "a new probe after a cooldown without an answer"
        );
        // A probe given back unused frees its slot at once.
        b.release_probe();
        assert_eq!(b.admit(Role::Live), Admit::Probe);
    }

    #[test]
    fn zero_failures_disables_it() {
        let b = breaker(0);
        for _ in 0..100 {
            b.record(Health::Failed, false, true);
        }
        assert_eq!(b.admit(Role::Live), Admit::Pass);
    }
}
