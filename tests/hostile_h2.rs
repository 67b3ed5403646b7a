//! A flood of h2 streams opened and reset at once (the "rapid reset"
//! attack, CVE-2023-44487) on the h2c and the TLS listener stays bounded:
//! sluice keeps serving and its memory stays flat. One test per listener
//! kind, run one after the other (they measure RSS).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use support::*;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

type Io = Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = TokioIo<Conn>> + Send>> + Send + Sync>;

/// Either side of the listener: plain TCP (h2c) or TLS with ALPN h2.
enum Conn {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens h2 connections and resets every stream right after its HEADERS;
/// returns how many streams were opened.
async fn rapid_reset(connect: &Io, streams: usize) -> usize {
    let mut opened = 0;
    while opened < streams {
        let io = connect().await;
        let Ok((mut send, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await else {
            continue;
        };
        let driver = tokio::spawn(conn);
        // hyper's server answers a client that resets too fast with GOAWAY:
        // then take a new connection, as an attacker would.
        while opened < streams {
            if send.ready().await.is_err() {
                break;
            }
            let req = http::Request::get("/flood")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let fut = send.send_request(req);
            // Let HEADERS go out, then drop the response: RST_STREAM(CANCEL).
            let _ = tokio::time::timeout(Duration::ZERO, fut).await;
            opened += 1;
        }
        driver.abort();
    }
    opened
}

/// One ordinary h2 request; true on a 200.
async fn h2_ok(connect: &Io) -> bool {
    let io = connect().await;
    let Ok((mut send, conn)) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await else {
        return false;
    };
    tokio::spawn(conn);
    let req = http::Request::get("/fine")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status() == 200;
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}

async fn flood(tls: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = config_text(
        &backend.url(),
        &format!("[spool]\ndir = \"{}\"\n", dir.path().join("spool").display()),
    );
    let mut roots = rustls::RootCertStore::empty();
    if tls {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key_pair.serialize_pem()).unwrap();
        roots.add(cert.der().clone()).unwrap();
        text = text.replace(
            "[server]\n",
            &format!(
                "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
                c.display(),
                k.display()
            ),
        );
    }
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, text).unwrap();
    let sluice = SluiceProcess::spawn(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = sluice.data_addr;
    let client_cfg = {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    };
    let connect: Io = Box::new(move || {
        let client_cfg = client_cfg.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            if tls {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let s = tokio_rustls::TlsConnector::from(client_cfg)
                    .connect(name, tcp)
                    .await
                    .unwrap();
                TokioIo::new(Conn::Tls(Box::new(s)))
            } else {
                TokioIo::new(Conn::Plain(tcp))
            }
        })
    });
    assert!(h2_ok(&connect).await, "served before the flood");
    // Warm up, then measure across a flood of 5,000 reset streams.
    rapid_reset(&connect, 300).await;
    let before = rss_kib(sluice.child.id());
    let opened = tokio::time::timeout(Duration::from_secs(120), rapid_reset(&connect, 5_000))
        .await
        .expect("the flood finished");
    let after = rss_kib(sluice.child.id());
    let grown = after.saturating_sub(before) as f64 / 1024.0;
    println!("tls={tls}: {opened} streams reset; RSS {before} -> {after} KiB (+{grown:.1} MiB)");
    assert!(h2_ok(&connect).await, "still served after the flood");
    assert!(grown <= 32.0, "RSS grew {grown:.1} MiB over the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_on_h2c_stays_bounded() {
    flood(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_on_tls_h2_stays_bounded() {
    flood(true).await;
}
