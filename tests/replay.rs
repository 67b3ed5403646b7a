//! Spooling and replay, in process: a burst absorbed and drained within the
//! upstream budget, what is and isn't spooled on backend failures, the DLQ
//! and expiry, retries, Idempotency-Key, the status endpoint, ordered routes.
//!
//! Each case runs twice: on the local spool, and on a JetStream spool (a
//! nats-server this binary starts), since the behaviour is the same.

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A `[[route]]` named `orders` on `/orders` with `on_limit = "spool"`.
fn spool_route(rate: &str, burst: u32, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/orders\" }}\nrate = \"{rate}\"\nburst = {burst}\non_limit = \"spool\"\n{extra}\n"
    )
}

fn orders_url(sluice: &sluice::app::Running) -> String {
    format!("http://{}/orders", sluice.data_addr)
}

fn reply(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Polls the status of `id` until its state is `state`; returns it.
async fn wait_for_state(
    c: &TestClient,
    sluice: &sluice::app::Running,
    id: &str,
    state: &str,
    deadline: Duration,
) -> serde_json::Value {
    eventually(deadline, state, || async {
        let st = status_json(c, sluice.data_addr, id).await;
        (st["state"] == state).then_some(st)
    })
    .await
}

async fn metric(c: &TestClient, sluice: &sluice::app::Running, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&metrics_text(c, sluice.admin_addr).await, name, labels).unwrap_or(0.0)
}

