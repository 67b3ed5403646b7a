//! A full spool answers 503 spool_full with Retry-After, writes nothing
//! half, and takes requests again once replay frees space.
mod support;

use http::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_full_spool_answers_503_and_recovers_when_space_frees() {
    // A backend that refuses until the test opens it, so the spool fills.
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let backend = Backend::start(Arc::new(move |_seen: Seen| {
        let ok = gate.load(Ordering::SeqCst);
        Box::pin(async move {
            http::Response::builder()
                .status(if ok { 200 } else { 503 })
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        })
    }))
    .await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[spool]\nsegment_bytes = \"16KiB\"\nmax_bytes = \"48KiB\"\nmax_record = \"4KiB\"\npartitions = 1\n\
         [drain]\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\n\
         [breaker]\nfailures = 0\n\
         [[route]]\nname = \"w\"\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/w", sluice.data_addr);
    let body = vec![b'x'; 3000];
    let mut accepted = 0;
    let mut full = None;
    for _ in 0..100 {
        let r = send(&c, Method::POST, &url, &[], body.clone()).await;
        match r.status.as_u16() {
            202 => accepted += 1,
            503 if serde_json::from_slice::<serde_json::Value>(&r.body).is_ok_and(|v| v["error"] == "spool_full") => {
                full = Some(r);
                break;
            }
            // The first request is within the limit and reaches the
            // refusing backend.
            503 => {}
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    let full = full.expect("the spool fills up within 100 requests of 3 KB against a 48 KiB quota");
    assert!(accepted >= 5, "only {accepted} accepted before full");
    assert!(full.header("retry-after").parse::<u64>().unwrap() >= 1);
    let status = admin_spool(&c, sluice.admin_addr).await;
    let backlog = status["partitions"][0]["backlog_records"].as_u64().unwrap();
    assert_eq!(backlog, accepted, "every 202 is in the spool, and nothing else");
    let m = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(
            &m,
            "sluice_requests_total",
            &[("route", "w"), ("decision", "spool_full")]
        ),
        Some(1.0)
    );

    // Open the backend: replay drains, segments are reclaimed, and the
    // spool takes writes again.
    open.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(20), "space frees and a write is accepted", || {
        let (c, url, body) = (c.clone(), url.clone(), body.clone());
        async move {
            let r = send(&c, Method::POST, &url, &[], body).await;
            (r.status == 202).then_some(())
        }
    })
    .await;
    sluice.shutdown().await;
}
