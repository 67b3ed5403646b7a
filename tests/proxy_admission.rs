//! Admission end to end: the route bucket (429 and its headers, refill,
//! per-key isolation, the key-flood bound, `wait`), route order and the
//! `unmatched` route, and the upstream budget gate (503 `shed`).

mod support;

use http::Method;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn over_the_burst_gets_429_with_headers_then_200_after_refill() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"4/s\"\nburst = 2\non_limit = \"reject\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/thing", sluice.data_addr);

    for i in 0..2 {
        let r = get(&c, &url).await;
        assert_eq!(r.status, 200, "request {i} is within the burst");
        assert_eq!(r.header("ratelimit-policy"), "\"api\";q=4;w=1");
    }
    let r = get(&c, &url).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After is whole seconds");
    assert!(retry >= 1, "Retry-After {retry} must be at least 1");
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=4;w=1");
    let rl = r.header("ratelimit");
    let t = rl
        .strip_prefix("\"api\";r=0;t=")
        .unwrap_or_else(|| panic!("RateLimit {rl:?} is not \"api\";r=0;t=N"));
    assert!(t.parse::<u64>().is_ok_and(|t| t >= 1), "t in {rl:?}");
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(v["route"], "api");
    let ms = v["retry_after_ms"].as_u64().expect("retry_after_ms is a number");
    assert!(ms > 0 && ms <= 250, "one token of 4/s comes within 250ms, not {ms}ms");
    assert_eq!(backend.count(), 2, "the rejected request never reached the backend");

    // A token comes back after 250ms: poll until it does.
    let r = eventually(Duration::from_secs(3), "a 200 after the bucket refills", || {
        let c = c.clone();
        let url = url.clone();
        async move {
            let r = get(&c, &url).await;
            (r.status == 200).then_some(r)
        }
    })
    .await;
    assert_eq!(r.body, "");
    assert_eq!(backend.count(), 3);

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "api"), ("decision", "rejected")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "api"), ("decision", "forwarded")]
        ),
        Some(3.0)
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn header_keys_have_separate_buckets() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"users\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/min\"\nburst = 1\nkey = \"header:x-user\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/", sluice.data_addr);
    let as_user = |u: &'static str| [("x-user", u)];

    assert_eq!(send(&c, Method::GET, &url, &as_user("alice"), "").await.status, 200);
    assert_eq!(send(&c, Method::GET, &url, &as_user("alice"), "").await.status, 429);
    assert_eq!(
        send(&c, Method::GET, &url, &as_user("bob"), "").await.status,
        200,
        "bob's bucket is not alice's"
    );
    assert_eq!(send(&c, Method::GET, &url, &as_user("bob"), "").await.status, 429);
    // No header: the bucket of the empty value, again its own.
    assert_eq!(get(&c, &url).await.status, 200);
    assert_eq!(get(&c, &url).await.status, 429);
    assert_eq!(backend.count(), 3);
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_distinct_keys_stays_bounded() {
    const MAX_KEYS: usize = 50;
    const REQUESTS: usize = 3000;
    const CONCURRENCY: usize = 16;
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        &format!(
            "[[route]]\nname = \"flood\"\nmatch = {{ path_prefix = \"/flood\" }}\nrate = \"1/min\"\nburst = 1\n\
             key = \"header:x-user\"\nmax_keys = {MAX_KEYS}\n\n\
             [[route]]\nname = \"calm\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"100/s\"\n"
        ),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/flood", sluice.data_addr);

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (c, url, next) = (c.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0usize, 0usize);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= REQUESTS {
                    return (ok, limited);
                }
                let user = format!("user-{i}");
                let r = send(&c, Method::GET, &url, &[("x-user", &user)], "").await;
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    s => panic!("request {i} got {s}, expected 200 or 429"),
                }
            }
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for w in workers {
        let (o, l) = w.await.unwrap();
        ok += o;
        limited += l;
    }
    assert_eq!(ok + limited, REQUESTS);

    // The route holds at most max_keys buckets (plus one per caller racing
    // an insert), however many keys it saw.
    let rt = sluice.shared.runtime.load_full();
    let held = rt.table.routes()[0].limiter.keys_held();
    assert!(
        held <= MAX_KEYS + CONCURRENCY,
        "{held} buckets held for max_keys = {MAX_KEYS}"
    );
    // Keys past the cap share one overflow bucket of burst 1, so almost
    // everything past the first max_keys users was limited.
    assert!(
        ok <= MAX_KEYS + CONCURRENCY + 1,
        "{ok} distinct users were admitted: new keys beyond max_keys must share one bucket"
    );
    assert!(
        ok >= MAX_KEYS,
        "the first {MAX_KEYS} users each had their own bucket, but only {ok} got through"
    );

    // Still healthy: admin answers and other routes are unaffected.
    assert_eq!(
        get(&c, &format!("http://{}/healthz", sluice.admin_addr)).await.status,
        200
    );
    assert_eq!(get(&c, &format!("http://{}/other", sluice.data_addr)).await.status, 200);
    sluice.shutdown().await;
}

