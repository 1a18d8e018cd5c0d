//! Pristine trees: each image unpacked once, by the verified unpacker,
//! into `staging/KEY/rootfs`, then renamed to `trees/KEY`.
//!
//! The maker holds `locks/tree-KEY` exclusive; so whatever it finds in
//! `staging/KEY` is what a killed maker left, and it removes that first.
//! Readers take the same lock shared, so they wait for a maker and never
//! see a tree before its rename.

use std::path::{Path, PathBuf};

use super::lock::{LockMode, StoreLock};
use super::remove_path_if_exists;
use super::{Store, StoreError};
use crate::oci::{ImageLayout, ResolvedImage};
use crate::unpack::{unpack_layers_into, LayerInput, UnpackOptions};

/// A pristine tree, held: while this value lives, its shared lock keeps
/// `prune` from removing the tree. The tree must not be written; mount it
/// as an overlay lowerdir.
#[derive(Debug)]
pub struct PristineTree {
    path: PathBuf,
    key: String,
    made: bool,
    _lock: StoreLock,
}

impl PristineTree {
    /// The tree's directory (the image's `/`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ALGO-HEX` of the manifest: the tree's name in `trees/` and of its
    /// mount point in `mnt/`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether this call unpacked the tree (it was not there before).
    pub fn made(&self) -> bool {
        self.made
    }
}

/// The tree of `image`, made from the blobs in the store's layout if
/// missing. The caller holds the store lock shared.
pub(super) fn ensure_tree(
    store: &Store,
    image: &ResolvedImage,
) -> Result<PristineTree, StoreError> {
    ensure_tree_from(store, image, || layout_layers(store, image))
}

/// [`ensure_tree`], with the layers to unpack (if the tree is missing)
/// from `layers`: the store's cold path passes layers that a pull under
/// way is still writing.
pub(super) fn ensure_tree_from(
    store: &Store,
    image: &ResolvedImage,
    layers: impl FnOnce() -> Result<Vec<LayerInput>, StoreError>,
) -> Result<PristineTree, StoreError> {
    let key = Store::tree_key(&image.manifest_digest);
    let path = store.path().join("trees").join(&key);
    let lock_path = store.path().join("locks").join(format!("tree-{key}"));
    let held = |lock, made| PristineTree {
        path: path.clone(),
        key: key.clone(),
        made,
        _lock: lock,
    };
    // Warm runs share the lock and go on at once.
    let lock = take(&lock_path, LockMode::Shared)?;
    if path.is_dir() {
        return Ok(held(lock, false));
    }
    drop(lock);
    let lock = take(&lock_path, LockMode::Exclusive)?;
    if path.is_dir() {
        lock.share()?;
        return Ok(held(lock, false));
    }
    make_tree(store, image, layers()?, &key, &path)?;
    lock.share()?;
    Ok(held(lock, true))
}

fn take(path: &Path, mode: LockMode) -> Result<StoreLock, StoreError> {
    StoreLock::take(path, mode).map(|lock| lock.expect("a blocking flock returns a lock"))
}

/// Unpacks into `staging/KEY/rootfs` and renames that to `path`. The
/// caller holds the tree's lock exclusive. On failure nothing is left of
/// the staging directory.
fn make_tree(
    store: &Store,
    image: &ResolvedImage,
    layers: Vec<LayerInput>,
    key: &str,
    path: &Path,
) -> Result<(), StoreError> {
    let staging = store.path().join("staging").join(key);
    // A killed maker's leftovers: nobody else can be using them.
    remove_path_if_exists(&staging).map_err(|e| StoreError::io("remove", &staging, e))?;
    std::fs::create_dir(&staging).map_err(|e| StoreError::io("create", &staging, e))?;
    let rootfs = staging.join("rootfs");
    let made = unpack_image(image, layers, &rootfs).and_then(|()| {
        std::fs::rename(&rootfs, path).map_err(|e| StoreError::io("commit tree", path, e))?;
        tracing::info!(manifest = %image.manifest_digest, tree = %path.display(), "store tree committed");
        Ok(())
    });
    let cleaned =
        remove_path_if_exists(&staging).map_err(|e| StoreError::io("remove", &staging, e));
    made.and(cleaned)
}

/// The image's layers, read from the store's layout: each blob and
/// diff_id is verified as it is unpacked.
fn layout_layers(store: &Store, image: &ResolvedImage) -> Result<Vec<LayerInput>, StoreError> {
    let layout = ImageLayout::open(&store.layout_dir())?;
    Ok(LayerInput::from_layout(&layout, image)?)
}

/// Applies the image's layers to a new `rootfs`: the same unpacker, with
/// the same semantics, as `metalor unpack`.
fn unpack_image(
    image: &ResolvedImage,
    layers: Vec<LayerInput>,
    rootfs: &Path,
) -> Result<(), StoreError> {
    unpack_layers_into(rootfs, layers, UnpackOptions::default(), &mut |_, _| {})
        .map(drop)
        .map_err(|source| StoreError::Unpack {
            digest: image.manifest_digest.clone(),
            path: rootfs.to_path_buf(),
            source: Box::new(source),
        })
}
