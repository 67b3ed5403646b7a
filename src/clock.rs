//! The run clock: Unix milliseconds that never jump within a run.
//!
//! Record timestamps, arrival times, ages and `drain.max_age` expiry all
//! read [`now_ms`]. Read straight from the system clock, a forward step
//! (an NTP correction, a VM resumed after hours, an operator's `date -s`)
//! would age every spooled record at once and expire the backlog into the
//! dead-letter queue; a backward step would make records look younger
//! than they are. So the run clock reads the wall clock once, when it is
//! first used (at startup), and from then on adds monotonic time:
//!
//! ```text
//! now_ms() = wall clock at start + monotonic time since start
//! ```
//!
//! Within a run, ages are therefore monotonic time since the record was
//! appended. A record from an earlier run is as old as its wall age when
//! this run started plus the monotonic time since: the one place where a
//! wall-clock step between two runs shows.
//!
//! The wall clock is still watched: at most once a second (on a call to
//! [`RunClock::now_ms`], so an idle process costs nothing) it is compared
//! with the run clock, and when they have moved more than [`STEP_MS`]
//! apart since the last report the step is logged at warn, once per step.
//! The run clock does not follow the step: timestamps written in this run
//! (and the `enqueued_at` / `delivered_at` of the status endpoint) stay on
//! the run clock, off from the wall clock by the step until the next start.
//!
//! Both sources are injected ([`TimeSource`]) so tests can jump the wall
//! clock and advance monotonic time by hand.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A difference between the wall clock and the run clock larger than this
/// (in either direction, since the last report) is a step, logged at warn.
pub const STEP_MS: i64 = 5_000;
/// The wall clock is compared with the run clock at most this often.
pub const CHECK_EVERY_MS: u64 = 1_000;

/// Where the run clock reads time.
pub trait TimeSource: Send + Sync + 'static {
    /// Unix milliseconds from the wall clock (which may step).
    fn wall_ms(&self) -> u64;
    /// Milliseconds from a fixed origin on a monotonic clock.
    fn mono_ms(&self) -> u64;
}

/// The operating system's clocks: `SystemTime` and `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct OsTime {
    origin: Instant,
}

impl Default for OsTime {
    fn default() -> Self {
        OsTime { origin: Instant::now() }
    }
}

impl TimeSource for OsTime {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// A wall-clock step found by [`RunClock::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How far the wall clock moved against the run clock since the last
    /// report (positive: forward).
    pub jump_ms: i64,
    /// Wall clock minus run clock now.
    pub offset_ms: i64,
}

/// Wall clock at start plus monotonic time since; see the module docs.
pub struct RunClock {
    source: Box<dyn TimeSource>,
    start_wall_ms: u64,
    start_mono_ms: u64,
    /// Wall minus run clock when a step was last reported (0 at start):
    /// a step is a move away from this, so each is reported once.
    reported_offset_ms: AtomicI64,
    /// Monotonic ms of the last comparison, for the once-a-second limit.
    last_check_mono_ms: AtomicU64,
}

impl RunClock {
    /// A run clock starting now on `source`.
    pub fn new(source: impl TimeSource) -> RunClock {
        let start_mono_ms = source.mono_ms();
        RunClock {
            start_wall_ms: source.wall_ms(),
            start_mono_ms,
            source: Box::new(source),
            reported_offset_ms: AtomicI64::new(0),
            last_check_mono_ms: AtomicU64::new(start_mono_ms),
        }
    }

    /// Unix milliseconds on the run clock; also compares it with the wall
    /// clock when the last comparison is [`CHECK_EVERY_MS`] old.
    pub fn now_ms(&self) -> u64 {
        let mono = self.source.mono_ms();
        let last = self.last_check_mono_ms.load(Ordering::Relaxed);
        if mono.saturating_sub(last) >= CHECK_EVERY_MS
            && self
                .last_check_mono_ms
                .compare_exchange(last, mono, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.check_at(mono);
        }
        self.run_ms(mono)
    }

    fn run_ms(&self, mono: u64) -> u64 {
        self.start_wall_ms
            .saturating_add(mono.saturating_sub(self.start_mono_ms))
    }

    /// Compares the wall clock with the run clock now (no rate limit);
    /// returns the step, logged at warn, if they moved more than
    /// [`STEP_MS`] apart since the last report.
    pub fn check(&self) -> Option<Step> {
        self.check_at(self.source.mono_ms())
    }

