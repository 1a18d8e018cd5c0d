#![forbid(unsafe_code)]
//! Registry push: copy one image (or, with `all`, a whole index) from an
//! OCI layout to a registry, in-process; the write half of `skopeo copy`.
//!
//! The order keeps the registry consistent at every moment: first every
//! blob (configs and layers, several at a time), then each manifest a
//! pushed index names (by digest, children before parents), and last the
//! document the reference names, at its tag. A manifest is sent byte for
//! byte as the layout stores it, with its media type as `Content-Type`,
//! so its digest on the registry is the layout's.
//!
//! For each blob: a `HEAD` on the target repository, and a blob it has is
//! skipped; one that [`PushOptions::mount_from`] says lives in another
//! repository of the same registry is mounted from there (a refusal opens
//! an upload, which is used); anything else is uploaded from its file
//! ([`upload`](super::upload)). Without `all`, an index is resolved to
//! [`PushOptions::platform`] by the same walk a pull and an unpack use.
//!
//! Errors start with `push TARGET to REGISTRY` and name the blob or
//! manifest with the registry's error code and message.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;

use super::auth::{self, Credentials};
use super::client::{self, Endpoint};
use super::error::RegistryError;
use super::reference::{ImageReference, PullSource};
use super::retry::RetryPolicy;
use super::transfer::Session;
use super::upload::{ByteCounter, LocalBlob, Started};
use super::{blob_list, block_on};
use crate::oci::select::{self, Document, Target};
use crate::oci::{Digest, DocumentKind, ImageLayout, LayoutRef, OciError, Platform};

/// Blobs up to this size go in one `PUT`; larger ones in `PATCH` chunks
/// of this size, each one a point an interrupted upload resumes from.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;

/// What became of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobOutcome {
    /// The target repository had it (`HEAD`); nothing was sent.
    Present,
    /// The registry linked it from another repository.
    Mounted {
        /// The repository it came from.
        from: String,
    },
    /// It was uploaded.
    Uploaded {
        /// Bytes the registry acknowledged (more than the size when an
        /// upload had to start over).
        bytes: u64,
    },
}

/// What a push reports as it goes, for a progress display.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushEvent {
    /// The work is known: `blobs` blobs of `bytes` bytes in all, then
    /// `manifests` manifests and indexes.
    Planned {
        /// The document the reference will name.
        top: Digest,
        /// Distinct blobs.
        blobs: usize,
        /// Their total size.
        bytes: u64,
        /// Manifests and indexes, the top one included.
        manifests: usize,
    },
    /// A blob's upload starts (it is not on the registry, and was not
    /// mounted).
    BlobStarted {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob went out (a retried upload counts them again).
    Bytes {
        /// The blob.
        digest: Digest,
        /// How many in this chunk.
        bytes: u64,
    },
    /// A blob is on the registry.
    BlobDone {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Skipped, mounted or uploaded.
        outcome: BlobOutcome,
    },
    /// A manifest or index is stored.
    ManifestDone {
        /// Its digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// The tag or digest it was stored under.
        reference: String,
    },
}

/// A push progress callback.
pub type PushProgressFn = Arc<dyn Fn(&PushEvent) + Send + Sync>;

