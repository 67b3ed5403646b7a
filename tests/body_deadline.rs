//! `server.request_timeout` covers the whole live request: a response body
//! still trickling at the deadline is cut off and its budget slot freed.
mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw backend: `/slow` sends its head at once, then 10 bytes every
/// 100 ms of a declared 10,000; anything else answers at once.
async fn trickling_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                if head.starts_with(b"GET /slow") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10000\r\n\r\n").await;
                    for _ in 0..100 {
                        if s.write_all(b"0123456789").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } else {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_trickling_body_is_cut_at_the_request_deadline_and_frees_its_slot() {
    let addr = trickling_backend().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nrequest_timeout = \"600ms\"\n\
         [upstream]\nurl = \"http://{addr}\"\nmax_concurrency = 1\n"
    );
    let sluice = start_sluice(&text).await;
    let c = client();
    let started = Instant::now();
    let req = http::Request::get(format!("http://{}/slow", sluice.data_addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.expect("the head arrives");
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "the body must be cut off, not completed");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "cut at the 600 ms deadline, not after the backend's 10 s: {took:?}"
    );
    // With max_concurrency = 1, the cut body gave its slot back.
    let r = get(&c, &format!("http://{}/fast", sluice.data_addr)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    sluice.shutdown().await;
}
