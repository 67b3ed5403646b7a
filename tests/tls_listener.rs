//! TLS on the data port (`server.tls`): an HTTPS client, over HTTP/1.1 and
//! h2 (ALPN), reaches the backend through sluice, which tells the backend
//! `X-Forwarded-Proto: https`.
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use support::*;

async fn tls_get(
    addr: std::net::SocketAddr,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    alpn: &[u8],
) -> (http::Version, u16, Bytes) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let req = http::Request::get("https://localhost/secure")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if alpn == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (version, status, body)
}

#[tokio::test]
async fn https_clients_over_h1_and_h2_reach_the_backend() {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();

    let backend = Backend::ok().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\
         [upstream]\nurl = \"{}\"\n",
        cert_path.display(),
        key_path.display(),
        backend.url()
    );
    let sluice = start_sluice(&text).await;
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let (version, status, body) = tls_get(sluice.data_addr, cert.der().clone(), alpn).await;
        assert_eq!(status, 200);
        assert_eq!(
            version,
            if alpn == b"h2" {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            },
            "ALPN {:?}",
            String::from_utf8_lossy(alpn)
        );
        assert!(body.is_empty(), "the echo backend returns the (empty) request body");
        let seen = backend.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.uri, "/secure");
    }
    // A plain-HTTP client on the TLS port gets no HTTP answer.
    let c = client();
    let plain = try_send(
        &c,
        http::Method::GET,
        &format!("http://{}/secure", sluice.data_addr),
        &[],
        "",
    )
    .await;
    assert!(plain.is_err() || plain.unwrap().status != 200);
    sluice.shutdown().await;
}
