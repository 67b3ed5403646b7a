//! The admin port: health, readiness, metrics, `/admin/*` auth, and config
//! reload (applied without dropping connections, refused when bad,
//! restart-only keys reported).

mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::path::Path;
use support::*;

fn route(rate: &str, burst: u32) -> String {
    format!("[[route]]\nname = \"api\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"{rate}\"\nburst = {burst}\n")
}

/// A config file for the reload tests. The file watcher is off: these
/// tests reload explicitly, and a watcher tick between the rewrite and
/// the reload would count the same change twice.
fn file_config(upstream: &str, listen: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nconfig_poll_interval = \"0s\"\n\n[upstream]\nurl = \"{upstream}\"\n\n{extra}\n"
    )
}

async fn post(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    send(c, Method::POST, url, headers, Bytes::new()).await
}

#[tokio::test]
async fn healthz_readyz_and_metrics_answer() {
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(&backend.url(), &route("100/s", 100))).await;
    let c = client();
    let admin = sluice.admin_addr;

    let h = get(&c, &format!("http://{admin}/healthz")).await;
    assert_eq!(h.status, 200);
    let r = get(&c, &format!("http://{admin}/readyz")).await;
    assert_eq!(r.status, 200);

    for _ in 0..2 {
        assert_eq!(get(&c, &format!("http://{}/m", sluice.data_addr)).await.status, 200);
    }
    let m = get(&c, &format!("http://{admin}/metrics")).await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type").starts_with("text/plain"),
        "{}",
        m.header("content-type")
    );
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(text.contains("# TYPE sluice_requests_total counter"), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "sluice_requests_total",
            &[("route", "api"), ("decision", "forwarded")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "sluice_upstream_requests_total",
            &[("source", "live"), ("class", "2xx")]
        ),
        Some(2.0),
        "{text}"
    );

    assert_eq!(get(&c, &format!("http://{admin}/no-such-thing")).await.status, 404);
    sluice.shutdown().await;
}

#[tokio::test]
async fn without_a_token_admin_answers_loopback() {
    let backend = Backend::ok().await;
    // Parsed from text, so there is no file to reload: the loopback caller
    // is let through (not 401/403) and told so with a 400.
    let sluice = start_sluice(&config_text(&backend.url(), &route("100/s", 100))).await;
    let c = client();
    let r = post(&c, &format!("http://{}/admin/reload", sluice.admin_addr), &[]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["applied"], false);
    assert!(v["error"].as_str().unwrap().contains("no config file"), "{v}");
    sluice.shutdown().await;

    // With a file, the same loopback call reloads it.
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "sluice.toml",
        &file_config(&backend.url(), "127.0.0.1:0", &route("100/s", 100)),
    );
    let sluice = start_sluice_from_file(&path).await;
    let r = post(&c, &format!("http://{}/admin/reload", sluice.admin_addr), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["applied"], true);
    sluice.shutdown().await;
}

#[tokio::test]
async fn admin_token_file_requires_the_bearer_token() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let token = write_file(dir.path(), "admin-token", "s3cret-token\n");
    let extra = format!(
        "[admin]\ntoken_file = \"{}\"\n\n{}",
        token.display(),
        route("100/s", 100)
    );
    let path = write_file(
        dir.path(),
        "sluice.toml",
        &file_config(&backend.url(), "127.0.0.1:0", &extra),
    );
    let sluice = start_sluice_from_file(&path).await;
    let c = client();
    let reload = format!("http://{}/admin/reload", sluice.admin_addr);

    for headers in [
        &[][..],
        &[("authorization", "Bearer wrong-token")][..],
        &[("authorization", "Basic czNjcmV0LXRva2Vu")][..],
        &[("authorization", "Bearer s3cret-token-and-more")][..],
    ] {
        let r = post(&c, &reload, headers).await;
        assert_eq!(r.status, 401, "{headers:?} must be refused");
        assert!(
            r.header("www-authenticate").starts_with("Bearer"),
            "WWW-Authenticate: {}",
            r.header("www-authenticate")
        );
    }
    let r = post(&c, &reload, &[("authorization", "Bearer s3cret-token")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["applied"], true);

    // The open endpoints stay open.
    for p in ["healthz", "readyz", "metrics"] {
        assert_eq!(
            get(&c, &format!("http://{}/{p}", sluice.admin_addr)).await.status,
            200,
            "/{p}"
        );
    }
    sluice.shutdown().await;
}

