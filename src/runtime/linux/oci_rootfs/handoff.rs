//! The hand-off between the copy and the unpack of `prepare_oci_rootfs`.
//!
//! When the image is fetched, the two overlap: the pull reports each blob
//! as it lands in the layout ([`PullEvent`]), and the unpacker, on its own
//! thread, applies layer 1 as soon as its blob is in while later layers
//! still download. Layers are applied strictly in manifest order; the
//! config (for the diff_ids) comes first. A blob the pull has just
//! verified is not hashed again, but every diff_id is checked. A reused
//! cache entry is unpacked as it is, verifying every blob.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};

use super::{copy_failed, remove_if_exists, Bundle, IMAGE_REF};
use crate::oci::registry::{pull, ProgressFn, PullEvent, PullOptions, PullSource};
use crate::oci::{Digest, ImageLayout, LayoutWriter, Platform};
use crate::unpack::{unpack_layers_into, LayerInput, UnpackOptions};

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
