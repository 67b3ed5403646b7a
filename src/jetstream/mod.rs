//! The spool on NATS JetStream (`[spool] backend = "jetstream"`): replicas
//! share one backlog, and a record acknowledged with a 202 lives on the
//! NATS cluster, not on the pod that took it.
//!
//! Layout, for `stream = S` and `subject_prefix = P`:
//!
//! - stream `S-<p>` per partition, subject `P.<p>`: retention `workqueue`
//!   (a record is gone once acked or terminated), `discard = new` (a full
//!   stream refuses the publish; it never drops an acknowledged record),
//!   file storage, `replicas` copies. One stream per partition so its
//!   sequence numbers are consecutive: the record's stream sequence is its
//!   `Sluice-Sequence` and the offset in its id.
//! - consumer `drain` on each partition stream: durable, pull, explicit
//!   acks, unlimited deliveries, shared by every replica (a consumer
//!   group). `max_ack_pending` is 1 with `drain.ordering = "partition"`, so
//!   one record per partition is in flight across the fleet.
//! - stream `S-dlq`, subject `P.dlq`: dead letters (the record's payload,
//!   with its partition, sequence, reason and last status in headers),
//!   bounded by `spool.dlq_max_bytes` and `spool.dlq_retention`.
//! - key-value bucket `S-state` (entries live `server.status_retention`):
//!   `idem.<route>.<hash>` → the first id spooled under an Idempotency-Key
//!   (or a pending claim), `status.<p>.<seq>` → a request's attempts and
//!   outcome.
//! - key-value bucket `S-control`: `paused`, the fleet's pause flag, and
//!   `partitions`, the partition count every replica must agree on.
//!
//! Invariants:
//! - a 202 is answered only after the publish's PubAck: the record is
//!   stored (with R=3, on a quorum);
//! - a record's status is written before its ack, so a record missing from
//!   its stream has a status to show;
//! - a dead record is published to the DLQ, and that PubAck awaited, before
//!   it is terminated: a crash can duplicate a dead letter, never lose one.

mod dlq;
mod drain;
mod intake;
mod setup;

pub use drain::JetStreamDrainer;
pub use intake::StatusRecord;
pub use setup::{connect, inspect};

use crate::config::JetStreamConfig;
use crate::drain::eta::DeliveryRates;
use async_nats::jetstream::{self, kv, stream::Stream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("can't connect to NATS at {servers}: {detail}")]
    Connect { servers: String, detail: String },
    #[error("{what}: {detail}")]
    Nats { what: String, detail: String },
    /// An existing stream, consumer or bucket differs from the config.
    #[error("{object} exists with {field} = {have}, but {setting} asks for {want}; change the setting, or remove {object} (e.g. `nats stream rm`) if its records may go")]
    Mismatch {
        object: String,
        field: &'static str,
        have: String,
        want: String,
        setting: &'static str,
    },
    #[error(
        "{object} not found ({detail}): no JetStream spool by that name on these servers (`sluice run` creates it)"
    )]
    Missing { object: String, detail: String },
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no PubAck within spool.jetstream.publish_timeout ({0:?}); the request may still be delivered")]
    PublishTimeout(Duration),
    #[error("Idempotency-Key is held by a request still being spooled on another replica")]
    KeyBusy,
}

impl JetStreamError {
    pub(crate) fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> JetStreamError {
        JetStreamError::Nats {
            what: what.into(),
            detail: e.to_string(),
        }
    }
}

/// What a JetStream spool is to the rest of sluice: intake, status, the
/// drain's source, DLQ operations and the fleet's pause flag.
pub struct JetStreamSpool {
    cfg: JetStreamConfig,
    partitions: u32,
    js: jetstream::Context,
    streams: Vec<Stream>,
    dlq: Stream,
    state: kv::Store,
    control: kv::Store,
    /// The client's connection state (its event callback keeps it).
    up: Arc<AtomicBool>,
    store_up: prometheus::IntGauge,
    /// The fleet's pause flag as last seen in the control bucket.
    pub paused: watch::Sender<bool>,
    /// Records finished per partition by the whole fleet, for ETAs: this
    /// replica's as they finish, the others' from the advance of each
    /// stream's first sequence between polls.
    pub rates: DeliveryRates,
    /// Each stream's first sequence at the last poll.
    polled_first: Vec<AtomicU64>,
    /// Records this replica finished since the last poll, per partition.
    finished_since_poll: Vec<AtomicU64>,
    /// Serialises this replica's DLQ replays and purges.
    pub dlq_lock: crate::drain::dlq::DlqLock,
    /// Records pending per partition as last polled (plus appends since),
    /// for ordered routes: a record must not overtake a backlog.
    backlog: Vec<AtomicU64>,
    /// Per partition, a sequence below which every record is finished: the
    /// stream's first sequence as last polled, raised by this replica's
    /// own deliveries in between.
    done_below: Vec<AtomicU64>,
    round_robin: AtomicU32,
    /// Largest payload a partition stream takes (`max_msg_size`).
    max_payload: u64,
    max_in_flight: i64,
}

/// The consumer every replica shares on each partition stream.
const CONSUMER: &str = "drain";
/// Parallel deliveries per partition with `ordering = "none"`, fleet-wide.
const UNORDERED_PER_PARTITION: i64 = 32;
/// The control bucket's key for the pause flag.
const PAUSED_KEY: &str = "paused";
/// The control bucket's key for the partition count the streams were made
/// for.
const PARTITIONS_KEY: &str = "partitions";

