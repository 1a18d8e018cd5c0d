//! Unpacking an image while its pull is still writing the layers.
//!
//! The pull reports each blob as it lands in the layout, verified
//! ([`PullEvent::BlobDone`]), and the manifest once its config is in
//! ([`PullEvent::Manifest`]). [`pull_while_unpacking`] runs the pull on
//! the calling thread and the unpack on another, which gets an
//! [`Arriving`]: from it, the image (as soon as the manifest is known) and
//! one [`LayerInput`] per layer whose first read waits for its blob. So
//! layer 1 is applied while later layers still download, strictly in
//! manifest order. `prepare_oci_rootfs` and the store's cold path both
//! pull this way; what they unpack into, and how they commit it, is
//! theirs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::LayerInput;
use crate::oci::registry::{ProgressFn, PullEvent};
use crate::oci::{Digest, ImageLayout, OciError, ResolvedImage};

/// Runs `pull` here, handing it a progress callback to report into, and
/// `unpack` on a thread of its own, at the same time; returns both
/// results. The pull writes into `layout`, from which the unpacker opens
/// each blob once the pull reports it. When the pull fails, or unwinds,
/// the unpacker's waits and reads end with an error at once.
///
/// The pull is not cancelled when the unpack fails early: the caller
/// gets both results once the pull is over.
pub(crate) fn pull_while_unpacking<T, E, U: Send>(
    layout: Arc<ImageLayout>,
    pull: impl FnOnce(ProgressFn) -> Result<T, E>,
    unpack: impl FnOnce(&Arriving) -> U + Send,
) -> (Result<T, E>, U) {
    let arriving = Arriving {
        layout,
        arrivals: Arc::new(Arrivals::default()),
    };
    std::thread::scope(|scope| {
        let unpacker = scope.spawn(|| unpack(&arriving));
        let pulled = arriving.arrivals.watch(pull);
        let unpacked = unpacker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (pulled, unpacked)
    })
}

/// The unpacker's view of a pull under way.
pub(crate) struct Arriving {
    layout: Arc<ImageLayout>,
    arrivals: Arc<Arrivals>,
}

impl Arriving {
    /// Waits for the pull's manifest and resolves it against the layout
    /// (its config is in by then). `None` when the pull ended without
    /// reporting one.
    pub(crate) fn image(&self) -> Option<Result<ResolvedImage, OciError>> {
        let manifest = self.arrivals.wait_for(|arrived| arrived.manifest.clone())?;
        Some(
            self.layout
                .resolve_manifest(&manifest.digest, &manifest.media_type, &manifest.bytes),
        )
    }

    /// The layers of `image`, each read from the layout once the pull
    /// reports its blob. The pull verified digest and size before it did
    /// (also of a blob it found present), so the unpacker does not hash
    /// the compressed bytes again; it still checks every diff_id.
    pub(crate) fn layers(&self, image: &ResolvedImage) -> Vec<LayerInput> {
        image
            .layers
            .iter()
            .map(|layer| LayerInput {
                blob: Box::new(ArrivingBlob {
                    layout: Arc::clone(&self.layout),
                    arrivals: Arc::clone(&self.arrivals),
                    digest: layer.digest.clone(),
                    file: None,
                }),
                digest: layer.digest.clone(),
                size: layer.size,
                diff_id: layer.diff_id.clone(),
                compression: Some(layer.compression),
                blob_verified: true,
            })
            .collect()
    }
}

/// What the pull has put in the layout so far, for the unpacker waiting
/// on it.
#[derive(Default)]
struct Arrivals {
    state: Mutex<Arrived>,
    changed: Condvar,
    /// Set when the pull failed, so that a layer being applied stops at
    /// its next read instead of at its end.
    failed: AtomicBool,
}

#[derive(Default)]
struct Arrived {
    manifest: Option<PulledManifest>,
    /// Blobs in the layout, verified.
    blobs: HashSet<Digest>,
    /// The pull is over, done or failed: nothing more arrives.
    ended: bool,
}

/// The manifest being pulled, as the pull reported it.
#[derive(Clone)]
struct PulledManifest {
    digest: Digest,
    media_type: String,
    bytes: Arc<[u8]>,
}

impl Arrivals {
    /// Runs `pull` with a progress callback that records arrivals here,
    /// then ends them, also when the pull unwinds, so the unpacker never
    /// waits for a pull that is gone.
    fn watch<T, E>(
        self: &Arc<Self>,
        pull: impl FnOnce(ProgressFn) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut end = EndOfPull {
            arrivals: self,
            pulled: false,
        };
        let arrivals = Arc::clone(self);
        let pulled = pull(Arc::new(move |event| arrivals.record(event)));
        end.pulled = pulled.is_ok();
        pulled
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

    /// Waits until `ready` finds what it wants, or the pull is over
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

/// Ends the arrivals when dropped: after the pull, or while it unwinds.
struct EndOfPull<'a> {
    arrivals: &'a Arrivals,
    pulled: bool,
}

impl Drop for EndOfPull<'_> {
    fn drop(&mut self) {
        if !self.pulled {
            self.arrivals.failed.store(true, Ordering::Relaxed);
        }
        self.arrivals.update(|arrived| arrived.ended = true);
    }
}

/// A layer blob the pull may still be downloading: the first read waits
/// until the pull reports it in the layout, verified, then streams it.
struct ArrivingBlob {
    layout: Arc<ImageLayout>,
    arrivals: Arc<Arrivals>,
    digest: Digest,
    file: Option<File>,
}

impl Read for ArrivingBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.arrivals.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("the pull failed"));
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
                        "the pull ended without blob {digest}"
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
