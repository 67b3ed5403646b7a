//! Clients that never read, never speak, trickle, or open too many
//! connections don't take sluice down (issue 11, defects 1 and 5). The
//! tests here are timing-bound, so they run one at a time (`ONE_AT_A_TIME`).

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A backend: `/big` answers 5 MiB, anything else "ok".
async fn big_backend() -> Backend {
    Backend::start(Arc::new(|seen: Seen| {
        Box::pin(async move {
            let body = if seen.uri.starts_with("/big") {
                Bytes::from(vec![b'x'; 5 << 20])
            } else {
                Bytes::from_static(b"ok")
            };
            http::Response::new(Full::new(body))
        })
    }))
    .await
}

/// One GET on a fresh connection; the status, or 0 on a transport error.
async fn fresh_get(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Defect 1: 300 clients that GET 5 MiB and never read must not hold the
/// backend budget: a fresh GET gets 200 within send_timeout + 1 s.
#[tokio::test]
async fn clients_that_never_read_free_their_budget_slots() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let text = config_text(&backend.url(), "")
        .replace("[server]\n", "[server]\nsend_timeout = \"2s\"\n")
        .replace("[upstream]\n", "[upstream]\nmax_concurrency = 32\n");
    let sluice = start_sluice(&text).await;
    let mut hogs = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(sluice.data_addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        hogs.push(s); // never read
    }
    // The budget is taken: the hogs hold all 32 slots.
    let seen_big = |b: &Backend| b.seen.lock().unwrap().iter().filter(|s| s.uri == "/big").count();
    eventually(Duration::from_secs(10), "the hogs take every slot", || {
        let n = seen_big(&backend);
        async move { (n >= 32).then_some(()) }
    })
    .await;
    let t0 = Instant::now();
    let bound = Duration::from_secs(2 + 1);
    let mut status = 0;
    while t0.elapsed() < bound + Duration::from_secs(2) {
        status = fresh_get(sluice.data_addr, "/small").await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    assert_eq!(status, 200, "a fresh GET never got through");
    assert!(took <= bound, "a fresh GET took {took:?}, over send_timeout + 1 s");
    drop(hogs);
}

/// Defect 5: a connection that sends nothing is closed at
/// header_read_timeout; one idle after a request at keepalive_timeout.
#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let text = config_text(&backend.url(), "").replace(
        "[server]\n",
        "[server]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"2s\"\n",
    );
    let sluice = start_sluice(&text).await;
    let closed_within = |mut s: TcpStream, within: Duration| async move {
        let mut buf = [0u8; 64];
        let t0 = Instant::now();
        let r = tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        r.is_ok().then(|| t0.elapsed())
    };
    // Silent from the start: 200 of them.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(sluice.data_addr).await.unwrap());
    }
    let waits: Vec<_> = silent
        .into_iter()
        .map(|s| tokio::spawn(closed_within(s, Duration::from_secs(4))))
        .collect();
    for w in waits {
        let took = w.await.unwrap().expect("a silent connection was closed");
        assert!(took <= Duration::from_millis(2500), "closed after {took:?}");
    }
    // Idle after one request on a keep-alive connection.
    let mut s = TcpStream::connect(sluice.data_addr).await.unwrap();
    s.write_all(b"GET /small HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_within(s, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection was closed");
    assert!(
        took >= Duration::from_millis(1500),
        "closed too soon ({took:?}): keepalive_timeout is 2s"
    );
}

