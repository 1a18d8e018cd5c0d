//! `prepare_oci_rootfs` (upstream-api.md, `prepare_oci_rootfs`): fetch an image into an OCI layout
//! (a per-reference cache entry, or `<pkg>/oci/layout`) and unpack it to
//! `<pkg>/oci/bundle/rootfs`. Upstream ran `skopeo copy` and `umoci
//! unpack`; here the copy is [`crate::oci::registry::pull`] and the unpack
//! is [`crate::unpack::unpack_layers_into`], both in-process.
//!
//! One file per concern:
//! - [`reference`]: upstream's reference normalization (which transports
//!   are kept, which get `docker://`);
//! - [`cache`]: cache entries, their key, their `flock` and their refill;
//! - [`handoff`]: the copy, with each layer handed to the unpacker as soon
//!   as its blob is in the layout;
//! - [`pristine`] and [`clone`]: the unpacked tree kept in a cache entry,
//!   and the fd copy of it that a cache hit gets instead of a second
//!   decompression;
//! - [`seal`] and [`repair`]: a warm call keeps the bundle an earlier call
//!   made, redoing only what was changed in it since.

mod cache;
mod clone;
mod handoff;
mod pristine;
mod reference;
mod repair;
mod seal;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::host::{
    canonicalize_runtime_root_prefix, prepare_host_directory, prepare_runtime_workspace,
};
use crate::oci::registry::PullSource;
use crate::oci::{oci_arch_name, ImageLayout, Platform};
use crate::runtime::tree::remove_path_if_exists;
use crate::unpack::{unpack_layers_into, LayerInput, UnpackOptions};
use cache::{cache_identity, cache_key, cached_rootfs};
use handoff::Copy;
use reference::normalize_reference;

/// The ref name the image gets inside every layout this module writes.
const IMAGE_REF: &str = "image";

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
    let package =
        prepare_runtime_workspace(runtime_package_root, &prefix, "OCI package root")?.path;
    let oci = package.join("oci");
    let bundle = oci.join("bundle");
    // The same symlink-refusing walk as the package root, so a symlinked
    // `oci` cannot redirect the layout or the bundle.
    prepare_host_directory(&oci, "OCI package root")?;
    let normalized = normalize_reference(reference);
    let oci_arch = requested_arch.map(oci_arch_name).transpose();
    if let (Some(cache), Ok(arch)) = (cache_root, &oci_arch) {
        if let Some(rootfs) = untouched_bundle(cache, &normalized, arch.as_deref(), &oci)? {
            return Ok(rootfs);
        }
    }
    // The old bundle is renamed aside and removed while the new one is
    // made: a warm call no longer waits for an `rm -rf` first.
    let old_bundle = OldBundle::set_aside(&oci, &bundle)?;
    // Checked before anything is fetched; the message is upstream's.
    let oci_arch = oci_arch?;
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
        Some(cache) => {
            cached_rootfs(cache, &copy, oci_arch, &bundle)?;
            let key = cache_key(&cache_identity(&normalized, oci_arch));
            let pristine = pristine::pristine_path(&cache.join(&key));
            seal::seal(&oci, bundle.path, &pristine, &key);
        }
        None => {
            remove_if_exists(&destination)?;
            copy.copy_and_unpack(&destination, &destination, &bundle, || Ok(()))?;
        }
    }
    old_bundle.finish()?;
    let rootfs = bundle.rootfs();
    if !rootfs.is_dir() {
        bail!(
            "OCI image '{reference}' did not unpack to a rootfs at {}",
            rootfs.display()
        );
    }
    Ok(rootfs)
}

