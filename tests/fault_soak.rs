//! kill -9 soak: cycles of load → SIGKILL → restart on the same spool,
//! then a final drain and a check of everything the clients and the
//! backend saw.
//!
//! Each cycle starts the real binary, POSTs requests with unique names in
//! their bodies to a `spool` route whose bucket is one request a second
//! (so nearly all are spooled and answered 202) and ends with SIGKILL:
//! - at a named crash point (`SLUICE_CRASH_AT=phase:n`: append,
//!   group_commit, roll, retention, checkpoint, dlq_move), so every phase
//!   is certainly hit — the test asserts that the process died of SIGKILL
//!   and printed that phase's crash line;
//! - or at a random moment (the test sends SIGKILL).
//!
//! The backend answers after 2 ms; it rejects every request named `R-…`
//! with 422 (dead letters by design) and answers 503 to the first attempt
//! of each `F-…` one (retries). Segments are 16 KiB, so rolls and
//! retention deletes happen every few dozen records; the fsync mode
//! rotates through always, interval and never between restarts.
//!
//! After each kill the test reads the spool's persisted committed offsets
//! (`sluice::spool::inspect`, as the next start will) and notes which
//! records the backend had already settled (2xx, or the designed 422) at
//! or above them: the records at risk of redelivery from that kill. At the
//! end it checks:
//! - every 202'd request was delivered (200 under the id its 202 gave), or
//!   is an `R-` request in the dead-letter queue with status 422;
//! - no request refused by sluice (its own JSON error) was delivered, and
//!   the DLQ holds nothing but the designed rejections;
//! - per partition, first deliveries come in increasing sequence, and a
//!   sequence always names the same request;
//! - every duplicate settlement happened in a later process than the one
//!   before it, of a record at risk at a kill in between; so duplicates
//!   are at most Σ|at risk| ≤ kills × `AT_RISK_BOUND`.
//!
//! `SLUICE_SOAK_CYCLES=N` runs N cycles instead of 12 (README: Tests);
//! `SLUICE_SOAK_SEED` repeats a run's choices.

mod fault_support;
mod reliability;
mod support;

use fault_support::*;
use rand::{Rng, SeedableRng};
use reliability::{Bound, Order, Outcome};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PARTITIONS: u32 = 4;
/// Replay rate cap (upstream.capacity) and its burst.
const CAPACITY_PER_S: u64 = 150;
const CAPACITY_BURST: u64 = 5;
/// At most this many records settled by the backend and not yet covered by
/// the persisted committed offsets when sluice dies: one in flight per
/// partition (ordering = "partition"), plus what replay settles in the
/// spool's commit interval (100 ms) and the time a COMMITS write takes,
/// given half a second on a loaded 2-core machine:
/// 4 + 5 + 150 × 0.6 = 99. Measured: see the raw line of each row.
const AT_RISK_BOUND: u64 = PARTITIONS as u64 + CAPACITY_BURST + CAPACITY_PER_S * 6 / 10;
/// Request bodies: a 16 KiB segment holds a few dozen records.
const BODY_LEN: usize = 300;
/// Requests sent per cycle, and how many at once.
const PER_CYCLE: usize = 300;
const CONCURRENCY: usize = 8;
/// Cycles in the CI run: each crash point once, a random kill after each.
const CI_CYCLES: usize = 12;

/// Crash phases (src/crash.rs), the table row of each, and the range of
/// `n` to die on (passes of that point in one process life).
const POINTS: &[(&str, &str, std::ops::Range<u64>)] = &[
    ("append", "kill9-append", 10..60),
    ("group_commit", "kill9-group-commit", 10..60),
    ("roll", "kill9-roll", 1..4),
    ("retention", "kill9-retention", 1..4),
    ("checkpoint", "kill9-checkpoint", 2..8),
    ("dlq_move", "kill9-dlq-move", 1..3),
];
const RANDOM_ROW: &str = "kill9-random";

#[derive(Debug, Clone)]
enum Kill {
    Point {
        phase: &'static str,
        n: u64,
    },
    /// SIGKILL this long after sluice reported listening.
    Random(Duration),
}

impl Kill {
    fn row(&self) -> &'static str {
        match self {
            Kill::Point { phase, .. } => POINTS.iter().find(|p| p.0 == *phase).unwrap().1,
            Kill::Random(_) => RANDOM_ROW,
        }
    }
}

