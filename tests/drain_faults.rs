//! Fault paths of the drain side (issue 10): an HTTP-date `Retry-After`
//! end to end.

mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
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
