//! A real backend misbehaving while sluice replays spooled requests; the
//! cases, the fault server and the count are in `fault_backend/cases.rs`.
//! Each test prints a `RELIABILITY {json}` line with its counts
//! (acknowledged, delivered, dead, lost, duplicated), also appended to
//! `$SLUICE_RELIABILITY_OUT` when that is set, and checks its row of
//! RELIABILITY.md (`backend-…`).

#[path = "fault_backend/cases.rs"]
mod cases;
mod reliability;
mod support;

/// Checks the case's row of RELIABILITY.md against its tally. Dead letters
/// are by design in these cases (each case asserts which requests and
/// why); no duplicate is allowed (each case asserts delivery once).
fn report(row: &str, t: cases::Tally) {
    let n = |v: usize| v as u64;
    reliability::report(
        row,
        reliability::Outcome {
            acknowledged: n(t.acknowledged),
            delivered: n(t.delivered),
            dead_lettered: n(t.dead),
            lost: n(t.lost),
            duplicated: n(t.duplicated),
            ..Default::default()
        },
    );
}

/// (a) down (nothing listening), then up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_then_up() {
    report("backend-down", cases::down_then_up().await);
}

/// (b) hung on the first try of each request, then answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_hangs_then_answers() {
    report("backend-hung", cases::hung_then_answers().await);
}

/// (b') hung for good: dead-lettered after `max_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_always_hangs_dead_letters_after_max_attempts() {
    report("backend-hung-for-good", cases::hung_for_good().await);
}

/// (c) resetting in the status line, and after a 200 head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_resets_mid_response() {
    report("backend-reset", cases::reset_mid_response().await);
}

/// (d) a 5xx storm, then healthy; a 501 is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_then_healthy() {
    report("backend-5xx-storm", cases::storm_5xx().await);
}

/// (e) 429 with `Retry-After` in delta-seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_seconds() {
    report("backend-429-retry-after-seconds", cases::retry_after_seconds().await);
}

/// (e) 429 with `Retry-After` as an HTTP-date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_http_date() {
    report("backend-429-retry-after-date", cases::retry_after_http_date().await);
}

/// (f) garbage bytes instead of HTTP, then a proper answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_garbage_then_http() {
    report("backend-garbage", cases::garbage_response().await);
}