/// One process life, ended by a kill (all but the last).
struct Life {
    kill: Option<Kill>,
    /// Wall clock at spawn (dead letters carry wall-clock times).
    wall_start_ms: u64,
    /// Backend sightings before this life: `seen[first..end]` are its own.
    first: usize,
    end: usize,
    load: LoadLog,
    /// Names the backend had settled, at or above the persisted committed
    /// offset after this life's kill.
    at_risk: HashSet<String>,
    /// Persisted committed offsets after this life's kill.
    committed: Vec<u64>,
    /// Names acknowledged in this life or before and not safely finished
    /// (settled below the persisted committed offset) at its kill.
    exposed: HashSet<String>,
}

fn name_kind(name: &str) -> char {
    name.as_bytes()[0] as char
}

/// The backend's designed answer: `R-` 422, first attempt of `F-` 503.
fn policy() -> Policy {
    Arc::new(|s: &Sighting| {
        let status = match name_kind(&s.body) {
            'R' => 422,
            'F' if s.attempt == Some(1) => 503,
            _ => 200,
        };
        (status, Duration::from_millis(2))
    })
}

/// Whether a sighting is the backend's final answer to a request.
fn settles(s: &Sighting) -> bool {
    s.status == 200 || (s.status == 422 && name_kind(&s.body) == 'R')
}

fn names(cycle: usize) -> Vec<String> {
    (0..PER_CYCLE)
        .map(|i| {
            let kind = if i % 10 == 3 {
                'R'
            } else if i % 7 == 5 {
                'F'
            } else {
                'N'
            };
            format!("{kind}-c{cycle}-r{i}")
        })
        .collect()
}

fn config(dir: &Path, backend: &str, fsync: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "5s"

[upstream]
url = "{backend}"
capacity = "{CAPACITY_PER_S}/s"
capacity_burst = {CAPACITY_BURST}
max_concurrency = 16

[spool]
dir = "{spool}"
partitions = {PARTITIONS}
segment_bytes = "16KiB"
max_record = "4KiB"
fsync = "{fsync}"
fsync_interval = "5ms"

[drain]
backoff_initial = "20ms"
backoff_max = "100ms"

[breaker]
failures = 0

[[route]]
name = "soak"
match = {{ path_prefix = "/soak" }}
rate = "1/s"
burst = 1
on_limit = "spool"
"#,
        spool = dir.join("spool").display()
    )
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn plan(cycles: usize, rng: &mut impl Rng) -> Vec<Kill> {
    (0..cycles)
        .map(|i| {
            if i % 2 == 0 {
                let (phase, _, range) = &POINTS[(i / 2) % POINTS.len()];
                Kill::Point {
                    phase,
                    n: rng.gen_range(range.clone()),
                }
            } else {
                Kill::Random(Duration::from_millis(rng.gen_range(20..1500)))
            }
        })
        .collect()
}

/// A dead letter as `/admin/dlq` lists it.
struct DeadLetter {
    id: Option<String>,
    reason: String,
    last_status: Option<u64>,
    dead_at_ms: u64,
    partition: u32,
    offset: u64,
}