/// How to push (and, for [`copy`](super::copy), how to copy).
#[derive(Clone)]
pub struct PushOptions {
    /// The platform to choose from an index (without `all`).
    pub platform: Platform,
    /// Push an index whole, with every manifest it names.
    pub all: bool,
    /// Plain HTTP for non-loopback registries too.
    pub insecure: bool,
    /// Credentials for the target; `None` looks them up (in `auth_file`
    /// when given, else the standard auth files).
    pub credentials: Option<Credentials>,
    /// The auth file to read instead of the standard ones.
    pub auth_file: Option<PathBuf>,
    /// Blobs uploaded at the same time.
    pub concurrency: usize,
    /// Monolithic upload limit and chunk size, in bytes.
    pub chunk_size: u64,
    /// Retry and backoff for failed requests.
    pub retry: RetryPolicy,
    /// Repositories of the target registry that hold the image's blobs:
    /// a blob the target lacks is mounted from the first one.
    pub mount_from: Vec<String>,
    /// Called as the push progresses.
    pub progress: Option<PushProgressFn>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            platform: Platform::host(),
            all: false,
            insecure: false,
            credentials: None,
            auth_file: None,
            concurrency: 3,
            chunk_size: DEFAULT_CHUNK_SIZE,
            retry: RetryPolicy::default(),
            mount_from: Vec::new(),
            progress: None,
        }
    }
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("platform", &self.platform)
            .field("all", &self.all)
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .field("auth_file", &self.auth_file)
            .field("concurrency", &self.concurrency)
            .field("chunk_size", &self.chunk_size)
            .field("mount_from", &self.mount_from)
            .finish_non_exhaustive()
    }
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The target, `docker://HOST/REPO:TAG`.
    pub reference: String,
    /// The document stored at the tag (an index with `all`).
    pub digest: Option<Digest>,
    /// Manifests and indexes stored.
    pub manifests: usize,
    /// Distinct blobs the image has.
    pub blobs: usize,
    /// Blobs the target already had.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Bytes the registry acknowledged.
    pub bytes_uploaded: u64,
}

/// Pushes `source` (`oci:DIR[:REF]` or `DIR[:REF]`) to `target`
/// (`docker://HOST/REPO[:TAG]` or a bare reference).
pub fn push_str(
    source: &str,
    target: &str,
    options: &PushOptions,
) -> Result<PushReport, RegistryError> {
    let source = LayoutRef::parse(source)?;
    let target = match PullSource::parse(target)? {
        PullSource::Registry(reference) => reference,
        PullSource::Layout(_) => {
            return Err(RegistryError::InvalidReference {
                value: target.to_owned(),
                reason: "a push goes to a registry (docker://…); use copy for a layout".into(),
            })
        }
    };
    push(&source, &target, options)
}

/// Pushes the image `source` names to `target`. Must not be called from
/// inside an async runtime.
pub fn push(
    source: &LayoutRef,
    target: &ImageReference,
    options: &PushOptions,
) -> Result<PushReport, RegistryError> {
    let name = PullSource::Layout(source.clone()).to_string();
    let wrap = |e| RegistryError::PushSource {
        reference: name.clone(),
        source: e,
    };
    let layout = ImageLayout::open(&source.dir).map_err(wrap)?;
    let plan = Plan::of(&layout, source.reference.as_deref(), options).map_err(wrap)?;
    let tag = target_tag(target, &plan.top().digest)?;
    block_on(push_plan(&layout, &plan, target, &tag, options))?.map_err(RegistryError::into_push)
}

/// The tag (or digest) the top document is stored under; a target
/// pinned to another digest is refused before anything is sent.
fn target_tag(target: &ImageReference, top: &Digest) -> Result<String, RegistryError> {
    match (&target.tag, &target.digest) {
        (_, Some(pinned)) if pinned != top => Err(RegistryError::InvalidReference {
            value: target.to_string(),
            reason: format!("the image to push is {top}, not {pinned}"),
        }),
        (Some(tag), _) => Ok(tag.clone()),
        _ => Ok(top.to_string()),
    }
}

/// One manifest or index to store.
struct PlannedDoc {
    digest: Digest,
    media_type: String,
    bytes: Arc<[u8]>,
}

/// Everything a push sends, in order.
struct Plan {
    /// Distinct blobs, config first per manifest.
    blobs: Vec<(Digest, u64)>,
    /// Manifests and indexes, children before the indexes naming them;
    /// the last one is what the tag names.
    documents: Vec<PlannedDoc>,
}

