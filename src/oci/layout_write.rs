#![forbid(unsafe_code)]
//! Writing OCI image layouts: verified blobs and `index.json` ref updates.
//!
//! This is the writer beside the [`layout`](super::layout) reader. Blobs
//! arrive from untrusted sources (a registry, another layout), so each one
//! streams into a file inside `blobs/ALG/`, is hashed and counted on the
//! way, and is renamed to its digest only when both the digest and the
//! size match the descriptor. A blob that is already present is verified
//! once before it is trusted; a corrupt one is replaced.
//!
//! An in-progress download is a *partial*, `.partial-HEX`, named by its
//! digest alone and held under an exclusive `flock` while a writer uses
//! it. A pull that was killed leaves it behind; the next writer of that
//! blob, in any process, takes the lock, hashes what is there and carries
//! on from its end (the registry code asks for the rest with `Range`).
//! A partial locked by a live writer is left alone: the second writer
//! uses a private temp file (`.tmp-HEX16-PID-N`) instead.
//!
//! Durability: after a power loss, `index.json` never names a blob whose
//! data or name did not reach the disk. A verified blob is renamed into
//! place at once, so a reader (the unpacker of a pull under way) can start
//! on it, and its fsync runs on a thread of its own; [`LayoutWriter::set_ref`]
//! waits for every fsync this writer started, then fsyncs the blob
//! directories (once, not once per blob), and only then replaces
//! `index.json`. A blob found already present is fsynced when it is
//! verified, so a blob another writer renamed is durable too before this
//! one names it. A name without durable data, which only a power loss
//! before `index.json` can leave, is never trusted: a present blob is
//! always hashed in full before use, and replaced when it fails.
//! `index.json` itself is written to a synced temp file, renamed, and its
//! directory synced.
//!
//! `index.json` is rewritten while holding an exclusive `flock` on
//! `.metalor.lock` inside the layout, so that two pulls into the same
//! layout each add their ref and neither sees a torn file. Entries with
//! other ref names, and unknown fields, are kept as they are.
//!
//! Temp files (`.tmp-…-PID-N`) of a process that died are reclaimed by
//! the next [`LayoutWriter::create`]: one is removed only when its PID is
//! not alive *and* its `flock` (held by every live writer) can be taken,
//! never by age.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use rustix::fs::FlockOperation;
use serde_json::{json, Map, Value};
use std::os::unix::fs::MetadataExt;

use super::digest::{Digest, DigestHasher, DigestVerifier};
use super::error::OciError;
use super::layout::REF_NAME_ANNOTATION;
use super::media;
use crate::cleanup::TempGuard;

/// The lock file that serializes `index.json` updates.
pub const LOCK_FILE: &str = ".metalor.lock";

/// Prefix of private in-flight blob and index files; never a valid digest.
pub const TMP_PREFIX: &str = ".tmp-";

/// Prefix of a resumable partial blob, followed by the digest's hex.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// Distinguishes temp files of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An OCI image layout opened (or created) for writing.
#[derive(Debug, Clone)]
pub struct LayoutWriter {
    dir: PathBuf,
    /// Fsyncs of blobs this writer (or a clone) renamed into place.
    syncs: Arc<BlobSyncs>,
}

/// Blob fsyncs running at once. A writer that starts one more first waits
/// for the oldest, so an image with many layers does not start a thread
/// per layer; four keep the download from waiting on a disk that keeps up.
const SYNC_THREADS: usize = 4;

/// One blob fsync on its thread: the blob's path, for the error.
type BlobSync = (PathBuf, JoinHandle<io::Result<()>>);

/// Blob fsyncs under way, each on a thread of its own (at most
/// [`SYNC_THREADS`]): started when a blob is renamed into place, waited for
/// before `index.json` names it.
#[derive(Debug, Default)]
struct BlobSyncs(Mutex<Syncs>);

#[derive(Debug, Default)]
struct Syncs {
    running: VecDeque<BlobSync>,
    /// The first failure of an fsync already waited for, naming its blob.
    failure: Option<OciError>,
}

