//! The access log off the request path (issue 12): lines reach
//! `log.access_file` within the flush interval and at shutdown, the file is
//! reopened on SIGUSR1, `[log] access` switches on reload, and
//! `RUST_LOG=warn` turns access lines off.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn get_path(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn write_config(dir: &Path, upstream: &str, log: &str) -> std::path::PathBuf {
    let cfg = dir.join("sluice.toml");
    std::fs::write(
        &cfg,
        config_text(
            upstream,
            &format!("[spool]\ndir = \"{}\"\n[log]\n{log}", dir.join("spool").display()),
        )
        .replace("[server]\n", "[server]\nconfig_poll_interval = \"0s\"\n"),
    )
    .unwrap();
    cfg
}

/// A backend, and a config logging JSON access lines to DIR/access.log.
async fn json_to_file() -> (Backend, tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let cfg = write_config(
        dir.path(),
        &backend.url(),
        &format!("format = \"json\"\naccess_file = \"{}\"\n", file.display()),
    );
    (backend, dir, file, cfg)
}

#[tokio::test]
async fn access_lines_reach_the_file_and_follow_logrotate() {
    let (_backend, dir, file, cfg) = json_to_file().await;
    let sluice = SluiceProcess::spawn(&["run", "--config", cfg.to_str().unwrap()]);
    for i in 0..3 {
        assert_eq!(get_path(sluice.data_addr, &format!("/one/{i}")).await, 200);
    }
    let got = eventually(Duration::from_secs(3), "three access lines", || {
        let l = lines(&file);
        async move { (l.len() == 3).then_some(l) }
    })
    .await;
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v["path"], format!("/one/{i}"));
        assert_eq!(v["status"], 200);
        assert_eq!(v["decision"], "forwarded");
        assert_eq!(v["route"], "unmatched");
        assert_eq!(v["client"], "127.0.0.1");
        assert!(v["duration_ms"].as_f64().is_some());
    }
    // Access lines only: the process's own log stays on stderr.
    assert!(got.iter().all(|v| v["target"] == "sluice::access"));
    // logrotate: move the file, SIGUSR1, and new lines go to a new file.
    std::fs::rename(&file, dir.path().join("access.log.1")).unwrap();
    sluice.signal(libc::SIGUSR1);
    eventually(Duration::from_secs(3), "a fresh access.log after SIGUSR1", || {
        let addr = sluice.data_addr;
        let file = file.clone();
        async move {
            get_path(addr, "/two").await;
            lines(&file).iter().any(|v| v["path"] == "/two").then_some(())
        }
    })
    .await;
    assert_eq!(
        lines(&dir.path().join("access.log.1")).len(),
        3,
        "the rotated file kept its lines"
    );
}

#[tokio::test]
async fn access_switches_on_reload_and_lines_are_flushed_at_shutdown() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let log = |on: bool| {
        format!(
            "access = {on}\nformat = \"json\"\naccess_file = \"{}\"\n",
            file.display()
        )
    };
    let cfg = write_config(dir.path(), &backend.url(), &log(false));
    let mut sluice = SluiceProcess::spawn(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(get_path(sluice.data_addr, "/off").await, 200);
    write_config(dir.path(), &backend.url(), &log(true));
    sluice.signal(libc::SIGHUP);
    eventually(Duration::from_secs(3), "the reload turned the access log on", || {
        let addr = sluice.data_addr;
        let file = file.clone();
        async move {
            get_path(addr, "/on").await;
            (!lines(&file).is_empty()).then_some(())
        }
    })
    .await;
    for i in 0..5 {
        get_path(sluice.data_addr, &format!("/last/{i}")).await;
    }
    sluice.signal(libc::SIGTERM);
    assert!(sluice.wait_exit(Duration::from_secs(10)).success());
    let all = lines(&file);
    assert!(all.iter().all(|v| v["path"] != "/off"), "access = false logged nothing");
    for i in 0..5 {
        assert!(
            all.iter().any(|v| v["path"] == format!("/last/{i}")),
            "/last/{i} was written before exit"
        );
    }
}

#[tokio::test]
async fn rust_log_warn_turns_access_lines_off() {
    let (_backend, _dir, file, cfg) = json_to_file().await;
    let cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    let mut sluice = SluiceProcess::spawn_command_env(
        cmd,
        &["run", "--config", cfg.to_str().unwrap()],
        "warn,sluice::app=info",
    );
    for i in 0..5 {
        assert_eq!(get_path(sluice.data_addr, &format!("/quiet/{i}")).await, 200);
    }
    sluice.signal(libc::SIGTERM);
    assert!(sluice.wait_exit(Duration::from_secs(10)).success());
    // Flushed at shutdown, so anything logged would be there by now.
    assert!(lines(&file).is_empty(), "{:?}", lines(&file));
}
