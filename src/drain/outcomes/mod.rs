//! What became of spooled requests, for the status endpoint, and which
//! Idempotency-Keys were already spooled, for dedupe — bounded in memory
//! and in time, and surviving a restart.
//!
//! Both live in memory (bounded maps) and in a small journal of fixed-size
//! entries under `DIR/status/` (two generations, `journal.0` and
//! `journal.1`; when the active one passes its size limit the other is
//! truncated and becomes active, so disk use stays under twice the limit).
//! At open the entries younger than the retention window are loaded back.
//!
//! Entry (96 bytes, little-endian):
//! ```text
//! 0  crc32c u32 (of bytes 4..80)   4 kind u8 (1 outcome, 2 idempotency)
//! 5  state u8   6 upstream_status u16   8 attempts u32   12 at_ms u64
//! 20 partition u32   24 offset u64   32 token [16]
//! 48 aux [16] (outcome: replayed_as token; idempotency: key hash)
//! 64 aux_partition u32   68 aux_offset u64   76 flags u32 (bit 0: replayed)
//! 80 enqueued_ms u64   88 reserved [8]
//! ```
//! Journal writes are not fsynced: they survive `kill -9` through the page
//! cache, and after a power loss a missing outcome only makes a delivered
//! record's status less detailed (see `status` in the drainer).

use super::id::RequestId;
use dashmap::DashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

const ENTRY: usize = 96;
const KIND_OUTCOME: u8 = 1;
const KIND_IDEMPOTENCY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Delivering,
    Delivered,
    Dead,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Queued => 0,
            State::Delivering => 1,
            State::Delivered => 2,
            State::Dead => 3,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        Some(match c {
            0 => State::Queued,
            1 => State::Delivering,
            2 => State::Delivered,
            3 => State::Dead,
            _ => return None,
        })
    }
}

