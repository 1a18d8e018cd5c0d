#![forbid(unsafe_code)]
//! Choosing one image manifest from what a reference names: the rules the
//! layout reader and the registry pull share, so that `metalor unpack` of
//! a layout and `metalor pull` of the same index always pick the same
//! manifest.
//!
//! The rules:
//! - every index or manifest passes the CVE-2021-41190 shape check
//!   ([`Document::parse`]) before anything in it is used;
//! - a manifest named directly (by a tag, or by an `index.json` entry) is
//!   taken whatever its platform, as skopeo does;
//! - in an index, entries are tried in order and nested indexes are peeled
//!   depth first, at most [`MAX_INDEX_DEPTH`] levels; entries of unknown
//!   media type (signatures, attestations) are skipped, as the image spec
//!   asks;
//! - an entry's declared `platform` decides; an entry without one is
//!   decided by its config's `os`/`architecture`/`variant`, and one whose
//!   config is not an image config (an artifact) is skipped.
//!
//! The walk does no I/O: [`Walk`] says which document or config it needs
//! next ([`Step`]) and the caller fetches and verifies it (from layout
//! blobs, synchronously, or from a registry, asynchronously) and hands it
//! back. One walk, two transports.

use serde::Deserialize;

use super::digest::Digest;
use super::document::{RawDescriptor, RawDocument};
use super::error::OciError;
use super::media::{self, DocumentKind};
use super::platform::Platform;

/// How many index levels are peeled before giving up. Registries use one
/// (an index of manifests) and skopeo layouts two; eight leaves room while
/// bounding work on a crafted chain.
pub const MAX_INDEX_DEPTH: usize = 8;

/// A verified, parsed and shape-checked index or manifest.
#[derive(Debug)]
pub(crate) struct Document {
    /// The digest its bytes hash to (checked by whoever fetched them).
    pub(crate) digest: Digest,
    /// Its media type: the pointing descriptor's, else its own.
    pub(crate) media_type: String,
    /// Index or manifest, as its type and its fields agree.
    pub(crate) kind: DocumentKind,
    /// The bytes exactly as stored or served.
    pub(crate) bytes: Vec<u8>,
    /// The parsed body.
    pub(crate) body: RawDocument,
}

impl Document {
    /// Parses `bytes`, which the caller verified against `digest`, as the
    /// document a descriptor of type `claimed` points at. With no claim (a
    /// manifest fetched by tag), the document's own `mediaType` decides, or
    /// failing that its shape. `position` names where the pointer was, for
    /// messages.
    pub(crate) fn parse(
        digest: Digest,
        claimed: Option<&str>,
        bytes: Vec<u8>,
        position: &'static str,
    ) -> Result<Document, OciError> {
        let body: RawDocument =
            serde_json::from_slice(&bytes).map_err(|source| OciError::Json {
                what: "manifest or index",
                name: digest.to_string(),
                source,
            })?;
        let media_type = match claimed.filter(|t| !t.is_empty()) {
            Some(claimed) => claimed.to_owned(),
            None => own_media_type(&body),
        };
        let kind = document_kind(&digest, &media_type, position)?;
        check_shape(&digest, &media_type, kind, &body)?;
        Ok(Document {
            digest,
            media_type,
            kind,
            bytes,
            body,
        })
    }
}

/// The kind a descriptor's media type announces, or the error for a type
/// that cannot be an index or manifest at `position`. Checked before the
/// blob is read, so that a layer typed as a manifest is never parsed.
pub(crate) fn document_kind(
    digest: &Digest,
    media_type: &str,
    position: &'static str,
) -> Result<DocumentKind, OciError> {
    DocumentKind::from_media_type(media_type).ok_or_else(|| OciError::UnexpectedMediaType {
        digest: digest.clone(),
        media_type: media_type.to_owned(),
        position,
    })
}

/// The type an unpointed document gives itself: its `mediaType`, else the
/// OCI type its fields fit.
fn own_media_type(body: &RawDocument) -> String {
    match (&body.media_type, body.shape()) {
        (Some(own), _) if !own.is_empty() => own.clone(),
        (_, Some(DocumentKind::Index)) => media::OCI_INDEX.to_owned(),
        _ => media::OCI_MANIFEST.to_owned(),
    }
}

