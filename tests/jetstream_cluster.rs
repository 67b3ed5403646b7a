//! The JetStream spool on a real three-node NATS cluster (R=3) with real
//! sluice processes sharing one backlog: a replica killed with SIGKILL
//! mid-drain leaves its backlog to the other, and a NATS node killed with
//! SIGKILL mid-burst loses no request that was answered 202. Per-partition
//! order holds throughout; duplicates come only from the kills.

mod support;

use http::Method;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const USERS: usize = 6;

/// Waits until the cluster's JetStream has a meta leader and takes R=3
/// streams (a fresh cluster needs a few seconds to elect one).
async fn wait_for_quorum(servers: &[String]) {
    let addrs: Vec<async_nats::ServerAddr> = servers.iter().map(|s| s.parse().unwrap()).collect();
    let client = async_nats::connect(addrs).await.expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);
    eventually(Duration::from_secs(30), "JetStream cluster takes R=3 streams", || {
        let js = js.clone();
        async move {
            let probe = async_nats::jetstream::stream::Config {
                name: "quorum-probe".into(),
                subjects: vec!["quorum-probe".into()],
                num_replicas: 3,
                max_bytes: 1 << 20,
                ..Default::default()
            };
            js.get_or_create_stream(probe).await.ok().map(|_| ())
        }
    })
    .await;
}

fn config(backend: &str, servers: &[String], name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let text = config_text(
        backend,
        "capacity = \"80/s\"\ncapacity_burst = 5\n\n\
         [spool]\npartitions = 3\n\n\
         [drain]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n\n\
         [[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/orders\" }\nrate = \"1/s\"\nburst = 1\n\
         on_limit = \"spool\"\npartition_key = \"header:x-user\"\n",
    );
    write_file(
        dir,
        &format!("{}.toml", rand::random::<u32>()),
        &with_jetstream_named(&text, servers, 3, name),
    )
}

/// What one client sent and what sluice answered.
struct Sent {
    /// Bodies answered 202 (acknowledged: must be delivered).
    accepted: Vec<String>,
    /// Bodies answered 200 (forwarded live).
    forwarded: Vec<String>,
    /// Answers that were neither (503 while the store was unavailable).
    refused: usize,
}

/// `per_user` requests from each of `USERS` users, each user's in order and
/// one at a time, spread over `replicas`; `on_progress` sees the count of
/// answered requests.
async fn burst(
    replicas: Vec<std::net::SocketAddr>,
    numbers: std::ops::Range<usize>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
) -> Sent {
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for u in 0..USERS {
        let (c, replicas, answered, numbers) = (c.clone(), replicas.clone(), answered.clone(), numbers.clone());
        tasks.spawn(async move {
            let mut sent = Sent {
                accepted: Vec::new(),
                forwarded: Vec::new(),
                refused: 0,
            };
            for n in numbers.clone() {
                let addr = replicas[(u + n) % replicas.len()];
                let body = format!("u{u}-{n}");
                let user = format!("u{u}");
                let n_text = n.to_string();
                let r = try_send(
                    &c,
                    Method::POST,
                    &format!("http://{addr}/orders"),
                    &[("x-user", &user), ("x-n", &n_text)],
                    body.clone(),
                )
                .await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match r {
                    Ok(r) if r.status == 202 => sent.accepted.push(body),
                    Ok(r) if r.status == 200 => sent.forwarded.push(body),
                    Ok(r) => {
                        assert_eq!(r.status, 503, "{body}: {:?}", r.body);
                        sent.refused += 1;
                    }
                    // A replica killed mid-request: no answer, no promise.
                    Err(_) => sent.refused += 1,
                }
            }
            sent
        });
    }
    let mut all = Sent {
        accepted: Vec::new(),
        forwarded: Vec::new(),
        refused: 0,
    };
    while let Some(s) = tasks.join_next().await {
        let s = s.unwrap();
        all.accepted.extend(s.accepted);
        all.forwarded.extend(s.forwarded);
        all.refused += s.refused;
    }
    all
}

/// Replays the backend saw, in arrival order: (user, n, body).
fn replays(backend: &Backend) -> Vec<(String, usize, String)> {
    backend
        .replays()
        .iter()
        .map(|s| {
            (
                seen_header(s, "x-user").unwrap().to_string(),
                seen_header(s, "x-n").unwrap().parse().unwrap(),
                String::from_utf8_lossy(&s.body).to_string(),
            )
        })
        .collect()
}

