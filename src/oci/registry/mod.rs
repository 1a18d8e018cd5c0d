#![forbid(unsafe_code)]
//! Registry pull: copy one image from a registry (or another layout) into
//! an OCI image layout, in-process. This replaces upstream's `skopeo copy`.
//!
//! The flow follows skopeo's defaults: fetch the manifest by tag or
//! digest; when it is an index (OCI index or Docker manifest list), pick
//! the entry for the requested platform (the host's by default) and copy
//! only that image; a single manifest is copied whatever its platform.
//! The choice is the `oci::select` module's, the same walk the layout
//! reader runs, so a pull and an unpack of one index agree.
//! Config and layers are downloaded concurrently (bounded), each verified
//! while it streams and renamed into place only when digest and size
//! match; the manifest is stored as the exact bytes served, after its
//! blobs; `index.json` gets the ref last, under the layout lock.
//!
//! [`PullEvent`]s report each blob as it lands, so a caller can start on
//! the layers before the pull ends (`prepare_oci_rootfs` applies layer 1
//! while later layers still download).
//!
//! The write half, [`push`] (layout → registry) and [`copy`] (any
//! direction), lives in `push.rs`, `upload.rs` and `copy.rs`.
//!
//! Only this module is async (`reqwest` on `tokio`); [`pull`] bridges it
//! onto a current-thread runtime in one place, so callers stay synchronous.
//! The HTTP is reqwest's, not oci-client's, because a pull has to read
//! `Retry-After`, `Content-Range` and `Content-Length`, and bound every body
//! it reads before verifying it, and oci-client 0.18 exposes none of that.

pub mod auth;
pub mod auth_file;
mod blob;
pub mod client;
pub mod copy;
pub mod error;
mod pull_all;
pub mod push;
pub mod reference;
pub mod remote;
pub mod retry;
pub mod token;
pub mod transfer;
mod upload;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;

use super::document::RawDocument;

pub use auth::Credentials;
pub use client::Endpoint;
pub use copy::{copy_str, CopyReport};
pub use error::RegistryError;
pub use push::{push, push_str, BlobOutcome, PushEvent, PushOptions, PushProgressFn, PushReport};
pub use reference::{ImageReference, PullSource};
pub use retry::RetryPolicy;

use super::layout_write::{LayoutWriter, RefTarget};
use super::select::{Document, Step, Walk};
use super::{media, Digest, DocumentKind, ImageLayout, LayoutRef, OciError, Platform};
use transfer::Session;

/// What a pull reports as it goes: for a progress display, or for a
/// consumer that works on each blob as soon as it is in the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullEvent {
    /// The image is resolved; `blobs` blobs (config and layers) follow.
    Resolved {
        /// The manifest being copied.
        manifest: Digest,
        /// How many blobs it needs.
        blobs: usize,
    },
    /// A blob's transfer starts (or its copy is checked): `size` is its
    /// descriptor's, for a progress bar's length. Its `Bytes` and its
    /// `BlobDone` follow.
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob arrived.
    Bytes {
        /// The blob.
        digest: Digest,
        /// How many bytes in this chunk.
        bytes: u64,
    },
    /// A blob is in the layout, verified (`fetched` is 0 when it was
    /// already present).
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Bytes transferred for it.
        fetched: u64,
    },
    /// The manifest being copied, verified, once its config blob is in
    /// the layout (right after the config's `BlobDone`): enough to plan
    /// the work on the layers, whose blobs may still be downloading. The
    /// manifest itself is stored in the layout only at the end.
    Manifest {
        /// Its digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// The manifest exactly as served.
        bytes: Arc<[u8]>,
    },
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    /// The platform to choose from an index.
    pub platform: Platform,
    /// Plain HTTP for non-loopback registries too.
    pub insecure: bool,
    /// Credentials to use; `None` looks them up in the auth files.
    pub credentials: Option<Credentials>,
    /// Blobs downloaded at the same time.
    pub concurrency: usize,
    /// Retry and backoff for failed requests.
    pub retry: RetryPolicy,
    /// Called as the pull progresses.
    pub progress: Option<ProgressFn>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            insecure: false,
            credentials: None,
            concurrency: 3,
            retry: RetryPolicy::default(),
            progress: None,
        }
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    /// The ref name written to `index.json`.
    pub ref_name: String,
    /// The manifest copied (not the index above it).
    pub manifest_digest: Digest,
    /// Its media type.
    pub manifest_media_type: String,
    /// Its size.
    pub manifest_size: u64,
    /// The index the manifest was chosen from, if the source was one.
    pub index_digest: Option<Digest>,
    /// Config and layer blobs the image has.
    pub blobs: usize,
    /// Bytes downloaded or copied (blobs already present cost nothing).
    pub bytes_fetched: u64,
}

