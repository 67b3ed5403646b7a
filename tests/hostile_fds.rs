//! 1,100 connections that send nothing, against a sluice started with the
//! 1,024 soft file limit common in containers, don't make every request
//! fail with EMFILE (issue 11, defect 5): sluice raises the soft limit to
//! the hard one at start, and closes silent connections at
//! header_read_timeout. One test in this binary: it needs the descriptors.

mod support;

use std::os::unix::process::CommandExt;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_under_a_1024_file_limit_do_not_starve_clients() {
    let mut own = nofile();
    if own.rlim_max < 4096 {
        // Nothing to show: the hard limit itself is too low for this test's
        // own 1,100 sockets. Say so rather than pass.
        panic!(
            "hard RLIMIT_NOFILE {} is below 4096; this test needs room for 1,100 sockets",
            own.rlim_max
        );
    }
    own.rlim_cur = own.rlim_max;
    // SAFETY: raising our own soft limit to the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &own) }, 0);

    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    let text = config_text(
        &backend.url(),
        &format!("[spool]\ndir = \"{}\"\n", dir.path().join("spool").display()),
    )
    .replace("[server]\n", "[server]\nheader_read_timeout = \"2s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let hard = own.rlim_max;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let sluice = SluiceProcess::spawn_command(cmd, &["run", "--config", cfg.to_str().unwrap()]);
    let raised = sluice
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("RLIMIT_NOFILE"))
        .cloned()
        .expect("the limit is logged at start");
    let v: serde_json::Value = serde_json::from_str(&raised).unwrap();
    assert_eq!(v["from"].as_u64(), Some(1024), "{raised}");
    assert_eq!(v["to"].as_u64(), Some(hard), "{raised}");

    let mut silent = Vec::new();
    for _ in 0..1100 {
        silent.push(TcpStream::connect(sluice.data_addr).await.unwrap());
    }
    // While they sit there, a real client is served…
    let ask = || async {
        let mut s = TcpStream::connect(sluice.data_addr).await.ok()?;
        s.write_all(b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .ok()?
            .ok()?;
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200").then_some(())
    };
    assert!(
        ask().await.is_some(),
        "a client is served beside 1,100 silent connections"
    );
    // …and the silent ones are closed at header_read_timeout.
    let mut closed = 0;
    for s in &mut silent {
        let mut b = [0u8; 8];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1100);
    assert!(ask().await.is_some());
}