impl Plan {
    /// What to push for `reference` in `layout`: one manifest chosen for
    /// the platform, or with `all` the whole tree under the entry.
    fn of(
        layout: &ImageLayout,
        reference: Option<&str>,
        options: &PushOptions,
    ) -> Result<Plan, OciError> {
        let mut plan = Plan {
            blobs: Vec::new(),
            documents: Vec::new(),
        };
        if options.all {
            let top = layout.top(reference)?;
            let mut seen = BTreeSet::new();
            plan.collect(layout, top, 0, &mut seen)?;
        } else {
            let image = layout.resolve(reference, &options.platform)?;
            plan.blobs
                .push((image.config_digest.clone(), image.config_bytes.len() as u64));
            plan.add_blobs(image.layers.iter().map(|l| (l.digest.clone(), l.size)));
            plan.documents.push(PlannedDoc {
                digest: image.manifest_digest,
                media_type: image.manifest_media_type,
                bytes: image.manifest_bytes.into(),
            });
        }
        Ok(plan)
    }

    /// Adds `doc` and, for an index, everything under it first.
    fn collect(
        &mut self,
        layout: &ImageLayout,
        doc: Document,
        depth: usize,
        seen: &mut BTreeSet<Digest>,
    ) -> Result<(), OciError> {
        if !seen.insert(doc.digest.clone()) {
            return Ok(());
        }
        match doc.kind {
            DocumentKind::Manifest => {
                let blobs = blob_list(&doc.body)?;
                for (digest, size) in &blobs {
                    layout.check_blob_size(digest, *size)?;
                }
                self.add_blobs(blobs);
            }
            DocumentKind::Index => {
                if depth >= select::MAX_INDEX_DEPTH {
                    return Err(OciError::IndexTooDeep {
                        digest: doc.digest.clone(),
                        limit: select::MAX_INDEX_DEPTH,
                    });
                }
                for entry in doc.body.manifests.iter().flatten() {
                    let child = layout.load_document(&Target::of(entry)?, "index entry")?;
                    self.collect(layout, child, depth + 1, seen)?;
                }
            }
        }
        self.documents.push(PlannedDoc {
            digest: doc.digest,
            media_type: doc.media_type,
            bytes: doc.bytes.into(),
        });
        Ok(())
    }

    /// Appends blobs not listed yet.
    fn add_blobs(&mut self, blobs: impl IntoIterator<Item = (Digest, u64)>) {
        for blob in blobs {
            if !self.blobs.iter().any(|(d, _)| *d == blob.0) {
                self.blobs.push(blob);
            }
        }
    }

    /// The document the tag names.
    fn top(&self) -> &PlannedDoc {
        self.documents.last().expect("a plan has a document")
    }
}

/// Connects, sends the blobs, then the documents.
async fn push_plan(
    layout: &ImageLayout,
    plan: &Plan,
    target: &ImageReference,
    tag: &str,
    options: &PushOptions,
) -> Result<PushReport, RegistryError> {
    let session = connect(target, options).await?;
    let top = plan.top();
    emit(
        options,
        PushEvent::Planned {
            top: top.digest.clone(),
            blobs: plan.blobs.len(),
            bytes: plan.blobs.iter().map(|(_, size)| size).sum(),
            manifests: plan.documents.len(),
        },
    );
    let mut report = send_blobs(&session, layout, &plan.blobs, options).await?;
    for (i, doc) in plan.documents.iter().enumerate() {
        let last = i + 1 == plan.documents.len();
        let reference = if last { tag } else { doc.digest.as_str() };
        session
            .put_manifest(reference, &doc.digest, &doc.media_type, &doc.bytes)
            .await?;
        emit(
            options,
            PushEvent::ManifestDone {
                digest: doc.digest.clone(),
                media_type: doc.media_type.clone(),
                reference: reference.to_owned(),
            },
        );
    }
    report.reference = target.to_string();
    report.digest = Some(top.digest.clone());
    report.manifests = plan.documents.len();
    report.blobs = plan.blobs.len();
    Ok(report)
}

/// Builds the client with push scopes and runs the token exchange, so
/// that bad credentials fail before anything is sent.
async fn connect(target: &ImageReference, options: &PushOptions) -> Result<Session, RegistryError> {
    let credentials = match (&options.credentials, &options.auth_file) {
        (Some(c), _) => c.clone(),
        (None, Some(file)) => auth::lookup_in(std::slice::from_ref(file), target)?,
        (None, None) => auth::lookup(target)?,
    };
    let endpoint = Endpoint::for_reference(target, options.insecure);
    let http = client::build(&endpoint)?;
    let retry = options.retry.clone();
    let mut session = Session::new(http, &endpoint, target.clone(), &credentials, retry);
    session.scopes = vec![format!("repository:{}:pull,push", target.repository)];
    for from in options
        .mount_from
        .iter()
        .filter(|r| **r != target.repository)
    {
        session.scopes.push(format!("repository:{from}:pull"));
    }
    session.authenticate().await?;
    Ok(session)
}

