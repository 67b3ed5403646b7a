//! Test harness: real backends and real sluice instances on 127.0.0.1:0,
//! a small HTTP client, and polling with deadlines (never sleeps that
//! guess how long something takes).
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

pub type Handler = Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// An HTTP/1.1 backend on 127.0.0.1:0 that records every request.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, handler, false).await
    }

    /// A backend that answers 200 with body "ok" and echoes request
    /// details in headers.
    pub async fn ok() -> Backend {
        Self::start(Arc::new(|seen: Seen| {
            Box::pin(async move {
                Response::builder()
                    .status(200)
                    .header("x-backend-saw-path", seen.uri.clone())
                    .header("connection", "x-hop")
                    .header("x-hop", "must-not-reach-client")
                    .header("keep-alive", "timeout=5")
                    .body(Full::new(seen.body.clone()))
                    .unwrap()
            })
        }))
        .await
    }

    pub async fn start_on(listener: TcpListener, handler: Handler, http10: bool) -> Backend {
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                                at: std::time::Instant::now(),
                            };
                            seen.lock().unwrap().push(s.clone());
                            let mut resp = handler(s).await;
                            if http10 {
                                *resp.version_mut() = http::Version::HTTP_10;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests this backend saw that were replays (they carry
    /// `Sluice-Id`), in arrival order.
    pub fn replays(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.headers.contains_key("sluice-id"))
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }
}

/// Config text with the given upstream, loopback listeners and extra TOML.
pub fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{upstream}\"\n\n{extra}\n"
    )
}

pub fn parse_config(text: &str) -> sluice::config::Config {
    sluice::config::Config::parse("test.toml", text, &Default::default()).expect("test config is valid")
}

/// Starts sluice in this process.
pub async fn start_sluice(text: &str) -> sluice::app::Running {
    let overrides = private_spool(&parse_config(text));
    let cfg = sluice::config::Config::parse("test.toml", text, &overrides).expect("test config is valid");
    sluice::app::start(cfg, overrides).await.expect("sluice starts")
}

/// Overrides giving a config that still names the default spool directory
/// a fresh temporary one (as `--spool-dir` would), so parallel tests never
/// share or lock one spool, and reloads keep it. The directory is left for
/// the OS to clean with the rest of the temp dir.
pub fn private_spool(cfg: &sluice::config::Config) -> sluice::config::Overrides {
    let mut o = sluice::config::Overrides::default();
    if cfg.spool.dir == std::path::Path::new("./sluice-spool") {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        o.spool_dir = Some(dir.join("spool"));
    }
    o
}

pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("response has no {name} header: {:?}", self.headers))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole answer; panics on a transport
/// failure (see [`try_send`] for tests that expect one).
pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_send(client, method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("request succeeded at the HTTP level: {e}"))
}

pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(client, Method::GET, url, &[], Bytes::new()).await
}

/// Polls `check` every 20 ms until it returns Some or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sluice process (the real binary), for signal and crash tests.
pub struct SluiceProcess {
    pub child: std::process::Child,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
}

impl SluiceProcess {
    pub fn spawn(args: &[&str]) -> SluiceProcess {
        Self::spawn_command(std::process::Command::new(env!("CARGO_BIN_EXE_sluice")), args)
    }

    /// As `spawn`, from a command the caller prepared (limits, env).
    pub fn spawn_command(cmd: std::process::Command, args: &[&str]) -> SluiceProcess {
        Self::spawn_command_env(cmd, args, "info")
    }

    /// As `spawn_command`, with this `RUST_LOG` (it must let the
    /// `sluice::app` "listening" line through).
    pub fn spawn_command_env(mut cmd: std::process::Command, args: &[&str], rust_log: &str) -> SluiceProcess {
        use std::io::BufRead;
        let mut child = cmd
            .args(args)
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", rust_log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("sluice did not report listening; stderr: {:?}", lines.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        SluiceProcess {
            data_addr: v["data"].as_str().unwrap().parse().unwrap(),
            admin_addr: v["admin"].as_str().unwrap().parse().unwrap(),
            child,
            stderr_lines: lines,
        }
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits for exit with a deadline; returns the exit status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!("sluice did not exit within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend whose handler takes `delay` before answering 200 "slow".
pub async fn slow_backend(delay: Duration) -> Backend {
    Backend::start(Arc::new(move |_seen: Seen| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Response::new(Full::new(Bytes::from_static(b"slow")))
        })
    }))
    .await
}

