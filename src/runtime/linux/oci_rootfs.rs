//! `prepare_oci_rootfs` (upstream §3.9): fetch an image into an OCI layout
//! (a per-reference cache entry, or `<pkg>/oci/layout`) and unpack it to
//! `<pkg>/oci/bundle/rootfs`. Upstream ran `skopeo copy` and `umoci
//! unpack`; here the copy is [`crate::oci::registry::pull`] and the unpack
//! is [`crate::unpack::unpack_layers_into`], both in-process.
//!
//! Cache entries are `<cache>/<sha256(identity)>/{layout/, reference.txt}`
//! and nothing else sits at the cache root. Concurrent callers serialize on
//! an `flock` of the entry directory's own fd: a filler stages the layout
//! as `layout.tmp` inside the entry and renames it into place, so readers
//! never see half a layout, and an entry directory is never removed (a
//! removed directory would orphan the lock).

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::host::{
    canonicalize_runtime_root_prefix, prepare_host_directory, prepare_runtime_workspace,
};
use crate::oci::registry::{pull, PullOptions, PullSource};
use crate::oci::{oci_arch_name, ImageLayout, Platform};
use crate::runtime::worker_support::remove_path_if_exists;
use crate::unpack::{unpack_layers_into, LayerInput, UnpackOptions};

/// The ref name the image gets inside every layout this module writes.
const IMAGE_REF: &str = "image";
/// The file in a cache entry that records the entry's identity.
const REFERENCE_FILE: &str = "reference.txt";
/// Where a filler stages a cache entry's layout before renaming it.
const STAGING_LAYOUT: &str = "layout.tmp";

/// Fetches `reference` and unpacks it into `<package root>/oci/bundle/rootfs`,
/// returning that (canonical) path.
///
/// `reference` is `docker://…`, `oci:DIR[:REF]` or a bare registry
/// reference (which means `docker://`). With `cache_root`, the layout is
/// kept in a cache entry keyed by the reference and architecture and
/// reused, offline, by later calls from any package root. Without it,
/// `<pkg>/oci/layout` is fetched again every time. `requested_arch` picks
/// the image from an index (the host's when `None`) and is checked before
/// anything is fetched.
pub fn prepare_oci_rootfs(
    reference: &str,
    runtime_root_prefix: &Path,
    runtime_package_root: &Path,
    cache_root: Option<&Path>,
    requested_arch: Option<&str>,
) -> Result<PathBuf> {
    let prefix = canonicalize_runtime_root_prefix(runtime_root_prefix)?;
    let package = prepare_runtime_workspace(runtime_package_root, &prefix, "OCI package root")?;
    let oci = package.join("oci");
    let bundle = oci.join("bundle");
    remove_if_exists(&bundle)?;
    // The same symlink-refusing walk as the package root, so a symlinked
    // `oci` cannot redirect the layout or the bundle.
    prepare_host_directory(&oci, "OCI package root")?;
    let normalized = normalize_reference(reference);
    // Checked before anything is fetched; the message is upstream's.
    let oci_arch = requested_arch.map(oci_arch_name).transpose()?;
    let platform = match oci_arch {
        Some(arch) => Platform::linux(arch)?,
        None => Platform::host(),
    };
    // An unparsable or unsupported reference fails here, before the cache
    // or the network is touched, with the same top-level phrase as a
    // failed copy.
    let destination = match cache_root {
        Some(cache) => cache
            .join(cache_key(&cache_identity(&normalized, oci_arch)))
            .join("layout"),
        None => oci.join("layout"),
    };
    let source =
        PullSource::parse(&normalized).with_context(|| copy_failed(&normalized, &destination))?;
    let copy = Copy {
        normalized: &normalized,
        source: &source,
        platform: &platform,
    };
    let (layout, _entry_lock) = match cache_root {
        Some(cache) => {
            let (entry, lock) = cached_layout(cache, &copy, oci_arch)?;
            (entry, Some(lock))
        }
        None => {
            remove_if_exists(&destination)?;
            copy.copy_into(&destination, &destination)?;
            (destination, None)
        }
    };
    fs::create_dir(&bundle).with_context(|| format!("failed to create {}", bundle.display()))?;
    let rootfs = bundle.join("rootfs");
    unpack_image(&layout, &platform, &rootfs).with_context(|| {
        format!(
            "unpack OCI image {} into {} failed",
            layout.display(),
            bundle.display()
        )
    })?;
    if !rootfs.is_dir() {
        bail!(
            "OCI image '{reference}' did not unpack to a rootfs at {}",
            rootfs.display()
        );
    }
    Ok(rootfs)
}

