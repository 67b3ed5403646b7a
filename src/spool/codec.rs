//! Record framing, in the two on-disk formats. See the format description
//! in `mod.rs`.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// Fixed part of the body: partition u32, offset u64, timestamp u64, flags u8.
pub const BODY_FIXED_LEN: usize = 4 + 8 + 8 + 1;
/// Hard ceiling on the `len` field, a constant of the on-disk format
/// (recorded in the manifest). A larger `len` is corruption, never an
/// allocation: `max_record` may only be set below it.
pub const MAX_BODY_LEN: u32 = 64 * 1024 * 1024;

/// The format new segments are written in: format 2.
pub const CURRENT_HEADER_LEN: usize = FrameFormat::Keyed([0; 16]).header_len();

/// Length on disk of a new record with a payload of `payload_len` bytes.
pub const fn frame_len(payload_len: usize) -> usize {
    CURRENT_HEADER_LEN + payload_len
}

/// How a segment's frames are checksummed.
///
/// Format 1 uses CRC32C: it finds media errors but anyone can compute it,
/// so a client body that contains a well-formed frame would pass for a
/// record when a reader resynchronises inside it. Format 2 uses
/// SipHash-1-3-128 keyed by the spool's secret (in the manifest), which a
/// client cannot compute.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// Format 1: `len u32 | crc32c u32 | body`.
    Crc32c,
    /// Format 2: `len u32 | siphash13-128 [16] | body`.
    Keyed([u8; 16]),
}

impl fmt::Debug for FrameFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: never in logs.
        match self {
            FrameFormat::Crc32c => f.write_str("Crc32c"),
            FrameFormat::Keyed(_) => f.write_str("Keyed(..)"),
        }
    }
}

/// A frame decoded from bytes; the payload borrows the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub flags: u8,
    pub payload: &'a [u8],
}

/// The fields of a frame header, read without checking the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
}