/// The CVE-2021-41190 checks: the document must be one kind only, be
/// schema version 2, have its own `mediaType` (when present) equal to the
/// descriptor's, and have the fields of the kind the descriptor claims.
pub(crate) fn check_shape(
    digest: &Digest,
    media_type: &str,
    kind: DocumentKind,
    body: &RawDocument,
) -> Result<(), OciError> {
    body.check_unambiguous(digest.as_str())?;
    if body.schema_version != Some(2) {
        return Err(OciError::UnsupportedSchemaVersion {
            name: digest.to_string(),
            found: body.schema_version,
        });
    }
    let own_type_differs = body
        .media_type
        .as_deref()
        .is_some_and(|own| !own.is_empty() && own != media_type);
    if own_type_differs || body.shape() != Some(kind) {
        return Err(OciError::MediaTypeMismatch {
            name: digest.to_string(),
            expected: media_type.to_owned(),
            document: describe(body),
        });
    }
    Ok(())
}

/// How a document presents itself, for mismatch messages.
pub(crate) fn describe(body: &RawDocument) -> String {
    let shape = body
        .shape()
        .map_or("neither an index nor a manifest", DocumentKind::name);
    match &body.media_type {
        Some(own) => format!("{shape} with mediaType {own}"),
        None => shape.to_owned(),
    }
}

/// The platform fields of an image config.
#[derive(Deserialize)]
struct ConfigPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// The platform an image config declares; `bytes` were verified against
/// `digest`.
pub(crate) fn config_platform(digest: &Digest, bytes: &[u8]) -> Result<Platform, OciError> {
    let config: ConfigPlatform =
        serde_json::from_slice(bytes).map_err(|source| OciError::Json {
            what: "config",
            name: digest.to_string(),
            source,
        })?;
    Ok(Platform::from_image(
        &config.os,
        &config.architecture,
        config.variant.as_deref(),
    ))
}

/// A blob the walk needs: what its descriptor promises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The digest to fetch and verify.
    pub(crate) digest: Digest,
    /// The size to verify.
    pub(crate) size: u64,
    /// The media type the descriptor gives.
    pub(crate) media_type: String,
}

impl Target {
    pub(crate) fn of(descriptor: &RawDescriptor) -> Result<Target, OciError> {
        Ok(Target {
            digest: Digest::parse(&descriptor.digest)?,
            size: descriptor.size,
            media_type: descriptor.media_type.clone(),
        })
    }
}

/// What the walk wants next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Fetch and verify this index or manifest (an index entry), parse it
    /// with [`Document::parse`] at position `"index entry"`, and pass it to
    /// [`Walk::document`].
    Document(Target),
    /// Fetch and verify this image config (of a manifest whose index entry
    /// declares no platform) and pass its bytes to [`Walk::config`].
    Config(Target),
    /// The walk is over: this is the manifest.
    Chosen(Box<Document>),
}

/// One index being searched.
struct Frame {
    index: Digest,
    entries: std::vec::IntoIter<RawDescriptor>,
    available: Vec<String>,
}

/// What the walk asked for last.
enum Waiting {
    Nothing,
    /// An index entry, with the platform the entry declares.
    Entry(Option<Platform>),
    /// The config of this manifest, whose entry declares no platform.
    Config(Box<Document>),
}

/// A depth-first search of an index tree for the first manifest matching
/// a platform; see the module docs for the rules.
pub(crate) struct Walk {
    wanted: Platform,
    frames: Vec<Frame>,
    waiting: Waiting,
}

impl Walk {
    /// A walk looking for `wanted`.
    pub(crate) fn new(wanted: &Platform) -> Walk {
        Walk {
            wanted: wanted.clone(),
            frames: Vec::new(),
            waiting: Waiting::Nothing,
        }
    }

    /// Starts from the document a reference names: a manifest is chosen
    /// as it is, an index is searched.
    pub(crate) fn start(&mut self, top: Document) -> Result<Step, OciError> {
        match top.kind {
            DocumentKind::Manifest => Ok(Step::Chosen(Box::new(top))),
            DocumentKind::Index => {
                self.enter(top)?;
                self.advance()
            }
        }
    }

