//! The cases of `tests/fault_backend.rs`, kept apart so another test
//! crate can run them too (a RELIABILITY.md check, say): declare
//! `mod support;` and `#[path = "fault_backend/cases.rs"] mod cases;` in
//! it, then call [`run_case`] with a name from [`CASES`] (or a case's
//! function) to get its [`Tally`].
//!
//! A real backend misbehaving while sluice replays spooled requests: down
//! (nothing listening, then up), hung (accepts, never answers), resetting
//! mid-response, a 5xx storm, 429 with `Retry-After` (delta-seconds and
//! HTTP-date), garbage instead of HTTP.
//!
//! Each case spools requests (every one answered 202 is "acknowledged"),
//! lets replay run against a [`FaultServer`] until every partition is
//! committed, then counts per Idempotency-Key (the 202's id) how often the
//! backend sent a complete 2xx for it ("delivered") and whether it is in
//! the DLQ ("dead"), and asserts the case's policy: delivered exactly
//! once, or dead-lettered with the expected reason; none lost.
//!
//! Each case returns its [`Tally`] (acknowledged, delivered, dead, lost,
//! duplicated), prints it on a line starting `RELIABILITY `, and, when
//! `SLUICE_RELIABILITY_OUT` names a file, appends it there as a JSON line,
//! for RELIABILITY.md.
#![allow(dead_code)]

use crate::support::*;
use bytes::Bytes;
use http::Method;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// The misbehaving backend: a raw HTTP/1.1 server, one request per
// connection, whose answer to each request a policy chooses.
// ---------------------------------------------------------------------------

/// One request as the fault server read it.
#[derive(Debug, Clone)]
struct Req {
    /// `Idempotency-Key`: for replays, the 202's id.
    key: Option<String>,
    /// `Sluice-Attempt`; `None` for a live (not replayed) request.
    attempt: Option<u32>,
    body: Bytes,
}

/// What the server does with a request.
#[derive(Debug, Clone)]
enum Action {
    /// A complete response with this status and extra headers.
    Reply(u16, Vec<(String, String)>),
    /// Keep the connection open and never answer.
    Hang,
    /// Half a status line, then a TCP reset.
    ResetInHead,
    /// A complete `200` head and part of the body, then a TCP reset.
    ResetInBody,
    /// Bytes that are not HTTP, then close.
    Garbage,
}

type Policy = Arc<dyn Fn(&Req) -> Action + Send + Sync>;

/// What the server did: each request with its action, and whether a
/// complete 2xx went out for it.
#[derive(Debug, Clone)]
struct Served {
    req: Req,
    action: &'static str,
    delivered: bool,
    at: Instant,
}

struct FaultServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Served>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    async fn start(policy: Policy) -> FaultServer {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), policy)
    }

    fn start_on(listener: TcpListener, policy: Policy) -> FaultServer {
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Served>>> = Arc::default();
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (policy, log) = (policy.clone(), log2.clone());
                // Owned by this task: aborting the server ends them all.
                conns.spawn(serve(stream, policy, log));
                while conns.try_join_next().is_some() {}
            }
        });
        FaultServer { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> Vec<Served> {
        self.log.lock().unwrap().clone()
    }
}

/// Reads one request: head up to the blank line, then `Content-Length`
/// bytes of body. `None` if the peer closes first or sends nonsense.
async fn read_request(stream: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut headers = HashMap::new();
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").map_or(Some(0), |v| v.parse().ok())?;
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Req {
        key: headers.get("idempotency-key").cloned(),
        attempt: headers.get("sluice-attempt").and_then(|v| v.parse().ok()),
        body: Bytes::copy_from_slice(&buf[head_end..head_end + len]),
    })
}

/// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut stream: TcpStream, policy: Policy, log: Arc<Mutex<Vec<Served>>>) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let action = policy(&req);
    let (name, delivers) = match &action {
        Action::Reply(status, _) => ("reply", (200..300).contains(status)),
        Action::Hang => ("hang", false),
        Action::ResetInHead => ("reset_in_head", false),
        // The backend said 200: it acted on the request.
        Action::ResetInBody => ("reset_in_body", true),
        Action::Garbage => ("garbage", false),
    };
    // Logged before answering, so the log is complete by the time sluice
    // has the answer (and may commit); a failed write takes it back.
    let entry = {
        let mut log = log.lock().unwrap();
        log.push(Served {
            req,
            action: name,
            delivered: delivers,
            at: Instant::now(),
        });
        log.len() - 1
    };
    let sent = match action {
        Action::Reply(status, headers) => {
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n");
            if !headers.iter().any(|(k, _)| k == "date") {
                head.push_str(&format!("date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())));
            }
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\nok");
            let sent = stream.write_all(head.as_bytes()).await.is_ok();
            let _ = stream.shutdown().await;
            sent
        }
        Action::Hang => {
            // Until sluice gives up on it (its timeout) and closes.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            true
        }
        Action::ResetInHead => {
            let _ = stream.write_all(b"HTTP/1.1 20").await;
            reset(stream);
            true
        }
        Action::ResetInBody => {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial...";
            let sent = stream.write_all(head).await.is_ok();
            // Let the head be read before the reset, as when a backend
            // dies while streaming its answer.
            tokio::time::sleep(Duration::from_millis(100)).await;
            reset(stream);
            sent
        }
        Action::Garbage => {
            let _ = stream
                .write_all(b"\x00\xff\x13garbage, not HTTP at all\r\n\r\n\xde\xad\xbe\xef")
                .await;
            let _ = stream.shutdown().await;
            true
        }
    };
    if !sent {
        log.lock().unwrap()[entry].delivered = false;
    }
}

/// Answers live requests (no `Sluice-Attempt`) `200`, and replays as
/// `replay` says given the request and how many replays of its key came
/// before it.
fn policy(replay: impl Fn(&Req, usize) -> Action + Send + Sync + 'static) -> Policy {
    let tries: Mutex<HashMap<String, usize>> = Mutex::default();
    Arc::new(move |req: &Req| {
        if req.attempt.is_none() {
            return Action::Reply(200, vec![]);
        }
        let key = req.key.clone().unwrap_or_default();
        let before = {
            let mut t = tries.lock().unwrap();
            let n = t.entry(key).or_default();
            *n += 1;
            *n - 1
        };
        replay(req, before)
    })
}

fn ok() -> Action {
    Action::Reply(200, vec![])
}

// ---------------------------------------------------------------------------
// sluice in front, the load, and the count.
// ---------------------------------------------------------------------------

/// What became of the acknowledged requests of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Answered 202.
    pub acknowledged: usize,
    /// Acknowledged and sent to the backend with a complete 2xx back.
    pub delivered: usize,
    /// Acknowledged and in the dead-letter queue.
    pub dead: usize,
    /// Acknowledged, neither delivered nor dead once replay has finished.
    pub lost: usize,
    /// Extra complete 2xx deliveries of one request (at-least-once's cost).
    pub duplicated: usize,
}

