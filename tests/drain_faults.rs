//! Fault paths of the drain side (issue 10): concurrent DLQ replays, the
//! status of a request whose record was corrupted on disk, and an
//! HTTP-date `Retry-After` end to end.

mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support::*;

fn orders_route() -> &'static str {
    "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/orders\" }\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n"
}

fn reply(status: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"-")))
        .unwrap()
}

/// Replays the backend saw whose Idempotency-Key is `key`.
fn deliveries_of(backend: &Backend, key: &str) -> Vec<Seen> {
    backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.headers.contains_key("sluice-id") && seen_header(s, "idempotency-key") == Some(key))
        .cloned()
        .collect()
}

async fn admin_post(c: &TestClient, admin: std::net::SocketAddr, path: &str, body: String) -> Reply {
    send(
        c,
        Method::POST,
        &format!("http://{admin}{path}"),
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// Every partition's committed offset has reached its next offset.
fn drained(spool: &serde_json::Value) -> bool {
    spool["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["committed_offset"] == p["next_offset"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dlq_replays_of_one_letter_enqueue_it_once() {
    // Replays are refused (400) until `accept` is set: the one spooled
    // request becomes a dead letter.
    let accept = Arc::new(AtomicBool::new(false));
    let a = accept.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let ok = !s.headers.contains_key("sluice-id") || a.load(Ordering::SeqCst);
        Box::pin(async move { reply(if ok { 200 } else { 400 }) })
    }))
    .await;
    let sluice = start_sluice(&config_text(&backend.url(), orders_route())).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let id = accepted_id(&send(&c, Method::POST, &url, &[], "dead-then-replayed").await);
    eventually(Duration::from_secs(5), "the request dead-lettered", || async {
        let r = request_status(&c, sluice.data_addr, &id).await;
        (r.status == 200 && r.json()["state"] == "dead").then_some(())
    })
    .await;
    accept.store(true, Ordering::SeqCst);

    // Eight replays at once: by id, and of everything.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (c, admin) = (c.clone(), sluice.admin_addr);
        let body = if i % 2 == 0 {
            format!("{{\"ids\":[\"{id}\"]}}")
        } else {
            "{\"all\":true}".to_string()
        };
        tasks.spawn(async move { admin_post(&c, admin, "/admin/dlq/replay", body).await });
    }
    let mut replayed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        for pair in r.json()["replayed"].as_array().unwrap() {
            assert_eq!(pair["id"], id.as_str());
            replayed.push(pair["replayed_as"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(replayed.len(), 1, "one of the replays re-enqueued it: {replayed:?}");

    // Wait until everything is finished, then count.
    eventually(Duration::from_secs(5), "the replayed copy delivered", || async {
        let s = admin_spool(&c, sluice.admin_addr).await;
        (drained(&s) && s["dlq"]["records"] == 0 && !deliveries_of(&backend, &id).is_empty()).then_some(())
    })
    .await;
    let got = deliveries_of(&backend, &id);
    let delivered: Vec<_> = got
        .iter()
        .filter(|s| seen_header(s, "sluice-id") != Some(id.as_str()))
        .collect();
    assert_eq!(delivered.len(), 1, "exactly one new record was delivered");
    assert_eq!(seen_header(delivered[0], "sluice-id"), Some(replayed[0].as_str()));
    let s = admin_spool(&c, sluice.admin_addr).await;
    let appended: u64 = s["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(appended, 2, "the original and one copy: {s}");
    sluice.shutdown().await;
}

/// Segment files of the spool's data log, oldest first.
fn segments(spool_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(spool_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// How [`corrupt_record_scenario`] gets a "corrupt" dead letter that
/// holds the damaged record's bytes.
#[derive(Clone, Copy, PartialEq)]
enum Letter {
    /// The spool writes it when its reader finds the damaged frame.
    FromSpool,
    /// The test also writes one (the record's payload, one byte flipped)
    /// while sluice is stopped, ahead of the spool's own: the drainer must
    /// find the one whose token matches among several for one offset.
    Planted,
}

/// Five records spooled to one partition with small segments; sluice
/// stopped; one byte of record 1's body flipped in its sealed segment;
/// sluice restarted. Record 1's status must then say `dead`; the others
/// are delivered once; another token at record 1's position stays 404.
async fn corrupt_record_scenario(letter: Letter) {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    // Small segments: two of these records fill one, so the damaged record
    // sits in a sealed segment.
    let text = config_text(
        &backend.url(),
        &format!(
            "[spool]\ndir = \"{}\"\npartitions = 1\nsegment_bytes = \"4KiB\"\nmax_record = \"2KiB\"\n\n{}",
            spool_dir.display(),
            orders_route()
        ),
    );
    let body = |i: usize| format!("record-{i}:{}", "x".repeat(1500));

    let sluice = start_sluice(&text).await;
    let c = client();
    let r = admin_post(&c, sluice.admin_addr, "/admin/drain/pause", String::new()).await;
    assert_eq!(r.status, 200);
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(accepted_id(&send(&c, Method::POST, &url, &[], body(i)).await));
    }
    sluice.shutdown().await;

    if letter == Letter::Planted {
        let mut opts = sluice::spool::SpoolOptions::new(&spool_dir);
        opts.partitions = 1;
        let spool = sluice::spool::Spool::open(opts, Arc::new(sluice::spool::NoopObserver))
            .await
            .unwrap();
        let mut rec = spool.read_at(0, 1).await.unwrap().expect("record 1");
        let mut damaged = rec.payload.to_vec();
        let n = damaged.len();
        damaged[n - 10] ^= 0x20;
        rec.payload = Bytes::from(damaged);
        spool.dead_letter(&rec, "corrupt", None).await.unwrap();
        spool.close().await.unwrap();
    }

    // Flip one byte of record 1's body, in its (sealed) segment.
    let segs = segments(&spool_dir);
    let marker = b"record-1:";
    let (seg, at) = segs
        .iter()
        .find_map(|p| {
            let data = std::fs::read(p).unwrap();
            data.windows(marker.len())
                .position(|w| w == marker)
                .map(|i| (p.clone(), i))
        })
        .expect("record 1 is on disk");
    assert_ne!(Some(&seg), segs.last(), "record 1's segment is sealed: {segs:?}");
    let mut data = std::fs::read(&seg).unwrap();
    data[at + marker.len() + 700] ^= 0x20;
    std::fs::write(&seg, data).unwrap();

    let sluice = start_sluice(&text).await;
    let (victim, others) = (&ids[1], [&ids[0], &ids[2], &ids[3], &ids[4]]);
    eventually(Duration::from_secs(10), "the intact records delivered", || async {
        others
            .iter()
            .all(|id| deliveries_of(&backend, id).len() == 1)
            .then_some(())
    })
    .await;
    let letters = eventually(
        Duration::from_secs(5),
        "the spool's corrupt dead letter for record 1",
        || async {
            let r = get(&c, &format!("http://{}/admin/dlq", sluice.admin_addr)).await;
            let found: Vec<serde_json::Value> = r.json()["dead_letters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["reason"] == "corrupt" && d["offset"] == 1)
                .cloned()
                .collect();
            let want = if letter == Letter::Planted { 2 } else { 1 };
            (found.len() == want).then_some(found)
        },
    )
    .await;
    if letter == Letter::FromSpool {
        assert!(
            letters[0]["bytes"].as_u64().unwrap() >= 17,
            "the dead letter keeps the record's raw bytes (token included): {letters:?}"
        );
    }
    let st = eventually(Duration::from_secs(5), "record 1's status", || async {
        let r = request_status(&c, sluice.data_addr, victim).await;
        (r.status == 200).then(|| r.json())
    })
    .await;
    assert_eq!(st["state"], "dead", "{st}");
    assert_eq!(st["id"], victim.as_str());
    assert!(
        deliveries_of(&backend, victim).is_empty(),
        "the damaged record is not sent"
    );

    // The same position with another token is still unknown.
    let mut forged = victim.clone().into_bytes();
    let i = forged.len() - 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(request_status(&c, sluice.data_addr, &forged).await.status, 404);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_records_status_is_dead_not_404() {
    corrupt_record_scenario(Letter::FromSpool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_records_status_is_dead_when_its_letter_keeps_the_token() {
    corrupt_record_scenario(Letter::Planted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_date_retry_after_is_honoured() {
    // The first replay of each request gets 503 with Retry-After as an
    // HTTP-date two seconds after the response's Date.
    let tried: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let t = tried.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let first = match seen_header(&s, "sluice-id") {
            Some(id) => {
                let mut t = t.lock().unwrap();
                let first = !t.iter().any(|(seen, _)| seen == id);
                t.push((id.to_string(), s.at));
                first
            }
            None => false,
        };
        Box::pin(async move {
            if !first {
                return reply(200);
            }
            let now = SystemTime::now();
            Response::builder()
                .status(503)
                .header("date", httpdate::fmt_http_date(now))
                .header("retry-after", httpdate::fmt_http_date(now + Duration::from_secs(2)))
                .body(Full::new(Bytes::from_static(b"busy")))
                .unwrap()
        })
    }))
    .await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        &format!(
            "[drain]\nbackoff_initial = \"10ms\"\nbackoff_max = \"5s\"\n\n[breaker]\nfailures = 0\n\n{}",
            orders_route()
        ),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let id = accepted_id(&send(&c, Method::POST, &url, &[], "retry-at-a-date").await);
    eventually(Duration::from_secs(8), "delivered on the second attempt", || async {
        let r = request_status(&c, sluice.data_addr, &id).await;
        (r.json()["state"] == "delivered").then_some(())
    })
    .await;
    let tries = tried.lock().unwrap().clone();
    assert_eq!(tries.len(), 2, "{tries:?}");
    let gap = tries[1].1 - tries[0].1;
    // Both dates have whole seconds, so the wait is exactly 2 s after the
    // Date; the backoff alone would be at most 10 ms.
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(4), "retried after {gap:?}");
    sluice.shutdown().await;
}