/// Pulls `source` (`docker://…`, a bare reference or `oci:DIR[:REF]`)
/// into the layout `dest` (`oci:DIR[:REF]` or `DIR[:REF]`). The ref name
/// defaults to the source's tag, else `latest`.
pub fn pull_str(
    source: &str,
    dest: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let source = PullSource::parse(source)?;
    let dest = LayoutRef::parse(dest)?;
    let ref_name = dest
        .reference
        .clone()
        .unwrap_or_else(|| source.default_ref_name());
    pull(&source, &dest.dir, &ref_name, options)
}

/// Pulls `source` into the layout at `dest` (created if needed) under
/// `ref_name`. Must not be called from inside an async runtime.
pub fn pull(
    source: &PullSource,
    dest: &Path,
    ref_name: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    if !super::reference::is_ref_component(ref_name) {
        return Err(RegistryError::InvalidReference {
            value: ref_name.to_owned(),
            reason: "not a valid layout ref name".to_owned(),
        });
    }
    match source {
        PullSource::Layout(layout) => copy_from_layout(layout, dest, ref_name, options),
        PullSource::Registry(reference) => {
            block_on(pull_registry(reference, dest, ref_name, options))?
        }
    }
}

/// The one bridge from synchronous callers into the async client.
fn block_on<F: Future>(future: F) -> Result<F::Output, RegistryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RegistryError::Setup(format!("start the async runtime: {e}")))?;
    Ok(runtime.block_on(future))
}

/// The blobs to copy, config first, then the layers in order, each once:
/// digest and size, from a manifest.
fn blob_list(doc: &RawDocument) -> Result<Vec<(Digest, u64)>, OciError> {
    let mut seen = BTreeSet::new();
    let mut blobs = Vec::new();
    let config = doc.config.iter();
    for desc in config.chain(doc.layers.iter().flatten()) {
        let digest = Digest::parse(&desc.digest)?;
        if seen.insert(digest.clone()) {
            blobs.push((digest, desc.size));
        }
    }
    Ok(blobs)
}

/// The manifest a registry pull copies, chosen and verified.
struct Chosen {
    /// The manifest, exactly as served.
    manifest: Document,
    /// The index it was chosen from, if the reference named one.
    index_digest: Option<Digest>,
    /// Its config, verified, when choosing had to read it (an index entry
    /// without `platform`): stored as it is instead of fetched again.
    config: Option<(Digest, Vec<u8>)>,
}

/// Pulls from a registry: resolve the reference to one manifest, download
/// its blobs into the layout, then store the manifest and set the ref.
async fn pull_registry(
    reference: &ImageReference,
    dest: &Path,
    ref_name: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let session = connect(reference, options).await?;
    let chosen = resolve(&session, &options.platform).await?;
    let wrap = |e| RegistryError::layout(reference, e);
    let blobs = blob_list(&chosen.manifest.body).map_err(wrap)?;
    let layout = LayoutWriter::create(dest).map_err(wrap)?;
    let bytes_fetched = download(&session, &layout, &chosen, &blobs, options).await?;
    let manifest = chosen.manifest;
    let mut report = finish(
        &layout,
        reference,
        ref_name,
        &manifest.bytes,
        &manifest.digest,
        manifest.media_type,
    )?;
    report.index_digest = chosen.index_digest;
    report.blobs = blobs.len();
    report.bytes_fetched = bytes_fetched;
    Ok(report)
}

/// Builds the client and runs the token exchange, so that bad
/// credentials fail before anything is fetched.
async fn connect(
    reference: &ImageReference,
    options: &PullOptions,
) -> Result<Session, RegistryError> {
    let credentials = match &options.credentials {
        Some(c) => c.clone(),
        None => auth::lookup(reference)?,
    };
    let endpoint = Endpoint::for_reference(reference, options.insecure);
    let http = client::build(&endpoint)?;
    let retry = options.retry.clone();
    let session = Session::new(http, &endpoint, reference.clone(), &credentials, retry);
    session.authenticate().await?;
    Ok(session)
}

