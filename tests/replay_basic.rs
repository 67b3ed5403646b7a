mod support;

use http::Method;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn over_limit_writes_are_spooled_then_replayed() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/orders\" }\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/orders/1?x=y", sluice.data_addr);
    let first = send(&c, Method::POST, &url, &[], "body-0").await;
    assert_eq!(first.status, 200);
    let mut ids = Vec::new();
    for i in 1..5 {
        let r = send(&c, Method::POST, &url, &[("x-n", &i.to_string())], format!("body-{i}")).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        let j = r.json();
        let id = j["id"].as_str().unwrap().to_string();
        assert_eq!(r.header("sluice-id"), id);
        assert_eq!(r.header("location"), format!("/_sluice/requests/{id}"));
        assert_eq!(j["status_url"], format!("/_sluice/requests/{id}"));
        ids.push(id);
    }
    eventually(Duration::from_secs(10), "backend saw all 5", || async {
        (backend.count() == 5).then_some(())
    })
    .await;
    let seen = backend.seen.lock().unwrap().clone();
    for s in &seen[1..] {
        assert!(s.headers.contains_key("sluice-id"));
        assert_eq!(s.uri, "/orders/1?x=y");
        assert_eq!(s.headers["sluice-attempt"], "1");
    }
    for id in &ids {
        let st = eventually(Duration::from_secs(5), "delivered", || async {
            let r = get(&c, &format!("http://{}/_sluice/requests/{id}", sluice.data_addr)).await;
            (r.json()["state"] == "delivered").then_some(r.json())
        })
        .await;
        assert_eq!(st["upstream_status"], 200);
        assert_eq!(st["attempts"], 1);
    }
    let nf = get(&c, &format!("http://{}/_sluice/requests/garbage", sluice.data_addr)).await;
    assert_eq!(nf.status, 404);
    sluice.shutdown().await;
}