/// One HTTP/1.1 connection, reused for every request.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    host: String,
}

impl KeepAlive {
    async fn open(addr: std::net::SocketAddr) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive {
            sender,
            conn,
            host: addr.to_string(),
        }
    }

    async fn get(&mut self, path: &str) -> http::StatusCode {
        self.sender
            .ready()
            .await
            .expect("the keep-alive connection is still open");
        let req = Request::get(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .expect("request on the open connection");
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    }

    fn is_open(&self) -> bool {
        !self.sender.is_closed() && !self.conn.is_finished()
    }
}

fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn reload_changes_a_rate_without_dropping_a_keep_alive_connection() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "sluice.toml",
        &file_config(&backend.url(), "127.0.0.1:0", &route("1/min", 1)),
    );
    let sluice = start_sluice_from_file(&path).await;
    let c = client();

    let mut conn = KeepAlive::open(sluice.data_addr).await;
    assert_eq!(conn.get("/a").await, 200);
    assert_eq!(conn.get("/a").await, 429, "burst 1 is spent");

    rewrite(&path, &file_config(&backend.url(), "127.0.0.1:0", &route("100/s", 100)));
    let r = post(&c, &format!("http://{}/admin/reload", sluice.admin_addr), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json(), serde_json::json!({"applied": true, "needs_restart": []}));

    for i in 0..5 {
        assert_eq!(
            conn.get("/a").await,
            200,
            "request {i} after the reload, on the same connection"
        );
    }
    assert!(conn.is_open(), "the reload closed the client's connection");
    assert_eq!(backend.count(), 6);

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(&text, "sluice_config_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "{text}"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_config() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "sluice.toml",
        &file_config(&backend.url(), "127.0.0.1:0", &route("1/min", 1)),
    );
    let sluice = start_sluice_from_file(&path).await;
    let c = client();
    let url = format!("http://{}/x", sluice.data_addr);
    assert_eq!(get(&c, &url).await.status, 200);

    let bad = file_config(&backend.url(), "127.0.0.1:0", &route("fast", 100));
    let rate_line = bad.lines().position(|l| l.starts_with("rate = ")).unwrap() + 1;
    rewrite(&path, &bad);
    let r = post(&c, &format!("http://{}/admin/reload", sluice.admin_addr), &[]).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["applied"], false);
    assert_eq!(v["key"], "route[0].rate", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("route[0].rate"), "{err}");
    assert!(
        err.contains(&format!(":{rate_line}:")),
        "error should name line {rate_line}: {err}"
    );

    // The old route (rate 1/min, burst 1, spent) still decides.
    let r = get(&c, &url).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=1;w=60");

    let text = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(&text, "sluice_config_reloads_total", &[("result", "error")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "sluice_config_reloads_total", &[("result", "ok")]).unwrap_or(0.0),
        0.0
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn reload_reports_restart_only_keys() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "sluice.toml",
        &file_config(&backend.url(), "127.0.0.1:0", &route("100/s", 100)),
    );
    let sluice = start_sluice_from_file(&path).await;
    let c = client();

    let moved = closed_port();
    rewrite(
        &path,
        &file_config(&backend.url(), &format!("127.0.0.1:{moved}"), &route("50/s", 50)),
    );
    let r = post(&c, &format!("http://{}/admin/reload", sluice.admin_addr), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"applied": true, "needs_restart": ["server.listen"]})
    );

    // The listener stays where it was; the rate change applied.
    let r = get(&c, &format!("http://{}/still-here", sluice.data_addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=50;w=1");
    sluice.shutdown().await;
}
