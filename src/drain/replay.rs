//! The drainer: a consumer of the spool, like a Kafka consumer group of
//! one. Per partition: read → wait for replay budget → send → ack, with
//! retries (exponential backoff, full jitter, Retry-After honoured), the
//! dead-letter queue for what can't be delivered, and expiry.

use super::envelope::Envelope;
use super::id::RequestId;
use super::outcomes::{now_ms, AttemptError, AttemptRecord, Outcome, State};
use super::signing::Signer;
use super::spooler::LocalSpooler;
use crate::config::{DrainConfig, Ordering};
use crate::metrics::Metrics;
use crate::runtime::Shared;
use crate::shutdown::Shutdown;
use crate::spool::Record;
use crate::upstream::body::RequestBody;
use crate::upstream::{Outbound, ReplayStack, UpstreamError};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tower::ServiceExt;

static SLUICE_ID: HeaderName = HeaderName::from_static("sluice-id");
static SLUICE_ATTEMPT: HeaderName = HeaderName::from_static("sluice-attempt");
static SLUICE_PARTITION: HeaderName = HeaderName::from_static("sluice-partition");
static SLUICE_SEQUENCE: HeaderName = HeaderName::from_static("sluice-sequence");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Responses of replayed requests are read and dropped; past this size
/// the connection is closed instead of drained.
const MAX_DRAINED_RESPONSE: usize = 1 << 20;
/// Parallel deliveries per partition with `ordering = "none"`.
const UNORDERED_PER_PARTITION: usize = 32;

pub(crate) struct ReplayCounters {
    pub(crate) delivered: IntCounter,
    pub(crate) retried: IntCounter,
    dead: IntCounter,
    expired: IntCounter,
}

impl ReplayCounters {
    /// Expired records are dead too, but counted under their own outcome.
    pub(crate) fn count_dead(&self, reason: &str) {
        if reason == "expired" {
            self.expired.inc();
        } else {
            self.dead.inc();
        }
    }
}

/// One replay attempt of a spooled request, whichever spool it came from:
/// the replay stack, the drain settings and the outcome counters.
pub struct Replayer {
    shared: Arc<Shared>,
    /// Breaker → adaptive limit → replay share of the budget → metrics →
    /// timeout → client; cloned for each attempt.
    stack: ReplayStack,
    pub(crate) counters: ReplayCounters,
}

pub struct Drainer {
    spooler: Arc<LocalSpooler>,
    replayer: Replayer,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    Delivered(u16),
    /// Worth another try; `retry_after` from the backend, if it said.
    Retry {
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// The backend refused it for good.
    Rejected(u16),
}

impl Replayer {
    pub fn new(shared: Arc<Shared>, metrics: &Metrics) -> Replayer {
        let c = |o: &str| metrics.replay_total.with_label_values(&[o]);
        Replayer {
            stack: shared.upstream.replay_stack(),
            shared,
            counters: ReplayCounters {
                delivered: c("delivered"),
                retried: c("retried"),
                dead: c("dead"),
                expired: c("expired"),
            },
        }
    }

    pub(crate) fn drain_config(&self) -> DrainConfig {
        self.shared.runtime.load().config.drain.clone()
    }

    pub(crate) fn upstream_timeout(&self) -> Duration {
        self.shared.runtime.load().config.upstream.timeout
    }

    /// Whether the breaker refuses replays now.
    pub(crate) fn breaker_open(&self) -> bool {
        self.shared.upstream.breaker.is_open()
    }