/// A backend that holds every request until `gate` gets a permit (one
/// permit releases one request), then answers 200 "released".
pub async fn gated_backend(gate: Arc<tokio::sync::Semaphore>) -> Backend {
    Backend::start(Arc::new(move |_seen: Seen| {
        let gate = gate.clone();
        Box::pin(async move {
            gate.acquire().await.expect("gate open").forget();
            Response::new(Full::new(Bytes::from_static(b"released")))
        })
    }))
    .await
}

/// A port on 127.0.0.1 on which nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The admin port's `/metrics` text.
pub async fn metrics_text(client: &TestClient, admin: SocketAddr) -> String {
    let r = get(client, &format!("http://{admin}/metrics")).await;
    assert_eq!(r.status, 200, "/metrics answers 200");
    String::from_utf8(r.body.to_vec()).expect("metrics are UTF-8")
}

/// The value of the sample `name{labels...}` in Prometheus text, whatever
/// the label order; `None` when there is no such sample.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<(&str, &str)> = rest
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// A request body sent in `chunks` with no Content-Length, so hyper
/// streams it with chunked transfer encoding.
pub struct ChunkedBody {
    chunks: std::collections::VecDeque<Bytes>,
}

impl ChunkedBody {
    pub fn new(chunks: Vec<Bytes>) -> Self {
        ChunkedBody { chunks: chunks.into() }
    }
}

impl http_body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.chunks.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts sluice in this process from a config file, so it has a source
/// path and `/admin/reload` re-reads that file.
pub async fn start_sluice_from_file(path: &std::path::Path) -> sluice::app::Running {
    let plain = sluice::config::Config::load(Some(path), &Default::default()).expect("test config file is valid");
    let overrides = private_spool(&plain);
    let cfg = sluice::config::Config::load(Some(path), &overrides).expect("test config file is valid");
    sluice::app::start(cfg, overrides).await.expect("sluice starts")
}

/// Like [`send`], but a transport failure (connection refused or reset,
/// as when sluice is killed mid-request) is an `Err` rather than a panic.
pub async fn try_send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(b.body(Full::new(body.into())).unwrap()),
    )
    .await
    .map_err(|_| "request did not finish within 30s".to_string())?
    .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// The admin port's `/admin/spool` JSON (loopback peers need no token).
pub async fn admin_spool(client: &TestClient, admin: SocketAddr) -> serde_json::Value {
    let r = get(client, &format!("http://{admin}/admin/spool")).await;
    assert_eq!(r.status, 200, "/admin/spool answers 200: {:?}", r.body);
    r.json()
}

/// POSTs an empty body to an admin endpoint (loopback peers need no token).
pub async fn admin_post(client: &TestClient, admin: SocketAddr, path: &str) -> Reply {
    send(
        client,
        Method::POST,
        &format!("http://{admin}{path}"),
        &[],
        Bytes::new(),
    )
    .await
}

/// A spooled request's id from its 202, checking the 202's shape: the id
/// in the body is the `Sluice-Id` header.
pub fn accepted_id(r: &Reply) -> String {
    assert_eq!(r.status, 202, "expected 202: {:?}", r.body);
    let id = r.json()["id"].as_str().expect("202 body has an id").to_string();
    assert_eq!(r.header("sluice-id"), id);
    id
}

/// The status answer for `id` (it must be known: 200).
pub async fn status_json(c: &TestClient, data: SocketAddr, id: &str) -> serde_json::Value {
    let r = request_status(c, data, id).await;
    assert_eq!(r.status, 200, "status of {id}: {:?}", r.body);
    r.json()
}

/// The status endpoint's answer for `id` on the data port.
pub async fn request_status(client: &TestClient, data: SocketAddr, id: &str) -> Reply {
    get(client, &format!("http://{data}/_sluice/requests/{id}")).await
}

/// A header of a request the backend saw, as text.
pub fn seen_header<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A WebSocket echo backend on 127.0.0.1:0; returns its `http://` URL.
pub async fn ws_echo_backend() -> String {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A test per spool backend for each case: `<case>::local` and
/// `<case>::jetstream`.
#[allow(unused_macros)]
macro_rules! on_both_spools {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$case(SpoolKind::Local).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jetstream() {
                super::$case(SpoolKind::JetStream).await
            }
        }
    )*};
}

/// Which spool a test's sluice writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolKind {
    Local,
    /// A JetStream spool on this test binary's own nats-server (R=1), in
    /// streams of the test's own.
    JetStream,
}

impl SpoolKind {
    /// The offset of a fresh partition's first record: the local spool
    /// counts from 0, a JetStream stream's sequence from 1.
    pub fn first_offset(self) -> u64 {
        match self {
            SpoolKind::Local => 0,
            SpoolKind::JetStream => 1,
        }
    }
}

