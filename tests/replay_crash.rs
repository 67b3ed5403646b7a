//! Crash safety of the spool, with the real binary: SIGKILL during a burst
//! and again during replay, restarting on the same spool each time. Every
//! request that got a 202 must reach the backend at least once, and each
//! partition's records must first reach it in sequence order.

mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// What the clients of one burst learned, from completed responses only.
#[derive(Default)]
struct BurstResult {
    /// Request number → the id its 202 gave.
    accepted: HashMap<usize, String>,
    /// Requests answered 200 (forwarded live).
    forwarded: HashSet<usize>,
    /// Requests whose response never completed (sluice was killed).
    failed: usize,
}

/// POSTs requests `reqs` (body `req-{i}`, header `x-req: i`) with at most
/// `concurrency` in flight. With `kill_after = Some((k, pid))`, the k-th
/// completed response triggers SIGKILL of `pid` while the rest are in flight.
async fn burst(
    url: &str,
    reqs: std::ops::Range<usize>,
    concurrency: usize,
    kill_after: Option<(usize, u32)>,
) -> BurstResult {
    let c = client();
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in reqs {
        let (c, url, limit, completed) = (c.clone(), url.to_string(), limit.clone(), completed.clone());
        tasks.spawn(async move {
            let _slot = limit.acquire_owned().await.unwrap();
            let r = try_send(&c, Method::POST, &url, &[("x-req", &i.to_string())], format!("req-{i}")).await;
            if r.is_ok() {
                let n = completed.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some((k, pid)) = kill_after {
                    if n == k {
                        let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        assert_eq!(rc, 0, "SIGKILL sluice");
                    }
                }
            }
            (i, r)
        });
    }
    let mut out = BurstResult::default();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.unwrap();
        match r {
            Ok(r) if r.status == 202 => {
                let id = r.json()["id"].as_str().unwrap().to_string();
                assert_eq!(r.header("sluice-id"), id);
                out.accepted.insert(i, id);
            }
            Ok(r) if r.status == 200 => {
                out.forwarded.insert(i);
            }
            Ok(r) => panic!("request {i} got {}: {:?}", r.status, r.body),
            Err(_) => out.failed += 1,
        }
    }
    out
}

fn req_of(s: &Seen) -> usize {
    seen_header(s, "x-req").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_burst_and_replay_loses_no_accepted_request() {
    let backend = Backend::start(Arc::new(|_s: Seen| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A low route rate, so nearly all of the burst is spooled, and a modest
    // capacity, so replay takes seconds and can be interrupted.
    let cfg = write_file(
        dir.path(),
        "sluice.toml",
        &format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
url = "{}"
capacity = "25/s"
capacity_burst = 4

[spool]
dir = "{}"
partitions = 4
fsync = "always"

[drain]
backoff_initial = "50ms"
backoff_max = "200ms"

[[route]]
name = "orders"
match = {{ path_prefix = "/orders" }}
rate = "5/s"
burst = 2
on_limit = "spool"
"#,
            backend.url(),
            dir.path().join("spool").display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let mut accepted: HashMap<usize, String> = HashMap::new();
    let mut forwarded: HashSet<usize> = HashSet::new();

    // 1. SIGKILL in the middle of a burst: at its 80th completed response,
    //    with up to 7 more requests in flight and 70 not yet sent.
    let mut p1 = SluiceProcess::spawn(&["run", "-c", cfg]);
    let url = format!("http://{}/orders", p1.data_addr);
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        burst(&url, 0..150, 8, Some((80, p1.child.id()))),
    )
    .await
    .expect("the first burst finishes");
    let st = p1.wait_exit(Duration::from_secs(5));
    assert!(!st.success(), "sluice was killed: {st:?}");
    assert!(first.failed > 0, "the kill interrupted the burst");
    assert!(first.accepted.len() >= 60, "most completed requests were spooled");
    accepted.extend(first.accepted);
    forwarded.extend(first.forwarded);

    // 2. Restart on the same spool, add a second burst, and SIGKILL again
    //    while replay is under way.
    let mut p2 = SluiceProcess::spawn(&["run", "-c", cfg]);
    let seen_before = backend.count();
    let url = format!("http://{}/orders", p2.data_addr);
    let second = tokio::time::timeout(Duration::from_secs(10), burst(&url, 1000..1030, 4, None))
        .await
        .expect("the second burst finishes");
    assert_eq!(second.failed, 0);
    accepted.extend(second.accepted);
    forwarded.extend(second.forwarded);
    eventually(
        Duration::from_secs(10),
        "replay under way after the restart",
        || async {
            let replays = backend.seen.lock().unwrap()[seen_before..]
                .iter()
                .filter(|s| s.headers.contains_key("sluice-id"))
                .count();
            (replays >= 10).then_some(())
        },
    )
    .await;
    p2.signal(libc::SIGKILL);
    p2.wait_exit(Duration::from_secs(5));
    let delivered: HashSet<usize> = backend.seen.lock().unwrap().iter().map(req_of).collect();
    let pending = accepted.keys().filter(|i| !delivered.contains(i)).count();
    assert!(
        pending > 0,
        "the second kill came during replay (nothing left to replay)"
    );

    // 3. Restart again: everything accepted is delivered.
    let p3 = SluiceProcess::spawn(&["run", "-c", cfg]);
    eventually(
        Duration::from_secs(15),
        "every 202'd request at the backend",
        || async {
            let delivered: HashSet<usize> = backend.seen.lock().unwrap().iter().map(req_of).collect();
            accepted.keys().all(|i| delivered.contains(i)).then_some(())
        },
    )
    .await;
    let seen = backend.seen.lock().unwrap().clone();
    for i in &forwarded {
        assert!(
            seen.iter().any(|s| req_of(s) == *i),
            "forwarded request {i} reached the backend"
        );
    }

    // Per partition, the first delivery of each sequence comes in
    // increasing order; a sequence always names the same request, and a
    // 202'd request is replayed under the id its 202 gave.
    let mut first_seen: BTreeMap<u32, (u64, HashMap<u64, usize>)> = BTreeMap::new();
    let mut redelivered = 0;
    for s in seen.iter().filter(|s| s.headers.contains_key("sluice-id")) {
        let i = req_of(s);
        let p: u32 = seen_header(s, "sluice-partition").unwrap().parse().unwrap();
        let q: u64 = seen_header(s, "sluice-sequence").unwrap().parse().unwrap();
        assert_eq!(s.body, format!("req-{i}"));
        if let Some(id) = accepted.get(&i) {
            assert_eq!(seen_header(s, "sluice-id"), Some(id.as_str()), "request {i}");
        }
        let (last, by_seq) = first_seen.entry(p).or_insert((0, HashMap::new()));
        match by_seq.get(&q) {
            Some(&j) => {
                assert_eq!(j, i, "partition {p} sequence {q} named two requests");
                redelivered += 1;
            }
            None => {
                assert!(
                    by_seq.is_empty() || q > *last,
                    "partition {p}: sequence {q} first delivered after {last}"
                );
                *last = q;
                by_seq.insert(q, i);
            }
        }
    }
    eprintln!(
        "crash: {} accepted, {} forwarded, {} interrupted; {} pending at the 2nd kill; {} redeliveries",
        accepted.len(),
        forwarded.len(),
        first.failed,
        pending,
        redelivered
    );
    drop(p3);
}