/// Sends every blob, `options.concurrency` at a time, and counts what
/// happened to them.
async fn send_blobs(
    session: &Session,
    layout: &ImageLayout,
    blobs: &[(Digest, u64)],
    options: &PushOptions,
) -> Result<PushReport, RegistryError> {
    let mount = options
        .mount_from
        .iter()
        .find(|r| **r != session.reference.repository);
    let mut sends = futures_util::stream::iter(blobs.iter().cloned())
        .map(|(digest, size)| async move {
            let outcome = send_blob(session, layout, &digest, size, mount, options).await?;
            emit(
                options,
                PushEvent::BlobDone {
                    digest,
                    size,
                    outcome: outcome.clone(),
                },
            );
            Ok::<BlobOutcome, RegistryError>(outcome)
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut report = PushReport::default();
    while let Some(outcome) = sends.next().await {
        match outcome? {
            BlobOutcome::Present => report.present += 1,
            BlobOutcome::Mounted { .. } => report.mounted += 1,
            BlobOutcome::Uploaded { bytes } => {
                report.uploaded += 1;
                report.bytes_uploaded += bytes;
            }
        }
    }
    Ok(report)
}

/// One blob: skipped when present, else mounted from `mount` when the
/// registry agrees, else uploaded.
async fn send_blob(
    session: &Session,
    layout: &ImageLayout,
    digest: &Digest,
    size: u64,
    mount: Option<&String>,
    options: &PushOptions,
) -> Result<BlobOutcome, RegistryError> {
    if session.has_blob(digest).await? {
        return Ok(BlobOutcome::Present);
    }
    let wrap = |e| RegistryError::layout(&session.reference, e);
    let file = layout.open_blob(digest).map_err(wrap)?;
    let mut upload = None;
    if let Some(from) = mount {
        match session.start_upload(digest, Some(from)).await? {
            Started::Mounted => return Ok(BlobOutcome::Mounted { from: from.clone() }),
            Started::Upload(refused) => upload = Some(refused),
        }
    }
    let blob = LocalBlob {
        file: Arc::new(file),
        digest: digest.clone(),
        size,
    };
    emit(
        options,
        PushEvent::BlobStarted {
            digest: digest.clone(),
            size,
        },
    );
    let progress = options.progress.clone();
    let named = digest.clone();
    let counter: ByteCounter = Arc::new(move |bytes| {
        if let Some(p) = &progress {
            p(&PushEvent::Bytes {
                digest: named.clone(),
                bytes,
            });
        }
    });
    let bytes = session
        .upload_blob(&blob, upload, options.chunk_size, &counter)
        .await?;
    Ok(BlobOutcome::Uploaded { bytes })
}

/// Reports `event` when a callback is set.
fn emit(options: &PushOptions, event: PushEvent) {
    if let Some(p) = &options.progress {
        p(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_document_goes_to_the_tag_or_its_pinned_digest() {
        let top = Digest::sha256_of(b"manifest");
        let tagged = ImageReference::parse("127.0.0.1:5000/a:v1").unwrap();
        assert_eq!(target_tag(&tagged, &top).unwrap(), "v1");
        let pinned = ImageReference::parse(&format!("127.0.0.1:5000/a@{top}")).unwrap();
        assert_eq!(target_tag(&pinned, &top).unwrap(), top.to_string());
        let other = Digest::sha256_of(b"other");
        let wrong = ImageReference::parse(&format!("127.0.0.1:5000/a@{other}")).unwrap();
        let err = target_tag(&wrong, &top).unwrap_err().to_string();
        assert!(
            err.contains(&format!("the image to push is {top}")),
            "{err}"
        );
    }
}
