//! The hand-off between the copy and the unpack of `prepare_oci_rootfs`.
//!
//! When the image is fetched, the two overlap: the pull reports each blob
//! as it lands in the layout ([`PullEvent`]), and the unpacker, on its own
//! thread, applies layer 1 as soon as its blob is in while later layers
//! still download. Layers are applied strictly in manifest order; the
//! config (for the diff_ids) comes first. A blob the pull has just
//! verified is not hashed again, but every diff_id is checked. The
//! overlap itself is [`crate::unpack::arriving`], which the store's cold
//! path uses too; this file adds upstream's layout, bundle and errors.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::{copy_failed, remove_if_exists, Bundle, IMAGE_REF};
use crate::oci::registry::{pull, ProgressFn, PullOptions, PullSource};
use crate::oci::{ImageLayout, LayoutWriter, Platform};
use crate::unpack::arriving::{pull_while_unpacking, Arriving};
use crate::unpack::{unpack_layers_into, UnpackOptions};

/// One image to copy: upstream's `skopeo copy --multi-arch system
/// [--override-arch A] SRC oci:LAYOUT:image`, done in-process.
pub(super) struct Copy<'a> {
    pub(super) normalized: &'a str,
    pub(super) source: &'a PullSource,
    pub(super) platform: &'a Platform,
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
    pub(super) fn copy_and_unpack(
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
        let rootfs = bundle.rootfs();
        let (copied, unpacked) = pull_while_unpacking(
            layout,
            |progress| self.copy_into(dir, shown, progress).and_then(|()| commit()),
            |arriving| unpack_arriving(arriving, &rootfs),
        );
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

/// Applies the image being copied to a new `rootfs`, each layer as soon
/// as the copy reports its blob, in manifest order.
fn unpack_arriving(arriving: &Arriving, rootfs: &Path) -> Result<()> {
    let Some(image) = arriving.image() else {
        bail!("the copy ended before its manifest and config arrived");
    };
    let layers = arriving.layers(&image?);
    unpack_layers_into(rootfs, layers, UnpackOptions::default(), &mut |_, _| {})?;
    Ok(())
}
