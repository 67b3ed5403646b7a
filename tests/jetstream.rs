//! The JetStream spool's own behaviour on one node (R=1), beyond the replay
//! cases `tests/replay.rs` runs on both spools: replicas sharing a
//! backlog (status and Idempotency-Key from any replica, the fleet-wide
//! pause), the DLQ stream through the admin API, NATS going away and coming
//! back, and streams that don't match the config.

mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn orders(rate: &str, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/orders\" }}\nrate = \"{rate}\"\nburst = 1\non_limit = \"spool\"\n{extra}\n"
    )
}

/// Two in-process replicas on the shared nats-server, in one set of streams.
async fn two_replicas(backend: &str, extra: &str) -> (sluice::app::Running, sluice::app::Running) {
    let name = format!("t{:016x}", rand::random::<u64>());
    let text = with_jetstream_named(&config_text(backend, extra), &[shared_nats().url()], 1, &name);
    (start_sluice(&text).await, start_sluice(&text).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_status_and_idempotency_keys() {
    let backend = Backend::ok().await;
    let (a, b) = two_replicas(&backend.url(), &orders("1/min", "")).await;
    let c = client();
    let (url_a, url_b) = (
        format!("http://{}/orders", a.data_addr),
        format!("http://{}/orders", b.data_addr),
    );
    // Replay paused fleet-wide (from A), so records stay queued.
    assert_eq!(admin_post(&c, a.admin_addr, "/admin/drain/pause").await.status, 200);
    eventually(Duration::from_secs(5), "B sees the pause", || async {
        (admin_spool(&c, b.admin_addr).await["paused"] == true).then_some(())
    })
    .await;
    assert_eq!(send(&c, Method::POST, &url_a, &[], "live").await.status, 200);
    assert_eq!(send(&c, Method::POST, &url_b, &[], "live").await.status, 200);
    let first = send(&c, Method::POST, &url_a, &[("idempotency-key", "k-1")], "one").await;
    let id = accepted_id(&first);
    // The same key on the other replica: the first id, nothing new spooled.
    let again = send(&c, Method::POST, &url_b, &[("idempotency-key", "k-1")], "two").await;
    assert_eq!(accepted_id(&again), id);
    let other = accepted_id(&send(&c, Method::POST, &url_b, &[("idempotency-key", "k-2")], "three").await);
    assert_ne!(other, id);

    // Queued, seen alike from both replicas; nothing delivered while paused.
    let (sa, sb) = (
        status_json(&c, a.data_addr, &id).await,
        status_json(&c, b.data_addr, &id).await,
    );
    assert_eq!(sa["state"], "queued", "{sa}");
    assert_eq!(sa, sb, "both replicas answer the same");
    // The admin lookup by key, from either replica.
    let r = get(
        &c,
        &format!(
            "http://{}/admin/requests?idempotency_key=k-1&route=orders",
            b.admin_addr
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["id"], id.as_str());
    assert_eq!(
        backend.count(),
        2,
        "only the live requests reached the backend while paused"
    );

    // Resumed (from B): both delivered once, and both replicas say so.
    assert_eq!(admin_post(&c, b.admin_addr, "/admin/drain/resume").await.status, 200);
    for x in [&id, &other] {
        eventually(Duration::from_secs(10), "delivered", || async {
            (status_json(&c, a.data_addr, x).await["state"] == "delivered").then_some(())
        })
        .await;
        assert_eq!(status_json(&c, b.data_addr, x).await["state"], "delivered");
    }
    let bodies: Vec<Bytes> = backend.replays().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies.contains(&Bytes::from("one")) && bodies.contains(&Bytes::from("three")));
    // A foreign token reads nothing.
    let mut forged = id.clone().into_bytes();
    forged[30] = if forged[30] == b'A' { b'B' } else { b'A' };
    let r = request_status(&c, a.data_addr, std::str::from_utf8(&forged).unwrap()).await;
    assert_eq!(r.status, 404);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_replayed_and_purged_through_the_admin_api() {
    // Replays are refused for good until `accept` is set.
    let accept = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acc = accept.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let ok = !s.headers.contains_key("sluice-id") || acc.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            Response::builder()
                .status(if ok { 200 } else { 422 })
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap()
        })
    }))
    .await;
    let sluice = start_sluice_on(SpoolKind::JetStream, &config_text(&backend.url(), &orders("1/min", ""))).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let ids: Vec<String> =
        futures_util::future::join_all((0..3).map(|i| send(&c, Method::POST, &url, &[], format!("doomed-{i}"))))
            .await
            .iter()
            .map(accepted_id)
            .collect();
    for id in &ids {
        eventually(Duration::from_secs(10), "dead", || async {
            (status_json(&c, sluice.data_addr, id).await["state"] == "dead").then_some(())
        })
        .await;
    }
    let list = get(&c, &format!("http://{}/admin/dlq", sluice.admin_addr)).await.json();
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3, "{list}");
    assert!(
        letters
            .iter()
            .all(|d| d["reason"] == "rejected" && d["last_status"] == 422),
        "{list}"
    );
    let listed: Vec<&str> = letters.iter().map(|d| d["id"].as_str().unwrap()).collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} listed: {list}");
    }
    // Paged listing.
    let page = get(&c, &format!("http://{}/admin/dlq?limit=2", sluice.admin_addr))
        .await
        .json();
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 2);
    assert!(page["next_from"].is_u64(), "{page}");

    // Replay one by id once the backend takes it: a new id, delivered; the
    // old id points at it.
    accept.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = send(
        &c,
        Method::POST,
        &format!("http://{}/admin/dlq/replay", sluice.admin_addr),
        &[("content-type", "application/json")],
        serde_json::json!({"ids": [ids[0]]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let new_id = r.json()["replayed"][0]["replayed_as"].as_str().unwrap().to_string();
    assert_ne!(new_id, ids[0]);
    eventually(Duration::from_secs(10), "replayed letter delivered", || async {
        (status_json(&c, sluice.data_addr, &new_id).await["state"] == "delivered").then_some(())
    })
    .await;
    assert_eq!(
        status_json(&c, sluice.data_addr, &ids[0]).await["replayed_as"],
        new_id.as_str()
    );
    // The replayed letter left a gap in the DLQ stream: the
    // listing skips it.
    let list = get(&c, &format!("http://{}/admin/dlq", sluice.admin_addr)).await.json();
    let left: Vec<&str> = list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{list}");
    assert!(!left.contains(&ids[0].as_str()), "{list}");
    // Purge the rest by filter.
    let r = send(
        &c,
        Method::POST,
        &format!("http://{}/admin/dlq/purge", sluice.admin_addr),
        &[("content-type", "application/json")],
        serde_json::json!({"route": "orders", "reason": "rejected"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["purged"], 2);
    let s = admin_spool(&c, sluice.admin_addr).await;
    assert_eq!(s["dlq"]["records"], 0, "{s}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_spooling_answers_503_and_live_traffic_goes_on() {
    let mut nats = NatsServer::start();
    let backend = Backend::ok().await;
    let text = with_jetstream(&config_text(&backend.url(), &orders("2/s", "")), &[nats.url()], 1);
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    let admin = sluice.admin_addr;
    assert_eq!(
        metric_value(&metrics_text(&c, admin).await, "sluice_spool_store_up", &[]),
        Some(1.0)
    );

    nats.kill();
    // Over the limit: never a 202 without a PubAck.
    let r = eventually(Duration::from_secs(10), "spooling refused", || async {
        let r = send(&c, Method::POST, &url, &[], "x").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["error"], "spool_full", "{:?}", r.body);
    assert!(!r.header("retry-after").is_empty(), "503 carries Retry-After");
    for _ in 0..5 {
        let r = send(&c, Method::POST, &url, &[], "x").await;
        assert_ne!(r.status, 202, "no 202 while NATS is away");
    }
    // Within the limit, requests are forwarded live as ever.
    let before = backend.count();
    eventually(Duration::from_secs(5), "a live request forwarded", || async {
        let r = send(&c, Method::GET, &url, &[], "").await;
        (r.status == 200).then_some(())
    })
    .await;
    assert!(backend.count() > before, "it reached the backend");
    eventually(Duration::from_secs(5), "store_up 0", || async {
        let v = metric_value(&metrics_text(&c, admin).await, "sluice_spool_store_up", &[]);
        (v == Some(0.0)).then_some(())
    })
    .await;
    // Every replica loses NATS at once: unready would stop live traffic too.
    assert_eq!(get(&c, &format!("http://{admin}/readyz")).await.status, 200);

    // NATS back: the client reconnects by itself and spooling resumes.
    nats.restart();
    let id = eventually(Duration::from_secs(15), "spooling again", || async {
        let r = send(&c, Method::POST, &url, &[], "after").await;
        (r.status == 202).then(|| accepted_id(&r))
    })
    .await;
    eventually(Duration::from_secs(10), "delivered", || async {
        (status_json(&c, sluice.data_addr, &id).await["state"] == "delivered").then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "store_up 1", || async {
        let v = metric_value(&metrics_text(&c, admin).await, "sluice_spool_store_up", &[]);
        (v == Some(1.0)).then_some(())
    })
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_differs_from_the_config_is_a_clear_error() {
    let backend = Backend::ok().await;
    let name = format!("t{:016x}", rand::random::<u64>());
    let text = with_jetstream_named(
        &config_text(&backend.url(), &orders("1/s", "")),
        &[shared_nats().url()],
        1,
        &name,
    );
    let first = start_sluice(&text).await;
    first.shutdown().await;
    // The same streams, another max_age.
    let changed = text.replace("[spool.jetstream]", "[spool.jetstream]\nmax_age = \"30d\"");
    let cfg = parse_config(&changed);
    let err = match sluice::app::start(cfg, private_spool(&parse_config(&changed))).await {
        Ok(_) => panic!("a stream with another max_age must not be taken as is"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("spool.jetstream.max_age"), "{err}");
    assert!(err.contains(&format!("stream {name}-0")), "{err}");
    // Another ordering is another consumer shape.
    let unordered = text.replace("[spool]", "[drain]\nordering = \"none\"\n\n[spool]");
    let err = match sluice::app::start(parse_config(&unordered), private_spool(&parse_config(&unordered))).await {
        Ok(_) => panic!("a consumer of another shape must not be taken as is"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("drain.ordering"), "{err}");
    // Another partition count would strand records or move keys.
    let more = text.replace("[spool]", "[spool]\npartitions = 16");
    let err = match sluice::app::start(parse_config(&more), private_spool(&parse_config(&more))).await {
        Ok(_) => panic!("another partition count must not be taken as is"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("spool.partitions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_record_holds_its_partition_across_the_fleet() {
    // The first attempt of "a" gets 503 + Retry-After: 1; all else 200.
    let tried = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = tried.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let refuse =
            s.headers.contains_key("sluice-id") && s.body == "a" && !t.swap(true, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let mut r = Response::builder().status(if refuse { 503 } else { 200 });
            if refuse {
                r = r.header("retry-after", "1");
            }
            r.body(Full::new(Bytes::from_static(b"x"))).unwrap()
        })
    }))
    .await;
    let (a, b) = two_replicas(
        &backend.url(),
        &format!("[spool]\npartitions = 1\n\n{}", orders("1/min", "")),
    )
    .await;
    let c = client();
    assert_eq!(admin_post(&c, a.admin_addr, "/admin/drain/pause").await.status, 200);
    eventually(Duration::from_secs(5), "B sees the pause", || async {
        (admin_spool(&c, b.admin_addr).await["paused"] == true).then_some(())
    })
    .await;
    for r in [&a, &b] {
        let url = format!("http://{}/orders", r.data_addr);
        assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    }
    let mut ids = Vec::new();
    for (body, r) in [("a", &a), ("b", &b), ("c", &a)] {
        let url = format!("http://{}/orders", r.data_addr);
        ids.push(accepted_id(&send(&c, Method::POST, &url, &[], body).await));
    }
    assert_eq!(admin_post(&c, b.admin_addr, "/admin/drain/resume").await.status, 200);
    let last = ids.last().unwrap().clone();
    eventually(Duration::from_secs(15), "all delivered", || async {
        (status_json(&c, a.data_addr, &last).await["state"] == "delivered").then_some(())
    })
    .await;
    let order: Vec<(String, String)> = backend
        .replays()
        .iter()
        .map(|s| {
            (
                String::from_utf8_lossy(&s.body).to_string(),
                seen_header(s, "sluice-attempt").unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")]
        .iter()
        .map(|(b, n)| (b.to_string(), n.to_string()))
        .collect();
    assert_eq!(order, want, "b and c wait for a's retry, whichever replica pulls");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_replica_is_taken_over() {
    let backend = Backend::ok().await;
    let name = format!("t{:016x}", rand::random::<u64>());
    let text = with_jetstream_named(
        &config_text(&backend.url(), &orders("1/min", "")),
        &[shared_nats().url()],
        1,
        &name,
    )
    .replace("[spool.jetstream]", "[spool.jetstream]\npublish_timeout = \"300ms\"");
    let sluice = start_sluice(&text).await;
    // A replica claimed key "k" and died before publishing: the claim
    // stays pending in the state bucket.
    let nc = async_nats::connect(shared_nats().url()).await.unwrap();
    let kv = async_nats::jetstream::new(nc)
        .get_key_value(format!("{name}-state"))
        .await
        .unwrap();
    let hash: String = sluice::drain::outcomes::key_hash("orders", "k")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    kv.put(format!("idem.orders.{hash}"), "pending".into()).await.unwrap();

    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let started = std::time::Instant::now();
    let r = send(&c, Method::POST, &url, &[("idempotency-key", "k")], "mine").await;
    let id = accepted_id(&r);
    // Taken over after 3 × publish_timeout + 1 s unchanged, not before.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    let again = send(&c, Method::POST, &url, &[("idempotency-key", "k")], "again").await;
    assert_eq!(accepted_id(&again), id, "the key now holds the new request's id");
    eventually(Duration::from_secs(10), "delivered", || async {
        (status_json(&c, sluice.data_addr, &id).await["state"] == "delivered").then_some(())
    })
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_answers_503_and_drops_no_accepted_request() {
    let backend = Backend::ok().await;
    // One partition of about 200 KiB; records of about 1 KiB.
    let text = with_jetstream(
        &config_text(
            &backend.url(),
            &format!(
                "[spool]\npartitions = 1\nmax_record = \"4KiB\"\n\n{}",
                orders("1/min", "")
            ),
        ),
        &[shared_nats().url()],
        1,
    )
    .replace("max_bytes = \"64MiB\"", "max_bytes = \"200KiB\"");
    let sluice = start_sluice(&text).await;
    let c = client();
    let admin = sluice.admin_addr;
    assert_eq!(admin_post(&c, admin, "/admin/drain/pause").await.status, 200);
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    let body = "x".repeat(1024);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let r = send(&c, Method::POST, &url, &[("x-n", &i.to_string())], body.clone()).await;
        match r.status.as_u16() {
            202 => accepted.push(accepted_id(&r)),
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("request {i}: {other} {:?}", r.body),
        }
    }
    let refused = refused.expect("the stream fills within 400 records of 1 KiB");
    assert_eq!(refused.json()["error"], "spool_full", "{:?}", refused.body);
    assert!(!refused.header("retry-after").is_empty());
    assert!(accepted.len() > 50, "{} accepted before full", accepted.len());
    // Nothing acknowledged was dropped to make room: all delivered.
    assert_eq!(admin_post(&c, admin, "/admin/drain/resume").await.status, 200);
    let want = accepted.len();
    let b = &backend;
    eventually(
        Duration::from_secs(30),
        "every accepted request delivered",
        || async move { (b.replays().len() >= want).then_some(()) },
    )
    .await;
    for id in &accepted {
        assert_eq!(
            status_json(&c, sluice.data_addr, id).await["state"],
            "delivered",
            "{id}"
        );
    }
    // Room again: spooling resumes by itself.
    let r = send(&c, Method::POST, &url, &[], body.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_user_credentials_authenticate_and_a_wrong_one_is_a_clear_start_error() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let route = orders("1/min", "");
    // A token from a file.
    let with_token = NatsServer::start_with(&["--auth", "s3cret-token"]);
    let token_file = write_file(dir.path(), "token", "s3cret-token\n");
    let text = with_jetstream(&config_text(&backend.url(), &route), &[with_token.url()], 1).replace(
        "[spool.jetstream]",
        &format!("[spool.jetstream]\ntoken_file = \"{}\"", token_file.display()),
    );
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    accepted_id(&send(&c, Method::POST, &url, &[], "spooled").await);
    sluice.shutdown().await;
    // A wrong token: the start fails, saying so, without the token.
    let wrong_file = write_file(dir.path(), "wrong", "not-the-token\n");
    let wrong = text.replace(&token_file.display().to_string(), &wrong_file.display().to_string());
    let err = match sluice::app::start(parse_config(&wrong), private_spool(&parse_config(&wrong))).await {
        Ok(_) => panic!("a wrong token must not connect"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("can't connect to NATS"), "{err}");
    assert!(!err.contains("not-the-token") && !err.contains("s3cret"), "{err}");

    // A user and a password from a file.
    let with_user = NatsServer::start_with(&["--user", "sluice", "--pass", "pw-from-file"]);
    let pw = write_file(dir.path(), "pw", "pw-from-file\n");
    let text = with_jetstream(&config_text(&backend.url(), &route), &[with_user.url()], 1).replace(
        "[spool.jetstream]",
        &format!(
            "[spool.jetstream]\nuser = \"sluice\"\npassword_file = \"{}\"",
            pw.display()
        ),
    );
    let sluice = start_sluice(&text).await;
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    accepted_id(&send(&c, Method::POST, &url, &[], "spooled").await);
    let spool = get(&c, &format!("http://{}/admin/spool", sluice.admin_addr)).await;
    assert!(!String::from_utf8_lossy(&spool.body).contains("pw-from-file"));
    let metrics = metrics_text(&c, sluice.admin_addr).await;
    assert!(!metrics.contains("pw-from-file"));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_status_reads_a_jetstream_spool_from_its_config() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let text = with_jetstream(
        &config_text(
            &backend.url(),
            &format!("[spool]\npartitions = 2\n\n{}", orders("1/min", "")),
        ),
        &[shared_nats().url()],
        1,
    );
    let path = write_file(dir.path(), "sluice.toml", &text);
    let sluice = start_sluice(&text).await;
    let c = client();
    assert_eq!(
        admin_post(&c, sluice.admin_addr, "/admin/drain/pause").await.status,
        200
    );
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], "live").await.status, 200);
    for _ in 0..3 {
        accepted_id(&send(&c, Method::POST, &url, &[], "queued").await);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["spool", "status", "--json", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{v}");
    let backlog: u64 = parts.iter().map(|p| p["backlog_records"].as_u64().unwrap()).sum();
    assert_eq!(backlog, 3, "{v}");
    assert!(v["dir"].as_str().unwrap().starts_with("jetstream:"), "{v}");
    sluice.shutdown().await;
    // Pointed at streams that don't exist, it says so and creates nothing.
    let typo = write_file(
        dir.path(),
        "typo.toml",
        &with_jetstream(&config_text(&backend.url(), ""), &[shared_nats().url()], 1),
    );
    for _ in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["spool", "status", "-c"])
            .arg(&typo)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not found") && err.contains("no JetStream spool"), "{err}");
    }
}
