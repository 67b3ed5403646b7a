//! sluice follows its config file: an edit, and Kubernetes' atomic swap of
//! a mounted ConfigMap (`sluice.toml -> ..data/sluice.toml`, `..data ->
//! ..<timestamp>`), are reloaded without a signal; a bad new file is
//! refused and the old config keeps serving.
mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;
use support::*;

fn config(upstream: &str, rate: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nconfig_poll_interval = \"50ms\"\n\
         [upstream]\nurl = \"{upstream}\"\n\
         [[route]]\nname = \"api\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"{rate}\"\non_limit = \"reject\"\n"
    )
}

/// Publishes `text` the way the kubelet does: a new timestamped directory,
/// then `..data` swapped to it with a rename.
fn publish(dir: &Path, generation: u32, text: &str) {
    let version = dir.join(format!("..2026_11_25_{generation}"));
    std::fs::create_dir(&version).unwrap();
    std::fs::write(version.join("sluice.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

async fn policy(c: &TestClient, addr: std::net::SocketAddr) -> String {
    get(c, &format!("http://{addr}/x"))
        .await
        .header("ratelimit-policy")
        .to_string()
}

#[tokio::test]
async fn a_configmap_swap_is_reloaded_and_a_bad_one_refused() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), 1, &config(&backend.url(), "100/s"));
    symlink("..data/sluice.toml", dir.path().join("sluice.toml")).unwrap();
    let sluice = start_sluice_from_file(&dir.path().join("sluice.toml")).await;
    let c = client();
    assert_eq!(policy(&c, sluice.data_addr).await, "\"api\";q=100;w=1");

    publish(dir.path(), 2, &config(&backend.url(), "7/s"));
    eventually(Duration::from_secs(10), "the swapped ConfigMap is applied", || async {
        (policy(&c, sluice.data_addr).await == "\"api\";q=7;w=1").then_some(())
    })
    .await;
    let m = metrics_text(&c, sluice.admin_addr).await;
    assert_eq!(
        metric_value(&m, "sluice_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );

    publish(dir.path(), 3, "[server\nthis is not toml");
    eventually(
        Duration::from_secs(10),
        "the bad file is refused and counted",
        || async {
            let m = metrics_text(&c, sluice.admin_addr).await;
            (metric_value(&m, "sluice_config_reloads_total", &[("result", "error")]) == Some(1.0)).then_some(())
        },
    )
    .await;
    assert_eq!(
        policy(&c, sluice.data_addr).await,
        "\"api\";q=7;w=1",
        "the old config keeps serving"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn an_edit_in_place_is_reloaded() {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(&backend.url(), "100/s")).unwrap();
    let sluice = start_sluice_from_file(&path).await;
    let c = client();
    // Editors replace the file by rename; some write in place. Do the
    // latter: same inode, new contents and length.
    std::fs::write(&path, config(&backend.url(), "12/min")).unwrap();
    eventually(Duration::from_secs(10), "the edited file is applied", || async {
        (policy(&c, sluice.data_addr).await == "\"api\";q=12;w=60").then_some(())
    })
    .await;
    sluice.shutdown().await;
}