/// The final (or latest) word on one spooled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub id: RequestId,
    pub state: State,
    pub attempts: u32,
    pub upstream_status: Option<u16>,
    pub at_ms: u64,
    /// When the request was spooled.
    pub enqueued_ms: u64,
    /// Set when the dead letter was replayed under a new id.
    pub replayed_as: Option<RequestId>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error("status journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A key's slot while its first request is being spooled: later requests
/// with the same key wait for the id instead of writing a second record.
enum KeySlot {
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

pub type KeyHash = [u8; 16];

pub struct OutcomeStore {
    dir: PathBuf,
    outcomes: DashMap<(u32, u64), Outcome>,
    keys: DashMap<KeyHash, KeySlot>,
    journal: Mutex<Journal>,
    retention: Duration,
    max_entries: usize,
}

struct Journal {
    file: File,
    generation: u8,
    len: u64,
    limit: u64,
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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn journal_path(dir: &Path, generation: u8) -> PathBuf {
    dir.join(format!("journal.{generation}"))
}

impl OutcomeStore {
    /// Opens `spool_dir/status`, loading entries younger than `retention`.
    /// Memory holds at most `max_entries` outcomes and as many keys.
    pub fn open(spool_dir: &Path, retention: Duration, max_entries: usize) -> Result<OutcomeStore, OutcomeError> {
        let dir = spool_dir.join("status");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutcomeError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let store = OutcomeStore {
            outcomes: DashMap::new(),
            keys: DashMap::new(),
            retention,
            max_entries,
            journal: Mutex::new(Journal {
                // Replaced below once we know which generation is newest.
                file: open_append(&journal_path(&dir, 0)).map_err(io(&journal_path(&dir, 0)))?,
                generation: 0,
                len: 0,
                limit: (max_entries as u64 * ENTRY as u64).max(1 << 20),
            }),
            dir: dir.clone(),
        };
        let horizon = now_ms().saturating_sub(retention.as_millis() as u64);
        // Load the older generation first, so the newer one's entries win.
        let mut generations = Vec::new();
        for generation in [0u8, 1] {
            let path = journal_path(&dir, generation);
            let mut bytes = Vec::new();
            if let Ok(mut f) = File::open(&path) {
                f.read_to_end(&mut bytes).map_err(io(&path))?;
            }
            let newest_at = bytes
                .chunks_exact(ENTRY)
                .filter(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) == crc32c::crc32c(&e[4..]))
                .map(|e| u64::from_le_bytes(e[12..20].try_into().unwrap_or_default()))
                .max()
                .unwrap_or(0);
            generations.push((newest_at, generation, bytes));
        }
        generations.sort_by_key(|g| g.0);
        let newest = (generations[1].0, generations[1].1);
        for (_, _, bytes) in &generations {
            for chunk in bytes.chunks_exact(ENTRY) {
                store.apply_entry(chunk, horizon);
            }
        }
        let active = journal_path(&dir, newest.1);
        let file = open_append(&active).map_err(io(&active))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A torn last entry (crash mid-write) is cut so appends stay aligned.
        if len % ENTRY as u64 != 0 {
            file.set_len(len - len % ENTRY as u64).map_err(io(&active))?;
        }
        *store.journal.lock().unwrap_or_else(|p| p.into_inner()) = Journal {
            file,
            generation: newest.1,
            len: len - len % ENTRY as u64,
            limit: (max_entries as u64 * ENTRY as u64).max(1 << 20),
        };
        Ok(store)
    }

    /// Loads one journal entry; returns its time when it was valid.
    fn apply_entry(&self, e: &[u8], horizon: u64) -> Option<u64> {
        let crc = u32::from_le_bytes(e[0..4].try_into().ok()?);
        if crc != crc32c::crc32c(&e[4..]) {
            return None;
        }
        let at_ms = u64::from_le_bytes(e[12..20].try_into().ok()?);
        if at_ms < horizon {
            return Some(at_ms);
        }
        let partition = u32::from_le_bytes(e[20..24].try_into().ok()?);
        let offset = u64::from_le_bytes(e[24..32].try_into().ok()?);
        let mut token = [0u8; 16];
        token.copy_from_slice(&e[32..48]);
        let mut aux = [0u8; 16];
        aux.copy_from_slice(&e[48..64]);
        let id = RequestId {
            partition,
            offset,
            token,
        };
        match e[4] {
            KIND_OUTCOME => {
                let state = State::from_code(e[5])?;
                let status = u16::from_le_bytes(e[6..8].try_into().ok()?);
                let replayed = u32::from_le_bytes(e[76..80].try_into().ok()?) & 1 == 1;
                let outcome = Outcome {
                    id,
                    state,
                    attempts: u32::from_le_bytes(e[8..12].try_into().ok()?),
                    upstream_status: (status != 0).then_some(status),
                    at_ms,
                    enqueued_ms: u64::from_le_bytes(e[80..88].try_into().ok()?),
                    replayed_as: replayed.then(|| RequestId {
                        partition: u32::from_le_bytes(e[64..68].try_into().unwrap()),
                        offset: u64::from_le_bytes(e[68..76].try_into().unwrap()),
                        token: aux,
                    }),
                };
                self.outcomes.insert((partition, offset), outcome);
            }
            KIND_IDEMPOTENCY => {
                self.keys.insert(aux, KeySlot::Done { id, at_ms });
            }
            _ => return None,
        }
        Some(at_ms)
    }

    fn write_entry(&self, entry: &[u8; ENTRY]) {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if j.len + ENTRY as u64 > j.limit {
            // Switch generations: the other file's entries are at least one
            // whole generation old. Entries still wanted stay in memory and
            // are re-journalled below only if they change again; a restart
            // then knows only the newer generation, which is the retention
            // this store promises (bounded disk first).
            let next = 1 - j.generation;
            let path = journal_path(&self.dir, next);
            match OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => match open_append(&path) {
                    Ok(f) => {
                        j.file = f;
                        j.generation = next;
                        j.len = 0;
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate the status journal"),
                },
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate the status journal"),
            }
        }
        match j.file.write_all(entry) {
            Ok(()) => j.len += ENTRY as u64,
            Err(e) => {
                // Cut a partial entry so the journal stays aligned.
                let _ = j.file.set_len(j.len);
                tracing::warn!(error = %e, "status journal write failed; status detail may be lost on restart");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        kind: u8,
        id: &RequestId,
        state: u8,
        status: u16,
        attempts: u32,
        at_ms: u64,
        aux: [u8; 16],
        aux_id: Option<(u32, u64)>,
        enqueued_ms: u64,
    ) -> [u8; ENTRY] {
        let mut e = [0u8; ENTRY];
        e[4] = kind;
        e[5] = state;
        e[6..8].copy_from_slice(&status.to_le_bytes());
        e[8..12].copy_from_slice(&attempts.to_le_bytes());
        e[12..20].copy_from_slice(&at_ms.to_le_bytes());
        e[20..24].copy_from_slice(&id.partition.to_le_bytes());
        e[24..32].copy_from_slice(&id.offset.to_le_bytes());
        e[32..48].copy_from_slice(&id.token);
        e[48..64].copy_from_slice(&aux);
        if let Some((p, o)) = aux_id {
            e[64..68].copy_from_slice(&p.to_le_bytes());
            e[68..76].copy_from_slice(&o.to_le_bytes());
            e[76..80].copy_from_slice(&1u32.to_le_bytes());
        }
        e[80..88].copy_from_slice(&enqueued_ms.to_le_bytes());
        let crc = crc32c::crc32c(&e[4..]);
        e[0..4].copy_from_slice(&crc.to_le_bytes());
        e
    }

    /// Records a final outcome (delivered or dead).
    pub fn record(&self, outcome: Outcome) {
        let aux = outcome.replayed_as.map(|r| r.token).unwrap_or([0; 16]);
        let aux_id = outcome.replayed_as.map(|r| (r.partition, r.offset));
        let entry = Self::encode(
            KIND_OUTCOME,
            &outcome.id,
            outcome.state.code(),
            outcome.upstream_status.unwrap_or(0),
            outcome.attempts,
            outcome.at_ms,
            aux,
            aux_id,
            outcome.enqueued_ms,
        );
        self.write_entry(&entry);
        self.outcomes.insert((outcome.id.partition, outcome.id.offset), outcome);
        if self.outcomes.len() > self.max_entries {
            self.sweep();
        }
    }

    pub fn get(&self, partition: u32, offset: u64) -> Option<Outcome> {
        self.outcomes.get(&(partition, offset)).map(|o| *o)
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
        self.write_entry(&Self::encode(KIND_IDEMPOTENCY, &id, 0, 0, 0, at_ms, hash, None, 0));
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

    /// Drops what is older than the retention window, then, if still over
    /// the cap, the oldest half.
    pub fn sweep(&self) {
        let horizon = now_ms().saturating_sub(self.retention.as_millis() as u64);
        self.outcomes.retain(|_, o| o.at_ms >= horizon);
        self.keys.retain(|_, s| match s {
            KeySlot::Done { at_ms, .. } => *at_ms >= horizon,
            KeySlot::Pending(_) => true,
        });
        if self.outcomes.len() > self.max_entries {
            let mut ages: Vec<u64> = self.outcomes.iter().map(|o| o.at_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.outcomes.retain(|_, o| o.at_ms > cut);
        }
        if self.keys.len() > self.max_entries {
            let mut ages: Vec<u64> = self
                .keys
                .iter()
                .filter_map(|s| match s.value() {
                    KeySlot::Done { at_ms, .. } => Some(*at_ms),
                    KeySlot::Pending(_) => None,
                })
                .collect();
            ages.sort_unstable();
            if let Some(cut) = ages.get(ages.len() / 2).copied() {
                self.keys.retain(|_, s| match s {
                    KeySlot::Done { at_ms, .. } => *at_ms > cut,
                    KeySlot::Pending(_) => true,
                });
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.outcomes.len(), self.keys.len())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(p: u32, o: u64) -> RequestId {
        RequestId {
            partition: p,
            offset: o,
            token: [p as u8; 16],
        }
    }

    #[tokio::test]
    async fn outcomes_and_keys_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap();
            s.record(Outcome {
                id: id(1, 5),
                state: State::Delivered,
                attempts: 2,
                upstream_status: Some(201),
                at_ms: now_ms(),
                enqueued_ms: 7,
                replayed_as: None,
            });
            s.record(Outcome {
                id: id(2, 9),
                state: State::Dead,
                attempts: 1,
                upstream_status: Some(400),
                at_ms: now_ms(),
                enqueued_ms: 8,
                replayed_as: Some(id(2, 30)),
            });
            let h = key_hash("orders", "k-1");
            match s.claim_key(h).await {
                KeyClaim::First(h, tx) => s.key_done(h, tx, id(3, 1)),
                KeyClaim::Existing(_) => panic!("first claim"),
            }
        }
        let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap();
        let o = s.get(1, 5).unwrap();
        assert_eq!(
            (o.state, o.attempts, o.upstream_status),
            (State::Delivered, 2, Some(201))
        );
        assert_eq!(s.get(2, 9).unwrap().replayed_as, Some(id(2, 30)));
        assert!(s.get(1, 6).is_none());
        match s.claim_key(key_hash("orders", "k-1")).await {
            KeyClaim::Existing(found) => assert_eq!(found, id(3, 1)),
            KeyClaim::First(..) => panic!("key must survive reopen"),
        }
        assert!(matches!(
            s.claim_key(key_hash("other-route", "k-1")).await,
            KeyClaim::First(..)
        ));
    }

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(OutcomeStore::open(dir.path(), Duration::from_secs(3600), 1000).unwrap());
        let h = key_hash("r", "same");
        let KeyClaim::First(h, tx) = s.claim_key(h).await else {
            panic!()
        };
        let s2 = s.clone();
        let second = tokio::spawn(async move { s2.claim_key(h).await });
        tokio::task::yield_now().await;
        s.key_done(h, tx, id(0, 42));
        match second.await.unwrap() {
            KeyClaim::Existing(found) => assert_eq!(found, id(0, 42)),
            KeyClaim::First(..) => panic!("second claim must see the first's id"),
        }
        // A failed first frees the key for the next request.
        let h2 = key_hash("r", "fails");
        let KeyClaim::First(h2, tx2) = s.claim_key(h2).await else {
            panic!()
        };
        s.key_failed(h2, tx2);
        assert!(matches!(s.claim_key(h2).await, KeyClaim::First(..)));
    }

    #[test]
    fn memory_and_disk_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutcomeStore::open(dir.path(), Duration::from_secs(3600), 100).unwrap();
        for i in 0..50_000u64 {
            s.record(Outcome {
                id: id(0, i),
                state: State::Delivered,
                attempts: 1,
                upstream_status: Some(200),
                at_ms: now_ms() + i,
                enqueued_ms: 1,
                replayed_as: None,
            });
            assert!(s.len().0 <= 101);
        }
        let disk: u64 = std::fs::read_dir(dir.path().join("status"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(disk <= 2 * (1 << 20) + ENTRY as u64, "journal uses {disk} bytes");
        assert!(s.get(0, 49_999).is_some(), "the newest outcome is kept");
    }
}