async fn burst_is_absorbed_then_drained_within_the_upstream_budget(kind: SpoolKind) {
    const N: usize = 200;
    const CONCURRENCY: usize = 16;
    const CAPACITY: f64 = 40.0;
    const CAPACITY_BURST: usize = 4;
    // Backend of fixed latency: with 4 partitions, one in flight each,
    // replay could reach 4 / 10 ms = 400/s, far above the 40/s capacity,
    // so only the budget paces it.
    let backend = Backend::start(Arc::new(|_s: Seen| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            reply(200, "ok")
        })
    }))
    .await;
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            &format!(
                "capacity = \"40/s\"\ncapacity_burst = {CAPACITY_BURST}\n\n[spool]\npartitions = 4\n\n{}",
                spool_route("20/s", 5, "")
            ),
        ),
    )
    .await;
    let c = client();
    let url = orders_url(&sluice);

    // Fire the burst with bounded concurrency; each request is unique by
    // its body and an `x-req` header.
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (c, url, limit) = (c.clone(), url.clone(), limit.clone());
        tasks.spawn(async move {
            let _slot = limit.acquire_owned().await.unwrap();
            let r = send(&c, Method::POST, &url, &[("x-req", &i.to_string())], format!("req-{i}")).await;
            (i, r)
        });
    }
    let mut ids: HashMap<usize, String> = HashMap::new();
    let mut forwarded = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.unwrap();
        match r.status.as_u16() {
            200 => forwarded += 1,
            202 => {
                ids.insert(i, accepted_id(&r));
            }
            other => panic!("request {i} got {other}, not 200 or 202: {:?}", r.body),
        }
    }
    let burst_end = Instant::now();
    let spooled = ids.len();
    assert_eq!(forwarded + spooled, N);
    assert!(forwarded >= 1, "the route's burst is forwarded live");
    assert!(
        spooled >= N / 2,
        "a burst of 20x the rate is mostly spooled ({spooled} of {N})"
    );
    // What was still to replay when the burst ended.
    let backlog = spooled - backend.replays().len();

    // The drain-time bound: about backlog / capacity, allowing 3x + 2 s.
    let bound = Duration::from_secs_f64(3.0 * backlog as f64 / CAPACITY + 2.0);
    eventually(bound, "backend saw every request", || async {
        (backend.count() >= N).then_some(())
    })
    .await;
    // Everything acked: nothing left to (re)send, so the count is final.
    eventually(Duration::from_secs(5), "spool backlog empty", || async {
        let s = admin_spool(&c, sluice.admin_addr).await;
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["committed_offset"] == p["next_offset"])
            .then_some(())
    })
    .await;
    let seen = backend.seen.lock().unwrap().clone();

    // Exactly once, and replays carry the id their 202 gave.
    assert_eq!(seen.len(), N, "each request reaches the backend exactly once");
    let mut by_req: HashMap<usize, usize> = HashMap::new();
    for s in &seen {
        let i: usize = seen_header(s, "x-req").unwrap().parse().unwrap();
        assert_eq!(s.body, format!("req-{i}"));
        *by_req.entry(i).or_default() += 1;
        match (ids.get(&i), seen_header(s, "sluice-id")) {
            (Some(id), Some(got)) => {
                assert_eq!(got, id, "replay of request {i} carries its Sluice-Id");
                assert_eq!(seen_header(s, "sluice-attempt"), Some("1"));
            }
            (None, None) => {}
            (want, got) => panic!("request {i}: 202 id {want:?} but backend saw Sluice-Id {got:?}"),
        }
    }
    assert_eq!(by_req.len(), N);
    assert!(by_req.values().all(|&n| n == 1), "no request is delivered twice");

    // Rate: the budget lets through at most capacity + capacity_burst in
    // any 1 s window. The slack of 2 covers timer granularity: the budget
    // measures when a token is taken, the backend when the request arrives
    // (a few ms later, on another task), so two arrivals near a window's
    // edge can land inside it while their tokens were taken outside.
    let mut at: Vec<Instant> = seen.iter().map(|s| s.at).collect();
    at.sort();
    let mut peak = 0;
    let mut j = 0;
    for i in 0..at.len() {
        while j < at.len() && at[j] < at[i] + Duration::from_secs(1) {
            j += 1;
        }
        peak = peak.max(j - i);
    }
    let max = CAPACITY as usize + CAPACITY_BURST + 2;
    assert!(peak <= max, "backend saw {peak} requests in 1 s; budget allows {max}");

    // Drain time: from the end of the burst to the last arrival.
    let drained = at.last().unwrap().saturating_duration_since(burst_end);
    let expected = backlog as f64 / CAPACITY;
    assert!(
        drained <= bound,
        "backlog of {backlog} drained in {drained:?}; expected about {expected:.1}s (bound {bound:?})"
    );
    assert!(
        drained.as_secs_f64() >= expected * 0.5 - 0.2,
        "backlog of {backlog} drained in {drained:?}: faster than the {CAPACITY}/s budget allows"
    );

    // Sluice-Sequence: consecutive per partition, delivered in order.
    let mut per_partition: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.headers.contains_key("sluice-id")) {
        let p = seen_header(s, "sluice-partition").unwrap().parse().unwrap();
        let q = seen_header(s, "sluice-sequence").unwrap().parse().unwrap();
        per_partition.entry(p).or_default().push(q);
    }
    assert!(per_partition.len() > 1, "round robin uses several partitions");
    for (p, seqs) in &per_partition {
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "partition {p}: sequences {seqs:?} are not consecutive in order"
            );
        }
        assert_eq!(
            seqs[0],
            kind.first_offset(),
            "partition {p} starts at the first offset of a fresh spool"
        );
    }
    eprintln!(
        "burst: {N} in {:?} ({forwarded} forwarded, {spooled} spooled); backlog {backlog} drained in {drained:?} \
         (backlog/capacity = {expected:.2}s); peak {peak}/s",
        burst_end - started
    );
    sluice.shutdown().await;
}

