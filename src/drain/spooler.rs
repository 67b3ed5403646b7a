//! The intake side of the spool: turns an over-limit request (already
//! encoded as an [`Envelope`]) into a durable record and an id, dedupes
//! Idempotency-Keys, and answers status lookups — on the local spool
//! ([`LocalSpooler`]) or on JetStream ([`crate::jetstream`]), behind one
//! [`Spooler`].

use super::dlq::DlqLock;
use super::envelope::Envelope;
use super::eta::DeliveryRates;
use super::id::RequestId;
use super::outcomes::{KeyClaim, KeyHash, OutcomeStore, State};
use crate::spool::{Spool, SpoolError};
use dashmap::DashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SpoolingError {
    /// Over `spool.max_record`: 413.
    #[error("request of {len} bytes is over spool.max_record ({limit} bytes)")]
    TooLarge { len: u64, limit: u64 },
    /// Spool full or failing: 503 with Retry-After; nothing was written.
    #[error("spool cannot take the request: {0}")]
    Unavailable(#[source] SpoolError),
    /// The JetStream spool didn't take it (unreachable, full, no PubAck in
    /// time): 503 with Retry-After.
    #[error("spool store cannot take the request: {0}")]
    Store(#[source] crate::jetstream::JetStreamError),
}

/// The spool a running sluice writes to: this node's disk, or JetStream.
pub enum Spooler {
    Local(Arc<LocalSpooler>),
    JetStream(Arc<crate::jetstream::JetStreamSpool>),
}

impl Spooler {
    pub fn local(&self) -> Option<&Arc<LocalSpooler>> {
        match self {
            Spooler::Local(l) => Some(l),
            Spooler::JetStream(_) => None,
        }
    }

    pub async fn spool(&self, env: Envelope, partition: u32, key: Option<KeyHash>) -> Result<RequestId, SpoolingError> {
        match self {
            Spooler::Local(l) => l.spool(env, partition, key).await,
            Spooler::JetStream(j) => j.append(env, partition, key).await,
        }
    }

    pub async fn status(&self, id: RequestId) -> Option<StatusView> {
        match self {
            Spooler::Local(l) => l.status(id).await,
            Spooler::JetStream(j) => j.status_view(id).await,
        }
    }

    pub fn eta(&self, id: RequestId) -> Option<Duration> {
        match self {
            Spooler::Local(l) => l.eta(id),
            Spooler::JetStream(j) => j.eta(id),
        }
    }

    pub fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        match self {
            Spooler::Local(l) => l.partition_for(key),
            Spooler::JetStream(j) => j.partition_for(key),
        }
    }

    pub fn has_backlog(&self, partition: u32) -> bool {
        match self {
            Spooler::Local(l) => l.has_backlog(partition),
            Spooler::JetStream(j) => j.has_backlog(partition),
        }
    }

    /// Whether this replica is fit for traffic as far as its spool goes
    /// (for `/readyz`). A failed local disk is this pod's alone: unready
    /// moves traffic to healthy pods. A NATS outage is every replica's at
    /// once: unready would take live forwarding down with it, so readiness
    /// stays and `sluice_spool_store_up` tells.
    pub fn is_available(&self) -> bool {
        match self {
            Spooler::Local(l) => l.spool.is_available(),
            Spooler::JetStream(_) => true,
        }
    }

    pub fn paused(&self) -> bool {
        match self {
            Spooler::Local(l) => *l.paused.borrow(),
            Spooler::JetStream(j) => *j.paused.borrow(),
        }
    }

    /// Pauses or resumes replay: this process's, or the whole fleet's with
    /// JetStream (a flag every replica watches).
    pub async fn set_paused(&self, paused: bool) -> Result<(), crate::jetstream::JetStreamError> {
        match self {
            Spooler::Local(l) => {
                l.paused.send_replace(paused);
                Ok(())
            }
            Spooler::JetStream(j) => j.set_paused(paused).await,
        }
    }

    /// Serialises this process's DLQ replays and purges.
    pub fn dlq_lock(&self) -> &DlqLock {
        match self {
            Spooler::Local(l) => &l.dlq_lock,
            Spooler::JetStream(j) => &j.dlq_lock,
        }
    }

    pub async fn spool_status(&self) -> Result<crate::spool::SpoolStatus, crate::jetstream::JetStreamError> {
        match self {
            Spooler::Local(l) => Ok(l.spool.status()),
            Spooler::JetStream(j) => j.status().await,
        }
    }

    /// The request spooled under `route`'s Idempotency-Key `key`.
    pub async fn id_for_key(&self, route: &str, key: &str) -> Option<RequestId> {
        let hash = super::outcomes::key_hash(route, key);
        match self {
            Spooler::Local(l) => l.outcomes.id_for_key(hash),
            Spooler::JetStream(j) => j.id_for_key(route, hash).await,
        }
    }
}

/// An Idempotency-Key held while its first request is being spooled; if
/// that request goes away (its task dropped, or the append failed) the key
/// is freed on drop, so later requests with it never wait on a ghost.
struct Claim<'a> {
    store: &'a OutcomeStore,
    hash: KeyHash,
    tx: Option<watch::Sender<Option<RequestId>>>,
}

