//! W3C trace context through the spool: each replay attempt carries the
//! client's trace id under a span of its own (a new parent id), across a
//! restart too, and the access log names the trace.
//!
//! The replay case runs on both spools (local and JetStream).

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// (trace id, parent id, flags) of a `traceparent` the backend saw.
fn parts(s: &Seen) -> (String, String, String) {
    let v = seen_header(s, "traceparent").expect("a traceparent");
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "{v}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

async fn each_replay_attempt_is_a_span_under_the_clients_across_a_restart_too(kind: SpoolKind) {
    // The first replay attempt gets 503, the next 200.
    let replays = Arc::new(AtomicU32::new(0));
    let r2 = replays.clone();
    let backend = Backend::start(Arc::new(move |s: Seen| {
        let replays = r2.clone();
        Box::pin(async move {
            let status = if s.headers.contains_key("sluice-id") && replays.fetch_add(1, Ordering::SeqCst) == 0 {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::new()))
                .unwrap()
        })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &backend.url(),
        &format!(
            "[spool]\ndir = \"{}\"\n[drain]\nbackoff_initial = \"50ms\"\nbackoff_max = \"50ms\"\n\
             [[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
            dir.path().join("spool").display(),
        ),
    );
    let text = kind.config(&text);
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    let tp = [("traceparent", CLIENT)];
    assert_eq!(send(&c, Method::POST, &url, &tp, Bytes::new()).await.status, 200);
    assert_eq!(
        seen_header(&backend.last(), "traceparent"),
        Some(CLIENT),
        "a live request is forwarded as it came"
    );
    assert_eq!(send(&c, Method::POST, &url, &tp, Bytes::new()).await.status, 202);
    let b = &backend;
    eventually(Duration::from_secs(10), "two replay attempts", || async move {
        (b.count() == 3).then_some(())
    })
    .await;
    let seen = backend.seen.lock().unwrap().clone();
    let (a1, a2) = (parts(&seen[1]), parts(&seen[2]));
    for a in [&a1, &a2] {
        assert_eq!(a.0, TRACE, "the client's trace");
        assert_ne!(a.1, "00f067aa0ba902b7", "a span of ours, not the client's");
        assert_eq!(a.2, "01", "the client's flags");
    }
    assert_ne!(a1.1, a2.1, "each attempt its own span");

    // Across a restart: spooled while replay is paused, replayed by the
    // next process, still under the client's trace.
    assert_eq!(
        admin_post(&c, sluice.admin_addr, "/admin/drain/pause").await.status,
        200
    );
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    assert_eq!(
        send(&c, Method::POST, &url, &[("traceparent", other)], Bytes::new())
            .await
            .status,
        202
    );
    sluice.shutdown().await;
    let n = backend.count();
    let sluice = start_sluice(&text).await;
    // A JetStream pause is the fleet's and outlives a restart; the local
    // one ends with its process. Resumed either way.
    assert_eq!(
        admin_post(&c, sluice.admin_addr, "/admin/drain/resume").await.status,
        200
    );
    eventually(Duration::from_secs(10), "the replay after the restart", || async move {
        (b.count() == n + 1).then_some(())
    })
    .await;
    let (trace, span, flags) = parts(&backend.last());
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(span, "b7ad6b7169203331");
    assert_eq!(flags, "00");
    sluice.shutdown().await;
}

/// The access log (a real process: the log is wired to its subscriber)
/// names the trace of a request that has one, and only then.
#[tokio::test]
async fn the_access_log_names_the_trace() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = write_file(
        dir.path(),
        "sluice.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n\
             [spool]\ndir = \"{}\"\n[log]\nformat = \"json\"\naccess_file = \"{}\"\n",
            backend.url(),
            dir.path().join("spool").display(),
            log.display()
        ),
    );
    let p = SluiceProcess::spawn(&["run", "-c", cfg.to_str().unwrap()]);
    let c = client();
    let url = format!("http://{}/x", p.data_addr);
    send(&c, Method::GET, &url, &[("traceparent", CLIENT)], Bytes::new()).await;
    send(&c, Method::GET, &url, &[], Bytes::new()).await;
    let lines = eventually(Duration::from_secs(5), "two access lines", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.lines().count() >= 2).then_some(text)
        }
    })
    .await;
    let v: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v[0]["trace_id"], TRACE, "{}", v[0]);
    assert!(v[1].get("trace_id").is_none(), "no traceparent, no trace: {}", v[1]);
}

on_both_spools!(each_replay_attempt_is_a_span_under_the_clients_across_a_restart_too);
