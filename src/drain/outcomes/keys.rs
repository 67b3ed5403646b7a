//! Idempotency-Key dedupe: a key's journalled identity ([`key_hash`]) and
//! the claim protocol by which the first request with a key spools and
//! later ones get its id.

use tokio::sync::watch;

use super::journal;
use super::{now_ms, OutcomeStore, RequestId};

pub type KeyHash = [u8; 16];

/// A key's slot while its first request is being spooled: later requests
/// with the same key wait for the id instead of writing a second record.
pub(super) enum KeySlot {
    Pending(watch::Receiver<Option<RequestId>>),
    Done { id: RequestId, at_ms: u64 },
}

/// What to do with a request carrying an Idempotency-Key.
pub enum KeyClaim {
    /// First with this key: spool it, then [`OutcomeStore::key_done`] or
    /// [`OutcomeStore::key_failed`].
    First(KeyHash, watch::Sender<Option<RequestId>>),
    /// Already spooled under this id.
    Existing(RequestId),
}

/// The journalled identity of (route, Idempotency-Key): SipHash-1-3 with
/// fixed keys, 128 bits. A pinned algorithm, unlike std's `DefaultHasher`
/// (whose output may change between Rust releases), so hashes written
/// before an upgrade still match after it.
pub fn key_hash(route: &str, key: &str) -> KeyHash {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new_with_keys(0x736c_7569_6365_6964, 0x656d_706f_7465_6e63);
    h.write(route.as_bytes());
    h.write_u8(0xff);
    h.write(key.as_bytes());
    siphasher::sip128::Hasher128::finish128(&h).as_bytes()
}

impl OutcomeStore {
    /// The request spooled under `hash`, if it is remembered (and not
    /// still being spooled).
    pub fn id_for_key(&self, hash: KeyHash) -> Option<RequestId> {
        match self.keys.get(&hash).as_deref() {
            Some(KeySlot::Done { id, at_ms })
                if now_ms().saturating_sub(*at_ms) < self.retention.as_millis() as u64 =>
            {
                Some(*id)
            }
            _ => None,
        }
    }

    /// Claims `hash` for a new request, or returns the id of the request
    /// that already holds it (waiting for it if it is still being spooled).
    pub async fn claim_key(&self, hash: KeyHash) -> KeyClaim {
        loop {
            let mut waiter = match self.keys.entry(hash) {
                dashmap::mapref::entry::Entry::Occupied(o) => match o.get() {
                    KeySlot::Done { id, at_ms }
                        if now_ms().saturating_sub(*at_ms) < self.retention.as_millis() as u64 =>
                    {
                        return KeyClaim::Existing(*id)
                    }
                    KeySlot::Done { .. } => {
                        let (tx, rx) = watch::channel(None);
                        *o.into_ref() = KeySlot::Pending(rx);
                        return KeyClaim::First(hash, tx);
                    }
                    // Its first request vanished without settling the key
                    // (its task was dropped): this one takes over.
                    KeySlot::Pending(rx) if rx.has_changed().is_err() && rx.borrow().is_none() => {
                        let (tx, rx) = watch::channel(None);
                        *o.into_ref() = KeySlot::Pending(rx);
                        return KeyClaim::First(hash, tx);
                    }
                    KeySlot::Pending(rx) => rx.clone(),
                },
                dashmap::mapref::entry::Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(None);
                    v.insert(KeySlot::Pending(rx));
                    return KeyClaim::First(hash, tx);
                }
            };
            // The first request finishes (done or failed) and we look again.
            let _ = waiter.wait_for(|v| v.is_some()).await;
            let settled = *waiter.borrow();
            if let Some(id) = settled {
                return KeyClaim::Existing(id);
            }
        }
    }

    /// The first request with this key was spooled as `id`.
    pub fn key_done(&self, hash: KeyHash, tx: watch::Sender<Option<RequestId>>, id: RequestId) {
        let at_ms = now_ms();
        self.write_entry(&journal::encode_key(hash, &id, at_ms));
        self.keys.insert(hash, KeySlot::Done { id, at_ms });
        let _ = tx.send(Some(id));
        if self.keys.len() > self.max_entries {
            self.sweep();
        }
    }

    /// The first request with this key was not spooled: free the key.
    pub fn key_failed(&self, hash: KeyHash, tx: watch::Sender<Option<RequestId>>) {
        self.keys
            .remove_if(&hash, |_, slot| matches!(slot, KeySlot::Pending(_)));
        drop(tx);
    }
}