impl Claim<'_> {
    fn done(&mut self, id: RequestId) {
        if let Some(tx) = self.tx.take() {
            self.store.key_done(self.hash, tx, id);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.store.key_failed(self.hash, tx);
        }
    }
}

/// What `GET {status_path_prefix}/requests/{id}` answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusView {
    pub id: String,
    pub state: State,
    pub attempts: u32,
    pub enqueued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_as: Option<String>,
    /// While queued: records ahead of it in its partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// While queued: the estimated milliseconds until delivery (`null`:
    /// no delivery in the last 30 s to estimate from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<Option<u64>>,
    /// The newest delivery attempts (at most 10), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptView>,
}

/// One delivery attempt as the status answer shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptView {
    pub at: String,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
    pub latency_ms: u32,
}

impl LocalSpooler {
    fn history_view(&self, id: RequestId) -> Vec<AttemptView> {
        self.outcomes
            .history(id.partition, id.offset)
            .into_iter()
            .map(|a| AttemptView {
                at: rfc3339(a.at_ms),
                status: a.status,
                error: a.error.map(|e| e.as_str()),
                latency_ms: a.latency_ms,
            })
            .collect()
    }
}

pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The spool on this node's disk, with its outcome store.
pub struct LocalSpooler {
    pub spool: Arc<Spool>,
    pub outcomes: Arc<OutcomeStore>,
    /// Records whose delivery has started and not finished, with the
    /// attempt under way (or last made, while backing off).
    pub inflight: DashMap<(u32, u64), u32>,
    /// `true` stops replay (admin pause).
    pub paused: watch::Sender<bool>,
    /// Serialises DLQ replay and purge from the admin API, so concurrent
    /// replays of one dead letter enqueue it once.
    pub dlq_lock: DlqLock,
    /// Deliveries per partition, for ETAs.
    pub rates: DeliveryRates,
    round_robin: AtomicU32,
}