async fn refused_backend_connection_spools_the_request(kind: SpoolKind) {
    let upstream = format!("http://127.0.0.1:{}", closed_port());
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &upstream,
            &format!(
                "[drain]\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\nmax_attempts = 1000\n\n{}",
                spool_route("100/s", 10, "")
            ),
        ),
    )
    .await;
    let c = client();
    // Within the route limit: forwarded, refused, then spooled.
    let r = send(&c, Method::POST, &orders_url(&sluice), &[], "refused").await;
    let id = accepted_id(&r);
    assert_eq!(r.header("location"), format!("/_sluice/requests/{id}"));

    let first = eventually(Duration::from_secs(5), "a replay attempt", || async {
        let st = status_json(&c, sluice.data_addr, &id).await;
        let attempts = st["attempts"].as_u64().unwrap();
        (attempts >= 1).then_some(attempts)
    })
    .await;
    let st = eventually(Duration::from_secs(5), "attempts to grow", || async {
        let st = status_json(&c, sluice.data_addr, &id).await;
        (st["attempts"].as_u64().unwrap() >= first + 2).then_some(st)
    })
    .await;
    assert!(
        st["state"] == "delivering" || st["state"] == "queued",
        "still retrying: {st}"
    );
    let labels = [("route", "orders"), ("decision", "spooled")];
    assert_eq!(metric(&c, &sluice, "sluice_requests_total", &labels).await, 1.0);
    let forwarded = [("route", "orders"), ("decision", "forwarded")];
    assert_eq!(metric(&c, &sluice, "sluice_requests_total", &forwarded).await, 0.0);
    assert!(metric(&c, &sluice, "sluice_replay_total", &[("outcome", "retried")]).await >= 2.0);
    sluice.shutdown().await;
}

async fn backend_timeout_after_sending_is_504_and_not_spooled(kind: SpoolKind) {
    let backend = slow_backend(Duration::from_secs(3)).await;
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            &format!("timeout = \"200ms\"\n\n{}", spool_route("100/s", 10, "")),
        ),
    )
    .await;
    let c = client();
    let t = Instant::now();
    let r = send(&c, Method::POST, &orders_url(&sluice), &[], "maybe-acted-on").await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "answered at the 200ms timeout");
    assert!(r.headers.get("sluice-id").is_none());
    assert_eq!(backend.count(), 1, "the backend received the request once");
    let spooled = [("route", "orders"), ("decision", "spooled")];
    assert_eq!(metric(&c, &sluice, "sluice_requests_total", &spooled).await, 0.0);
    let failed = [("route", "orders"), ("decision", "upstream_error")];
    assert_eq!(metric(&c, &sluice, "sluice_requests_total", &failed).await, 1.0);
    let s = admin_spool(&c, sluice.admin_addr).await;
    for p in s["partitions"].as_array().unwrap() {
        assert_eq!(p["next_offset"], kind.first_offset(), "nothing was appended: {s}");
    }
    sluice.shutdown().await;
}

async fn a_4xx_for_a_replay_goes_to_the_dlq(kind: SpoolKind) {
    // Live requests succeed; replays are refused for good.
    let backend = Backend::start(Arc::new(|s: Seen| {
        Box::pin(async move {
            if s.headers.contains_key("sluice-id") {
                reply(400, "no")
            } else {
                reply(200, "ok")
            }
        })
    }))
    .await;
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), &spool_route("1/min", 1, ""))).await;
    let c = client();
    let url = orders_url(&sluice);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let id = accepted_id(&send(&c, Method::POST, &url, &[], "doomed").await);

    let st = wait_for_state(&c, &sluice, &id, "dead", Duration::from_secs(5)).await;
    assert_eq!(st["upstream_status"], 400, "{st}");
    assert_eq!(st["attempts"], 1, "a 4xx is not retried: {st}");
    let s = admin_spool(&c, sluice.admin_addr).await;
    assert!(s["dlq"]["records"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        metric(&c, &sluice, "sluice_replay_total", &[("outcome", "dead")]).await,
        1.0
    );
    assert_eq!(
        metric(&c, &sluice, "sluice_replay_total", &[("outcome", "delivered")]).await,
        0.0
    );
    assert_eq!(backend.replays().len(), 1, "sent once, not retried");
    assert_eq!(backend.replays()[0].body, "doomed");
    sluice.shutdown().await;
}

