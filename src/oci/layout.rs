#![forbid(unsafe_code)]
//! Reading OCI image layouts: `index.json`, ref names, and the manifest,
//! config and layer list of one image. Index peeling and platform choice
//! are the `oci::select` module's, shared with the registry pull.
//!
//! Layouts come from skopeo, umoci, ocidir or metalor's own pull. The
//! directory is opened through `ocidir`, whose `cap_std` handles keep every
//! blob lookup inside the layout (a symlinked blob cannot point elsewhere).
//! Documents are read whole under a size cap, checked against the digest
//! and size of the descriptor that named them, and only then parsed; their
//! original bytes are kept because re-serialising would change digests.
//! Layer blobs are only located and size-checked here; the unpacker opens
//! them with [`ImageLayout::open_blob`] and checks each one's digest and
//! diff_id as it streams it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::OciDir;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::document::{RawDescriptor, RawDocument};
use super::error::OciError;
use super::media::{self, Compression, DocumentKind};
use super::platform::Platform;
use super::select::{self, Document, Step, Target, Walk};

/// The largest index, manifest or config metalor reads. Real documents are
/// a few KiB; the cap keeps a hostile one from exhausting memory.
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;

pub use super::select::MAX_INDEX_DEPTH;

/// The annotation that names an image inside a layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory opened for reading.
#[derive(Debug)]
pub struct ImageLayout {
    path: PathBuf,
    store: OciDir,
}

/// One image chosen from a layout: its manifest and config, raw and
/// verified, and the layers to apply in order.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// Digest of the chosen manifest (not of an index above it).
    pub manifest_digest: Digest,
    /// Media type of the manifest, OCI or Docker.
    pub manifest_media_type: String,
    /// The manifest exactly as stored; it hashes to `manifest_digest`.
    pub manifest_bytes: Vec<u8>,
    /// Digest of the image config.
    pub config_digest: Digest,
    /// The config exactly as stored; it hashes to `config_digest`.
    pub config_bytes: Vec<u8>,
    /// The platform the config declares.
    pub platform: Platform,
    /// The layers, bottom first, each paired with its config `diff_id`.
    pub layers: Vec<LayerDescriptor>,
}

/// A layer to apply: where its blob is, how to decompress it, and the
/// digests that both the compressed blob and the uncompressed tar must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDescriptor {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// The layer media type from the manifest.
    pub media_type: String,
    /// The compression that media type declares.
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// The parts of an image config metalor needs.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RawRootfs,
}

