//! Intake and status on JetStream: a record is published and its PubAck
//! awaited before the 202; an Idempotency-Key is claimed in the state
//! bucket so a repeat on any replica gets the first id; a request's
//! attempts and outcome live in the same bucket, so every replica answers
//! its status alike.

use super::{JetStreamError, JetStreamSpool};
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::outcomes::{AttemptRecord, KeyHash, State, HISTORY};
use crate::drain::spooler::{rfc3339, AttemptView, SpoolingError, StatusView};
use crate::trace::hex;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A claim's value while its request is being published: `pending`. Once
/// published it is replaced by the request's id.
const PENDING: &[u8] = b"pending";
/// How far apart a replica's clock and the servers' may be for a pending
/// claim's server timestamp alone to prove it abandoned.
const STALE_SKEW: Duration = Duration::from_secs(60);

/// What the state bucket keeps per request (`status.<p>.<seq>`): written at
/// each failed attempt and at the end, before the message is acked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusRecord {
    /// Hex of the id's token: a status is shown only to its own id.
    pub token: String,
    pub state: State,
    pub attempts: u32,
    pub enqueued_ms: u64,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_as: Option<String>,
    #[serde(default)]
    pub history: Vec<AttemptEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttemptEntry {
    pub at_ms: u64,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    pub latency_ms: u32,
}

impl From<&AttemptRecord> for AttemptEntry {
    fn from(a: &AttemptRecord) -> Self {
        AttemptEntry {
            at_ms: a.at_ms,
            status: a.status,
            error: a.error.map(|e| e.as_str().to_string()),
            latency_ms: a.latency_ms,
        }
    }
}

impl StatusRecord {
    /// Whether this is the status of `id`: its token matches (in constant
    /// time).
    pub fn is_for(&self, id: &RequestId) -> bool {
        let mut token = [0u8; 16];
        self.token.len() == 32
            && crate::trace::hex_into(self.token.as_bytes(), &mut token).is_some()
            && id.token_matches(&token)
    }

    pub fn push_attempt(&mut self, a: &AttemptRecord) {
        self.history.push(a.into());
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }
}

fn token_of(payload: &[u8]) -> Option<[u8; 16]> {
    payload.get(1..17)?.try_into().ok()
}

/// A state-bucket key from a route name: kept when it is a valid key
/// token, else its hex (a route name may hold characters keys can't).
fn key_token(route: &str) -> String {
    if !route.is_empty() && route.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        route.to_string()
    } else {
        format!("x{}", hex(route.as_bytes()))
    }
}

pub(super) fn status_key(partition: u32, offset: u64) -> String {
    format!("status.{partition}.{offset}")
}

enum Claim {
    Mine(u64),
    Existing(RequestId),
}

impl JetStreamSpool {
    /// Publishes `env` to `partition` and returns its id once the PubAck is
    /// in. With an idempotency `key`, a repeat of a key already spooled (by
    /// any replica) returns the first id instead.
    pub async fn append(
        &self,
        env: Envelope,
        partition: u32,
        key: Option<KeyHash>,
    ) -> Result<RequestId, SpoolingError> {
        if !self.is_up() {
            return Err(SpoolingError::Store(JetStreamError::Disconnected));
        }
        let payload = env.encode();
        if payload.len() as u64 > self.max_payload {
            return Err(SpoolingError::TooLarge {
                len: payload.len() as u64,
                limit: self.max_payload,
            });
        }
        let claim_key = key.map(|h| format!("idem.{}.{}", key_token(&env.route), hex(&h)));
        let claimed = match &claim_key {
            Some(k) => match self.claim(k).await.map_err(SpoolingError::Store)? {
                Claim::Existing(id) => return Ok(id),
                Claim::Mine(revision) => Some(revision),
            },
            None => None,
        };
        // Only a retry of this very publish is de-duplicated by the id: the
        // key's hash, so a takeover of a stale claim (whose first publish
        // did land) finds the first record rather than writing a second.
        let msg_id = match key {
            Some(h) => hex(&h),
            None => hex(&env.token),
        };
        let published = self.publish(partition, payload, &msg_id).await;
        let result = match published {
            Ok((seq, duplicate)) => {
                let mut token = env.token;
                if duplicate {
                    // The first publish under this key landed: its record
                    // (if still queued) carries the first token.
                    if let Ok(m) = self.streams[partition as usize].get_raw_message(seq).await {
                        token = token_of(&m.payload).unwrap_or(token);
                    }
                }
                self.backlog[partition as usize].fetch_add(1, Ordering::Relaxed);
                Ok(RequestId {
                    partition,
                    offset: seq,
                    token,
                })
            }
            Err(e) => Err(e),
        };
        if let (Some(k), Some(revision)) = (&claim_key, claimed) {
            match &result {
                Ok(id) => self.record_key(k, *id, revision).await,
                Err(_) => {
                    // Free the key for the client's retry.
                    let _ = self.state.delete_expect_revision(k, Some(revision)).await;
                }
            }
        }
        result.map_err(SpoolingError::Store)
    }