/// Fetches what the reference names and runs the shared [`Walk`] over
/// the registry's manifests and configs, each verified as it arrives.
async fn resolve(session: &Session, platform: &Platform) -> Result<Chosen, RegistryError> {
    let wrap = |e| RegistryError::layout(&session.reference, e);
    let named = session.reference.manifest_ref();
    let (bytes, digest) = session.fetch_manifest(&named, None).await?;
    let top = Document::parse(digest, None, bytes, "reference").map_err(wrap)?;
    let index_digest = (top.kind == DocumentKind::Index).then(|| top.digest.clone());
    let mut config = None;
    let mut walk = Walk::new(platform);
    let mut step = walk.start(top).map_err(wrap)?;
    loop {
        step = match step {
            Step::Chosen(manifest) => {
                let config = config.filter(|(digest, _): &(Digest, Vec<u8>)| {
                    manifest.body.config.as_ref().map(|c| c.digest.as_str())
                        == Some(digest.as_str())
                });
                return Ok(Chosen {
                    manifest: *manifest,
                    index_digest,
                    config,
                });
            }
            Step::Document(target) => {
                let expected = Some((&target.digest, target.size));
                let (bytes, digest) = session
                    .fetch_manifest(target.digest.as_str(), expected)
                    .await?;
                let doc = Document::parse(digest, Some(&target.media_type), bytes, "index entry");
                walk.document(doc.map_err(wrap)?).map_err(wrap)?
            }
            Step::Config(target) => {
                let bytes = session.fetch_config(&target.digest, target.size).await?;
                let next = walk.config(&target, &bytes).map_err(wrap)?;
                config = Some((target.digest, bytes));
                next
            }
        };
    }
}

