#![forbid(unsafe_code)]
//! Writing OCI image layouts: verified blobs and `index.json` ref updates.
//!
//! This is the writer beside the [`layout`](super::layout) reader. Blobs
//! arrive from untrusted sources (a registry, another layout), so each one
//! streams into a temp file inside `blobs/ALG/` (`.tmp-*`), is hashed and
//! counted on the way, and is renamed to its digest only when both the
//! digest and the size match the descriptor. A blob that is already present
//! is verified once before it is trusted; a corrupt one is replaced.
//!
//! `index.json` is rewritten with a temp file and a rename while holding an
//! exclusive `flock` on `.metalor.lock` inside the layout, so that two
//! pulls into the same layout each add their ref and neither sees a torn
//! file. Entries with other ref names, and unknown fields, are kept as they
//! are.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use super::digest::{Digest, DigestHasher, DigestVerifier};
use super::error::OciError;
use super::layout::REF_NAME_ANNOTATION;
use super::media;

/// The lock file that serializes `index.json` updates.
pub const LOCK_FILE: &str = ".metalor.lock";

/// Prefix of in-flight blob and index files; never a valid digest.
const TMP_PREFIX: &str = ".tmp-";

/// Distinguishes temp files of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An OCI image layout opened (or created) for writing.
#[derive(Debug, Clone)]
pub struct LayoutWriter {
    dir: PathBuf,
}

/// The descriptor `index.json` gets for a ref: what the ref points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTarget {
    /// Media type of the manifest or index.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Holds the layout's exclusive lock until dropped.
#[derive(Debug)]
pub struct LayoutLock {
    _file: File,
}

