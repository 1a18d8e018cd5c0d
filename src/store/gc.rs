//! Listing, untagging and pruning. `rmi` only removes the reference;
//! `prune` frees what no reference needs: trees no run holds, blobs no
//! manifest names, partial downloads, and what crashed makers left in
//! `staging/`. Both hold the store lock exclusive, so no pull or maker is
//! running while they look.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::lock::{LockMode, StoreLock};
use super::name::{decode, store_name};
use super::remove_path_if_exists;
use super::{Store, StoreError};
use crate::oci::layout::REF_NAME_ANNOTATION;
use crate::oci::{Digest, LayoutWriter};

/// One row of `metalor images`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageSummary {
    /// The reference, normalized (or the raw ref name, for one this
    /// store did not name).
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Bytes of its blobs (manifest, config, layers) as stored.
    pub size: u64,
    /// Whether its pristine tree is there.
    pub unpacked: bool,
}

/// What `prune` freed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Trees removed, by key.
    pub trees: Vec<String>,
    /// Trees kept because a run holds them.
    pub trees_in_use: Vec<String>,
    /// Blobs removed.
    pub blobs: usize,
    /// Partial downloads and staging leftovers removed.
    pub partials: usize,
    /// Bytes freed (allocated blocks, hard links counted once).
    pub bytes: u64,
}

fn index_entries(layout: &Path) -> Result<Vec<Value>, StoreError> {
    let path = layout.join("index.json");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", &path, e)),
    };
    let index: Value = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::io(
            "parse",
            &path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok(index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn ref_of(entry: &Value) -> Option<&str> {
    entry
        .pointer("/annotations")?
        .get(REF_NAME_ANNOTATION)?
        .as_str()
}

/// Whether the layout's `index.json` has the ref.
pub(super) fn has_ref(layout: &Path, ref_name: &str) -> Result<bool, StoreError> {
    Ok(index_entries(layout)?
        .iter()
        .any(|e| ref_of(e) == Some(ref_name)))
}

impl Store {
    /// The images of the store, in `index.json` order.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let _store = self.lock(LockMode::Shared)?;
        let layout = self.layout_dir();
        let mut rows = Vec::new();
        for entry in index_entries(&layout)? {
            let (Some(name), Some(digest)) =
                (ref_of(&entry), entry.get("digest").and_then(Value::as_str))
            else {
                continue;
            };
            let mut seen = HashSet::new();
            let size = match Digest::parse(digest) {
                Ok(d) => {
                    reachable(&layout, &d, &mut seen)?;
                    seen.iter().map(|d| blob_size(&layout, d)).sum()
                }
                Err(_) => 0,
            };
            let unpacked = Digest::parse(digest)
                .map(|d| self.path().join("trees").join(Store::tree_key(&d)).is_dir())
                .unwrap_or(false);
            rows.push(ImageSummary {
                reference: decode(name).unwrap_or_else(|| name.to_owned()),
                digest: digest.to_owned(),
                size,
                unpacked,
            });
        }
        Ok(rows)
    }

    /// Removes `reference` from the store's index; returns the manifest it
    /// named. Its blobs and tree stay until [`Store::prune`].
    pub fn remove(&self, reference: &str) -> Result<String, StoreError> {
        let name = store_name(reference)?;
        let _store = self.lock(LockMode::Exclusive)?;
        let layout = self.layout_dir();
        let _layout = LayoutWriter::create(&layout)?.lock()?;
        let mut entries = index_entries(&layout)?;
        let Some(at) = entries
            .iter()
            .position(|e| ref_of(e) == Some(&name.ref_name))
        else {
            return Err(self.not_in_store(&name));
        };
        let removed = entries.remove(at);
        write_index(&layout, entries)?;
        Ok(removed
            .get("digest")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned())
    }

    /// Frees what no reference needs; see the module doc.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let _store = self.lock(LockMode::Exclusive)?;
        let layout = self.layout_dir();
        let mut needed = HashSet::new();
        for entry in index_entries(&layout)? {
            if let Some(d) = entry.get("digest").and_then(Value::as_str) {
                if let Ok(d) = Digest::parse(d) {
                    reachable(&layout, &d, &mut needed)?;
                }
            }
        }
        let mut report = PruneReport::default();
        for dir in ["staging", "trash"] {
            for path in children(&self.path().join(dir))? {
                report.bytes += remove_counted(&path)?;
                report.partials += 1;
            }
        }
        self.prune_trees(&needed, &mut report)?;
        self.prune_blobs(&needed, &mut report)?;
        Ok(report)
    }

    fn prune_trees(
        &self,
        needed: &HashSet<Digest>,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        let keep: HashSet<String> = needed.iter().map(Store::tree_key).collect();
        for path in children(&self.path().join("trees"))? {
            let key = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if keep.contains(&key) {
                continue;
            }
            let lock_path = self.path().join("locks").join(format!("tree-{key}"));
            let Some(_lock) = StoreLock::take(&lock_path, LockMode::TryExclusive)? else {
                report.trees_in_use.push(key);
                continue;
            };
            // Renamed aside first, so a crash mid-removal leaves trash,
            // not a half tree under `trees/`.
            let trash = self.path().join("trash").join(&key);
            fs::rename(&path, &trash).map_err(|e| StoreError::io("rename", &path, e))?;
            report.bytes += remove_counted(&trash)?;
            for leftover in [self.path().join("mnt").join(&key), lock_path] {
                remove_path_if_exists(&leftover)
                    .map_err(|e| StoreError::io("remove", &leftover, e))?;
            }
            report.trees.push(key);
        }
        Ok(())
    }

    fn prune_blobs(
        &self,
        needed: &HashSet<Digest>,
        report: &mut PruneReport,
    ) -> Result<(), StoreError> {
        let blobs = self.layout_dir().join("blobs/sha256");
        for path in children(&blobs)? {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let digest = Digest::parse(&format!("sha256:{name}")).ok();
            if digest.as_ref().is_some_and(|d| needed.contains(d)) {
                continue;
            }
            report.bytes += remove_counted(&path)?;
            match digest {
                Some(_) => report.blobs += 1,
                None => report.partials += 1,
            }
        }
        Ok(())
    }
}

