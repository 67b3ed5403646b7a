//! A route's limit can't be walked around by respelling its path: paths
//! are normalised before matching, and what is matched is what the backend
//! gets (issue 11, defect 3).

mod support;

use std::net::SocketAddr;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request with exactly this target (no client-side cleanup)
/// and returns the status code.
async fn raw_get(addr: SocketAddr, target: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

const RESPELLINGS: [&str; 8] = [
    "/api//orders/x",
    "//api/orders/x",
    "/api/./orders/x",
    "/api/x/../orders/x",
    "/api/%6Frders/x",
    "/%61pi/orders/x",
    "/api/orders/./x",
    "/%61%70%69/orders/y/../x",
];

#[tokio::test]
async fn respelled_paths_meet_the_same_limit() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/api/orders\" }\nrate = \"1/min\"\nburst = 1\non_limit = \"reject\"\n",
    ))
    .await;
    assert_eq!(raw_get(sluice.data_addr, "/api/orders/x").await, 200);
    for target in RESPELLINGS {
        assert_eq!(
            raw_get(sluice.data_addr, target).await,
            429,
            "{target} walked around the limit"
        );
    }
    assert_eq!(backend.count(), 1);
    assert_eq!(backend.last().uri, "/api/orders/x");
}

#[tokio::test]
async fn the_backend_gets_the_normalised_path_and_query() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), "")).await;
    for (target, seen) in [
        ("/a//b/./c/../d?x=%2F&y=1", "/a/b/d?x=%2F&y=1"),
        ("/%7euser/%c3%a9", "/~user/%C3%A9"),
    ] {
        assert_eq!(raw_get(sluice.data_addr, target).await, 200, "{target}");
        assert_eq!(backend.last().uri, seen);
    }
}

#[tokio::test]
async fn unsafe_paths_are_refused_with_400() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), "")).await;
    for target in [
        "/../etc/passwd",
        "/a/../../b",
        "/api%2Forders",
        "/a%5Cb",
        "/a%00b",
        "/a%zz",
    ] {
        assert_eq!(raw_get(sluice.data_addr, target).await, 400, "{target}");
    }
    assert_eq!(backend.count(), 0, "none reached the backend");
    // `keep` forwards an escaped slash but never treats it as one.
    let text = config_text(
        &backend.url(),
        "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/api/orders\" }\nrate = \"1/min\"\nburst = 1\non_limit = \"reject\"\n",
    )
    .replace("[server]\n", "[server]\nescaped_slashes = \"keep\"\n");
    let sluice = start_sluice(&text).await;
    assert_eq!(
        raw_get(sluice.data_addr, "/api%2Forders/x").await,
        200,
        "not the orders route"
    );
    assert_eq!(backend.last().uri, "/api%2Forders/x");
}

#[tokio::test]
async fn ignore_case_matches_any_case_of_the_path() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"orders\"\nmatch = { path_prefix = \"/api/orders\", ignore_case = true }\nrate = \"1/min\"\nburst = 1\non_limit = \"reject\"\n",
    ))
    .await;
    assert_eq!(raw_get(sluice.data_addr, "/api/orders/1").await, 200);
    for target in ["/API/orders/1", "/Api/Orders/1", "/%41PI/ORDERS/1"] {
        assert_eq!(raw_get(sluice.data_addr, target).await, 429, "{target}");
    }
}

/// Sends raw request bytes and returns the status code.
async fn raw(addr: SocketAddr, request: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Issue 11, defect 6: HTTP/1.0 without Host gets the upstream's
/// authority; HTTP/1.1 without Host is refused as RFC 9112 requires.
#[tokio::test]
async fn host_rules_for_http_1_0_and_1_1() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), "")).await;
    assert_eq!(raw(sluice.data_addr, "GET /ten HTTP/1.0\r\n\r\n").await, 200);
    let seen = backend.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], backend.addr.to_string().as_str());
    assert_eq!(
        raw(sluice.data_addr, "GET /eleven HTTP/1.1\r\nConnection: close\r\n\r\n").await,
        400
    );
    assert_eq!(
        backend.count(),
        1,
        "the HTTP/1.1 request without Host never reached the backend"
    );
    assert_eq!(
        raw(
            sluice.data_addr,
            "GET /eleven HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        )
        .await,
        200
    );
    assert_eq!(backend.last().headers["host"], "a.test");
}