    /// Replaces a claim with the id published under it. Retried: a claim
    /// left pending is taken over later and published again, and the
    /// server's de-duplication only remembers the first publish for two
    /// minutes.
    async fn record_key(&self, key: &str, id: RequestId, revision: u64) {
        let value = id.encode();
        for attempt in 0..4u32 {
            match self.state.update(key, value.clone().into(), revision).await {
                Ok(_) => return,
                Err(e) => {
                    // Done before, with only the answer lost?
                    if let Ok(Some(v)) = self.state.get(key).await {
                        if v.as_ref() == value.as_bytes() {
                            return;
                        }
                    }
                    if attempt == 3 {
                        tracing::warn!(error = %e, "recording an Idempotency-Key's id failed; a repeat waits for the claim to go stale");
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
    }

    /// Publishes and waits for the PubAck, within `publish_timeout`.
    pub(super) async fn publish(
        &self,
        partition: u32,
        payload: bytes::Bytes,
        msg_id: &str,
    ) -> Result<(u64, bool), JetStreamError> {
        let subject = self.subject(partition);
        let timeout = self.cfg.publish_timeout;
        let publish = PublishMessage::build().payload(payload).message_id(msg_id);
        let ack = tokio::time::timeout(timeout, async {
            self.js
                .send_publish(subject, publish)
                .await
                .map_err(|e| JetStreamError::nats("publish", e))?
                .await
                .map_err(|e| JetStreamError::nats("publish", e))
        })
        .await
        .map_err(|_| JetStreamError::PublishTimeout(timeout))??;
        Ok((ack.sequence, ack.duplicate))
    }

    /// Claims an Idempotency-Key, or finds the id already spooled under it.
    /// A claim left pending (its replica died mid-publish) is taken over
    /// once this replica has seen it unchanged for longer than a claim can
    /// take, timed on this replica's own clock; or at once when the
    /// server's timestamp says it is far older than that (a margin that
    /// absorbs clock skew between replicas and the servers).
    async fn claim(&self, key: &str) -> Result<Claim, JetStreamError> {
        // Publish, then the claim's update: each bounded by the timeout.
        let stale = self.cfg.publish_timeout * 3 + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + stale + Duration::from_secs(1);
        let mut watched: Option<(u64, tokio::time::Instant)> = None;
        loop {
            match self.state.create(key, PENDING.into()).await {
                Ok(revision) => return Ok(Claim::Mine(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(JetStreamError::nats("claiming an Idempotency-Key", e)),
            }
            let entry = self
                .state
                .entry(key)
                .await
                .map_err(|e| JetStreamError::nats("reading an Idempotency-Key", e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue; // freed meanwhile: claim it
            };
            if entry.value.as_ref() != PENDING {
                if let Some(id) = std::str::from_utf8(&entry.value).ok().and_then(RequestId::parse) {
                    return Ok(Claim::Existing(id));
                }
            }
            let now = tokio::time::Instant::now();
            let since = match watched {
                Some((revision, since)) if revision == entry.revision => since,
                _ => {
                    watched = Some((entry.revision, now));
                    now
                }
            };
            let server_age_ms = (i128::from(crate::drain::outcomes::now_ms())
                - entry.created.unix_timestamp_nanos() / 1_000_000)
                .max(0) as u64;
            let long_dead = server_age_ms > (stale + STALE_SKEW).as_millis() as u64;
            if long_dead || now.duration_since(since) > stale {
                if let Ok(revision) = self.state.update(key, PENDING.into(), entry.revision).await {
                    return Ok(Claim::Mine(revision));
                }
                continue;
            }
            if now >= deadline {
                return Err(JetStreamError::KeyBusy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status record of `id`, if the bucket has one.
    pub(super) async fn status_record(&self, id: RequestId) -> Result<Option<(StatusRecord, u64)>, JetStreamError> {
        let entry = self
            .state
            .entry(status_key(id.partition, id.offset))
            .await
            .map_err(|e| JetStreamError::nats("reading a status", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| Some((serde_json::from_slice(&e.value).ok()?, e.revision))))
    }

    pub(super) async fn put_status(&self, id: RequestId, rec: &StatusRecord) -> Result<(), JetStreamError> {
        let body = serde_json::to_vec(rec).expect("a status record serialises");
        self.state
            .put(status_key(id.partition, id.offset), body.into())
            .await
            .map(|_| ())
            .map_err(|e| JetStreamError::nats("writing a status", e))
    }

    /// The status of `id` from any replica, or `None` when it is unknown,
    /// foreign or expired.
    pub async fn status_view(&self, id: RequestId) -> Option<StatusView> {
        if id.partition >= self.partitions {
            return None;
        }
        // Looked up twice: a record acked between the two looks has its
        // status written before its ack.
        for _ in 0..2 {
            if let Ok(Some((rec, _))) = self.status_record(id).await {
                if !rec.is_for(&id) {
                    return None;
                }
                return Some(self.view(id, &rec).await);
            }
            if let Ok(m) = self.streams[id.partition as usize].get_raw_message(id.offset).await {
                let env_token = token_of(&m.payload)?;
                if !id.token_matches(&env_token) {
                    return None;
                }
                let env = Envelope::decode(m.payload).ok()?;
                let rec = StatusRecord {
                    token: hex(&id.token),
                    state: State::Queued,
                    attempts: 0,
                    enqueued_ms: env.arrived_ms,
                    at_ms: env.arrived_ms,
                    upstream_status: None,
                    replayed_as: None,
                    history: Vec::new(),
                };
                return Some(self.view(id, &rec).await);
            }
        }
        None
    }

    async fn view(&self, id: RequestId, rec: &StatusRecord) -> StatusView {
        let open = matches!(rec.state, State::Queued | State::Delivering);
        let position = if open {
            match self.streams[id.partition as usize].get_info().await {
                Ok(info) => Some(id.offset.saturating_sub(info.state.first_sequence)),
                Err(_) => None,
            }
        } else {
            None
        };
        StatusView {
            id: id.encode(),
            state: rec.state,
            attempts: rec.attempts,
            enqueued_at: rfc3339(rec.enqueued_ms),
            delivered_at: (rec.state == State::Delivered).then(|| rfc3339(rec.at_ms)),
            upstream_status: rec.upstream_status,
            replayed_as: rec.replayed_as.clone(),
            position,
            eta_ms: position.map(|p| self.rates.eta(id.partition, p).map(|d| d.as_millis() as u64)),
            history: rec
                .history
                .iter()
                .map(|a| AttemptView {
                    at: rfc3339(a.at_ms),
                    status: a.status,
                    error: a.error.as_deref().map(error_name),
                    latency_ms: a.latency_ms,
                })
                .collect(),
        }
    }

    /// The id spooled under an Idempotency-Key of `route`, for the admin
    /// lookup.
    pub async fn id_for_key(&self, route: &str, hash: KeyHash) -> Option<RequestId> {
        let value = self
            .state
            .get(format!("idem.{}.{}", key_token(route), hex(&hash)))
            .await
            .ok()??;
        std::str::from_utf8(&value).ok().and_then(RequestId::parse)
    }

    /// The estimated time until `id` is delivered, from the fleet's
    /// deliveries and the records ahead of it.
    pub fn eta(&self, id: RequestId) -> Option<Duration> {
        if id.offset < self.done_below[id.partition as usize].load(Ordering::Relaxed) {
            return None; // finished
        }
        // The records between the head (as last known) and it.
        let head = self.done_below[id.partition as usize].load(Ordering::Relaxed);
        self.rates.eta(id.partition, id.offset.saturating_sub(head))
    }
}

/// The attempt error names the status answer uses (static, like the local
/// spool's).
fn error_name(s: &str) -> &'static str {
    match s {
        "connect" => "connect",
        "timeout" => "timeout",
        "exchange" => "exchange",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_become_key_tokens() {
        assert_eq!(key_token("orders"), "orders");
        assert_eq!(key_token("a b"), "x612062");
        assert_eq!(key_token("a.b"), "x612e62");
    }

    #[test]
    fn history_keeps_the_newest_attempts() {
        let mut rec = StatusRecord {
            token: String::new(),
            state: State::Queued,
            attempts: 0,
            enqueued_ms: 0,
            at_ms: 0,
            upstream_status: None,
            replayed_as: None,
            history: Vec::new(),
        };
        for i in 0..15u64 {
            rec.push_attempt(&AttemptRecord {
                at_ms: i,
                status: Some(503),
                error: None,
                latency_ms: 1,
            });
        }
        assert_eq!(rec.history.len(), HISTORY);
        assert_eq!(rec.history[0].at_ms, 5);
        let text = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<StatusRecord>(&text).unwrap(), rec);
    }
}
