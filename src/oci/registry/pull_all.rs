#![forbid(unsafe_code)]
//! Copying a whole index from a registry into a layout: what `copy --all`
//! does when its source is a registry (skopeo's `copy --all`).
//!
//! The tree under the reference is fetched first, every manifest and
//! index verified against the descriptor that names it and shape-checked
//! ([`Document::parse`]), at most [`MAX_INDEX_DEPTH`] levels deep. Then
//! every blob of every manifest downloads, several at a time, through the
//! pull's verified [`Session::fetch_blob`]; then the documents are stored
//! (children first) and last the ref is pointed at the top one, so the
//! layout never names a document whose blobs are missing. Configs are
//! copied as blobs, unchecked: an index may hold artifacts, and `unpack`
//! checks the image it picks.

use std::collections::BTreeSet;
use std::path::Path;

use futures_util::StreamExt;

use super::error::RegistryError;
use super::reference::ImageReference;
use super::transfer::Session;
use super::{blob_list, connect, PullOptions, PullReport};
use crate::oci::layout_write::{LayoutWriter, RefTarget};
use crate::oci::select::{self, Document, Target, MAX_INDEX_DEPTH};
use crate::oci::{Digest, DocumentKind};

/// Pulls everything `reference` names into the layout at `dest` under
/// `ref_name`.
pub(crate) async fn pull_all(
    reference: &ImageReference,
    dest: &Path,
    ref_name: &str,
    options: &PullOptions,
) -> Result<PullReport, RegistryError> {
    let session = connect(reference, options).await?;
    let wrap = |e| RegistryError::layout(reference, e);
    let named = reference.manifest_ref();
    let (bytes, digest) = session.fetch_manifest(&named, None).await?;
    let top = Document::parse(digest, None, bytes, "reference").map_err(wrap)?;
    let mut tree = Tree::default();
    tree.collect(&session, top, 0).await?;
    let layout = LayoutWriter::create(dest).map_err(wrap)?;
    let bytes_fetched = download(&session, &layout, &tree.blobs, options).await?;
    for doc in &tree.documents {
        layout.put_blob(&doc.digest, &doc.bytes).map_err(wrap)?;
    }
    let top = tree.documents.last().expect("the top document");
    let target = RefTarget {
        media_type: top.media_type.clone(),
        digest: top.digest.clone(),
        size: top.bytes.len() as u64,
    };
    layout.set_ref(ref_name, &target).map_err(wrap)?;
    let index_digest = (top.kind == DocumentKind::Index).then(|| top.digest.clone());
    Ok(PullReport {
        ref_name: ref_name.to_owned(),
        manifest_digest: top.digest.clone(),
        manifest_media_type: top.media_type.clone(),
        manifest_size: top.bytes.len() as u64,
        index_digest,
        blobs: tree.blobs.len(),
        bytes_fetched,
    })
}

/// The documents under a reference, children first, and their blobs.
#[derive(Default)]
struct Tree {
    documents: Vec<Document>,
    blobs: Vec<(Digest, u64)>,
    seen: BTreeSet<Digest>,
}

impl Tree {
    /// Adds `doc` after everything under it; boxed for the recursion.
    fn collect<'a>(
        &'a mut self,
        session: &'a Session,
        doc: Document,
        depth: usize,
    ) -> futures_util::future::BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async move {
            let wrap = |e| RegistryError::layout(&session.reference, e);
            if !self.seen.insert(doc.digest.clone()) {
                return Ok(());
            }
            if doc.kind == DocumentKind::Manifest {
                for blob in blob_list(&doc.body).map_err(wrap)? {
                    if !self.blobs.contains(&blob) {
                        self.blobs.push(blob);
                    }
                }
            } else if depth >= MAX_INDEX_DEPTH {
                return Err(wrap(crate::oci::OciError::IndexTooDeep {
                    digest: doc.digest.clone(),
                    limit: MAX_INDEX_DEPTH,
                }));
            }
            for entry in doc.body.manifests.iter().flatten() {
                let target = Target::of(entry).map_err(wrap)?;
                select::document_kind(&target.digest, &target.media_type, "index entry")
                    .map_err(wrap)?;
                let expected = Some((&target.digest, target.size));
                let (bytes, digest) = session
                    .fetch_manifest(target.digest.as_str(), expected)
                    .await?;
                let child = Document::parse(digest, Some(&target.media_type), bytes, "index entry")
                    .map_err(wrap)?;
                self.collect(session, child, depth + 1).await?;
            }
            self.documents.push(doc);
            Ok(())
        })
    }
}

/// Downloads the blobs, `options.concurrency` at a time; returns the
/// bytes transferred.
async fn download(
    session: &Session,
    layout: &LayoutWriter,
    blobs: &[(Digest, u64)],
    options: &PullOptions,
) -> Result<u64, RegistryError> {
    let mut downloads =
        futures_util::stream::iter(blobs.iter().cloned())
            .map(|(digest, size)| async move {
                session.fetch_blob(layout, &digest, size, &|_| {}).await
            })
            .buffer_unordered(options.concurrency.max(1));
    let mut fetched = 0;
    while let Some(result) = downloads.next().await {
        fetched += result?;
    }
    Ok(fetched)
}
