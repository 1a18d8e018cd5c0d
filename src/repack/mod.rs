//! Repack: turn the changes made to an unpacked image into a new layer, and
//! that layer into a new image in the same OCI layout (umoci repack's job).
//!
//! Two sources of changes are understood:
//!
//! - **A rootfs** ([`Changes::Rootfs`]): a tree that started as what the
//!   image unpacks to and was then changed in place. It is diffed against a
//!   model of the image's tree ([`lower`]), see "How the rootfs diff knows
//!   the image" below.
//! - **An overlayfs upper dir** ([`Changes::Upper`]): every entry in it is
//!   a change already; whiteout devices (char 0/0) become `.wh.NAME`, a
//!   directory marked `trusted.overlay.opaque=y` or `user.overlay.opaque=y`
//!   gets `.wh..wh..opq`. Overlay metadata that changes what a path means
//!   (a `redirect`, a `metacopy` file whose data is still in the lower dir,
//!   any overlay xattr metalor does not know) fails the repack, naming the
//!   path and the xattr; the bookkeeping xattrs that do not change a
//!   path's content (`origin`, `impure`, `nlink`, `uuid`) are dropped.
//!   Overlay xattrs never reach the layer ([`upper`]).
//!
//! # How the rootfs diff knows the image
//!
//! metalor keeps no record at unpack time (umoci writes an mtree file).
//! Instead, repack streams the image's layers once more and reads only
//! their tar headers: nothing is written, whiteouts are applied as the
//! layers stack, and the result is an in-memory map from each path to its
//! type, mode, owner, size, mtime, link target and xattrs. The rootfs is
//! then walked (`lstat`, `readlink`, `llistxattr`) and compared with it.
//! This costs one decompression of the layers (decoded in parallel,
//! stacked in order, while another thread walks the rootfs) and no disk
//! writes, and it works on any rootfs that came from the image, whoever
//! unpacked it. A rootfs whose filesystem could not store some of the
//! image's xattrs shows them as removed, and the files are written again
//! without them.
//!
//! Without `--hash` ([`RepackOptions::hash`]) a regular file counts as
//! changed when its size, mtime, mode, owner or xattrs differ. **A content
//! change that keeps the size and the mtime (the mtime reset by hand, or
//! a write within the same second as the unpack on a filesystem that
//! rounds) is missed.** With `--hash`, the layer scan also hashes every
//! regular file's content, and a file whose metadata all match is hashed
//! in the rootfs and compared; that reads every unchanged file once.
//!
//! Paths are taken as the layers spell them: a layer that writes through
//! a symlinked parent directory (`lib/x` when `lib -> usr/lib`) is
//! modelled under the spelled path, so such a file may show up as
//! deleted and added. Layer digests are not re-verified by the scan,
//! which only reads them to compare; the unpack that made the rootfs did.
//!
//! # The layer
//!
//! Entries are sorted by path, written as PAX (ustar headers, with `x`
//! records for long names, link targets, big ids and xattrs), with numeric
//! owners only and no atime or ctime; `SOURCE_DATE_EPOCH`
//! ([`RepackOptions::source_date_epoch`]) clamps every mtime and fixes
//! the `created` times, so two repacks of the same tree give the same
//! digests. Files sharing an inode become one regular entry and hardlink
//! entries to it. A name, link target or xattr name that PAX cannot carry
//! (not UTF-8, or a name that a reader would take for a whiteout) fails
//! the repack, naming the path.
//!
//! The layer streams tar → compressor → hasher → a temp blob file in the
//! layout, renamed to its digest at the end ([`write`]); the new config
//! and manifest are small blobs, and the tag is set with the layout
//! writer's locked, atomic `index.json` update. The original image and
//! its ref are left as they were.
#![forbid(unsafe_code)]

mod diff;
mod error;
mod image;
mod lower;
mod node;
mod upper;
mod write;

use std::path::Path;

pub use error::RepackError;

use crate::oci::{
    Compression, Digest, ImageLayout, LayerDescriptor, LayoutWriter, Platform, RefTarget,
    ResolvedImage,
};