async fn a_record_older_than_max_age_goes_to_the_dlq_as_expired(kind: SpoolKind) {
    // The backend refuses connections, so replay retries until expiry.
    let upstream = format!("http://127.0.0.1:{}", closed_port());
    let sluice = start_sluice_on(kind, &config_text(
        &upstream,
        &format!(
            "[drain]\nmax_age = \"1s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"\nmax_attempts = 1000\n\n{}",
            spool_route("100/s", 10, "")
        ),
    ))
    .await;
    let c = client();
    let t = Instant::now();
    let id = accepted_id(&send(&c, Method::POST, &orders_url(&sluice), &[], "stale").await);
    let st = wait_for_state(&c, &sluice, &id, "dead", Duration::from_secs(5)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "dead only once older than max_age, not after {:?}",
        t.elapsed()
    );
    assert!(st["attempts"].as_u64().unwrap() >= 2, "retried until it expired: {st}");
    assert_eq!(
        metric(&c, &sluice, "sluice_replay_total", &[("outcome", "expired")]).await,
        1.0
    );
    let s = admin_spool(&c, sluice.admin_addr).await;
    assert_eq!(s["dlq"]["records"], 1, "{s}");
    sluice.shutdown().await;
}

async fn a_503_with_retry_after_is_retried_then_delivered(kind: SpoolKind) {
    // Each replayed request gets 503 + Retry-After: 1 the first time.
    let tried: Arc<Mutex<HashSet<String>>> = Arc::default();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let tried = tried.clone();
        Box::pin(async move {
            let first = match seen_header(&s, "sluice-id") {
                Some(id) => tried.lock().unwrap().insert(id.to_string()),
                None => false,
            };
            if first {
                Response::builder()
                    .status(503)
                    .header("retry-after", "1")
                    .body(Full::new(Bytes::from_static(b"busy")))
                    .unwrap()
            } else {
                reply(200, "ok")
            }
        })
    }))
    .await;
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), &spool_route("1/min", 1, ""))).await;
    let c = client();
    let url = orders_url(&sluice);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let id = accepted_id(&send(&c, Method::POST, &url, &[], "retry-me").await);
    let st = wait_for_state(&c, &sluice, &id, "delivered", Duration::from_secs(6)).await;
    assert_eq!(st["attempts"], 2, "{st}");
    assert_eq!(st["upstream_status"], 200, "{st}");
    let r = backend.replays();
    assert_eq!(r.len(), 2);
    assert_eq!(seen_header(&r[0], "sluice-attempt"), Some("1"));
    assert_eq!(seen_header(&r[1], "sluice-attempt"), Some("2"));
    assert!(r.iter().all(|s| seen_header(s, "sluice-id") == Some(id.as_str())));
    // Retry-After: 1 is honoured (the default backoff alone is <= 200ms).
    let gap = r[1].at - r[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "retried after {gap:?}, before Retry-After"
    );
    assert!(metric(&c, &sluice, "sluice_replay_total", &[("outcome", "retried")]).await >= 1.0);
    assert_eq!(
        metric(&c, &sluice, "sluice_replay_total", &[("outcome", "delivered")]).await,
        1.0
    );
    sluice.shutdown().await;
}

