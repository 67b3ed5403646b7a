//! Replay figures that a criterion loop can't express: each scenario runs
//! once, end to end, on real sockets, and prints its measurements.
//!
//! `cargo bench --bench replay` runs all three:
//! - fidelity: a burst against a fixed budget — the backend's peak over
//!   1 s windows ÷ (capacity + burst), and drain time ÷ (backlog ÷ capacity);
//! - adaptive: capacity unknown to sluice — the fraction of the backend's
//!   true capacity that replay uses once settled, and the time to settle;
//! - recovery: 1 GiB of backlog — SIGKILL to serving again, and RSS.
//!
//! `cargo bench --bench replay -- fidelity` (or adaptive, recovery) runs one.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::config::{Config, Overrides};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A backend with `workers` parallel slots taking `service` each; records
/// every arrival time.
async fn backend(workers: usize, service: Duration) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(workers));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, slots) = (seen2.clone(), slots.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, slots) = (seen.clone(), slots.clone());
                    async move {
                        let _ = req.into_body().collect().await;
                        let _slot = slots.acquire().await;
                        seen.lock().unwrap().push(Instant::now());
                        tokio::time::sleep(service).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn config(extra: &str, backend: SocketAddr, dir: &std::path::Path) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nconfig_poll_interval = \"0s\"\n\
         [spool]\ndir = \"{}\"\nfsync = \"interval\"\n[upstream]\nurl = \"http://{backend}\"\n{extra}\n",
        dir.display()
    );
    Config::parse("<bench>", &text, &Overrides::default()).unwrap()
}

