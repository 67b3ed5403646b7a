//! `[drain.signing]`: replays carry Standard Webhooks headers that an
//! independent implementation (PyPI's `standardwebhooks`, which `.ci/run`
//! installs) and a verifier written here both accept, under either key of
//! a rotation; a tampered body is refused.
//!
//! The end-to-end case runs on both spools (local and JetStream).

#[macro_use]
mod support;

use base64::Engine;
use bytes::Bytes;
use http::Method;
use std::time::Duration;
use support::*;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_bmV3LWtleS1mb3Itcm90YXRpb24tMDEyMzQ1Njc4OQ==";

/// Runs the Python library's verifier; `Ok` when it accepts.
fn python_verifies(secret: &str, body: &[u8], seen: &Seen) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, body).unwrap();
    let header = |n: &str| seen_header(seen, n).unwrap_or_default().to_string();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from standardwebhooks.webhooks import Webhook\n\
             body = open(sys.argv[2], 'rb').read()\n\
             Webhook(sys.argv[1]).verify(body, {'webhook-id': sys.argv[3], 'webhook-timestamp': sys.argv[4], \
             'webhook-signature': sys.argv[5]}, json_parse=False)\n",
        )
        .arg(secret)
        .arg(&body_path)
        .arg(header("webhook-id"))
        .arg(header("webhook-timestamp"))
        .arg(header("webhook-signature"))
        .output()
        .expect("python3 with standardwebhooks (pip install standardwebhooks; .ci/run does)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A verifier of our own: HMAC-SHA256 over "id.timestamp.body" with the
/// base64 key after `whsec_`, compared with each `v1,` signature.
fn own_verifier_accepts(secret: &str, body: &[u8], seen: &Seen) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signed = format!(
        "{}.{}.",
        seen_header(seen, "webhook-id").unwrap(),
        seen_header(seen, "webhook-timestamp").unwrap()
    );
    let mut msg = signed.into_bytes();
    msg.extend_from_slice(body);
    seen_header(seen, "webhook-signature")
        .unwrap()
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .any(|tag| ring::hmac::verify(&key, &msg, &tag).is_ok())
}

async fn replays_are_signed_with_both_keys_of_a_rotation_and_verify_independently(kind: SpoolKind) {
    let backend = Backend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write_file(dir.path(), "webhook-secrets", &format!("{OLD}\n{NEW}\n"));
    let text = config_text(
        &backend.url(),
        &format!(
            "[drain.signing]\nsecret_file = \"{}\"\n\n\
             [[route]]\nname = \"hooks\"\nmatch = {{ path_prefix = \"/\" }}\nrate = \"1/m\"\nburst = 1\non_limit = \"spool\"\n",
            secrets.display()
        ),
    );
    let sluice = start_sluice_on(kind, &text).await;
    let c = client();
    let url = format!("http://{}/hooks", sluice.data_addr);
    let body = br#"{"event":"order.paid","amount":4200}"#;
    let live = send(&c, Method::POST, &url, &[], Bytes::from_static(body)).await;
    assert_eq!(live.status, 200);
    assert_eq!(
        seen_header(&backend.last(), "webhook-signature"),
        None,
        "a live request is the client's own"
    );
    let spooled = send(&c, Method::POST, &url, &[], Bytes::from_static(body)).await;
    assert_eq!(spooled.status, 202);
    let id = spooled.header("sluice-id").to_string();
    let b = &backend;
    eventually(Duration::from_secs(10), "the replay", || async move {
        (b.count() == 2).then_some(())
    })
    .await;
    let seen = backend.last();
    assert_eq!(
        seen_header(&seen, "webhook-id"),
        Some(id.as_str()),
        "webhook-id is the Sluice-Id"
    );
    let ts: u64 = seen_header(&seen, "webhook-timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 60, "the attempt's time");
    assert_eq!(
        seen_header(&seen, "webhook-signature").unwrap().split(' ').count(),
        2,
        "one signature per key while rotating"
    );
    for secret in [OLD, NEW] {
        python_verifies(secret, &seen.body, &seen).unwrap_or_else(|e| panic!("standardwebhooks refused: {e}"));
        assert!(own_verifier_accepts(secret, &seen.body, &seen));
    }
    // The checks can fail: a changed body or another key is refused.
    let tampered = br#"{"event":"order.paid","amount":1}"#;
    assert!(python_verifies(OLD, tampered, &seen).is_err());
    assert!(!own_verifier_accepts(OLD, tampered, &seen));
    assert!(!own_verifier_accepts("whsec_c29tZW9uZS1lbHNl", &seen.body, &seen));
}

#[test]
fn a_bad_secret_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(dir.path(), "s", "not-a-secret\n");
    let text = config_text(
        "http://127.0.0.1:1",
        &format!("[drain.signing]\nsecret_file = \"{}\"\n", bad.display()),
    );
    let err = sluice::config::Config::parse("t.toml", &text, &Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("drain.signing.secret_file"), "{msg}");
    assert!(msg.contains("whsec_"), "{msg}");
}

on_both_spools!(replays_are_signed_with_both_keys_of_a_rotation_and_verify_independently,);
