use super::*;
use http::HeaderName;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.toml", text, &Overrides::default())
}

fn invalid(text: &str) -> (usize, String, String) {
    match parse(text).unwrap_err() {
        ConfigError::Invalid { line, key, message, .. } => (line, key, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";

#[test]
fn minimal_file_takes_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.max_body, 1 << 20);
    assert_eq!(c.spool.partitions, 8);
    assert_eq!(c.spool.fsync, FsyncPolicy::Always);
    assert_eq!(c.drain.retry_on, vec![408, 429, 500, 502, 503, 504]);
    assert!(c.upstream.adaptive, "adaptive defaults to true without capacity");
    assert!(c.routes.is_empty());
}

#[test]
fn full_spec_example_parses() {
    let text = r#"
[server]
listen = "0.0.0.0:8080"
admin_listen = "0.0.0.0:9090"
max_body = "1MiB"
request_timeout = "30s"
shutdown_grace = "20s"
status_path_prefix = "/_sluice"
trusted_proxies = ["10.0.0.0/8"]

[admin]
token_file = "/etc/sluice/admin-token"

[upstream]
url = "http://127.0.0.1:3000"
capacity = "200/s"
capacity_burst = 20
max_concurrency = 64
timeout = "10s"
adaptive = true

[spool]
dir = "./sluice-spool"
partitions = 8
max_bytes = "10GiB"
segment_bytes = "64MiB"
max_record = "1MiB"
fsync = "always"
fsync_interval = "5ms"

[drain]
ordering = "partition"
max_attempts = 10
backoff_initial = "200ms"
backoff_max = "60s"
retry_on = [408, 429, 500, 502, 503, 504]
max_age = "24h"

[[route]]
name = "orders"
match = { path_prefix = "/api/orders", methods = ["POST", "PUT"] }
rate = "50/s"
burst = 100
key = "global"
max_keys = 100000
on_limit = "spool"
max_wait = "0s"
partition_key = "header:x-user-id"
ordered = true
spool_methods = ["POST", "PUT", "PATCH", "DELETE"]

[[route]]
name = "default"
match = { path_prefix = "/" }
rate = "500/s"
on_limit = "reject"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].burst, 100);
    assert_eq!(
        c.routes[0].partition_key,
        Some(KeySource::Header(HeaderName::from_static("x-user-id")))
    );
    assert_eq!(c.routes[1].burst, 500, "burst defaults to one second of rate");
    assert_eq!(c.upstream.capacity_burst, 20);
    assert_eq!(c.spool.max_bytes, 10 << 30);
}

