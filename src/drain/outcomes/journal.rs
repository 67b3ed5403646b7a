//! The status journal on disk: fixed-size entries in two generations under
//! `DIR/status/` (`journal.0` and `journal.1`). When the active one passes
//! its size limit the other is truncated and becomes active, so disk use
//! stays under twice the limit.
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
//! An attempt entry (kind 3) uses `state` for its error code (0: none),
//! `upstream_status` for the answer (0: none), `attempts` for the
//! attempt's number and the first 4 bytes of `aux` for its latency in ms.
//! Journal writes are not fsynced: they survive `kill -9` through the page
//! cache, and after a power loss a missing outcome only makes a delivered
//! record's status less detailed (see `status` in the drainer).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{AttemptError, AttemptRecord, KeyHash, Outcome, OutcomeError, RequestId, State};

pub(super) const ENTRY: usize = 96;
const KIND_OUTCOME: u8 = 1;
const KIND_IDEMPOTENCY: u8 = 2;
const KIND_ATTEMPT: u8 = 3;

/// One valid journal entry, decoded.
pub(super) enum Entry {
    Outcome(Outcome),
    Key { hash: KeyHash, id: RequestId, at_ms: u64 },
    Attempt { id: RequestId, record: AttemptRecord },
}

impl Entry {
    pub(super) fn at_ms(&self) -> u64 {
        match self {
            Entry::Outcome(o) => o.at_ms,
            Entry::Key { at_ms, .. } => *at_ms,
            Entry::Attempt { record, .. } => record.at_ms,
        }
    }
}

/// The active generation, open for appending.
pub(super) struct Journal {
    dir: PathBuf,
    /// `journal` (outcomes and keys) or `attempts` (the timelines).
    name: &'static str,
    file: File,
    generation: u8,
    len: u64,
    limit: u64,
}

fn journal_path(dir: &Path, name: &str, generation: u8) -> PathBuf {
    dir.join(format!("{name}.{generation}"))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutcomeError {
    let path = path.to_path_buf();
    move |source| OutcomeError::Io { path, source }
}

impl Journal {
    /// Opens the journal in `dir` (which exists) for `max_entries`
    /// entries. Returns it with the bytes of both generations, older
    /// first, so that replaying them in order lets the newer one's entries
    /// win.
    pub(super) fn open(
        dir: &Path,
        name: &'static str,
        max_entries: usize,
    ) -> Result<(Journal, Vec<Vec<u8>>), OutcomeError> {
        let limit = (max_entries as u64 * ENTRY as u64).max(1 << 20);
        // `journal.0` has always been created here, whichever generation
        // ends up active; kept so the directory looks as it always did.
        let first = journal_path(dir, name, 0);
        open_append(&first).map_err(io_error(&first))?;
        let mut generations = Vec::new();
        for generation in [0u8, 1] {
            let path = journal_path(dir, name, generation);
            let mut bytes = Vec::new();
            if let Ok(mut f) = File::open(&path) {
                f.read_to_end(&mut bytes).map_err(io_error(&path))?;
            }
            let newest_at = bytes
                .chunks_exact(ENTRY)
                .filter(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) == crc32c::crc32c(&e[4..]))
                .map(|e| u64::from_le_bytes(e[12..20].try_into().unwrap_or_default()))
                .max()
                .unwrap_or(0);
            generations.push((newest_at, generation, bytes));
        }
        // Stable: on a tie (two empty files) generation 1 becomes active.
        generations.sort_by_key(|g| g.0);
        let newest = generations[1].1;
        let active = journal_path(dir, name, newest);
        let file = open_append(&active).map_err(io_error(&active))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A torn last entry (crash mid-write) is cut so appends stay aligned.
        if len % ENTRY as u64 != 0 {
            file.set_len(len - len % ENTRY as u64).map_err(io_error(&active))?;
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            name,
            file,
            generation: newest,
            len: len - len % ENTRY as u64,
            limit,
        };
        Ok((journal, generations.into_iter().map(|g| g.2).collect()))
    }

    /// Appends one entry, switching generations first when it would pass
    /// the limit. Failures are logged, not returned: the journal only adds
    /// detail across restarts, and a request must not fail over it.
    pub(super) fn write(&mut self, entry: &[u8; ENTRY]) {
        if self.len + ENTRY as u64 > self.limit {
            // Switch generations: the other file's entries are at least one
            // whole generation old. Entries still wanted stay in memory and
            // are re-journalled only if they change again; a restart then
            // knows only the newer generation, which is the retention the
            // store promises (bounded disk first).
            let next = 1 - self.generation;
            let path = journal_path(&self.dir, self.name, next);
            match OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => match open_append(&path) {
                    Ok(f) => {
                        self.file = f;
                        self.generation = next;
                        self.len = 0;
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate the status journal"),
                },
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate the status journal"),
            }
        }
        match self.file.write_all(entry) {
            Ok(()) => self.len += ENTRY as u64,
            Err(e) => {
                // Cut a partial entry so the journal stays aligned.
                let _ = self.file.set_len(self.len);
                tracing::warn!(error = %e, "status journal write failed; status detail may be lost on restart");
            }
        }
    }
}

pub(super) fn encode_outcome(outcome: &Outcome) -> [u8; ENTRY] {
    let aux = outcome.replayed_as.map(|r| r.token).unwrap_or([0; 16]);
    let aux_id = outcome.replayed_as.map(|r| (r.partition, r.offset));
    encode(
        KIND_OUTCOME,
        &outcome.id,
        outcome.state.code(),
        outcome.upstream_status.unwrap_or(0),
        outcome.attempts,
        outcome.at_ms,
        aux,
        aux_id,
        outcome.enqueued_ms,
    )
}

pub(super) fn encode_attempt(id: &RequestId, number: u32, r: &AttemptRecord) -> [u8; ENTRY] {
    let mut aux = [0u8; 16];
    aux[..4].copy_from_slice(&r.latency_ms.to_le_bytes());
    encode(
        KIND_ATTEMPT,
        id,
        r.error.map_or(0, AttemptError::code),
        r.status.unwrap_or(0),
        number,
        r.at_ms,
        aux,
        None,
        0,
    )
}

pub(super) fn encode_key(hash: KeyHash, id: &RequestId, at_ms: u64) -> [u8; ENTRY] {
    encode(KIND_IDEMPOTENCY, id, 0, 0, 0, at_ms, hash, None, 0)
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

/// Decodes one entry; `None` if its checksum, kind or state is bad.
pub(super) fn decode(e: &[u8]) -> Option<Entry> {
    let crc = u32::from_le_bytes(e[0..4].try_into().ok()?);
    if crc != crc32c::crc32c(&e[4..]) {
        return None;
    }
    let at_ms = u64::from_le_bytes(e[12..20].try_into().ok()?);
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
            Some(Entry::Outcome(Outcome {
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
            }))
        }
        KIND_IDEMPOTENCY => Some(Entry::Key { hash: aux, id, at_ms }),
        KIND_ATTEMPT => {
            let status = u16::from_le_bytes(e[6..8].try_into().ok()?);
            Some(Entry::Attempt {
                id,
                record: AttemptRecord {
                    at_ms,
                    status: (status != 0).then_some(status),
                    error: AttemptError::from_code(e[5]),
                    latency_ms: u32::from_le_bytes(aux[..4].try_into().ok()?),
                },
            })
        }
        _ => None,
    }
}