impl JetStreamSpool {
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.cfg
    }

    fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.cfg.subject_prefix)
    }

    fn dlq_subject(&self) -> String {
        format!("{}.dlq", self.cfg.subject_prefix)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The partition for a request: the same hash as the local spool, so a
    /// partition key lands in the same partition whichever backend runs.
    pub fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        match key {
            Some(k) => crc32c::crc32c(k) % self.partitions,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions,
        }
    }

    /// Notes that `seq` of `partition` is finished (delivered or dead).
    fn finished(&self, partition: u32, seq: u64) {
        if self.max_in_flight == 1 {
            // In order: it moves the stream's head, and everything below it
            // is finished too. Counted now; the poll counts the rest of the
            // head's advance as the other replicas'.
            // The head first: an ETA asked meanwhile sees it finished, not
            // queued at the rate its own delivery makes.
            self.done_below[partition as usize].fetch_max(seq + 1, Ordering::Relaxed);
            self.rates.delivered(partition);
            self.finished_since_poll[partition as usize].fetch_add(1, Ordering::Relaxed);
        }
        // Out of order, a finish above the head moves it only later: the
        // poll counts it then, once.
        let _ =
            self.backlog[partition as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn has_backlog(&self, partition: u32) -> bool {
        self.backlog
            .get(partition as usize)
            .is_some_and(|b| b.load(Ordering::Relaxed) > 0)
    }

    /// Sends what the client still holds (the last acks and hand-backs)
    /// before the process goes; bounded by `publish_timeout`.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.cfg.publish_timeout, self.js.client().flush()).await;
    }

    /// Sets the fleet's pause flag; every replica's watcher picks it up.
    pub async fn set_paused(&self, paused: bool) -> Result<(), JetStreamError> {
        self.control
            .put(PAUSED_KEY, if paused { "1" } else { "0" }.into())
            .await
            .map_err(|e| JetStreamError::nats("setting the pause flag", e))?;
        self.paused.send_replace(paused);
        Ok(())
    }

    /// The spool's state from the streams and consumers: the same shape the
    /// local spool reports, so `/admin/spool`, `/metrics` and `sluice spool
    /// status` read either.
    pub async fn status(&self) -> Result<crate::spool::SpoolStatus, JetStreamError> {
        let mut partitions = Vec::with_capacity(self.streams.len());
        let now_ms = crate::drain::outcomes::now_ms();
        for (p, stream) in self.streams.iter().enumerate() {
            let info = stream
                .get_info()
                .await
                .map_err(|e| JetStreamError::nats(format!("stream {} info", stream.cached_info().config.name), e))?;
            let consumer = stream
                .consumer_info(CONSUMER)
                .await
                .map_err(|e| JetStreamError::nats("consumer info", e))?;
            let pending = consumer.num_pending + consumer.num_ack_pending as u64;
            self.backlog[p].store(pending, Ordering::Relaxed);
            self.done_below[p].fetch_max(info.state.first_sequence, Ordering::Relaxed);
            // Every replica's deliveries move the head; ours are counted
            // as they happen, the rest here: the fleet's rate.
            let before = self.polled_first[p].swap(info.state.first_sequence, Ordering::Relaxed);
            let ours = self.finished_since_poll[p].swap(0, Ordering::Relaxed);
            if before > 0 && info.state.first_sequence > before {
                let others = (info.state.first_sequence - before).saturating_sub(ours);
                self.rates
                    .delivered_n(p as u32, u32::try_from(others).unwrap_or(u32::MAX));
            }
            let oldest_ms = (info.state.messages > 0)
                .then(|| (info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
            partitions.push(crate::spool::PartitionStatus {
                partition: p as u32,
                first_offset: info.state.first_sequence,
                next_offset: info.state.last_sequence + 1,
                committed_offset: info.state.first_sequence,
                backlog_records: pending,
                backlog_bytes: info.state.bytes,
                oldest_timestamp_ms: oldest_ms,
                oldest_age_seconds: oldest_ms.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
            });
        }
        let dlq = self
            .dlq
            .get_info()
            .await
            .map_err(|e| JetStreamError::nats("DLQ stream info", e))?;
        Ok(crate::spool::SpoolStatus {
            dir: format!("jetstream:{}", self.cfg.stream).into(),
            spool_id: self.cfg.stream.clone(),
            disk_bytes: partitions.iter().map(|p| p.backlog_bytes).sum::<u64>() + dlq.state.bytes,
            partitions,
            dlq: crate::spool::DlqStatus {
                records: dlq.state.messages,
                bytes: dlq.state.bytes,
                next_offset: dlq.state.last_sequence + 1,
            },
            fsync: Some(format!("jetstream R={}", self.cfg.replicas)),
            available: self.is_up(),
        })
    }

    /// Keeps the pause flag, the backlog counts and `store_up` current until
    /// `shutdown`.
    pub fn spawn_watchers(
        self: &Arc<Self>,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let me = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = me.watch_pause() => {}
                _ = stop.wait() => {}
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait() => return,
                }
                me.store_up.set(i64::from(me.is_up()));
                if me.is_up() {
                    match me.status().await {
                        Ok(status) => metrics.set_spool_status(&status),
                        Err(e) => tracing::debug!(error = %e, "polling the JetStream spool's state failed"),
                    }
                }
            }
        });
    }

    /// Follows the control bucket's pause flag; re-subscribes after errors.
    async fn watch_pause(&self) {
        loop {
            match self.control.watch_with_history(PAUSED_KEY).await {
                Ok(mut watch) => {
                    use futures_util::StreamExt;
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(e) => {
                                let paused = e.operation == kv::Operation::Put && e.value.as_ref() == b"1";
                                if *self.paused.borrow() != paused {
                                    tracing::info!(paused, "replay pause flag changed (fleet-wide)");
                                }
                                self.paused.send_replace(paused);
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "pause flag watch");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watching the pause flag failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
