//! Shared by the process-level fault tests (kill -9 soak, real full disk):
//! a backend that records every complete request with the answer it chose
//! and counts its open connections; a sluice process started from any
//! command line (so it can run inside a mount namespace); and a load of
//! POSTs with unique ids in their bodies.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A complete request as the backend saw it, with the status it answered.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The request's name: its body up to the first '.' (the load sends
    /// `NAME.padding`; see [`body_of`]).
    pub body: String,
    /// `Sluice-Id`, `Sluice-Partition`, `Sluice-Sequence`, `Sluice-Attempt`:
    /// present on replayed requests only.
    pub id: Option<String>,
    pub partition: Option<u32>,
    pub sequence: Option<u64>,
    pub attempt: Option<u32>,
    pub status: u16,
    pub at: Instant,
}

impl Sighting {
    pub fn replayed(&self) -> bool {
        self.id.is_some()
    }
}

/// The body the load sends for request `name`: `NAME.` padded with
/// letters to `len` bytes.
pub fn body_of(name: &str, len: usize) -> String {
    let mut s = format!("{name}.");
    while s.len() < len {
        s.push((b'a' + (s.len() % 26) as u8) as char);
    }
    s
}

/// The request name in a body sent by the load.
pub fn name_of(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == b'.').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// Chooses the answer to a request: (status, delay before answering).
pub type Policy = Arc<dyn Fn(&Sighting) -> (u16, Duration) + Send + Sync>;

/// An HTTP/1.1 backend on 127.0.0.1:0 that records each complete request
/// (a body cut off by a dying client is not recorded: the backend never
/// acted on it) before answering it.
pub struct RecordingBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Sighting>>>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header<T: std::str::FromStr>(h: &http::HeaderMap, name: &str) -> Option<T> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

impl RecordingBackend {
    pub async fn start(policy: Policy) -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Sighting>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let (seen2, open2) = (seen.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                open2.fetch_add(1, Ordering::SeqCst);
                let (seen, open, policy) = (seen2.clone(), open2.clone(), policy.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, policy) = (seen.clone(), policy.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                                // The client died mid-body: nothing acted on.
                                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                            };
                            let mut s = Sighting {
                                body: name_of(&body),
                                id: header(&parts.headers, "sluice-id"),
                                partition: header(&parts.headers, "sluice-partition"),
                                sequence: header(&parts.headers, "sluice-sequence"),
                                attempt: header(&parts.headers, "sluice-attempt"),
                                status: 0,
                                at: Instant::now(),
                            };
                            let (status, delay) = policy(&s);
                            s.status = status;
                            seen.lock().unwrap().push(s);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"backend")));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RecordingBackend { addr, seen, open, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn snapshot(&self) -> Vec<Sighting> {
        self.seen.lock().unwrap().clone()
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open (after the sluice that held them
    /// died, every request it had sent is recorded or dropped).
    pub async fn wait_idle(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        while self.open_connections() > 0 {
            assert!(
                Instant::now() < end,
                "backend still has {} open connections after {deadline:?}",
                self.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A sluice process started from a command line that ends up exec'ing the
/// binary with `--log-format json` (directly, or through `nsenter`): the
/// pid is sluice's own.
pub struct Proc {
    pub child: Child,
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Set when stderr closes (the process is gone).
    eof: Arc<AtomicBool>,
}

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

impl Proc {
    /// Spawns `cmd` (stderr piped) and waits for sluice's `listening` line.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let eof = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (lines2, eof2) = (lines.clone(), eof.clone());
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
            eof2.store(true, Ordering::SeqCst);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sluice did not report listening; stderr: {:#?}", lines.lock().unwrap());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Proc {
            data_addr: v["data"].as_str().unwrap().parse().unwrap(),
            admin_addr: v["admin"].as_str().unwrap().parse().unwrap(),
            child,
            stderr: lines,
            eof,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(&self) {
        // SAFETY: a signal to our own child, which has not been reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0, "SIGKILL sluice: {}", std::io::Error::last_os_error());
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit; then for its stderr to be read to
    /// the end, so every line it printed is in `stderr`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        let st = loop {
            if let Some(st) = self.try_exit() {
                break st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("sluice did not exit within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        while !self.eof.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < end + Duration::from_secs(5),
                "sluice's stderr stays open"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        st
    }

    pub fn stderr_has(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Each distinct WARN/ERROR log message (with its error field) once,
    /// in order of first appearance.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in self.stderr.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                continue;
            };
            if !matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                continue;
            }
            let m = format!(
                "{}: {}",
                v["message"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            );
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    pub fn stderr_tail(&self, n: usize) -> Vec<String> {
        let l = self.stderr.lock().unwrap();
        l[l.len().saturating_sub(n)..].to_vec()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn killed_by_sigkill(st: &ExitStatus) -> bool {
    st.signal() == Some(libc::SIGKILL)
}

/// How the client side of the load ended for each request it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202: the id from its body.
    Accepted(String),
    /// Any other HTTP status, with the JSON `error` if there was one.
    Status(u16, Option<String>),
    /// No complete answer (connection refused, reset, cut).
    Transport,
}

/// What a load learned: request name → answer, in sending order.
#[derive(Debug, Default, Clone)]
pub struct LoadLog {
    pub answers: Vec<(String, Answer)>,
}

impl LoadLog {
    pub fn accepted(&self) -> impl Iterator<Item = (&str, &str)> {
        self.answers.iter().filter_map(|(name, a)| match a {
            Answer::Accepted(id) => Some((name.as_str(), id.as_str())),
            _ => None,
        })
    }

    pub fn count(&self, f: impl Fn(&Answer) -> bool) -> usize {
        self.answers.iter().filter(|(_, a)| f(a)).count()
    }

    pub fn by_name(&self) -> HashMap<&str, &Answer> {
        self.answers.iter().map(|(n, a)| (n.as_str(), a)).collect()
    }
}

/// POSTs a body of `body_len` bytes for each of `names` to `url`, `concurrency` at a time, until they
/// are all sent, `stop` is set, or a request fails at the transport level
/// (then the process is taken to be dying and that worker stops; the other
/// workers find out on their next request).
pub async fn post_all(
    url: String,
    names: Vec<String>,
    body_len: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> LoadLog {
    let c = super::support::client();
    let queue = Arc::new(Mutex::new(names.into_iter().collect::<std::collections::VecDeque<_>>()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (c, url, queue, stop) = (c.clone(), url.to_string(), queue.clone(), stop.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(name) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let r = super::support::try_send(&c, http::Method::POST, &url, &[], body_of(&name, body_len)).await;
                let a = match r {
                    Ok(r) if r.status == 202 => {
                        let id = r.json()["id"].as_str().expect("202 body has an id").to_string();
                        Answer::Accepted(id)
                    }
                    Ok(r) => {
                        let err = serde_json::from_slice::<serde_json::Value>(&r.body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_string));
                        Answer::Status(r.status.as_u16(), err)
                    }
                    Err(_) => Answer::Transport,
                };
                let dead = a == Answer::Transport;
                out.push((name, a));
                if dead {
                    break;
                }
            }
            out
        });
    }
    let mut log = LoadLog::default();
    while let Some(r) = tasks.join_next().await {
        log.answers.extend(r.unwrap());
    }
    log
}
