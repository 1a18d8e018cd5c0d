//! Copying and replacing trees on the host with `std::fs`.
//!
//! These helpers act on trees the caller trusts (imports, caches, exports,
//! snapshot seeds), with upstream's semantics: a destination is replaced,
//! never merged, and a symlink is copied as a link, never followed.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use std::fs;
use std::io;
use std::path::Path;

/// Replaces `destination` with a copy of `source`: a symlink is recreated
/// with the same target text, a directory is copied recursively with its
/// permissions, a file with `fs::copy`. Owners, times and xattrs are not kept.
pub(crate) fn copy_path(source: &Path, destination: &Path) -> Result<()> {
    let metadata = fs::symlink_metadata(source)
        .with_context(|| format!("failed to inspect {}", source.display()))?;
    remove_path_if_exists(destination)
        .with_context(|| format!("failed to replace {}", destination.display()))?;
    create_parent(destination)?;
    if metadata.file_type().is_symlink() {
        let target = fs::read_link(source)
            .with_context(|| format!("failed to read symlink {}", source.display()))?;
        let target_is_dir = fs::metadata(source).is_ok_and(|resolved| resolved.is_dir());
        return create_symlink(&target, destination, target_is_dir);
    }
    if metadata.is_dir() {
        fs::create_dir(destination)
            .with_context(|| format!("failed to create {}", destination.display()))?;
        copy_directory_entries(source, destination)?;
        // The mode last, so a read-only source directory can still be
        // filled by a caller without CAP_DAC_OVERRIDE.
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

/// Copies every entry of the directory `source` into the existing
/// directory `destination`, each with [`copy_path`].
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

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display())),
        _ => Ok(()),
    }
}

/// Removes whatever is at `path` without following a symlink there; a
/// missing path is not an error.
pub(crate) fn remove_path_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        // A Windows directory symlink needs remove_dir; elsewhere remove_file works.
        Ok(_) => fs::remove_file(path).or_else(|_| fs::remove_dir(path)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Creates the symlink `link -> target`. Windows has two kinds of symlink,
/// so the caller says whether the target is a directory; elsewhere the
/// flag is ignored.
#[cfg(unix)]
pub(crate) fn create_symlink(target: &Path, link: &Path, _target_is_dir: bool) -> Result<()> {
    std::os::unix::fs::symlink(target, link).with_context(|| symlink_failed(target, link))
}

/// Creates the symlink `link -> target`, a directory symlink when
/// `target_is_dir`, since Windows fixes the kind at creation.
#[cfg(windows)]
pub(crate) fn create_symlink(target: &Path, link: &Path, target_is_dir: bool) -> Result<()> {
    use std::os::windows::fs::{symlink_dir, symlink_file};
    let created = if target_is_dir {
        symlink_dir(target, link)
    } else {
        symlink_file(target, link)
    };
    created.with_context(|| symlink_failed(target, link))
}

fn symlink_failed(target: &Path, link: &Path) -> String {
    format!(
        "failed to create symlink {} -> {}",
        link.display(),
        target.display()
    )
}
