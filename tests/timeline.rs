//! The delivery timeline: `history` in the status answer after a request
//! that was retried and then delivered, kept across a restart, and found
//! by its Idempotency-Key through the admin API.

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// A backend that answers 503 to the first two attempts of each request
/// (told apart by Sluice-Id), then 200.
async fn flaky_twice() -> Backend {
    let tries: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    Backend::start(Arc::new(move |seen: Seen| {
        let tries = tries.clone();
        Box::pin(async move {
            let id = seen_header(&seen, "sluice-id").unwrap_or("live").to_string();
            let n = {
                let mut t = tries.lock().unwrap();
                let n = t.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            let status = if id != "live" && n <= 2 { 503 } else { 200 };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
    }))
    .await
}

async fn a_retried_then_delivered_request_shows_each_attempt_also_by_key_and_after_a_restart(kind: SpoolKind) {
    let backend = flaky_twice().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &backend.url(),
        &format!(
            "[spool]\ndir = \"{}\"\n[drain]\nbackoff_initial = \"50ms\"\nbackoff_max = \"100ms\"\n\n\
             [[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
            dir.path().join("spool").display()
        ),
    );
    let text = kind.config(&text);
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    assert_eq!(send(&c, Method::POST, &url, &[], Bytes::new()).await.status, 200);
    let key = "order 7/a&b";
    let r = send(
        &c,
        Method::POST,
        &url,
        &[("idempotency-key", key)],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.header("sluice-id").to_string();
    let (data, admin) = (sluice.data_addr, sluice.admin_addr);
    let st = eventually(Duration::from_secs(10), "delivered after two 503s", || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let st = request_status(&c, data, &id).await.json();
            (st["state"] == "delivered").then_some(st)
        }
    })
    .await;
    let check = |st: &serde_json::Value| {
        assert_eq!(st["attempts"], 3, "{st}");
        let h = st["history"].as_array().unwrap_or_else(|| panic!("history: {st}"));
        let statuses: Vec<_> = h.iter().map(|a| a["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses, [503, 503, 200]);
        for a in h {
            assert!(a["error"].is_null());
            assert!(a["latency_ms"].as_u64().is_some());
            assert!(a["at"].as_str().unwrap().ends_with('Z'), "RFC 3339: {a}");
        }
        let at: Vec<&str> = h.iter().map(|a| a["at"].as_str().unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]), "oldest first: {at:?}");
    };
    check(&st);

    // By Idempotency-Key, through the admin API (percent-encoded).
    let by_key = |route: &str| format!("http://{admin}/admin/requests?idempotency_key=order%207%2Fa%26b&route={route}");
    let r = get(&c, &by_key("orders")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    check(&r.json());
    assert_eq!(get(&c, &by_key("other")).await.status, 404, "a key is per route");
    let r = get(&c, &format!("http://{admin}/admin/requests?idempotency_key=x")).await;
    assert_eq!(r.status, 400, "the route is needed");

    // Journalled: the timeline survives a restart.
    sluice.shutdown().await;
    let sluice = start_sluice(&text).await;
    let st = request_status(&c, sluice.data_addr, &id).await.json();
    assert_eq!(st["state"], "delivered");
    check(&st);
    let r = get(
        &c,
        &format!(
            "http://{}/admin/requests?idempotency_key=order%207%2Fa%26b&route=orders",
            sluice.admin_addr
        ),
    )
    .await;
    assert_eq!(r.status, 200, "the key is journalled too");
}

async fn an_attempt_without_an_answer_names_its_error(kind: SpoolKind) {
    // Nothing listens upstream: each attempt fails to connect.
    let port = closed_port();
    let text = config_text(
        &format!("http://127.0.0.1:{port}"),
        "[drain]\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"\n[breaker]\nfailures = 0\n\n\
         [[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
    );
    let text = kind.config(&text);
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    // The live request fails to connect and is spooled (never sent).
    let r = send(&c, Method::POST, &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 202);
    let id = r.header("sluice-id").to_string();
    let data = sluice.data_addr;
    let st = eventually(Duration::from_secs(10), "two failed attempts", || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let st = request_status(&c, data, &id).await.json();
            (st["history"].as_array().is_some_and(|h| h.len() >= 2)).then_some(st)
        }
    })
    .await;
    assert_eq!(st["state"], "delivering", "{st}");
    let h = st["history"].as_array().unwrap();
    assert!(h.len() <= 10, "at most the newest 10");
    for a in h {
        assert_eq!(a["error"], "connect", "{a}");
        assert!(a["status"].is_null());
    }
}

on_both_spools!(
    a_retried_then_delivered_request_shows_each_attempt_also_by_key_and_after_a_restart,
    an_attempt_without_an_answer_names_its_error,
);