impl SpoolKind {
    /// `text` on this spool: with JetStream, in streams of its own (the
    /// same ones each time the returned text is started, so a restart
    /// finds them).
    pub fn config(self, text: &str) -> String {
        match self {
            SpoolKind::Local => text.to_string(),
            SpoolKind::JetStream => with_jetstream(text, &[shared_nats().url()], 1),
        }
    }
}

/// Starts sluice in this process on the given spool.
pub async fn start_sluice_on(kind: SpoolKind, text: &str) -> sluice::app::Running {
    start_sluice(&kind.config(text)).await
}

/// `text` with `[spool] backend = "jetstream"` on `servers`, in streams and
/// subjects named for this call alone (tests in one binary share a server).
pub fn with_jetstream(text: &str, servers: &[String], replicas: usize) -> String {
    let name = format!("t{:016x}", rand::random::<u64>());
    with_jetstream_named(text, servers, replicas, &name)
}

/// As [`with_jetstream`], in streams named `name` (replicas that share a
/// backlog share a name).
pub fn with_jetstream_named(text: &str, servers: &[String], replicas: usize, name: &str) -> String {
    let mut doc: toml_edit::DocumentMut = text.parse().expect("test config is TOML");
    if doc.get("spool").is_none() {
        doc["spool"] = toml_edit::table();
    }
    doc["spool"]["backend"] = toml_edit::value("jetstream");
    let mut js = toml_edit::Table::new();
    let mut list = toml_edit::Array::new();
    for s in servers {
        list.push(s.as_str());
    }
    js["servers"] = toml_edit::value(list);
    js["stream"] = toml_edit::value(name);
    js["subject_prefix"] = toml_edit::value(name);
    js["replicas"] = toml_edit::value(replicas as i64);
    js["ack_wait"] = toml_edit::value("5s");
    // The server reserves each stream's quota up front.
    js["max_bytes"] = toml_edit::value("64MiB");
    doc["spool"]["jetstream"] = toml_edit::Item::Table(js);
    doc.to_string()
}

/// A nats-server with JetStream on a loopback port of its own, killed on
/// drop.
pub struct NatsServer {
    child: Option<std::process::Child>,
    pub port: u16,
    pub cluster_port: u16,
    pub dir: std::path::PathBuf,
    routes: Vec<u16>,
    name: String,
    extra: Vec<String>,
}

impl NatsServer {
    /// A single node.
    pub fn start() -> NatsServer {
        Self::start_with(&[])
    }

    /// A single node with extra nats-server arguments (e.g. `--auth`).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let mut n = NatsServer {
            child: None,
            port: closed_port(),
            cluster_port: 0,
            dir,
            routes: Vec::new(),
            name: "n0".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.restart();
        n
    }

    /// A three-node cluster (JetStream replicas need a quorum of 2).
    pub fn cluster3() -> Vec<NatsServer> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| closed_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| NatsServer {
                child: None,
                port: closed_port(),
                cluster_port: cluster_ports[i],
                dir: tempfile::tempdir().expect("temp dir").keep(),
                routes: cluster_ports
                    .iter()
                    .copied()
                    .filter(|&p| p != cluster_ports[i])
                    .collect(),
                name: format!("n{i}"),
                extra: Vec::new(),
            })
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        for n in &nodes {
            n.wait_listening();
        }
        nodes
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut cmd = std::process::Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-n", &self.name])
            .arg("-sd")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.cluster_port != 0 {
            let routes: Vec<String> = self.routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            cmd.args([
                "--cluster_name",
                "sluice-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("nats-server (Debian package nats-server; .ci/run installs it)"),
        );
    }

    fn wait_listening(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server {} listens",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts (again) on the same port and store; returns once it listens.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_listening();
    }

    /// SIGKILL, as a lost node.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One nats-server for the whole test binary, started on first use. It is
/// spawned from a thread that lives as long as the process and dies with
/// it (PR_SET_PDEATHSIG follows the spawning thread, so not a test's).
pub fn shared_nats() -> &'static SharedNats {
    static NATS: std::sync::OnceLock<SharedNats> = std::sync::OnceLock::new();
    NATS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let port = closed_port();
            let dir = tempfile::tempdir().expect("temp dir").keep();
            let mut cmd = std::process::Command::new("nats-server");
            cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .arg("-sd")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .expect("nats-server (Debian package nats-server; .ci/run installs it)");
            tx.send(port).unwrap();
            // This thread lives while the server does.
            let _ = child.wait();
        });
        let port = rx.recv().expect("nats-server started");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the shared nats-server listens");
            std::thread::sleep(Duration::from_millis(20));
        }
        SharedNats { port }
    })
}

pub struct SharedNats {
    port: u16,
}

impl SharedNats {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}