/// Defect 5: past max_connections, new connections are closed at once
/// and counted; those open keep working.
#[tokio::test]
async fn max_connections_caps_what_is_open() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let text = config_text(&backend.url(), "").replace("[server]\n", "[server]\nmax_connections = 20\n");
    let sluice = start_sluice(&text).await;
    let mut kept = Vec::new();
    for _ in 0..20 {
        kept.push(TcpStream::connect(sluice.data_addr).await.unwrap());
    }
    let c = client();
    eventually(Duration::from_secs(5), "20 connections open", || {
        let c = c.clone();
        let admin = sluice.admin_addr;
        async move {
            let text = metrics_text(&c, admin).await;
            text.lines().any(|l| l == "sluice_connections_open 20").then_some(())
        }
    })
    .await;
    for _ in 0..10 {
        let mut extra = TcpStream::connect(sluice.data_addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("an extra connection is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let text = metrics_text(&c, sluice.admin_addr).await;
    assert!(
        text.lines().any(|l| l == "sluice_connections_refused_total 10"),
        "{text}"
    );
    // One of those open is served.
    let mut s = kept.pop().unwrap();
    s.write_all(b"GET /small HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

/// Many clients sending a spooled body one byte at a time are cut off at
/// request_timeout with 408, and nothing is spooled.
#[tokio::test]
async fn trickled_bodies_are_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let text = config_text(
        &backend.url(),
        "[[route]]\nname = \"w\"\nrate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
    )
    .replace("[server]\n", "[server]\nrequest_timeout = \"2s\"\n");
    let sluice = start_sluice(&text).await;
    // Take the one token, so the rest are spooled.
    assert_eq!(fresh_get(sluice.data_addr, "/small").await, 200);
    let mut clients = Vec::new();
    for i in 0..50 {
        let addr = sluice.data_addr;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = format!("POST /w/{i} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let t0 = Instant::now();
            let mut buf = Vec::new();
            loop {
                // One byte every 200 ms, while reading whatever comes back.
                let mut chunk = [0u8; 1024];
                tokio::select! {
                    r = s.read(&mut chunk) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if s.write_all(b"x").await.is_err() {
                            break;
                        }
                    }
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") || t0.elapsed() > Duration::from_secs(8) {
                    break;
                }
            }
            (String::from_utf8_lossy(&buf).into_owned(), t0.elapsed())
        }));
    }
    for c in clients {
        let (answer, took) = c.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    }
    let spool = admin_spool(&client(), sluice.admin_addr).await;
    let appended: u64 = spool["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(appended, 0, "no half-received body was spooled");
}

/// 10,000 distinct paths and hosts add no series to /metrics.
#[tokio::test]
async fn distinct_paths_and_hosts_grow_no_label_set() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/api\" }\nrate = \"100000/s\"\nburst = 100000\n",
    ))
    .await;
    let c = client();
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let _ = get(&c, &format!("http://{}/api/warm", sluice.data_addr)).await;
    let _ = get(&c, &format!("http://{}/elsewhere", sluice.data_addr)).await;
    let before = series(&metrics_text(&c, sluice.admin_addr).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = sluice.data_addr;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = vec![0u8; 8192];
            for i in 0..1250 {
                let path = if i % 2 == 0 { "/api" } else { "/other" };
                let req = format!("GET {path}/{t}-{i} HTTP/1.1\r\nHost: h{t}-{i}.example\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                // The answers are small: one read each.
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = series(&metrics_text(&c, sluice.admin_addr).await);
    assert_eq!(before, after, "10,000 distinct paths and hosts added series");
}

/// A request head trickled a byte at a time is cut off at
/// header_read_timeout, on a new connection and on a kept-alive one; a
/// kept-alive connection that sends nothing outlives the header timeout.
#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = big_backend().await;
    let text = config_text(&backend.url(), "").replace(
        "[server]\n",
        "[server]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"30s\"\n",
    );
    let sluice = start_sluice(&text).await;
    /// Trickles a head; returns how long until the server closed.
    async fn trickle(s: &mut TcpStream) -> Duration {
        let t0 = Instant::now();
        for b in b"GET /small HTTP/1.1\r\nHost: app.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                break;
            }
        }
        t0.elapsed()
    }
    let mut fresh = TcpStream::connect(sluice.data_addr).await.unwrap();
    let took = trickle(&mut fresh).await;
    assert!(
        took < Duration::from_millis(2500),
        "fresh connection: cut off after {took:?}"
    );
    // Kept alive: one request, 2 s of silence (past the header timeout,
    // within keep-alive), then a trickled head.
    let mut kept = TcpStream::connect(sluice.data_addr).await.unwrap();
    kept.write_all(b"GET /small HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(2)).await; // the idle stretch under test
    kept.write_all(b"GET /small HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "a kept-alive connection idle past header_read_timeout still serves"
    );
    let took = trickle(&mut kept).await;
    assert!(
        took < Duration::from_millis(2500),
        "kept-alive connection: cut off after {took:?}"
    );
}