async fn post_burst(url: &str, n: usize, concurrency: usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.to_string());
        tasks.spawn(async move {
            let req = Request::post(&url)
                .body(Full::new(Bytes::from(format!("{{\"n\":{i}}}"))))
                .unwrap();
            let resp = client.request(req).await.expect("sluice answers");
            assert!(resp.status() == 200 || resp.status() == 202, "{}", resp.status());
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn peak_per_second(times: &[Instant]) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i].duration_since(times[j]) >= Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

async fn wait_drained(running: &sluice::app::Running, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if running.shared.spooler.local().unwrap().spool.status().backlog_records() == 0 {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "backlog did not drain within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fidelity() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = backend(64, Duration::from_millis(5)).await;
    let cfg = config(
        "capacity = \"200/s\"\ncapacity_burst = 20\nmax_concurrency = 64\n\
         [[route]]\nname = \"orders\"\nrate = \"50/s\"\nburst = 10\non_limit = \"spool\"",
        addr,
        dir.path(),
    );
    let running = sluice::app::start(cfg, Overrides::default()).await.unwrap();
    let url = format!("http://{}/orders", running.data_addr);
    let n = 3000;
    post_burst(&url, n, 64).await;
    let backlog = running.shared.spooler.local().unwrap().spool.status().backlog_records();
    let drain = wait_drained(&running, Duration::from_secs(120)).await;
    let ideal = backlog as f64 / 200.0;
    let times = seen.lock().unwrap().clone();
    let peak = peak_per_second(&times);
    println!("fidelity: {n} POSTs in a burst, capacity 200/s + burst 20, route 50/s on_limit=spool");
    println!(
        "  backend peak over 1 s windows: {peak} req/s = {:.2} × (capacity + burst)",
        peak as f64 / 220.0
    );
    println!(
        "  backlog after the burst: {backlog}; drained in {:.2} s; ideal backlog/capacity {:.2} s; ratio {:.2}",
        drain.as_secs_f64(),
        ideal,
        drain.as_secs_f64() / ideal
    );
    println!("  backend received {} requests (sent {n})", times.len());
    running.shutdown().await;
}

async fn adaptive() {
    let dir = tempfile::tempdir().unwrap();
    // True capacity: 8 workers × 20 ms = 400 req/s, unknown to sluice.
    let (addr, seen) = backend(8, Duration::from_millis(20)).await;
    let cfg = config(
        "max_concurrency = 64\n[drain]\nordering = \"none\"\n\
         [[route]]\nname = \"orders\"\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"",
        addr,
        dir.path(),
    );
    let mut cfg = cfg;
    cfg.spool.partitions = 16;
    let running = sluice::app::start(cfg, Overrides::default()).await.unwrap();
    // Fill a backlog while replay is paused, then let it go.
    running.shared.spooler.local().unwrap().paused.send_replace(true);
    let url = format!("http://{}/orders", running.data_addr);
    let n = 8000;
    post_burst(&url, n, 64).await;
    seen.lock().unwrap().clear();
    let start = Instant::now();
    running.shared.spooler.local().unwrap().paused.send_replace(false);
    wait_drained(&running, Duration::from_secs(120)).await;
    let times = seen.lock().unwrap().clone();
    // Delivered per 500 ms window.
    let mut windows =
        vec![0usize; (times.last().map_or(0, |t| t.duration_since(start).as_millis()) / 500 + 1) as usize];
    for t in &times {
        windows[(t.duration_since(start).as_millis() / 500) as usize] += 1;
    }
    let rates: Vec<f64> = windows.iter().map(|w| *w as f64 * 2.0).collect();
    let settle = rates.iter().position(|r| *r >= 0.85 * 400.0);
    // Settled: every full window after settling, except the last partial one.
    let settled: Vec<f64> = match settle {
        Some(i) if rates.len() > i + 2 => rates[i..rates.len() - 1].to_vec(),
        _ => rates.clone(),
    };
    let mean = settled.iter().sum::<f64>() / settled.len().max(1) as f64;
    println!("adaptive: backlog {n}, backend true capacity 400 req/s (8 workers × 20 ms), capacity unset");
    println!(
        "  settled replay rate {:.0} req/s = {:.0}% of true capacity; time to reach 85%: {}",
        mean,
        100.0 * mean / 400.0,
        settle.map_or("never".into(), |i| format!("{:.1} s", i as f64 * 0.5))
    );
    println!(
        "  per 500 ms: {}",
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" ")
    );
    let metrics = running.shared.metrics.render();
    let text = String::from_utf8_lossy(&metrics);
    for line in text
        .lines()
        .filter(|l| l.starts_with("sluice_replay_limit") || l.starts_with("sluice_replay_total"))
    {
        println!("  {line}");
    }
    running.shutdown().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Starts the real binary on `dir` and returns it with the time until
/// /readyz answered 200. The caller kills and waits for the child.
#[allow(clippy::zombie_processes)]
fn start_binary(cfg_path: &std::path::Path, admin: u16) -> (std::process::Child, Duration) {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c", cfg_path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return (child, started.elapsed());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice did not become ready");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn recovery() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    // 1 GiB of valid spooled requests, written through the spool library.
    {
        let mut opts = sluice::spool::SpoolOptions::new(&spool_dir);
        opts.fsync = sluice::spool::FsyncMode::Never;
        opts.max_bytes = 4 << 30;
        let spool = sluice::spool::Spool::open(opts, Arc::new(sluice::spool::NoopObserver))
            .await
            .unwrap();
        let body = Bytes::from(vec![b'x'; 60 << 10]);
        let total: u64 = 1 << 30;
        let mut written = 0u64;
        let mut i = 0u32;
        while written < total {
            let env = sluice::drain::envelope::Envelope {
                token: sluice::drain::id::RequestId::new_token(),
                arrived_ms: sluice::drain::outcomes::now_ms(),
                attempt_base: 0,
                route: "orders".into(),
                method: http::Method::POST,
                path_and_query: "/orders".into(),
                idempotency_key: None,
                headers: http::HeaderMap::new(),
                body: body.clone(),
            };
            let bytes = env.encode();
            written += bytes.len() as u64;
            spool.append(i % 8, bytes).await.unwrap();
            i += 1;
        }
        spool.close().await.unwrap();
        println!("recovery: wrote {i} records, {} MiB of backlog", written >> 20);
    }
    // The upstream is a closed port: replay can't drain the backlog.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (data, admin) = (free(), free());
    let cfg_path = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{data}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [upstream]\nurl = \"http://127.0.0.1:{closed}\"\n[spool]\ndir = \"{}\"\nmax_bytes = \"4GiB\"\n\
             [[route]]\nname = \"orders\"\nrate = \"10/s\"\non_limit = \"spool\"\n",
            spool_dir.display()
        ),
    )
    .unwrap();
    let (mut child, first) = start_binary(&cfg_path, admin);
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(child.id());
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let (mut child, after_kill) = start_binary(&cfg_path, admin);
    std::thread::sleep(Duration::from_secs(3));
    let rss2 = rss_kib(child.id());
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    println!("  first start to /readyz 200: {:.0} ms", first.as_secs_f64() * 1000.0);
    println!(
        "  SIGKILL, restart to /readyz 200: {:.0} ms",
        after_kill.as_secs_f64() * 1000.0
    );
    println!(
        "  RSS with 1 GiB of backlog, 3 s after start: {} MiB, after the restart: {} MiB",
        rss >> 10,
        rss2 >> 10
    );
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let rt = tokio::runtime::Runtime::new().unwrap();
    if run("fidelity") {
        rt.block_on(fidelity());
    }
    if run("adaptive") {
        rt.block_on(adaptive());
    }
    if run("recovery") {
        rt.block_on(recovery());
    }
}
