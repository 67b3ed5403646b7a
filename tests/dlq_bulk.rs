//! Bulk dead-letter replay by filters (route, reason, when they died), in
//! pages through the admin API (on both spools) and to the end with the
//! offline CLI (the local spool's).

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// Live requests get 200. Until healed, a replay whose body starts with
/// "reject" gets 400 (dead as `rejected`), any other 503 (dead as
/// `max_attempts` with one attempt allowed); once healed, 200.
async fn backend(healed: Arc<AtomicBool>) -> Backend {
    Backend::start(Arc::new(move |s: Seen| {
        let healed = healed.clone();
        Box::pin(async move {
            let status = if !s.headers.contains_key("sluice-id") || healed.load(Ordering::SeqCst) {
                200
            } else if s.body.starts_with(b"reject") {
                400
            } else {
                503
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
    }))
    .await
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

async fn dlq_records(c: &TestClient, admin: std::net::SocketAddr) -> u64 {
    admin_spool(c, admin).await["dlq"]["records"].as_u64().unwrap()
}

async fn dead_letters_are_replayed_by_route_reason_and_time_in_pages(kind: SpoolKind) {
    let healed = Arc::new(AtomicBool::new(false));
    let backend = backend(healed.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let route = |name: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nmatch = {{ path_prefix = \"/{name}\" }}\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n"
        )
    };
    let text = config_text(
        &backend.url(),
        &format!(
            "[spool]\ndir = \"{}\"\n[drain]\nmax_attempts = 1\n\n{}\n{}",
            spool_dir.display(),
            route("orders"),
            route("refunds")
        ),
    );
    let sluice = start_sluice_on(kind, &text).await;
    let c = client();
    let admin = sluice.admin_addr;
    let post = |path: &str, body: &'static str| {
        let (c, url) = (c.clone(), format!("http://{}/{path}", sluice.data_addr));
        async move { send(&c, Method::POST, &url, &[], Bytes::from_static(body.as_bytes())).await }
    };
    // Spend each route's one token on a live request.
    assert_eq!(post("orders", "live").await.status, 200);
    assert_eq!(post("refunds", "live").await.status, 200);
    for _ in 0..3 {
        assert_eq!(post("orders", "reject").await.status, 202);
    }
    let (c2, a2) = (c.clone(), admin);
    eventually(Duration::from_secs(10), "three dead letters", || {
        let c = c2.clone();
        async move { (dlq_records(&c, a2).await == 3).then_some(()) }
    })
    .await;
    let between = now_rfc3339();
    for _ in 0..2 {
        assert_eq!(post("refunds", "reject").await.status, 202);
        assert_eq!(post("orders", "retry").await.status, 202);
    }
    eventually(Duration::from_secs(10), "seven dead letters", || {
        let c = c2.clone();
        async move { (dlq_records(&c, a2).await == 7).then_some(()) }
    })
    .await;
    healed.store(true, Ordering::SeqCst);

    let replay = |body: serde_json::Value| {
        let (c, url) = (c.clone(), format!("http://{admin}/admin/dlq/replay"));
        async move { send(&c, Method::POST, &url, &[], Bytes::from(body.to_string())).await }
    };
    // Refused: ids with filters, a bad time, a page too large.
    let some_id = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (body, needle) in [
        (serde_json::json!({"ids": [some_id], "route": "orders"}), "not both"),
        (serde_json::json!({"since": "yesterday"}), "since"),
        (serde_json::json!({"all": true, "limit": 1001}), "limit"),
        (serde_json::json!({}), "select dead letters"),
        (serde_json::json!({"reason": "max-attempts"}), "none of"),
    ] {
        let r = replay(body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(needle),
            "{body}: {:?}",
            r.body
        );
    }
    assert_eq!(dlq_records(&c, admin).await, 7, "a refused selection replays nothing");
    // A purge takes its whole selection: a page of it is refused.
    let r = send(
        &c,
        Method::POST,
        &format!("http://{admin}/admin/dlq/purge"),
        &[],
        Bytes::from(serde_json::json!({"all": true, "from": 3}).to_string()),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(dlq_records(&c, admin).await, 7);

    // orders + rejected, two per page: 2, then the last 1.
    let first = replay(serde_json::json!({"route": "orders", "reason": "rejected", "limit": 2})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let v = first.json();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 2, "{v}");
    let next = v["next_from"].as_u64().expect("more to come");
    let before = v["before"].as_u64().expect("the sweep's bound");
    let second = replay(
        serde_json::json!({"route": "orders", "reason": "rejected", "limit": 2, "from": next, "before": before}),
    )
    .await;
    let v = second.json();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["next_from"].is_null(), "{v}");
    // refunds that died after `between`.
    let v = replay(serde_json::json!({"route": "refunds", "since": between}))
        .await
        .json();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 2, "{v}");
    // Nothing of orders died before the first ever request: until filters.
    let v = replay(serde_json::json!({"route": "orders", "until": "2000-01-01T00:00:00Z"}))
        .await
        .json();
    assert_eq!(v["replayed"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(dlq_records(&c, admin).await, 2, "the two max_attempts letters are left");
    let b = &backend;
    eventually(
        Duration::from_secs(10),
        "the five replayed letters delivered (after five refused first tries)",
        || async move {
            (b.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.body.starts_with(b"reject"))
                .count()
                == 5 + 5)
                .then_some(())
        },
    )
    .await;
    sluice.shutdown().await;
    if kind == SpoolKind::JetStream {
        // The offline CLI reads a spool directory: the local spool's alone.
        return;
    }

    // Offline, the same filters on the CLI, to the end.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["spool", "dlq", "replay", "--spool-dir"])
        .arg(&spool_dir)
        .args([
            "--reason",
            "max_attempts",
            "--route",
            "orders",
            "--until",
            &now_rfc3339(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 2"), "{stdout}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["spool", "dlq", "replay", "--spool-dir"])
        .arg(&spool_dir)
        .args(["--id", some_id, "--route", "orders"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--id with a filter is refused");
}

on_both_spools!(dead_letters_are_replayed_by_route_reason_and_time_in_pages);
