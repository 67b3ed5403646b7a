//! Crash test: a child process appends in a loop and reports each offset
//! `append` returned; the test SIGKILLs it at random moments, reopens the
//! spool and checks that every reported record is present and intact.
//!
//! The child is this test binary re-executed with `CRASH_CHILD_DIR` set,
//! running only `crash_child_appender`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use sluice::spool::{FsyncMode, NoopObserver, Spool, SpoolOptions};

const CHILD_ENV: &str = "CRASH_CHILD_DIR";
const MODE_ENV: &str = "CRASH_CHILD_MODE";
const PARTITIONS: u32 = 4;

fn opts(dir: &str, mode: &str) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.partitions = PARTITIONS;
    o.segment_bytes = 256 << 10;
    o.max_record = 64 << 10;
    o.fsync = match mode {
        "always" => FsyncMode::Always,
        "interval" => FsyncMode::Interval(Duration::from_millis(5)),
        _ => FsyncMode::Never,
    };
    o
}

fn body(tag: u64) -> Bytes {
    let len = 16 + (tag % 2000) as usize;
    let mut v = format!("rec-{tag}-").into_bytes();
    while v.len() < len {
        v.push((tag as u8).wrapping_add(v.len() as u8));
    }
    Bytes::from(v)
}

/// Runs as the child when `CRASH_CHILD_DIR` is set; otherwise a no-op.
#[test]
fn crash_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let s = Spool::open(opts(&dir, &mode), Arc::new(NoopObserver)).await.unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let seed: u64 = rand::random::<u32>() as u64;
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let s = s.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let tag = (seed << 32) | (t << 24) | i;
                    let p = (tag % PARTITIONS as u64) as u32;
                    let off = s.append(p, body(tag)).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "OK {p} {off} {tag}").unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_reported_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut reported: Vec<(u32, u64, u64)> = Vec::new();
    let started = Instant::now();
    let modes = ["always", "interval", "never"];
    let mut round = 0;
    while round < 6 && started.elapsed() < Duration::from_secs(10) {
        let mode = modes[round % 3];
        round += 1;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child_appender", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &dir)
            .env(MODE_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(u32, u64, u64)>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() == 4 && f[0] == "OK" {
                    let rec = (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
                    if tx.send(rec).is_err() {
                        break;
                    }
                }
            }
        });
        // Kill at a random moment after the child is appending (its start-up
        // time varies with load, so the clock starts at its first report).
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("round {round}: the child reported nothing"));
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut got = vec![first];
        got.extend(rx.iter());
        reported.extend(got);

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = Spool::open(opts(&dir, "always"), Arc::new(NoopObserver)).await.unwrap();
            let mut on_disk = std::collections::HashMap::new();
            for p in 0..PARTITIONS {
                let mut r = s.reader(p);
                r.seek(0);
                while r.position() < s.next_offset(p) {
                    for rec in r.next_batch(1024, 4 << 20).await.unwrap() {
                        on_disk.insert((p, rec.offset), rec.payload);
                    }
                }
            }
            for &(p, off, tag) in &reported {
                let rec = on_disk
                    .get(&(p, off))
                    .unwrap_or_else(|| panic!("round {round} ({mode}): offset {off} of partition {p} lost"));
                assert_eq!(rec, &body(tag), "round {round}: record {p}/{off} differs");
            }
            for p in 0..PARTITIONS {
                let max = reported.iter().filter(|r| r.0 == p).map(|r| r.1).max();
                if let Some(m) = max {
                    assert!(s.next_offset(p) > m);
                }
            }
            s.close().await.unwrap();
        });
    }
    eprintln!("{round} rounds, {} reported appends verified", reported.len());
}
