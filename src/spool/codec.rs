//! Record framing. See the format description in `mod.rs`.

/// Bytes before the body: `len: u32` and `crc: u32`.
pub const PREFIX_LEN: usize = 8;
/// Fixed part of the body: partition u32, offset u64, timestamp u64, flags u8.
pub const BODY_FIXED_LEN: usize = 4 + 8 + 8 + 1;
/// Whole header in front of the payload.
pub const HEADER_LEN: usize = PREFIX_LEN + BODY_FIXED_LEN;
/// Hard ceiling on the `len` field, a constant of on-disk format version 1
/// (recorded in the manifest). A larger `len` is corruption, never an
/// allocation: `max_record` may only be set below it.
pub const MAX_BODY_LEN: u32 = 64 * 1024 * 1024;

/// A frame decoded from bytes; the payload borrows the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: u64,
    pub flags: u8,
    pub payload: &'a [u8],
}

impl RawRecord<'_> {
    /// Length of the whole frame on disk.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
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

/// Length of the frame for a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, partition: u32, offset: u64, timestamp_ms: u64, flags: u8, payload: &[u8]) {
    let body_len = (BODY_FIXED_LEN + payload.len()) as u32;
    debug_assert!(body_len <= MAX_BODY_LEN);
    let start = out.len();
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(payload);
    let crc = frame_crc(&out[start..start + 4], &out[start + PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), body)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the frame at the start of `buf`. Never allocates and never
/// trusts `len` beyond [`MAX_BODY_LEN`].
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < 4 {
        return Decoded::Incomplete { need: HEADER_LEN };
    }
    let body_len = u32_at(buf, 0);
    if (body_len as usize) < BODY_FIXED_LEN || body_len > MAX_BODY_LEN {
        return Decoded::Invalid(Invalid::BadLength(body_len));
    }
    let total = PREFIX_LEN + body_len as usize;
    if buf.len() < total {
        return Decoded::Incomplete { need: total };
    }
    let stored = u32_at(buf, 4);
    let body = &buf[PREFIX_LEN..total];
    if frame_crc(&buf[..4], body) != stored {
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

/// Result of scanning a whole buffer as a run of frames.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Valid frames found, in order.
    pub records: u64,
    /// Where the last valid frame ends (the trusted length).
    pub valid_end: usize,
    /// Invalid regions skipped because a valid frame followed them.
    pub corrupt_regions: u64,
}

/// Scans `buf` frame by frame. An invalid frame followed (anywhere later)
/// by a valid one is corruption in the middle and is skipped; an invalid
/// frame with nothing valid after it is a torn tail and ends the scan.
/// `plausible` may reject frames that checksum but cannot be ours (a
/// partition out of range); they count as invalid. `visit` sees each
/// accepted frame with its position.
pub fn scan(
    buf: &[u8],
    plausible: impl Fn(&RawRecord<'_>) -> bool,
    mut visit: impl FnMut(usize, &RawRecord<'_>),
) -> Scan {
    let mut out = Scan::default();
    let mut pos = 0usize;
    while pos < buf.len() {
        match decode(&buf[pos..]) {
            Decoded::Record(rec, used) if plausible(&rec) => {
                visit(pos, &rec);
                out.records += 1;
                pos += used;
                out.valid_end = pos;
            }
            _ => match resync(buf, pos + 1, &plausible) {
                Some(next) => {
                    out.corrupt_regions += 1;
                    pos = next;
                }
                None => break,
            },
        }
    }
    out
}

/// Finds the next position at or after `from` holding a valid, plausible
/// frame. Cheap on garbage: a position is only checksummed when its length
/// field is in range and the frame fits in the buffer.
pub fn resync(buf: &[u8], from: usize, plausible: &impl Fn(&RawRecord<'_>) -> bool) -> Option<usize> {
    let mut p = from;
    while p + HEADER_LEN <= buf.len() {
        if let Decoded::Record(rec, _) = decode(&buf[p..]) {
            if plausible(&rec) {
                return Some(p);
            }
        }
        p += 1;
    }
    None
}
