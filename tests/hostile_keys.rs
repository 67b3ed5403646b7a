//! A flood of long, distinct bucket-key values costs bounded memory: keys
//! are held as fixed-size hashes, never as the values (issue 11, defect 4).
//! One test in this binary: it measures the RSS of a real sluice process,
//! and must not share the machine with other tests of its own binary.

mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Reads one response (head and Content-Length body) off a keep-alive
/// connection; returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return status;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_distinct_16k_key_values_cost_bounded_memory() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        config_text(
            &backend.url(),
            &format!(
                "[spool]\ndir = \"{}\"\n[[route]]\nname = \"per-user\"\nkey = \"header:x-user\"\nrate = \"1000/s\"\nburst = 10\non_limit = \"reject\"\n",
                dir.path().join("spool").display()
            ),
        ),
    )
    .unwrap();
    let sluice = SluiceProcess::spawn(&["run", "--config", cfg.to_str().unwrap()]);
    let pid = sluice.child.id();
    const CONNS: usize = 16;
    const PER_CONN: usize = 1250; // 20,000 in all
    let send_all = |round: usize, per_conn: usize| {
        let addr = sluice.data_addr;
        async move {
            let mut tasks = Vec::new();
            for c in 0..CONNS {
                tasks.push(tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let mut buf = Vec::new();
                    let mut ok = 0;
                    for i in 0..per_conn {
                        // 16 KiB, distinct per request.
                        let mut value = format!("r{round}-c{c}-i{i}-");
                        value.extend(std::iter::repeat_n('v', 16 * 1024 - value.len()));
                        let req = format!("GET /k HTTP/1.1\r\nHost: app.test\r\nx-user: {value}\r\n\r\n");
                        s.write_all(req.as_bytes()).await.unwrap();
                        if read_response(&mut s, &mut buf).await == 200 {
                            ok += 1;
                        }
                    }
                    ok
                }));
            }
            let mut ok = 0;
            for t in tasks {
                ok += t.await.unwrap();
            }
            ok
        }
    };
    // Warm up: connections, buffers and the allocator's arenas.
    assert_eq!(send_all(0, 50).await, CONNS * 50);
    let before = rss_kib(pid);
    let ok = tokio::time::timeout(Duration::from_secs(120), send_all(1, PER_CONN))
        .await
        .expect("the flood finished");
    assert_eq!(ok, CONNS * PER_CONN, "every distinct key had its own full bucket");
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    println!("RSS {before} KiB -> {after} KiB (+{grown_mib:.1} MiB) after 20,000 distinct 16 KiB keys");
    assert!(grown_mib <= 32.0, "RSS grew {grown_mib:.1} MiB");
}
