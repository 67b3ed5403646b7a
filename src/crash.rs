//! Named crash points for the kill -9 fault suite.
//!
//! `SLUICE_CRASH_AT=phase:n[,phase:n…]` makes the process SIGKILL itself
//! the n-th time (1-based) it passes `phase`, so a test can be sure every
//! dangerous moment (a write not yet fsynced, a segment half rolled, a
//! commit file half replaced, a dead letter written but its original not
//! acked) is hit, not just the ones a random kill happens to land on.
//!
//! Compiled into debug builds only (the ones `cargo test` runs); in a
//! release build `point` is an empty inline function and the variable is
//! ignored.

/// The phases, in the order a record meets them.
pub const PHASES: &[&str] = &[
    // writer: the batch is written to the segment, not yet fsynced or published
    "append",
    // writer: fsynced, not yet published nor answered
    "group_commit",
    // writer: the old segment's index is stored, the next segment not created
    "roll",
    // reclaim: one segment file removed, the rest of the doomed ones not
    "retention",
    // checkpoint: COMMITS replaced, reclaim not started
    "checkpoint",
    // drainer / reader: the dead letter is appended, the original not acked
    "dlq_move",
];

#[cfg(debug_assertions)]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::PHASES;

    struct Plan {
        /// Per phase (index into PHASES): the pass to die on, 0 = never.
        at: Vec<u64>,
        seen: Vec<AtomicU64>,
    }

    fn plan() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            let mut at = vec![0u64; PHASES.len()];
            if let Ok(spec) = std::env::var("SLUICE_CRASH_AT") {
                for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let parsed = item
                        .split_once(':')
                        .and_then(|(name, n)| Some((PHASES.iter().position(|p| *p == name)?, n.parse().ok()?)));
                    match parsed {
                        Some((i, n)) => at[i] = n,
                        None => eprintln!("SLUICE_CRASH_AT: ignoring {item:?} (want phase:n, phases {PHASES:?})"),
                    }
                }
            }
            Plan {
                seen: at.iter().map(|_| AtomicU64::new(0)).collect(),
                at,
            }
        })
    }

    pub fn point(phase: &'static str) {
        let plan = plan();
        let Some(i) = PHASES.iter().position(|p| *p == phase) else {
            debug_assert!(false, "unknown crash point {phase}");
            return;
        };
        if plan.at[i] == 0 {
            return;
        }
        let n = plan.seen[i].fetch_add(1, Ordering::AcqRel) + 1;
        if n == plan.at[i] {
            eprintln!("crash point {phase}:{n}: SIGKILL");
            // SAFETY: sends a signal to this process; no memory involved.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

/// Passes the named crash point (see the module doc).
#[cfg(debug_assertions)]
pub fn point(phase: &'static str) {
    imp::point(phase)
}

/// Release builds carry no crash points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_phase: &'static str) {}
