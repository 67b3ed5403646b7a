//! The drainer on JetStream: every replica pulls from the shared `drain`
//! consumer of each partition stream (a consumer group), replays through
//! the same replay stack as the local spool (budget, adaptive limit,
//! breaker), and settles each message with the server:
//!
//! - delivered → status written, then acked (removed: workqueue);
//! - worth a retry → negative ack with the backoff as its delay, so the
//!   next attempt may come from any replica;
//! - dead → published to the DLQ stream, that PubAck awaited, then
//!   terminated;
//! - an attempt longer than a third of `ack_wait` sends in-progress acks,
//!   so the server doesn't hand the message to another replica meanwhile.
//!
//! A replica that dies leaves its un-acked message to be redelivered to
//! another after `ack_wait`. `Sluice-Attempt` counts the attempts made,
//! kept in the record's status (plus attempts made before a DLQ replay):
//! unlike the server's delivery count, hand-backs and `ack_wait` expiries
//! don't raise it.

use super::intake::StatusRecord;
use super::{JetStreamSpool, CONSUMER};
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::drain::outcomes::{now_ms, State};
use crate::drain::replay::{full_jitter, Attempt, BreakerOpen, Replayer};
use crate::runtime::Shared;
use crate::shutdown::Shutdown;
use crate::trace::hex;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

pub struct JetStreamDrainer {
    spool: Arc<JetStreamSpool>,
    replayer: Replayer,
}

/// Headers of a dead letter in the DLQ stream.
pub(super) const DLQ_REASON: &str = "Sluice-Dlq-Reason";
pub(super) const DLQ_STATUS: &str = "Sluice-Dlq-Status";
pub(super) const DLQ_PARTITION: &str = "Sluice-Partition";
pub(super) const DLQ_SEQUENCE: &str = "Sluice-Sequence";
pub(super) const DLQ_DEAD_AT: &str = "Sluice-Dead-At";

impl JetStreamDrainer {
    pub fn new(spool: Arc<JetStreamSpool>, shared: Arc<Shared>, metrics: &crate::metrics::Metrics) -> Arc<Self> {
        Arc::new(JetStreamDrainer {
            spool,
            replayer: Replayer::new(shared, metrics),
        })
    }