/// Every accepted body delivered; each user's replays, first deliveries
/// only, in the order sent; and how many deliveries were duplicates.
async fn check_delivery(backend: &Backend, sent: &Sent, deadline: Duration) -> usize {
    let want: HashSet<&String> = sent.accepted.iter().collect();
    eventually(deadline, "every 202 delivered", || async {
        let seen: HashSet<String> = replays(backend).into_iter().map(|r| r.2).collect();
        want.iter().all(|b| seen.contains(*b)).then_some(())
    })
    .await;
    let seen = replays(backend);
    let mut first: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (user, n, body) in &seen {
        let c = counts.entry(body.clone()).or_default();
        *c += 1;
        if *c == 1 {
            first.entry(user.clone()).or_default().push(*n);
        }
    }
    for (user, ns) in &first {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{user}'s replays out of order: {ns:?}"
        );
    }
    counts.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_drain_leaves_its_backlog_to_the_other() {
    let nodes = NatsServer::cluster3();
    let servers: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    wait_for_quorum(&servers).await;
    let backend = slow_backend(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&backend.url(), &servers, "killreplica", dir.path());
    let mut a = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);
    let b = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);

    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = burst(vec![a.data_addr, b.data_addr], 0..40, answered).await;
    assert!(
        sent.accepted.len() >= 200,
        "most of the burst is spooled: {}",
        sent.accepted.len()
    );
    assert_eq!(sent.refused, 0, "both replicas and NATS were up");
    // Mid-drain: a third of the backlog delivered.
    let third = sent.accepted.len() / 3;
    eventually(Duration::from_secs(30), "a third delivered", || async {
        (replays(&backend).len() >= third).then_some(())
    })
    .await;
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    let delivered_at_kill = replays(&backend).len();
    assert!(
        delivered_at_kill < sent.accepted.len(),
        "killed mid-drain ({delivered_at_kill} of {})",
        sent.accepted.len()
    );

    // B drains the rest, A's messages in flight included (after ack_wait).
    let duplicates = check_delivery(&backend, &sent, Duration::from_secs(60)).await;
    // One record per partition is in flight fleet-wide: at most three
    // can have reached the backend without their ack.
    assert!(duplicates <= 3, "{duplicates} duplicates from one kill");
    eprintln!(
        "replica kill: {} accepted, {} forwarded, {delivered_at_kill} delivered before the kill, {duplicates} duplicates",
        sent.accepted.len(),
        sent.forwarded.len()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_burst_loses_no_accepted_request() {
    let mut nodes = NatsServer::cluster3();
    let servers: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    wait_for_quorum(&servers).await;
    let backend = slow_backend(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(&backend.url(), &servers, "killnode", dir.path());
    let a = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);
    let b = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);

    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let replicas = vec![a.data_addr, b.data_addr];
    let load = tokio::spawn(burst(replicas.clone(), 0..50, answered.clone()));
    eventually(Duration::from_secs(30), "a third of the burst answered", || async {
        (answered.load(std::sync::atomic::Ordering::Relaxed) >= USERS * 50 / 3).then_some(())
    })
    .await;
    nodes[0].kill();
    let killed_at = std::time::Instant::now();
    let at_kill = answered.load(std::sync::atomic::Ordering::Relaxed);
    let mut sent = load.await.unwrap();
    assert!(
        at_kill < USERS * 50,
        "the node died mid-burst ({at_kill} of {} answered)",
        USERS * 50
    );
    // Two nodes of three keep taking records, once the streams whose
    // leader died have elected another: the clients go on (each user's
    // numbers still rising) until some are accepted again.
    let mut next = 50;
    let after = eventually(Duration::from_secs(60), "records accepted after the kill", || {
        let (replicas, answered) = (replicas.clone(), answered.clone());
        let from = next;
        next += 5;
        async move {
            let more = burst(replicas, from..from + 5, answered).await;
            Some(more).filter(|m| !m.accepted.is_empty())
        }
    })
    .await;
    let resumed_after = killed_at.elapsed();
    sent.accepted.extend(after.accepted);
    sent.forwarded.extend(after.forwarded);
    sent.refused += after.refused;

    let duplicates = check_delivery(&backend, &sent, Duration::from_secs(60)).await;
    assert!(duplicates <= 6, "{duplicates} duplicates from one node kill");
    eprintln!(
        "node kill: {} accepted, {} forwarded, {} refused (503 while the cluster moved), accepting again {resumed_after:?} after the kill, {duplicates} duplicates",
        sent.accepted.len(),
        sent.forwarded.len(),
        sent.refused
    );
}