impl LayoutWriter {
    /// Opens `dir` as a layout, creating the directory, `oci-layout` and
    /// `blobs/sha256` when missing. An existing `index.json` is kept.
    pub fn create(dir: &Path) -> Result<LayoutWriter, OciError> {
        let writer = LayoutWriter {
            dir: dir.to_path_buf(),
        };
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| io_err("create layout", &blobs, e))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let body = br#"{"imageLayoutVersion":"1.0.0"}"#;
            writer.write_atomic(&marker, body, "write oci-layout")?;
        }
        Ok(writer)
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the blob named `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Whether a blob with this digest and size is present and intact. It
    /// is read and hashed in full (once per pull); a blob that fails the
    /// check is removed, so the caller fetches it again.
    pub fn has_verified_blob(&self, digest: &Digest, size: u64) -> Result<bool, OciError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("open blob", &path, e)),
        };
        let meta = file.metadata().map_err(|e| io_err("stat blob", &path, e))?;
        if meta.is_file() && meta.len() == size {
            let verifier = DigestVerifier::new(io::BufReader::new(file), digest.clone(), size)?;
            match verifier.finish() {
                Ok(_) => return Ok(true),
                Err(OciError::Io { source, .. }) => return Err(io_err("read blob", &path, source)),
                Err(_) => {}
            }
        }
        if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(|e| io_err("remove corrupt blob", &path, e))?;
        Ok(false)
    }

    /// Starts a verified blob write into a temp file beside its final name.
    pub fn begin_blob(&self, digest: &Digest, size: u64) -> Result<BlobWriter, OciError> {
        let hasher = digest.hasher()?;
        let dir = self.dir.join("blobs").join(digest.algorithm());
        fs::create_dir_all(&dir).map_err(|e| io_err("create blob directory", &dir, e))?;
        let tmp = dir.join(tmp_name(digest.hex()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_err("create temp blob", &tmp, e))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: self.blob_path(digest),
            digest: digest.clone(),
            size,
            hasher: Some(hasher),
            count: 0,
        })
    }

    /// Writes a small blob (a manifest or config) held in memory, after
    /// checking it against `digest`; a present, intact copy is kept.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), OciError> {
        digest.verify_bytes(bytes, bytes.len() as u64)?;
        if self.has_verified_blob(digest, bytes.len() as u64)? {
            return Ok(());
        }
        let mut writer = self.begin_blob(digest, bytes.len() as u64)?;
        writer.write(bytes)?;
        writer.commit()
    }

    /// Copies a blob from a reader (another layout), verifying it.
    pub fn copy_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut from: impl Read,
    ) -> Result<(), OciError> {
        if self.has_verified_blob(digest, size)? {
            return Ok(());
        }
        let mut writer = self.begin_blob(digest, size)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read source blob", Path::new(digest.as_str()), e)),
            };
            writer.write(&buf[..n])?;
        }
        writer.commit()
    }

    /// Takes the layout's exclusive lock (blocking until it is free).
    pub fn lock(&self) -> Result<LayoutLock, OciError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("open layout lock", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock layout", &path, e.into()))?;
        Ok(LayoutLock { _file: file })
    }

    /// Points ref `name` at `target` in `index.json`, replacing an entry
    /// with the same ref name and keeping every other entry. The target's
    /// blob must already be in the layout, so the index never names a
    /// missing manifest.
    pub fn set_ref(&self, name: &str, target: &RefTarget) -> Result<(), OciError> {
        let _lock = self.lock()?;
        let path = self.dir.join("index.json");
        let mut index = match fs::read(&path) {
            Ok(bytes) => parse_index(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(io_err("read index", &path, e)),
        };
        index.insert("schemaVersion".into(), json!(2));
        index.insert("mediaType".into(), json!(media::OCI_INDEX));
        let mut manifests = match index.remove("manifests") {
            Some(Value::Array(list)) => list,
            _ => Vec::new(),
        };
        manifests.retain(|entry| {
            entry
                .pointer("/annotations")
                .and_then(|a| a.get(REF_NAME_ANNOTATION))
                .and_then(Value::as_str)
                != Some(name)
        });
        manifests.push(json!({
            "mediaType": target.media_type,
            "digest": target.digest.as_str(),
            "size": target.size,
            "annotations": { REF_NAME_ANNOTATION: name },
        }));
        index.insert("manifests".into(), Value::Array(manifests));
        let bytes = serde_json::to_vec(&Value::Object(index)).map_err(|source| OciError::Json {
            what: "index",
            name: path.display().to_string(),
            source,
        })?;
        self.write_atomic(&path, &bytes, "write index")
    }

    /// Writes a small file through a synced temp file and a rename.
    fn write_atomic(&self, path: &Path, bytes: &[u8], op: &'static str) -> Result<(), OciError> {
        let tmp = self.dir.join(tmp_name("file"));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(op, path, e));
        }
        Ok(())
    }
}

/// Parses an existing `index.json` into its top-level object.
fn parse_index(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, OciError> {
    let json_err = |source| OciError::Json {
        what: "index",
        name: path.display().to_string(),
        source,
    };
    match serde_json::from_slice(bytes).map_err(json_err)? {
        Value::Object(map) => Ok(map),
        _ => Err(OciError::MediaTypeMismatch {
            name: path.display().to_string(),
            expected: media::OCI_INDEX.to_owned(),
            document: "not a JSON object".to_owned(),
        }),
    }
}

/// A unique temp file name for this process.
fn tmp_name(stem: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let short = &stem[..stem.len().min(16)];
    format!("{TMP_PREFIX}{short}-{}-{n}", std::process::id())
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> OciError {
    OciError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A blob being written: bytes are hashed and counted as they arrive, and
/// the temp file becomes the blob only in [`BlobWriter::commit`]. Dropping
/// an uncommitted writer removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    size: u64,
    hasher: Option<DigestHasher>,
    count: u64,
}

impl BlobWriter {
    /// Appends bytes. More bytes than the descriptor's size is an error at
    /// once, so a lying server cannot fill the disk.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), OciError> {
        let count = self.count + bytes.len() as u64;
        if count > self.size {
            return Err(OciError::BlobTooLong {
                digest: self.digest.clone(),
                expected: self.size,
            });
        }
        let (Some(file), Some(hasher)) = (self.file.as_mut(), self.hasher.as_mut()) else {
            return Err(io_err(
                "write temp blob",
                &self.tmp,
                io::Error::other("writer already finished"),
            ));
        };
        file.write_all(bytes)
            .map_err(|e| io_err("write temp blob", &self.tmp, e))?;
        hasher.update(bytes);
        self.count = count;
        Ok(())
    }

    /// Bytes written so far: the offset a resumed download starts at.
    pub fn written(&self) -> u64 {
        self.count
    }

    /// The size the blob must have.
    pub fn expected_size(&self) -> u64 {
        self.size
    }

    /// The digest the blob must have.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Drops what was written and starts over (a server ignored a `Range`
    /// request and sent the whole blob).
    pub fn restart(&mut self) -> Result<(), OciError> {
        let file = self.file.as_mut().ok_or_else(|| {
            io_err(
                "truncate temp blob",
                &self.tmp,
                io::Error::other("writer finished"),
            )
        })?;
        file.set_len(0)
            .and_then(|()| io::Seek::seek(file, io::SeekFrom::Start(0)).map(drop))
            .map_err(|e| io_err("truncate temp blob", &self.tmp, e))?;
        self.hasher = Some(self.digest.hasher()?);
        self.count = 0;
        Ok(())
    }

    /// Checks size and digest, then renames the temp file into place. On a
    /// mismatch the temp file is removed and nothing appears in the layout.
    pub fn commit(mut self) -> Result<(), OciError> {
        if self.count != self.size {
            return Err(OciError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                found: self.count,
            });
        }
        let hasher = self.hasher.take().expect("hasher present until commit");
        let found = hasher.finish_hex();
        if found != self.digest.hex() {
            return Err(OciError::DigestMismatch {
                expected: self.digest.clone(),
                found: format!("{}:{found}", self.digest.algorithm()),
            });
        }
        drop(self.file.take());
        fs::rename(&self.tmp, &self.dest).map_err(|e| io_err("rename blob", &self.dest, e))?;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.hasher.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(bytes: &[u8]) -> RefTarget {
        RefTarget {
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn tmp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect()
    }

    #[test]
    fn verified_blob_lands_and_bad_blob_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        let data = b"layer bytes".to_vec();
        let d = Digest::sha256_of(&data);
        let mut bw = w.begin_blob(&d, data.len() as u64).unwrap();
        bw.write(&data).unwrap();
        bw.commit().unwrap();
        assert!(w.has_verified_blob(&d, data.len() as u64).unwrap());

        let other = Digest::sha256_of(b"other bytes");
        let mut bw = w.begin_blob(&other, data.len() as u64).unwrap();
        bw.write(&data).unwrap();
        assert!(matches!(bw.commit(), Err(OciError::DigestMismatch { .. })));
        assert!(!w.blob_path(&other).exists());

        let mut bw = w.begin_blob(&other, 3).unwrap();
        assert!(matches!(bw.write(&data), Err(OciError::BlobTooLong { .. })));
        drop(bw);
        assert!(tmp_files(dir.path()).is_empty());
    }

    #[test]
    fn corrupt_present_blob_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        let d = Digest::sha256_of(b"good");
        fs::write(w.blob_path(&d), b"evil").unwrap();
        assert!(!w.has_verified_blob(&d, 4).unwrap());
        assert!(!w.blob_path(&d).exists());
        w.put_blob(&d, b"good").unwrap();
        assert!(w.has_verified_blob(&d, 4).unwrap());
    }

    #[test]
    fn set_ref_replaces_same_name_and_keeps_others() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        w.set_ref("a", &target(b"1")).unwrap();
        w.set_ref("b", &target(b"2")).unwrap();
        w.set_ref("a", &target(b"3")).unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["digest"], Digest::sha256_of(b"3").as_str());
        assert_eq!(entries[1]["annotations"][REF_NAME_ANNOTATION], "a");
        assert_eq!(index["schemaVersion"], 2);
    }

    #[test]
    fn concurrent_set_ref_keeps_every_ref() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let w = w.clone();
                s.spawn(move || {
                    for i in 0..10 {
                        let name = format!("t{t}-{i}");
                        w.set_ref(&name, &target(name.as_bytes())).unwrap();
                    }
                });
            }
        });
        let index: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 40);
    }
}
