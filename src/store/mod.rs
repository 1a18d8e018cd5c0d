//! A local image store: blobs in one OCI image layout, each image unpacked
//! once into a pristine tree keyed by its manifest digest, and runs on a
//! copy-on-write overlay of that tree.
//!
//! The shape follows containers/storage and containerd's overlay
//! snapshotter, kept to what a flattened image needs:
//!
//! ```text
//! STORE/metalor-store.json   version marker; a store without it is refused
//! STORE/lock                 store-wide flock (see `lock`)
//! STORE/oci/                 the OCI layout: skopeo and umoci read oci:STORE/oci:NAME
//! STORE/trees/sha256-HEX/    pristine trees, committed by rename, never written after
//! STORE/staging/sha256-HEX/  a tree being made (containerd's `new-` snapshot dirs)
//! STORE/locks/               per-reference and per-tree lock files
//! STORE/mnt/sha256-HEX/      the empty directory each run mounts its overlay on
//! STORE/trash/               what prune renamed aside before removing it
//! ```
//!
//! A tree is made in `staging/` and renamed into `trees/`, so a reader
//! never sees half of one; a crash leaves only a staging directory, which
//! the next maker of that tree (holding its lock) or `prune` removes:
//! containers/storage's `incomplete` flag, with the directory's place as
//! the flag. There is one lower directory per image (layers are applied
//! into one tree by the verified unpacker), so the `l/` short links that
//! containers/storage needs to fit many lowers into one page of mount
//! options have no use here.
//!
//! Each run mounts its own overlay (the pristine tree as lowerdir) inside
//! its private mount namespace, onto `mnt/KEY`, which all runs share: each
//! sees only its own mount, and the host sees an empty directory.
//!
//! ```no_run
//! use metalor::store::{PullPolicy, Store};
//! use metalor::oci::registry::PullOptions;
//!
//! let store = Store::open(&Store::default_dir()?)?;
//! let image = store.image("127.0.0.1:5000/demo:latest", PullPolicy::Missing, &PullOptions::default())?;
//! let tree = store.pristine_tree(&image)?;
//! println!("{} is unpacked at {}", image.reference, tree.path().display());
//! # Ok::<(), metalor::store::StoreError>(())
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod gc;
mod lock;
mod name;
mod tree;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{resolve_user, ImageConfig};
pub use error::StoreError;
pub use gc::{ImageSummary, PruneReport};
pub use lock::StoreLock;
pub use tree::PristineTree;

use crate::oci::registry::{self, ProgressFn, PullOptions, PullSource};
use crate::oci::{Digest, ImageLayout, LayoutWriter, ResolvedImage};
use crate::unpack::arriving::pull_while_unpacking;
use lock::LockMode;
use name::{store_name, StoreName};

/// The marker file; its JSON `version` must be [`STORE_VERSION`].
pub const MARKER_FILE: &str = "metalor-store.json";
/// The on-disk layout version this build reads and writes.
pub const STORE_VERSION: u64 = 1;
/// Overrides the default store directory, like `--store`.
pub const STORE_ENV: &str = "METALOR_STORE";

/// Top-level entries a store may hold; anything else means the directory
/// is not (only) ours.
const KNOWN_ENTRIES: [&str; 8] = [
    MARKER_FILE,
    "lock",
    "oci",
    "trees",
    "staging",
    "locks",
    "mnt",
    "trash",
];

/// When a run pulls the image it names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the store does not have the reference.
    #[default]
    Missing,
    /// Pull every time (blobs already present are not fetched again).
    Always,
    /// Never pull: a missing reference is [`StoreError::NotInStore`].
    Never,
}

/// An open store.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// An image of the store, resolved from its reference.
#[derive(Clone, Debug)]
pub struct StoreImage {
    /// The normalized reference, `HOST/REPO:TAG` or `…@DIGEST`.
    pub reference: String,
    /// Its ref name in the store's OCI layout.
    pub ref_name: String,
    /// The image: manifest digest, config and layers.
    pub resolved: ResolvedImage,
    /// Whether this call pulled it.
    pub pulled: bool,
}

impl StoreImage {
    /// The run settings of the image's config.
    pub fn config(&self) -> Result<ImageConfig, StoreError> {
        ImageConfig::parse(&self.resolved.config_bytes, &self.resolved.config_digest)
    }
}

