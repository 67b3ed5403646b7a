//! Fault paths of the drain side (issue 10): concurrent DLQ replays, and
//! an HTTP-date `Retry-After` end to end.

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

fn accepted_id(r: &Reply) -> String {
    assert_eq!(r.status, 202, "expected 202: {:?}", r.body);
    r.json()["id"].as_str().expect("202 body has an id").to_string()
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