/// Downloads the config and layers into the layout, at most
/// `options.concurrency` at a time, reporting each one as it lands.
/// Returns the bytes transferred.
async fn download(
    session: &Session,
    layout: &LayoutWriter,
    chosen: &Chosen,
    blobs: &[(Digest, u64)],
    options: &PullOptions,
) -> Result<u64, RegistryError> {
    let progress = options.progress.clone();
    let manifest = &chosen.manifest;
    tracing::info!(
        reference = %session.reference,
        manifest = %manifest.digest,
        blobs = blobs.len(),
        "pull resolved"
    );
    if let Some(p) = &progress {
        p(&PullEvent::Resolved {
            manifest: manifest.digest.clone(),
            blobs: blobs.len(),
        });
    }
    let config = blobs.first().map(|(config, _)| config);
    let manifest_event = PullEvent::Manifest {
        digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        bytes: manifest.bytes.as_slice().into(),
    };
    let manifest_event = &manifest_event;
    let mut downloads = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(blob, size)| {
            let progress = progress.clone();
            async move {
                if let Some(p) = &progress {
                    p(&PullEvent::BlobStarted {
                        digest: blob.clone(),
                        size,
                    });
                }
                let on_bytes = |n: u64| {
                    if let Some(p) = &progress {
                        p(&PullEvent::Bytes {
                            digest: blob.clone(),
                            bytes: n,
                        });
                    }
                };
                let fetched = if config == Some(&blob) {
                    fetch_config(session, layout, chosen, &blob, size).await?
                } else {
                    session.fetch_blob(layout, &blob, size, &on_bytes).await?
                };
                tracing::info!(digest = %blob, size, fetched, "blob done");
                if let Some(p) = &progress {
                    p(&PullEvent::BlobDone {
                        digest: blob.clone(),
                        size,
                        fetched,
                    });
                    if config == Some(&blob) {
                        p(manifest_event);
                    }
                }
                Ok::<u64, RegistryError>(fetched)
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut bytes_fetched = 0;
    while let Some(result) = downloads.next().await {
        bytes_fetched += result?;
    }
    Ok(bytes_fetched)
}

/// Fetches the config (or takes the copy read while choosing the
/// manifest), checks it, and stores it. Returns the bytes fetched.
async fn fetch_config(
    session: &Session,
    layout: &LayoutWriter,
    chosen: &Chosen,
    digest: &Digest,
    size: u64,
) -> Result<u64, RegistryError> {
    let wrap = |e| RegistryError::layout(&session.reference, e);
    let bytes = match &chosen.config {
        Some((d, bytes)) if d == digest => bytes.clone(),
        _ => session.fetch_config(digest, size).await?,
    };
    let body = &chosen.manifest.body;
    let media_type = body.config.as_ref().map_or("", |c| c.media_type.as_str());
    let layers = body.layers.as_ref().map_or(0, Vec::len);
    check_config(digest, media_type, &bytes, layers).map_err(wrap)?;
    store_fetched(layout, digest, &bytes).map_err(wrap)
}

/// The part of an image config a pull checks.
#[derive(serde::Deserialize)]
struct ConfigShape {
    rootfs: RootfsShape,
}

#[derive(serde::Deserialize)]
struct RootfsShape {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Refuses a config that `unpack` would refuse, before the pull writes a
/// ref to it: not JSON, or (for an image config) not one `diff_id` per
/// layer. Configs of other media types (artifacts) need only be JSON.
fn check_config(
    digest: &Digest,
    media_type: &str,
    bytes: &[u8],
    layers: usize,
) -> Result<(), OciError> {
    let json_err = |source| OciError::Json {
        what: "config",
        name: digest.to_string(),
        source,
    };
    if ![media::OCI_CONFIG, media::DOCKER_CONFIG, ""].contains(&media_type) {
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(json_err)?;
        return Ok(());
    }
    let config: ConfigShape = serde_json::from_slice(bytes).map_err(json_err)?;
    if config.rootfs.diff_ids.len() != layers {
        return Err(OciError::DiffIdCount {
            config: digest.clone(),
            layers,
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    Ok(())
}

/// Stores a blob fetched while choosing the manifest; returns the bytes
/// that counts as fetched (none when an intact copy was there already).
fn store_fetched(layout: &LayoutWriter, digest: &Digest, bytes: &[u8]) -> Result<u64, OciError> {
    if layout.has_verified_blob(digest, bytes.len() as u64)? {
        return Ok(0);
    }
    layout.put_blob(digest, bytes)?;
    Ok(bytes.len() as u64)
}

/// Stores the manifest after its blobs, then points the ref at it.
fn finish(
    layout: &LayoutWriter,
    source: &impl ToString,
    ref_name: &str,
    manifest: &[u8],
    digest: &Digest,
    media_type: String,
) -> Result<PullReport, RegistryError> {
    let wrap = |e| RegistryError::layout(source, e);
    layout.put_blob(digest, manifest).map_err(wrap)?;
    let target = RefTarget {
        media_type: media_type.clone(),
        digest: digest.clone(),
        size: manifest.len() as u64,
    };
    layout.set_ref(ref_name, &target).map_err(wrap)?;
    Ok(PullReport {
        ref_name: ref_name.to_owned(),
        manifest_digest: digest.clone(),
        manifest_media_type: media_type,
        manifest_size: manifest.len() as u64,
        index_digest: None,
        blobs: 0,
        bytes_fetched: 0,
    })
}

/// `oci:SRC[:REF]` → layout: resolves the image with the layout reader
/// (ref and platform choice as for unpack) and copies its blobs, each
/// verified on the way.
fn copy_from_layout(
    source: &LayoutRef,
    dest: &Path,
    ref_name: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let name = PullSource::Layout(source.clone());
    let wrap = |e| RegistryError::layout(&name, e);
    let from = ImageLayout::open(&source.dir).map_err(wrap)?;
    let image = from
        .resolve(source.reference.as_deref(), &options.platform)
        .map_err(wrap)?;
    let layout = LayoutWriter::create(dest).map_err(wrap)?;
    let mut bytes_fetched = 0;
    let blobs = 1 + image.layers.len();
    if let Some(p) = &options.progress {
        p(&PullEvent::Resolved {
            manifest: image.manifest_digest.clone(),
            blobs,
        });
    }
    let config_size = image.config_bytes.len() as u64;
    let config_present = layout
        .has_verified_blob(&image.config_digest, config_size)
        .map_err(wrap)?;
    if !config_present {
        layout
            .put_blob(&image.config_digest, &image.config_bytes)
            .map_err(wrap)?;
        bytes_fetched += config_size;
    }
    if let Some(p) = &options.progress {
        p(&PullEvent::BlobDone {
            digest: image.config_digest.clone(),
            size: config_size,
            fetched: if config_present { 0 } else { config_size },
        });
        p(&PullEvent::Manifest {
            digest: image.manifest_digest.clone(),
            media_type: image.manifest_media_type.clone(),
            bytes: image.manifest_bytes.as_slice().into(),
        });
    }
    for layer in &image.layers {
        if let Some(p) = &options.progress {
            p(&PullEvent::BlobStarted {
                digest: layer.digest.clone(),
                size: layer.size,
            });
        }
        let present = layout
            .has_verified_blob(&layer.digest, layer.size)
            .map_err(wrap)?;
        if !present {
            let blob = from.open_blob(&layer.digest).map_err(wrap)?;
            layout
                .copy_blob(&layer.digest, layer.size, std::io::BufReader::new(blob))
                .map_err(wrap)?;
            bytes_fetched += layer.size;
        }
        if let Some(p) = &options.progress {
            p(&PullEvent::BlobDone {
                digest: layer.digest.clone(),
                size: layer.size,
                fetched: if present { 0 } else { layer.size },
            });
        }
    }
    let mut report = finish(
        &layout,
        &name,
        ref_name,
        &image.manifest_bytes,
        &image.manifest_digest,
        image.manifest_media_type.clone(),
    )?;
    report.blobs = blobs;
    report.bytes_fetched = bytes_fetched;
    Ok(report)
}