    /// Takes the document a [`Step::Document`] asked for.
    pub(crate) fn document(&mut self, doc: Document) -> Result<Step, OciError> {
        let Waiting::Entry(declared) = std::mem::replace(&mut self.waiting, Waiting::Nothing)
        else {
            unreachable!("Walk::document without a pending Step::Document");
        };
        match (doc.kind, declared) {
            (DocumentKind::Index, _) => {
                self.enter(doc)?;
                self.advance()
            }
            (DocumentKind::Manifest, Some(_)) => Ok(Step::Chosen(Box::new(doc))),
            (DocumentKind::Manifest, None) => {
                // Artifacts (signatures, SBOMs) share the manifest type but
                // carry a non-image config and no platform: no candidates.
                let config = doc.body.config.as_ref();
                let Some(config) = config.filter(|c| media::is_image_config(&c.media_type)) else {
                    return self.advance();
                };
                let target = Target::of(config)?;
                self.waiting = Waiting::Config(Box::new(doc));
                Ok(Step::Config(target))
            }
        }
    }

    /// Takes the verified config bytes a [`Step::Config`] asked for.
    pub(crate) fn config(&mut self, target: &Target, bytes: &[u8]) -> Result<Step, OciError> {
        let Waiting::Config(manifest) = std::mem::replace(&mut self.waiting, Waiting::Nothing)
        else {
            unreachable!("Walk::config without a pending Step::Config");
        };
        let found = config_platform(&target.digest, bytes)?;
        let matches = self.wanted.matches(&found);
        self.note(found);
        if matches {
            return Ok(Step::Chosen(manifest));
        }
        self.advance()
    }

    /// Starts searching `index`, one level below the current one.
    fn enter(&mut self, mut index: Document) -> Result<(), OciError> {
        if self.frames.len() >= MAX_INDEX_DEPTH {
            return Err(OciError::IndexTooDeep {
                digest: index.digest,
                limit: MAX_INDEX_DEPTH,
            });
        }
        let entries = index.body.manifests.take().unwrap_or_default();
        self.frames.push(Frame {
            index: index.digest,
            entries: entries.into_iter(),
            available: Vec::new(),
        });
        Ok(())
    }

    /// Records a platform seen, for the no-match message.
    fn note(&mut self, platform: Platform) {
        if let Some(frame) = self.frames.last_mut() {
            frame.available.push(platform.to_string());
        }
    }

    /// Moves to the next entry worth fetching, leaving exhausted indexes;
    /// fails when the top index is exhausted.
    fn advance(&mut self) -> Result<Step, OciError> {
        loop {
            let Some(frame) = self.frames.last_mut() else {
                unreachable!("Walk::advance outside an index");
            };
            let Some(entry) = frame.entries.next() else {
                let done = self.frames.pop().expect("a frame was just looked at");
                let Some(parent) = self.frames.last_mut() else {
                    return Err(OciError::NoMatchingPlatform {
                        wanted: self.wanted.to_string(),
                        index: done.index,
                        available: done.available,
                    });
                };
                parent.available.extend(done.available);
                continue;
            };
            if let Some(step) = self.consider(&entry)? {
                return Ok(step);
            }
        }
    }

    /// One index entry: `Some` step to fetch it, `None` to skip it.
    fn consider(&mut self, entry: &RawDescriptor) -> Result<Option<Step>, OciError> {
        let Some(kind) = DocumentKind::from_media_type(&entry.media_type) else {
            return Ok(None);
        };
        let declared = entry
            .platform
            .as_ref()
            .map(|p| Platform::from_image(&p.os, &p.architecture, p.variant.as_deref()));
        if let Some(declared) = &declared {
            let matches = self.wanted.matches(declared);
            // A nested index's platform is noted only when it rules the
            // index out; otherwise its own entries are noted.
            if kind == DocumentKind::Manifest || !matches {
                self.note(declared.clone());
            }
            if !matches {
                return Ok(None);
            }
        }
        let target = Target::of(entry)?;
        self.waiting = Waiting::Entry(declared);
        Ok(Some(Step::Document(target)))
    }
}

