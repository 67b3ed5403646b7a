//! Reading one partition of a log in offset order, a bounded batch at a
//! time, through a small window buffer (never a whole segment).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::codec::{self, Decoded, FrameFormat};
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

/// An offset that should have been there but whose frame is corrupt or
/// gone, with whatever bytes of its payload could be read (for the dead
/// letter: an operator, or the status lookup, can still identify it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lost {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub raw: Bytes,
}

/// What one read found: records in order, and offsets that should have
/// been there but whose frames are corrupt or gone.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub records: Vec<Record>,
    pub lost: Vec<Lost>,
}

struct Cursor {
    seg: u64,
    format: FrameFormat,
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
    /// Whether other partitions' frames were skipped on their headers
    /// alone since this reader last verified a frame of its own (kept
    /// across reads: the skip and the gap it causes may be found by two).
    unverified: bool,
    published: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
}

/// How one pass over the log ended. A pass that skips other partitions'
/// frames on their headers alone cannot tell a corrupt record of its own
/// from one hidden by a wrong length field: it reports `Unsure` and the
/// batch is read again with every frame checksummed. A record is never
/// declared lost on a pass that did not verify what it skipped.
enum Pass {
    Done(Batch),
    Unsure,
}

/// A corrupt frame whose header still names this partition and the offset
/// due: its bytes go with the gap to the dead-letter log.
struct Damaged {
    offset: u64,
    timestamp_ms: u64,
    raw: Bytes,
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
            unverified: false,
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
        self.unverified = false;
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

    fn open_cursor(&self, seg: u64, pos: u64) -> std::io::Result<Cursor> {
        let file: Arc<dyn FsFile> = Arc::from(self.sh.fs.open_read(&seg_path(&self.sh.dir, seg))?);
        Ok(Cursor {
            seg,
            format: self.sh.formats.of(seg),
            pos,
            file,
            buf: Vec::new(),
            buf_at: pos,
        })
    }

    /// Reads up to the limits (at least one record if any is available).
    /// On error the position is where it was before the call.
    pub fn read(&mut self, max_records: usize, max_bytes: usize) -> Result<Batch, SpoolError> {
        let before = self.next;
        let max_records = max_records.max(1);
        let mut res = self.read_pass(max_records, max_bytes, false);
        if matches!(res, Ok(Pass::Unsure)) {
            // A gap after header-only skips: read the stretch again with
            // every frame checksummed before believing it.
            self.seek(before);
            res = self.read_pass(max_records, max_bytes, true);
        }
        match res {
            Ok(Pass::Done(batch)) => Ok(batch),
            Ok(Pass::Unsure) => unreachable!("a verifying pass never skips on headers"),
            Err(e) => {
                self.seek(before);
                Err(e)
            }
        }
    }