/// Upstream's reference normalization: transports are kept, anything else
/// is a registry reference and gets `docker://`. `docker-daemon:` is kept
/// too (upstream prefixed it, producing a reference that can never work),
/// so it fails with a clear unsupported-transport error.
pub(crate) fn normalize_reference(reference: &str) -> String {
    const TRANSPORTS: [&str; 6] = [
        "oci:",
        "dir:",
        "docker-archive:",
        "oci-archive:",
        "containers-storage:",
        "docker-daemon:",
    ];
    if reference.contains("://") || TRANSPORTS.iter().any(|t| reference.starts_with(t)) {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

/// The cache identity upstream hashes: the normalized reference and the
/// OCI architecture (`system` when none was requested), no trailing newline.
pub(crate) fn cache_identity(normalized: &str, oci_arch: Option<&str>) -> String {
    format!("{normalized}\narch={}", oci_arch.unwrap_or("system"))
}

/// Lowercase hex SHA-256 of the identity: the entry's directory name.
pub(crate) fn cache_key(identity: &str) -> String {
    Sha256::digest(identity.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Returns the entry's layout, filled if it was missing or stale, and the
/// entry lock, held shared so no filler replaces the layout while the
/// caller unpacks from it.
fn cached_layout(
    cache_root: &Path,
    copy: &Copy<'_>,
    oci_arch: Option<&str>,
) -> Result<(PathBuf, OwnedFd)> {
    let root_fd = prepare_host_directory(cache_root, "OCI cache root")?;
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
    let layout = entry.join("layout");
    if !entry_is_current(&entry, &identity) {
        refill_entry(&entry, &identity, copy)?;
    }
    flock(&lock, FlockOperation::LockShared)
        .map_err(std::io::Error::from)
        .with_context(|| format!("failed to lock OCI cache entry {}", entry.display()))?;
    Ok((layout, lock))
}

/// Upstream's reuse rule: `layout/index.json` exists and `reference.txt`
/// holds exactly the identity.
fn entry_is_current(entry: &Path, identity: &str) -> bool {
    entry.join("layout/index.json").is_file()
        && fs::read(entry.join(REFERENCE_FILE)).is_ok_and(|bytes| bytes == identity.as_bytes())
}

/// Empties the entry (under its exclusive lock), copies the image into
/// `layout.tmp`, renames it to `layout`, then writes `reference.txt` last,
/// so an interrupted fill is never taken for a complete one.
fn refill_entry(entry: &Path, identity: &str, copy: &Copy<'_>) -> Result<()> {
    let listing = fs::read_dir(entry)
        .with_context(|| format!("failed to read OCI cache entry {}", entry.display()))?;
    for child in listing {
        let child =
            child.with_context(|| format!("failed to read OCI cache entry {}", entry.display()))?;
        remove_if_exists(&child.path())?;
    }
    let staging = entry.join(STAGING_LAYOUT);
    let layout = entry.join("layout");
    copy.copy_into(&staging, &layout)?;
    fs::rename(&staging, &layout).with_context(|| {
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

/// Upstream's error for a failed copy into `layout`.
fn copy_failed(normalized: &str, layout: &Path) -> String {
    format!(
        "copy OCI image {normalized} into {} failed",
        layout.display()
    )
}

/// One image to copy: upstream's `skopeo copy --multi-arch system
/// [--override-arch A] SRC oci:LAYOUT:image`, done in-process.
struct Copy<'a> {
    normalized: &'a str,
    source: &'a PullSource,
    platform: &'a Platform,
}

impl Copy<'_> {
    /// Copies the image into the layout at `dir`, tagged `image`; errors
    /// name `shown`, the layout's final path. A failed copy leaves no
    /// partial layout behind.
    fn copy_into(&self, dir: &Path, shown: &Path) -> Result<()> {
        let options = PullOptions {
            platform: self.platform.clone(),
            ..PullOptions::default()
        };
        let result = pull(self.source, dir, IMAGE_REF, &options);
        if result.is_err() {
            let _ = remove_if_exists(dir);
        }
        result
            .map(|_| ())
            .with_context(|| copy_failed(self.normalized, shown))
    }
}

/// Applies the layers of `layout:image` to a new `rootfs`, verifying every
/// blob and diff_id. keep-dirlinks and whiteouts are the applier's
/// semantics; ownership and devices follow privilege.
fn unpack_image(layout: &Path, platform: &Platform, rootfs: &Path) -> Result<()> {
    let image_layout = ImageLayout::open(layout)?;
    let image = image_layout.resolve(Some(IMAGE_REF), platform)?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for layer in &image.layers {
        layers.push(LayerInput {
            blob: Box::new(image_layout.open_blob(&layer.digest)?),
            digest: layer.digest.to_string(),
            size: layer.size,
            diff_id: layer.diff_id.to_string(),
            blob_verified: false,
        });
    }
    unpack_layers_into(rootfs, layers, UnpackOptions::default(), &mut |_, _| {})?;
    Ok(())
}

/// Removes whatever is at `path` without following a symlink there.
fn remove_if_exists(path: &Path) -> Result<()> {
    remove_path_if_exists(path).with_context(|| format!("failed to remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_follows_upstream() {
        assert_eq!(
            normalize_reference("docker.io/library/busybox:1"),
            "docker://docker.io/library/busybox:1"
        );
        assert_eq!(
            normalize_reference("::not-a-reference"),
            "docker://::not-a-reference"
        );
        for kept in [
            "docker://a/b",
            "oci:/x:y",
            "dir:/x",
            "docker-archive:/x.tar",
            "oci-archive:/x.tar",
            "containers-storage:x",
        ] {
            assert_eq!(normalize_reference(kept), kept);
        }
    }

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