    /// One puller per partition; at `shutdown` each hands its messages in
    /// flight back (negative ack, no delay) so another replica takes them
    /// at once.
    pub fn start(self: &Arc<Self>, shutdown: Shutdown) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for p in 0..self.spool.partitions {
            let me = self.clone();
            let shutdown = shutdown.clone();
            set.spawn(async move { me.run_partition(p, shutdown).await });
        }
        set
    }

    async fn consumer(&self, partition: u32, shutdown: &Shutdown) -> Option<PullConsumer> {
        loop {
            match self.spool.streams[partition as usize]
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(CONSUMER)
                .await
            {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(partition, error = %e, "getting the drain consumer failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return None,
            }
        }
    }

    async fn run_partition(self: Arc<Self>, partition: u32, shutdown: Shutdown) {
        let Some(consumer) = self.consumer(partition, &shutdown).await else {
            return;
        };
        let mut parallel: JoinSet<()> = JoinSet::new();
        // Fetch failures are logged once per outage, not twice a second.
        let mut failing = false;
        loop {
            let mut paused = self.spool.paused.subscribe();
            tokio::select! {
                _ = paused.wait_for(|p| !*p) => {}
                _ = shutdown.wait() => break,
            }
            while parallel.try_join_next().is_some() {}
            let room = (self.spool.max_in_flight as usize)
                .saturating_sub(parallel.len())
                .max(1);
            let batch = consumer
                .fetch()
                .max_messages(room)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(partition, "fetching from the drain consumer works again");
                    }
                    b
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(partition, error = %e, "fetch from the drain consumer failed; retrying every 500 ms");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.wait() => break,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    _ = shutdown.wait() => {
                        Self::hand_back_rest(&mut batch).await;
                        None
                    }
                };
                let Some(Ok(msg)) = next else { break };
                if self.spool.max_in_flight == 1 {
                    self.settle_or_hand_back(msg, partition, &shutdown).await;
                } else {
                    while parallel.len() >= self.spool.max_in_flight as usize {
                        parallel.join_next().await;
                    }
                    let me = self.clone();
                    let shutdown = shutdown.clone();
                    parallel.spawn(async move { me.settle_or_hand_back(msg, partition, &shutdown).await });
                }
            }
            if shutdown.is_triggered() {
                break;
            }
        }
        while parallel.join_next().await.is_some() {}
    }

    /// Delivers `msg` to a final word with the server, telling the server
    /// all along that it is being worked on. At shutdown a message whose
    /// attempt hasn't started goes back at once for another replica; one
    /// whose attempt may be under way gets `upstream.timeout` and two
    /// publish timeouts to finish and be settled, rather than be sent
    /// twice, and goes back after that (a budget wait or NATS gone must not
    /// hold the shutdown).
    async fn settle_or_hand_back(&self, msg: Message, partition: u32, shutdown: &Shutdown) {
        let started = AtomicBool::new(false);
        let work = async {
            tokio::select! {
                _ = self.settle(&msg, partition, &started) => {}
                _ = self.keep_alive(&msg) => {}
            }
        };
        tokio::pin!(work);
        tokio::select! {
            _ = &mut work => return,
            _ = shutdown.wait() => {}
        }
        if started.load(AtomicOrdering::Acquire) {
            let grace = self.replayer.upstream_timeout() + self.spool.cfg.publish_timeout * 2;
            if tokio::time::timeout(grace, work).await.is_ok() {
                return;
            }
        }
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }

    async fn settle(&self, msg: &Message, partition: u32, started: &AtomicBool) {
        let Ok(info) = msg.info() else {
            tracing::error!(
                partition,
                "JetStream message without delivery info; left for redelivery"
            );
            return;
        };
        let seq = info.stream_sequence;
        let env = match Envelope::decode(msg.payload.clone()) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(partition, seq, error = %e, "undecodable JetStream record; dead-lettered");
                self.dead(msg, partition, seq, None, "undecodable").await;
                return;
            }
        };
        let id = RequestId {
            partition,
            offset: seq,
            token: env.token,
        };
        let token = hex(&id.token);
        // A status under this sequence is this record's only if its token
        // matches (a stream made anew counts from 1 again).
        let found = match self.spool.status_record(id).await {
            Ok(Some((rec, _))) if rec.is_for(&id) => Some(rec),
            Ok(_) => None,
            // Unknown is not "none": it may have been delivered already, and
            // its attempts would start over. Asked again shortly.
            Err(e) => {
                tracing::warn!(partition, seq, error = %e, "reading a record's status failed; it is tried again shortly");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        if let Some(rec) = &found {
            // Settled before, and only the ack or the termination was lost:
            // settled again, not sent again.
            match rec.state {
                State::Delivered => {
                    let _ = msg.double_ack().await;
                    self.spool.finished(partition, seq);
                    return;
                }
                State::Dead => {
                    let _ = msg.double_ack_with(AckKind::Term).await;
                    self.spool.finished(partition, seq);
                    return;
                }
                State::Queued | State::Delivering => {}
            }
        }
        let mut rec = found.unwrap_or(StatusRecord {
            token,
            state: State::Queued,
            attempts: 0,
            enqueued_ms: env.arrived_ms,
            at_ms: now_ms(),
            upstream_status: None,
            replayed_as: None,
            history: Vec::new(),
        });
        // Fetched just as the fleet paused: held (still ours) until resumed.
        let mut paused = self.spool.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
        let cfg = self.replayer.drain_config();
        let expired = || Duration::from_millis(now_ms().saturating_sub(env.arrived_ms)) > cfg.max_age;
        // Attempts are counted in the status record, not by the server's
        // delivery count, which hand-backs at shutdown and ack_wait
        // expiries raise too.
        let made = rec.attempts;
        if made >= cfg.max_attempts {
            // Its last attempt was made (the replica died before settling
            // it): no attempt beyond the limit.
            self.dead(msg, partition, seq, Some((id, rec)), "max_attempts").await;
            return;
        }
        let attempt_no = made + 1;
        let sent_as = attempt_no + u32::from(env.attempt_base);
        let mut shown_delivering = false;
        let attempted = loop {
            if expired() {
                break None;
            }
            // Shown as delivering (from any replica) while the attempt
            // runs; not while the breaker holds it back, so an attempt is
            // never counted that wasn't made.
            if !shown_delivering && !self.replayer.breaker_open() {
                rec.state = State::Delivering;
                rec.attempts = attempt_no;
                if let Err(e) = self.spool.put_status(id, &rec).await {
                    tracing::debug!(error = %e, "writing a delivering status failed");
                }
                shown_delivering = true;
            }
            started.store(true, AtomicOrdering::Release);
            match self.replayer.attempt(&env, id, sent_as, made == 0).await {
                Ok(done) => break Some(done),
                // Refused by the open breaker before it was sent: no
                // attempt; wait here (the message stays ours, expiry and
                // the fleet's pause checked again) and ask again.
                Err(BreakerOpen { retry_after }) => {
                    started.store(false, AtomicOrdering::Release);
                    tokio::time::sleep(retry_after.min(Duration::from_millis(500))).await;
                    let _ = paused.wait_for(|p| !*p).await;
                }
            }
        };
        let Some((outcome, attempted)) = attempted else {
            rec.attempts = made;
            self.dead(msg, partition, seq, Some((id, rec)), "expired").await;
            return;
        };
        rec.attempts = attempt_no;
        rec.push_attempt(&attempted);
        rec.at_ms = now_ms();
        match outcome {
            Attempt::Delivered(status) => {
                rec.state = State::Delivered;
                rec.upstream_status = Some(status);
                if let Err(e) = self.spool.put_status(id, &rec).await {
                    tracing::warn!(error = %e, "writing a delivered status failed");
                }
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(partition, seq, error = %e, "ack failed; the record will be acked when it comes back");
                }
                self.replayer.counters.delivered.inc();
                self.spool.finished(partition, seq);
            }
            Attempt::Rejected(status) => {
                rec.upstream_status = Some(status);
                self.dead(msg, partition, seq, Some((id, rec)), "rejected").await;
            }
            Attempt::Retry { status, retry_after } => {
                rec.upstream_status = status.or(rec.upstream_status);
                if attempt_no >= cfg.max_attempts {
                    self.dead(msg, partition, seq, Some((id, rec)), "max_attempts").await;
                    return;
                }
                self.replayer.counters.retried.inc();
                // Started and not finished: delivering, as with the local spool,
                // until it is settled.
                rec.state = State::Delivering;
                if let Err(e) = self.spool.put_status(id, &rec).await {
                    tracing::debug!(error = %e, "writing an attempt's status failed");
                }
                let backoff = full_jitter(&cfg, attempt_no).max(retry_after.unwrap_or_default().min(cfg.backoff_max));
                if let Err(e) = msg.ack_with(AckKind::Nak(Some(backoff))).await {
                    tracing::debug!(partition, seq, error = %e, "negative ack failed; redelivered after ack_wait");
                }
            }
        }
    }

    /// Hands back what a fetch had delivered but this replica won't settle
    /// (shutdown), so another replica takes it now rather than after
    /// `ack_wait`.
    async fn hand_back_rest(batch: &mut async_nats::jetstream::consumer::pull::Batch) {
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(50), batch.next()).await {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Tells the server, a few times per `ack_wait`, that `msg` is being
    /// worked on. Never ends.
    async fn keep_alive(&self, msg: &Message) {
        let every = (self.spool.cfg.ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let _ = msg.ack_with(AckKind::Progress).await;
        }
    }

    /// Dead-letters `msg` (the record at `seq` of `partition`): published
    /// to the DLQ stream until that PubAck comes, then its status (`rec`,
    /// whose last status and attempts the letter carries) written and the
    /// message terminated.
    async fn dead(
        &self,
        msg: &Message,
        partition: u32,
        seq: u64,
        status: Option<(RequestId, StatusRecord)>,
        reason: &str,
    ) {
        self.replayer.counters.count_dead(reason);
        let last_status = status.as_ref().and_then(|(_, rec)| rec.upstream_status);
        let attempts = status.as_ref().map_or(0, |(_, rec)| rec.attempts);
        let dead_at = now_ms();
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(DLQ_REASON, reason);
            headers.insert(DLQ_PARTITION, partition.to_string().as_str());
            headers.insert(DLQ_SEQUENCE, seq.to_string().as_str());
            headers.insert(DLQ_DEAD_AT, dead_at.to_string().as_str());
            if let Some(s) = last_status {
                headers.insert(DLQ_STATUS, s.to_string().as_str());
            }
            // The same letter published twice (a retry of this loop) is
            // kept once.
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("dead-{partition}-{seq}").as_str(),
            );
            let published = async {
                self.spool
                    .js
                    .publish_with_headers(self.spool.dlq_subject(), headers, msg.payload.clone())
                    .await?
                    .await
            };
            match tokio::time::timeout(self.spool.cfg.publish_timeout, published).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => tracing::error!(partition, seq, error = %e, "dead-lettering failed; retrying"),
                Err(_) => tracing::error!(partition, seq, "dead-lettering timed out; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        crate::crash::point("dlq_move");
        tracing::warn!(partition, seq, reason, status = ?last_status, attempts, "spooled request dead-lettered");
        if let Some((id, mut rec)) = status {
            rec.state = State::Dead;
            rec.at_ms = dead_at;
            if let Err(e) = self.spool.put_status(id, &rec).await {
                tracing::warn!(error = %e, "writing a dead status failed");
            }
        }
        if let Err(e) = msg.double_ack_with(AckKind::Term).await {
            tracing::warn!(partition, seq, error = %e, "terminating a dead-lettered message failed; it may be dead-lettered again");
        }
        self.spool.finished(partition, seq);
    }
}