async fn idempotency_key_repeats_get_the_same_id_and_one_delivery(kind: SpoolKind) {
    let backend = Backend::ok().await;
    // One partition, so replay order is spool order.
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            &format!("[spool]\npartitions = 1\n\n{}", spool_route("1/min", 1, "")),
        ),
    )
    .await;
    let c = client();
    let url = orders_url(&sluice);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);

    let a1 = send(&c, Method::POST, &url, &[("idempotency-key", "k-1")], "a1").await;
    let a2 = send(&c, Method::POST, &url, &[("idempotency-key", "k-1")], "a2").await;
    let id1 = accepted_id(&a1);
    assert_eq!(accepted_id(&a2), id1, "a repeated key gets the first id");
    assert_eq!(a1.json(), a2.json(), "and the same 202 body");
    // Concurrent repeats too.
    let (b1, b2) = tokio::join!(
        send(&c, Method::POST, &url, &[("idempotency-key", "k-2")], "b1"),
        send(&c, Method::POST, &url, &[("idempotency-key", "k-2")], "b2"),
    );
    let id2 = accepted_id(&b1);
    assert_eq!(accepted_id(&b2), id2);
    assert_ne!(id1, id2);
    let plain = accepted_id(&send(&c, Method::POST, &url, &[], "plain").await);

    // The keyless request is last in the only partition: once it is
    // delivered, everything before it has been.
    eventually(Duration::from_secs(5), "delivered", || async {
        (status_json(&c, sluice.data_addr, &plain).await["state"] == "delivered").then_some(())
    })
    .await;
    let s = admin_spool(&c, sluice.admin_addr).await;
    assert_eq!(
        s["partitions"][0]["next_offset"],
        kind.first_offset() + 3,
        "three records, not five: {s}"
    );
    assert_eq!(status_json(&c, sluice.data_addr, &id1).await["state"], "delivered");

    let r = backend.replays();
    assert_eq!(r.len(), 3, "{r:?}");
    let keyed: Vec<_> = r.iter().filter(|s| seen_header(s, "sluice-id") == Some(&id1)).collect();
    assert_eq!(keyed.len(), 1);
    assert_eq!(keyed[0].body, "a1", "the first request is the one kept");
    assert_eq!(
        seen_header(keyed[0], "idempotency-key"),
        Some("k-1"),
        "client's key passed on"
    );
    let k2: Vec<_> = r.iter().filter(|s| seen_header(s, "sluice-id") == Some(&id2)).collect();
    assert_eq!(k2.len(), 1);
    assert_eq!(seen_header(k2[0], "idempotency-key"), Some("k-2"));
    let p: Vec<_> = r.iter().filter(|s| s.body == "plain").collect();
    assert_eq!(p.len(), 1);
    assert_eq!(seen_header(p[0], "sluice-id"), Some(plain.as_str()));
    assert_eq!(
        seen_header(p[0], "idempotency-key"),
        Some(plain.as_str()),
        "without a client key the id is the key"
    );
    sluice.shutdown().await;
}

