//! Unpack into a staging directory beside the target and rename it into
//! place only when every layer applied and verified, so that a failure
//! never leaves a half-finished rootfs at the target.
//!
//! A process killed mid-way cannot clean up, so its staging directory
//! stays. Each staging directory is `flock`ed by its owner for its whole
//! life, and every unpack first removes the staging directories beside its
//! target whose lock it can take: their owner is provably gone.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{flock, AtFlags, FlockOperation, Mode, OFlags};

use super::apply::{Applier, Privileges};
use super::error::UnpackError;
use super::fsops;
use super::pipeline::{apply_layers, LayerInput};
use super::{LayerStats, UnpackOptions};
use crate::cleanup::TempGuard;
use crate::oci::Digest;

/// Why an image could not be unpacked to its target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StagedUnpackError {
    /// The target cannot take a new rootfs.
    #[error("rootfs target {path}: {reason}")]
    Target {
        /// The target path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Preparing, renaming or cleaning the staging directory failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A layer failed to apply or verify.
    #[error("apply layer {digest}")]
    Layer {
        /// The layer's position in the manifest, from 0.
        index: usize,
        /// The layer's blob digest.
        digest: Digest,
        /// What went wrong inside the layer.
        #[source]
        source: UnpackError,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StagedUnpackError + 'a {
    move |source| StagedUnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Applies `layers` in order to a new rootfs at `target`, which must not
/// exist or be an empty directory. The rootfs appears only when complete.
pub fn unpack_layers_into(
    target: &Path,
    layers: Vec<LayerInput>,
    options: UnpackOptions,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<LayerStats, StagedUnpackError> {
    check_target(target)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().ok_or(StagedUnpackError::Target {
        path: target.to_path_buf(),
        reason: "has no final name",
    })?;
    let parent_fd = rustix::fs::open(
        &parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .map_err(io_err("open parent directory", &parent))?;
    reclaim_abandoned_staging(parent_fd.as_fd());
    let staging = create_staging(parent_fd.as_fd(), &parent, name.as_bytes())?;
    let result = fill_staging(
        &parent_fd,
        &staging.name,
        &staging.path,
        layers,
        options,
        on_layer,
    )
    .and_then(|stats| {
        fsops::rename_at(
            parent_fd.as_fd(),
            &staging.name,
            parent_fd.as_fd(),
            name.as_bytes(),
        )
        .map_err(io_err("rename staging directory into", target))?;
        Ok(stats)
    });
    if result.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fsops::remove_tree_at(parent_fd.as_fd(), &staging.name);
    }
    // Only now, with the directory renamed or removed, is the lock let go.
    drop(staging);
    result
}

fn fill_staging(
    parent_fd: &OwnedFd,
    staging: &[u8],
    staging_path: &Path,
    layers: Vec<LayerInput>,
    options: UnpackOptions,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<LayerStats, StagedUnpackError> {
    let root = fsops::open_subdir_nofollow(parent_fd.as_fd(), staging)
        .map_err(io_err("open staging directory", staging_path))?;
    let digests: Vec<Digest> = layers.iter().map(|l| l.digest.clone()).collect();
    let mut applier = Applier::new(root.as_fd(), options, Privileges::detect());
    apply_layers(&mut applier, layers, on_layer).map_err(|(index, source)| {
        StagedUnpackError::Layer {
            index,
            // apply_layers reports the index of one of `layers`.
            digest: digests[index].clone(),
            source,
        }
    })?;
    Ok(*applier.stats())
}

fn check_target(target: &Path) -> Result<(), StagedUnpackError> {
    let refuse = |reason| StagedUnpackError::Target {
        path: target.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", target)(e)),
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse("is a symlink")),
        Ok(meta) if !meta.is_dir() => Err(refuse("exists and is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(target).map_err(io_err("list", target))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(refuse("exists and is not empty")),
            }
        }
    }
}

/// What makes a name a staging directory's: `.NAME` + this + `<pid>-<n>`.
const STAGING_MARK: &[u8] = b".metalor-staging-";

/// Numbers the staging directories of this process.
static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

/// `.NAME.metalor-staging-<pid>-<n>` for a target named NAME.
fn staging_name(target_name: &[u8]) -> Vec<u8> {
    let n = NEXT_STAGING.fetch_add(1, Ordering::Relaxed);
    let mut name = b".".to_vec();
    name.extend_from_slice(target_name);
    name.extend_from_slice(STAGING_MARK);
    name.extend_from_slice(format!("{}-{n}", std::process::id()).as_bytes());
    name
}

/// Whether `name` has the shape [`staging_name`] gives, for any target.
fn is_staging_name(name: &[u8]) -> bool {
    let Some(at) = name
        .windows(STAGING_MARK.len())
        .rposition(|window| window == STAGING_MARK)
    else {
        return false;
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    let suffix = &name[at + STAGING_MARK.len()..];
    let mut parts = suffix.splitn(2, |b| *b == b'-');
    let (pid, n) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    name.first() == Some(&b'.') && at > 1 && digits(pid) && digits(n)
}

/// A staging directory that this process holds an exclusive `flock` on,
/// through its own fd, for as long as the value lives. The kernel drops
/// the lock when the process dies, however it dies, which is how the next
/// unpack beside it tells an abandoned directory from a live one: by a
/// lock it can take, not by a pid (pids are reused) or an age.
struct Staging {
    name: Vec<u8>,
    path: PathBuf,
    _lock: OwnedFd,
    /// Removes the directory if SIGINT/SIGTERM ends a command line.
    _interrupt: TempGuard,
}

/// Creates and locks a new staging directory for `target_name` in
/// `parent_fd`. A reclaimer may take the fresh directory for abandoned
/// between the mkdir and the lock; then the name no longer leads to the
/// locked directory, and a new one is made.
fn create_staging(
    parent_fd: BorrowedFd<'_>,
    parent: &Path,
    target_name: &[u8],
) -> Result<Staging, StagedUnpackError> {
    loop {
        let name = staging_name(target_name);
        let path = parent.join(OsStr::from_bytes(&name));
        match fsops::mkdir_at(parent_fd, &name, 0o755) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("create staging directory", &path)(e)),
        }
        let interrupt = TempGuard::new(std::path::absolute(&path).unwrap_or_else(|_| path.clone()));
        let lock = match fsops::open_subdir_nofollow(parent_fd, &name) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = fsops::remove_tree_at(parent_fd, &name);
                return Err(io_err("open staging directory", &path)(e));
            }
        };
        let locked = flock(&lock, FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .and_then(|()| names_same_dir(parent_fd, &name, &lock));
        match locked {
            Ok(true) => {
                return Ok(Staging {
                    name,
                    path,
                    _lock: lock,
                    _interrupt: interrupt,
                })
            }
            Ok(false) => continue,
            Err(e) => {
                let _ = fsops::remove_tree_at(parent_fd, &name);
                return Err(io_err("lock staging directory", &path)(e));
            }
        }
    }
}

/// Whether `name` in `parent_fd` is still the directory `dir` is open on.
fn names_same_dir(parent_fd: BorrowedFd<'_>, name: &[u8], dir: &OwnedFd) -> io::Result<bool> {
    let held = rustix::fs::fstat(dir)?;
    match rustix::fs::statat(parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(named) => Ok(named.st_dev == held.st_dev && named.st_ino == held.st_ino),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes the staging directories in `parent_fd` whose owner is gone:
/// those whose lock can be taken. One whose owner lives (its lock is held)
/// is left alone, whatever its age. Best effort: a directory that cannot
/// be reclaimed now is tried again by the next unpack here.
fn reclaim_abandoned_staging(parent_fd: BorrowedFd<'_>) {
    let Ok(names) = fsops::list_dir(parent_fd) else {
        return;
    };
    for name in names.into_iter().filter(|n| is_staging_name(n)) {
        let Ok(dir) = fsops::open_subdir_nofollow(parent_fd, &name) else {
            continue;
        };
        if flock(&dir, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        // Held, so no owner and no other reclaimer can act on it: what
        // the name leads to now is what gets removed.
        if names_same_dir(parent_fd, &name, &dir).unwrap_or(false) {
            let _ = fsops::remove_tree_at(parent_fd, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_recognised_for_any_target() {
        let name = staging_name(b"rootfs");
        assert!(name.starts_with(b".rootfs.metalor-staging-"));
        assert!(is_staging_name(&name));
        assert!(is_staging_name(b".a.metalor-staging-.metalor-staging-12-0"));
        for other in [
            &b"rootfs"[..],
            b".rootfs",
            b"rootfs.metalor-staging-1-2",
            b"..metalor-staging-1-2",
            b".r.metalor-staging-1",
            b".r.metalor-staging-1-",
            b".r.metalor-staging--2",
            b".r.metalor-staging-1-2x",
        ] {
            assert!(
                !is_staging_name(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        assert_ne!(staging_name(b"x"), staging_name(b"x"));
    }
}