/// Prints `tally` for `case` and appends it to `$SLUICE_RELIABILITY_OUT`.
fn report(case: &str, tally: Tally, took: Duration) {
    let line = serde_json::json!({
        "suite": "fault_backend",
        "case": case,
        "acknowledged": tally.acknowledged,
        "delivered": tally.delivered,
        "dead": tally.dead,
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "seconds": (took.as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("RELIABILITY {line}");
    if let Ok(path) = std::env::var("SLUICE_RELIABILITY_OUT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("SLUICE_RELIABILITY_OUT is writable");
        writeln!(f, "{line}").unwrap();
    }
}

/// The sluice config of a case: two partitions, a route that spools all
/// but the first request, fast retries, a quick breaker.
fn config(upstream: &str, case: &Case) -> String {
    config_text(
        upstream,
        &format!(
            "timeout = \"{}\"\n\n[spool]\npartitions = 2\n\n\
             [drain]\nbackoff_initial = \"20ms\"\nbackoff_max = \"{}\"\nmax_attempts = {}\n\n\
             [breaker]\ncooldown = \"100ms\"\n\n\
             [[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/orders\" }}\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
            case.timeout, case.backoff_max, case.max_attempts
        ),
    )
}

/// Sends `n` POSTs (bodies `req-0`, `req-1`, ...); returns the ids of the
/// ones answered 202, with their bodies.
async fn load(c: &TestClient, sluice: &sluice::app::Running, n: usize) -> Vec<(String, String)> {
    let url = format!("http://{}/orders", sluice.data_addr);
    let mut acked = Vec::new();
    for i in 0..n {
        let body = format!("req-{i}");
        let r = send(c, Method::POST, &url, &[], body.clone()).await;
        match r.status.as_u16() {
            202 => acked.push((r.json()["id"].as_str().unwrap().to_string(), body)),
            200 => {}
            s => panic!("request {i}: {s} {:?}", r.body),
        }
    }
    acked
}

/// Waits (up to `deadline`) until every partition is committed, i.e.
/// each acknowledged request is delivered or dead; then counts.
async fn settle(
    c: &TestClient,
    sluice: &sluice::app::Running,
    server: &FaultServer,
    acked: &[(String, String)],
    deadline: Duration,
) -> (Tally, HashMap<String, String>) {
    eventually(deadline, "replay to finish (every partition committed)", || async {
        let s = admin_spool(c, sluice.admin_addr).await;
        s["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["committed_offset"] == p["next_offset"])
            .then_some(())
    })
    .await;
    // Dead letters by id, with their reason.
    let mut dead: HashMap<String, String> = HashMap::new();
    let mut from = 0;
    loop {
        let r = get(
            c,
            &format!("http://{}/admin/dlq?from={from}&limit=1000", sluice.admin_addr),
        )
        .await;
        let v = r.json();
        for d in v["dead_letters"].as_array().unwrap() {
            dead.insert(
                d["id"].as_str().unwrap_or("?").to_string(),
                d["reason"].as_str().unwrap().to_string(),
            );
        }
        match v["next_from"].as_u64() {
            Some(n) => from = n,
            None => break,
        }
    }
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for s in server.served() {
        if s.delivered && s.req.attempt.is_some() {
            *deliveries.entry(s.req.key.unwrap_or_default()).or_default() += 1;
        }
    }
    let mut t = Tally {
        acknowledged: acked.len(),
        delivered: 0,
        dead: 0,
        lost: 0,
        duplicated: 0,
    };
    for (id, _) in acked {
        let n = deliveries.get(id).copied().unwrap_or(0);
        let is_dead = dead.contains_key(id);
        assert!(!(n > 0 && is_dead), "{id} was delivered and dead-lettered");
        if n > 0 {
            t.delivered += 1;
            t.duplicated += n - 1;
        } else if is_dead {
            t.dead += 1;
        } else {
            t.lost += 1;
        }
    }
    (t, dead)
}

/// One case: its name (for the report), how many requests, and the
/// settings that differ between cases.
struct Case {
    name: &'static str,
    n: usize,
    /// `upstream.timeout`
    timeout: &'static str,
    /// `drain.max_attempts`
    max_attempts: u32,
    /// `drain.backoff_max`
    backoff_max: &'static str,
}

impl Case {
    fn new(name: &'static str) -> Case {
        Case {
            name,
            n: 12,
            timeout: "2s",
            max_attempts: 100,
            backoff_max: "200ms",
        }
    }
}

/// Starts sluice before `server`, loads it, then runs replay to the end
/// and counts. Returns the tally, the dead letters' reasons by id, and the
/// acknowledged ids with their bodies.
async fn run(case: &Case, server: &FaultServer) -> (Tally, HashMap<String, String>, Vec<(String, String)>) {
    let started = Instant::now();
    let sluice = start_sluice(&config(&server.url(), case)).await;
    let c = client();
    let acked = load(&c, &sluice, case.n).await;
    let (tally, dead) = settle(&c, &sluice, server, &acked, Duration::from_secs(10)).await;
    sluice.shutdown().await;
    report(case.name, tally, started.elapsed());
    (tally, dead, acked)
}

fn all_delivered_once(case: &Case, t: Tally) {
    assert_eq!(t.acknowledged, case.n - 1, "all but the first request spooled: {t:?}");
    assert_eq!(
        t,
        Tally {
            acknowledged: t.acknowledged,
            delivered: t.acknowledged,
            dead: 0,
            lost: 0,
            duplicated: 0
        },
        "{}: every acknowledged request delivered exactly once",
        case.name
    );
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

/// (a) Nothing listens on the backend's port while the requests arrive
/// (even the first, forwarded one is refused and so spooled); then the
/// backend comes up. Replay retries meanwhile; everything delivered once.
pub async fn down_then_up() -> Tally {
    let case = Case::new("down_then_up");
    let started = Instant::now();
    let port = closed_port();
    let sluice = start_sluice(&config(&format!("http://127.0.0.1:{port}"), &case)).await;
    let c = client();
    let acked = load(&c, &sluice, case.n).await;
    assert_eq!(acked.len(), case.n, "refused, so every request is spooled");
    // Replay has been failing against the closed port meanwhile. (Its
    // retries don't open the breaker: only first attempts and live
    // traffic count, so poison records can't keep live traffic out.)
    eventually(Duration::from_secs(5), "retries against the down backend", || async {
        let m = metrics_text(&c, sluice.admin_addr).await;
        let retried = metric_value(&m, "sluice_replay_total", &[("outcome", "retried")]).unwrap_or(0.0);
        (retried >= case.n as f64).then_some(())
    })
    .await;
    let server = FaultServer::start_on(
        TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port is still free"),
        policy(|_, _| ok()),
    );
    let (t, _) = settle(&c, &sluice, &server, &acked, Duration::from_secs(10)).await;
    sluice.shutdown().await;
    report(case.name, t, started.elapsed());
    assert_eq!(
        t,
        Tally {
            acknowledged: case.n,
            delivered: case.n,
            dead: 0,
            lost: 0,
            duplicated: 0
        }
    );
    t
}

/// (b) The first replay of each request hangs (accepted, never answered)
/// until `upstream.timeout`; the retry is answered. Delivered once each.
pub async fn hung_then_answers() -> Tally {
    let mut case = Case::new("hung_then_answers");
    case.n = 8;
    case.timeout = "300ms";
    let server = FaultServer::start(policy(|_, before| if before == 0 { Action::Hang } else { ok() })).await;
    let (t, _, _) = run(&case, &server).await;
    all_delivered_once(&case, t);
    assert_eq!(
        server.served().iter().filter(|s| s.action == "hang").count(),
        case.n - 1
    );
    t
}

/// (b') A backend that always hangs: each request times out
/// `max_attempts` times and is dead-lettered as `max_attempts`.
pub async fn hung_for_good() -> Tally {
    let mut case = Case::new("hung_for_good");
    case.n = 7;
    case.timeout = "200ms";
    case.max_attempts = 2;
    let server = FaultServer::start(policy(|_, _| Action::Hang)).await;
    let (t, dead, acked) = run(&case, &server).await;
    assert_eq!(
        t,
        Tally {
            acknowledged: case.n - 1,
            delivered: 0,
            dead: case.n - 1,
            lost: 0,
            duplicated: 0
        }
    );
    for (id, _) in &acked {
        assert_eq!(dead[id], "max_attempts");
    }
    t
}

/// (c) Resets: the first replay of each request is reset inside the
/// status line (a connection error: retried); for every third request the
/// second replay gets a complete `200` head and then a reset in the body.
/// A 200 head means the backend acted: delivered, not retried.
pub async fn reset_mid_response() -> Tally {
    let case = Case::new("reset_mid_response");
    let server = FaultServer::start(policy(|req, before| {
        let i: usize = std::str::from_utf8(&req.body).unwrap()["req-".len()..].parse().unwrap();
        match before {
            0 => Action::ResetInHead,
            1 if i.is_multiple_of(3) => Action::ResetInBody,
            _ => ok(),
        }
    }))
    .await;
    let (t, _, acked) = run(&case, &server).await;
    all_delivered_once(&case, t);
    let served = server.served();
    let cut_bodies = served.iter().filter(|s| s.action == "reset_in_body").count();
    assert_eq!(
        cut_bodies,
        acked
            .iter()
            .filter(|(_, b)| b["req-".len()..].parse::<usize>().unwrap() % 3 == 0)
            .count()
    );
    assert_eq!(
        served
            .iter()
            .filter(|s| s.action == "reply" && s.req.attempt.is_some())
            .count(),
        acked.len() - cut_bodies,
        "a request whose 200 head arrived is not sent again"
    );
    t
}

/// (d) A storm of 500/502/503/504 (the first 40 replays), then healthy:
/// all delivered once — except `req-5`, which gets 501 (not in
/// `retry_on`) and is dead-lettered as `rejected`.
pub async fn storm_5xx() -> Tally {
    let case = Case::new("5xx_storm");
    let seen = Mutex::new(0usize);
    let server = FaultServer::start(policy(move |req, _| {
        let n = {
            let mut s = seen.lock().unwrap();
            *s += 1;
            *s
        };
        if req.body == "req-5" {
            return Action::Reply(501, vec![]);
        }
        if n <= 40 {
            Action::Reply([500, 502, 503, 504][n % 4], vec![])
        } else {
            ok()
        }
    }))
    .await;
    let (t, dead, acked) = run(&case, &server).await;
    assert_eq!(
        t,
        Tally {
            acknowledged: case.n - 1,
            delivered: case.n - 2,
            dead: 1,
            lost: 0,
            duplicated: 0
        }
    );
    let poisoned = &acked.iter().find(|(_, b)| b == "req-5").unwrap().0;
    assert_eq!(dead[poisoned], "rejected");
    t
}

/// Replays of each key, in order, with when they arrived.
fn attempts_by_key(server: &FaultServer) -> HashMap<String, Vec<Instant>> {
    let mut by: HashMap<String, Vec<Instant>> = HashMap::new();
    for s in server.served() {
        if s.req.attempt.is_some() {
            by.entry(s.req.key.clone().unwrap_or_default()).or_default().push(s.at);
        }
    }
    by
}

/// (e) 429 with `Retry-After` on each request's first replay, then 200.
/// `retry_after` builds the header from the response's Date. Each request
/// is delivered once, its retry no sooner than asked (up to backoff_max).
async fn too_many_requests(name: &'static str, retry_after: fn(SystemTime) -> String) -> Tally {
    let mut case = Case::new(name);
    case.n = 5;
    case.backoff_max = "3s";
    let server = FaultServer::start(policy(move |_, before| {
        if before == 0 {
            // Whole seconds, as the Date header has them.
            let now = SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs(),
                );
            Action::Reply(
                429,
                vec![
                    ("date".into(), httpdate::fmt_http_date(now)),
                    ("retry-after".into(), retry_after(now)),
                ],
            )
        } else {
            ok()
        }
    }))
    .await;
    let (t, _, _) = run(&case, &server).await;
    all_delivered_once(&case, t);
    let mut seen = HashSet::new();
    for (key, at) in attempts_by_key(&server) {
        assert_eq!(at.len(), 2, "{key}: one 429, one 200");
        let gap = at[1] - at[0];
        assert!(
            gap >= Duration::from_millis(900),
            "{key} retried after {gap:?}, before Retry-After"
        );
        seen.insert(key);
    }
    assert_eq!(seen.len(), case.n - 1);
    t
}

/// (e) with delta-seconds: `Retry-After: 1`.
pub async fn retry_after_seconds() -> Tally {
    too_many_requests("429_retry_after_seconds", |_| "1".into()).await
}

/// (e) with an HTTP-date one second after the response's Date.
pub async fn retry_after_http_date() -> Tally {
    too_many_requests("429_retry_after_http_date", |now| {
        httpdate::fmt_http_date(now + Duration::from_secs(1))
    })
    .await
}

/// (f) Garbage instead of an HTTP response on each request's first
/// replay (a protocol error: retried), then a proper answer.
pub async fn garbage_response() -> Tally {
    let case = Case::new("garbage_response");
    let server = FaultServer::start(policy(|_, before| if before == 0 { Action::Garbage } else { ok() })).await;
    let (t, _, _) = run(&case, &server).await;
    all_delivered_once(&case, t);
    assert_eq!(
        server.served().iter().filter(|s| s.action == "garbage").count(),
        case.n - 1
    );
    t
}

/// Every case by name, in the order of the list.
pub const CASES: &[&str] = &[
    "down_then_up",
    "hung_then_answers",
    "hung_for_good",
    "reset_mid_response",
    "5xx_storm",
    "429_retry_after_seconds",
    "429_retry_after_http_date",
    "garbage_response",
];

/// Runs the case named `name` (one of [`CASES`]): panics if its policy
/// does not hold, else returns its tally.
pub async fn run_case(name: &str) -> Tally {
    match name {
        "down_then_up" => down_then_up().await,
        "hung_then_answers" => hung_then_answers().await,
        "hung_for_good" => hung_for_good().await,
        "reset_mid_response" => reset_mid_response().await,
        "5xx_storm" => storm_5xx().await,
        "429_retry_after_seconds" => retry_after_seconds().await,
        "429_retry_after_http_date" => retry_after_http_date().await,
        "garbage_response" => garbage_response().await,
        other => panic!("no fault_backend case {other:?}"),
    }
}