/// Adds `digest` and every blob it names (through indexes and
/// manifests) to `seen`. A missing blob is skipped: nothing to keep.
fn reachable(layout: &Path, digest: &Digest, seen: &mut HashSet<Digest>) -> Result<(), StoreError> {
    if !seen.insert(digest.clone()) {
        return Ok(());
    }
    let path = blob_path(layout, digest);
    let Ok(bytes) = fs::read(&path) else {
        return Ok(());
    };
    let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(());
    };
    let mut named: Vec<&Value> = Vec::new();
    for key in ["manifests", "layers"] {
        if let Some(list) = doc.get(key).and_then(Value::as_array) {
            named.extend(list);
        }
    }
    named.extend(doc.get("config"));
    for descriptor in named {
        if let Some(d) = descriptor
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| Digest::parse(d).ok())
        {
            if doc.get("manifests").is_some() {
                reachable(layout, &d, seen)?;
            } else {
                seen.insert(d);
            }
        }
    }
    Ok(())
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm())
        .join(digest.hex())
}

fn blob_size(layout: &Path, digest: &Digest) -> u64 {
    fs::symlink_metadata(blob_path(layout, digest)).map_or(0, |m| m.len())
}

/// Rewrites `index.json` with `entries`, through a temp file and a rename.
fn write_index(layout: &Path, entries: Vec<Value>) -> Result<(), StoreError> {
    let path = layout.join("index.json");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let tmp = layout.join(format!(".tmp-index-rmi-{}", std::process::id()));
    let bytes = serde_json::to_vec(&index).expect("a JSON value serializes");
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| StoreError::io("write", &path, e))
}

fn children(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", dir, e)),
    };
    listing
        .map(|entry| {
            entry
                .map(|e| e.path())
                .map_err(|e| StoreError::io("read", dir, e))
        })
        .collect()
}

/// Removes `path` and returns the bytes its blocks took.
fn remove_counted(path: &Path) -> Result<u64, StoreError> {
    let bytes = allocated(path, &mut HashSet::new());
    remove_path_if_exists(path).map_err(|e| StoreError::io("remove", path, e))?;
    Ok(bytes)
}

/// Allocated bytes under `path`, not following symlinks; a file with
/// several links counts once.
fn allocated(path: &Path, inodes: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !inodes.insert((meta.dev(), meta.ino())) {
        return 0;
    }
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(listing) = fs::read_dir(path) else {
        return own;
    };
    own + listing
        .flatten()
        .map(|entry| allocated(&entry.path(), inodes))
        .sum::<u64>()
}
