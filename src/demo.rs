//! `sluice demo`: peak shaving on this machine in under a minute.
//!
//! A built-in slow backend of fixed capacity (a few workers, each taking a
//! fixed time per request, a short queue, 503 beyond it) gets the same
//! burst of writes twice: straight, then through sluice. The summary shows
//! what the backend saw (peak rate, errors) and what clients saw (status
//! codes, latency), with a chart of the backend's load over time.

use crate::config::{Config, Overrides};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Requests in the burst.
    pub requests: usize,
    /// How fast the burst is sent (requests per second).
    pub burst_rate: u32,
    /// Backend workers; each takes `service` per request.
    pub workers: usize,
    pub service: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            requests: 600,
            burst_rate: 300,
            workers: 5,
            service: Duration::from_millis(100),
        }
    }
}

impl DemoOptions {
    fn capacity(&self) -> f64 {
        self.workers as f64 / self.service.as_secs_f64()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo backend: {0}")]
    Io(#[from] std::io::Error),
    #[error("starting sluice: {0}")]
    Sluice(#[from] crate::app::AppError),
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the backlog did not drain within {0:?}")]
    NoDrain(Duration),
}

/// Arrivals per 100 ms bucket since the backend started.
struct Backend {
    addr: SocketAddr,
    started: Instant,
    arrived: Mutex<Vec<u32>>,
    rejected: AtomicUsize,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(opts: DemoOptions) -> Result<Arc<Backend>, DemoError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let workers = Arc::new(Semaphore::new(opts.workers));
        // A short queue: what a struggling real backend has before it
        // starts failing.
        let queue = Arc::new(Semaphore::new(opts.workers * 4));
        let backend = Arc::new_cyclic(|weak: &std::sync::Weak<Backend>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (workers, queue, weak) = (workers.clone(), queue.clone(), weak.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (workers, queue, weak) = (workers.clone(), queue.clone(), weak.clone());
                            async move {
                                let _ = req.into_body().collect().await;
                                let Some(me) = weak.upgrade() else {
                                    return Ok::<_, Infallible>(status(StatusCode::SERVICE_UNAVAILABLE));
                                };
                                me.count();
                                let Ok(_queued) = queue.try_acquire() else {
                                    me.rejected.fetch_add(1, Ordering::Relaxed);
                                    return Ok(status(StatusCode::SERVICE_UNAVAILABLE));
                                };
                                let _worker = workers.acquire().await;
                                tokio::time::sleep(opts.service).await;
                                Ok(status(StatusCode::OK))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Backend {
                addr,
                started: Instant::now(),
                arrived: Mutex::new(Vec::new()),
                rejected: AtomicUsize::new(0),
                task,
            }
        });
        Ok(backend)
    }

    fn count(&self) {
        let bucket = (self.started.elapsed().as_millis() / 100) as usize;
        let mut s = self.arrived.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() <= bucket {
            s.resize(bucket + 1, 0);
        }
        s[bucket] += 1;
    }

    fn buckets(&self) -> Vec<u32> {
        self.arrived.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The most requests that arrived in any 1 s window.
    fn peak_per_second(&self) -> u32 {
        let b = self.buckets();
        b.windows(10.min(b.len().max(1)))
            .map(|w| w.iter().sum::<u32>())
            .max()
            .unwrap_or(0)
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

#[derive(Default)]
struct ClientStats {
    codes: std::collections::BTreeMap<u16, usize>,
    latencies: Vec<Duration>,
}

impl ClientStats {
    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// Sends the burst to `url` at the configured pace.
async fn burst(url: &str, opts: DemoOptions) -> ClientStats {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / opts.burst_rate.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.requests {
        tick.tick().await;
        let (client, stats, url) = (client.clone(), stats.clone(), url.to_string());
        tasks.spawn(async move {
            let req = Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!("{{\"order\":{i}}}"))))
                .expect("a valid request");
            let start = Instant::now();
            let code = match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                Ok(Ok(resp)) => {
                    let code = resp.status().as_u16();
                    let _ = resp.into_body().collect().await;
                    code
                }
                _ => 0,
            };
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            *s.codes.entry(code).or_default() += 1;
            s.latencies.push(start.elapsed());
        });
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(stats)
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .unwrap_or_default()
}

/// A bar chart `rows` high of req/s per 250 ms, with the capacity line.
fn tall_chart(buckets: &[u32], scale: f64, capacity: f64, rows: usize) -> Vec<String> {
    const PARTS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let per_sec: Vec<f64> = buckets
        .chunks(5)
        .map(|c| f64::from(c.iter().sum::<u32>()) * 10.0 / c.len() as f64)
        .collect();
    let cap_row = ((capacity / scale) * rows as f64).ceil() as usize;
    (0..rows)
        .rev()
        .map(|row| {
            let bottom = scale * row as f64 / rows as f64;
            let cell = scale / rows as f64;
            let bars: String = per_sec
                .iter()
                .map(|v| {
                    let fill = ((v - bottom) / cell).clamp(0.0, 1.0);
                    let c = PARTS[(fill * 8.0).round() as usize];
                    if c == ' ' && row + 1 == cap_row {
                        '─'
                    } else {
                        c
                    }
                })
                .collect();
            format!("{:>5.0} │{bars}", scale * (row + 1) as f64 / rows as f64)
        })
        .collect()
}

fn codes(s: &ClientStats) -> String {
    s.codes
        .iter()
        .map(|(c, n)| {
            if *c == 0 {
                format!("{n}× failed")
            } else {
                format!("{n}× {c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(opts: DemoOptions) -> Result<String, DemoError> {
    let capacity = opts.capacity();
    let mut out = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "sluice demo: a backend that handles {capacity:.0} req/s gets a burst of {} writes at {} req/s\n",
        opts.requests, opts.burst_rate
    );

    // 1. Straight at the backend.
    let direct_backend = Backend::start(opts).await?;
    let direct = burst(&format!("http://{}/orders", direct_backend.addr), opts).await;
    let direct_rejected = direct_backend.rejected.load(Ordering::Relaxed);

    // 2. Through sluice: the route admits a little under the backend's
    //    capacity, the budget caps what reaches it, the rest is spooled.
    let via_backend = Backend::start(opts).await?;
    let spool_dir = tempfile_dir()?;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
config_poll_interval = "0s"
[upstream]
url = "http://{backend}"
capacity = "{cap}/s"
capacity_burst = {burst}
max_concurrency = {workers}
[spool]
dir = "{dir}"
partitions = {workers}
fsync = "always"
[drain]
backoff_initial = "100ms"
backoff_max = "1s"
[[route]]
name = "orders"
match = {{ path_prefix = "/orders" }}
rate = "{route}/s"
burst = {burst}
on_limit = "spool"
"#,
        backend = via_backend.addr,
        cap = (capacity * 0.9).floor().max(1.0),
        route = (capacity * 0.5).floor().max(1.0),
        burst = ((capacity * 0.1).floor() as u32).max(1),
        workers = opts.workers,
        dir = spool_dir.display(),
    );
    let config = Config::parse("<demo>", &text, &Overrides::default())?;
    let running = crate::app::start(config, Overrides::default()).await?;
    let via_started = Instant::now();
    let via = burst(&format!("http://{}/orders", running.data_addr), opts).await;
    let spool = running
        .shared
        .spooler
        .local()
        .expect("the demo runs the local spool")
        .spool
        .clone();
    let drain_deadline = Duration::from_secs(60);
    let drained = loop {
        if spool.status().backlog_records() == 0 {
            break via_started.elapsed();
        }
        if via_started.elapsed() > drain_deadline {
            running.shutdown().await;
            let _ = std::fs::remove_dir_all(&spool_dir);
            return Err(DemoError::NoDrain(drain_deadline));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&spool_dir);

    let scale = capacity.max(f64::from(direct_backend.peak_per_second()));
    let _ = writeln!(
        out,
        "requests reaching the backend per second (one column per 250 ms; its capacity is {capacity:.0} req/s)\n"
    );
    for (label, backend) in [("without sluice", &direct_backend), ("with sluice", &via_backend)] {
        let _ = writeln!(out, "  {label}");
        for line in tall_chart(&backend.buckets(), scale, capacity, 6) {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "                      without sluice      with sluice");
    let _ = writeln!(
        out,
        "backend peak (1 s)    {:>7} req/s       {:>7} req/s   (capacity {capacity:.0})",
        direct_backend.peak_per_second(),
        via_backend.peak_per_second()
    );
    let _ = writeln!(
        out,
        "backend refused       {:>7}             {:>7}",
        direct_rejected,
        via_backend.rejected.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "client p50 / p99   {:>6.1} / {:<6.1} ms  {:>6.1} / {:<6.1} ms",
        direct.percentile(0.5).as_secs_f64() * 1000.0,
        direct.percentile(0.99).as_secs_f64() * 1000.0,
        via.percentile(0.5).as_secs_f64() * 1000.0,
        via.percentile(0.99).as_secs_f64() * 1000.0
    );
    let _ = writeln!(out, "client saw (without)  {}", codes(&direct));
    let _ = writeln!(out, "client saw (with)     {}", codes(&via));
    let _ = writeln!(
        out,
        "\nwith sluice every write was answered at once (200 forwarded, 202 spooled) and the \
         backlog was delivered {:.1} s after the burst began; without it the backend refused {} of {}.",
        drained.as_secs_f64(),
        direct_rejected,
        opts.requests
    );
    direct_backend.task.abort();
    via_backend.task.abort();
    Ok(out)
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sluice-demo-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