/// `rootfs` of an image config.
#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ImageLayout {
    /// Opens the layout at `dir`. Checks that it has an `oci-layout` file
    /// and a `blobs/sha256` directory, so that pointing at the wrong
    /// directory fails here, naming the missing file, and not with a
    /// confusing missing blob later. `index.json` is read by
    /// [`ImageLayout::resolve`]: a layout being pulled into has none yet.
    pub fn open(dir: &Path) -> Result<ImageLayout, OciError> {
        let io_err = |path: &Path, source| OciError::Io {
            op: "open layout",
            path: path.to_path_buf(),
            source,
        };
        let handle = Dir::open_ambient_dir(dir, ambient_authority()).map_err(|e| io_err(dir, e))?;
        check_layout_marker(&handle, dir)?;
        let blobs = handle
            .open_dir(BLOBS_SHA256)
            .map_err(|e| io_err(&dir.join(BLOBS_SHA256), e))?;
        Ok(ImageLayout {
            path: dir.to_path_buf(),
            store: OciDir::open_with_external_blobs(handle, blobs)
                .map_err(|e| io_err(dir, ocidir_io(e)))?,
        })
    }

    /// The directory this layout was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chooses one image: the `index.json` entry named `reference` (or the
    /// only entry when `reference` is `None`), then, through any nested
    /// indexes, the first manifest for `platform`. A manifest named directly
    /// by `index.json` is taken whatever its platform, as skopeo does.
    pub fn resolve(
        &self,
        reference: Option<&str>,
        platform: &Platform,
    ) -> Result<ResolvedImage, OciError> {
        let top = self.top(reference)?;
        let manifest = self.choose(top, platform)?;
        self.assemble(manifest)
    }

    /// The document `index.json` names under `reference` (or its only
    /// entry), verified, without choosing a platform: an index stays an
    /// index. Returns its digest, media type and bytes as stored, which
    /// is what `metalor inspect --raw` prints.
    pub fn top_document(
        &self,
        reference: Option<&str>,
    ) -> Result<(Digest, String, Vec<u8>), OciError> {
        let top = self.top(reference)?;
        Ok((top.digest, top.media_type, top.bytes))
    }

    /// The index or manifest that the `index.json` entry named
    /// `reference` (or the only entry) points at, verified and
    /// shape-checked but not peeled: what `push --all` copies whole.
    pub(crate) fn top(&self, reference: Option<&str>) -> Result<Document, OciError> {
        let index = self.read_index()?;
        let entries = index.manifests.unwrap_or_default();
        let entry = self.choose_entry(&entries, reference)?;
        self.load_document(&Target::of(entry)?, "index.json entry")
    }

    /// The image a manifest describes while its layer blobs may still be
    /// arriving (a pull is writing them): `bytes` must hash to `digest` and
    /// the config must be in the layout. Every descriptor is checked as in
    /// [`ImageLayout::resolve`], but not the layer blobs, which the
    /// unpacker opens when the pull reports them and verifies as it reads.
    pub fn resolve_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ResolvedImage, OciError> {
        digest.verify_bytes(bytes, bytes.len() as u64)?;
        if DocumentKind::from_media_type(media_type) != Some(DocumentKind::Manifest) {
            return Err(OciError::UnexpectedMediaType {
                digest: digest.clone(),
                media_type: media_type.to_owned(),
                position: "pulled manifest",
            });
        }
        let manifest = Document::parse(
            digest.clone(),
            Some(media_type),
            bytes.to_vec(),
            "pulled manifest",
        )?;
        self.image_of(manifest)
    }

    /// Opens a blob for streaming, without verifying it: the caller checks
    /// the digest while it reads, so that the blob is read only once (the
    /// unpacker checks blob digest and diff_id as it applies a layer).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, OciError> {
        let opened = if digest.algorithm() == "sha256" {
            self.store.blobs_dir().open(digest.hex())
        } else {
            self.store.dir().open(blob_relpath(digest))
        };
        let file = opened.map_err(|e| self.blob_error(digest, e))?.into_std();
        let meta = file.metadata().map_err(|e| self.blob_error(digest, e))?;
        if !meta.is_file() {
            let source = io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
            return Err(self.blob_error(digest, source));
        }
        Ok(file)
    }

    /// Maps an error on a blob to `MissingBlob` or a located I/O error.
    fn blob_error(&self, digest: &Digest, source: io::Error) -> OciError {
        let path = self.path.join(blob_relpath(digest));
        if source.kind() == io::ErrorKind::NotFound {
            return OciError::MissingBlob {
                digest: digest.clone(),
                path,
            };
        }
        OciError::Io {
            op: "open blob",
            path,
            source,
        }
    }

    /// Reads and checks `index.json`, which no descriptor vouches for.
    fn read_index(&self) -> Result<RawDocument, OciError> {
        let bytes = self.read_capped_file("index.json", "index")?;
        let name = self.path.join("index.json");
        let index: RawDocument = parse_json(&bytes, "index", &name)?;
        let name = name.display().to_string();
        index.check_unambiguous(&name)?;
        let claimed = index.media_type.as_deref().unwrap_or(media::OCI_INDEX);
        if claimed != media::OCI_INDEX || index.shape() == Some(DocumentKind::Manifest) {
            return Err(OciError::MediaTypeMismatch {
                name,
                expected: media::OCI_INDEX.to_owned(),
                document: select::describe(&index),
            });
        }
        Ok(index)
    }

    /// Reads a small file at the layout root, refusing oversized ones.
    fn read_capped_file(&self, name: &str, what: &'static str) -> Result<Vec<u8>, OciError> {
        read_capped_file(self.store.dir(), &self.path, name, ("read", what))
    }

    /// Picks the `index.json` entry for `reference`.
    fn choose_entry<'a>(
        &self,
        entries: &'a [RawDescriptor],
        reference: Option<&str>,
    ) -> Result<&'a RawDescriptor, OciError> {
        let names = || {
            entries
                .iter()
                .filter_map(|e| e.ref_name().map(str::to_owned))
                .collect()
        };
        if let Some(reference) = reference {
            return entries
                .iter()
                .find(|e| e.ref_name() == Some(reference))
                .ok_or_else(|| OciError::RefNotFound {
                    reference: reference.to_owned(),
                    layout: self.path.clone(),
                    available: names(),
                });
        }
        match entries {
            [only] => Ok(only),
            [] => Err(OciError::EmptyIndex {
                layout: self.path.clone(),
            }),
            _ => Err(OciError::AmbiguousRef {
                layout: self.path.clone(),
                count: entries.len(),
                names: names(),
            }),
        }
    }

    /// Reads, verifies and shape-checks the index or manifest `target`
    /// names. `position` names where its descriptor was found.
    pub(crate) fn load_document(
        &self,
        target: &Target,
        position: &'static str,
    ) -> Result<Document, OciError> {
        let kind = select::document_kind(&target.digest, &target.media_type, position)?;
        let what = match kind {
            DocumentKind::Index => "index",
            DocumentKind::Manifest => "manifest",
        };
        let bytes = self.read_document(&target.digest, target.size, what)?;
        Document::parse(
            target.digest.clone(),
            Some(&target.media_type),
            bytes,
            position,
        )
    }

    /// Reads a whole JSON blob under the size cap and verifies it.
    fn read_document(
        &self,
        digest: &Digest,
        size: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, OciError> {
        if size > MAX_DOCUMENT_SIZE {
            return Err(OciError::DocumentTooLarge {
                what,
                name: digest.to_string(),
                size,
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        // Fail on an unverifiable algorithm before touching the file.
        digest.hasher()?;
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.blob_error(digest, e))?;
        digest.verify_bytes(&bytes, size)?;
        Ok(bytes)
    }

    /// Runs the shared [`Walk`] from `top` over this layout's blobs.
    fn choose(&self, top: Document, platform: &Platform) -> Result<Document, OciError> {
        let mut walk = Walk::new(platform);
        let mut step = walk.start(top)?;
        loop {
            step = match step {
                Step::Chosen(manifest) => return Ok(*manifest),
                Step::Document(target) => {
                    walk.document(self.load_document(&target, "index entry")?)?
                }
                Step::Config(target) => {
                    let bytes = self.read_document(&target.digest, target.size, "config")?;
                    walk.config(&target, &bytes)?
                }
            };
        }
    }

    /// Reads and parses the config a manifest names.
    fn read_config(&self, manifest: &Document) -> Result<(Digest, Vec<u8>, RawConfig), OciError> {
        let descriptor = manifest
            .body
            .config
            .as_ref()
            .ok_or_else(|| missing_config(&manifest.digest))?;
        let digest = Digest::parse(&descriptor.digest)?;
        if !media::is_image_config(&descriptor.media_type) {
            return Err(OciError::UnexpectedMediaType {
                digest,
                media_type: descriptor.media_type.clone(),
                position: "image config",
            });
        }
        let bytes = self.read_document(&digest, descriptor.size, "config")?;
        let config = parse_json(&bytes, "config", digest.as_str())?;
        Ok((digest, bytes, config))
    }

    /// Builds the final image from a verified manifest and checks that
    /// every layer blob is present with the promised size, so a broken
    /// layout fails before unpacking starts.
    fn assemble(&self, manifest: Document) -> Result<ResolvedImage, OciError> {
        let image = self.image_of(manifest)?;
        for layer in &image.layers {
            self.check_blob_size(&layer.digest, layer.size)?;
        }
        Ok(image)
    }

    /// The image a verified manifest describes, with its config read and
    /// every layer descriptor checked; layer blobs are not looked at.
    fn image_of(&self, manifest: Document) -> Result<ResolvedImage, OciError> {
        let (config_digest, config_bytes, config) = self.read_config(&manifest)?;
        let raw_layers = manifest.body.layers.as_deref().unwrap_or_default();
        if config.rootfs.diff_ids.len() != raw_layers.len() {
            return Err(OciError::DiffIdCount {
                config: config_digest,
                layers: raw_layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let layers = raw_layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| self.layer(layer, diff_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResolvedImage {
            manifest_digest: manifest.digest,
            manifest_media_type: manifest.media_type,
            manifest_bytes: manifest.bytes,
            config_digest,
            config_bytes,
            platform: config_platform(&config),
            layers,
        })
    }

    /// Checks one layer descriptor and pairs it with its diff_id.
    fn layer(&self, raw: &RawDescriptor, diff_id: &str) -> Result<LayerDescriptor, OciError> {
        let digest = Digest::parse(&raw.digest)?;
        let compression = Compression::from_layer_media_type(&raw.media_type).ok_or_else(|| {
            OciError::UnknownLayerMediaType {
                digest: digest.clone(),
                media_type: raw.media_type.clone(),
            }
        })?;
        digest.hasher()?;
        let diff_id = Digest::parse(diff_id)?;
        diff_id.hasher()?;
        Ok(LayerDescriptor {
            digest,
            size: raw.size,
            media_type: raw.media_type.clone(),
            compression,
            diff_id,
        })
    }

    /// Checks that a blob is present with the promised size.
    pub(crate) fn check_blob_size(&self, digest: &Digest, size: u64) -> Result<(), OciError> {
        let file = self.open_blob(digest)?;
        let found = file
            .metadata()
            .map_err(|e| self.blob_error(digest, e))?
            .len();
        if found != size {
            return Err(OciError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                found,
            });
        }
        Ok(())
    }
}

/// Where a layout keeps sha256 blobs.
const BLOBS_SHA256: &str = "blobs/sha256";

/// Requires the `oci-layout` marker with an `imageLayoutVersion`.
fn check_layout_marker(dir: &Dir, path: &Path) -> Result<(), OciError> {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(rename = "imageLayoutVersion")]
        _version: String,
    }
    let bytes = read_capped_file(dir, path, "oci-layout", ("open layout", "layout marker"))?;
    parse_json::<Marker>(&bytes, "layout marker", path.join("oci-layout"))?;
    Ok(())
}

/// Reads the small file `name` at the root of the layout `dir` (found at
/// `path`), refusing oversized ones. `op` and `what` name the operation
/// and the document in errors.
fn read_capped_file(
    dir: &Dir,
    path: &Path,
    name: &str,
    (op, what): (&'static str, &'static str),
) -> Result<Vec<u8>, OciError> {
    let path = path.join(name);
    let io_err = |source| OciError::Io {
        op,
        path: path.clone(),
        source,
    };
    let file = dir.open(name).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(OciError::DocumentTooLarge {
            what,
            name: path.display().to_string(),
            size: bytes.len() as u64,
            limit: MAX_DOCUMENT_SIZE,
        });
    }
    Ok(bytes)
}

/// The path of a blob relative to the layout root.
fn blob_relpath(digest: &Digest) -> PathBuf {
    Path::new("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

/// Unwraps the I/O error inside an ocidir error, keeping others as text.
fn ocidir_io(err: ocidir::Error) -> io::Error {
    match err {
        ocidir::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Parses JSON, naming the document on failure.
fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    name: impl AsRef<Path>,
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| OciError::Json {
        what,
        name: name.as_ref().display().to_string(),
        source,
    })
}

/// The error for a manifest without a config; `select::check_shape` already
/// refuses those, so this only keeps `read_config` total.
pub(crate) fn missing_config(digest: &Digest) -> OciError {
    OciError::MediaTypeMismatch {
        name: digest.to_string(),
        expected: "a manifest with a config".to_owned(),
        document: "a manifest without one".to_owned(),
    }
}

/// The platform a config declares.
fn config_platform(config: &RawConfig) -> Platform {
    Platform::from_image(&config.os, &config.architecture, config.variant.as_deref())
}

#[cfg(test)]
mod tests {
    use super::super::reference::LayoutRef;
    use super::*;
    use serde_json::{json, Value};
    use std::process::Command;

    /// Writes layouts blob by blob, the way skopeo and umoci lay them out.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
            let marker = r#"{"imageLayoutVersion":"1.0.0"}"#;
            std::fs::write(dir.path().join("oci-layout"), marker).unwrap();
            Fixture { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn blob_path(&self, digest: &Digest) -> PathBuf {
            self.path().join(blob_relpath(digest))
        }

        fn blob(&self, bytes: &[u8]) -> Digest {
            let digest = Digest::sha256_of(bytes);
            std::fs::write(self.blob_path(&digest), bytes).unwrap();
            digest
        }

        /// Stores `body` and returns a descriptor for it.
        fn doc(&self, media_type: &str, body: &Value) -> Value {
            let bytes = serde_json::to_vec(body).unwrap();
            let digest = self.blob(&bytes);
            json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
        }

        /// A gzip-typed layer whose content is `content` (never unpacked here).
        fn layer(&self, media_type: &str, content: &[u8]) -> (Value, String) {
            let digest = self.blob(content);
            let diff_id = Digest::sha256_of(&[content, b"-uncompressed"].concat());
            let desc = json!({"mediaType": media_type, "digest": digest, "size": content.len()});
            (desc, diff_id.to_string())
        }

        fn config(
            &self,
            media_type: &str,
            arch: &str,
            variant: Option<&str>,
            diff_ids: &[String],
        ) -> Value {
            let mut body = json!({
                "os": "linux",
                "architecture": arch,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            });
            if let Some(variant) = variant {
                body["variant"] = json!(variant);
            }
            self.doc(media_type, &body)
        }

        fn manifest(&self, media_type: &str, config: Value, layers: Vec<Value>) -> Value {
            let body = json!({
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": config,
                "layers": layers,
            });
            self.doc(media_type, &body)
        }

        /// An OCI image for `arch` with two gzip layers.
        fn image(&self, arch: &str, variant: Option<&str>) -> Value {
            let tag = format!("{arch}{variant:?}");
            let (l1, d1) = self.layer(media::OCI_LAYER_TAR_GZIP, format!("{tag} base").as_bytes());
            let (l2, d2) = self.layer(media::OCI_LAYER_TAR, format!("{tag} top").as_bytes());
            let config = self.config(media::OCI_CONFIG, arch, variant, &[d1, d2]);
            self.manifest(media::OCI_MANIFEST, config, vec![l1, l2])
        }

        fn index(&self, media_type: &str, entries: Vec<Value>) -> Value {
            let body = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": entries});
            self.doc(media_type, &body)
        }

        fn write_index(&self, entries: Vec<Value>) {
            let body =
                json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": entries});
            let bytes = serde_json::to_vec(&body).unwrap();
            std::fs::write(self.path().join("index.json"), bytes).unwrap();
        }

        fn resolve(
            &self,
            reference: Option<&str>,
            platform: &str,
        ) -> Result<ResolvedImage, OciError> {
            let platform = Platform::parse(platform).unwrap();
            ImageLayout::open(self.path())?.resolve(reference, &platform)
        }
    }

    fn tagged(mut desc: Value, name: &str) -> Value {
        desc["annotations"] = json!({ REF_NAME_ANNOTATION: name });
        desc
    }

    fn on(mut desc: Value, arch: &str, variant: Option<&str>) -> Value {
        desc["platform"] = json!({"os": "linux", "architecture": arch});
        if let Some(variant) = variant {
            desc["platform"]["variant"] = json!(variant);
        }
        desc
    }

    fn digest_of(desc: &Value) -> Digest {
        Digest::parse(desc["digest"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn resolves_a_manifest_whose_layer_blobs_are_still_arriving() {
        let f = Fixture::new();
        let manifest = f.image("amd64", None);
        let digest = digest_of(&manifest);
        let bytes = std::fs::read(f.blob_path(&digest)).unwrap();
        let layout = ImageLayout::open(f.path()).unwrap();
        let layers = layout
            .resolve_manifest(&digest, media::OCI_MANIFEST, &bytes)
            .unwrap()
            .layers;
        for layer in &layers {
            std::fs::remove_file(f.blob_path(&layer.digest)).unwrap();
        }
        let pending = layout
            .resolve_manifest(&digest, media::OCI_MANIFEST, &bytes)
            .unwrap();
        assert_eq!(pending.layers, layers);
        assert_eq!(pending.manifest_bytes, bytes);
        // A complete layout is still required by resolve.
        f.write_index(vec![tagged(manifest, "a")]);
        let err = f.resolve(Some("a"), "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::MissingBlob { .. }), "{err}");
        // The bytes must be the manifest's, and a manifest.
        let err = layout
            .resolve_manifest(&digest, media::OCI_MANIFEST, b"{}")
            .unwrap_err();
        assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
        let err = layout
            .resolve_manifest(&digest, media::OCI_INDEX, &bytes)
            .unwrap_err();
        assert!(matches!(err, OciError::UnexpectedMediaType { .. }), "{err}");
    }

    #[test]
    fn resolves_by_ref_name() {
        let f = Fixture::new();
        let a = f.image("amd64", None);
        let b = f.image("arm64", None);
        f.write_index(vec![tagged(a, "a"), tagged(b.clone(), "b")]);
        let image = f.resolve(Some("b"), "linux/amd64").unwrap();
        assert_eq!(image.manifest_digest, digest_of(&b));
        assert_eq!(image.platform.to_string(), "linux/arm64");
    }

    #[test]
    fn single_entry_is_the_default_and_fields_are_verified() {
        let f = Fixture::new();
        let m = f.image("amd64", None);
        f.write_index(vec![tagged(m.clone(), "image")]);
        let image = f.resolve(None, "linux/amd64").unwrap();
        assert_eq!(image.manifest_digest, digest_of(&m));
        assert_eq!(image.manifest_media_type, media::OCI_MANIFEST);
        assert_eq!(
            Digest::sha256_of(&image.manifest_bytes),
            image.manifest_digest
        );
        assert_eq!(Digest::sha256_of(&image.config_bytes), image.config_digest);
        let compressions: Vec<_> = image.layers.iter().map(|l| l.compression).collect();
        assert_eq!(compressions, [Compression::Gzip, Compression::None]);
        let layer = &image.layers[0];
        assert_eq!(
            layer.diff_id,
            Digest::sha256_of(b"amd64None base-uncompressed")
        );
        let layout = ImageLayout::open(f.path()).unwrap();
        let mut content = String::new();
        layout
            .open_blob(&layer.digest)
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "amd64None base");
    }

    #[test]
    fn several_entries_without_ref_are_ambiguous() {
        let f = Fixture::new();
        f.write_index(vec![
            tagged(f.image("amd64", None), "one"),
            tagged(f.image("arm64", None), "two"),
        ]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::AmbiguousRef { count: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("one, two"), "{err}");
    }

    #[test]
    fn missing_ref_names_ref_and_layout() {
        let f = Fixture::new();
        f.write_index(vec![tagged(f.image("amd64", None), "image")]);
        let err = f.resolve(Some("latest"), "linux/amd64").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OciError::RefNotFound { .. }), "{text}");
        assert!(
            text.contains("\"latest\"") && text.contains(&f.path().display().to_string()),
            "{text}"
        );
        assert!(text.contains("available: image"), "{text}");
        f.write_index(vec![]);
        assert!(matches!(
            f.resolve(None, "linux/amd64"),
            Err(OciError::EmptyIndex { .. })
        ));
    }

    #[test]
    fn peels_nested_indexes() {
        let f = Fixture::new();
        let amd = on(f.image("amd64", None), "amd64", None);
        let arm = on(f.image("arm64", None), "arm64", None);
        let inner = f.index(media::OCI_INDEX, vec![amd, arm.clone()]);
        let outer = f.index(media::OCI_INDEX, vec![inner]);
        f.write_index(vec![tagged(outer, "image")]);
        let image = f.resolve(Some("image"), "linux/arm64").unwrap();
        assert_eq!(image.manifest_digest, digest_of(&arm));
    }

    #[test]
    fn entries_without_platform_match_on_their_config() {
        let f = Fixture::new();
        let amd = f.image("amd64", None);
        let arm = f.image("arm64", None);
        let list = f.index(media::OCI_INDEX, vec![amd, arm.clone()]);
        f.write_index(vec![list]);
        let image = f.resolve(None, "linux/aarch64").unwrap();
        assert_eq!(image.manifest_digest, digest_of(&arm));
    }

    #[test]
    fn skips_artifacts_and_unknown_entries_in_an_index() {
        let f = Fixture::new();
        let empty = f.doc("application/vnd.oci.empty.v1+json", &json!({}));
        let signature = f.manifest(media::OCI_MANIFEST, empty, vec![]);
        let unknown = json!({"mediaType": "application/x-unknown", "digest": Digest::sha256_of(b"?"), "size": 1});
        let arm = f.image("arm64", None);
        let list = f.index(media::OCI_INDEX, vec![signature, unknown, arm.clone()]);
        f.write_index(vec![list]);
        let image = f.resolve(None, "linux/arm64").unwrap();
        assert_eq!(image.manifest_digest, digest_of(&arm));
    }

    #[test]
    fn platform_choice_honours_arch_and_variant() {
        let f = Fixture::new();
        let amd = on(f.image("amd64", None), "amd64", None);
        let v8 = on(f.image("arm64", Some("v8")), "arm64", Some("v8"));
        let v9 = on(f.image("arm64", Some("v9")), "arm64", Some("v9"));
        let list = f.index(media::OCI_INDEX, vec![amd.clone(), v8.clone(), v9.clone()]);
        f.write_index(vec![tagged(list, "image")]);
        let pick = |p| f.resolve(Some("image"), p).unwrap().manifest_digest;
        assert_eq!(pick("linux/x86_64"), digest_of(&amd));
        assert_eq!(pick("linux/arm64"), digest_of(&v8));
        assert_eq!(pick("linux/arm64/v9"), digest_of(&v9));
        assert_eq!(
            f.resolve(Some("image"), "linux/arm64/v9")
                .unwrap()
                .platform
                .to_string(),
            "linux/arm64/v9"
        );
    }

    #[test]
    fn no_matching_platform_lists_the_available_ones() {
        let f = Fixture::new();
        let amd = on(f.image("amd64", None), "amd64", None);
        let arm = on(f.image("arm64", Some("v8")), "arm64", Some("v8"));
        let list = f.index(media::OCI_INDEX, vec![amd, arm]);
        f.write_index(vec![list]);
        let err = f.resolve(None, "linux/riscv64").unwrap_err();
        assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("linux/riscv64") && text.contains("linux/amd64, linux/arm64/v8"),
            "{text}"
        );
    }

    #[test]
    fn reads_docker_manifest_lists() {
        let f = Fixture::new();
        let image = |arch: &str| {
            let (layer, diff_id) = f.layer(media::DOCKER_LAYER_TAR_GZIP, arch.as_bytes());
            let config = f.config(media::DOCKER_CONFIG, arch, None, &[diff_id]);
            on(
                f.manifest(media::DOCKER_MANIFEST, config, vec![layer]),
                arch,
                None,
            )
        };
        let amd = image("amd64");
        let arm = image("arm64");
        let list = f.index(media::DOCKER_MANIFEST_LIST, vec![amd, arm.clone()]);
        f.write_index(vec![tagged(list, "image")]);
        let resolved = f.resolve(Some("image"), "linux/arm64").unwrap();
        assert_eq!(resolved.manifest_digest, digest_of(&arm));
        assert_eq!(resolved.manifest_media_type, media::DOCKER_MANIFEST);
        assert_eq!(resolved.layers[0].compression, Compression::Gzip);
    }

    #[test]
    fn plain_manifest_is_taken_whatever_its_arch() {
        let f = Fixture::new();
        f.write_index(vec![tagged(f.image("s390x", None), "image")]);
        let image = f.resolve(Some("image"), "linux/amd64").unwrap();
        assert_eq!(image.platform.architecture, "s390x");
    }

    #[test]
    fn refuses_a_manifest_behind_an_index_descriptor() {
        let f = Fixture::new();
        let mut desc = f.image("amd64", None);
        desc["mediaType"] = json!(media::OCI_INDEX);
        f.write_index(vec![desc]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::MediaTypeMismatch { .. }), "{err}");
    }

    #[test]
    fn refuses_a_manifest_without_own_media_type_behind_an_index_descriptor() {
        let f = Fixture::new();
        let (layer, diff_id) = f.layer(media::OCI_LAYER_TAR, b"x");
        let config = f.config(media::OCI_CONFIG, "amd64", None, &[diff_id]);
        let body = json!({"schemaVersion": 2, "config": config, "layers": [layer]});
        f.write_index(vec![f.doc(media::OCI_INDEX, &body)]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::MediaTypeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("document is a manifest"), "{err}");
    }

    #[test]
    fn refuses_a_document_that_is_both_index_and_manifest() {
        let f = Fixture::new();
        let m = f.image("amd64", None);
        let (layer, _) = f.layer(media::OCI_LAYER_TAR, b"x");
        let body = json!({"schemaVersion": 2, "manifests": [m], "layers": [layer]});
        f.write_index(vec![f.doc(media::OCI_INDEX, &body)]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::AmbiguousDocument { .. }), "{err}");
    }

    #[test]
    fn refuses_diff_id_count_mismatch() {
        let f = Fixture::new();
        let (layer, diff_id) = f.layer(media::OCI_LAYER_TAR, b"x");
        let config = f.config(
            media::OCI_CONFIG,
            "amd64",
            None,
            &[diff_id.clone(), diff_id],
        );
        f.write_index(vec![f.manifest(media::OCI_MANIFEST, config, vec![layer])]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(
                err,
                OciError::DiffIdCount {
                    layers: 1,
                    diff_ids: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_missing_blobs() {
        let f = Fixture::new();
        let m = f.image("amd64", None);
        f.write_index(vec![m.clone()]);
        let image = f.resolve(None, "linux/amd64").unwrap();
        std::fs::remove_file(f.blob_path(&image.layers[1].digest)).unwrap();
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::MissingBlob { ref digest, .. } if *digest == image.layers[1].digest),
            "{err}"
        );
        std::fs::remove_file(f.blob_path(&digest_of(&m))).unwrap();
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            err.to_string().contains(&digest_of(&m).to_string()),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_layer_media_type_naming_the_digest() {
        let f = Fixture::new();
        let (layer, diff_id) = f.layer("application/vnd.docker.image.rootfs.diff.tar", b"x");
        let config = f.config(media::OCI_CONFIG, "amd64", None, &[diff_id]);
        f.write_index(vec![f.manifest(
            media::OCI_MANIFEST,
            config,
            vec![layer.clone()],
        )]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::UnknownLayerMediaType { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&digest_of(&layer).to_string()),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_layer_digests_and_sizes() {
        let f = Fixture::new();
        let (mut layer, diff_id) = f.layer(media::OCI_LAYER_TAR, b"x");
        let good = layer.clone();
        layer["digest"] = json!(layer["digest"].as_str().unwrap().to_uppercase());
        let config = f.config(media::OCI_CONFIG, "amd64", None, &[diff_id]);
        f.write_index(vec![f.manifest(
            media::OCI_MANIFEST,
            config.clone(),
            vec![layer],
        )]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::InvalidDigest { .. }), "{err}");

        let mut layer = good.clone();
        layer["size"] = json!(2);
        f.write_index(vec![f.manifest(
            media::OCI_MANIFEST,
            config.clone(),
            vec![layer],
        )]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(
                err,
                OciError::SizeMismatch {
                    expected: 2,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );

        let mut layer = good;
        layer["digest"] = json!("blake9:abcdef");
        f.write_index(vec![f.manifest(media::OCI_MANIFEST, config, vec![layer])]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::UnsupportedDigestAlgorithm { .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_tampered_manifest_bytes() {
        let f = Fixture::new();
        let m = f.image("amd64", None);
        f.write_index(vec![m.clone()]);
        let path = f.blob_path(&digest_of(&m));
        let original = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            original.replace("\"schemaVersion\":2", "\"schemaVersion\":3"),
        )
        .unwrap();
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::DigestMismatch { ref expected, .. } if *expected == digest_of(&m)),
            "{err}"
        );
    }

    #[test]
    fn refuses_oversized_documents() {
        let f = Fixture::new();
        let mut m = f.image("amd64", None);
        m["size"] = json!(MAX_DOCUMENT_SIZE + 1);
        f.write_index(vec![m]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(
                err,
                OciError::DocumentTooLarge {
                    what: "manifest",
                    ..
                }
            ),
            "{err}"
        );

        let huge = vec![b' '; MAX_DOCUMENT_SIZE as usize + 1];
        std::fs::write(f.path().join("index.json"), huge).unwrap();
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(
            matches!(err, OciError::DocumentTooLarge { what: "index", .. }),
            "{err}"
        );
    }

    #[test]
    fn bounds_index_nesting() {
        let f = Fixture::new();
        let mut desc = on(f.image("amd64", None), "amd64", None);
        for _ in 0..=MAX_INDEX_DEPTH {
            desc = f.index(media::OCI_INDEX, vec![desc]);
        }
        f.write_index(vec![desc]);
        let err = f.resolve(None, "linux/amd64").unwrap_err();
        assert!(matches!(err, OciError::IndexTooDeep { .. }), "{err}");
    }

    #[test]
    fn blob_symlinks_cannot_leave_the_layout() {
        let f = Fixture::new();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let digest = Digest::sha256_of(b"outside");
        std::os::unix::fs::symlink(outside.path(), f.blob_path(&digest)).unwrap();
        f.write_index(vec![]);
        let layout = ImageLayout::open(f.path()).unwrap();
        let err = layout.open_blob(&digest).unwrap_err();
        assert!(
            matches!(
                err,
                OciError::Io {
                    op: "open blob",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageLayout::open(dir.path()).unwrap_err();
        assert!(err.to_string().starts_with("open layout "), "{err}");
    }

    /// Finds `name` on `PATH`; `None` when it is not installed.
    fn find_tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }

    fn run(tool: &Path, args: &[&str]) {
        let out = Command::new(tool).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn opens_layouts_written_by_umoci_and_skopeo() {
        let (Some(umoci), Some(skopeo)) = (find_tool("umoci"), find_tool("skopeo")) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but umoci or skopeo is not installed");
            }
            eprintln!("skipping: umoci or skopeo is not installed");
            return;
        };
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        let src_s = src.to_str().unwrap();
        let payload = work.path().join("hello.txt");
        std::fs::write(&payload, "hello\n").unwrap();
        run(&umoci, &["init", "--layout", src_s]);
        run(&umoci, &["new", "--image", &format!("{src_s}:t")]);
        let host = Platform::host();
        let empty = ImageLayout::open(&src)
            .unwrap()
            .resolve(Some("t"), &host)
            .unwrap();
        assert!(empty.layers.is_empty());
        run(
            &umoci,
            &[
                "insert",
                "--rootless",
                "--image",
                &format!("{src_s}:t"),
                payload.to_str().unwrap(),
                "/hello.txt",
            ],
        );
        let one = ImageLayout::open(&src)
            .unwrap()
            .resolve(Some("t"), &host)
            .unwrap();
        assert_eq!(one.layers.len(), 1);

        let dst = work.path().join("dst");
        let dst_ref = format!("oci:{}:image", dst.display());
        run(
            &skopeo,
            &["copy", "--quiet", &format!("oci:{src_s}:t"), &dst_ref],
        );
        let parsed = LayoutRef::parse(&dst_ref).unwrap();
        let copied = ImageLayout::open(&parsed.dir)
            .unwrap()
            .resolve(parsed.reference.as_deref(), &host)
            .unwrap();
        assert_eq!(copied.layers.len(), 1);
        assert_eq!(copied.layers[0].diff_id, one.layers[0].diff_id);
        assert_eq!(copied.platform, one.platform);
    }
}
