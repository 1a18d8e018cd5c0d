//! Upstream's `copy_path`, used to stage build-cell inputs and to bring
//! caches and exports back: the destination is replaced, symlinks are
//! recreated with the same target text, directories are copied recursively
//! with their mode, files with `fs::copy` and their mode. Owners, times and
//! xattrs are not kept.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `destination` with a copy of `source` (not following a symlink
/// at `source` itself).
pub(crate) fn copy_path(source: &Path, destination: &Path) -> Result<()> {
    let metadata = fs::symlink_metadata(source)
        .with_context(|| format!("failed to inspect {}", source.display()))?;
    remove_path_if_exists(destination)
        .with_context(|| format!("failed to replace {}", destination.display()))?;
    if let Some(parent) = destination.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let kind = metadata.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(source)
            .with_context(|| format!("failed to read symlink {}", source.display()))?;
        return symlink(&target, destination).with_context(|| {
            format!(
                "failed to create symlink {} -> {}",
                destination.display(),
                target.display()
            )
        });
    }
    if kind.is_dir() {
        fs::create_dir(destination)
            .with_context(|| format!("failed to create {}", destination.display()))?;
        copy_directory_entries(source, destination)?;
        // The mode last, so a read-only source directory can still be filled.
        return fs::set_permissions(destination, metadata.permissions())
            .with_context(|| format!("failed to apply permissions to {}", destination.display()));
    }
    fs::copy(source, destination).with_context(|| {
        format!(
            "failed to copy {} to {}",
            source.display(),
            destination.display()
        )
    })?;
    fs::set_permissions(destination, metadata.permissions())
        .with_context(|| format!("failed to apply permissions to {}", destination.display()))
}

/// Copies each entry of directory `source` into the existing `destination`.
pub(crate) fn copy_directory_entries(source: &Path, destination: &Path) -> Result<()> {
    let entries = fs::read_dir(source)
        .with_context(|| format!("failed to read directory {}", source.display()))?;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("failed to read entry in {}", source.display()))?;
        copy_path(&entry.path(), &destination.join(entry.file_name()))?;
    }
    Ok(())
}

/// Removes whatever is at `path` without following a symlink there.
pub(crate) fn remove_path_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}
