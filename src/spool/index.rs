//! In-memory view of the segments of a log, and the sparse index stored
//! beside each sealed segment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A sparse index entry is added after this many bytes of one partition's
/// frames in one segment. Bounds both the index size (about 24 bytes per
/// 64 KiB of data) and how far a seek scans.
pub(crate) const SPARSE_EVERY: u64 = 64 * 1024;

/// Where a partition's records sit in one segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PartSpan {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// Frame bytes of this partition in the segment.
    pub bytes: u64,
    pub first_ts: u64,
    /// `(offset, position, bytes of this partition before it)`, ascending.
    pub sparse: Vec<(u64, u64, u64)>,
}

impl PartSpan {
    /// The sparse entry to start a scan for `offset` from.
    pub fn seek(&self, offset: u64) -> (u64, u64, u64) {
        let i = self.sparse.partition_point(|e| e.0 <= offset);
        self.sparse[i.saturating_sub(1)]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SegMeta {
    pub id: u64,
    /// Bytes of valid, published frames: readers never look past it.
    pub len: u64,
    pub sealed: bool,
    pub parts: BTreeMap<u32, PartSpan>,
}

impl SegMeta {
    pub fn new(id: u64) -> Self {
        SegMeta {
            id,
            len: 0,
            sealed: false,
            parts: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, partition: u32, offset: u64, pos: u64, frame_len: u64, ts: u64) {
        let span = self.parts.entry(partition).or_insert_with(|| PartSpan {
            first: offset,
            last: offset,
            count: 0,
            bytes: 0,
            first_ts: ts,
            sparse: vec![(offset, pos, 0)],
        });
        let last_sparse = span.sparse.last().map_or(0, |e| e.2);
        if span.bytes - last_sparse >= SPARSE_EVERY {
            span.sparse.push((offset, pos, span.bytes));
        }
        span.last = offset;
        span.count += 1;
        span.bytes += frame_len;
        self.len = self.len.max(pos + frame_len);
    }
}

pub(crate) fn seg_name(id: u64) -> String {
    format!("{id:020}.seg")
}

pub(crate) fn idx_name(id: u64) -> String {
    format!("{id:020}.idx")
}

pub(crate) fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(seg_name(id))
}

pub(crate) fn idx_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(idx_name(id))
}

/// Parses `00000000000000000042.seg` style names.
pub(crate) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}
