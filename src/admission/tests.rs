use super::*;
use crate::config::{Config, Overrides};
use governor::clock::FakeRelativeClock;

fn table(routes_toml: &str, clock: &FakeRelativeClock) -> RouteTable<FakeRelativeClock> {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{routes_toml}");
    let cfg = Config::parse("t.toml", &text, &Overrides::default()).unwrap();
    RouteTable::build_with(&cfg.routes, None, || clock.clone())
}

fn facts<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestFacts<'a> {
    RequestFacts {
        method,
        host: Some("example.com"),
        path,
        headers,
        client_ip: "192.0.2.7".parse().unwrap(),
    }
}

const ORDERS: &str = r#"
[[route]]
name = "orders"
match = { path_prefix = "/orders" }
rate = "10/s"
burst = 3
on_limit = "spool"
"#;

#[test]
fn burst_then_reject_then_refill_on_the_fake_clock() {
    let clock = FakeRelativeClock::default();
    let t = table(ORDERS, &clock);
    let r = &t.routes()[0];
    let get = Method::GET;
    for expect_left in [2, 1, 0] {
        assert_eq!(
            r.admit("", &get, Duration::ZERO),
            Decision::Forward { remaining: expect_left }
        );
    }
    // GET can't be spooled even on a spool route.
    match r.admit("", &get, Duration::ZERO) {
        Decision::Reject { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
        d => panic!("expected reject, got {d:?}"),
    }
    assert_eq!(r.admit("", &Method::POST, Duration::ZERO), Decision::Spool);
    clock.advance(Duration::from_millis(100));
    assert_eq!(r.admit("", &get, Duration::ZERO), Decision::Forward { remaining: 0 });
    clock.advance(Duration::from_millis(300));
    assert_eq!(r.admit("", &get, Duration::ZERO), Decision::Forward { remaining: 2 });
    assert_eq!(r.seconds_to_full(2), 1);
}

#[test]
fn wait_is_offered_only_within_the_wait_budget() {
    let clock = FakeRelativeClock::default();
    let t = table(
        "[[route]]\nname = \"w\"\nrate = \"2/s\"\nburst = 1\non_limit = \"wait\"\nmax_wait = \"1s\"\n",
        &clock,
    );
    let r = &t.routes()[0];
    let m = Method::POST;
    assert!(matches!(
        r.admit("", &m, Duration::from_secs(1)),
        Decision::Forward { .. }
    ));
    assert_eq!(
        r.admit("", &m, Duration::from_secs(1)),
        Decision::Wait {
            wait: Duration::from_millis(500)
        }
    );
    assert!(matches!(
        r.admit("", &m, Duration::from_millis(499)),
        Decision::Reject { .. }
    ));
    clock.advance(Duration::from_millis(500));
    assert!(matches!(r.admit("", &m, Duration::ZERO), Decision::Forward { .. }));
}

#[test]
fn keys_do_not_share_buckets() {
    let clock = FakeRelativeClock::default();
    let t = table(
        "[[route]]\nname = \"k\"\nrate = \"1/s\"\nburst = 1\nkey = \"header:x-user\"\n",
        &clock,
    );
    let r = &t.routes()[0];
    let m = Method::GET;
    assert!(matches!(r.admit("alice", &m, Duration::ZERO), Decision::Forward { .. }));
    assert!(matches!(r.admit("alice", &m, Duration::ZERO), Decision::Reject { .. }));
    assert!(matches!(r.admit("bob", &m, Duration::ZERO), Decision::Forward { .. }));
    assert!(matches!(r.admit("", &m, Duration::ZERO), Decision::Forward { .. }));
}

#[test]
fn a_flood_of_distinct_keys_stays_within_max_keys() {
    let clock = FakeRelativeClock::default();
    let t = table(
        "[[route]]\nname = \"k\"\nrate = \"1/s\"\nburst = 1\nkey = \"header:x-user\"\nmax_keys = 100\n",
        &clock,
    );
    let r = &t.routes()[0];
    let m = Method::GET;
    let mut forwarded = 0;
    for i in 0..20_000 {
        if matches!(
            r.admit(&format!("user-{i}"), &m, Duration::ZERO),
            Decision::Forward { .. }
        ) {
            forwarded += 1;
        }
        assert!(r.limiter.keys_held() <= 100, "held {} keys", r.limiter.keys_held());
    }
    // 100 own buckets plus one shared overflow token.
    assert_eq!(forwarded, 101);
    // Once the flood's buckets have refilled they are idle, and a sweep
    // makes room for new keys of their own.
    clock.advance(Duration::from_secs(2));
    for i in 0..200 {
        r.admit(&format!("late-{i}"), &m, Duration::ZERO);
    }
    assert!(r.limiter.keys_held() <= 100);
    assert!(matches!(
        r.admit("late-199", &m, Duration::ZERO),
        Decision::Reject { .. }
    ));
}

#[test]
fn routes_match_in_file_order() {
    let clock = FakeRelativeClock::default();
    let t = table(
        r#"
[[route]]
name = "exact"
match = { path = "/orders/special" }
rate = "1/s"
[[route]]
name = "orders-post"
match = { path_prefix = "/orders", methods = ["POST"] }
rate = "1/s"
[[route]]
name = "other-host"
match = { host = "*.internal" }
rate = "1/s"
[[route]]
name = "rest"
match = { path_prefix = "/" }
rate = "1/s"
"#,
        &clock,
    );
    let h = HeaderMap::new();
    let name = |m: Method, p: &str, host: Option<&str>| {
        let mut f = facts(&m, p, &h);
        f.host = host;
        t.find(&f).map(|r| r.config.name.clone())
    };
    assert_eq!(name(Method::GET, "/orders/special", None).unwrap(), "exact");
    assert_eq!(name(Method::POST, "/orders/1", None).unwrap(), "orders-post");
    assert_eq!(
        name(Method::GET, "/orders/1", Some("a.internal")).unwrap(),
        "other-host"
    );
    assert_eq!(name(Method::GET, "/orders/1", Some("internal")).unwrap(), "rest");
    let t2 = table(
        "[[route]]\nname = \"only\"\nmatch = { path_prefix = \"/api\" }\nrate = \"1/s\"\n",
        &clock,
    );
    assert!(t2.find(&facts(&Method::GET, "/other", &h)).is_none());
}

#[test]
fn key_extraction() {
    let mut h = HeaderMap::new();
    h.insert("x-user", "alice".parse().unwrap());
    let m = Method::GET;
    let f = facts(&m, "/", &h);
    let mut buf = String::new();
    assert_eq!(key_for(&KeySource::Global, &f, &mut buf), "");
    assert_eq!(key_for(&KeySource::ClientIp, &f, &mut buf), "192.0.2.7");
    let hdr = KeySource::Header(http::HeaderName::from_static("x-user"));
    assert_eq!(key_for(&hdr, &f, &mut buf), "alice");
    let missing = KeySource::Header(http::HeaderName::from_static("x-none"));
    assert_eq!(key_for(&missing, &f, &mut buf), "");
}

#[test]
fn reload_keeps_unchanged_limiters() {
    let clock = FakeRelativeClock::default();
    let t = table(ORDERS, &clock);
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{ORDERS}");
    let cfg = Config::parse("t.toml", &text, &Overrides::default()).unwrap();
    let same = RouteTable::build_with(&cfg.routes, Some(&t), || clock.clone());
    assert!(Arc::ptr_eq(&same.routes()[0].limiter, &t.routes()[0].limiter));
    let changed = ORDERS.replace("10/s", "20/s");
    let cfg = Config::parse(
        "t.toml",
        &format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{changed}"),
        &Overrides::default(),
    )
    .unwrap();
    let other = RouteTable::build_with(&cfg.routes, Some(&t), || clock.clone());
    assert!(!Arc::ptr_eq(&other.routes()[0].limiter, &t.routes()[0].limiter));
}
