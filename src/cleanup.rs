//! Temporaries this process must not leave behind when it is interrupted.
//!
//! Library code registers each temporary it creates (a staging directory, a
//! temp file beside its destination) with [`TempGuard::new`] and drops the
//! guard once the temporary is renamed into place or removed. Registering
//! is cheap and does nothing else: the library never installs signal
//! handling behind its caller's back. A command line opts in with
//! [`remove_temporaries_on_signal`], after which SIGINT and SIGTERM remove
//! every registered path and end the process with 128+N (130, 143).
//!
//! What a `kill -9` leaves is not this module's business: each kind of
//! temporary is reclaimed by the next process that needs the same place,
//! once its owner is provably gone (see `unpack::stage`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::sys;

/// The registered paths, by guard id.
struct Registry {
    next: u64,
    paths: BTreeMap<u64, PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    paths: BTreeMap::new(),
});

/// A panic elsewhere must not stop an interrupted process from cleaning up.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps a path registered for removal on SIGINT/SIGTERM while it lives.
///
/// Dropping the guard only unregisters the path; removing or committing
/// the temporary stays the owner's job. Drop the guard after the rename
/// (or removal), so that an interrupt in between still finds it.
#[derive(Debug)]
#[must_use = "the path is unregistered when the guard is dropped"]
pub struct TempGuard {
    id: u64,
}

impl TempGuard {
    /// Registers `path`, a file or a directory tree this process created.
    /// Use an absolute path (or one relative to a working directory that
    /// does not change): it is removed as given.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let mut registry = registry();
        let id = registry.next;
        registry.next += 1;
        registry.paths.insert(id, path.into());
        Self { id }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        registry().paths.remove(&self.id);
    }
}

/// Makes SIGINT and SIGTERM remove every registered path, then exit the
/// process with 128+N. For programs, not libraries: call it from `main`
/// (or a verb) before any other thread starts, because it blocks the two
/// signals in the calling thread and the threads it starts later inherit
/// that, leaving a dedicated thread the only one that takes them. Programs
/// started afterwards would inherit the blocked mask too, so a process that
/// runs other programs should not opt in. Calling it again does nothing.
pub fn remove_temporaries_on_signal() -> io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    sys::block_termination_signals()?;
    std::thread::Builder::new()
        .name("metalor-signals".into())
        .spawn(|| {
            let code = match sys::wait_termination_signal() {
                Ok(signal) => 128 + signal,
                Err(_) => 1,
            };
            remove_registered();
            std::process::exit(code);
        })?;
    let _ = INSTALLED.set(());
    Ok(())
}

/// Removes every registered path, best effort: there is nobody left to
/// report an error to.
fn remove_registered() {
    let paths: Vec<PathBuf> = registry().paths.values().cloned().collect();
    for path in paths {
        remove_path(&path);
    }
}

/// Removes `path` without following a symlink at it. Another thread may
/// still be writing into a directory tree, so the removal is repeated until
/// the top is gone: once it is, nothing more can be created below it.
fn remove_path(path: &Path) {
    for _ in 0..64 {
        let removed = match std::fs::symlink_metadata(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(_) => return,
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
        };
        match removed {
            Ok(()) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered() -> Vec<PathBuf> {
        registry().paths.values().cloned().collect()
    }

    #[test]
    fn guards_register_until_dropped_and_removal_takes_trees_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path(), tree.join("escape")).unwrap();
        let file = dir.path().join("file.tmp");
        std::fs::write(&file, "x").unwrap();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, "x").unwrap();

        let tree_guard = TempGuard::new(&tree);
        let file_guard = TempGuard::new(&file);
        {
            let _kept = TempGuard::new(&kept);
        }
        let now = registered();
        assert!(now.contains(&tree) && now.contains(&file), "{now:?}");
        assert!(!now.contains(&kept), "a dropped guard unregisters");

        remove_path(&tree);
        remove_path(&file);
        assert!(!tree.exists() && !file.exists());
        assert!(kept.exists(), "the symlink in the tree was not followed");
        drop((tree_guard, file_guard));
        let now = registered();
        assert!(!now.contains(&tree) && !now.contains(&file), "{now:?}");
    }
}
