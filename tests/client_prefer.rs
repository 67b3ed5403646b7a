//! RFC 7240 `Prefer` on a spool route, end to end: `respond-async` spools
//! even with a token free; `wait=N` waits for a token (up to the route's
//! `prefer_wait_max`) before spooling; `Preference-Applied` says what was
//! honoured, and the backend never sees it in `Prefer`, live or replayed.
//!
//! Each case runs on both spools (local and JetStream).

#[macro_use]
mod support;

use bytes::Bytes;
use http::Method;
use std::time::{Duration, Instant};
use support::*;

const ROUTE: &str = "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/orders\" }\n\
     rate = \"2/s\"\nburst = 1\non_limit = \"spool\"\nprefer_wait_max = \"3s\"\n\n\
     [[route]]\nname = \"strict\"\nmatch = { path_prefix = \"/strict\" }\n\
     rate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n";

async fn post(c: &TestClient, url: &str, prefer: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = prefer.map(|p| vec![("prefer", p)]).unwrap_or_default();
    send(c, Method::POST, url, &headers, Bytes::from_static(b"{}")).await
}

async fn respond_async_spools_with_a_token_free_and_the_backend_never_sees_it(kind: SpoolKind) {
    let backend = Backend::ok().await;
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), ROUTE)).await;
    let c = client();
    let url = format!("http://{}/orders/1", sluice.data_addr);

    let r = post(&c, &url, Some("respond-async, return=minimal")).await;
    assert_eq!(r.status, 202, "a token was free, the client asked for a 202");
    assert_eq!(r.header("preference-applied"), "respond-async");
    let b = &backend;
    eventually(Duration::from_secs(10), "the replay", || async move {
        (b.count() == 1).then_some(())
    })
    .await;
    let seen = backend.last();
    assert_eq!(
        seen_header(&seen, "prefer"),
        Some("return=minimal"),
        "honoured part removed"
    );

    // The token was not spent: a plain request right after is forwarded.
    let r = post(&c, &url, None).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("preference-applied"));

    // Alone, respond-async leaves no Prefer at all.
    post(&c, &url, Some("respond-async")).await;
    eventually(Duration::from_secs(10), "the second replay", || async move {
        (b.count() == 3).then_some(())
    })
    .await;
    assert_eq!(seen_header(&backend.last(), "prefer"), None);

    // Not a spoolable request: the preference is not sluice's to honour.
    let other = format!("http://{}/other", sluice.data_addr);
    let r = send(&c, Method::GET, &other, &[("prefer", "respond-async")], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("preference-applied"));
    assert_eq!(seen_header(&backend.last(), "prefer"), Some("respond-async"));
}

async fn wait_holds_the_request_for_a_token_up_to_the_routes_cap(kind: SpoolKind) {
    let backend = Backend::ok().await;
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), ROUTE)).await;
    let c = client();
    let url = format!("http://{}/orders/1", sluice.data_addr);

    assert_eq!(post(&c, &url, None).await.status, 200, "the one token");
    // No token for 0.5 s: without a preference the request is spooled...
    let r = post(&c, &url, None).await;
    assert_eq!(r.status, 202);
    // ...with wait=2 it waits for the next token and gets the live answer.
    let t = Instant::now();
    let r = post(&c, &url, Some("wait=2")).await;
    assert_eq!(r.status, 200, "waited for the token");
    assert_eq!(r.header("preference-applied"), "wait=2");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "it did wait: {:?}",
        t.elapsed()
    );
    assert_eq!(seen_header(&backend.last(), "prefer"), None, "honoured wait removed");

    // A route with the default prefer_wait_max of 0: wait is ignored and
    // the request spooled at once.
    let strict = format!("http://{}/strict/1", sluice.data_addr);
    post(&c, &strict, None).await;
    let t = Instant::now();
    let r = post(&c, &strict, Some("wait=100")).await;
    assert_eq!(r.status, 202);
    assert!(
        !r.headers.contains_key("preference-applied"),
        "prefer_wait_max 0 ignores wait"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// A wait is capped by the route, and a request whose token can't come
/// within it is spooled at once rather than held for nothing.
async fn wait_past_the_cap_is_capped_and_a_hopeless_wait_spools_at_once(kind: SpoolKind) {
    let backend = Backend::ok().await;
    let route = "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/1500ms\"\nburst = 1\n\
                 on_limit = \"spool\"\nprefer_wait_max = \"1s\"\n";
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), route)).await;
    let c = client();
    let url = format!("http://{}/x", sluice.data_addr);
    assert_eq!(post(&c, &url, None).await.status, 200);
    // The next token is 1.5 s away; wait=100 is capped at 1 s, which is
    // not enough: spooled without waiting.
    let t = Instant::now();
    let r = post(&c, &url, Some("wait=100")).await;
    assert_eq!(r.status, 202, "no token within the cap: spooled");
    assert_eq!(r.header("preference-applied"), "wait=1");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "not held for nothing: {:?}",
        t.elapsed()
    );
    let b = &backend;
    eventually(Duration::from_secs(10), "the replay", || async move {
        (b.count() == 2).then_some(())
    })
    .await;
    assert_eq!(
        seen_header(&backend.last(), "prefer"),
        None,
        "the replay has no wait either"
    );
}

#[test]
fn prefer_wait_max_must_leave_time_for_the_backend() {
    let text = "[server]\nrequest_timeout = \"5s\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n\
                [[route]]\nname = \"r\"\nrate = \"1/s\"\nprefer_wait_max = \"5s\"\n";
    let err = sluice::config::Config::parse("t.toml", text, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("route[0].prefer_wait_max"), "{err}");
}

/// A shorter wait than the route's max_wait is honoured too, and what the
/// backend applied itself is kept beside what sluice applied.
async fn a_shorter_wait_is_honoured_and_the_backends_preference_applied_is_kept(kind: SpoolKind) {
    let backend = Backend::start(std::sync::Arc::new(|_s: Seen| {
        Box::pin(async move {
            http::Response::builder()
                .status(200)
                .header("preference-applied", "return=minimal")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap()
        })
    }))
    .await;
    let route = "[[route]]\nname = \"patient\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/1500ms\"\nburst = 1\n\
                 on_limit = \"spool\"\nmax_wait = \"3s\"\nprefer_wait_max = \"5s\"\n";
    let sluice = start_sluice_on(kind, &config_text(&backend.url(), route)).await;
    let c = client();
    let url = format!("http://{}/x", sluice.data_addr);
    let r = post(&c, &url, Some("wait=1, return=minimal")).await;
    assert_eq!(r.status, 200);
    let applied: Vec<_> = r
        .headers
        .get_all("preference-applied")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(applied, ["return=minimal", "wait=1"], "both kept");
    // The next token is 1.5 s away: the route would wait (max_wait 3 s),
    // the client asked for no wait at all.
    let t = Instant::now();
    let r = post(&c, &url, Some("wait=0")).await;
    assert_eq!(r.status, 202, "spooled at once");
    assert_eq!(r.header("preference-applied"), "wait=0");
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
}

on_both_spools!(
    respond_async_spools_with_a_token_free_and_the_backend_never_sees_it,
    wait_holds_the_request_for_a_token_up_to_the_routes_cap,
    wait_past_the_cap_is_capped_and_a_hopeless_wait_spools_at_once,
    a_shorter_wait_is_honoured_and_the_backends_preference_applied_is_kept,
);
