use std::time::Duration;

use super::journal::ENTRY;
use super::*;

fn id(p: u32, o: u64) -> RequestId {
    RequestId {
        partition: p,
        offset: o,
        token: [p as u8; 16],
    }
}

#[tokio::test]
async fn outcomes_and_keys_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap();
        s.record(Outcome {
            id: id(1, 5),
            state: State::Delivered,
            attempts: 2,
            upstream_status: Some(201),
            at_ms: now_ms(),
            enqueued_ms: 7,
            replayed_as: None,
        });
        s.record(Outcome {
            id: id(2, 9),
            state: State::Dead,
            attempts: 1,
            upstream_status: Some(400),
            at_ms: now_ms(),
            enqueued_ms: 8,
            replayed_as: Some(id(2, 30)),
        });
        let h = key_hash("orders", "k-1");
        match s.claim_key(h).await {
            KeyClaim::First(h, tx) => s.key_done(h, tx, id(3, 1)),
            KeyClaim::Existing(_) => panic!("first claim"),
        }
    }
    let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap();
    let o = s.get(1, 5).unwrap();
    assert_eq!(
        (o.state, o.attempts, o.upstream_status),
        (State::Delivered, 2, Some(201))
    );
    assert_eq!(s.get(2, 9).unwrap().replayed_as, Some(id(2, 30)));
    assert!(s.get(1, 6).is_none());
    match s.claim_key(key_hash("orders", "k-1")).await {
        KeyClaim::Existing(found) => assert_eq!(found, id(3, 1)),
        KeyClaim::First(..) => panic!("key must survive reopen"),
    }
    assert!(matches!(
        s.claim_key(key_hash("other-route", "k-1")).await,
        KeyClaim::First(..)
    ));
}

#[tokio::test]
async fn a_second_claim_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap());
    let h = key_hash("r", "same");
    let KeyClaim::First(h, tx) = s.claim_key(h).await else {
        panic!()
    };
    let s2 = s.clone();
    let second = tokio::spawn(async move { s2.claim_key(h).await });
    tokio::task::yield_now().await;
    s.key_done(h, tx, id(0, 42));
    match second.await.unwrap() {
        KeyClaim::Existing(found) => assert_eq!(found, id(0, 42)),
        KeyClaim::First(..) => panic!("second claim must see the first's id"),
    }
    // A failed first frees the key for the next request.
    let h2 = key_hash("r", "fails");
    let KeyClaim::First(h2, tx2) = s.claim_key(h2).await else {
        panic!()
    };
    s.key_failed(h2, tx2);
    assert!(matches!(s.claim_key(h2).await, KeyClaim::First(..)));
}

#[test]
fn memory_and_disk_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 100).unwrap();
    for i in 0..50_000u64 {
        s.record(Outcome {
            id: id(0, i),
            state: State::Delivered,
            attempts: 1,
            upstream_status: Some(200),
            at_ms: now_ms() + i,
            enqueued_ms: 1,
            replayed_as: None,
        });
        assert!(s.len().0 <= 101);
    }
    let disk: u64 = std::fs::read_dir(dir.path().join("status"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(disk <= 2 * (1 << 20) + ENTRY as u64, "journal uses {disk} bytes");
    assert!(s.get(0, 49_999).is_some(), "the newest outcome is kept");
}

/// A retry storm fills the attempts journal, not the one that holds the
/// Idempotency-Keys: after a reopen the key still finds its request, and
/// the newest attempts are there.
#[tokio::test]
async fn a_retry_storm_does_not_rotate_keys_out() {
    let dir = tempfile::tempdir().unwrap();
    let h = key_hash("orders", "k-storm");
    {
        let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 100).unwrap();
        match s.claim_key(h).await {
            KeyClaim::First(h, tx) => s.key_done(h, tx, id(1, 1)),
            KeyClaim::Existing(_) => panic!("first claim"),
        }
        // Far more attempts than one generation holds (1 MiB / 96 B).
        for n in 0..30_000u32 {
            s.attempted(
                &id(2, u64::from(n % 50)),
                n,
                AttemptRecord {
                    at_ms: now_ms(),
                    status: Some(503),
                    error: None,
                    latency_ms: n,
                },
            );
        }
    }
    let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 100).unwrap();
    assert_eq!(s.id_for_key(h).map(|i| i.offset), Some(1), "the key outlived the storm");
    let h49 = s.history(2, 49);
    assert_eq!(h49.len(), HISTORY);
    assert_eq!(h49.last().unwrap().latency_ms, 29_999, "the newest attempts");
}
