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

pub(crate) const FORMAT_VERSION: u32 = 1;

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
}

impl Manifest {
    pub fn new(partitions: u32, now_ms: u64) -> Self {
        Manifest {
            format_version: FORMAT_VERSION,
            partitions,
            spool_id: format!("{:032x}", rand::random::<u128>()),
            max_body_len: MAX_BODY_LEN,
            created_ms: now_ms,
        }
    }

    pub fn check(&self, path: &Path) -> Result<(), SpoolError> {
        if self.format_version != FORMAT_VERSION {
            return Err(SpoolError::CorruptMeta {
                path: path.to_owned(),
                reason: format!("unsupported format version {}", self.format_version),
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
