//! Reading one partition of a log in offset order, a bounded batch at a
//! time, through a small window buffer (never a whole segment).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::codec::{self, Decoded, HEADER_LEN};
use super::error::SpoolError;
use super::fs::FsFile;
use super::index::seg_path;
use super::log::{LogState, Shared};

/// Read window; grows for frames larger than it.
const WINDOW: usize = 256 * 1024;
/// Resync scans forward in chunks of this size.
const RESYNC_CHUNK: usize = 1 << 20;

/// A record read from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub flags: u8,
    pub payload: Bytes,
}

/// What one read found: records in order, and offsets that should have
/// been there but whose frames are corrupt or gone.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub records: Vec<Record>,
    pub lost: Vec<u64>,
}

struct Cursor {
    seg: u64,
    pos: u64,
    file: Arc<dyn FsFile>,
    /// Bytes of the file starting at `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
}

pub(crate) struct LogReader {
    sh: Arc<Shared>,
    partition: u32,
    next: u64,
    cur: Option<Cursor>,
    published: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
}

impl LogReader {
    pub fn new(sh: Arc<Shared>, partition: u32, from: u64) -> Self {
        let published = sh.published[partition as usize].subscribe();
        let closed = sh.closed.subscribe();
        LogReader {
            sh,
            partition,
            next: from,
            cur: None,
            published,
            closed,
        }
    }

    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn seek(&mut self, offset: u64) {
        self.next = offset;
        self.cur = None;
    }

    /// Waits (on the publish watch, no polling) until a record at or after
    /// the position exists.
    pub async fn wait(&mut self) -> Result<(), SpoolError> {
        let next = self.next;
        tokio::select! {
            r = self.published.wait_for(|p| *p > next) => r.map(|_| ()).map_err(|_| SpoolError::Closed),
            _ = self.closed.wait_for(|c| *c) => Err(SpoolError::Closed),
        }
    }

    /// Reads up to the limits (at least one record if any is available).
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> Result<Batch, SpoolError> {
        let mut out = Batch::default();
        let max_records = max_records.max(1);
        let (segs, published, committed) = {
            let st = self.sh.lock();
            let ps = &st.parts[self.partition as usize];
            let segs: Vec<(u64, u64)> = st.segs.values().map(|s| (s.id, s.len)).collect();
            if self.cur.as_ref().is_none_or(|c| !st.segs.contains_key(&c.seg)) {
                self.cur = None;
                if let Some((seg, pos)) = self.start(&st) {
                    let path = seg_path(&self.sh.dir, seg);
                    let file: Arc<dyn FsFile> = match self.sh.fs.open_read(&path) {
                        Ok(f) => Arc::from(f),
                        Err(e) => return Err(SpoolError::io("open", path, e)),
                    };
                    self.cur = Some(Cursor {
                        seg,
                        pos,
                        file,
                        buf: Vec::new(),
                        buf_at: pos,
                    });
                }
            }
            (segs, ps.next, ps.committed)
        };
        let mut bytes = 0usize;
        let mut seg_i = match &self.cur {
            Some(c) => segs.iter().position(|s| s.0 == c.seg).unwrap_or(segs.len()),
            None => segs.len(),
        };
        while seg_i < segs.len() {
            let (seg_id, seg_len) = segs[seg_i];
            if self.cur.as_ref().is_none_or(|c| c.seg != seg_id) {
                let path = seg_path(&self.sh.dir, seg_id);
                let file: Arc<dyn FsFile> = match self.sh.fs.open_read(&path) {
                    Ok(f) => Arc::from(f),
                    // Reclaimed under us: everything in it was committed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        seg_i += 1;
                        continue;
                    }
                    Err(e) => return Err(SpoolError::io("open", path, e)),
                };
                self.cur = Some(Cursor {
                    seg: seg_id,
                    pos: 0,
                    file,
                    buf: Vec::new(),
                    buf_at: 0,
                });
            }
            let cur = self.cur.as_mut().expect("cursor set");
            while cur.pos < seg_len {
                if out.records.len() >= max_records || (bytes >= max_bytes && !out.records.is_empty()) {
                    return Ok(out);
                }
                let path = || seg_path(&self.sh.dir, seg_id);
                let avail = fill(cur, seg_len, HEADER_LEN).map_err(|e| SpoolError::io("read", path(), e))?;
                let at = (cur.pos - cur.buf_at) as usize;
                if avail >= HEADER_LEN {
                    // Other partitions' frames are skipped on their header
                    // alone, without reading or checksumming the payload.
                    // A corrupt header cannot hide one of our records: it
                    // would show up as a gap in our offsets.
                    let h = &cur.buf[at..at + HEADER_LEN];
                    let body_len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
                    let part = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
                    let frame = codec::PREFIX_LEN as u64 + body_len as u64;
                    if part != self.partition
                        && part < self.sh.partitions
                        && (codec::BODY_FIXED_LEN as u32..=codec::MAX_BODY_LEN).contains(&body_len)
                        && cur.pos + frame <= seg_len
                    {
                        cur.pos += frame;
                        continue;
                    }
                }
                let decoded = match codec::decode(&cur.buf[at..at + avail]) {
                    Decoded::Incomplete { need } if (need as u64) <= seg_len - cur.pos => {
                        let avail = fill(cur, seg_len, need).map_err(|e| SpoolError::io("read", path(), e))?;
                        let at = (cur.pos - cur.buf_at) as usize;
                        codec::decode(&cur.buf[at..at + avail])
                    }
                    d => d,
                };
                match decoded {
                    Decoded::Record(r, used) => {
                        if r.partition == self.partition && r.offset >= self.next {
                            if r.offset > self.next {
                                lose(&mut out, self.next.max(committed), r.offset);
                            }
                            bytes += r.payload.len();
                            out.records.push(Record {
                                partition: r.partition,
                                offset: r.offset,
                                timestamp_ms: r.timestamp_ms,
                                flags: r.flags,
                                payload: Bytes::copy_from_slice(r.payload),
                            });
                            self.next = r.offset + 1;
                        }
                        cur.pos += used as u64;
                    }
                    _ => {
                        let partitions = self.sh.partitions;
                        tracing::warn!(path = %path().display(), pos = cur.pos, "corrupt frame; resyncing");
                        cur.pos = resync(cur, seg_len, partitions).map_err(|e| SpoolError::io("read", path(), e))?;
                    }
                }
            }
            seg_i += 1;
        }
        // Past the last frame on disk: offsets still below the published
        // next were in frames that are corrupt.
        if self.next < published && out.records.len() < max_records {
            lose(&mut out, self.next.max(committed), published);
            self.next = published;
        }
        Ok(out)
    }

    /// Where to start scanning for `self.next`: the sparse index entry at
    /// or before it in the first segment that holds it (or anything later).
    fn start(&self, st: &LogState) -> Option<(u64, u64)> {
        st.segs.values().find_map(|s| {
            let span = s.parts.get(&self.partition)?;
            (span.last >= self.next).then(|| (s.id, span.seek(self.next).1))
        })
    }
}