    /// One send of a spooled request through the replay stack, and its
    /// answer read (bounded) so the connection can serve again.
    pub(crate) async fn attempt(
        &self,
        env: &Envelope,
        id: RequestId,
        attempt: u32,
        first: bool,
    ) -> Result<(Attempt, AttemptRecord), BreakerOpen> {
        let cfg = self.shared.runtime.load().config.clone();
        // Each attempt is a span of its own under the client's: exported
        // when there is somewhere to send it, else just a new span id.
        let client_span = crate::trace::TraceParent::from_headers(&env.headers);
        // While the breaker is open the try is refused before it is sent:
        // no span for it (a refusal every half second would fill the
        // export queue with attempts that never were).
        let span = match (&client_span, &self.shared.spans) {
            (Some(tp), Some(spans)) if !self.shared.upstream.breaker.is_open() => {
                Some(spans.attempt(tp, &id.encode(), attempt))
            }
            _ => None,
        };
        let traceparent = match &span {
            Some(s) => Some(s.traceparent()),
            None => client_span.map(|tp| tp.child()),
        };
        let out = Outbound {
            request: replay_request(env, id, attempt, cfg.drain.signing.as_ref(), traceparent),
            retry: !first,
            wait_until: None,
            timeout: cfg.upstream.timeout,
        };
        let started = std::time::Instant::now();
        let sent_ms = now_ms();
        let mut span = span;
        let record = |status: Option<u16>, error: Option<AttemptError>| AttemptRecord {
            at_ms: sent_ms,
            status,
            error,
            latency_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let resp = match self.stack.clone().oneshot(out).await {
            Ok(resp) => resp,
            Err(f) => {
                if let UpstreamError::Open { retry_after } = f.error {
                    // Refused before it was sent: no attempt, but a span
                    // was opened; it is closed as such.
                    if let Some(s) = span.take() {
                        s.end(None, Some("breaker_open"));
                    }
                    return Err(BreakerOpen { retry_after });
                }
                let error = f.error.attempt_error();
                if let Some(s) = span.take() {
                    s.end(None, Some(error.as_str()));
                }
                return Ok((
                    Attempt::Retry {
                        status: None,
                        retry_after: None,
                    },
                    record(None, Some(error)),
                ));
            }
        };
        let status = resp.status().as_u16();
        if let Some(s) = span.take() {
            s.end(Some(status), None);
        }
        let attempted = record(Some(status), None);
        // A backend's word is honoured up to backoff_max, no further.
        let retry_after =
            crate::upstream::retry_after(resp.headers(), SystemTime::now()).map(|d| d.min(cfg.drain.backoff_max));
        // Read the (small) answer within what is left of the timeout: a
        // backend that stalls mid-body must not hold this partition (and a
        // budget slot) for ever. Read to its end, the body gives the
        // connection back to the pool; cut short, it closes it.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_DRAINED_RESPONSE);
        let left = cfg.upstream.timeout.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(left, body.collect()).await;
        let outcome = match status {
            200..=399 => Attempt::Delivered(status),
            s if cfg.drain.retry_on.contains(&s) => Attempt::Retry {
                status: Some(s),
                retry_after,
            },
            s => Attempt::Rejected(s),
        };
        Ok((outcome, attempted))
    }
}

impl Drainer {
    pub fn new(spooler: Arc<LocalSpooler>, shared: Arc<Shared>, metrics: &Metrics) -> Arc<Drainer> {
        Arc::new(Drainer {
            spooler,
            replayer: Replayer::new(shared, metrics),
        })
    }

    /// Starts one task per partition; they stop at `shutdown`, leaving
    /// unfinished records unacked for the next start.
    pub fn start(self: &Arc<Self>, shutdown: Shutdown) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for p in 0..self.spooler.spool.partitions() {
            let me = self.clone();
            let shutdown = shutdown.clone();
            set.spawn(async move {
                tokio::select! {
                    _ = me.run_partition(p) => {}
                    _ = shutdown.wait() => {}
                }
            });
        }
        set
    }

    fn drain_config(&self) -> DrainConfig {
        self.replayer.drain_config()
    }

