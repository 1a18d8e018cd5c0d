//! The pristine rootfs kept in a cache entry, `<entry>/rootfs`, which a
//! cache hit copies (see [`super::clone`]) instead of decompressing the
//! layers again.
//!
//! It is made from the bundle of the call that unpacked the entry's
//! layout, before that bundle is returned (so before anything writes to
//! it), under the entry's lock held exclusive: in `rootfs.tmp`, renamed
//! to `rootfs` when complete. So a hit that finds `rootfs` finds a whole
//! tree, and a `rootfs.tmp` is only ever what a killed maker left. A
//! refill of the entry removes both with the old layout. The cost is disk:
//! one more unpacked tree per cache entry.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{flock, FlockOperation};

use super::clone::clone_tree;
use super::{remove_if_exists, Bundle};

const PRISTINE: &str = "rootfs";
const STAGING: &str = "rootfs.tmp";

/// Where the entry keeps its pristine rootfs.
pub(super) fn pristine_path(entry: &Path) -> std::path::PathBuf {
    entry.join(PRISTINE)
}

/// Fills the bundle from the entry's pristine rootfs, if it has one
/// (`false` if not). The caller holds the entry lock shared.
pub(super) fn copy_pristine(entry: &Path, bundle: &Bundle<'_>) -> Result<bool> {
    let pristine = entry.join(PRISTINE);
    if !fs::symlink_metadata(&pristine).is_ok_and(|m| m.is_dir()) {
        return Ok(false);
    }
    bundle.create()?;
    // Renamed into place whole, as the unpacker's staging is.
    let staging = bundle.path.join(".rootfs.metalor-clone");
    let copied = clone_tree(&pristine, &staging).and_then(|()| {
        fs::rename(&staging, bundle.rootfs())
            .with_context(|| format!("rename {} into place", staging.display()))
    });
    if let Err(err) = copied {
        let _ = remove_if_exists(bundle.path);
        return Err(err);
    }
    Ok(true)
}

/// Keeps a pristine copy of the freshly made bundle in the entry, unless
/// it has one or other callers hold the entry (then a later call makes
/// it). `lock` is the entry's lock fd, held shared or exclusive; it is
/// shared again, or released, on return.
pub(super) fn keep_pristine(entry: &Path, lock: &OwnedFd, bundle: &Bundle<'_>) -> Result<()> {
    if entry.join(PRISTINE).is_dir() {
        return Ok(());
    }
    // Not atomic (flock(2)): failing, the shared lock may be gone too,
    // which is fine, as this call reads nothing more of the entry.
    if flock(lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(());
    }
    let staging = entry.join(STAGING);
    let pristine = entry.join(PRISTINE);
    let made = remove_if_exists(&staging)
        .and_then(|()| clone_tree(&bundle.rootfs(), &staging))
        .and_then(|()| {
            fs::rename(&staging, &pristine)
                .with_context(|| format!("rename {} to {}", staging.display(), pristine.display()))
        });
    if made.is_err() {
        let _ = remove_if_exists(&staging);
    }
    made.with_context(|| {
        format!(
            "keep a pristine rootfs in OCI cache entry {}",
            entry.display()
        )
    })
}