fn lose(out: &mut Batch, from: u64, to: u64) {
    // A checksummed frame cannot carry a wild offset, but cap anyway.
    out.lost.extend((from..to).take(1 << 20));
}

/// Makes at least `want` bytes at `cur.pos` available in the buffer (fewer
/// at the segment's end); returns how many are.
fn fill(cur: &mut Cursor, seg_len: u64, want: usize) -> std::io::Result<usize> {
    let left = (seg_len - cur.pos) as usize;
    let want = want.min(left);
    let have_end = cur.buf_at + cur.buf.len() as u64;
    if cur.pos >= cur.buf_at && cur.pos + want as u64 <= have_end {
        return Ok(((have_end - cur.pos) as usize).min(left));
    }
    let len = want.max(WINDOW).min(left);
    cur.buf.resize(len, 0);
    let n = cur.file.read_at(&mut cur.buf, cur.pos)?;
    cur.buf.truncate(n);
    cur.buf_at = cur.pos;
    Ok(n.min(left))
}

/// Finds the next valid frame after a corrupt one at `cur.pos`, or the
/// segment's end.
fn resync(cur: &mut Cursor, seg_len: u64, partitions: u32) -> std::io::Result<u64> {
    let plausible = |r: &codec::RawRecord<'_>| r.partition < partitions;
    let mut from = cur.pos + 1;
    let mut chunk = Vec::new();
    while from + (HEADER_LEN as u64) <= seg_len {
        let len = (RESYNC_CHUNK as u64).min(seg_len - from) as usize;
        chunk.resize(len, 0);
        let n = cur.file.read_at(&mut chunk, from)?;
        chunk.truncate(n);
        for i in 0..chunk.len() {
            match codec::decode(&chunk[i..]) {
                Decoded::Record(r, _) if plausible(&r) => return Ok(from + i as u64),
                Decoded::Incomplete { need }
                    if from + i as u64 + need as u64 <= seg_len
                        && i + HEADER_LEN <= chunk.len()
                        && u32::from_le_bytes(chunk[i + 8..i + 12].try_into().unwrap()) < partitions =>
                {
                    // Frame runs past this chunk: check it whole.
                    let mut whole = vec![0; need];
                    if cur.file.read_at(&mut whole, from + i as u64)? == need {
                        if let Decoded::Record(r, _) = codec::decode(&whole) {
                            if plausible(&r) {
                                return Ok(from + i as u64);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // Overlap so a header split across chunks is still seen.
        from += (n.saturating_sub(HEADER_LEN)).max(1) as u64;
    }
    Ok(seg_len)
}

impl LogReader {
    pub fn partition(&self) -> u32 {
        self.partition
    }
}
