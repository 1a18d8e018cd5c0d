//! `flock`s of the store. Locks are on files under `locks/` (and the
//! store-wide `lock`), never on the directories they guard: a directory is
//! renamed and removed, and a lock on it would go with it.
//!
//! - `lock`: shared by everything that reads or adds (pull, unpack, run
//!   setup), exclusive for `rmi` and `prune`, which remove.
//! - `locks/ref-NAME`: exclusive while a reference is pulled, so that two
//!   cold runs of one image pull and unpack it once; the second waits.
//! - `locks/tree-KEY`: exclusive while a pristine tree is made, shared by
//!   each run that uses it, for as long as the run lasts: `prune` skips a
//!   tree it cannot lock exclusive without waiting.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation, Mode, OFlags};

use super::StoreError;

/// A held `flock`; released when dropped (or when every process that
/// inherited the descriptor has closed it).
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

/// How to take a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
    /// Exclusive, or `None` at once when someone holds it.
    TryExclusive,
}

impl StoreLock {
    /// Opens (creating) the lock file at `path` and locks it.
    pub(crate) fn take(path: &Path, mode: LockMode) -> Result<Option<StoreLock>, StoreError> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o644))
            .map_err(|e| StoreError::io("open lock", path, e.into()))?;
        let file = File::from(fd);
        let op = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
            LockMode::TryExclusive => FlockOperation::NonBlockingLockExclusive,
        };
        match flock(file.as_fd(), op) {
            Ok(()) => Ok(Some(StoreLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(rustix::io::Errno::WOULDBLOCK) if mode == LockMode::TryExclusive => Ok(None),
            Err(e) => Err(StoreError::io("flock", path, e.into())),
        }
    }

    /// Turns a held exclusive lock into a shared one. Not atomic (`flock`
    /// unlocks, then relocks), which is harmless here: the only other
    /// exclusive takers are makers, who find the tree made, and `rmi` and
    /// `prune`, which the store-wide shared lock keeps out.
    pub(crate) fn share(&self) -> Result<(), StoreError> {
        flock(self.file.as_fd(), FlockOperation::LockShared)
            .map_err(|e| StoreError::io("flock", &self.path, io::Error::from(e)))
    }
}