/// The bundle's rootfs, when it is a sealed copy of the current cache
/// entry's pristine tree, repaired where it was changed since (see
/// [`seal`] and [`repair`]); `None` when the bundle has to be made anew.
/// What earlier calls left aside is removed too, so the call leaves
/// nothing behind.
fn untouched_bundle(
    cache: &Path,
    normalized: &str,
    oci_arch: Option<&str>,
    oci: &Path,
) -> Result<Option<PathBuf>> {
    let identity = cache_identity(normalized, oci_arch);
    let key = cache_key(&identity);
    let entry = cache.join(&key);
    let bundle = oci.join("bundle");
    let pristine = pristine::pristine_path(&entry);
    if !cache::entry_is_current(&entry, &identity) {
        return Ok(None);
    }
    let Some(sealed) = seal::sealed_time(oci, &bundle, &pristine, &key) else {
        return Ok(None);
    };
    // Unsealed while the repair runs: a failed or killed one is never
    // taken for a whole bundle.
    let (seal_path, held) = (oci.join(seal::SEAL), oci.join(seal::SEAL_TMP));
    fs::rename(&seal_path, &held)
        .with_context(|| format!("failed to move {} aside", seal_path.display()))?;
    let rootfs = bundle.join("rootfs");
    match repair::repair(&pristine, &rootfs, sealed) {
        Ok(0) => fs::rename(&held, &seal_path)
            .with_context(|| format!("failed to restore {}", seal_path.display()))?,
        Ok(_) => seal::seal(oci, &bundle, &pristine, &key),
        Err(_) => return Ok(None),
    }
    for leftover in OldBundle::leftovers(oci, None) {
        remove_if_exists(&leftover)?;
    }
    Ok(rootfs.canonicalize().ok())
}

/// A previous bundle renamed aside, being removed on its own thread.
struct OldBundle {
    removal: Option<(PathBuf, std::thread::JoinHandle<std::io::Result<()>>)>,
}

impl OldBundle {
    /// Renames `bundle` (if there is one) to a hidden sibling and starts
    /// removing that. Nothing else ever uses the hidden name.
    fn set_aside(oci: &Path, bundle: &Path) -> Result<OldBundle> {
        // The seal describes the bundle about to go.
        remove_if_exists(&oci.join(seal::SEAL))?;
        remove_if_exists(&oci.join(seal::SEAL_TMP))?;
        if fs::symlink_metadata(bundle).is_err() {
            return Ok(OldBundle { removal: None });
        }
        if !fs::symlink_metadata(bundle).is_ok_and(|m| m.is_dir()) {
            remove_if_exists(bundle)?;
            return Ok(OldBundle { removal: None });
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let aside = oci.join(format!(".bundle.old-{}-{nanos:09}", std::process::id()));
        fs::rename(bundle, &aside)
            .with_context(|| format!("failed to move {} aside", bundle.display()))?;
        // Also what an earlier call that failed midway left aside.
        let mut doomed = vec![aside.clone()];
        doomed.extend(Self::leftovers(oci, Some(&aside)));
        let thread =
            std::thread::spawn(move || doomed.iter().try_for_each(|p| remove_path_if_exists(p)));
        Ok(OldBundle {
            removal: Some((aside, thread)),
        })
    }

    /// Bundles earlier calls set aside and did not remove, but `except`.
    fn leftovers(oci: &Path, except: Option<&Path>) -> Vec<PathBuf> {
        let Ok(listing) = fs::read_dir(oci) else {
            return Vec::new();
        };
        listing
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                Some(p.as_path()) != except
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".bundle.old-"))
            })
            .collect()
    }

    /// Waits for the removal, so the call leaves nothing behind.
    fn finish(self) -> Result<()> {
        let Some((aside, thread)) = self.removal else {
            return Ok(());
        };
        let removed = thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        removed.with_context(|| format!("failed to remove {}", aside.display()))
    }
}

/// Upstream's error for a failed copy into `layout`.
fn copy_failed(normalized: &str, layout: &Path) -> String {
    format!(
        "copy OCI image {normalized} into {} failed",
        layout.display()
    )
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

/// Applies the layers of `layout:image` to a new `rootfs`, verifying every
/// blob and diff_id. keep-dirlinks and whiteouts are the applier's
/// semantics; ownership and devices follow privilege.
fn unpack_image(layout: &Path, platform: &Platform, rootfs: &Path) -> Result<()> {
    let image_layout = ImageLayout::open(layout)?;
    let image = image_layout.resolve(Some(IMAGE_REF), platform)?;
    let layers = LayerInput::from_layout(&image_layout, &image)?;
    unpack_layers_into(rootfs, layers, UnpackOptions::default(), &mut |_, _| {})?;
    Ok(())
}

/// Removes whatever is at `path` without following a symlink there.
fn remove_if_exists(path: &Path) -> Result<()> {
    remove_path_if_exists(path).with_context(|| format!("failed to remove {}", path.display()))
}