/// All dead letters of the running sluice.
async fn dead_letters(c: &support::TestClient, admin: std::net::SocketAddr) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let r = support::get(c, &format!("http://{admin}/admin/dlq?from={from}&limit=1000")).await;
        assert_eq!(r.status, 200, "/admin/dlq: {:?}", r.body);
        let v = r.json();
        for d in v["dead_letters"].as_array().unwrap() {
            out.push(DeadLetter {
                id: d["id"].as_str().map(str::to_string),
                reason: d["reason"].as_str().unwrap().to_string(),
                last_status: d["last_status"].as_u64(),
                dead_at_ms: d["dead_at_ms"].as_u64().unwrap(),
                partition: d["partition"].as_u64().unwrap() as u32,
                offset: d["offset"].as_u64().unwrap(),
            });
        }
        match v["next_from"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_soak_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("SLUICE_SOAK_CYCLES")
        .ok()
        .map(|v| v.parse().expect("SLUICE_SOAK_CYCLES is a number"))
        .unwrap_or(CI_CYCLES);
    let seed: u64 = std::env::var("SLUICE_SOAK_SEED")
        .ok()
        .map(|v| v.parse().expect("SLUICE_SOAK_SEED is a number"))
        .unwrap_or_else(rand::random);
    eprintln!("soak: {cycles} cycles, SLUICE_SOAK_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let backend = RecordingBackend::start(policy()).await;
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let cfg_path = tmp.path().join("sluice.toml");
    let spawn = |fsync: &str, crash: Option<String>| {
        std::fs::write(&cfg_path, config(tmp.path(), &backend.url(), fsync)).unwrap();
        let mut cmd = Command::new(sluice_bin());
        cmd.arg("run").arg("-c").arg(&cfg_path).args(["--log-format", "json"]);
        cmd.env_remove("SLUICE_CRASH_AT");
        if let Some(c) = crash {
            cmd.env("SLUICE_CRASH_AT", c);
        }
        Proc::spawn(cmd)
    };

    let mut lives: Vec<Life> = Vec::new();
    for (cycle, kill) in plan(cycles, &mut rng).into_iter().enumerate() {
        let fsync = ["always", "interval", "never"][cycle % 3];
        let crash = match &kill {
            Kill::Point { phase, n } => Some(format!("{phase}:{n}")),
            Kill::Random(_) => None,
        };
        let first = backend.snapshot().len();
        let wall_start_ms = now_ms();
        let mut p = spawn(fsync, crash);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(post_all(
            format!("http://{}/soak", p.data_addr),
            names(cycle),
            BODY_LEN,
            CONCURRENCY,
            stop.clone(),
        ));
        let st = match &kill {
            Kill::Point { phase, n } => {
                // The process kills itself when it passes the point; load and
                // replay run until then.
                let st = p.wait_exit(Duration::from_secs(45)).await;
                let line = format!("crash point {phase}:{n}: SIGKILL");
                assert!(
                    p.stderr_has(&line),
                    "cycle {cycle}: no {line:?} on stderr; the last lines: {:#?}",
                    p.stderr_tail(10)
                );
                st
            }
            Kill::Random(after) => {
                // The kill moment is the thing chosen at random, not a wait.
                tokio::time::sleep(*after).await;
                assert!(p.try_exit().is_none(), "cycle {cycle}: sluice died before the kill");
                p.sigkill();
                p.wait_exit(Duration::from_secs(10)).await
            }
        };
        assert!(
            killed_by_sigkill(&st),
            "cycle {cycle} ({kill:?}): sluice ended by {st:?}, not SIGKILL; stderr: {:#?}",
            p.stderr_tail(10)
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let load = load.await.unwrap();
        backend.wait_idle(Duration::from_secs(10)).await;
        drop(p);

        // What the next start will resume from.
        let status = sluice::spool::inspect(&spool_dir).expect("the killed spool can be inspected");
        let committed: Vec<u64> = status.partitions.iter().map(|p| p.committed_offset).collect();
        let seen = backend.snapshot();
        let mut at_risk = HashSet::new();
        let mut safe = HashSet::new();
        for s in seen.iter().filter(|s| s.replayed() && settles(s)) {
            let (p, q) = (s.partition.unwrap(), s.sequence.unwrap());
            if q >= committed[p as usize] {
                at_risk.insert(s.body.clone());
            } else {
                safe.insert(s.body.clone());
            }
        }
        let acked_so_far: HashSet<String> = lives
            .iter()
            .map(|l| &l.load)
            .chain([&load])
            .flat_map(|l| l.accepted().map(|(n, _)| n.to_string()))
            .collect();
        let exposed = acked_so_far
            .into_iter()
            .filter(|n| !safe.contains(n) || at_risk.contains(n))
            .collect();
        eprintln!(
            "cycle {cycle:>3} {kill:?} fsync={fsync}: {} sent, {} accepted, {} cut off; committed {committed:?}; {} at risk",
            load.answers.len(),
            load.accepted().count(),
            load.count(|a| *a == Answer::Transport),
            at_risk.len()
        );
        lives.push(Life {
            kill: Some(kill),
            wall_start_ms,
            first,
            end: seen.len(),
            load,
            at_risk,
            exposed,
            committed,
        });
    }

    // The final life: no kill, no new load; replay drains everything.
    let first = backend.snapshot().len();
    let wall_start_ms = now_ms();
    let mut p = spawn("always", None);
    let c = support::client();
    let accepted: HashMap<String, String> = lives
        .iter()
        .flat_map(|l| l.load.accepted().map(|(n, id)| (n.to_string(), id.to_string())))
        .collect();
    // Polls until the backlog is empty; if it never is, the accounting
    // below says what was stranded.
    let drain_deadline = Instant::now() + Duration::from_secs(60 + cycles as u64);
    let stranded = loop {
        let st = support::admin_spool(&c, p.admin_addr).await;
        let backlog = st["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["backlog_records"].as_u64().unwrap())
            .sum::<u64>();
        if backlog == 0 || Instant::now() > drain_deadline {
            break backlog;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dlq = dead_letters(&c, p.admin_addr).await;
    p.child.kill().unwrap();
    p.wait_exit(Duration::from_secs(10)).await;
    backend.wait_idle(Duration::from_secs(10)).await;
    let seen = backend.snapshot();
    lives.push(Life {
        kill: None,
        wall_start_ms,
        first,
        end: seen.len(),
        load: LoadLog::default(),
        at_risk: HashSet::new(),
        exposed: HashSet::new(),
        committed: Vec::new(),
    });
    let life_of_index = |i: usize| {
        lives
            .iter()
            .position(|l| i >= l.first && i < l.end)
            .expect("sighting in a life")
    };
    let life_of_wall = |ms: u64| lives.iter().rposition(|l| l.wall_start_ms <= ms).unwrap_or(0);
    // Anomalies found in life L are put on the row of the kill before it
    // (the crash it recovered from); those of the first life on its own.
    let blame = |life: usize| lives[life.saturating_sub(1)].kill.as_ref().unwrap().row();

    let mut unexpected: HashMap<&str, u64> = HashMap::new();
    let mut notes: Vec<String> = Vec::new();
    if stranded > 0 {
        notes.push(format!(
            "{stranded} records still in the backlog at the end of the final drain"
        ));
    }

    // Dead letters: only the designed 422s, and each at most once per kill.
    let mut dead_ids: HashMap<String, usize> = HashMap::new();
    for d in &dlq {
        if d.last_status == Some(422) && d.reason != "corrupt" {
            *dead_ids.entry(d.id.clone().unwrap_or_default()).or_default() += 1;
        } else {
            let life = life_of_wall(d.dead_at_ms);
            *unexpected.entry(blame(life)).or_default() += 1;
            // Was that record delivered before, and in which lives?
            let settled_in: Vec<usize> = seen
                .iter()
                .enumerate()
                .filter(|(_, s)| s.partition == Some(d.partition) && s.sequence == Some(d.offset) && settles(s))
                .map(|(i, _)| life_of_index(i))
                .collect();
            let committed: Vec<String> = lives.iter().map(|l| format!("{:?}", l.committed)).collect();
            notes.push(format!(
                "dead letter not by design: partition {} offset {} reason {} status {:?} id {:?}, dead-lettered in \
                 life {life}; the record was settled in lives {settled_in:?}; persisted committed offsets after \
                 each kill: {}",
                d.partition,
                d.offset,
                d.reason,
                d.last_status,
                d.id,
                committed.join(" ")
            ));
        }
    }

    // Requests sluice refused with its own error must never arrive.
    let delivered_names: HashSet<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    for (life, l) in lives.iter().enumerate() {
        for (name, a) in &l.load.answers {
            if let Answer::Status(code, Some(err)) = a {
                if err != "upstream_error" && delivered_names.contains(name.as_str()) {
                    *unexpected.entry(blame(life)).or_default() += 1;
                    notes.push(format!("{name} was refused ({code} {err}) yet delivered"));
                }
            }
        }
    }

    // Order, sequences, ids.
    let mut first_seen: BTreeMap<u32, (u64, HashMap<u64, String>)> = BTreeMap::new();
    let mut misordered: HashMap<&str, u64> = HashMap::new();
    for (i, s) in seen.iter().enumerate().filter(|(_, s)| s.replayed()) {
        let (p, q) = (s.partition.unwrap(), s.sequence.unwrap());
        if let Some(id) = accepted.get(&s.body) {
            if s.id.as_ref() != Some(id) {
                *unexpected.entry(blame(life_of_index(i))).or_default() += 1;
                notes.push(format!("{} replayed as {:?}, its 202 said {id}", s.body, s.id));
            }
        }
        let (last, by_seq) = first_seen.entry(p).or_insert((0, HashMap::new()));
        match by_seq.get(&q) {
            Some(name) if *name != s.body => {
                *unexpected.entry(blame(life_of_index(i))).or_default() += 1;
                notes.push(format!("partition {p} sequence {q} named {name} and {}", s.body));
            }
            Some(_) => {}
            None => {
                if !by_seq.is_empty() && q <= *last {
                    *misordered.entry(blame(life_of_index(i))).or_default() += 1;
                    notes.push(format!("partition {p}: sequence {q} first delivered after {last}"));
                }
                *last = (*last).max(q);
                by_seq.insert(q, s.body.clone());
            }
        }
    }

    // Duplicates: each later settlement must follow a kill that had the
    // record at risk.
    let mut settled: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in seen.iter().enumerate().filter(|(_, s)| s.replayed() && settles(s)) {
        settled.entry(s.body.as_str()).or_default().push(life_of_index(i));
    }
    let mut duplicates: HashMap<&str, u64> = HashMap::new();
    for (name, settled_in) in &settled {
        for w in settled_in.windows(2) {
            let (a, b) = (w[0], w[1]);
            match (a..b).find(|&k| lives[k].at_risk.contains(*name)) {
                Some(k) => *duplicates.entry(lives[k].kill.as_ref().unwrap().row()).or_default() += 1,
                None => {
                    *unexpected.entry(blame(b)).or_default() += 1;
                    notes.push(format!(
                        "{name} settled again in life {b} after life {a}, not at risk at a kill between"
                    ));
                }
            }
        }
    }

    // Fate of each acknowledged request.
    #[derive(Clone, Copy, PartialEq)]
    enum Fate {
        Delivered,
        Dead,
        Lost,
    }
    let delivered_as: HashSet<(&str, &str)> = seen
        .iter()
        .filter(|s| s.status == 200)
        .filter_map(|s| Some((s.body.as_str(), s.id.as_deref()?)))
        .collect();
    let fate = |name: &str, id: &str| -> Fate {
        if name_kind(name) == 'R' {
            if dead_ids.contains_key(id) {
                Fate::Dead
            } else {
                Fate::Lost
            }
        } else if delivered_as.contains(&(name, id)) {
            Fate::Delivered
        } else {
            Fate::Lost
        }
    };
    let fates: HashMap<&str, Fate> = accepted.iter().map(|(n, id)| (n.as_str(), fate(n, id))).collect();
    let lost: Vec<&&str> = fates
        .iter()
        .filter(|(_, f)| **f == Fate::Lost)
        .map(|(n, _)| n)
        .collect();

    // One row per kind of kill.
    let rows: Vec<&str> = POINTS.iter().map(|p| p.1).chain([RANDOM_ROW]).collect();
    let mut outcomes = Vec::new();
    let mut max_at_risk_all = 0;
    for row in &rows {
        let kills: Vec<&Life> = lives
            .iter()
            .filter(|l| l.kill.as_ref().is_some_and(|k| k.row() == *row))
            .collect();
        let exposed: HashSet<&str> = kills
            .iter()
            .flat_map(|l| l.exposed.iter().map(String::as_str))
            .collect();
        let count = |f: Fate| exposed.iter().filter(|n| fates.get(*n) == Some(&f)).count() as u64;
        let max_at_risk = kills.iter().map(|l| l.at_risk.len()).max().unwrap_or(0);
        max_at_risk_all = max_at_risk_all.max(max_at_risk);
        let o = Outcome {
            acknowledged: exposed.len() as u64,
            delivered: count(Fate::Delivered),
            dead_lettered: count(Fate::Dead),
            lost: count(Fate::Lost),
            duplicated: duplicates.get(row).copied().unwrap_or(0),
            duplicate_bound: Some(Bound {
                max: kills.len() as u64 * AT_RISK_BOUND,
                why: format!("kills × {AT_RISK_BOUND} at risk"),
            }),
            order: match misordered.get(row) {
                Some(n) => Order::Broken(*n),
                None => Order::Kept,
            },
            unexpected: unexpected.get(row).copied().unwrap_or(0),
            notes: Vec::new(),
            raw: format!(
                "kills {}, at risk per kill max {max_at_risk}, seed {seed}, {cycles} cycles",
                kills.len()
            ),
        };
        outcomes.push((*row, o));
    }
    let total_acked = accepted.len();
    let total_dups: u64 = duplicates.values().sum();
    eprintln!(
        "soak: {} cycles in {:.1}s; {} acknowledged, {} dead-lettered by design, {} lost, {} duplicate settlements, \
         most at risk at one kill {max_at_risk_all}, {} sightings",
        cycles,
        started.elapsed().as_secs_f64(),
        total_acked,
        fates.values().filter(|f| **f == Fate::Dead).count(),
        lost.len(),
        total_dups,
        seen.len()
    );
    for n in notes.iter().take(30) {
        eprintln!("  {n}");
    }
    reliability::report_many(&outcomes);

    assert!(
        total_acked >= cycles * 50,
        "too few requests were acknowledged to prove anything: {total_acked}"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged requests lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        notes.is_empty(),
        "{} anomalies: {:#?}",
        notes.len(),
        &notes[..notes.len().min(20)]
    );
    assert!(
        max_at_risk_all as u64 <= AT_RISK_BOUND,
        "{max_at_risk_all} records at risk at one kill"
    );
}