async fn status_endpoint_walks_queued_delivering_delivered(kind: SpoolKind) {
    // Replays wait at the gate until the test releases them.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let g = g.clone();
        Box::pin(async move {
            if s.headers.contains_key("sluice-id") {
                g.acquire().await.expect("gate open").forget();
            }
            reply(200, "ok")
        })
    }))
    .await;
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            &format!("[spool]\npartitions = 1\n\n{}", spool_route("1/min", 1, "")),
        ),
    )
    .await;
    let c = client();
    let url = orders_url(&sluice);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let a = accepted_id(&send(&c, Method::POST, &url, &[], "a").await);
    let b = accepted_id(&send(&c, Method::POST, &url, &[], "b").await);

    // A is at the backend, held; B waits behind it in the one partition.
    eventually(Duration::from_secs(5), "A at the backend", || async {
        (backend.replays().len() == 1).then_some(())
    })
    .await;
    let st_a = status_json(&c, sluice.data_addr, &a).await;
    assert_eq!(st_a["state"], "delivering", "{st_a}");
    assert_eq!(st_a["attempts"], 1, "{st_a}");
    let st_b = status_json(&c, sluice.data_addr, &b).await;
    assert_eq!(st_b["state"], "queued", "{st_b}");
    assert_eq!(st_b["attempts"], 0, "{st_b}");
    assert_eq!(st_b["id"], b.as_str());
    assert!(st_b["enqueued_at"].is_string(), "{st_b}");
    assert!(st_b.get("delivered_at").is_none(), "{st_b}");

    // Release A: B moves to delivering, held in turn.
    gate.add_permits(1);
    eventually(Duration::from_secs(5), "B at the backend", || async {
        (backend.replays().len() == 2).then_some(())
    })
    .await;
    let st_b = status_json(&c, sluice.data_addr, &b).await;
    assert_eq!(st_b["state"], "delivering", "{st_b}");
    assert_eq!(st_b["attempts"], 1, "{st_b}");
    let st_a = status_json(&c, sluice.data_addr, &a).await;
    assert_eq!(st_a["state"], "delivered", "{st_a}");

    gate.add_permits(1);
    let st_b = eventually(Duration::from_secs(5), "B delivered", || async {
        let st = status_json(&c, sluice.data_addr, &b).await;
        (st["state"] == "delivered").then_some(st)
    })
    .await;
    assert_eq!(st_b["attempts"], 1, "{st_b}");
    assert_eq!(st_b["upstream_status"], 200, "{st_b}");
    assert!(st_b["delivered_at"].is_string(), "{st_b}");

    // Malformed ids and a foreign token: 404.
    for bad in [
        "garbage".to_string(),
        String::new(),
        b[..37].to_string(),
        format!("{b}A"),
    ] {
        let r = request_status(&c, sluice.data_addr, &bad).await;
        assert_eq!(r.status, 404, "id {bad:?}");
    }
    // One character of the token changed: the id still parses to the same
    // (partition, offset), but its token does not match the record's.
    let mut forged = b.clone().into_bytes();
    forged[24] = if forged[24] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (real, fake) = (
        sluice::drain::id::RequestId::parse(&b).unwrap(),
        sluice::drain::id::RequestId::parse(&forged).expect("forged id is well-formed"),
    );
    assert_eq!((real.partition, real.offset), (fake.partition, fake.offset));
    assert_ne!(real.token, fake.token);
    let r = request_status(&c, sluice.data_addr, &forged).await;
    assert_eq!(r.status, 404, "a foreign token reads nothing: {:?}", r.body);
    sluice.shutdown().await;
}

async fn ordered_route_never_reorders_one_keys_requests(kind: SpoolKind) {
    const N: usize = 20;
    // Replays are slow, so a backlog lasts while the bucket refills.
    let backend = Backend::start(Arc::new(|s: Seen| {
        Box::pin(async move {
            if s.headers.contains_key("sluice-id") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            reply(200, "ok")
        })
    }))
    .await;
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            &format!(
                "[spool]\npartitions = 4\n\n{}",
                spool_route("10/s", 2, "ordered = true\npartition_key = \"header:x-user\"")
            ),
        ),
    )
    .await;
    let c = client();
    let url = orders_url(&sluice);
    let mut statuses = Vec::new();
    for i in 0..N {
        let n = i.to_string();
        let r = send(&c, Method::POST, &url, &[("x-user", "alice"), ("x-n", &n)], n.clone()).await;
        assert!(r.status == 200 || r.status == 202, "{i}: {}", r.status);
        statuses.push(r.status.as_u16());
        // Pacing (not waiting for anything): the bucket refills a token
        // every 100 ms, so without `ordered` later requests would be
        // forwarded live past the backlog.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses.contains(&202), "{statuses:?}");
    eventually(Duration::from_secs(10), "all delivered", || async {
        (backend.count() >= N).then_some(())
    })
    .await;
    let order: Vec<usize> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| seen_header(s, "x-n").unwrap().parse().unwrap())
        .collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "statuses were {statuses:?}");
    sluice.shutdown().await;
}

on_both_spools!(
    burst_is_absorbed_then_drained_within_the_upstream_budget,
    refused_backend_connection_spools_the_request,
    backend_timeout_after_sending_is_504_and_not_spooled,
    a_4xx_for_a_replay_goes_to_the_dlq,
    a_record_older_than_max_age_goes_to_the_dlq_as_expired,
    a_503_with_retry_after_is_retried_then_delivered,
    idempotency_key_repeats_get_the_same_id_and_one_delivery,
    status_endpoint_walks_queued_delivering_delivered,
    ordered_route_never_reorders_one_keys_requests,
);