#[test]
fn unknown_key_names_key_and_line() {
    let (line, key, msg) = invalid("[upstream]\nurl = \"http://x:1\"\n\n[server]\nlisten = \"0.0.0.0:1\"\nlisen = 3\n");
    assert_eq!(line, 6);
    assert_eq!(key, "server.lisen");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn bad_rate_in_second_route_names_it() {
    let text = format!(
        "{MINIMAL}\n[[route]]\nname = \"a\"\nrate = \"5/s\"\n\n[[route]]\nname = \"b\"\nmatch = {{ path = \"/x\" }}\nrate = \"fast\"\n"
    );
    let (line, key, msg) = invalid(&text);
    assert_eq!((line, key.as_str()), (11, "route[1].rate"));
    assert!(msg.contains("invalid rate"), "{msg}");
}

#[test]
fn wrong_type_inside_route_names_the_route_key() {
    let text = format!("{MINIMAL}\n[[route]]\nname = \"a\"\nrate = \"5/s\"\nburst = \"many\"\n");
    let (line, key, _) = invalid(&text);
    assert_eq!((line, key.as_str()), (7, "route[0].burst"));
}

#[test]
fn missing_required_key_points_at_its_table() {
    let text = format!("{MINIMAL}\n[[route]]\nname = \"a\"\n");
    let (line, key, _) = invalid(&text);
    assert_eq!(key, "route[0].rate");
    assert!(line == 4 || line == 5, "line {line}");
    let (_, key, _) = invalid("[server]\n");
    assert_eq!(key, "upstream.url");
}

#[test]
fn semantic_errors() {
    let route = |extra: &str| format!("{MINIMAL}[[route]]\nname = \"r\"\nrate = \"5/s\"\n{extra}\n");
    assert_eq!(invalid(&route("on_limit = \"wait\"")).1, "route[0].max_wait");
    assert_eq!(invalid(&route("key = \"cookie:x\"")).1, "route[0].key");
    assert_eq!(
        invalid(&route("spool_methods = [\"GET\"]")).1,
        "route[0].spool_methods[0]"
    );
    assert_eq!(invalid(&route("match = { path = \"x\" }")).1, "route[0].match.path");
    assert_eq!(invalid(&route("on_limit = \"drop\"")).1, "route[0].on_limit");
    assert_eq!(
        invalid(&format!("{MINIMAL}[[route]]\nname = \"unmatched\"\nrate = \"1/s\"\n")).1,
        "route[0].name"
    );
    let dup = format!("{MINIMAL}[[route]]\nname = \"a\"\nrate = \"1/s\"\n[[route]]\nname = \"a\"\nrate = \"1/s\"\n");
    assert_eq!(invalid(&dup).1, "route[1].name");
    assert_eq!(invalid("[upstream]\nurl = \"ftp://x\"\n").1, "upstream.url");
    // [cluster] and scope
    assert_eq!(invalid(&route("scope = \"global\"")).1, "route[0].scope");
    assert_eq!(invalid(&route("scope = \"everywhere\"")).1, "route[0].scope");
    let cluster = |extra: &str| format!("{MINIMAL}[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n{extra}\n");
    assert_eq!(
        invalid(&format!("{MINIMAL}scope = \"global\"\ncapacity = \"10/s\"\n")).1,
        "upstream.scope"
    );
    let (_, key, msg) = invalid(&cluster("").replace("[cluster]", "scope = \"global\"\n[cluster]"));
    assert_eq!(key, "upstream.scope");
    assert!(msg.contains("upstream.capacity"), "{msg}");
    assert_eq!(invalid(&cluster("timeout = \"0s\"")).1, "cluster.timeout");
    assert_eq!(invalid(&cluster("timeout = \"1m\"")).1, "cluster.timeout");
    assert_eq!(invalid(&cluster("replicas = 0")).1, "cluster.replicas");
    assert_eq!(invalid(&cluster("namespace = \"a b\"")).1, "cluster.namespace");
    assert_eq!(
        invalid(&cluster("on_store_error = \"panic\"")).1,
        "cluster.on_store_error"
    );
    assert_eq!(
        invalid(&cluster("password_file = \"/nonexistent/pw\"")).1,
        "cluster.password_file"
    );
    let (_, key, msg) = invalid(&format!("{MINIMAL}[cluster]\nredis_url = \"http://u:hunter2@x\"\n"));
    assert_eq!(key, "cluster.redis_url");
    assert!(!msg.contains("hunter2"), "the password is redacted in errors: {msg}");
    assert!(msg.contains("u:***@x"), "{msg}");
    assert_eq!(invalid("[upstream]\nurl = \"http://x/base\"\n").1, "upstream.url");
    assert_eq!(
        invalid(&format!("{MINIMAL}[spool]\nfsync = \"sometimes\"\n")).1,
        "spool.fsync"
    );
    assert_eq!(
        invalid(&format!("{MINIMAL}[server]\nmax_body = \"big\"\n")).1,
        "server.max_body"
    );
}

#[test]
fn cluster_defaults_and_redaction() {
    let c = parse(&format!(
        "{MINIMAL}scope = \"global\"\ncapacity = \"10/s\"\n[cluster]\nredis_url = \"rediss://sluice:s3cret@redis:6380/2\"\n\
         [[route]]\nname = \"r\"\nrate = \"5/s\"\nscope = \"global\"\n"
    ))
    .unwrap();
    assert_eq!(c.cluster.namespace, "sluice");
    assert_eq!(c.cluster.timeout, Duration::from_millis(50));
    assert_eq!(c.cluster.on_store_error, OnStoreError::Local);
    assert_eq!(c.upstream.scope, Scope::Global);
    assert_eq!(c.routes[0].scope, Scope::Global);
    let url = c.cluster.redis_url.as_ref().unwrap();
    assert_eq!(url.redacted(), "rediss://sluice:***@redis:6380/2");
    for shown in [format!("{c:?}"), c.describe()] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    assert!(c.describe().contains("rediss://sluice:***@redis:6380/2"));
    assert_eq!(format!("{:?}", Secret::new("pw")), "\"<redacted>\"");
    assert_eq!(RedisUrl::new("redis://host:1").redacted(), "redis://host:1");
    assert_eq!(RedisUrl::new("redis://user@host:1").redacted(), "redis://user@host:1");
    // A password with '/' (base64 ones often have it) is still hidden.
    assert_eq!(
        RedisUrl::new("redis://:abc/def@host:6379/0").redacted(),
        "redis://:***@host:6379/0"
    );
    let (_, key, msg) = invalid(&format!(
        "{MINIMAL}[cluster]\nredis_url = \"redis://:abc/def@host:6379\"\n"
    ));
    assert_eq!(key, "cluster.redis_url");
    assert!(!msg.contains("abc/def"), "{msg}");
}

#[test]
fn syntax_error_has_a_line() {
    let (line, _, _) = invalid("[upstream]\nurl = \"http://x:1\"\n[server\n");
    assert_eq!(line, 3);
}

#[test]
fn embedded_default_needs_upstream_and_takes_flags() {
    assert!(matches!(
        Config::load(None, &Overrides::default()),
        Err(ConfigError::Usage(_))
    ));
    let o = Overrides {
        upstream: Some(parse_upstream_flag("http://127.0.0.1:9").unwrap()),
        rate: Some(units::parse_rate("20/s").unwrap()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let c = Config::load(None, &o).unwrap();
    assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:9/");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].on_limit, OnLimit::Spool);
    assert_eq!(c.routes[0].burst, 20);
    assert_eq!(c.server.listen.port(), 0);
}

#[test]
fn restart_only_changes_are_reported() {
    let a = parse(MINIMAL).unwrap();
    let mut b = parse(&format!(
        "{MINIMAL}[server]\nlisten = \"127.0.0.1:1\"\n[spool]\npartitions = 4\n"
    ))
    .unwrap();
    assert_eq!(a.restart_only_changes(&b), vec!["server.listen", "spool.partitions"]);
    b.keep_restart_only(&a);
    assert!(a.restart_only_changes(&b).is_empty());
}

/// Pins what each restart-only field is reported as, in the order the
/// hand-kept lists had before they became one table.
#[test]
fn every_restart_only_field_is_reported_and_kept() {
    type Change = fn(&mut Config);
    let changes: &[(Change, &str)] = &[
        (|c| c.server.listen = "127.0.0.1:1".parse().unwrap(), "server.listen"),
        (
            |c| c.server.admin_listen = "127.0.0.1:2".parse().unwrap(),
            "server.admin_listen",
        ),
        (|c| c.server.workers = Some(3), "server.workers"),
        (
            |c| c.server.status_retention = Duration::from_secs(7),
            "server.status_retention",
        ),
        (|c| c.server.status_max_entries = 7, "server.status_retention"),
        (
            |c| {
                c.server.tls = Some(TlsConfig {
                    cert: "c.pem".into(),
                    key: "k.pem".into(),
                })
            },
            "server.tls",
        ),
        (|c| c.spool.dir = "/elsewhere".into(), "spool.dir"),
        (|c| c.spool.partitions = 3, "spool.partitions"),
        (|c| c.spool.fsync = FsyncPolicy::Never, "spool.fsync"),
        (|c| c.spool.fsync_interval = Duration::from_millis(9), "spool.fsync"),
        (|c| c.spool.segment_bytes = 1 << 21, "spool.segment_bytes"),
        (|c| c.spool.max_bytes = 1 << 31, "spool.max_bytes"),
        (
            |c| c.server.keepalive_timeout = Duration::from_secs(9),
            "server.keepalive_timeout",
        ),
        (
            |c| c.server.send_timeout = Duration::from_secs(9),
            "server.send_timeout",
        ),
        (|c| c.server.max_connections = 9, "server.max_connections"),
        (|c| c.spool.dlq_max_bytes = 1 << 20, "spool.dlq_max_bytes"),
        (
            |c| c.spool.dlq_retention = Duration::from_secs(9),
            "spool.dlq_retention",
        ),
        (|c| c.spool.max_record = 1 << 10, "spool.max_record"),
        (
            |c| c.server.max_header_bytes = 1 << 14,
            "server.max_header_bytes/max_headers/header_read_timeout",
        ),
        (
            |c| c.server.max_headers = 7,
            "server.max_header_bytes/max_headers/header_read_timeout",
        ),
        (
            |c| c.server.header_read_timeout = Duration::from_secs(7),
            "server.max_header_bytes/max_headers/header_read_timeout",
        ),
        (
            |c| c.upstream.url = "http://10.0.0.1:1".parse().unwrap(),
            "upstream.url",
        ),
        (|c| c.upstream.ca_file = Some("ca.pem".into()), "upstream.ca_file"),
        (|c| c.upstream.pool_max_idle = 7, "upstream.pool_max_idle"),
        (|c| c.admin.token_file = Some("token".into()), "admin.token_file"),
        (
            |c| c.cluster.redis_url = Some(RedisUrl::new("redis://10.0.0.1:6379")),
            "cluster.redis_url",
        ),
        (|c| c.cluster.password = Some(Secret::new("pw")), "cluster.redis_url"),
        (
            |c| c.otlp_endpoint = Some("http://otel:4318".parse().unwrap()),
            "tracing.otlp_endpoint",
        ),
        (|c| c.cluster.namespace = "other".into(), "cluster.namespace"),
        (
            |c| {
                let js = parse(&format!("{MINIMAL}[spool]\nbackend = \"jetstream\"\n")).unwrap();
                c.spool.backend = js.spool.backend;
            },
            "spool.backend",
        ),
    ];
    let running = parse(MINIMAL).unwrap();
    for (change, key) in changes {
        let mut next = running.clone();
        change(&mut next);
        assert_eq!(running.restart_only_changes(&next), vec![*key]);
        next.keep_restart_only(&running);
        assert_eq!(next, running, "{key} is kept");
    }

    let mut next = running.clone();
    for (change, _) in changes {
        change(&mut next);
    }
    next.server.max_body = 7;
    let mut expected: Vec<&str> = changes.iter().map(|c| c.1).collect();
    expected.dedup();
    assert_eq!(running.restart_only_changes(&next), expected);
    // `drain.ordering` is restart-only with JetStream only (its own test).
    expected.push("drain.ordering");
    assert_eq!(Config::restart_only_keys().collect::<Vec<_>>(), expected);
    next.keep_restart_only(&running);
    assert!(running.restart_only_changes(&next).is_empty());
    assert_eq!(next.server.max_body, 7, "reloadable keys are not kept");
}

/// README.md's reload section lists exactly the restart-only keys.
#[test]
fn readme_lists_the_restart_only_keys() {
    let readme = include_str!("../../README.md");
    let (start, end) = ("<!-- restart-only keys -->", "<!-- /restart-only keys -->");
    let from = readme.find(start).expect("README has the restart-only keys marker") + start.len();
    let to = from
        + readme[from..]
            .find(end)
            .expect("README closes the restart-only keys marker");
    // Backticked dotted names; `status_max_entries` and the like, with no
    // table prefix, are explanations, not keys.
    let listed: std::collections::BTreeSet<&str> = readme[from..to]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.contains('.') && s.chars().all(|c| c.is_ascii_lowercase() || "._/".contains(c)))
        .collect();
    let table: std::collections::BTreeSet<&str> = Config::restart_only_keys().collect();
    let missing: Vec<_> = table.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README restart-only keys: missing {missing:?}, not restart-only {extra:?}"
    );
}

#[test]
fn jetstream_backend_keys_are_validated_by_name_and_line() {
    let js = |extra: &str| format!("{MINIMAL}[spool]\nbackend = \"jetstream\"\n\n[spool.jetstream]\n{extra}\n");
    // Defaults: one local server, R=1, streams and subjects "sluice".
    let c = parse(&format!("{MINIMAL}[spool]\nbackend = \"jetstream\"\n")).unwrap();
    let j = c.spool.backend.jetstream().expect("jetstream backend");
    assert_eq!(j.servers, vec!["nats://127.0.0.1:4222".to_string()]);
    assert_eq!(
        (j.replicas, j.stream.as_str(), j.subject_prefix.as_str()),
        (1, "sluice", "sluice")
    );
    assert_eq!(j.ack_wait, Duration::from_secs(30));
    assert_eq!(c.spool.dlq_max_bytes, j.max_bytes / 10, "the DLQ stream gets a tenth");
    assert!(
        parse(MINIMAL).unwrap().spool.backend.jetstream().is_none(),
        "local is the default"
    );

    let (line, key, _) = invalid(&js("replicas = 2"));
    assert_eq!((key.as_str(), line), ("spool.jetstream.replicas", 7));
    let (_, key, msg) = invalid(&js("servers = [\"http://x:4222\"]"));
    assert_eq!(key, "spool.jetstream.servers", "{msg}");
    let (_, key, msg) = invalid(&js("servers = [\"nats://user:pw@x:4222\"]"));
    assert_eq!(key, "spool.jetstream.servers");
    assert!(
        !msg.contains("pw"),
        "credentials in a URL are refused without being echoed: {msg}"
    );
    assert_eq!(invalid(&js("servers = []")).1, "spool.jetstream.servers");
    assert_eq!(invalid(&js("stream = \"a.b\"")).1, "spool.jetstream.stream");
    assert_eq!(
        invalid(&js("subject_prefix = \"a*\"")).1,
        "spool.jetstream.subject_prefix"
    );
    assert_eq!(invalid(&js("ack_wait = \"0s\"")).1, "spool.jetstream.ack_wait");
    assert_eq!(
        invalid(&js("publish_timeout = \"soon\"")).1,
        "spool.jetstream.publish_timeout"
    );
    assert_eq!(invalid(&js("max_bytes = \"1KiB\"")).1, "spool.jetstream.max_bytes");
    assert_eq!(
        invalid(&js("token_file = \"/nonexistent/t\"")).1,
        "spool.jetstream.token_file"
    );
    assert_eq!(
        invalid(&js("password_file = \"/nonexistent/p\"")).1,
        "spool.jetstream.password_file"
    );
    assert_eq!(
        invalid(&js("ca_file = \"/nonexistent/ca.pem\"")).1,
        "spool.jetstream.ca_file"
    );
    assert_eq!(
        invalid(&js("token_file = \"/etc/hostname\"\ncreds_file = \"/etc/hostname\"")).1,
        "spool.jetstream"
    );
    // The stream must outlive what the drainer may still deliver.
    let (_, key, msg) = invalid(&format!("{}\n[drain]\nmax_age = \"8d\"\n", js("max_age = \"7d\"")));
    assert_eq!(key, "spool.jetstream.max_age");
    assert!(msg.contains("drain.max_age"), "{msg}");
    // A jetstream section without the backend is a mistake, not ignored.
    let (_, key, _) = invalid(&format!("{MINIMAL}[spool.jetstream]\nreplicas = 3\n"));
    assert_eq!(key, "spool.jetstream");
    let (_, key, _) = invalid(&format!("{MINIMAL}[spool]\nbackend = \"kafka\"\n"));
    assert_eq!(key, "spool.backend");
}

#[test]
fn jetstream_credentials_come_from_files_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let text = format!(
        "{MINIMAL}[spool]\nbackend = \"jetstream\"\n[spool.jetstream]\nuser = \"sluice\"\npassword_file = \"{}\"\n",
        pw.display()
    );
    let c = parse(&text).unwrap();
    match &c.spool.backend.jetstream().unwrap().auth {
        NatsAuth::UserPassword { user, password } => {
            assert_eq!(user, "sluice");
            assert_eq!(password.expose(), "s3cret-pw");
        }
        other => panic!("expected user/password, got {other:?}"),
    }
    assert!(!format!("{c:?}").contains("s3cret"), "Debug redacts the password");
    assert!(!c.describe().contains("s3cret"));
    let seed = dir.path().join("seed");
    std::fs::write(&seed, "not-a-seed").unwrap();
    let text = format!(
        "{MINIMAL}[spool]\nbackend = \"jetstream\"\n[spool.jetstream]\nnkey_file = \"{}\"\n",
        seed.display()
    );
    let (_, key, msg) = invalid(&text);
    assert_eq!(key, "spool.jetstream.nkey_file");
    assert!(!msg.contains("not-a-seed"), "{msg}");
}

#[test]
fn the_backend_and_with_jetstream_the_ordering_need_a_restart() {
    let js = format!("{MINIMAL}[spool]\nbackend = \"jetstream\"\n");
    let local = parse(MINIMAL).unwrap();
    let on_js = parse(&js).unwrap();
    assert!(local.restart_only_changes(&on_js).contains(&"spool.backend"));
    let unordered = parse(&format!("{js}[drain]\nordering = \"none\"\n")).unwrap();
    assert_eq!(on_js.restart_only_changes(&unordered), vec!["drain.ordering"]);
    // With the local spool, ordering still reloads.
    let local_unordered = parse(&format!("{MINIMAL}[drain]\nordering = \"none\"\n")).unwrap();
    assert!(local.restart_only_changes(&local_unordered).is_empty());
}
