#![forbid(unsafe_code)]
//! Registry pull: copy one image from a registry (or another layout) into
//! an OCI image layout, in-process. This replaces upstream's `skopeo copy`.
//!
//! The flow follows skopeo's defaults: fetch the manifest by tag or
//! digest; when it is an index (OCI index or Docker manifest list), pick
//! the entry for the requested platform (the host's by default) and copy
//! only that image; a single manifest is copied whatever its platform.
//! Config and layers are downloaded concurrently (bounded), each verified
//! while it streams and renamed into place only when digest and size
//! match; the manifest is stored as the exact bytes served, after its
//! blobs; `index.json` gets the ref last, under the layout lock.
//!
//! [`PullEvent`]s report each blob as it lands, so a caller can start on
//! the layers before the pull ends (`prepare_oci_rootfs` applies layer 1
//! while later layers still download).
//!
//! Only this module is async (`oci-client` on `tokio`); [`pull`] bridges it
//! onto a current-thread runtime in one place, so callers stay synchronous.

pub mod auth;
pub mod client;
pub mod error;
pub mod reference;
pub mod transfer;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;

use super::document::RawDocument;

pub use auth::Credentials;
pub use client::Endpoint;
pub use error::RegistryError;
pub use reference::{ImageReference, PullSource};
pub use transfer::RetryPolicy;

use super::layout::MAX_INDEX_DEPTH;
use super::layout_write::{LayoutWriter, RefTarget};
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

/// A descriptor inside a served manifest or index.
/// Parses a served document and decides what it is, refusing ambiguous
/// ones (CVE-2021-41190) and ones whose type disagrees with the pointing
/// descriptor.
fn classify(
    bytes: &[u8],
    expected_type: Option<&str>,
) -> Result<(RawDocument, DocumentKind, String), String> {
    let doc: RawDocument = serde_json::from_slice(bytes).map_err(|e| format!("parse JSON: {e}"))?;
    if doc.schema_version != Some(2) {
        return Err(format!(
            "unsupported schemaVersion {:?} (only 2; Docker schema 1 is not supported)",
            doc.schema_version
        ));
    }
    if doc.manifests.is_some() && (doc.config.is_some() || doc.layers.is_some()) {
        return Err("ambiguous document: it has both manifests and layers or config".into());
    }
    let shape = if doc.manifests.is_some() {
        DocumentKind::Index
    } else if doc.config.is_some() {
        DocumentKind::Manifest
    } else {
        return Err("neither a manifest (config, layers) nor an index (manifests)".into());
    };
    let declared = doc.media_type.clone().filter(|t| !t.is_empty());
    let media_type = declared
        .clone()
        .or_else(|| expected_type.filter(|t| !t.is_empty()).map(str::to_owned))
        .unwrap_or_else(|| match shape {
            DocumentKind::Index => media::OCI_INDEX.to_owned(),
            DocumentKind::Manifest => media::OCI_MANIFEST.to_owned(),
        });
    if DocumentKind::from_media_type(&media_type) != Some(shape) {
        return Err(format!(
            "media type mismatch: {media_type} but the document is {}",
            shape.name()
        ));
    }
    if let (Some(declared), Some(expected)) = (&declared, expected_type.filter(|t| !t.is_empty())) {
        if declared != expected {
            return Err(format!(
                "media type mismatch: descriptor says {expected}, document says {declared}"
            ));
        }
    }
    Ok((doc, shape, media_type))
}

/// The blobs to copy, config first, then the layers in order, each once:
/// digest and size, from a manifest.
fn blob_list(
    doc: &RawDocument,
    bad: &dyn Fn(String) -> RegistryError,
) -> Result<Vec<(Digest, u64)>, RegistryError> {
    let mut seen = BTreeSet::new();
    let mut blobs = Vec::new();
    let config = doc.config.iter();
    for desc in config.chain(doc.layers.iter().flatten()) {
        let digest = Digest::parse(&desc.digest).map_err(|e| bad(e.to_string()))?;
        if seen.insert(digest.clone()) {
            blobs.push((digest, desc.size));
        }
    }
    Ok(blobs)
}

/// Picks the index entry for `platform`, as skopeo's default does.
fn choose(
    doc: &RawDocument,
    index: &Digest,
    platform: &Platform,
) -> Result<(Digest, u64, String), OciError> {
    let entries = doc.manifests.as_deref().unwrap_or_default();
    let mut available = Vec::new();
    for entry in entries {
        let Some(p) = &entry.platform else { continue };
        if DocumentKind::from_media_type(&entry.media_type).is_none()
            && !entry.media_type.is_empty()
        {
            continue;
        }
        let candidate = Platform::from_image(&p.os, &p.architecture, p.variant.as_deref());
        if platform.matches(&candidate) {
            let digest = Digest::parse(&entry.digest)?;
            return Ok((digest, entry.size, entry.media_type.clone()));
        }
        available.push(candidate.to_string());
    }
    Err(OciError::NoMatchingPlatform {
        wanted: platform.to_string(),
        index: index.clone(),
        available,
    })
}

