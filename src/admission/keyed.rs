//! A keyed state store for governor with a hard cap on the number of keys.
//!
//! governor's own keyed stores grow with every distinct key they see, so a
//! flood of random `X-User-Id` values would grow memory without bound. This
//! store holds at most `max_keys` buckets (plus at most one per concurrent
//! caller racing an insert). A new key arriving when the store is full
//! shares one overflow bucket: the route stays protected and memory stays
//! flat. Idle keys — those whose bucket has fully refilled, so forgetting
//! them changes no decision — are swept out periodically to make room.

use dashmap::DashMap;

/// What a bucket is keyed by: SHA-256 of the key's value, truncated to
/// 128 bits. Fixed size, so memory per key is bounded whatever clients
/// send (a 16 KiB header value costs what a 4-byte one does), and the same
/// on every replica, so a store shared between replicas can use it too.
pub type KeyHash = u128;

/// The bucket key of a key value.
pub fn key_hash(value: &[u8]) -> KeyHash {
    let d = ring::digest::digest(&ring::digest::SHA256, value);
    let mut first = [0u8; 16];
    first.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(first)
}
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use std::sync::atomic::{AtomicU64, Ordering};

/// GCRA theoretical arrival time in nanoseconds since the limiter's start;
/// zero means "never used", as in governor's own in-memory state.
#[derive(Default)]
struct Tat(AtomicU64);

impl Tat {
    fn measure_and_replace<T, F, E>(&self, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let as_state = |v: u64| if v == 0 { None } else { Some(Nanos::new(v)) };
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f(as_state(prev))?;
            match self
                .0
                .compare_exchange_weak(prev, next.as_u64(), Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }
}

pub struct BoundedKeyedStore {
    buckets: DashMap<KeyHash, Tat>,
    max_keys: usize,
    /// Shared by new keys while every slot is in recent use.
    overflow: Tat,
    /// Overflow hits since the last sweep; a sweep runs every
    /// `sweep_every` hits so its O(max_keys) cost is amortised.
    overflow_hits: AtomicU64,
    sweep_every: u64,
}

impl BoundedKeyedStore {
    pub fn new(max_keys: usize) -> Self {
        BoundedKeyedStore {
            buckets: DashMap::with_capacity(max_keys.min(4096)),
            max_keys,
            overflow: Tat::default(),
            overflow_hits: AtomicU64::new(0),
            sweep_every: (max_keys as u64 / 8).clamp(16, 4096),
        }
    }

    /// True when the caller should sweep idle keys before the next check.
    pub fn sweep_due(&self) -> bool {
        self.buckets.len() >= self.max_keys && self.overflow_hits.load(Ordering::Relaxed) >= self.sweep_every
    }
}

impl StateStore for BoundedKeyedStore {
    type Key = KeyHash;

    fn measure_and_replace<T, F, E>(&self, key: &KeyHash, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(slot) = self.buckets.get(key) {
            return slot.measure_and_replace(f);
        }
        if self.buckets.len() >= self.max_keys {
            self.overflow_hits.fetch_add(1, Ordering::Relaxed);
            return self.overflow.measure_and_replace(f);
        }
        let slot = self.buckets.entry(*key).or_default();
        slot.measure_and_replace(f)
    }
}

impl ShrinkableKeyedStateStore<KeyHash> for BoundedKeyedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let floor = drop_below.as_u64();
        self.buckets.retain(|_, tat| tat.0.load(Ordering::Relaxed) > floor);
        self.overflow_hits.store(0, Ordering::Relaxed);
        if self.buckets.capacity() > 4 * self.max_keys.max(1024) {
            self.buckets.shrink_to_fit();
        }
    }

    fn shrink_to_fit(&self) {
        self.buckets.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// A handle to a [`BoundedKeyedStore`] that governor can own while the
/// route limiter keeps another.
pub struct SharedStore(pub std::sync::Arc<BoundedKeyedStore>);

impl StateStore for SharedStore {
    type Key = KeyHash;

    fn measure_and_replace<T, F, E>(&self, key: &KeyHash, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<KeyHash> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0)
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}
