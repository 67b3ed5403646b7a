//! A handful of spooled records that a healthy backend always refuses must
//! not keep live traffic out through the circuit breaker (issue 11,
//! defect 2): live traffic is refused for at most one cooldown.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn poison_records_keep_live_traffic_out_for_at_most_one_cooldown() {
    // Healthy for everything but the poison records, which it always 503s.
    let backend = Backend::start(Arc::new(|seen: Seen| {
        Box::pin(async move {
            let status = if seen.uri.starts_with("/poison") { 503 } else { 200 };
            http::Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"")))
                .unwrap()
        })
    }))
    .await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[breaker]\nfailures = 5\ncooldown = \"1s\"\n\
         [drain]\nmax_attempts = 10000\nbackoff_initial = \"20ms\"\nbackoff_max = \"100ms\"\nretry_on = [503]\n\
         [[route]]\nname = \"poison\"\nmatch = { path_prefix = \"/poison\", methods = [\"POST\"] }\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
    ))
    .await;
    let c = client();
    let post = format!("http://{}/poison", sluice.data_addr);
    let mut spooled = 0;
    for _ in 0..7 {
        let r = send(&c, http::Method::POST, &post, &[], "x").await;
        if r.status == 202 {
            spooled += 1;
        }
    }
    assert_eq!(
        spooled, 6,
        "one went live (and got the backend's 503), six were spooled"
    );
    // Live GETs every 50 ms for 6 s, while replay keeps retrying the six.
    let get_url = format!("http://{}/live", sluice.data_addr);
    let t0 = Instant::now();
    let mut refused: Vec<Duration> = Vec::new();
    let mut total = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        let r = get(&c, &get_url).await;
        total += 1;
        match r.status.as_u16() {
            200 => {}
            503 => {
                assert_eq!(r.json()["error"], "upstream_unavailable");
                refused.push(t0.elapsed());
            }
            s => panic!("unexpected {s}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retries = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri.starts_with("/poison"))
        .count();
    assert!(
        retries > 20,
        "replay kept retrying the poison records ({retries} tries)"
    );
    if let (Some(first), Some(last)) = (refused.first(), refused.last()) {
        assert!(
            *last - *first <= Duration::from_millis(1500),
            "live GETs refused from {first:?} to {last:?} ({} of {total}): more than one cooldown (1s)",
            refused.len()
        );
    }
    println!("{} of {total} live GETs refused, poison tries {retries}", refused.len());
}