    fn read_pass(&mut self, max_records: usize, max_bytes: usize, verify: bool) -> Result<Pass, SpoolError> {
        let mut out = Batch::default();
        let (segs, published, committed) = {
            let st = self.sh.lock();
            let ps = &st.parts[self.partition as usize];
            let segs: Vec<(u64, u64)> = st.segs.values().map(|s| (s.id, s.len)).collect();
            if self.cur.as_ref().is_none_or(|c| !st.segs.contains_key(&c.seg)) {
                self.cur = None;
                if let Some((seg, pos)) = self.start(&st) {
                    let c = self
                        .open_cursor(seg, pos)
                        .map_err(|e| SpoolError::io("open", seg_path(&self.sh.dir, seg), e))?;
                    self.cur = Some(c);
                }
            }
            (segs, ps.next, ps.committed)
        };
        let partitions = self.sh.partitions;
        let mut bytes = 0usize;
        let mut damaged: Option<Damaged> = None;
        let mut seg_i = match &self.cur {
            Some(c) => segs.iter().position(|s| s.0 == c.seg).unwrap_or(segs.len()),
            None => segs.len(),
        };
        while seg_i < segs.len() {
            let (seg_id, seg_len) = segs[seg_i];
            if self.cur.as_ref().is_none_or(|c| c.seg != seg_id) {
                match self.open_cursor(seg_id, 0) {
                    Ok(c) => self.cur = Some(c),
                    // Reclaimed under us: everything in it was committed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        seg_i += 1;
                        continue;
                    }
                    Err(e) => return Err(SpoolError::io("open", seg_path(&self.sh.dir, seg_id), e)),
                }
            }
            let cur = self.cur.as_mut().expect("cursor set");
            let format = cur.format;
            let header_len = format.header_len();
            while cur.pos < seg_len {
                if out.records.len() >= max_records || (bytes >= max_bytes && !out.records.is_empty()) {
                    return Ok(Pass::Done(out));
                }
                let path = || seg_path(&self.sh.dir, seg_id);
                let avail = fill(cur, seg_len, header_len).map_err(|e| SpoolError::io("read", path(), e))?;
                let at = (cur.pos - cur.buf_at) as usize;
                // Other partitions' frames are skipped on their header
                // alone, without reading or checksumming the payload, as
                // long as the skip lands on something that looks like a
                // header (or the segment's end).
                if !verify {
                    if let Some(h) = format.header(&cur.buf[at..at + avail]) {
                        let frame = (format.prefix_len() + h.body_len as usize) as u64;
                        if h.partition != self.partition && h.partition < partitions && cur.pos + frame <= seg_len {
                            let landing = cur.pos + frame;
                            if landing == seg_len
                                || plausible_at(cur, seg_len, landing, partitions)
                                    .map_err(|e| SpoolError::io("read", path(), e))?
                            {
                                self.unverified = true;
                                cur.pos = landing;
                                continue;
                            }
                        }
                    }
                }
                // The header as it stands, before a refill below moves the
                // window (it names a damaged frame's offset).
                let head = format.header(&cur.buf[at..at + avail]);
                let decoded = match format.decode(&cur.buf[at..at + avail]) {
                    Decoded::Incomplete { need } if (need as u64) <= seg_len - cur.pos => {
                        let avail = fill(cur, seg_len, need).map_err(|e| SpoolError::io("read", path(), e))?;
                        let at = (cur.pos - cur.buf_at) as usize;
                        format.decode(&cur.buf[at..at + avail])
                    }
                    d => d,
                };
                match decoded {
                    Decoded::Record(r, used) => {
                        if r.partition == self.partition && r.offset >= self.next {
                            if r.offset > self.next {
                                if self.unverified {
                                    return Ok(Pass::Unsure);
                                }
                                lose(&mut out, self.next.max(committed), r.offset, damaged.take());
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
                            self.unverified = false;
                            damaged = None;
                        }
                        cur.pos += used as u64;
                    }
                    _ => {
                        tracing::warn!(path = %path().display(), pos = cur.pos, "corrupt frame; resyncing");
                        let start = cur.pos;
                        let resume = resync(cur, seg_len, partitions, self.partition, self.next)
                            .map_err(|e| SpoolError::io("read", path(), e))?;
                        if let Some(h) = head.filter(|h| h.partition == self.partition && h.offset == self.next) {
                            // Keep what the damaged frame still holds of its
                            // payload, up to where the next frame starts.
                            let from = start + header_len as u64;
                            let to = (start + (format.prefix_len() + h.body_len as usize) as u64).min(resume);
                            let raw = read_range(cur, from, to).map_err(|e| SpoolError::io("read", path(), e))?;
                            damaged = Some(Damaged {
                                offset: h.offset,
                                timestamp_ms: h.timestamp_ms,
                                raw,
                            });
                        }
                        cur.pos = resume;
                    }
                }
            }
            seg_i += 1;
        }
        // Past the last frame on disk: offsets still below the published
        // next were in frames that are corrupt.
        if self.next < published && out.records.len() < max_records {
            if self.unverified {
                return Ok(Pass::Unsure);
            }
            lose(&mut out, self.next.max(committed), published, damaged.take());
            self.next = published;
        }
        Ok(Pass::Done(out))
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
fn lose(out: &mut Batch, from: u64, to: u64, damaged: Option<Damaged>) {
    // A checksummed frame cannot carry a wild offset, but cap anyway.
    out.lost.extend((from..to).take(1 << 20).map(|offset| match &damaged {
        Some(d) if d.offset == offset => Lost {
            offset,
            timestamp_ms: d.timestamp_ms,
            raw: d.raw.clone(),
        },
        _ => Lost {
            offset,
            timestamp_ms: 0,
            raw: Bytes::new(),
        },
    }));
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

/// Whether the bytes at `at` look like a frame header: a length in range,
/// a partition that exists, a frame that fits in the segment.
fn plausible_at(cur: &Cursor, seg_len: u64, at: u64, partitions: u32) -> std::io::Result<bool> {
    let format = cur.format;
    let mut hdr = [0u8; 64];
    let hdr = &mut hdr[..format.header_len()];
    let buf_end = cur.buf_at + cur.buf.len() as u64;
    if at >= cur.buf_at && at + hdr.len() as u64 <= buf_end {
        let i = (at - cur.buf_at) as usize;
        hdr.copy_from_slice(&cur.buf[i..i + hdr.len()]);
    } else if cur.file.read_at(hdr, at)? < hdr.len() {
        return Ok(false);
    }
    Ok(format.header(hdr).is_some_and(|h| {
        h.partition < partitions && at + (format.prefix_len() + h.body_len as usize) as u64 <= seg_len
    }))
}

/// Bytes `from..to` of the cursor's file (bounded by the format ceiling).
fn read_range(cur: &Cursor, from: u64, to: u64) -> std::io::Result<Bytes> {
    if to <= from {
        return Ok(Bytes::new());
    }
    let len = ((to - from) as usize).min(codec::MAX_BODY_LEN as usize);
    let mut v = vec![0u8; len];
    let n = cur.file.read_at(&mut v, from)?;
    v.truncate(n);
    Ok(Bytes::from(v))
}

/// Finds the next valid frame after a corrupt one at `cur.pos`, or the
/// segment's end. A frame of this partition is taken only if its offset is
/// one the skipped bytes could have hidden (see `codec::offset_window`).
fn resync(cur: &Cursor, seg_len: u64, partitions: u32, own: u32, expected: u64) -> std::io::Result<u64> {
    let format = cur.format;
    let header_len = format.header_len();
    let bad = cur.pos;
    let plausible = |r: &codec::RawRecord<'_>, at: u64| {
        r.partition < partitions
            && (r.partition != own || codec::offset_window(format, expected, (at - bad) as usize).contains(&r.offset))
    };
    let mut from = cur.pos + 1;
    let mut chunk = Vec::new();
    while from + (header_len as u64) <= seg_len {
        let len = (RESYNC_CHUNK as u64).min(seg_len - from) as usize;
        chunk.resize(len, 0);
        let n = cur.file.read_at(&mut chunk, from)?;
        chunk.truncate(n);
        for i in 0..chunk.len() {
            let at = from + i as u64;
            match format.decode(&chunk[i..]) {
                Decoded::Record(r, _) if plausible(&r, at) => return Ok(at),
                Decoded::Incomplete { need }
                    if at + need as u64 <= seg_len
                        && format.header(&chunk[i..]).is_some_and(|h| h.partition < partitions) =>
                {
                    // Frame runs past this chunk: check it whole.
                    let mut whole = vec![0; need];
                    if cur.file.read_at(&mut whole, at)? == need {
                        if let Decoded::Record(r, _) = format.decode(&whole) {
                            if plausible(&r, at) {
                                return Ok(at);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // Overlap so a header split across chunks is still seen.
        from += (n.saturating_sub(header_len)).max(1) as u64;
    }
    Ok(seg_len)
}

impl LogReader {
    pub fn partition(&self) -> u32 {
        self.partition
    }
}