/// Outcome of decoding the bytes at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame and how many bytes it used.
    Record(RawRecord<'a>, usize),
    /// The buffer ends inside a frame whose length field is plausible;
    /// `need` is the whole frame length (bounded by the format ceiling).
    Incomplete { need: usize },
    /// Not a valid frame at this position.
    Invalid(Invalid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// `len` below the fixed body size or above the ceiling (zero-filled
    /// tails land here).
    BadLength(u32),
    Checksum,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl FrameFormat {
    /// Bytes before the body: `len` and the checksum.
    pub const fn prefix_len(self) -> usize {
        match self {
            FrameFormat::Crc32c => 8,
            FrameFormat::Keyed(_) => 20,
        }
    }

    /// Whole header in front of the payload; also the smallest frame.
    pub const fn header_len(self) -> usize {
        self.prefix_len() + BODY_FIXED_LEN
    }

    /// Length of the frame for a payload of `payload_len` bytes.
    pub const fn frame_len(self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    fn checksum(self, len_bytes: &[u8], body: &[u8], out: &mut [u8]) {
        match self {
            FrameFormat::Crc32c => {
                let crc = crc32c::crc32c_append(crc32c::crc32c(len_bytes), body);
                out.copy_from_slice(&crc.to_le_bytes());
            }
            FrameFormat::Keyed(key) => {
                let mut h = SipHasher13::new_with_key(&key);
                h.write(len_bytes);
                h.write(body);
                out.copy_from_slice(&h.finish128().as_bytes());
            }
        }
    }

    /// Appends one frame to `out`.
    pub fn encode(self, out: &mut Vec<u8>, partition: u32, offset: u64, timestamp_ms: u64, flags: u8, payload: &[u8]) {
        let body_len = (BODY_FIXED_LEN + payload.len()) as u32;
        debug_assert!(body_len <= MAX_BODY_LEN);
        let prefix = self.prefix_len();
        let start = out.len();
        out.reserve(self.frame_len(payload.len()));
        out.extend_from_slice(&body_len.to_le_bytes());
        out.resize(start + prefix, 0);
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&timestamp_ms.to_le_bytes());
        out.push(flags);
        out.extend_from_slice(payload);
        let (head, body) = out[start..].split_at_mut(prefix);
        let (len_bytes, sum) = head.split_at_mut(4);
        self.checksum(len_bytes, body, sum);
    }

    /// The header fields at the start of `buf`, unchecked; `None` if `buf`
    /// is shorter than a header or `len` is out of range.
    pub fn header(self, buf: &[u8]) -> Option<Header> {
        if buf.len() < self.header_len() {
            return None;
        }
        let body_len = u32_at(buf, 0);
        if (body_len as usize) < BODY_FIXED_LEN || body_len > MAX_BODY_LEN {
            return None;
        }
        let p = self.prefix_len();
        Some(Header {
            body_len,
            partition: u32_at(buf, p),
            offset: u64_at(buf, p + 4),
            timestamp_ms: u64_at(buf, p + 12),
        })
    }

    /// Decodes the frame at the start of `buf`. Never allocates and never
    /// trusts `len` beyond [`MAX_BODY_LEN`].
    pub fn decode(self, buf: &[u8]) -> Decoded<'_> {
        if buf.len() < 4 {
            return Decoded::Incomplete {
                need: self.header_len(),
            };
        }
        let body_len = u32_at(buf, 0);
        if (body_len as usize) < BODY_FIXED_LEN || body_len > MAX_BODY_LEN {
            return Decoded::Invalid(Invalid::BadLength(body_len));
        }
        let prefix = self.prefix_len();
        let total = prefix + body_len as usize;
        if buf.len() < total {
            return Decoded::Incomplete { need: total };
        }
        let body = &buf[prefix..total];
        let mut sum = [0u8; 16];
        let sum = &mut sum[..prefix - 4];
        self.checksum(&buf[..4], body, sum);
        // Not secret-dependent timing worth defending: the attacker never
        // sees how long a reader took over one frame.
        if sum != &buf[4..prefix] {
            return Decoded::Invalid(Invalid::Checksum);
        }
        Decoded::Record(
            RawRecord {
                partition: u32_at(body, 0),
                offset: u64_at(body, 4),
                timestamp_ms: u64_at(body, 12),
                flags: body[20],
                payload: &body[BODY_FIXED_LEN..],
            },
            total,
        )
    }

    /// Scans `buf` frame by frame. An invalid frame followed (anywhere
    /// later) by an accepted one is corruption in the middle and is
    /// skipped; an invalid frame with nothing accepted after it is a torn
    /// tail and ends the scan.
    ///
    /// `accept(pos, record, skipped)` judges each valid frame and, when it
    /// returns true, takes it. `skipped` is how many bytes of invalid data
    /// lie between the previous accepted frame and this one (0 in the
    /// normal run): a frame found by resynchronising deserves suspicion
    /// (see [`offset_window`]).
    pub fn scan(self, buf: &[u8], mut accept: impl FnMut(usize, &RawRecord<'_>, usize) -> bool) -> Scan {
        let mut out = Scan::default();
        let mut pos = 0usize;
        while pos < buf.len() {
            if let Decoded::Record(rec, used) = self.decode(&buf[pos..]) {
                if accept(pos, &rec, 0) {
                    out.records += 1;
                    pos += used;
                    out.valid_end = pos;
                    continue;
                }
            }
            let bad = pos;
            let mut p = pos + 1;
            let mut found = None;
            while p + self.header_len() <= buf.len() {
                if let Decoded::Record(rec, used) = self.decode(&buf[p..]) {
                    if accept(p, &rec, p - bad) {
                        found = Some(p + used);
                        break;
                    }
                }
                p += 1;
            }
            match found {
                Some(end) => {
                    out.corrupt_regions += 1;
                    out.records += 1;
                    pos = end;
                    out.valid_end = pos;
                }
                None => break,
            }
        }
        out
    }
}

/// The offsets a partition's next frame may plausibly carry after
/// `skipped` bytes of garbage, when `expected` was due: no more records can
/// hide in those bytes than smallest frames fit in them. A frame claiming
/// an offset outside it was not written there by us (a frame inside a
/// request body, or stale bytes) and is not accepted.
pub fn offset_window(format: FrameFormat, expected: u64, skipped: usize) -> std::ops::RangeInclusive<u64> {
    expected..=expected.saturating_add((skipped / format.header_len()) as u64)
}

/// Result of scanning a whole buffer as a run of frames.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Accepted frames, in order.
    pub records: u64,
    /// Where the last accepted frame ends (the trusted length).
    pub valid_end: usize,
    /// Invalid regions skipped because an accepted frame followed them.
    pub corrupt_regions: u64,
}

impl RawRecord<'_> {
    /// Length of this frame on disk in `format`.
    pub fn frame_len(&self, format: FrameFormat) -> usize {
        format.frame_len(self.payload.len())
    }
}
