//! The pooled keep-alive client to the backend, http or https (rustls with
//! the bundled web PKI roots plus an optional extra CA file).

use super::body::RequestBody;
use crate::config::UpstreamConfig;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read upstream.ca_file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream.ca_file {path} holds no usable certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

pub fn build(cfg: &UpstreamConfig) -> Result<UpstreamClient, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
            path: path.clone(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(ClientError::NoCertificate { path: path.clone() });
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.timeout.min(Duration::from_secs(5))));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(cfg.pool_max_idle)
        // We set Host ourselves to preserve the client's.
        .set_host(false)
        .build(connector))
}