impl LocalSpooler {
    /// The dead letters of this spool, recording replays in its outcomes.
    pub fn dead_letters(&self) -> super::dlq::LocalDeadLetters<'_> {
        super::dlq::LocalDeadLetters {
            spool: &self.spool,
            outcomes: Some(&self.outcomes),
        }
    }

    pub fn new(spool: Arc<Spool>, outcomes: Arc<OutcomeStore>) -> LocalSpooler {
        LocalSpooler {
            outcomes,
            inflight: DashMap::new(),
            paused: watch::Sender::new(false),
            dlq_lock: DlqLock::default(),
            rates: DeliveryRates::new(spool.partitions()),
            round_robin: AtomicU32::new(0),
            spool,
        }
    }

    /// Records ahead of `id` in its partition (not counting it); `None`
    /// once it is delivered or dead.
    pub fn position(&self, id: RequestId) -> Option<u64> {
        id.offset.checked_sub(self.spool.committed(id.partition))
    }

    /// The estimated time until `id` is delivered; `None` when it is done
    /// or there is nothing to estimate from.
    pub fn eta(&self, id: RequestId) -> Option<Duration> {
        self.rates.eta(id.partition, self.position(id)?)
    }

    /// The partition for a request: a stable hash of its partition key, or
    /// round robin without one.
    pub fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        let n = self.spool.partitions();
        match key {
            Some(k) => crc32c::crc32c(k) % n,
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// True while `partition` holds records not yet delivered.
    pub fn has_backlog(&self, partition: u32) -> bool {
        self.spool.next_offset(partition) > self.spool.committed(partition)
    }

    /// Appends `env` to `partition` and returns its id once the record is
    /// durable as the fsync mode promises. With an idempotency `key`, a
    /// repeat of an already spooled key returns the first id instead.
    pub async fn spool(&self, env: Envelope, partition: u32, key: Option<KeyHash>) -> Result<RequestId, SpoolingError> {
        let mut claim = match key {
            Some(hash) => match self.outcomes.claim_key(hash).await {
                KeyClaim::Existing(id) => return Ok(id),
                KeyClaim::First(hash, tx) => Some(Claim {
                    store: &self.outcomes,
                    hash,
                    tx: Some(tx),
                }),
            },
            None => None,
        };
        let token = env.token;
        let result = self.spool.append(partition, env.encode()).await;
        match result {
            Ok(offset) => {
                let id = RequestId {
                    partition,
                    offset,
                    token,
                };
                if let Some(c) = claim.as_mut() {
                    c.done(id);
                }
                Ok(id)
            }
            Err(e) => {
                // Dropping the claim frees the key for the next request.
                drop(claim);
                Err(match e {
                    SpoolError::TooLarge { len, max, .. } => SpoolingError::TooLarge { len, limit: max },
                    other => SpoolingError::Unavailable(other),
                })
            }
        }
    }

    /// The status of `id`, or `None` when it is unknown, foreign or expired.
    pub async fn status(&self, id: RequestId) -> Option<StatusView> {
        let key = (id.partition, id.offset);
        if self.outcomes.get(id.partition, id.offset).is_some() {
            return self.outcome_view(id);
        }
        if id.partition >= self.spool.partitions() {
            return None;
        }
        let record = self.spool.read_at(id.partition, id.offset).await.ok()??;
        let env = Envelope::decode(record.payload).ok()?;
        if !id.token_matches(&env.token) {
            return None;
        }
        let (state, attempts) = match self.inflight.get(&key) {
            Some(a) => (State::Delivering, *a),
            // Finished, but its outcome has aged out of the store: delivered
            // or dead can't be told apart any more, so it counts as expired.
            // (Looked up again first: the drainer may have finished it
            // between our first look at the outcomes and now.)
            None if id.offset < self.spool.committed(id.partition) => {
                return self.outcome_view(id);
            }
            None => (State::Queued, 0),
        };
        let position = self.position(id);
        Some(StatusView {
            id: id.encode(),
            state,
            attempts,
            enqueued_at: rfc3339(env.arrived_ms),
            delivered_at: None,
            upstream_status: None,
            replayed_as: None,
            history: self.history_view(id),
            position,
            eta_ms: position.map(|p| self.rates.eta(id.partition, p).map(|d| d.as_millis() as u64)),
        })
    }

    /// The status of `id` from its recorded outcome, if it has one and
    /// the token matches.
    fn outcome_view(&self, id: RequestId) -> Option<StatusView> {
        let o = self.outcomes.get(id.partition, id.offset)?;
        id.token_matches(&o.id.token).then(|| StatusView {
            id: id.encode(),
            state: o.state,
            attempts: o.attempts,
            enqueued_at: rfc3339(o.enqueued_ms),
            delivered_at: (o.state == State::Delivered).then(|| rfc3339(o.at_ms)),
            upstream_status: o.upstream_status,
            replayed_as: o.replayed_as.map(|r| r.encode()),
            position: None,
            eta_ms: None,
            history: self.history_view(id),
        })
    }
}