    fn check_at(&self, mono: u64) -> Option<Step> {
        let offset_ms = self.source.wall_ms() as i64 - self.run_ms(mono) as i64;
        let reported = self.reported_offset_ms.load(Ordering::Relaxed);
        let jump_ms = offset_ms - reported;
        if jump_ms.abs() <= STEP_MS {
            return None;
        }
        // One report per step, even with concurrent checks.
        self.reported_offset_ms
            .compare_exchange(reported, offset_ms, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        tracing::warn!(
            jump_ms,
            offset_ms,
            "the wall clock stepped by {:.1}s; record ages and drain.max_age keep to monotonic time, and \
             timestamps stay on the run clock ({:.1}s from the wall clock) until restart",
            jump_ms as f64 / 1000.0,
            offset_ms as f64 / 1000.0,
        );
        Some(Step { jump_ms, offset_ms })
    }

    /// Wall minus run clock at the last reported step (0 if none).
    pub fn reported_offset_ms(&self) -> i64 {
        self.reported_offset_ms.load(Ordering::Relaxed)
    }
}

static RUN: OnceLock<RunClock> = OnceLock::new();

/// The process-wide run clock on the OS clocks; it starts on first use.
pub fn global() -> &'static RunClock {
    RUN.get_or_init(|| RunClock::new(OsTime::default()))
}

/// Starts the process-wide run clock now if nothing has used it yet
/// (called first thing at startup, so "start" is process start).
pub fn init() {
    global();
}

/// Unix milliseconds on the process-wide run clock.
pub fn now_ms() -> u64 {
    global().now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Hand-driven clocks.
    #[derive(Default)]
    struct Fake {
        wall: AtomicU64,
        mono: AtomicU64,
    }

    impl TimeSource for Arc<Fake> {
        fn wall_ms(&self) -> u64 {
            self.wall.load(Ordering::Relaxed)
        }
        fn mono_ms(&self) -> u64 {
            self.mono.load(Ordering::Relaxed)
        }
    }

    impl Fake {
        fn at(wall: u64) -> Arc<Fake> {
            let f = Arc::new(Fake::default());
            f.wall.store(wall, Ordering::Relaxed);
            f.mono.store(7_000, Ordering::Relaxed);
            f
        }
        /// Time passes: both clocks advance.
        fn pass(&self, ms: u64) {
            self.wall.fetch_add(ms, Ordering::Relaxed);
            self.mono.fetch_add(ms, Ordering::Relaxed);
        }
        /// The wall clock alone steps.
        fn step(&self, ms: i64) {
            let w = self.wall.load(Ordering::Relaxed) as i64 + ms;
            self.wall.store(w as u64, Ordering::Relaxed);
        }
    }

    const T0: u64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_forward_wall_jump_does_not_age_a_record_and_is_detected_once() {
        let fake = Fake::at(T0);
        let clock = RunClock::new(fake.clone());
        assert_eq!(clock.now_ms(), T0);
        let appended = clock.now_ms();
        fake.pass(500);
        fake.step(HOUR);
        // The record aged by the 0.5 s that passed, not by the hour.
        assert_eq!(clock.now_ms() - appended, 500);
        let step = clock.check().expect("a one-hour step is detected");
        assert_eq!(step.jump_ms, HOUR);
        assert_eq!(step.offset_ms, HOUR);
        assert_eq!(clock.check(), None, "the same step is reported once");
        fake.pass(2_000);
        assert_eq!(clock.check(), None);
        assert_eq!(clock.now_ms() - appended, 2_500);
        // A second step (back by two hours) is a new one.
        fake.step(-2 * HOUR);
        let step = clock.check().expect("a step back is detected");
        assert_eq!(step.jump_ms, -2 * HOUR);
        assert_eq!(step.offset_ms, -HOUR);
        assert_eq!(clock.now_ms() - appended, 2_500, "nor does a step back make it younger");
    }

    #[test]
    fn small_drift_is_not_a_step() {
        let fake = Fake::at(T0);
        let clock = RunClock::new(fake.clone());
        fake.pass(10_000);
        fake.step(STEP_MS);
        assert_eq!(clock.check(), None, "{STEP_MS} ms is not yet a step");
        fake.step(1);
        assert!(clock.check().is_some());
    }

    #[test]
    fn now_ms_checks_the_wall_clock_at_most_once_a_second() {
        let fake = Fake::at(T0);
        let clock = RunClock::new(fake.clone());
        fake.step(HOUR);
        fake.pass(CHECK_EVERY_MS - 1);
        clock.now_ms();
        assert_eq!(clock.reported_offset_ms(), 0, "not checked within the second");
        fake.pass(1);
        clock.now_ms();
        assert_eq!(
            clock.reported_offset_ms(),
            HOUR,
            "checked (and reported) once the second is up"
        );
    }

    #[test]
    fn a_record_from_an_earlier_run_keeps_its_wall_age_at_start() {
        // Written by the previous run ten minutes before this one started.
        let written = T0 - 600_000;
        let fake = Fake::at(T0);
        let clock = RunClock::new(fake.clone());
        fake.pass(5_000);
        fake.step(HOUR);
        assert_eq!(clock.now_ms() - written, 605_000);
    }

    #[test]
    fn the_global_clock_tracks_the_wall_clock_and_never_goes_back() {
        let a = now_ms();
        let b = now_ms();
        assert!(b >= a);
        let wall = OsTime::default().wall_ms();
        assert!(a.abs_diff(wall) < 60_000, "run clock {a} vs wall clock {wall}");
    }
}
