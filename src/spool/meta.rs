//! Small checksummed metadata files: the manifest, the commit file of each
//! log, and the index of each sealed segment. All share one container:
//! `magic[8] | crc32c(json) u32 LE | json`, replaced atomically.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::codec::MAX_BODY_LEN;
use super::error::SpoolError;
use super::fs::{read_small, write_atomic, Fs};

pub(crate) const MANIFEST_MAGIC: &[u8; 8] = b"SLCMANI1";
pub(crate) const COMMITS_MAGIC: &[u8; 8] = b"SLCCOMM1";
pub(crate) const INDEX_MAGIC: &[u8; 8] = b"SLCINDX1";

/// Format 2: frames checksummed with SipHash-1-3-128 under `frame_key`.
/// A format-1 spool is upgraded at open: its segments stay CRC32C and are
/// read as such; segments from `keyed_from` on are format 2.
pub(crate) const FORMAT_VERSION: u32 = 2;

pub(crate) fn encode<T: Serialize>(magic: &[u8; 8], v: &T) -> Vec<u8> {
    let json = serde_json::to_vec(v).expect("metadata serializes");
    let mut out = Vec::with_capacity(12 + json.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

pub(crate) fn decode<T: DeserializeOwned>(magic: &[u8; 8], buf: &[u8]) -> Result<T, String> {
    if buf.len() < 12 || &buf[..8] != magic {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let json = &buf[12..];
    if crc32c::crc32c(json) != crc {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

pub(crate) fn load<T: DeserializeOwned>(fs: &dyn Fs, magic: &[u8; 8], path: &Path) -> Result<T, SpoolError> {
    let buf = read_small(fs, path).map_err(|e| SpoolError::io("read", path, e))?;
    decode(magic, &buf).map_err(|reason| SpoolError::CorruptMeta {
        path: path.to_owned(),
        reason,
    })
}

pub(crate) fn store<T: Serialize>(fs: &dyn Fs, magic: &[u8; 8], path: &Path, v: &T) -> Result<(), SpoolError> {
    write_atomic(fs, path, &encode(magic, v)).map_err(|e| SpoolError::io("write", path, e))
}

/// The secret that keys frame checksums: 128 random bits, stored as hex.
/// Never printed (Debug is redacted) and never part of any status.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct FrameKey(String);

impl FrameKey {
    pub fn random() -> Self {
        FrameKey(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn bytes(&self) -> Option<[u8; 16]> {
        u128::from_str_radix(&self.0, 16)
            .ok()
            .filter(|_| self.0.len() == 32)
            .map(|k| k.to_le_bytes())
    }
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

/// First segment id written in format 2, per log.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KeyedFrom {
    pub log: u64,
    pub dlq: u64,
}

/// Identity and fixed shape of a spool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub format_version: u32,
    pub partitions: u32,
    /// Random id, so logs and tools can tell two spools apart.
    pub spool_id: String,
    /// The format's hard ceiling on a frame's `len` field.
    pub max_body_len: u32,
    pub created_ms: u64,
    /// Format 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_key: Option<FrameKey>,
    #[serde(default)]
    pub keyed_from: KeyedFrom,
}

impl Manifest {
    pub fn new(partitions: u32, now_ms: u64) -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            partitions,
            spool_id: format!("{:032x}", rand::random::<u128>()),
            max_body_len: MAX_BODY_LEN,
            created_ms: now_ms,
            frame_key: Some(FrameKey::random()),
            keyed_from: KeyedFrom::default(),
        }
    }

    /// The key of a format-2 manifest.
    pub fn key(&self) -> Option<[u8; 16]> {
        self.frame_key.as_ref().and_then(FrameKey::bytes)
    }

    pub fn check(&self, path: &Path) -> Result<(), SpoolError> {
        if !(1..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(SpoolError::CorruptMeta {
                path: path.to_owned(),
                reason: format!("unsupported format version {}", self.format_version),
            });
        }
        if self.format_version >= 2 && self.key().is_none() {
            return Err(SpoolError::CorruptMeta {
                path: path.to_owned(),
                reason: "format 2 without a valid frame_key".into(),
            });
        }
        if self.max_body_len != MAX_BODY_LEN {
            return Err(SpoolError::CorruptMeta {
                path: path.to_owned(),
                reason: format!("unsupported record ceiling {}", self.max_body_len),
            });
        }
        if self.partitions == 0 {
            return Err(SpoolError::CorruptMeta {
                path: path.to_owned(),
                reason: "zero partitions".into(),
            });
        }
        Ok(())
    }
}

/// Per-partition progress, stored in a log's `COMMITS` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PartitionCommit {
    /// Every offset below this is finished.
    pub committed: u64,
    /// Lower bound for the next offset: keeps offsets from being reused
    /// after every segment holding the partition is deleted.
    pub next: u64,
    /// Offsets above `committed` already acked (kept so a selective DLQ
    /// purge survives restart; for data partitions it only saves
    /// redeliveries).
    #[serde(default)]
    pub acked: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Commits {
    pub partitions: Vec<PartitionCommit>,
}
