//! `[cluster]`: three real sluice processes sharing global limits through a
//! real redis-server (Debian's, which `.ci/run` installs) on a loopback
//! port of its own.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A redis-server of the test's own, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// With extra redis-server arguments (config directives).
    async fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            child: None,
            port: closed_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart().await;
        r
    }

    /// Starts (again) on the same port; returns when it answers PING.
    async fn restart(&mut self) -> Instant {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(10), "redis-server answers PING", || async move {
            ping(port).await.then(Instant::now)
        })
        .await
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` output for one command.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (Debian package redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // A server that wants a password answers NOAUTH: it is up all the same.
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
    )
}

/// Three sluice processes on one config.
fn three(dir: &std::path::Path, config: impl Fn(usize) -> String) -> Vec<SluiceProcess> {
    (0..3)
        .map(|i| {
            let path = write_file(dir, &format!("sluice-{i}.toml"), &config(i));
            SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()])
        })
        .collect()
}

fn cluster_config(backend: &str, redis: &str, spool: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{backend}\"\n\n[spool]\ndir = \"{}\"\n\n\
         [cluster]\nredis_url = \"{redis}\"\nnamespace = \"t\"\n{extra}",
        spool.display()
    )
}

/// Three replicas on one Redis and one backend.
struct Fleet {
    procs: Vec<SluiceProcess>,
    redis: Redis,
    backend: Backend,
    _dir: tempfile::TempDir,
}

/// `upstream` goes under `[upstream]`, `cluster_and_routes` under
/// `[cluster]` (route tables may follow it).
async fn fleet(upstream: &str, cluster_and_routes: &str) -> Fleet {
    let redis = Redis::start().await;
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let procs = three(dir.path(), |i| {
        cluster_config(
            &backend.url(),
            &redis.url(),
            &dir.path().join(format!("spool-{i}")),
            cluster_and_routes,
        )
        .replace("[spool]", &format!("{upstream}\n[spool]"))
    });
    Fleet {
        procs,
        redis,
        backend,
        _dir: dir,
    }
}

/// Waits until `metric` reads `value` on every replica.
async fn on_every_replica(c: &TestClient, fleet: &[SluiceProcess], metric: &'static str, value: f64) {
    for p in fleet {
        let addr = p.admin_addr;
        eventually(
            Duration::from_secs(5),
            &format!("{metric} {value} on every replica"),
            || {
                let c = c.clone();
                async move {
                    let text = metrics_text(&c, addr).await;
                    (metric_value(&text, metric, &[]) == Some(value)).then_some(())
                }
            },
        )
        .await;
    }
}

async fn store_up(c: &TestClient, p: &SluiceProcess) -> Option<f64> {
    metric_value(&metrics_text(c, p.admin_addr).await, "sluice_cluster_store_up", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_route_limit_holds_across_three_replicas() {
    let Fleet {
        procs: fleet,
        redis,
        backend,
        _dir,
    } = fleet(
        "",
        "timeout = \"250ms\"\n\n\
         [[route]]\nname = \"per-user\"\nmatch = { path_prefix = \"/user\" }\nrate = \"1/m\"\nburst = 10\n\
         key = \"header:x-user\"\nscope = \"global\"\n\n\
         [[route]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"100/s\"\nburst = 20\nscope = \"global\"\n",
    )
    .await;
    let c = client();
    for p in &fleet {
        assert_eq!(
            store_up(&c, p).await,
            Some(1.0),
            "the store is up from the first request"
        );
    }

    // A keyed route: one client's key has one bucket for the fleet, under
    // a key that never holds the raw value.
    // Alice's requests, spread over the replicas.
    let as_alice = |i: usize| {
        let (c, url) = (c.clone(), format!("http://{}/user/x", fleet[i % 3].data_addr));
        async move {
            send(
                &c,
                http::Method::GET,
                &url,
                &[("x-user", "alice@example.com")],
                bytes::Bytes::new(),
            )
            .await
        }
    };
    let mut admitted = 0;
    for i in 0..30 {
        let r = as_alice(i).await;
        match r.status.as_u16() {
            200 => {
                admitted += 1;
                assert!(
                    r.header("ratelimit").starts_with("\"per-user\";r="),
                    "RateLimit as for local routes"
                );
            }
            429 => assert!(!r.header("retry-after").is_empty(), "429 says when to come back"),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(admitted, 10, "one burst of 10 for alice across three replicas, not 30");
    // Refused keys are remembered until their next token: hammering alice
    // costs Redis next to nothing (heartbeats aside, three a second).
    let script_calls = || -> u64 {
        redis
            .cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = script_calls();
    let started = std::time::Instant::now();
    for i in 0..60 {
        assert_eq!(as_alice(i).await.status, 429);
    }
    let heartbeats = 3 * (started.elapsed().as_secs() + 2);
    let calls = script_calls() - before;
    assert!(
        calls <= heartbeats,
        "{calls} script calls for 60 refused requests (heartbeats {heartbeats})"
    );
    let keys = redis.cli(&["--scan", "--pattern", "t:route:per-user:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "one bucket: {keys:?}");
    let hash = keys[0].strip_prefix("t:route:per-user:").unwrap();
    assert_eq!(hash.len(), 32, "SHA-256/128 in hex: {keys:?}");
    assert!(hash.chars().all(|ch| ch.is_ascii_hexdigit()));
    let ttl: i64 = redis.cli(&["PTTL", keys[0]]).trim().parse().unwrap();
    assert!(ttl > 0, "idle keys expire (PTTL {ttl})");

    // An unkeyed route under load from six clients, each spreading its
    // requests over the three replicas: 300 requests/s offered, 100/s
    // allowed for the fleet.
    let start = tokio::time::Instant::now();
    let run_for = Duration::from_secs(30);
    let addrs: Vec<_> = fleet.iter().map(|p| p.data_addr).collect();
    let mut clients = Vec::new();
    for n in 0..6 {
        let (c, addrs) = (c.clone(), addrs.clone());
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut i = n;
            while start.elapsed() < run_for {
                tick.tick().await;
                let url = format!("http://{}/api", addrs[i % 3]);
                let r = get(&c, &url).await;
                assert!(r.status == 200 || r.status == 429, "status {}", r.status);
                i += 1;
            }
        }));
    }
    for t in clients {
        t.await.unwrap();
    }
    let origin = Instant::now() - start.elapsed();
    let times: Vec<f64> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/api")
        .map(|s| s.at.duration_since(origin).as_secs_f64())
        .collect();
    // Each 10 s window after the first: 1,000 ± 5%.
    for w in 1..3 {
        let (from, to) = (w as f64 * 10.0, (w + 1) as f64 * 10.0);
        let n = times.iter().filter(|t| **t >= from && **t < to).count();
        eprintln!("window {from}-{to}s: {n} admitted (limit 1000)");
        assert!(
            (950..=1050).contains(&n),
            "window {from}-{to}s admitted {n}, not 1000 ± 5%"
        );
    }
    for p in &fleet {
        let text = metrics_text(&c, p.admin_addr).await;
        let refills = metric_value(&text, "sluice_cluster_lease_refills_total", &[("limit", "api")]).unwrap_or(0.0);
        assert!(refills > 0.0, "the unkeyed route leases batches");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_draining_a_backlog_share_one_upstream_capacity() {
    // Bound, not `..`: a field left out would be dropped here.
    let Fleet {
        procs: fleet,
        backend,
        redis: _redis,
        _dir,
    } = fleet(
        "capacity = \"20/s\"\ncapacity_burst = 4\nscope = \"global\"\n",
        "timeout = \"250ms\"\n\n\
         [[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
    )
    .await;
    let c = client();
    let per_replica = 60;
    let mut tasks = Vec::new();
    for p in &fleet {
        let (c, addr) = (c.clone(), p.data_addr);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_replica {
                let r = send(
                    &c,
                    http::Method::POST,
                    &format!("http://{addr}/orders"),
                    &[],
                    bytes::Bytes::from(format!("{i}")),
                )
                .await;
                assert!(r.status == 202 || r.status == 200, "status {}", r.status);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 3 * per_replica;
    let b = &backend;
    eventually(Duration::from_secs(60), "every record delivered", || async move {
        (b.count() >= total).then_some(())
    })
    .await;
    let mut at: Vec<Instant> = backend.seen.lock().unwrap().iter().map(|s| s.at).collect();
    at.sort();
    // Over any 1 s window: at most capacity + burst = 24.
    let mut worst = 0;
    for (i, t) in at.iter().enumerate() {
        let n = at[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(n);
    }
    eprintln!(
        "{} delivered; busiest 1 s window: {worst} (capacity 20 + burst 4)",
        at.len()
    );
    assert!(
        worst <= 24,
        "the backend saw {worst} in one second, over 20/s + 4 for the fleet"
    );
    let span = at.last().unwrap().duration_since(at[0]).as_secs_f64();
    assert!(
        span >= 6.0,
        "180 records at 20/s for the fleet take 8 s or more, not {span:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fall_back_while_redis_is_down_and_resume_when_it_is_back() {
    // 30 tokens for the fleet, refilling slowly; the fallback gives each
    // of the three replicas 10.
    let Fleet {
        procs: fleet,
        mut redis,
        backend: _backend,
        _dir,
    } = fleet(
        "",
        "\n[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"3/m\"\nburst = 30\nscope = \"global\"\n",
    )
    .await;
    let c = client();
    let fleet = Arc::new(fleet);
    on_every_replica(&c, &fleet, "sluice_cluster_replicas", 3.0).await;
    let burst_on = |p: usize, n: usize| {
        let (c, addr) = (c.clone(), fleet[p].data_addr);
        async move {
            let mut ok = 0;
            let mut slowest = Duration::ZERO;
            for _ in 0..n {
                let t = Instant::now();
                let r = get(&c, &format!("http://{addr}/")).await;
                slowest = slowest.max(t.elapsed());
                if r.status == 200 {
                    ok += 1;
                }
            }
            (ok, slowest)
        }
    };
    let (ok, _) = burst_on(0, 5).await;
    assert_eq!(ok, 5, "global tokens while the store is up");

    redis.kill();
    // Every replica keeps answering: the first request after the kill
    // waits at most cluster.timeout (50 ms) for the store, later ones not
    // at all. The bound here leaves room for a debug build on a busy CI.
    let mut fallback_ok = [0; 3];
    for (p, ok_on) in fallback_ok.iter_mut().enumerate() {
        let (ok, slowest) = burst_on(p, 3).await;
        *ok_on = ok;
        assert!(
            slowest < Duration::from_millis(500),
            "replica {p} took {slowest:?} with Redis down"
        );
    }
    on_every_replica(&c, &fleet, "sluice_cluster_store_up", 0.0).await;
    // On the fallback a replica has its own third of the limit.
    let (ok, _) = burst_on(1, 20).await;
    let ok = ok + fallback_ok[1];
    assert!(
        (9..=11).contains(&ok),
        "the fallback admits 30 ÷ 3 replicas, admitted {ok}"
    );

    // Back: within 5 s of Redis accepting connections the global limit
    // holds again (a fresh store: the full fleet burst of 30, all of it
    // available through one replica).
    let back_at = redis.restart().await;
    on_every_replica(&c, &fleet, "sluice_cluster_store_up", 1.0).await;
    let resumed_in = back_at.elapsed();
    assert!(
        resumed_in <= Duration::from_secs(5),
        "resumed {resumed_in:?} after Redis came back"
    );
    let (ok, _) = burst_on(2, 40).await;
    assert!(
        (30..=31).contains(&ok),
        "one replica spends the fleet's 30 again, admitted {ok}"
    );
    let (ok, _) = burst_on(0, 5).await;
    assert_eq!(ok, 0, "and the fleet's bucket is empty for the others too");
    let text = metrics_text(&c, fleet[0].admin_addr).await;
    assert!(metric_value(&text, "sluice_cluster_fallbacks_total", &[]).unwrap() >= 1.0);
    assert!(metric_value(&text, "sluice_cluster_fallback_decisions_total", &[]).unwrap() >= 1.0);
}

/// An ACL user whose password comes from `cluster.password_file` or
/// `SLUICE_REDIS_PASSWORD`; the password shows nowhere: not in logs,
/// `sluice check`, `/admin/*`, nor in the URL as printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_a_password_from_a_file_or_the_environment_and_never_shown() {
    const SECRET: &str = "s3cret-hunter2";
    let redis = Redis::start_with(&[
        "--requirepass",
        "admin-only-pw",
        "--user",
        "sluice",
        "on",
        &format!(">{SECRET}"),
        "~t:*",
        "+@all",
    ])
    .await;
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let pw_file = write_file(dir.path(), "redis-password", &format!("{SECRET}\n"));
    let user_url = format!("redis://sluice@127.0.0.1:{}", redis.port);
    let route = "\n[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nrate = \"100/s\"\nscope = \"global\"\n";
    let with_file = write_file(
        dir.path(),
        "file.toml",
        &cluster_config(
            &backend.url(),
            &user_url,
            &dir.path().join("spool-a"),
            &format!("password_file = \"{}\"\n{route}", pw_file.display()),
        ),
    );
    let with_env = write_file(
        dir.path(),
        "env.toml",
        &cluster_config(&backend.url(), &user_url, &dir.path().join("spool-b"), route),
    );
    let in_url = write_file(
        dir.path(),
        "url.toml",
        &cluster_config(
            &backend.url(),
            &format!("redis://sluice:{SECRET}@127.0.0.1:{}", redis.port),
            &dir.path().join("spool-c"),
            route,
        ),
    );
    let a = SluiceProcess::spawn(&["run", "-c", with_file.to_str().unwrap()]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env("SLUICE_REDIS_PASSWORD", SECRET);
    let b = SluiceProcess::spawn_command(cmd, &["run", "-c", with_env.to_str().unwrap()]);
    let c3 = SluiceProcess::spawn(&["run", "-c", in_url.to_str().unwrap()]);
    let c = client();
    for p in [&a, &b, &c3] {
        assert_eq!(store_up(&c, p).await, Some(1.0), "authenticated as the ACL user");
        let r = get(&c, &format!("http://{}/", p.data_addr)).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        !redis
            .cli(&[
                "--user",
                "sluice",
                "--pass",
                SECRET,
                "--no-auth-warning",
                "--scan",
                "--pattern",
                "t:route:api*"
            ])
            .is_empty(),
        "the route's bucket is in Redis under the namespace"
    );

    // Shown nowhere.
    let mut shown = Vec::new();
    for p in [&a, &b, &c3] {
        for path in ["/admin/spool", "/admin/dlq", "/metrics"] {
            let r = get(&c, &format!("http://{}{path}", p.admin_addr)).await;
            shown.push(String::from_utf8_lossy(&r.body).into_owned());
        }
        let r = send(
            &c,
            http::Method::POST,
            &format!("http://{}/admin/reload", p.admin_addr),
            &[],
            bytes::Bytes::new(),
        )
        .await;
        shown.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    for cfg in [&with_file, &in_url] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "-c", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("redis://sluice"), "check shows the store: {text}");
        shown.push(text);
    }
    // A wrong password: refused by Redis, logged, still never shown.
    let wrong = write_file(dir.path(), "wrong", "not-it\n");
    let wrong_cfg = write_file(
        dir.path(),
        "wrong.toml",
        &cluster_config(
            &backend.url(),
            &format!("redis://sluice:{SECRET}@127.0.0.1:{}", redis.port),
            &dir.path().join("spool-d"),
            &format!("password_file = \"{}\"\n{route}", wrong.display()),
        ),
    );
    let d = SluiceProcess::spawn(&["run", "-c", wrong_cfg.to_str().unwrap()]);
    assert_eq!(
        store_up(&c, &d).await,
        Some(0.0),
        "a wrong password leaves the store down"
    );
    let r = get(&c, &format!("http://{}/", d.data_addr)).await;
    assert_eq!(r.status, 200, "served on the fallback");
    for p in [&a, &b, &c3, &d] {
        shown.extend(p.stderr_lines.lock().unwrap().iter().cloned());
    }
    assert!(
        d.stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cluster store unreachable")),
        "the failure is logged"
    );
    for text in &shown {
        assert!(!text.contains(SECRET), "the password leaked: {text}");
    }
}
