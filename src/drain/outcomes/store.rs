//! [`OutcomeStore`]: the bounded in-memory maps of outcomes and
//! idempotency keys, loaded from the journal at open and written through
//! to it, and their sweep by age and count.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use dashmap::DashMap;

use super::journal::{self, Entry, Journal};
use super::keys::KeySlot;
use super::{now_ms, AttemptRecord, KeyHash, Outcome, OutcomeError, RequestId, HISTORY};

pub struct OutcomeStore {
    pub(super) outcomes: DashMap<(u32, u64), Outcome>,
    pub(super) keys: DashMap<KeyHash, KeySlot>,
    /// The newest attempts of each request, oldest first.
    history: DashMap<(u32, u64), Vec<AttemptRecord>>,
    journal: Mutex<Journal>,
    /// Attempts go to a journal of their own: a retry storm must not
    /// rotate outcomes and Idempotency-Keys out of theirs.
    attempts: Mutex<Journal>,
    pub(super) retention: Duration,
    pub(super) max_entries: usize,
}

impl OutcomeStore {
    /// Opens `spool_dir/status`, loading entries younger than `retention`.
    /// Memory holds at most `max_entries` outcomes and as many keys.
    pub fn open(spool_dir: &Path, retention: Duration, max_entries: usize) -> Result<OutcomeStore, OutcomeError> {
        let dir = spool_dir.join("status");
        std::fs::create_dir_all(&dir).map_err(|source| OutcomeError::Io {
            path: PathBuf::from(&dir),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let (journal, mut generations) = Journal::open(&dir, "journal", max_entries)?;
        // The newest attempts, within the same bound per generation.
        let (attempts, attempt_generations) = Journal::open(&dir, "attempts", max_entries)?;
        generations.extend(attempt_generations);
        let store = OutcomeStore {
            outcomes: DashMap::new(),
            keys: DashMap::new(),
            history: DashMap::new(),
            retention,
            max_entries,
            journal: Mutex::new(journal),
            attempts: Mutex::new(attempts),
        };
        let horizon = now_ms().saturating_sub(retention.as_millis() as u64);
        for bytes in &generations {
            for chunk in bytes.chunks_exact(journal::ENTRY) {
                if let Some(entry) = journal::decode(chunk) {
                    store.apply(entry, horizon);
                }
            }
        }
        Ok(store)
    }

    /// Loads one journal entry unless it is older than `horizon`.
    fn apply(&self, entry: Entry, horizon: u64) {
        if entry.at_ms() < horizon {
            return;
        }
        match entry {
            Entry::Outcome(o) => {
                self.outcomes.insert((o.id.partition, o.id.offset), o);
            }
            Entry::Key { hash, id, at_ms } => {
                self.keys.insert(hash, KeySlot::Done { id, at_ms });
            }
            Entry::Attempt { id, record } => self.push_attempt(&id, record),
        }
    }

    fn push_attempt(&self, id: &RequestId, record: AttemptRecord) {
        let mut h = self.history.entry((id.partition, id.offset)).or_default();
        if h.len() == HISTORY {
            h.remove(0);
        }
        h.push(record);
    }

    /// Records one delivery attempt (the `number`th) of `id`.
    pub fn attempted(&self, id: &RequestId, number: u32, record: AttemptRecord) {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&journal::encode_attempt(id, number, &record));
        self.push_attempt(id, record);
        if self.history.len() > self.max_entries {
            self.sweep();
        }
    }

    /// The newest attempts of the request at `partition`/`offset`, oldest
    /// first.
    pub fn history(&self, partition: u32, offset: u64) -> Vec<AttemptRecord> {
        self.history
            .get(&(partition, offset))
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    pub(super) fn write_entry(&self, entry: &[u8; journal::ENTRY]) {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).write(entry);
    }

    /// Records a final outcome (delivered or dead).
    pub fn record(&self, outcome: Outcome) {
        self.write_entry(&journal::encode_outcome(&outcome));
        self.outcomes.insert((outcome.id.partition, outcome.id.offset), outcome);
        if self.outcomes.len() > self.max_entries {
            self.sweep();
        }
    }

    pub fn get(&self, partition: u32, offset: u64) -> Option<Outcome> {
        self.outcomes.get(&(partition, offset)).map(|o| *o)
    }

    /// Drops what is older than the retention window, then, if still over
    /// the cap, the oldest half.
    pub fn sweep(&self) {
        let horizon = now_ms().saturating_sub(self.retention.as_millis() as u64);
        self.outcomes.retain(|_, o| o.at_ms >= horizon);
        self.history.retain(|_, h| h.last().is_some_and(|a| a.at_ms >= horizon));
        if self.history.len() > self.max_entries {
            let mut ages: Vec<u64> = self.history.iter().filter_map(|h| h.last().map(|a| a.at_ms)).collect();
            ages.sort_unstable();
            // Another sweep may have emptied it meanwhile.
            if let Some(cut) = ages.get(ages.len() / 2).copied() {
                self.history.retain(|_, h| h.last().is_some_and(|a| a.at_ms > cut));
            }
        }
        self.keys.retain(|_, s| match s {
            KeySlot::Done { at_ms, .. } => *at_ms >= horizon,
            KeySlot::Pending(_) => true,
        });
        if self.outcomes.len() > self.max_entries {
            let mut ages: Vec<u64> = self.outcomes.iter().map(|o| o.at_ms).collect();
            ages.sort_unstable();
            if let Some(cut) = ages.get(ages.len() / 2).copied() {
                self.outcomes.retain(|_, o| o.at_ms > cut);
            }
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
