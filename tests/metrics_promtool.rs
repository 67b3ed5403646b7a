//! `/metrics` passes `promtool check metrics` with no findings, after
//! traffic has produced forwarded, rejected and too_large series.
mod support;

use http::Method;
use support::*;

#[tokio::test]
async fn metrics_exposition_is_clean_under_promtool() {
    let Some(promtool) = which("promtool") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI: .ci/run installs Debian's prometheus package"
        );
        eprintln!("skipping: promtool not installed (apt-get install prometheus)");
        return;
    };
    let backend = Backend::ok().await;
    let sluice = start_sluice(&config_text(
        &backend.url(),
        "[[route]]\nname = \"api\"\nmatch = { path_prefix = \"/api\" }\nrate = \"1/min\"\nburst = 1\n",
    ))
    .await;
    let c = client();
    let api = format!("http://{}/api/x", sluice.data_addr);
    assert_eq!(get(&c, &api).await.status, 200);
    assert_eq!(get(&c, &api).await.status, 429);
    assert_eq!(get(&c, &format!("http://{}/other", sluice.data_addr)).await.status, 200);
    let r = send(
        &c,
        Method::POST,
        &format!("http://{}/other", sluice.data_addr),
        &[],
        vec![b'x'; 2 << 20],
    )
    .await;
    assert_eq!(r.status, 413);

    let body = get(&c, &format!("http://{}/metrics", sluice.admin_addr)).await.body;
    let text = String::from_utf8(body.to_vec()).unwrap();
    for needle in [
        "sluice_requests_total{decision=\"rejected\",route=\"api\"} 1",
        "sluice_requests_total{decision=\"forwarded\",route=\"unmatched\"} 1",
        "sluice_requests_total{decision=\"too_large\",route=\"unmatched\"} 1",
        "sluice_upstream_requests_total{class=\"2xx\",source=\"live\"} 2",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {findings}");
    assert!(findings.trim().is_empty(), "promtool findings: {findings}");
    sluice.shutdown().await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
