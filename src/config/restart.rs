//! The keys a reload can't change: one table, read both to report them
//! (`needs_restart`) and to keep their running values, so the two can't
//! drift apart. README.md lists the same keys (a test checks it).
//!
//! Some keys stand for more than one field: a change of either is reported
//! under the one name, and both are kept.

use super::Config;

/// A restart-only key: the name `needs_restart` reports, whether it
/// differs between two configs, and how to keep the running value.
struct RestartOnly {
    key: &'static str,
    differs: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

/// In the order `restart_only_changes` reports them.
static RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "server.listen",
        differs: |a, b| a.server.listen != b.server.listen,
        keep: |new, run| new.server.listen = run.server.listen,
    },
    RestartOnly {
        key: "server.admin_listen",
        differs: |a, b| a.server.admin_listen != b.server.admin_listen,
        keep: |new, run| new.server.admin_listen = run.server.admin_listen,
    },
    RestartOnly {
        key: "server.workers",
        differs: |a, b| a.server.workers != b.server.workers,
        keep: |new, run| new.server.workers = run.server.workers,
    },
    // The outcome store is sized once, at open.
    RestartOnly {
        key: "server.status_retention",
        differs: |a, b| {
            a.server.status_retention != b.server.status_retention
                || a.server.status_max_entries != b.server.status_max_entries
        },
        keep: |new, run| {
            new.server.status_retention = run.server.status_retention;
            new.server.status_max_entries = run.server.status_max_entries;
        },
    },
    RestartOnly {
        key: "server.tls",
        differs: |a, b| a.server.tls != b.server.tls,
        keep: |new, run| new.server.tls = run.server.tls.clone(),
    },
    RestartOnly {
        key: "spool.dir",
        differs: |a, b| a.spool.dir != b.spool.dir,
        keep: |new, run| new.spool.dir = run.spool.dir.clone(),
    },
    RestartOnly {
        key: "spool.partitions",
        differs: |a, b| a.spool.partitions != b.spool.partitions,
        keep: |new, run| new.spool.partitions = run.spool.partitions,
    },
    RestartOnly {
        key: "spool.fsync",
        differs: |a, b| a.spool.fsync != b.spool.fsync || a.spool.fsync_interval != b.spool.fsync_interval,
        keep: |new, run| {
            new.spool.fsync = run.spool.fsync;
            new.spool.fsync_interval = run.spool.fsync_interval;
        },
    },
    RestartOnly {
        key: "spool.segment_bytes",
        differs: |a, b| a.spool.segment_bytes != b.spool.segment_bytes,
        keep: |new, run| new.spool.segment_bytes = run.spool.segment_bytes,
    },
    RestartOnly {
        key: "spool.max_bytes",
        differs: |a, b| a.spool.max_bytes != b.spool.max_bytes,
        keep: |new, run| new.spool.max_bytes = run.spool.max_bytes,
    },
    RestartOnly {
        key: "server.keepalive_timeout",
        differs: |a, b| a.server.keepalive_timeout != b.server.keepalive_timeout,
        keep: |new, run| new.server.keepalive_timeout = run.server.keepalive_timeout,
    },
    RestartOnly {
        key: "server.send_timeout",
        differs: |a, b| a.server.send_timeout != b.server.send_timeout,
        keep: |new, run| new.server.send_timeout = run.server.send_timeout,
    },
    RestartOnly {
        key: "server.max_connections",
        differs: |a, b| a.server.max_connections != b.server.max_connections,
        keep: |new, run| new.server.max_connections = run.server.max_connections,
    },
    RestartOnly {
        key: "spool.dlq_max_bytes",
        differs: |a, b| a.spool.dlq_max_bytes != b.spool.dlq_max_bytes,
        keep: |new, run| new.spool.dlq_max_bytes = run.spool.dlq_max_bytes,
    },
    RestartOnly {
        key: "spool.dlq_retention",
        differs: |a, b| a.spool.dlq_retention != b.spool.dlq_retention,
        keep: |new, run| new.spool.dlq_retention = run.spool.dlq_retention,
    },
    RestartOnly {
        key: "spool.max_record",
        differs: |a, b| a.spool.max_record != b.spool.max_record,
        keep: |new, run| new.spool.max_record = run.spool.max_record,
    },
    // The connection builder takes all three at startup.
    RestartOnly {
        key: "server.max_header_bytes/max_headers/header_read_timeout",
        differs: |a, b| {
            a.server.max_header_bytes != b.server.max_header_bytes
                || a.server.max_headers != b.server.max_headers
                || a.server.header_read_timeout != b.server.header_read_timeout
        },
        keep: |new, run| {
            new.server.max_header_bytes = run.server.max_header_bytes;
            new.server.max_headers = run.server.max_headers;
            new.server.header_read_timeout = run.server.header_read_timeout;
        },
    },
    RestartOnly {
        key: "upstream.url",
        differs: |a, b| a.upstream.url != b.upstream.url,
        keep: |new, run| new.upstream.url = run.upstream.url.clone(),
    },
    RestartOnly {
        key: "upstream.ca_file",
        differs: |a, b| a.upstream.ca_file != b.upstream.ca_file,
        keep: |new, run| new.upstream.ca_file = run.upstream.ca_file.clone(),
    },
    RestartOnly {
        key: "upstream.pool_max_idle",
        differs: |a, b| a.upstream.pool_max_idle != b.upstream.pool_max_idle,
        keep: |new, run| new.upstream.pool_max_idle = run.upstream.pool_max_idle,
    },
    RestartOnly {
        key: "admin.token_file",
        differs: |a, b| a.admin.token_file != b.admin.token_file,
        keep: |new, run| new.admin.token_file = run.admin.token_file.clone(),
    },
    // The store connection and its keys are made once, at start.
    RestartOnly {
        key: "cluster.redis_url",
        differs: |a, b| a.cluster.redis_url != b.cluster.redis_url || a.cluster.password != b.cluster.password,
        keep: |new, run| {
            new.cluster.redis_url = run.cluster.redis_url.clone();
            new.cluster.password = run.cluster.password.clone();
        },
    },
    // The exporter is started once.
    RestartOnly {
        key: "tracing.otlp_endpoint",
        differs: |a, b| a.otlp_endpoint != b.otlp_endpoint,
        keep: |new, run| new.otlp_endpoint = run.otlp_endpoint.clone(),
    },
    RestartOnly {
        key: "cluster.namespace",
        differs: |a, b| a.cluster.namespace != b.cluster.namespace,
        keep: |new, run| new.cluster.namespace = run.cluster.namespace.clone(),
    },
    // The backend, its connection, streams and consumers are set up once.
    RestartOnly {
        key: "spool.backend",
        differs: |a, b| a.spool.backend != b.spool.backend,
        keep: |new, run| new.spool.backend = run.spool.backend.clone(),
    },
    // With JetStream the ordering is the consumers' shape (one message in
    // flight, or many), made at start.
    RestartOnly {
        key: "drain.ordering",
        differs: |a, b| a.spool.backend.jetstream().is_some() && a.drain.ordering != b.drain.ordering,
        keep: |new, run| {
            if run.spool.backend.jetstream().is_some() {
                new.drain.ordering = run.drain.ordering;
            }
        },
    },
];

impl Config {
    /// Keys whose change only takes effect after a restart, as dotted paths.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        RESTART_ONLY
            .iter()
            .filter(|r| (r.differs)(self, new))
            .map(|r| r.key)
            .collect()
    }

    /// Copies the restart-only keys from `running` so a reload never
    /// half-applies them.
    pub fn keep_restart_only(&mut self, running: &Config) {
        for r in RESTART_ONLY {
            (r.keep)(self, running);
        }
    }

    /// Every name `restart_only_changes` can report, in its order.
    pub fn restart_only_keys() -> impl Iterator<Item = &'static str> {
        RESTART_ONLY.iter().map(|r| r.key)
    }
}
