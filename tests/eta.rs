//! The ETA on every 202 (`Retry-After`, `eta_ms`) and in the status
//! answer (`position`, `eta_ms`), checked against when requests really
//! reach the backend on a steady backlog, on both spools (with JetStream
//! the rate is the fleet's, from the streams' heads).

#[macro_use]
mod support;

use bytes::Bytes;
use http::Method;
use std::time::{Duration, Instant};
use support::*;

async fn on_a_steady_backlog_nine_in_ten_land_within_20_percent_of_their_eta(kind: SpoolKind) {
    let backend = Backend::ok().await;
    // One partition drained at the backend's 20/s.
    let sluice = start_sluice_on(
        kind,
        &config_text(
            &backend.url(),
            "[spool]\npartitions = 1\n\n[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/\" }\n\
         rate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
        )
        .replace("url = ", "capacity = \"20/s\"\ncapacity_burst = 1\nurl = "),
    )
    .await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    let post = |i: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move { send(&c, Method::POST, &url, &[], Bytes::from(format!("{i}"))).await }
    };
    assert_eq!(post(0).await.status, 200, "the one token");

    // Before any delivery there is nothing to estimate from.
    let first = post(1).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.json()["eta_ms"], serde_json::Value::Null);
    assert!(!first.headers.contains_key("retry-after"));
    for i in 2..160 {
        assert_eq!(post(i).await.status, 202);
    }
    let b = &backend;
    eventually(Duration::from_secs(20), "2 s of steady delivery", || async move {
        (b.count() >= 40).then_some(())
    })
    .await;

    // Twenty probes, one every 100 ms, each with its ETA.
    let mut probes = Vec::new();
    for i in 0..20 {
        let sent = Instant::now();
        let r = post(1000 + i).await;
        assert_eq!(r.status, 202);
        let eta_ms = r.json()["eta_ms"].as_u64().expect("an ETA while deliveries flow");
        let retry_after: u64 = r.header("retry-after").parse().unwrap();
        assert_eq!(
            retry_after,
            eta_ms.div_ceil(1000).max(1),
            "Retry-After is the ETA in whole seconds, up"
        );
        probes.push((r.header("sluice-id").to_string(), sent, Duration::from_millis(eta_ms)));
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the probes, not waiting on a condition
    }
    // A queued probe's status says where it stands.
    let last = &probes.last().unwrap().0;
    let st = request_status(&c, sluice.data_addr, last).await.json();
    assert_eq!(st["state"], "queued");
    assert!(st["position"].as_u64().unwrap() > 0);
    assert!(st["eta_ms"].as_u64().is_some(), "{st}");

    let total = 180;
    eventually(Duration::from_secs(30), "every request delivered", || async move {
        (b.count() >= total).then_some(())
    })
    .await;
    let seen = backend.seen.lock().unwrap().clone();
    let mut within = 0;
    for (id, sent, eta) in &probes {
        let landed = seen
            .iter()
            .find(|s| seen_header(s, "sluice-id") == Some(id.as_str()))
            .expect("the probe was delivered")
            .at;
        let took = landed.duration_since(*sent).as_secs_f64();
        let err = (took - eta.as_secs_f64()).abs() / eta.as_secs_f64();
        eprintln!(
            "eta {:>6.2}s  took {took:>6.2}s  error {:>5.1}%",
            eta.as_secs_f64(),
            err * 100.0
        );
        if err <= 0.2 {
            within += 1;
        }
    }
    eprintln!("{within} of {} within ±20% of their ETA", probes.len());
    assert!(within >= 18, "{within} of 20 within ±20% of their ETA");
    let st = request_status(&c, sluice.data_addr, last).await.json();
    assert_eq!(st["state"], "delivered");
    assert!(st.get("position").is_none() && st.get("eta_ms").is_none(), "{st}");
}

on_both_spools!(on_a_steady_backlog_nine_in_ten_land_within_20_percent_of_their_eta);
