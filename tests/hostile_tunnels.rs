//! Upgraded connections (WebSocket) stay under the connection's limits:
//! a tunnel holds its slot under `server.max_connections`, is closed when
//! idle past `keepalive_timeout` (and not by the request-head timer while
//! it carries traffic), and is closed at shutdown.

mod support;

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: std::net::SocketAddr) -> Ws {
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{addr}/socket")),
    )
    .await
    .expect("handshake in time")
    .expect("websocket handshake through sluice");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_string())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("frame");
    assert_eq!(got, Message::Text(text.to_string()));
}

const ROUTE: &str = "[[route]]\nname = \"all\"\nmatch = { path_prefix = \"/\" }\nrate = \"1000/s\"\n";

#[tokio::test]
async fn a_tunnel_holds_its_connection_slot() {
    let backend = ws_echo_backend().await;
    let text = config_text(&backend, ROUTE).replace(
        "admin_listen = \"127.0.0.1:0\"\n",
        "admin_listen = \"127.0.0.1:0\"\nmax_connections = 2\n",
    );
    let sluice = start_sluice(&text).await;
    let mut a = open(sluice.data_addr).await;
    let mut b = open(sluice.data_addr).await;
    echo(&mut a, "a").await;
    echo(&mut b, "b").await;
    // Both slots are the tunnels': a third connection is closed at once.
    let c = client();
    let url = format!("http://{}/x", sluice.data_addr);
    assert!(
        try_send(&c, http::Method::GET, &url, &[], bytes::Bytes::new())
            .await
            .is_err(),
        "max_connections counts the tunnels"
    );
    a.close(None).await.unwrap();
    drop(a);
    eventually(Duration::from_secs(5), "a slot freed by the closed tunnel", || {
        let (c, url) = (client(), url.clone());
        async move {
            try_send(&c, http::Method::GET, &url, &[], bytes::Bytes::new())
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    echo(&mut b, "still here").await;
    sluice.shutdown().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_a_busy_one_is_not_and_shutdown_closes_them() {
    let backend = ws_echo_backend().await;
    let text = config_text(&backend, ROUTE).replace(
        "admin_listen = \"127.0.0.1:0\"\n",
        "admin_listen = \"127.0.0.1:0\"\nkeepalive_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n",
    );
    let sluice = start_sluice(&text).await;

    // Busy for 3 s, past both 1 s timers: still open.
    let mut busy = open(sluice.data_addr).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        echo(&mut busy, "tick").await;
        tokio::time::sleep(Duration::from_millis(250)).await; // traffic pacing, not waiting on a condition
    }

    // Idle: closed by sluice within keepalive_timeout and a watchdog tick.
    let mut idle = open(sluice.data_addr).await;
    echo(&mut idle, "once").await;
    let quiet = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), idle.next()).await;
    assert!(end.is_ok(), "the idle tunnel was not closed within 10 s");
    assert!(!matches!(end, Ok(Some(Ok(Message::Text(_))))), "closed, not echoed");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "not before keepalive_timeout: {:?}",
        quiet.elapsed()
    );

    // Shutdown closes the busy one (it would otherwise hold the grace).
    let t = Instant::now();
    sluice.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?}",
        t.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), busy.next()).await;
    // Ended: closed, reset or a close frame; not still open (a timeout).
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_))))),
        "the tunnel is closed at shutdown: {end:?}"
    );
}