    async fn run_partition(self: Arc<Self>, partition: u32) {
        let mut reader = self.spooler.spool.reader(partition);
        let mut parallel: JoinSet<()> = JoinSet::new();
        loop {
            let from = reader.position();
            let batch = match reader.next_batch(64, 4 << 20).await {
                Ok(b) => b,
                Err(crate::spool::SpoolError::Closed) => return,
                Err(e) => {
                    tracing::error!(partition, error = %e, "spool read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let gaps = gaps(from, &batch);
            if !gaps.is_empty() {
                self.note_corrupt(partition, &gaps).await;
            }
            for record in batch {
                match self.drain_config().ordering {
                    Ordering::Partition => self.deliver(record).await,
                    Ordering::None => {
                        while parallel.len() >= UNORDERED_PER_PARTITION {
                            parallel.join_next().await;
                        }
                        let me = self.clone();
                        parallel.spawn(async move { me.deliver(record).await });
                    }
                }
            }
            while parallel.try_join_next().is_some() {}
        }
    }

    /// Records a dead outcome for each request in `gaps` (offsets of
    /// `partition` the reader skipped as corrupt and dead-lettered) whose
    /// token can still be read from its dead letter, so its status URL
    /// answers `dead` rather than 404.
    ///
    /// The letters were appended to the DLQ by the reader just before it
    /// handed out the batch, so only the DLQ's tail is read: at most
    /// [`CORRUPT_TAIL`] letters, a page at a time, however large the DLQ.
    /// A letter pushed out of that window by a burst of other dead letters
    /// is missed, and its status stays 404 as before.
    async fn note_corrupt(&self, partition: u32, gaps: &[std::ops::Range<u64>]) {
        let spool = &self.spooler.spool;
        let missing: u64 = gaps.iter().map(|g| g.end - g.start).sum();
        let end = spool.status().dlq.next_offset;
        let mut from = end.saturating_sub(CORRUPT_TAIL.max(missing.min(4 * CORRUPT_TAIL)));
        // Offsets whose token was found (a letter without one may be
        // followed by one with it: keep looking for those).
        let mut resolved = std::collections::HashSet::new();
        while from < end && (resolved.len() as u64) < missing {
            let page = match spool.dlq_list(from, 64).await {
                Ok(page) if !page.is_empty() => page,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "reading the DLQ for corrupt records failed");
                    return;
                }
            };
            from = page[page.len() - 1].dlq_offset + 1;
            for d in page {
                if d.partition != partition || d.reason != "corrupt" || !gaps.iter().any(|g| g.contains(&d.offset)) {
                    continue;
                }
                let Some(token) = super::dlq::letter_token(&d) else {
                    continue;
                };
                if !resolved.insert(d.offset) {
                    continue;
                }
                self.spooler.outcomes.record(Outcome {
                    id: RequestId {
                        partition,
                        offset: d.offset,
                        token,
                    },
                    state: State::Dead,
                    attempts: 0,
                    upstream_status: None,
                    at_ms: d.dead_at_ms,
                    enqueued_ms: if d.timestamp_ms > 0 {
                        d.timestamp_ms
                    } else {
                        d.dead_at_ms
                    },
                    replayed_as: None,
                });
            }
        }
    }

    async fn wait_unpaused(&self) {
        let mut rx = self.spooler.paused.subscribe();
        let _ = rx.wait_for(|paused| !*paused).await;
    }

    /// Delivers one record to a final outcome: delivered, or dead.
    async fn deliver(&self, record: Record) {
        let key = (record.partition, record.offset);
        let env = match Envelope::decode(record.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(partition = record.partition, offset = record.offset, error = %e, "undecodable spool record; dead-lettered");
                self.finish_dead(&record, None, "undecodable", None, 0, record.timestamp_ms)
                    .await;
                return;
            }
        };
        let id = RequestId {
            partition: record.partition,
            offset: record.offset,
            token: env.token,
        };
        let mut attempt: u32 = 0;
        let mut last_status = None;
        loop {
            self.wait_unpaused().await;
            let cfg = self.drain_config();
            let age = Duration::from_millis(now_ms().saturating_sub(env.arrived_ms));
            if age > cfg.max_age {
                self.finish_dead(&record, Some(id), "expired", last_status, attempt, env.arrived_ms)
                    .await;
                return;
            }
            attempt += 1;
            self.spooler.inflight.insert(key, attempt);
            // Only a record's first try here speaks for the backend's
            // health; its retries don't move the breaker.
            let first = attempt == 1;
            let outcome = match self
                .replayer
                .attempt(&env, id, attempt + u32::from(env.attempt_base), first)
                .await
            {
                Ok((outcome, record)) => {
                    self.spooler
                        .outcomes
                        .attempted(&id, attempt + u32::from(env.attempt_base), record);
                    outcome
                }
                // While the breaker is open replay waits (re-checking
                // expiry); the refused try was no attempt.
                Err(BreakerOpen { retry_after }) => {
                    attempt -= 1;
                    tokio::time::sleep(retry_after.min(Duration::from_millis(500))).await;
                    continue;
                }
            };
            match outcome {
                Attempt::Delivered(status) => {
                    self.replayer.counters.delivered.inc();
                    self.spooler.outcomes.record(Outcome {
                        id,
                        state: State::Delivered,
                        attempts: attempt,
                        upstream_status: Some(status),
                        at_ms: now_ms(),
                        enqueued_ms: env.arrived_ms,
                        replayed_as: None,
                    });
                    self.ack(&record);
                    // Counted once acked: an ETA is never asked of the rate
                    // this delivery makes while the record still counts as
                    // queued.
                    self.spooler.rates.delivered(record.partition);
                    self.spooler.inflight.remove(&key);
                    return;
                }
                Attempt::Rejected(status) => {
                    self.finish_dead(&record, Some(id), "rejected", Some(status), attempt, env.arrived_ms)
                        .await;
                    return;
                }
                Attempt::Retry { status, retry_after } => {
                    last_status = status.or(last_status);
                    if attempt >= cfg.max_attempts {
                        self.finish_dead(&record, Some(id), "max_attempts", last_status, attempt, env.arrived_ms)
                            .await;
                        return;
                    }
                    self.replayer.counters.retried.inc();
                    let backoff = full_jitter(&cfg, attempt).max(retry_after.unwrap_or_default().min(cfg.backoff_max));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn ack(&self, record: &Record) {
        if let Err(e) = self.spooler.spool.ack(record.partition, record.offset) {
            tracing::error!(partition = record.partition, offset = record.offset, error = %e, "ack failed; the record will be delivered again after a restart");
        }
    }

    async fn finish_dead(
        &self,
        record: &Record,
        id: Option<RequestId>,
        reason: &str,
        last_status: Option<u16>,
        attempts: u32,
        enqueued_ms: u64,
    ) {
        self.replayer.counters.count_dead(reason);
        // Dead-lettering must succeed before the ack, or the record would
        // be lost; on failure leave it unacked for a later start.
        loop {
            match self.spooler.spool.dead_letter(record, reason, last_status).await {
                Ok(_) => break,
                Err(crate::spool::SpoolError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "dead-lettering failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        crate::crash::point("dlq_move");
        tracing::warn!(partition = record.partition, offset = record.offset, reason, status = ?last_status, attempts, "spooled request dead-lettered");
        if let Some(id) = id {
            self.spooler.outcomes.record(Outcome {
                id,
                state: State::Dead,
                attempts,
                upstream_status: last_status,
                at_ms: now_ms(),
                enqueued_ms,
                replayed_as: None,
            });
        }
        self.ack(record);
        self.spooler.inflight.remove(&(record.partition, record.offset));
    }
}

/// The breaker refused a replay attempt before it was sent.
pub(crate) struct BreakerOpen {
    pub(crate) retry_after: Duration,
}

/// A spooled request as the backend gets it on this attempt.
fn replay_request(
    env: &Envelope,
    id: RequestId,
    attempt: u32,
    signer: Option<&Signer>,
    traceparent: Option<crate::trace::TraceParent>,
) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::full(env.body.clone()));
    *req.method_mut() = env.method.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.uri_mut() = env.path_and_query.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let headers = req.headers_mut();
    *headers = env.headers.clone();
    match traceparent {
        Some(tp) => {
            headers.insert(crate::trace::TRACEPARENT.clone(), tp.header());
        }
        // None, or one we couldn't read: replayed without trace context
        // rather than under the client's own span id.
        None => {
            headers.remove(&crate::trace::TRACEPARENT);
            headers.remove(&crate::trace::TRACESTATE);
        }
    }
    let id_text = id.encode();
    let id_value = HeaderValue::from_str(&id_text).expect("ids are URL-safe ASCII");
    headers.insert(SLUICE_ID.clone(), id_value.clone());
    headers.insert(SLUICE_ATTEMPT.clone(), HeaderValue::from(attempt));
    headers.insert(SLUICE_PARTITION.clone(), HeaderValue::from(id.partition));
    headers.insert(SLUICE_SEQUENCE.clone(), HeaderValue::from(id.offset));
    if let Some(signer) = signer {
        // Signed at each attempt, with that attempt's time: receivers
        // refuse old timestamps, and a retry may come much later.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        signer.sign(headers, &id_value, now, &env.body);
    }
    let idem = env
        .idempotency_key
        .as_deref()
        .and_then(|k| HeaderValue::from_str(k).ok())
        .unwrap_or(id_value);
    headers.insert(IDEMPOTENCY_KEY.clone(), idem);
    req
}

/// How many of the newest dead letters [`Drainer::note_corrupt`] reads.
const CORRUPT_TAIL: u64 = 256;

/// The offsets from `from` up to the last record of `batch` that the batch
/// skips: records the reader found corrupt (and dead-lettered).
fn gaps(from: u64, batch: &[Record]) -> Vec<std::ops::Range<u64>> {
    let mut gaps = Vec::new();
    let mut expected = from;
    for r in batch {
        if r.offset > expected {
            gaps.push(expected..r.offset);
        }
        expected = expected.max(r.offset + 1);
    }
    gaps
}

/// Exponential backoff with full jitter: uniform in [0, min(max, initial·2^(n-1))].
pub(crate) fn full_jitter(cfg: &DrainConfig, attempt: u32) -> Duration {
    let exp = cfg
        .backoff_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cfg.backoff_max);
    let ms = exp.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_the_offsets_a_batch_skips() {
        let rec = |offset| Record {
            partition: 0,
            offset,
            timestamp_ms: 0,
            flags: 0,
            payload: bytes::Bytes::new(),
        };
        let batch: Vec<Record> = [3, 4, 7, 9].into_iter().map(rec).collect();
        assert_eq!(gaps(3, &batch), vec![5..7, 8..9]);
        assert_eq!(gaps(1, &batch), vec![1..3, 5..7, 8..9]);
        assert!(gaps(3, &batch[..2]).is_empty());
        assert!(gaps(3, &[]).is_empty());
    }

    #[test]
    fn jitter_stays_within_the_exponential_envelope() {
        let cfg = DrainConfig {
            ordering: Ordering::Partition,
            max_attempts: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            retry_on: vec![503],
            max_age: Duration::from_secs(60),
            signing: None,
        };
        for attempt in 1..15 {
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(full_jitter(&cfg, attempt) <= cap);
            }
        }
    }
}