/// Where the changes come from.
#[derive(Debug, Clone, Copy)]
pub enum Changes<'a> {
    /// A rootfs that started as the image's tree; it is diffed against it.
    Rootfs(&'a Path),
    /// An overlayfs upper dir whose lower dir was the image's tree.
    Upper(&'a Path),
}

/// Choices for one repack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepackOptions {
    /// The layer's compression; gzip unless told otherwise.
    pub compression: Compression,
    /// Compare regular files by content as well (rootfs form only).
    pub hash: bool,
    /// `SOURCE_DATE_EPOCH`: clamps mtimes and sets the `created` times.
    pub source_date_epoch: Option<u64>,
    /// The history entry's `created_by`.
    pub created_by: String,
}

impl Default for RepackOptions {
    fn default() -> Self {
        RepackOptions {
            compression: Compression::Gzip,
            hash: false,
            source_date_epoch: None,
            created_by: "metalor repack".to_owned(),
        }
    }
}

/// What a repack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    /// The new manifest, which the tag now names.
    pub manifest: Digest,
    /// The new layer blob.
    pub layer: Digest,
    /// Its size in bytes.
    pub layer_size: u64,
    /// Its uncompressed digest, appended to the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Tar entries in the layer, whiteouts included.
    pub entries: u64,
}

/// Repacks `changes` on top of the image `reference` (resolved for
/// `platform`) in the layout `dir`, and points `tag` at the result.
/// `on_layer` is told when each of the image's layers has been scanned,
/// with its index, the layer count and its descriptor (rootfs form only).
pub fn repack(
    dir: &Path,
    reference: Option<&str>,
    platform: &Platform,
    changes: Changes<'_>,
    tag: &str,
    options: &RepackOptions,
    on_layer: &mut dyn FnMut(usize, usize, &LayerDescriptor),
) -> Result<Repacked, RepackError> {
    let layout = ImageLayout::open(dir)?;
    let image = layout.resolve(reference, platform)?;
    image::check_compression(&image, options.compression)?;
    let items = items(&layout, &image, changes, options, on_layer)?;
    let writer = LayoutWriter::create(dir)?;
    let layer = write::write_layer(&writer, &items, options)?;
    let created = image::rfc3339(options.source_date_epoch);
    let config = image::new_config(&image, &layer.diff_id, &created, &options.created_by)?;
    let config_digest = Digest::sha256_of(&config);
    writer.put_blob(&config_digest, &config)?;
    let manifest = image::new_manifest(&image, &config_digest, config.len(), &layer, options)?;
    let manifest_digest = Digest::sha256_of(&manifest);
    writer.put_blob(&manifest_digest, &manifest)?;
    writer.set_ref(
        tag,
        &RefTarget {
            media_type: image.manifest_media_type.clone(),
            digest: manifest_digest.clone(),
            size: manifest.len() as u64,
        },
    )?;
    Ok(Repacked {
        manifest: manifest_digest,
        layer: layer.digest,
        layer_size: layer.size,
        diff_id: layer.diff_id,
        entries: layer.entries,
    })
}

/// The layer items for `changes` on top of `image`, sorted by tar name.
fn items(
    layout: &ImageLayout,
    image: &ResolvedImage,
    changes: Changes<'_>,
    options: &RepackOptions,
    on_layer: &mut dyn FnMut(usize, usize, &LayerDescriptor),
) -> Result<Vec<node::Item>, RepackError> {
    match changes {
        Changes::Rootfs(root) => {
            // The walk needs nothing from the image: it runs beside the
            // layer scan, whose progress stays on this thread.
            let (lower, walked) = std::thread::scope(|scope| {
                let walk = scope.spawn(|| diff::walk(root));
                let lower = lower::scan(layout, image, options.hash, on_layer);
                let walked = walk
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (lower, walked)
            });
            diff::diff(root, walked?, &lower?, options.hash)
        }
        Changes::Upper(upper_dir) => upper::changes(upper_dir),
    }
}
