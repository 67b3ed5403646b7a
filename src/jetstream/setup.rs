//! Connecting to NATS, and the streams, consumers and buckets a JetStream
//! spool needs: created when absent, checked when present.

use super::{JetStreamError, JetStreamSpool, CONSUMER, PARTITIONS_KEY, PAUSED_KEY, UNORDERED_PER_PARTITION};
use crate::config::{Config, JetStreamConfig, NatsAuth, Ordering as DrainOrdering};
use crate::drain::eta::DeliveryRates;
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{ConnectOptions, Event, ServerAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Room for the request head and the envelope's framing beside a body of
/// `spool.max_record`.
const HEAD_ROOM: u64 = 64 << 10;
/// Publish retries inside this window are de-duplicated by `Nats-Msg-Id`.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Connects to the NATS servers of `config.spool.jetstream` and makes sure
/// every stream, consumer and bucket is there as the config describes.
pub async fn connect(
    config: &Config,
    metrics: &crate::metrics::Metrics,
) -> Result<Arc<JetStreamSpool>, JetStreamError> {
    open(config, metrics, Make::IfAbsent).await
}

/// The state of the JetStream spool `config` names, read without creating
/// anything (`sluice spool status -c`): a stream, consumer or bucket that
/// isn't there is an error saying so.
pub async fn inspect(config: &Config) -> Result<crate::spool::SpoolStatus, JetStreamError> {
    let metrics = crate::metrics::Metrics::new();
    open(config, &metrics, Make::Never).await?.status().await
}

/// Whether setup creates what is absent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Make {
    IfAbsent,
    Never,
}

async fn open(
    config: &Config,
    metrics: &crate::metrics::Metrics,
    make: Make,
) -> Result<Arc<JetStreamSpool>, JetStreamError> {
    let cfg = config
        .spool
        .backend
        .jetstream()
        .expect("connect is only called with backend = \"jetstream\"")
        .clone();
    let up = Arc::new(AtomicBool::new(false));
    let client = connect_client(&cfg, up.clone()).await?;
    up.store(true, Ordering::Release);
    let mut js = jetstream::new(client);
    js.set_timeout(cfg.publish_timeout.max(Duration::from_secs(2)));
    let partitions = config.spool.partitions;
    // A record is the body plus its head; the server refuses messages over
    // its max_payload, so that bounds a record too (413 past it).
    let server_max = js.client().server_info().max_payload as u64;
    let max_payload = (config.spool.max_record + HEAD_ROOM).min(server_max);
    if max_payload < config.spool.max_record + HEAD_ROOM {
        tracing::warn!(
            server_max_payload = server_max,
            spool_max_record = config.spool.max_record,
            "the NATS servers take messages up to max_payload; a request whose body and head exceed it gets 413 (raise max_payload in the server config, or lower spool.max_record)"
        );
    }
    let max_in_flight = match config.drain.ordering {
        DrainOrdering::Partition => 1,
        DrainOrdering::None => UNORDERED_PER_PARTITION,
    };
    // First: the partition count decides every stream's share.
    let control = ensure_bucket(
        &js,
        &cfg,
        kv::Config {
            bucket: format!("{}-control", cfg.stream),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            ..Default::default()
        },
        "",
        make,
    )
    .await?;
    check_partitions(&control, &cfg, partitions, make).await?;
    let mut streams = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let want = stream::Config {
            name: format!("{}-{p}", cfg.stream),
            subjects: vec![format!("{}.{p}", cfg.subject_prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            max_bytes: (cfg.max_bytes / u64::from(partitions)).max(max_payload) as i64,
            max_age: cfg.max_age,
            max_message_size: max_payload as i32,
            duplicate_window: DUPLICATE_WINDOW.min(cfg.max_age),
            allow_direct: true,
            ..Default::default()
        };
        let stream = ensure_stream(&js, want, make).await?;
        ensure_consumer(&stream, &cfg, max_in_flight, make).await?;
        streams.push(stream);
    }
    let dlq = ensure_stream(
        &js,
        stream::Config {
            name: format!("{}-dlq", cfg.stream),
            subjects: vec![format!("{}.dlq", cfg.subject_prefix)],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            // Room for one letter at least, or dead-lettering could never
            // succeed (and would hold its partition).
            max_bytes: config.spool.dlq_max_bytes.max(max_payload) as i64,
            max_age: config.spool.dlq_retention,
            max_message_size: max_payload as i32,
            allow_direct: true,
            ..Default::default()
        },
        make,
    )
    .await?;
    let state = ensure_bucket(
        &js,
        &cfg,
        kv::Config {
            bucket: format!("{}-state", cfg.stream),
            history: 1,
            max_age: config.server.status_retention,
            storage: stream::StorageType::File,
            num_replicas: cfg.replicas,
            ..Default::default()
        },
        "server.status_retention",
        make,
    )
    .await?;
    let paused = match control.get(PAUSED_KEY).await {
        Ok(v) => v.is_some_and(|v| v.as_ref() == b"1"),
        Err(e) => return Err(JetStreamError::nats("reading the pause flag", e)),
    };
    let store_up = metrics.spool_store_up();
    store_up.set(1);
    let spool = Arc::new(JetStreamSpool {
        partitions,
        js,
        streams,
        dlq,
        state,
        control,
        up,
        store_up,
        paused: watch::Sender::new(paused),
        rates: DeliveryRates::new(partitions),
        dlq_lock: Default::default(),
        backlog: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        done_below: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        polled_first: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        finished_since_poll: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        round_robin: AtomicU32::new(0),
        max_payload,
        max_in_flight,
        cfg,
    });
    if let Err(e) = spool.status().await {
        tracing::warn!(error = %e, "reading the JetStream spool's state failed");
    }
    Ok(spool)
}

/// The partition count is part of the streams' shape: the first replica
/// records it, later ones must agree. Fewer partitions would strand the
/// records of the streams left out; more would move keys to other
/// partitions (and out of order with their backlog).
async fn check_partitions(
    control: &kv::Store,
    cfg: &JetStreamConfig,
    partitions: u32,
    make: Make,
) -> Result<(), JetStreamError> {
    let want = partitions.to_string();
    if make == Make::IfAbsent {
        match control.create(PARTITIONS_KEY, want.clone().into()).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(JetStreamError::nats("recording the partition count", e)),
        }
    }
    let have = control
        .get(PARTITIONS_KEY)
        .await
        .map_err(|e| JetStreamError::nats("reading the partition count", e))?
        .map(|v| String::from_utf8_lossy(&v).to_string())
        .unwrap_or_default();
    if have != want {
        return Err(JetStreamError::Mismatch {
            object: format!("the spool in streams {}-*", cfg.stream),
            field: "partitions",
            have,
            want,
            setting: "spool.partitions",
        });
    }
    Ok(())
}

