//! `[tracing] otlp_endpoint`: replay attempts exported as OTLP/HTTP JSON
//! spans to a small receiver inside the test. The exported span's parent
//! is the client's span, its id is the parent id the backend saw, and so
//! across a restart too.
//!
//! It runs on both spools (local and JetStream).

#[macro_use]
mod support;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A minimal OTLP/HTTP receiver: keeps every span it is sent (JSON).
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s2, p2) = (spans.clone(), paths.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (spans, paths) = (s2.clone(), p2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (spans, paths) = (spans.clone(), paths.clone());
                    async move {
                        paths.lock().unwrap().push(req.uri().path().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                                for span in ss["spans"].as_array().into_iter().flatten() {
                                    spans.lock().unwrap().push(span.clone());
                                }
                            }
                        }
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Receiver {
        url: format!("http://{addr}"),
        spans,
        paths,
    }
}

fn span_with_id(r: &Receiver, span_id: &str) -> Option<serde_json::Value> {
    r.spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| s["spanId"].as_str().is_some_and(|id| id.eq_ignore_ascii_case(span_id)))
        .cloned()
}

async fn the_exported_replay_span_is_the_clients_child_and_the_backends_parent(kind: SpoolKind) {
    let otlp = receiver().await;
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &backend.url(),
        &format!(
            "[spool]\ndir = \"{}\"\n[tracing]\notlp_endpoint = \"{}\"\n\n\
             [[route]]\nname = \"orders\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
            dir.path().join("spool").display(),
            otlp.url
        ),
    );
    let text = kind.config(&text);
    let sluice = start_sluice(&text).await;
    let c = client();
    let url = format!("http://{}/orders", sluice.data_addr);
    let tp = [("traceparent", CLIENT)];
    assert_eq!(send(&c, Method::POST, &url, &tp, Bytes::new()).await.status, 200);
    assert_eq!(send(&c, Method::POST, &url, &tp, Bytes::new()).await.status, 202);
    let b = &backend;
    eventually(Duration::from_secs(10), "the replay", || async move {
        (b.count() == 2).then_some(())
    })
    .await;
    let sent = seen_header(&backend.last(), "traceparent").unwrap().to_string();
    let attempt_span = sent.split('-').nth(2).unwrap().to_string();
    let r = &otlp;
    let span = eventually(Duration::from_secs(10), "the exported span", || {
        let id = attempt_span.clone();
        async move { span_with_id(r, &id) }
    })
    .await;
    assert_eq!(span["traceId"].as_str().unwrap().to_lowercase(), TRACE, "{span}");
    assert_eq!(
        span["parentSpanId"].as_str().unwrap().to_lowercase(),
        CLIENT_SPAN,
        "the client's span is the parent: {span}"
    );
    assert_eq!(span["name"], "sluice replay");
    assert!(otlp.paths.lock().unwrap().iter().all(|p| p == "/v1/traces"));

    // Across a restart: spooled with replay paused, replayed and exported
    // by the next process.
    assert_eq!(
        admin_post(&c, sluice.admin_addr, "/admin/drain/pause").await.status,
        200
    );
    assert_eq!(send(&c, Method::POST, &url, &tp, Bytes::new()).await.status, 202);
    sluice.shutdown().await;
    let sluice = start_sluice(&text).await;
    // A JetStream pause is the fleet's and outlives a restart; the local
    // one ends with its process. Resumed either way.
    assert_eq!(
        admin_post(&c, sluice.admin_addr, "/admin/drain/resume").await.status,
        200
    );
    eventually(Duration::from_secs(10), "the replay after the restart", || async move {
        (b.count() == 3).then_some(())
    })
    .await;
    let sent = seen_header(&backend.last(), "traceparent").unwrap().to_string();
    let attempt_span = sent.split('-').nth(2).unwrap().to_string();
    let span = eventually(Duration::from_secs(10), "the span from the second process", || {
        let id = attempt_span.clone();
        async move { span_with_id(r, &id) }
    })
    .await;
    assert_eq!(span["traceId"].as_str().unwrap().to_lowercase(), TRACE);
    assert_eq!(span["parentSpanId"].as_str().unwrap().to_lowercase(), CLIENT_SPAN);
    sluice.shutdown().await;
}

on_both_spools!(the_exported_replay_span_is_the_clients_child_and_the_backends_parent);
