//! The real binary: `sluice check`, `sluice run` usage errors, and the
//! signal lifecycle (SIGTERM drains in-flight requests, SIGHUP reloads).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .output()
        .expect("run sluice")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
url = "http://127.0.0.1:3000"

[[route]]
name = "orders"
match = { path_prefix = "/api/orders", methods = ["POST", "PUT"] }
rate = "50/s"
burst = 100
on_limit = "reject"

[[route]]
name = "everything-else"
match = { path_prefix = "/" }
rate = "500/s"
"#;

#[test]
fn check_on_a_broken_file_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let broken = GOOD.replace("rate = \"500/s\"", "rate = \"fast\"");
    let line = broken.lines().position(|l| l == "rate = \"fast\"").unwrap() + 1;
    let path = write_file(dir.path(), "broken.toml", &broken);
    let out = sluice(&["check", "-c", path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(path.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains(&format!(":{line}:")), "names line {line}: {err}");
    assert!(err.contains("route[1].rate"), "names the key: {err}");

    // An unknown key (deny_unknown_fields) is named with its line too.
    let unknown = GOOD.replace("burst = 100", "burst = 100\nbrust = 5");
    let line = unknown.lines().position(|l| l == "brust = 5").unwrap() + 1;
    let path = write_file(dir.path(), "unknown.toml", &unknown);
    let out = sluice(&["check", "-c", path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains(&format!("unknown.toml:{line}:")),
        "names file and line {line}: {err}"
    );
    assert!(err.contains("brust"), "names the key: {err}");
}

#[test]
fn check_on_a_good_file_prints_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "good.toml", GOOD);
    let out = sluice(&["check", "-c", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let orders = stdout
        .find("orders")
        .unwrap_or_else(|| panic!("route orders listed: {stdout}"));
    let rest = stdout
        .find("everything-else")
        .unwrap_or_else(|| panic!("route everything-else listed: {stdout}"));
    assert!(orders < rest, "routes are listed in file order: {stdout}");
    assert!(
        stdout.contains("50/s") && stdout.contains("500/s"),
        "rates are shown: {stdout}"
    );
}

#[test]
fn run_without_config_or_upstream_is_a_usage_error() {
    let out = sluice(&["run"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("--upstream"), "says what to pass: {err}");
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no config/*.toml found in {}", dir.display());
    for f in files {
        let out = sluice(&["check", "-c", f.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{} fails sluice check: {err}", f.display());
    }
}

/// GET that reports a refused or dropped connection as `None` instead of
/// panicking.
async fn try_get(url: &str) -> Option<http::StatusCode> {
    let c = client();
    let req = http::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            Some(status)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let backend = slow_backend(Duration::from_secs(1)).await;
    let spool = tempfile::tempdir().unwrap();
    let url = backend.url();
    let mut proc = SluiceProcess::spawn(&[
        "run",
        "--upstream",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let data = proc.data_addr;
    let admin = proc.admin_addr;
    assert_eq!(
        try_get(&format!("http://{admin}/readyz")).await,
        Some(http::StatusCode::OK)
    );

    let in_flight = tokio::spawn(async move {
        let c = client();
        get(&c, &format!("http://{data}/slow")).await
    });
    eventually(Duration::from_secs(5), "the backend has the slow request", || async {
        (backend.count() == 1).then_some(())
    })
    .await;

    proc.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(3),
        "/readyz turns 503 (or the admin port closes)",
        || async {
            match try_get(&format!("http://{admin}/readyz")).await {
                Some(s) if s == http::StatusCode::SERVICE_UNAVAILABLE => Some(()),
                None => Some(()),
                Some(_) => None,
            }
        },
    )
    .await;
    eventually(Duration::from_secs(3), "the data port stops accepting", || async {
        tokio::net::TcpStream::connect(data).await.is_err().then_some(())
    })
    .await;

    let r = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request finished")
        .unwrap();
    assert_eq!(r.status, 200, "the in-flight request was answered by the backend");
    assert_eq!(r.body, "slow");

    let status = tokio::task::spawn_blocking(move || {
        let st = proc.wait_exit(Duration::from_secs(10));
        (st, proc)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0), "sluice exits 0 after SIGTERM");
}

/// A config for the reload tests: one route at `rate`, the file watched
/// every `poll`.
fn reload_config(backend: &Backend, dir: &Path, rate: &str, poll: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nconfig_poll_interval = \"{poll}\"\n\n\
         [upstream]\nurl = \"{}\"\n\n[spool]\ndir = \"{}\"\n\n\
         [[route]]\nname = \"api\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"{rate}\"\n",
        backend.url(),
        dir.join("spool").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_changed_file() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |rate: &str| reload_config(&backend, dir.path(), rate, "2s");
    let path = write_file(dir.path(), "sluice.toml", &config("10/s"));
    let proc = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);
    let c = client();
    let r = get(&c, &format!("http://{}/", proc.data_addr)).await;
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=10;w=1");

    std::fs::write(&path, config("20/s")).unwrap();
    proc.signal(libc::SIGHUP);
    let admin = proc.admin_addr;
    eventually(
        Duration::from_secs(5),
        "sluice_config_reloads_total{result=\"ok\"} 1",
        || {
            let c = c.clone();
            async move {
                let text = metrics_text(&c, admin).await;
                (metric_value(&text, "sluice_config_reloads_total", &[("result", "ok")]) == Some(1.0)).then_some(())
            }
        },
    )
    .await;
    let r = get(&c, &format!("http://{}/", proc.data_addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=20;w=1", "the new rate applies");
}

/// One change is loaded once: the file watcher compares with what any
/// reload last read, so a change SIGHUP already took is not reloaded
/// again on the watcher's next tick. (The watcher may take the change
/// before the signal is handled; it must not take it after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_taken_by_sighup_is_not_reloaded_again_by_the_watcher() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |rate: &str| reload_config(&backend, dir.path(), rate, "20ms");
    let path = write_file(dir.path(), "sluice.toml", &config("10/s"));
    let proc = SluiceProcess::spawn(&["run", "-c", path.to_str().unwrap()]);
    let c = client();
    let lines = proc.stderr_lines.clone();
    // Watcher reloads logged after the signal's reload.
    let watcher_reloads_after_sighup = move || {
        let lines = lines.lock().unwrap();
        let hup = lines.iter().position(|l| l.contains("SIGHUP received"))?;
        let after = &lines[hup..];
        after.iter().any(|l| l.contains("config reloaded")).then(|| {
            after
                .iter()
                .filter(|l| l.contains("config file changed: reloading"))
                .count()
        })
    };
    std::fs::write(&path, config("20/s")).unwrap();
    proc.signal(libc::SIGHUP);
    let check = watcher_reloads_after_sighup.clone();
    eventually(Duration::from_secs(5), "the SIGHUP reload", || {
        let n = check();
        async move { n }
    })
    .await;
    // Fifteen watcher ticks: none may reload the change again.
    let window = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < window {
        assert_eq!(
            watcher_reloads_after_sighup(),
            Some(0),
            "the same change was reloaded twice"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A later change is still the watcher's to take.
    std::fs::write(&path, config("30/s")).unwrap();
    let check = watcher_reloads_after_sighup.clone();
    eventually(Duration::from_secs(5), "the watcher's reload", || {
        let n = check();
        async move { (n == Some(1)).then_some(()) }
    })
    .await;
    let r = get(&c, &format!("http://{}/", proc.data_addr)).await;
    assert_eq!(r.header("ratelimit-policy"), "\"api\";q=30;w=1");
}

#[test]
fn check_warns_when_the_spool_cannot_fit_its_quota() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("s.toml");
    let spool = d.path().join("spool");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[spool]\ndir = \"{}\"\nmax_bytes = \"1000TiB\"\nsegment_bytes = \"1GiB\"\n",
            spool.display()
        ),
    )
    .unwrap();
    let out = sluice(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("warning: spool.max_bytes"), "{err}");
    assert!(err.contains("filesystem"), "{err}");
    // A quota of under four segments is warned about too.
    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[spool]\nmax_bytes = \"128MiB\"\nsegment_bytes = \"64MiB\"\n",
    )
    .unwrap();
    let err = text(&sluice(&["check", "--config", cfg.to_str().unwrap()]).stderr);
    assert!(err.contains("fewer than 4 segments"), "{err}");
}

#[test]
fn check_names_a_bad_dead_letter_bound() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[spool]\nmax_bytes = \"1GiB\"\ndlq_max_bytes = \"2GiB\"\n",
    )
    .unwrap();
    let out = sluice(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("s.toml:5: spool.dlq_max_bytes"), "{err}");
}
