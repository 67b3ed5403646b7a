//! Cost of one admission decision: route match plus a bucket check, for a
//! global bucket and for keyed buckets (hot key and a spread of keys).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use sluice::admission::{key_for, RequestFacts, RouteTable};
use sluice::config::Config;
use std::time::Duration;

fn table(routes: &str) -> RouteTable {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n{routes}");
    let cfg = Config::parse("bench.toml", &text, &Default::default()).unwrap();
    RouteTable::build(&cfg.routes, None)
}

const ROUTES: &str = r#"
[[route]]
name = "health"
match = { path = "/healthz" }
rate = "1000000000/s"
[[route]]
name = "orders"
match = { path_prefix = "/api/orders", methods = ["POST", "PUT"] }
rate = "1000000000/s"
key = "header:x-user"
max_keys = 100000
[[route]]
name = "default"
match = { path_prefix = "/" }
rate = "1000000000/s"
"#;

fn bench(c: &mut Criterion) {
    let t = table(ROUTES);
    let get = Method::GET;
    let post = Method::POST;
    let empty = HeaderMap::new();
    c.bench_function("admission/global (3rd route)", |b| {
        b.iter(|| {
            let facts = RequestFacts {
                method: &get,
                host: Some("example.com"),
                path: black_box("/api/catalog/1"),
                headers: &empty,
                client_ip: "127.0.0.1".parse().unwrap(),
            };
            let route = t.find(&facts).unwrap();
            let mut buf = String::new();
            let key = key_for(&route.config.key, &facts, &mut buf);
            black_box(route.admit(key, facts.method, Duration::ZERO))
        })
    });
    let mut hot = HeaderMap::new();
    hot.insert("x-user", "user-42".parse().unwrap());
    c.bench_function("admission/keyed hot key", |b| {
        b.iter(|| {
            let facts = RequestFacts {
                method: &post,
                host: None,
                path: black_box("/api/orders/7"),
                headers: &hot,
                client_ip: "127.0.0.1".parse().unwrap(),
            };
            let route = t.find(&facts).unwrap();
            let mut buf = String::new();
            let key = key_for(&route.config.key, &facts, &mut buf);
            black_box(route.admit(key, facts.method, Duration::ZERO))
        })
    });
    let spread: Vec<HeaderMap> = (0..50_000)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert("x-user", format!("user-{i}").parse().unwrap());
            h
        })
        .collect();
    let mut i = 0usize;
    c.bench_function("admission/keyed 50k keys", |b| {
        b.iter(|| {
            i = (i + 7919) % spread.len();
            let facts = RequestFacts {
                method: &post,
                host: None,
                path: "/api/orders/7",
                headers: &spread[i],
                client_ip: "127.0.0.1".parse().unwrap(),
            };
            let route = t.find(&facts).unwrap();
            let mut buf = String::new();
            let key = key_for(&route.config.key, &facts, &mut buf);
            black_box(route.admit(key, facts.method, Duration::ZERO))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
