//! `prepare_oci_rootfs` (upstream §3.9): fetch an image into an OCI layout
//! (a per-reference cache entry, or `<pkg>/oci/layout`) and unpack it to
//! `<pkg>/oci/bundle/rootfs`. Upstream ran `skopeo copy` and `umoci
//! unpack`; here the copy is [`crate::oci::registry::pull`] and the unpack
//! is [`crate::unpack::unpack_layers_into`], both in-process.
//!
//! When the image is fetched, the two overlap: the pull reports each blob
//! as it lands in the layout ([`PullEvent`]), and the unpacker, on its own
//! thread, applies layer 1 as soon as its blob is in while later layers
//! still download. Layers are applied strictly in manifest order; the
//! config (for the diff_ids) comes first. A blob the pull has just
//! verified is not hashed again, but every diff_id is checked. A reused
//! cache entry is unpacked as it is, verifying every blob.
//!
//! Cache entries are `<cache>/<sha256(identity)>/{layout/, reference.txt}`
//! and nothing else sits at the cache root. Concurrent callers serialize on
//! an `flock` of the entry directory's own fd: a filler stages the layout
//! as `layout.tmp` inside the entry and renames it into place, so readers
//! never see half a layout, and an entry directory is never removed (a
//! removed directory would orphan the lock).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};
use rustix::fs::{flock, FlockOperation, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::host::{
    canonicalize_runtime_root_prefix, prepare_host_directory, prepare_runtime_workspace,
};
use crate::oci::registry::{pull, ProgressFn, PullEvent, PullOptions, PullSource};
use crate::oci::{oci_arch_name, Digest, ImageLayout, LayoutWriter, Platform};
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
    let bundle = Bundle {
        path: &bundle,
        platform: &platform,
    };
    match cache_root {
        Some(cache) => cached_rootfs(cache, &copy, oci_arch, &bundle)?,
        None => {
            remove_if_exists(&destination)?;
            copy.copy_and_unpack(&destination, &destination, &bundle, || Ok(()))?;
        }
    }
    let rootfs = bundle.rootfs();
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

/// Unpacks the image from its cache entry, filling the entry first (and
/// unpacking while it fills) when it is missing or stale. The entry lock is
/// held exclusive while the entry is filled, then shared until the unpack
/// is done, so that no filler replaces the layout while it is read.
fn cached_rootfs(
    cache_root: &Path,
    copy: &Copy<'_>,
    oci_arch: Option<&str>,
    bundle: &Bundle<'_>,
) -> Result<()> {
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
    let share = || {
        flock(&lock, FlockOperation::LockShared)
            .map_err(std::io::Error::from)
            .with_context(|| format!("failed to lock OCI cache entry {}", entry.display()))
    };
    if entry_is_current(&entry, &identity) {
        share()?;
        bundle.unpack_layout(&entry.join("layout"))
    } else {
        refill_entry(&entry, &identity, copy, bundle, share)
    }
}

/// Upstream's reuse rule: `layout/index.json` exists and `reference.txt`
/// holds exactly the identity.
fn entry_is_current(entry: &Path, identity: &str) -> bool {
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
    /// Copies the image into the layout at `dir` (errors name `shown`, the
    /// layout's final path) and unpacks it into `bundle` at the same time:
    /// each layer is applied, in manifest order, as soon as its blob is in.
    /// `commit` runs once the copy is complete, while the unpack may still
    /// be going on. A failed copy leaves neither the layout nor the bundle
    /// behind, and a failed commit no bundle; either error is the one
    /// reported, since it is what made the unpack fail too. A failed unpack
    /// after a good copy keeps the layout, as a copy followed by an unpack
    /// would. The copy is not cancelled when the unpack fails early: the
    /// error comes once the whole image is in.
    fn copy_and_unpack(
        &self,
        dir: &Path,
        shown: &Path,
        bundle: &Bundle<'_>,
        commit: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        // The layout skeleton is created here (the pull reopens it) so the
        // unpacker can hold a handle to its directory, and `commit` may
        // rename the directory under it.
        let layout = LayoutWriter::create(dir)
            .and_then(|_| ImageLayout::open(dir))
            .with_context(|| copy_failed(self.normalized, shown));
        let layout = match layout {
            Ok(layout) => Arc::new(layout),
            Err(err) => {
                let _ = remove_if_exists(dir);
                return Err(err);
            }
        };
        if let Err(err) = bundle.create() {
            let _ = remove_if_exists(dir);
            return Err(err);
        }
        let arrivals = Arc::new(Arrivals::default());
        let rootfs = bundle.rootfs();
        let (copied, unpacked) = std::thread::scope(|scope| {
            let unpacker = scope.spawn(|| unpack_arriving(&layout, &arrivals, &rootfs));
            let copied = arrivals
                .watch(|progress| self.copy_into(dir, shown, progress))
                .and_then(|()| commit());
            (copied, unpacker.join())
        });
        let unpacked = unpacked.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Err(err) = copied {
            let _ = remove_if_exists(bundle.path);
            return Err(err);
        }
        unpacked.with_context(|| bundle.unpack_failed(shown))
    }

    /// Copies the image into the layout at `dir`, tagged `image`, telling
    /// `progress` about each blob; errors name `shown`, the layout's final
    /// path. A failed copy leaves no partial layout behind.
    fn copy_into(&self, dir: &Path, shown: &Path, progress: ProgressFn) -> Result<()> {
        let options = PullOptions {
            platform: self.platform.clone(),
            progress: Some(progress),
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

/// The bundle the image is unpacked into: `<pkg>/oci/bundle`, holding
/// `rootfs`.
struct Bundle<'a> {
    path: &'a Path,
    /// The platform to pick when a reused layout is resolved.
    platform: &'a Platform,
}

impl Bundle<'_> {
    fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    fn create(&self) -> Result<()> {
        fs::create_dir(self.path)
            .with_context(|| format!("failed to create {}", self.path.display()))
    }

    /// Upstream's error for a failed unpack of the layout at `layout`.
    fn unpack_failed(&self, layout: &Path) -> String {
        format!(
            "unpack OCI image {} into {} failed",
            layout.display(),
            self.path.display()
        )
    }

    /// Unpacks a complete layout (a reused cache entry).
    fn unpack_layout(&self, layout: &Path) -> Result<()> {
        self.create()?;
        unpack_image(layout, self.platform, &self.rootfs())
            .with_context(|| self.unpack_failed(layout))
    }
}

/// Applies the image being copied into `layout` to a new `rootfs`, each
/// layer as soon as the copy reports its blob, in manifest order.
fn unpack_arriving(
    layout: &Arc<ImageLayout>,
    arrivals: &Arc<Arrivals>,
    rootfs: &Path,
) -> Result<()> {
    let Some(manifest) = arrivals.wait_for(|arrived| arrived.manifest.clone()) else {
        bail!("the copy ended before its manifest and config arrived");
    };
    let image = layout.resolve_manifest(&manifest.digest, &manifest.media_type, &manifest.bytes)?;
    let layers = image
        .layers
        .iter()
        .map(|layer| LayerInput {
            blob: Box::new(ArrivingBlob {
                layout: Arc::clone(layout),
                arrivals: Arc::clone(arrivals),
                digest: layer.digest.clone(),
                file: None,
            }),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            compression: Some(layer.compression),
            // The copy verified digest and size before it reported the blob.
            blob_verified: true,
        })
        .collect();
    unpack_layers_into(rootfs, layers, UnpackOptions::default(), &mut |_, _| {})?;
    Ok(())
}

/// What the copy has put in the layout so far, for the unpacker waiting
/// on it.
#[derive(Default)]
struct Arrivals {
    state: Mutex<Arrived>,
    changed: Condvar,
    /// Set when the copy failed, so that a layer being applied stops at
    /// its next read instead of at its end.
    failed: AtomicBool,
}

#[derive(Default)]
struct Arrived {
    manifest: Option<PulledManifest>,
    /// Blobs in the layout, verified.
    blobs: HashSet<Digest>,
    /// The copy is over, done or failed: nothing more arrives.
    ended: bool,
}

/// The manifest being copied, as the pull reported it.
#[derive(Clone)]
struct PulledManifest {
    digest: Digest,
    media_type: String,
    bytes: Arc<[u8]>,
}

impl Arrivals {
    /// Runs `copy` with a pull progress callback that records arrivals
    /// here, then ends them, also when the copy unwinds, so the unpacker
    /// never waits for a copy that is gone.
    fn watch(self: &Arc<Self>, copy: impl FnOnce(ProgressFn) -> Result<()>) -> Result<()> {
        let mut end = EndOfCopy {
            arrivals: self,
            copied: false,
        };
        let arrivals = Arc::clone(self);
        let copied = copy(Arc::new(move |event| arrivals.record(event)));
        end.copied = copied.is_ok();
        copied
    }

    fn record(&self, event: &PullEvent) {
        match event {
            PullEvent::BlobDone { digest, .. } => self.update(|arrived| {
                arrived.blobs.insert(digest.clone());
            }),
            PullEvent::Manifest {
                digest,
                media_type,
                bytes,
            } => self.update(|arrived| {
                arrived.manifest = Some(PulledManifest {
                    digest: digest.clone(),
                    media_type: media_type.clone(),
                    bytes: Arc::clone(bytes),
                });
            }),
            _ => {}
        }
    }

    fn update(&self, change: impl FnOnce(&mut Arrived)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Waits until `ready` finds what it wants, or the copy is over
    /// without it (`None`).
    fn wait_for<T>(&self, ready: impl Fn(&Arrived) -> Option<T>) -> Option<T> {
        let arrived = self
            .changed
            .wait_while(self.lock(), |arrived| {
                !arrived.ended && ready(arrived).is_none()
            })
            .unwrap_or_else(PoisonError::into_inner);
        ready(&arrived)
    }

    fn lock(&self) -> MutexGuard<'_, Arrived> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends the arrivals when dropped: after the copy, or while it unwinds.
struct EndOfCopy<'a> {
    arrivals: &'a Arrivals,
    copied: bool,
}

impl Drop for EndOfCopy<'_> {
    fn drop(&mut self) {
        if !self.copied {
            self.arrivals.failed.store(true, Ordering::Relaxed);
        }
        self.arrivals.update(|arrived| arrived.ended = true);
    }
}

/// A layer blob the copy may still be downloading: the first read waits
/// until the copy reports it in the layout, verified, then streams it.
struct ArrivingBlob {
    layout: Arc<ImageLayout>,
    arrivals: Arc<Arrivals>,
    digest: Digest,
    file: Option<File>,
}

impl Read for ArrivingBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.arrivals.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the copy failed"));
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let arrived = self
                    .arrivals
                    .wait_for(|arrived| arrived.blobs.contains(&self.digest).then_some(()));
                if arrived.is_none() {
                    let digest = &self.digest;
                    return Err(io::Error::other(format!(
                        "the copy ended without blob {digest}"
                    )));
                }
                let file = self
                    .layout
                    .open_blob(&self.digest)
                    .map_err(io::Error::other)?;
                self.file.insert(file)
            }
        };
        file.read(buf)
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
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            compression: Some(layer.compression),
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
