//! The OCI layout cache of `prepare_oci_rootfs`.
//!
//! Cache entries are `<cache>/<sha256(identity)>/{layout/, reference.txt}`
//! and nothing else sits at the cache root. Concurrent callers serialize on
//! an `flock` of the entry directory's own fd: a filler stages the layout
//! as `layout.tmp` inside the entry and renames it into place, so readers
//! never see half a layout, and an entry directory is never removed (a
//! removed directory would orphan the lock).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{flock, FlockOperation, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::handoff::Copy;
use super::{remove_if_exists, Bundle};
use crate::runtime::linux::host::prepare_host_directory;

/// The file in a cache entry that records the entry's identity.
const REFERENCE_FILE: &str = "reference.txt";
/// Where a filler stages a cache entry's layout before renaming it.
const STAGING_LAYOUT: &str = "layout.tmp";

/// The cache identity upstream hashes: the normalized reference and the
/// OCI architecture (`system` when none was requested), no trailing newline.
pub(super) fn cache_identity(normalized: &str, oci_arch: Option<&str>) -> String {
    format!("{normalized}\narch={}", oci_arch.unwrap_or("system"))
}

/// Lowercase hex SHA-256 of the identity: the entry's directory name.
pub(super) fn cache_key(identity: &str) -> String {
    Sha256::digest(identity.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unpacks the image from its cache entry, filling the entry first (and
/// unpacking while it fills) when it is missing or stale. The entry lock is
/// held exclusive while the entry is filled, then shared until the unpack
/// is done, so that no filler replaces the layout while it is read.
pub(super) fn cached_rootfs(
    cache_root: &Path,
    copy: &Copy<'_>,
    oci_arch: Option<&str>,
    bundle: &Bundle<'_>,
) -> Result<()> {
    let root_fd = prepare_host_directory(cache_root, "OCI cache root")?.fd;
    let identity = cache_identity(copy.normalized, oci_arch);
    let key = cache_key(&identity);
    let entry = cache_root.join(&key);
    match rustix::fs::mkdirat(&root_fd, key.as_str(), Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(err) => {
            return Err(std::io::Error::from(err))
                .with_context(|| format!("failed to create OCI cache entry {}", entry.display()))
        }
    }
    let lock = rustix::fs::openat(
        &root_fd,
        key.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("failed to open OCI cache entry {}", entry.display()))?;
    flock(&lock, FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)
        .with_context(|| format!("failed to lock OCI cache entry {}", entry.display()))?;
    let share = || {
        flock(&lock, FlockOperation::LockShared)
            .map_err(std::io::Error::from)
            .with_context(|| format!("failed to lock OCI cache entry {}", entry.display()))
    };
    if entry_is_current(&entry, &identity) {
        share()?;
        if super::pristine::copy_pristine(&entry, bundle)? {
            return Ok(());
        }
        bundle.unpack_layout(&entry.join("layout"))?;
    } else {
        refill_entry(&entry, &identity, copy, bundle, share)?;
    }
    super::pristine::keep_pristine(&entry, &lock, bundle)
}

/// Upstream's reuse rule: `layout/index.json` exists and `reference.txt`
/// holds exactly the identity.
pub(super) fn entry_is_current(entry: &Path, identity: &str) -> bool {
    entry.join("layout/index.json").is_file()
        && fs::read(entry.join(REFERENCE_FILE)).is_ok_and(|bytes| bytes == identity.as_bytes())
}

/// Empties the entry (under its exclusive lock) and copies the image into
/// `layout.tmp` while unpacking it into `bundle`. Once the copy is
/// complete it renames the layout to `layout`, writes `reference.txt` last,
/// so an interrupted fill is never taken for a complete one, and calls
/// `share` (the unpack may still be going on).
fn refill_entry(
    entry: &Path,
    identity: &str,
    copy: &Copy<'_>,
    bundle: &Bundle<'_>,
    share: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let listing = fs::read_dir(entry)
        .with_context(|| format!("failed to read OCI cache entry {}", entry.display()))?;
    for child in listing {
        let child =
            child.with_context(|| format!("failed to read OCI cache entry {}", entry.display()))?;
        remove_if_exists(&child.path())?;
    }
    let staging = entry.join(STAGING_LAYOUT);
    let layout = entry.join("layout");
    copy.copy_and_unpack(&staging, &layout, bundle, || {
        commit_entry(entry, identity, &staging, &layout)?;
        share()
    })
}

/// Moves a complete staged layout into place, then writes `reference.txt`.
fn commit_entry(entry: &Path, identity: &str, staging: &Path, layout: &Path) -> Result<()> {
    fs::rename(staging, layout).with_context(|| {
        format!(
            "failed to move {} to {}",
            staging.display(),
            layout.display()
        )
    })?;
    let reference = entry.join(REFERENCE_FILE);
    let staged_reference = entry.join(format!("{REFERENCE_FILE}.tmp"));
    let mut file = fs::File::create(&staged_reference)
        .with_context(|| format!("failed to write {}", staged_reference.display()))?;
    file.write_all(identity.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", staged_reference.display()))?;
    fs::rename(&staged_reference, &reference)
        .with_context(|| format!("failed to write {}", reference.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_key() {
        let identity = cache_identity("docker://a/b:1", None);
        assert_eq!(identity, "docker://a/b:1\narch=system");
        assert_eq!(
            cache_identity("docker://a/b:1", Some("arm64")),
            "docker://a/b:1\narch=arm64"
        );
        let key = cache_key(&identity);
        assert_eq!(key.len(), 64);
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