impl Store {
    /// The store to use when none is given: `$METALOR_STORE`, else
    /// `/var/lib/metalor` for root and `$XDG_DATA_HOME/metalor` (or
    /// `~/.local/share/metalor`) for anyone else, as containers/storage
    /// splits its root and rootless stores.
    pub fn default_dir() -> Result<PathBuf, StoreError> {
        if let Some(dir) = std::env::var_os(STORE_ENV).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        if rustix::process::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/metalor"));
        }
        let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").and_then(absolute) {
            return Ok(data.join("metalor"));
        }
        match std::env::var_os("HOME").and_then(absolute) {
            Some(home) => Ok(home.join(".local/share/metalor")),
            None => Err(StoreError::NoDefault),
        }
    }

    /// Opens the store at `dir`, creating it when `dir` is missing or
    /// empty. A directory with other files, or a marker of another
    /// version, is refused before anything in it is changed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create store", dir, e))?;
        let root = dir
            .canonicalize()
            .map_err(|e| StoreError::io("canonicalize store", dir, e))?;
        let marker = root.join(MARKER_FILE);
        match fs::read(&marker) {
            Ok(bytes) => check_marker(&marker, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Empty, or a store another opener is creating right now.
                if let Some(found) = first_entry(&root, |name| !KNOWN_ENTRIES.contains(&name))? {
                    return Err(StoreError::NotAStore { path: root, found });
                }
                write_marker(&marker)?;
            }
            Err(e) => return Err(StoreError::io("read store marker", &marker, e)),
        }
        if let Some(found) = first_entry(&root, |name| !KNOWN_ENTRIES.contains(&name))? {
            return Err(StoreError::NotAStore { path: root, found });
        }
        let store = Store { root };
        for sub in ["trees", "staging", "locks", "mnt", "trash"] {
            let path = store.root.join(sub);
            fs::create_dir_all(&path).map_err(|e| StoreError::io("create", &path, e))?;
        }
        LayoutWriter::create(&store.layout_dir())?;
        Ok(store)
    }

    /// The store's directory, canonical.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The store's OCI image layout.
    pub fn layout_dir(&self) -> PathBuf {
        self.root.join("oci")
    }

    /// The runtime root prefix of runs on this store's images: the
    /// directory holding each image's mount point.
    pub fn mount_prefix(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// Pulls `reference` into the store (whatever it holds already; blobs
    /// present are not fetched again) and resolves it.
    pub fn pull(&self, reference: &str, options: &PullOptions) -> Result<StoreImage, StoreError> {
        self.image(reference, PullPolicy::Always, options)
    }

    /// Resolves `reference` in the store, pulling it as `policy` says.
    /// Two callers that both miss the reference pull it once: the second
    /// waits for the first and then finds it.
    pub fn image(
        &self,
        reference: &str,
        policy: PullPolicy,
        options: &PullOptions,
    ) -> Result<StoreImage, StoreError> {
        let name = store_name(reference)?;
        let _store = self.lock(LockMode::Shared)?;
        let pulling = name.clone();
        self.find(name, policy, options, || {
            self.pull_locked(&pulling, options)
        })
    }

    /// [`Store::image`] and then [`Store::pristine_tree`], but when the
    /// image is pulled, its tree is unpacked during the pull: each layer as
    /// soon as its blob is in, as `prepare_oci_rootfs` does. The tree is
    /// made in `staging/`, under its lock, and renamed on success exactly
    /// as [`Store::pristine_tree`] makes it.
    pub fn image_and_tree(
        &self,
        reference: &str,
        policy: PullPolicy,
        options: &PullOptions,
    ) -> Result<(StoreImage, PristineTree), StoreError> {
        let name = store_name(reference)?;
        let _store = self.lock(LockMode::Shared)?;
        let mut made = None;
        let image = self.find(name.clone(), policy, options, || {
            made = self.pull_unpacking(&name, options)?;
            Ok(())
        })?;
        let tree = match made {
            Some(tree) => tree,
            None => tree::ensure_tree(self, &image.resolved)?,
        };
        Ok((image, tree))
    }

    /// Resolves `name` as `policy` says, calling `pull` (under the
    /// reference's lock) when the store must pull it. The caller holds
    /// the store lock shared.
    fn find(
        &self,
        name: StoreName,
        policy: PullPolicy,
        options: &PullOptions,
        pull: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<StoreImage, StoreError> {
        // A second caller that missed the reference too finds it here,
        // once the first one's pull is over.
        let pull_locked = || {
            let _ref = self.ref_lock(&name)?;
            if policy == PullPolicy::Missing {
                if let Some(image) = self.resolve_if_present(&name, options)? {
                    return Ok((image, false));
                }
            }
            pull()?;
            Ok::<_, StoreError>((self.resolve(&name, options)?, true))
        };
        let (resolved, pulled) = match policy {
            PullPolicy::Always => pull_locked()?,
            PullPolicy::Never => self
                .resolve_if_present(&name, options)?
                .map(|image| (image, false))
                .ok_or_else(|| self.not_in_store(&name))?,
            PullPolicy::Missing => match self.resolve_if_present(&name, options)? {
                Some(image) => (image, false),
                None => pull_locked()?,
            },
        };
        Ok(StoreImage {
            reference: name.display,
            ref_name: name.ref_name,
            resolved,
            pulled,
        })
    }

    /// The image's pristine tree, unpacked now if it is not yet (once,
    /// however many callers ask at the same time). The returned handle
    /// holds the tree's shared lock, which keeps `prune` from removing the
    /// tree until it is dropped.
    pub fn pristine_tree(&self, image: &StoreImage) -> Result<PristineTree, StoreError> {
        let _store = self.lock(LockMode::Shared)?;
        tree::ensure_tree(self, &image.resolved)
    }

    fn lock(&self, mode: LockMode) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        StoreLock::take(&path, mode).map(|lock| lock.expect("a blocking flock returns a lock"))
    }

    fn ref_lock(&self, name: &StoreName) -> Result<StoreLock, StoreError> {
        let path = self
            .root
            .join("locks")
            .join(format!("ref-{}", name.ref_name));
        StoreLock::take(&path, LockMode::Exclusive).map(|l| l.expect("blocking flock"))
    }

    fn pull_locked(&self, name: &StoreName, options: &PullOptions) -> Result<(), StoreError> {
        let source = PullSource::Registry(name.reference.clone());
        registry::pull(&source, &self.layout_dir(), &name.ref_name, options)?;
        Ok(())
    }

    /// Pulls `name` (its ref lock held) while an unpacker thread makes
    /// its tree from the layers as they arrive. `None` when the pull
    /// reported no manifest, so the tree is still to be made. A failed
    /// pull is the error reported: it is why the unpack failed too.
    fn pull_unpacking(
        &self,
        name: &StoreName,
        options: &PullOptions,
    ) -> Result<Option<PristineTree>, StoreError> {
        let layout = Arc::new(ImageLayout::open(&self.layout_dir())?);
        let theirs = options.progress.clone();
        let (pulled, made) = pull_while_unpacking(
            layout,
            |ours: ProgressFn| {
                let progress: ProgressFn = Arc::new(move |event| {
                    ours(event);
                    if let Some(theirs) = &theirs {
                        theirs(event);
                    }
                });
                let options = PullOptions {
                    progress: Some(progress),
                    ..options.clone()
                };
                self.pull_locked(name, &options)
            },
            |arriving| match arriving.image() {
                None => Ok(None),
                Some(image) => {
                    let image = image?;
                    tree::ensure_tree_from(self, &image, || Ok(arriving.layers(&image))).map(Some)
                }
            },
        );
        pulled?;
        made
    }

    fn resolve(
        &self,
        name: &StoreName,
        options: &PullOptions,
    ) -> Result<ResolvedImage, StoreError> {
        let layout = ImageLayout::open(&self.layout_dir())?;
        Ok(layout.resolve(Some(&name.ref_name), &options.platform)?)
    }

    /// `None` when the layout has no such ref (or no `index.json` yet).
    fn resolve_if_present(
        &self,
        name: &StoreName,
        options: &PullOptions,
    ) -> Result<Option<ResolvedImage>, StoreError> {
        if !gc::has_ref(&self.layout_dir(), &name.ref_name)? {
            return Ok(None);
        }
        self.resolve(name, options).map(Some)
    }

    fn not_in_store(&self, name: &StoreName) -> StoreError {
        StoreError::NotInStore {
            reference: name.display.clone(),
            store: self.root.clone(),
        }
    }

    /// The key of a manifest's tree, lock and mount point: `ALGO-HEX`.
    pub(crate) fn tree_key(digest: &Digest) -> String {
        format!("{}-{}", digest.algorithm(), digest.hex())
    }
}

fn check_marker(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let version = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    match version {
        Some(STORE_VERSION) => Ok(()),
        found => Err(StoreError::WrongVersion {
            path: path.to_path_buf(),
            expected: STORE_VERSION,
            found: found.map_or_else(|| "no version".to_owned(), |v| v.to_string()),
        }),
    }
}

/// Writes the marker through a temp file and a rename, so a concurrent
/// opener sees it whole or not at all.
fn write_marker(marker: &Path) -> Result<(), StoreError> {
    let tmp = marker.with_extension(format!("tmp-{}", std::process::id()));
    let body = format!("{{\"version\":{STORE_VERSION}}}\n");
    let written = fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, marker));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| StoreError::io("write store marker", marker, e))
}

/// The first entry of `dir` whose name `pick` accepts (a marker's temp
/// file being renamed by a concurrent opener counts as ours).
fn first_entry(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<Option<String>, StoreError> {
    let listing = fs::read_dir(dir).map_err(|e| StoreError::io("read store", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("read store", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("metalor-store.tmp-") {
            continue;
        }
        if pick(&name) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Removes whatever is at `path`, not following a symlink there; missing
/// is fine.
pub(crate) fn remove_path_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