/// Fuzzing entry point (not API): parses `bytes` as the document a
/// descriptor of type `claimed` points at, and describes what was parsed
/// (kind, media type, every descriptor) so that a harness can check that
/// re-serialised JSON reads the same.
#[doc(hidden)]
pub fn fuzz_document(claimed: Option<&str>, bytes: &[u8]) -> Result<String, OciError> {
    let doc = Document::parse(Digest::sha256_of(bytes), claimed, bytes.to_vec(), "fuzz")?;
    let mut text = format!("{} {}", doc.kind.name(), doc.media_type);
    let descriptors = doc.body.manifests.iter().flatten();
    let descriptors = descriptors.chain(doc.body.config.iter());
    for d in descriptors.chain(doc.body.layers.iter().flatten()) {
        let platform = d
            .platform
            .as_ref()
            .map(|p| (&p.os, &p.architecture, &p.variant));
        text.push_str(&format!(
            "\n{} {} {} {platform:?} {:?}",
            d.media_type, d.digest, d.size, d.annotations
        ));
    }
    Ok(text)
}

/// Fuzzing entry point (not API): a whole [`Walk`] for `wanted` in which
/// the `n`th document or config the walk asks for is `blobs[n]` (the
/// digests are taken as verified, as the walk's callers guarantee). The
/// chosen manifest's media type, or `None` when `blobs` ran out first.
#[doc(hidden)]
pub fn fuzz_walk(wanted: &Platform, blobs: &[&[u8]]) -> Result<Option<String>, OciError> {
    let Some((top, mut rest)) = blobs.split_first() else {
        return Ok(None);
    };
    let top = Document::parse(Digest::sha256_of(top), None, top.to_vec(), "fuzz")?;
    let mut walk = Walk::new(wanted);
    let mut step = walk.start(top)?;
    loop {
        if let Step::Chosen(doc) = step {
            return Ok(Some(doc.media_type));
        }
        let Some((next, tail)) = rest.split_first() else {
            return Ok(None);
        };
        rest = tail;
        step = match step {
            Step::Chosen(_) => unreachable!("returned above"),
            Step::Document(target) => {
                let bytes = next.to_vec();
                let claimed = Some(target.media_type.as_str());
                walk.document(Document::parse(
                    target.digest,
                    claimed,
                    bytes,
                    "index entry",
                )?)?
            }
            Step::Config(target) => walk.config(&target, next)?,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::HashMap;

    /// Blobs by digest, standing in for a layout or a registry.
    #[derive(Default)]
    struct Store(HashMap<Digest, Vec<u8>>);

    impl Store {
        fn put(&mut self, media_type: &str, body: &Value) -> Value {
            let bytes = serde_json::to_vec(body).unwrap();
            let digest = Digest::sha256_of(&bytes);
            let size = bytes.len();
            self.0.insert(digest.clone(), bytes);
            json!({"mediaType": media_type, "digest": digest, "size": size})
        }

        fn image(&mut self, arch: &str) -> Value {
            let config = json!({"os": "linux", "architecture": arch, "rootfs": {"diff_ids": []}});
            let config = self.put(media::OCI_CONFIG, &config);
            let body = json!({"schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
                              "config": config, "layers": []});
            self.put(media::OCI_MANIFEST, &body)
        }

        fn index(&mut self, entries: Vec<Value>) -> Value {
            let body = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
                              "manifests": entries});
            self.put(media::OCI_INDEX, &body)
        }

        /// Runs a walk from `top`, returning the chosen digest and the
        /// number of configs read.
        fn choose(&self, top: &Value, wanted: &str) -> Result<(Digest, usize), OciError> {
            let fetch = |t: &Target| self.0[&t.digest].clone();
            let top = Target::of(&serde_json::from_value(top.clone()).unwrap()).unwrap();
            let doc = Document::parse(top.digest.clone(), None, fetch(&top), "top")?;
            let mut walk = Walk::new(&Platform::parse(wanted).unwrap());
            let mut configs = 0;
            let mut step = walk.start(doc)?;
            loop {
                step = match step {
                    Step::Chosen(doc) => return Ok((doc.digest, configs)),
                    Step::Document(t) => {
                        let doc = Document::parse(
                            t.digest.clone(),
                            Some(&t.media_type),
                            fetch(&t),
                            "index entry",
                        )?;
                        walk.document(doc)?
                    }
                    Step::Config(t) => {
                        configs += 1;
                        walk.config(&t, &fetch(&t))?
                    }
                };
            }
        }
    }

    fn on(mut desc: Value, arch: &str) -> Value {
        desc["platform"] = json!({"os": "linux", "architecture": arch});
        desc
    }

    fn digest_of(desc: &Value) -> Digest {
        Digest::parse(desc["digest"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn declared_platforms_decide_without_reading_configs() {
        let mut s = Store::default();
        let amd = on(s.image("amd64"), "amd64");
        let arm = on(s.image("arm64"), "arm64");
        let top = s.index(vec![amd, arm.clone()]);
        assert_eq!(s.choose(&top, "linux/arm64").unwrap(), (digest_of(&arm), 0));
    }

    #[test]
    fn entries_without_platform_are_decided_by_their_config() {
        let mut s = Store::default();
        let amd = s.image("amd64");
        let arm = s.image("arm64");
        let top = s.index(vec![amd, arm.clone()]);
        assert_eq!(s.choose(&top, "linux/arm64").unwrap(), (digest_of(&arm), 2));
        let err = s.choose(&top, "linux/riscv64").unwrap_err();
        assert!(
            err.to_string()
                .ends_with("no match (available: linux/amd64, linux/arm64)"),
            "{err}"
        );
    }

    #[test]
    fn nested_indexes_are_peeled_depth_first_and_report_all_platforms() {
        let mut s = Store::default();
        let amd = on(s.image("amd64"), "amd64");
        let inner = s.index(vec![amd]);
        let arm = s.image("arm64");
        let top = s.index(vec![inner, arm.clone()]);
        assert_eq!(s.choose(&top, "linux/arm64").unwrap().0, digest_of(&arm));
        let err = s.choose(&top, "linux/riscv64").unwrap_err();
        assert!(matches!(
            err,
            OciError::NoMatchingPlatform { ref available, .. } if available == &["linux/amd64", "linux/arm64"]
        ));
    }

    #[test]
    fn a_manifest_named_directly_is_taken_whatever_its_platform() {
        let mut s = Store::default();
        let top = s.image("s390x");
        assert_eq!(s.choose(&top, "linux/amd64").unwrap().0, digest_of(&top));
    }

    #[test]
    fn shape_check_refuses_ambiguous_mismatched_and_old_documents() {
        let d = Digest::sha256_of(b"");
        let parse = |claimed: Option<&str>, body: Value| {
            Document::parse(
                d.clone(),
                claimed,
                serde_json::to_vec(&body).unwrap(),
                "top",
            )
        };
        let config = json!({"mediaType": media::OCI_CONFIG, "digest": d, "size": 0});
        let manifest = json!({"schemaVersion": 2, "config": config, "layers": []});
        let doc = parse(None, manifest.clone()).unwrap();
        assert_eq!(doc.media_type, media::OCI_MANIFEST);
        let err = parse(Some(media::OCI_INDEX), manifest).unwrap_err();
        assert!(matches!(err, OciError::MediaTypeMismatch { .. }), "{err}");
        let both = json!({"schemaVersion": 2, "manifests": [], "config": config});
        let err = parse(None, both).unwrap_err();
        assert!(matches!(err, OciError::AmbiguousDocument { .. }), "{err}");
        let old = json!({"schemaVersion": 1, "fsLayers": []});
        let err = parse(None, old).unwrap_err();
        assert!(
            matches!(
                err,
                OciError::UnsupportedSchemaVersion { found: Some(1), .. }
            ),
            "{err}"
        );
        let list = json!({"schemaVersion": 2, "mediaType": media::DOCKER_MANIFEST_LIST,
                          "manifests": []});
        assert_eq!(parse(None, list).unwrap().kind, DocumentKind::Index);
    }

    /// Found by the `documents` fuzz target: serde skips an unknown
    /// field's string without checking it is UTF-8, so such a manifest is
    /// accepted though strict JSON readers refuse it. Kept deliberately:
    /// Go's encoding/json (registries, containerd) accepts it too, and no
    /// known field can read differently.
    #[test]
    fn invalid_utf8_in_an_unknown_field_does_not_change_the_known_ones() {
        let mut bytes = br#"{"schemaVersion":2,"x":""#.to_vec();
        bytes.extend_from_slice(b"\xc2");
        let config = r#"{"mediaType":"m","digest":"sha256:0","size":2}"#;
        bytes.extend_from_slice(format!(r#"","config":{config},"layers":[]}}"#).as_bytes());
        assert!(serde_json::from_slice::<Value>(&bytes).is_err());
        let text = fuzz_document(None, &bytes).unwrap();
        assert_eq!(
            text,
            format!("a manifest {}\nm sha256:0 2 None {{}}", media::OCI_MANIFEST)
        );
    }
}