/// A stream, consumer or bucket that `sluice spool status -c` looked for
/// and didn't find.
fn missing(object: String, e: impl std::fmt::Display) -> JetStreamError {
    JetStreamError::Missing {
        object,
        detail: e.to_string(),
    }
}

async fn connect_client(cfg: &JetStreamConfig, up: Arc<AtomicBool>) -> Result<async_nats::Client, JetStreamError> {
    let servers_text = cfg.servers.join(",");
    let fail = |detail: String| JetStreamError::Connect {
        servers: servers_text.clone(),
        detail,
    };
    let addrs = cfg
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>().map_err(|e| fail(format!("{s}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let mut opts = ConnectOptions::new()
        .name("sluice")
        .connection_timeout(cfg.publish_timeout.max(Duration::from_secs(2)))
        // A server gone silent (not closed) is noticed within two pings.
        .ping_interval(Duration::from_secs(10))
        .event_callback(move |event| {
            let up = up.clone();
            async move {
                match event {
                    Event::Connected => {
                        if !up.swap(true, Ordering::AcqRel) {
                            tracing::info!("connected to NATS again; spooling resumes");
                        }
                    }
                    Event::Disconnected => {
                        up.store(false, Ordering::Release);
                        tracing::warn!("lost the NATS connection; spooling answers 503 until it is back (the client reconnects by itself)");
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        });
    opts = match &cfg.auth {
        NatsAuth::None => opts,
        NatsAuth::Token(t) => opts.token(t.expose().to_string()),
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::NKey(seed) => opts.nkey(seed.expose().to_string()),
        NatsAuth::Creds(path) => opts
            .credentials_file(path)
            .await
            .map_err(|e| fail(format!("spool.jetstream.creds_file {}: {e}", path.display())))?,
    };
    if let Some(ca) = &cfg.ca_file {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    opts.connect(addrs).await.map_err(|e| fail(e.to_string()))
}

/// The stream as `want` describes it: created if absent; if present, the
/// settings that decide what a 202 promises must match.
async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
    make: Make,
) -> Result<stream::Stream, JetStreamError> {
    let name = want.name.clone();
    let mut stream = match make {
        Make::IfAbsent => js
            .get_or_create_stream(want.clone())
            .await
            .map_err(|e| JetStreamError::nats(format!("creating stream {name}"), e))?,
        Make::Never => js
            .get_stream(&name)
            .await
            .map_err(|e| missing(format!("stream {name}"), e))?,
    };
    let have = stream
        .info()
        .await
        .map_err(|e| JetStreamError::nats(format!("stream {name} info"), e))?
        .config
        .clone();
    let object = format!("stream {name}");
    let mismatch = |field: &'static str, have: String, want: String, setting: &'static str| {
        Err(JetStreamError::Mismatch {
            object: object.clone(),
            field,
            have,
            want,
            setting,
        })
    };
    if have.retention != want.retention || have.discard != want.discard {
        return mismatch(
            "retention/discard",
            format!("{:?}/{:?}", have.retention, have.discard),
            format!("{:?}/{:?}", want.retention, want.discard),
            "spool.jetstream.stream",
        );
    }
    if have.subjects != want.subjects {
        return mismatch(
            "subjects",
            have.subjects.join(","),
            want.subjects.join(","),
            "spool.jetstream.subject_prefix",
        );
    }
    if have.num_replicas.max(1) != want.num_replicas {
        return mismatch(
            "replicas",
            have.num_replicas.to_string(),
            want.num_replicas.to_string(),
            "spool.jetstream.replicas",
        );
    }
    let (bytes_setting, age_setting) = if want.retention == stream::RetentionPolicy::WorkQueue {
        ("spool.jetstream.max_bytes", "spool.jetstream.max_age")
    } else {
        ("spool.dlq_max_bytes", "spool.dlq_retention")
    };
    if have.max_bytes != want.max_bytes {
        return mismatch(
            "max_bytes",
            have.max_bytes.to_string(),
            want.max_bytes.to_string(),
            bytes_setting,
        );
    }
    if have.max_age != want.max_age {
        return mismatch(
            "max_age",
            humantime::format_duration(have.max_age).to_string(),
            humantime::format_duration(want.max_age).to_string(),
            age_setting,
        );
    }
    if have.max_message_size != want.max_message_size {
        return mismatch(
            "max_msg_size",
            have.max_message_size.to_string(),
            want.max_message_size.to_string(),
            "spool.max_record",
        );
    }
    Ok(stream)
}

/// The shared drain consumer of one partition stream.
async fn ensure_consumer(
    stream: &stream::Stream,
    cfg: &JetStreamConfig,
    max_in_flight: i64,
    make: Make,
) -> Result<(), JetStreamError> {
    let want = consumer::pull::Config {
        durable_name: Some(CONSUMER.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: max_in_flight,
        ..Default::default()
    };
    let stream_name = stream.cached_info().config.name.clone();
    let object = format!("consumer {CONSUMER} of stream {stream_name}");
    let consumer: consumer::PullConsumer = match make {
        Make::IfAbsent => stream
            .get_or_create_consumer(CONSUMER, want)
            .await
            .map_err(|e| JetStreamError::nats(format!("creating {object}"), e))?,
        Make::Never => stream
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| missing(object.clone(), e))?,
    };
    let have = &consumer.cached_info().config;
    if have.ack_wait != cfg.ack_wait {
        return Err(JetStreamError::Mismatch {
            object,
            field: "ack_wait",
            have: humantime::format_duration(have.ack_wait).to_string(),
            want: humantime::format_duration(cfg.ack_wait).to_string(),
            setting: "spool.jetstream.ack_wait",
        });
    }
    if have.max_ack_pending != max_in_flight {
        return Err(JetStreamError::Mismatch {
            object,
            field: "max_ack_pending",
            have: have.max_ack_pending.to_string(),
            want: max_in_flight.to_string(),
            setting: "drain.ordering",
        });
    }
    Ok(())
}

/// A key-value bucket: created if absent; if present, its entries' lifetime
/// must be what `age_setting` asks for.
async fn ensure_bucket(
    js: &jetstream::Context,
    cfg: &JetStreamConfig,
    want: kv::Config,
    age_setting: &'static str,
    make: Make,
) -> Result<kv::Store, JetStreamError> {
    let name = want.bucket.clone();
    // The bucket's stream is made here rather than by the client's
    // `create_key_value`, which first reads the account's info in a shape
    // the 2.9 server doesn't answer in. Same stream as a client would make.
    let stream = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: want.history.max(1),
        max_age: want.max_age,
        storage: want.storage,
        num_replicas: want.num_replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let found = match make {
        Make::IfAbsent => js
            .get_or_create_stream(stream)
            .await
            .map_err(|e| JetStreamError::nats(format!("creating bucket {name}"), e))?,
        Make::Never => js
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(|e| missing(format!("bucket {name}"), e))?,
    };
    let info = found.cached_info().config.clone();
    let store = js
        .get_key_value(&name)
        .await
        .map_err(|e| JetStreamError::nats(format!("opening bucket {name}"), e))?;
    if info.num_replicas.max(1) != cfg.replicas {
        return Err(JetStreamError::Mismatch {
            object: format!("bucket {name}"),
            field: "replicas",
            have: info.num_replicas.to_string(),
            want: cfg.replicas.to_string(),
            setting: "spool.jetstream.replicas",
        });
    }
    if !age_setting.is_empty() && info.max_age != want.max_age {
        return Err(JetStreamError::Mismatch {
            object: format!("bucket {name}"),
            field: "max_age",
            have: humantime::format_duration(info.max_age).to_string(),
            want: humantime::format_duration(want.max_age).to_string(),
            setting: age_setting,
        });
    }
    Ok(store)
}
