//! Forwarding behaviour of the data port: header hygiene, X-Forwarded-*,
//! trusted proxies, protocol versions (HTTP/1.0 backend, h2c client),
//! WebSocket tunnelling, an https upstream, body limits and upstream
//! failures.

mod support;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ALL_ROUTE: &str = "[[route]]\nname = \"all\"\nmatch = { path_prefix = \"/\" }\nrate = \"1000/s\"\n";

/// The hop-by-hop headers a client sends in the stripping test.
const HOP_REQUEST_HEADERS: &[(&str, &str)] = &[
    ("connection", "x-hop-a, X-Hop-B"),
    ("x-hop-a", "1"),
    ("x-hop-b", "2"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("trailer", "x-checksum"),
    ("upgrade", "websocket"),
    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
    ("proxy-connection", "keep-alive"),
    ("x-end-to-end", "kept"),
];

const HOP_NAMES: &[&str] = &[
    "x-hop-a",
    "x-hop-b",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

/// A raw HTTP/1.1 backend that answers every request with hop-by-hop
/// headers hyper would not add or remove by itself.
async fn raw_hop_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = "HTTP/1.1 200 OK\r\n\
                                    Content-Length: 2\r\n\
                                    Connection: x-hop-resp\r\n\
                                    X-Hop-Resp: secret\r\n\
                                    Keep-Alive: timeout=5\r\n\
                                    Trailer: x-checksum\r\n\
                                    Upgrade: h2c\r\n\
                                    Proxy-Authenticate: Basic realm=\"x\"\r\n\
                                    Proxy-Foo: bar\r\n\
                                    X-End-To-End: kept\r\n\
                                    \r\n\
                                    ok";
                        if stream.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

const HOP_RESPONSE_NAMES: &[&str] = &[
    "x-hop-resp",
    "keep-alive",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-foo",
];

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_on_the_way_to_the_backend() {
    let backend = Backend::ok().await;
    let c = client();

    // Control: sent straight to the backend, every one of them arrives, so
    // their absence through sluice is sluice's doing.
    let direct = send(
        &c,
        Method::GET,
        &format!("{}/direct", backend.url()),
        HOP_REQUEST_HEADERS,
        "",
    )
    .await;
    assert_eq!(direct.status, 200);
    let seen = backend.last();
    for name in HOP_NAMES {
        assert!(
            seen.headers.contains_key(*name),
            "control: {name} did not reach the backend directly"
        );
    }

    let sluice = start_sluice(&config_text(&backend.url(), ALL_ROUTE)).await;
    let r = send(
        &c,
        Method::GET,
        &format!("http://{}/via-sluice", sluice.data_addr),
        HOP_REQUEST_HEADERS,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(seen.uri, "/via-sluice");
    for name in HOP_NAMES {
        assert!(
            !seen.headers.contains_key(*name),
            "{name} leaked to the backend: {:?}",
            seen.headers
        );
    }
    // Whatever Connection the backend sees is the client connection's own
    // business, never the client's list of hop-by-hop names.
    if let Some(conn) = seen.headers.get("connection") {
        let conn = conn.to_str().unwrap().to_ascii_lowercase();
        assert!(!conn.contains("x-hop"), "client's Connection leaked: {conn}");
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    sluice.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_on_the_way_to_the_client() {
    let backend = raw_hop_backend().await;
    let c = client();

    let direct = get(&c, &format!("http://{backend}/")).await;
    for name in HOP_RESPONSE_NAMES {
        assert!(
            direct.headers.contains_key(*name),
            "control: the client sees {name} without sluice"
        );
    }

    let sluice = start_sluice(&config_text(&format!("http://{backend}"), ALL_ROUTE)).await;
    let r = get(&c, &format!("http://{}/", sluice.data_addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    for name in HOP_RESPONSE_NAMES {
        assert!(
            !r.headers.contains_key(*name),
            "{name} leaked to the client: {:?}",
            r.headers
        );
    }
    if let Some(conn) = r.headers.get("connection") {
        assert!(
            !conn.to_str().unwrap().contains("x-hop"),
            "backend's Connection leaked: {conn:?}"
        );
    }
    assert_eq!(r.header("x-end-to-end"), "kept");
    sluice.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_an_existing_value() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), ALL_ROUTE)).await;
    let c = client();
    let r = send(
        &c,
        Method::GET,
        &format!("http://{}/xff", sluice.data_addr),
        &[("x-forwarded-for", "203.0.113.7, 198.51.100.9")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = backend.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 198.51.100.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    sluice.shutdown().await;
}

const PER_IP_ROUTE: &str =
    "[[route]]\nname = \"per-ip\"\nmatch = { path_prefix = \"/\" }\nrate = \"1/min\"\nburst = 1\nkey = \"client_ip\"\n";

fn config_with_trusted(upstream: &str, trusted: Option<&str>) -> String {
    let trusted = trusted
        .map(|t| format!("trusted_proxies = [\"{t}\"]\n"))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{trusted}\n[upstream]\nurl = \"{upstream}\"\n\n{PER_IP_ROUTE}"
    )
}

#[tokio::test]
async fn client_ip_key_believes_x_forwarded_for_only_from_trusted_proxies() {
    let backend = Backend::ok().await;
    let c = client();
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];

    // The loopback peer is a trusted proxy: each X-Forwarded-For client has
    // its own bucket.
    let trusted = start_sluice(&config_with_trusted(&backend.url(), Some("127.0.0.0/8"))).await;
    let url = format!("http://{}/", trusted.data_addr);
    assert_eq!(send(&c, Method::GET, &url, &xff("198.51.100.1"), "").await.status, 200);
    assert_eq!(
        send(&c, Method::GET, &url, &xff("198.51.100.1"), "").await.status,
        429,
        "the same forwarded client shares its bucket"
    );
    assert_eq!(
        send(&c, Method::GET, &url, &xff("198.51.100.2"), "").await.status,
        200,
        "a different forwarded client has its own bucket"
    );
    trusted.shutdown().await;

    // No trusted proxies: X-Forwarded-For is ignored and both requests
    // come from the same peer, so they share one bucket.
    let untrusted = start_sluice(&config_with_trusted(&backend.url(), None)).await;
    let url = format!("http://{}/", untrusted.data_addr);
    assert_eq!(send(&c, Method::GET, &url, &xff("198.51.100.1"), "").await.status, 200);
    assert_eq!(
        send(&c, Method::GET, &url, &xff("198.51.100.2"), "").await.status,
        429,
        "an untrusted X-Forwarded-For must not buy a fresh bucket"
    );
    untrusted.shutdown().await;
}

#[tokio::test]
async fn an_http10_backend_does_not_downgrade_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Backend::start_on(
        listener,
        Arc::new(|_seen: Seen| Box::pin(async { Response::new(Full::new(Bytes::from_static(b"old"))) })),
        true,
    )
    .await;
    let c = client();
    let direct = get(&c, &format!("{}/", backend.url())).await;
    assert_eq!(
        direct.version,
        http::Version::HTTP_10,
        "control: the backend answers HTTP/1.0"
    );

    let sluice = start_sluice(&config_text(&backend.url(), ALL_ROUTE)).await;
    let r = get(&c, &format!("http://{}/", sluice.data_addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "old");
    assert_eq!(r.version, http::Version::HTTP_11);
    // The client's keep-alive connection survives: a second request works.
    assert_eq!(get(&c, &format!("http://{}/again", sluice.data_addr)).await.status, 200);
    sluice.shutdown().await;
}

#[tokio::test]
async fn an_h2c_client_reaches_an_http11_backend() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), ALL_ROUTE)).await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/h2?q=1", sluice.data_addr))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.request(req))
        .await
        .expect("h2c request finished")
        .expect("h2c request succeeded");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "over h2");
    let seen = backend.last();
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "sluice speaks HTTP/1.1 to the backend"
    );
    assert_eq!(seen.uri, "/h2?q=1");
    assert_eq!(
        seen.headers["host"],
        sluice.data_addr.to_string(),
        "the h2 authority becomes Host"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws_url = ws_echo_backend().await;
    let sluice = start_sluice(&config_text(&ws_url, ALL_ROUTE)).await;
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{}/socket", sluice.data_addr)),
    )
    .await
    .expect("handshake finished")
    .expect("websocket handshake through sluice");
    assert_eq!(resp.status(), 101);
    for text in ["hello through sluice", "and a second frame"] {
        ws.send(Message::Text(text.to_string())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo arrived")
            .expect("stream open")
            .expect("frame ok");
        assert_eq!(echoed, Message::Text(text.to_string()));
    }
    ws.close(None).await.unwrap();
    sluice.shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "ca.pem", &cert.pem());

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let mut server_cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
    server_cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hs = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let hs = hs.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                hs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let host = req.headers().get("host").cloned();
                    let mut resp = Response::new(Full::new(Bytes::from(format!("secure {}", req.uri().path()))));
                    if let Some(h) = host {
                        resp.headers_mut().insert("x-saw-host", h);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let extra = format!("ca_file = \"{}\"\n\n{ALL_ROUTE}", ca.display());
    // ca_file belongs to [upstream], which config_text leaves open last.
    let text = config_text(&format!("https://localhost:{port}"), &extra);
    let sluice = start_sluice(&text).await;
    let c = client();
    let r = send(
        &c,
        Method::GET,
        &format!("http://{}/tls-path", sluice.data_addr),
        &[("host", "app.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "body: {:?}", r.body);
    assert_eq!(r.body, "secure /tls-path");
    assert_eq!(r.header("x-saw-host"), "app.example");
    assert!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the backend was reached over TLS"
    );
    sluice.shutdown().await;
}

fn max_body_config(upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_body = \"1KiB\"\n\n[upstream]\nurl = \"{upstream}\"\n\n{ALL_ROUTE}"
    )
}

#[tokio::test]
async fn content_length_over_max_body_gets_413_before_the_backend() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&max_body_config(&backend.url())).await;
    let c = client();
    let url = format!("http://{}/upload", sluice.data_addr);

    let ok = send(&c, Method::POST, &url, &[], vec![b'a'; 1024]).await;
    assert_eq!(ok.status, 200, "exactly max_body is allowed");
    assert_eq!(backend.count(), 1);

    let r = send(&c, Method::POST, &url, &[], vec![b'a'; 1025]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "too_large");
    assert_eq!(backend.count(), 1, "an oversized body never reaches the backend");

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "all"), ("decision", "too_large")]
        ),
        Some(1.0),
        "{text}"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn chunked_body_streaming_past_max_body_gets_413() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&max_body_config(&backend.url())).await;
    let c: Client<_, ChunkedBody> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{}/stream", sluice.data_addr);

    // Under the limit, chunked, goes through whole.
    let small = Request::post(&url)
        .body(ChunkedBody::new(vec![
            Bytes::from(vec![b'x'; 300]),
            Bytes::from(vec![b'y'; 300]),
        ]))
        .unwrap();
    let resp = c.request(small).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_some() || resp.headers().get("transfer-encoding").is_some());
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes().len(), 600);

    let big = Request::post(&url)
        .body(ChunkedBody::new((0..4).map(|_| Bytes::from(vec![b'z'; 512])).collect()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(big))
        .await
        .expect("answered")
        .expect("an HTTP answer, not a dropped connection");
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "too_large");
    sluice.shutdown().await;
}

#[tokio::test]
async fn closed_backend_port_gets_502_json() {
    let port = closed_port();
    let sluice = start_sluice(&config_text(&format!("http://127.0.0.1:{port}"), ALL_ROUTE)).await;
    let c = client();
    let r = get(&c, &format!("http://{}/nobody-home", sluice.data_addr)).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["error"], "upstream_unreachable", "{v}");
    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "all"), ("decision", "upstream_error")]
        ),
        Some(1.0)
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn slow_backend_past_upstream_timeout_gets_504_json() {
    let backend = slow_backend(Duration::from_secs(2)).await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        &format!("timeout = \"200ms\"\n\n{ALL_ROUTE}"),
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let r = get(&c, &format!("http://{}/slow", sluice.data_addr)).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        took < Duration::from_millis(1500),
        "504 came after {took:?}, not at the 200ms timeout"
    );
    assert_eq!(backend.count(), 1, "the request did reach the backend");
    sluice.shutdown().await;
}