#[tokio::test]
async fn wait_route_holds_an_over_limit_request_then_forwards_it() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"patient\"\nmatch = { path_prefix = \"/patient\" }\nrate = \"4/s\"\nburst = 1\n\
         on_limit = \"wait\"\nmax_wait = \"2s\"\n\n\
         [[route]]\nname = \"brief\"\nmatch = { path_prefix = \"/brief\" }\nrate = \"1/min\"\nburst = 1\n\
         on_limit = \"wait\"\nmax_wait = \"100ms\"\n",
    ))
    .await;
    let c = client();
    let patient = format!("http://{}/patient", sluice.data_addr);
    assert_eq!(get(&c, &patient).await.status, 200);
    let started = Instant::now();
    let r = get(&c, &patient).await;
    let held = started.elapsed();
    assert_eq!(
        r.status, 200,
        "the over-limit request was held for a token, then forwarded"
    );
    assert!(
        held >= Duration::from_millis(150),
        "it was answered after {held:?}: not held for the 250ms token"
    );
    assert!(held < Duration::from_secs(2));
    assert_eq!(backend.count(), 2);

    // A token further away than max_wait: rejected without waiting it out.
    let brief = format!("http://{}/brief", sluice.data_addr);
    assert_eq!(get(&c, &brief).await.status, 200);
    let started = Instant::now();
    let r = get(&c, &brief).await;
    assert_eq!(r.status, 429);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.json()["route"], "brief");
    sluice.shutdown().await;
}

#[tokio::test]
async fn first_matching_route_wins_and_unmatched_requests_are_forwarded() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"writes\"\nmatch = { path_prefix = \"/api\", methods = [\"POST\"] }\nrate = \"1/min\"\nburst = 1\n\n\
         [[route]]\nname = \"api\"\nmatch = { path_prefix = \"/api\" }\nrate = \"1/min\"\nburst = 1\n\n\
         [[route]]\nname = \"special\"\nmatch = { path_prefix = \"/api/special\" }\nrate = \"1000/s\"\n",
    ))
    .await;
    let c = client();
    let special = format!("http://{}/api/special", sluice.data_addr);

    // /api/special matches "api" first (file order), not the later, more
    // specific "special" route.
    let r = get(&c, &special).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=1;w=60");
    let r = get(&c, &special).await;
    assert_eq!(r.status, 429, "the strict earlier route governs");
    assert_eq!(r.json()["route"], "api");

    // A POST matches "writes", whose bucket is untouched so far.
    let r = send(&c, Method::POST, &special, &[], "w").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), "\"writes\";q=1;w=60");

    // No route matches /elsewhere: forwarded, with no RateLimit headers,
    // however many times.
    for _ in 0..3 {
        let r = get(&c, &format!("http://{}/elsewhere", sluice.data_addr)).await;
        assert_eq!(r.status, 200);
        assert!(r.headers.get("ratelimit-policy").is_none());
    }
    assert_eq!(backend.last().uri, "/elsewhere");

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "unmatched"), ("decision", "forwarded")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "api"), ("decision", "forwarded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "special"), ("decision", "forwarded")]
        )
        .unwrap_or(0.0),
        0.0
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn spent_upstream_budget_sheds_with_503() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = gated_backend(gate.clone()).await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "max_concurrency = 1\n\n[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"1000/s\"\n",
    ))
    .await;
    let c = client();
    let url = format!("http://{}/busy", sluice.data_addr);

    let first = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { get(&c, &url).await })
    };
    eventually(
        Duration::from_secs(5),
        "the backend holds the first request",
        || async { (backend.count() == 1).then_some(()) },
    )
    .await;

    let r = get(&c, &url).await;
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("retry-after").parse().expect("Retry-After is whole seconds");
    assert!(retry >= 1);
    assert_eq!(r.json()["error"], "upstream_busy");
    assert_eq!(backend.count(), 1, "the shed request never reached the backend");

    gate.add_permits(1);
    let r = first.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "released");

    // The slot is free again once the first response is done.
    gate.add_permits(1);
    assert_eq!(get(&c, &url).await.status, 200);

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "api"), ("decision", "shed")]
        ),
        Some(1.0),
        "{text}"
    );
    sluice.shutdown().await;
}