impl BlobSyncs {
    /// Fsyncs `file`, the blob now at `path`, in the background (or here,
    /// if no thread can be started), once fewer than [`SYNC_THREADS`] run.
    fn start(&self, path: PathBuf, file: File) -> Result<(), OciError> {
        let oldest = {
            let mut syncs = self.lock();
            if syncs.running.len() < SYNC_THREADS {
                None
            } else {
                syncs.running.pop_front()
            }
        };
        if let Some(Err(e)) = oldest.map(joined) {
            self.lock().failure.get_or_insert(e);
        }
        let file = Arc::new(file);
        let syncing = Arc::clone(&file);
        match std::thread::Builder::new()
            .name("blob-fsync".into())
            .spawn(move || syncing.sync_all())
        {
            Ok(handle) => {
                self.lock().running.push_back((path, handle));
                Ok(())
            }
            Err(_) => synced(&path, file.sync_all()),
        }
    }

    /// Waits for every fsync started so far; the first failure, naming
    /// its blob, is the error.
    fn wait(&self) -> Result<(), OciError> {
        let (running, mut failure) = {
            let mut syncs = self.lock();
            (std::mem::take(&mut syncs.running), syncs.failure.take())
        };
        for sync in running {
            if let Err(e) = joined(sync) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn lock(&self) -> MutexGuard<'_, Syncs> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waits for one fsync thread.
fn joined((path, handle): BlobSync) -> Result<(), OciError> {
    let result = handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")));
    synced(&path, result)
}

/// The outcome of the blob at `path`'s fsync; a failure names the blob.
fn synced(path: &Path, result: io::Result<()>) -> Result<(), OciError> {
    result.map_err(|e| io_err("sync blob", path, e))?;
    note(format!("sync blob {}", file_name(path)));
    Ok(())
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
            syncs: Arc::default(),
        };
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| io_err("create layout", &blobs, e))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let body = br#"{"imageLayoutVersion":"1.0.0"}"#;
            writer.write_atomic(&marker, body, "write oci-layout")?;
        }
        writer.reclaim_temporaries();
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
    /// is read and hashed in full (once per pull), and fsynced, since its
    /// writer may not have waited for that yet; a blob that fails the
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
            let verifier = DigestVerifier::new(io::BufReader::new(&file), digest.clone(), size)?;
            match verifier.finish() {
                Ok(_) => {
                    file.sync_all().map_err(|e| io_err("sync blob", &path, e))?;
                    note(format!("sync present blob {}", digest.hex()));
                    return Ok(true);
                }
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

    /// Starts a verified blob write: into the blob's partial file,
    /// resuming what an earlier writer left there, or into a private temp
    /// file when another live writer holds the partial.
    pub fn begin_blob(&self, digest: &Digest, size: u64) -> Result<BlobWriter, OciError> {
        let dir = self.dir.join("blobs").join(digest.algorithm());
        fs::create_dir_all(&dir).map_err(|e| io_err("create blob directory", &dir, e))?;
        let partial = dir.join(format!("{PARTIAL_PREFIX}{}", digest.hex()));
        if let Some((file, count, hasher)) = lock_partial(&partial, digest, size)? {
            return Ok(self.blob_writer(file, partial, digest, size, hasher, count, true));
        }
        let tmp = dir.join(tmp_name(digest.hex()));
        let file = create_locked(&tmp).map_err(|e| io_err("create temp blob", &tmp, e))?;
        let hasher = digest.hasher()?;
        Ok(self.blob_writer(file, tmp, digest, size, hasher, 0, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn blob_writer(
        &self,
        file: File,
        tmp: PathBuf,
        digest: &Digest,
        size: u64,
        hasher: DigestHasher,
        count: u64,
        partial: bool,
    ) -> BlobWriter {
        BlobWriter {
            file: Some(file),
            tmp: tmp.clone(),
            dest: self.blob_path(digest),
            digest: digest.clone(),
            size,
            hasher: Some(hasher),
            count,
            resumed: count,
            partial,
            syncs: Arc::clone(&self.syncs),
            // A shared partial outlives an interrupt on purpose: the next
            // pull resumes it.
            _interrupt_guard: (!partial).then(|| TempGuard::new(&tmp)),
        }
    }

    /// Removes the `.tmp-` files of writers that died: the PID in the name
    /// is gone and nobody holds the file's lock. Best effort: a file that
    /// cannot be checked stays.
    fn reclaim_temporaries(&self) {
        let mut dirs = vec![self.dir.clone()];
        if let Ok(entries) = fs::read_dir(self.dir.join("blobs")) {
            dirs.extend(entries.flatten().map(|e| e.path()));
        }
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(tmp_owner) else {
                    continue;
                };
                if pid_alive(pid) {
                    continue;
                }
                let path = entry.path();
                let Ok(file) = OpenOptions::new().read(true).open(&path) else {
                    continue;
                };
                let unlocked = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive);
                if unlocked.is_ok() {
                    let _ = fs::remove_file(&path);
                }
            }
        }
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

    /// Starts a blob whose digest is known only once it is written (a
    /// layer being created): a private temp file in `blobs/sha256`, locked
    /// like every temp file and removed if the [`NewBlob`] is dropped
    /// before [`NewBlob::commit`].
    pub fn begin_new_blob(&self) -> Result<NewBlob, OciError> {
        let dir = self.dir.join("blobs/sha256");
        let tmp = dir.join(tmp_name("new"));
        let guard = TempGuard::new(&tmp);
        let file = create_locked(&tmp).map_err(|e| io_err("create temp blob", &tmp, e))?;
        Ok(NewBlob {
            file: Some(file),
            tmp,
            dir,
            _interrupt_guard: guard,
        })
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
        self.sync_blob_dirs()?;
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

    /// Waits for the fsyncs of the blobs this writer renamed into place,
    /// then fsyncs every `blobs/ALG` directory, so the data and the names
    /// of the blobs written so far are on disk before an `index.json` that
    /// names them. One call per ref update covers every blob of a pull.
    pub fn sync_blob_dirs(&self) -> Result<(), OciError> {
        self.syncs.wait()?;
        let blobs = self.dir.join("blobs");
        let entries =
            fs::read_dir(&blobs).map_err(|e| io_err("read blob directories", &blobs, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| io_err("read blob directories", &blobs, e))?
                .path();
            if path.is_dir() {
                sync_dir(&path)?;
            }
        }
        Ok(())
    }

    /// Writes a small file through a synced temp file and a rename, then
    /// syncs the directory so the new name is durable too.
    fn write_atomic(&self, path: &Path, bytes: &[u8], op: &'static str) -> Result<(), OciError> {
        let tmp = self.dir.join(tmp_name("file"));
        let _interrupt_guard = TempGuard::new(&tmp);
        let result = (|| {
            let mut file = create_locked(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            note(format!("rename {}", file_name(path)));
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(op, path, e));
        }
        sync_dir(&self.dir)
    }
}

/// Opens (or creates) the partial at `path` and takes its lock without
/// waiting: `None` when a live writer holds it. What it holds already is
/// hashed, so the download continues from its end; a partial longer than
/// the blob is emptied.
fn lock_partial(
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<Option<(File, u64, DigestHasher)>, OciError> {
    let err = |e| io_err("open partial blob", path, e);
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(io_err("lock partial blob", path, e.into())),
        }
        // Between the open and the lock, the writer that held it may have
        // renamed it into place; the lock is then on the finished blob.
        let held = file.metadata().map_err(err)?;
        match fs::symlink_metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(e)),
        }
        if held.len() > size {
            file.set_len(0).map_err(err)?;
        }
        let mut hasher = digest.hasher()?;
        file.seek(io::SeekFrom::Start(0)).map_err(err)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut count = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    count += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        return Ok(Some((file, count, hasher)));
    }
}

/// Creates a new file and takes its lock, which tells
/// [`LayoutWriter::reclaim_temporaries`] that its writer is alive.
fn create_locked(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
    Ok(file)
}

/// The PID in a temp file name `.tmp-STEM-PID-N`.
fn tmp_owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _n: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Whether a process with this PID exists (EPERM: it does, as another user's).
pub(crate) fn pid_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return true;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Fsyncs a directory, making the names in it durable.
fn sync_dir(dir: &Path) -> Result<(), OciError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync directory", dir, e))?;
    note(format!("sync dir {}", file_name(dir)));
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
thread_local! {
    /// What the durability steps did, in order, for the tests.
    static EVENTS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records a durability step (tests only; nothing in a release build).
fn note(_event: String) {
    #[cfg(test)]
    EVENTS.with(|e| e.borrow_mut().push(_event));
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
/// the file becomes the blob only in [`BlobWriter::commit`]. Dropping an
/// uncommitted writer keeps a partial (a later pull resumes it) and
/// removes a private temp file; a blob that fails verification is removed
/// either way.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    digest: Digest,
    size: u64,
    hasher: Option<DigestHasher>,
    count: u64,
    /// Bytes found in the partial when the writer started.
    resumed: u64,
    /// Whether `tmp` is the digest's shared partial.
    partial: bool,
    /// Where [`BlobWriter::commit`] leaves the blob's fsync.
    syncs: Arc<BlobSyncs>,
    /// Registers a private temp file for removal on SIGINT/SIGTERM; a
    /// field, so it unregisters after `Drop` has removed the file.
    _interrupt_guard: Option<TempGuard>,
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

    /// Bytes an earlier, interrupted writer had left in the partial (0
    /// for a fresh start, or after [`BlobWriter::restart`]).
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Whether the bytes so far are the whole blob: its size, its digest.
    pub fn is_intact(&self) -> bool {
        self.count == self.size
            && self
                .hasher
                .clone()
                .is_some_and(|h| h.finish_hex() == self.digest.hex())
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
        self.resumed = 0;
        Ok(())
    }

    /// Checks size and digest, then renames the file into place and
    /// starts its fsync in the background. On a mismatch the file is
    /// removed and nothing appears in the layout. The data and the
    /// directory entry are durable once [`LayoutWriter::sync_blob_dirs`]
    /// returns, which `set_ref` calls before `index.json` names the blob.
    pub fn commit(mut self) -> Result<(), OciError> {
        let mismatch = if self.count != self.size {
            Some(OciError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                found: self.count,
            })
        } else {
            let hasher = self.hasher.take().expect("hasher present until commit");
            let found = hasher.finish_hex();
            (found != self.digest.hex()).then(|| OciError::DigestMismatch {
                expected: self.digest.clone(),
                found: format!("{}:{found}", self.digest.algorithm()),
            })
        };
        if let Some(err) = mismatch {
            self.partial = false;
            return Err(err);
        }
        let file = self.file.take().expect("file present until commit");
        fs::rename(&self.tmp, &self.dest).map_err(|e| io_err("rename blob", &self.dest, e))?;
        note(format!("rename {}", file_name(&self.dest)));
        // The lock goes with the file, after the rename (when its fsync is
        // done): a writer waiting on the partial then finds it gone and
        // starts a fresh one.
        self.syncs.start(self.dest.clone(), file)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let unfinished = self.file.is_some() || self.hasher.is_some();
        // An empty partial saves nothing; removing it under the lock we
        // still hold is safe.
        if unfinished && (!self.partial || self.count == 0) {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A blob being created by this process, named once its digest is known
/// (see [`LayoutWriter::begin_new_blob`]).
#[derive(Debug)]
pub struct NewBlob {
    file: Option<File>,
    tmp: PathBuf,
    dir: PathBuf,
    _interrupt_guard: TempGuard,
}

impl NewBlob {
    /// The temp file to write the blob's bytes into.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Fsyncs the file and renames it to `digest`, which the caller
    /// computed over exactly the bytes it wrote (a sha256 digest).
    pub fn commit(mut self, digest: &Digest) -> Result<(), OciError> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all()
            .map_err(|e| io_err("sync blob", &self.tmp, e))?;
        let dest = self.dir.join(digest.hex());
        if let Err(e) = fs::rename(&self.tmp, &dest) {
            let _ = fs::remove_file(&self.tmp);
            return Err(io_err("rename blob", &dest, e));
        }
        Ok(())
    }
}

impl Drop for NewBlob {
    fn drop(&mut self) {
        if self.file.is_some() {
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
    fn new_blob_lands_under_its_digest_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        let mut blob = w.begin_new_blob().unwrap();
        blob.file().write_all(b"made here").unwrap();
        let d = Digest::sha256_of(b"made here");
        blob.commit(&d).unwrap();
        assert!(w.has_verified_blob(&d, 9).unwrap());
        let mut dropped = w.begin_new_blob().unwrap();
        dropped.file().write_all(b"abandoned").unwrap();
        drop(dropped);
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

    #[test]
    fn blob_data_and_names_are_synced_before_index_json() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        EVENTS.with(|e| e.borrow_mut().clear());
        let data = b"manifest bytes";
        w.put_blob(&Digest::sha256_of(data), data).unwrap();
        w.set_ref("a", &target(data)).unwrap();
        let hex = Digest::sha256_of(data).hex().to_owned();
        let events = EVENTS.with(|e| e.borrow().clone());
        assert_eq!(
            events,
            [
                format!("rename {hex}"),
                format!("sync blob {hex}"),
                "sync dir sha256".to_owned(),
                "rename index.json".to_owned(),
                format!("sync dir {}", file_name(dir.path())),
            ]
        );
    }

    #[test]
    fn blob_fsync_threads_are_bounded_and_all_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        EVENTS.with(|e| e.borrow_mut().clear());
        let blobs: Vec<Vec<u8>> = (0..3 * SYNC_THREADS).map(|i| vec![i as u8; 64]).collect();
        for blob in &blobs {
            w.put_blob(&Digest::sha256_of(blob), blob).unwrap();
            assert!(w.syncs.lock().running.len() <= SYNC_THREADS);
        }
        w.set_ref("a", &target(&blobs[0])).unwrap();
        let events = EVENTS.with(|e| e.borrow().clone());
        let dir_sync = events.iter().position(|e| e == "sync dir sha256").unwrap();
        for blob in &blobs {
            let synced = format!("sync blob {}", Digest::sha256_of(blob).hex());
            let at = events.iter().position(|e| *e == synced);
            assert!(
                at.is_some_and(|at| at < dir_sync),
                "{synced} before the dir sync"
            );
        }
    }

    #[test]
    fn a_blob_another_writer_renamed_is_synced_before_this_one_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = LayoutWriter::create(dir.path()).unwrap();
        let data = b"config bytes";
        let digest = Digest::sha256_of(data);
        first.put_blob(&digest, data).unwrap();
        // `first` has not waited for its fsync; `second` finds the blob.
        let second = LayoutWriter::create(dir.path()).unwrap();
        EVENTS.with(|e| e.borrow_mut().clear());
        second.put_blob(&digest, data).unwrap();
        second.set_ref("a", &target(data)).unwrap();
        let events = EVENTS.with(|e| e.borrow().clone());
        assert_eq!(events[0], format!("sync present blob {}", digest.hex()));
        assert_eq!(events[1], "sync dir sha256");
        first.sync_blob_dirs().unwrap();
    }

    #[test]
    fn a_partial_is_resumed_and_a_locked_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let w = LayoutWriter::create(dir.path()).unwrap();
        let data = b"0123456789".to_vec();
        let d = Digest::sha256_of(&data);
        let mut first = w.begin_blob(&d, 10).unwrap();
        first.write(&data[..4]).unwrap();
        // Held by `first`: a second writer gets a private temp file.
        let second = w.begin_blob(&d, 10).unwrap();
        assert_eq!(second.written(), 0);
        drop(second);
        drop(first);
        assert!(tmp_files(dir.path()).is_empty());
        let mut resumed = w.begin_blob(&d, 10).unwrap();
        assert_eq!((resumed.written(), resumed.resumed()), (4, 4));
        resumed.write(&data[4..]).unwrap();
        resumed.commit().unwrap();
        assert!(w.has_verified_blob(&d, 10).unwrap());
    }
}