async fn pull_registry(
    reference: &ImageReference,
    dest: &Path,
    ref_name: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let credentials = match &options.credentials {
        Some(c) => c.clone(),
        None => auth::lookup(reference)?,
    };
    let endpoint = Endpoint::for_reference(reference, options.insecure);
    let http = client::build(&endpoint)?;
    let session = Session::new(http, reference.clone(), &credentials, options.retry.clone());
    session.authenticate().await?;

    let (mut bytes, mut digest) = session
        .fetch_manifest(&reference.manifest_ref(), None)
        .await?;
    let mut expected_type: Option<String> = None;
    let mut index_digest = None;
    let mut depth = 0;
    let (doc, media_type) = loop {
        let bad = |reason| RegistryError::BadDocument {
            reference: reference.to_string(),
            what: format!("manifest {digest}"),
            reason,
        };
        let (doc, kind, media_type) = classify(&bytes, expected_type.as_deref()).map_err(bad)?;
        if kind == DocumentKind::Manifest {
            break (doc, media_type);
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            let err = OciError::IndexTooDeep {
                digest: digest.clone(),
                limit: MAX_INDEX_DEPTH,
            };
            return Err(RegistryError::layout(reference, err));
        }
        if index_digest.is_none() {
            index_digest = Some(digest.clone());
        }
        let (child, size, child_type) = choose(&doc, &digest, &options.platform)
            .map_err(|e| RegistryError::layout(reference, e))?;
        let (child_bytes, _) = session
            .fetch_manifest(child.as_str(), Some((&child, size)))
            .await?;
        bytes = child_bytes;
        digest = child;
        expected_type = Some(child_type);
    };
    let bad = |reason| RegistryError::BadDocument {
        reference: reference.to_string(),
        what: format!("manifest {digest}"),
        reason,
    };
    let blobs = blob_list(&doc, &bad)?;
    let config = blobs.first().map(|(config, _)| config.clone());
    let manifest_event = PullEvent::Manifest {
        digest: digest.clone(),
        media_type: media_type.clone(),
        bytes: bytes.as_slice().into(),
    };
    let layout = LayoutWriter::create(dest).map_err(|e| RegistryError::layout(reference, e))?;
    let progress = options.progress.clone();
    if let Some(p) = &progress {
        p(&PullEvent::Resolved {
            manifest: digest.clone(),
            blobs: blobs.len(),
        });
    }
    let session = &session;
    let layout_ref = &layout;
    let (config, manifest_event) = (&config, &manifest_event);
    let mut downloads = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(blob, size)| {
            let progress = progress.clone();
            async move {
                let on_bytes = |n: u64| {
                    if let Some(p) = &progress {
                        p(&PullEvent::Bytes {
                            digest: blob.clone(),
                            bytes: n,
                        });
                    }
                };
                let fetched = session
                    .fetch_blob(layout_ref, &blob, size, &on_bytes)
                    .await?;
                if let Some(p) = &progress {
                    p(&PullEvent::BlobDone {
                        digest: blob.clone(),
                        size,
                        fetched,
                    });
                    if config.as_ref() == Some(&blob) {
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
    drop(downloads);
    finish(&layout, reference, ref_name, &bytes, &digest, media_type).map(|mut report| {
        report.index_digest = index_digest;
        report.blobs = blobs.len();
        report.bytes_fetched = bytes_fetched;
        report
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_refuses_ambiguous_and_mismatched() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{d}","size":0}},"layers":[]}}"#,
            media::OCI_MANIFEST,
            media::OCI_CONFIG
        );
        let (_, kind, t) = classify(manifest.as_bytes(), None).unwrap();
        assert_eq!(
            (kind, t.as_str()),
            (DocumentKind::Manifest, media::OCI_MANIFEST)
        );
        assert!(classify(manifest.as_bytes(), Some(media::OCI_INDEX)).is_err());
        let both =
            format!(r#"{{"schemaVersion":2,"manifests":[],"config":{{"digest":"{d}","size":0}}}}"#);
        assert!(classify(both.as_bytes(), None)
            .unwrap_err()
            .contains("ambiguous"));
        assert!(classify(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        let docker_list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            media::DOCKER_MANIFEST_LIST
        );
        assert_eq!(
            classify(docker_list.as_bytes(), None).unwrap().1,
            DocumentKind::Index
        );
    }

    #[test]
    fn choose_picks_platform_and_lists_alternatives() {
        let a = "sha256:".to_owned() + &"a".repeat(64);
        let b = "sha256:".to_owned() + &"b".repeat(64);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{m}","digest":"{a}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{m}","digest":"{b}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            m = media::OCI_MANIFEST
        );
        let (doc, _, _) = classify(index.as_bytes(), None).unwrap();
        let idx = Digest::sha256_of(index.as_bytes());
        let amd = choose(&doc, &idx, &Platform::parse("linux/amd64").unwrap()).unwrap();
        assert_eq!(amd.0.as_str(), b);
        let arm = choose(&doc, &idx, &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert_eq!(arm.0.as_str(), a);
        let err = choose(&doc, &idx, &Platform::parse("linux/riscv64").unwrap()).unwrap_err();
        assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    }
}
