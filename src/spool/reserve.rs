//! Room kept back so a full device can still commit.
//!
//! Retention frees space only after the committed offsets are written,
//! and `COMMITS` is replaced through a new temporary file, which needs
//! free blocks. On a device that appends filled to the last block that
//! write fails, nothing is ever reclaimed, and the spool stays full for
//! good. So the spool keeps a small preallocated file, `RESERVE`, and gives
//! it up when a commit write finds no space; it is written again once
//! retention has freed room.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::fs::Fs;

/// Big enough for the commit files of both logs (a few hundred bytes per
/// partition) and an index, several times over.
pub(crate) const RESERVE_BYTES: u64 = 256 * 1024;

pub(crate) struct Reserve {
    path: PathBuf,
    present: AtomicBool,
    /// One release or restore at a time (both logs share the reserve).
    busy: Mutex<()>,
}

impl Reserve {
    /// Makes sure the reserve exists (best effort: a device already full at
    /// open leaves it missing, and the next reclaim tries again).
    pub fn open(fs: &dyn Fs, path: PathBuf) -> Reserve {
        let r = Reserve {
            path,
            present: AtomicBool::new(false),
            busy: Mutex::new(()),
        };
        r.restore(fs);
        r
    }

    /// A reserve that is never written (offline inspection writes nothing).
    pub fn untouched(path: PathBuf) -> Reserve {
        Reserve {
            path,
            present: AtomicBool::new(false),
            busy: Mutex::new(()),
        }
    }

    /// Deletes the reserve; true if there was one to give up.
    pub fn release(&self, fs: &dyn Fs) -> bool {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !self.present.swap(false, Ordering::AcqRel) {
            return false;
        }
        match fs.remove_file(&self.path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "could not release the spool reserve");
                false
            }
        }
    }

    /// Writes the reserve again if it is missing. Real blocks, not a
    /// sparse `set_len`: a hole would free nothing when deleted.
    pub fn restore(&self, fs: &dyn Fs) {
        let _one = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if self.present.load(Ordering::Acquire) {
            return;
        }
        let res = fs.open_rw(&self.path, true).and_then(|f| {
            if f.size()? != RESERVE_BYTES {
                f.set_len(0)?;
                f.write_all_at(&vec![0u8; RESERVE_BYTES as usize], 0)?;
                f.sync_data()?;
            }
            Ok(())
        });
        match res {
            Ok(()) => self.present.store(true, Ordering::Release),
            Err(e) => {
                // A short file is worse than none: it would look whole.
                let _ = fs.remove_file(&self.path);
                tracing::warn!(path = %self.path.display(), error = %e, "spool reserve not (re)created; retrying after the next reclaim");
            }
        }
    }
}
