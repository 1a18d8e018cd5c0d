//! The layer applier: one tar stream in, OCI changeset semantics out.
//!
//! The dispatcher here reads each entry, normalizes its name, routes
//! whiteouts and hands every other entry to the handler of its type, one
//! file per type (`regular`, `directory`, `symlink`, `hardlink`, `special`,
//! `whiteout`); `metadata` holds what the handlers share (owner, mode,
//! xattrs, mtime). Every write goes through a parent fd resolved inside the
//! root (see `fsops`).
#![forbid(unsafe_code)]

mod directory;
mod hardlink;
mod metadata;
mod regular;
mod special;
mod symlink;
mod whiteout;

pub(crate) use metadata::{image_xattr, XATTR_PREFIX};

use std::cell::{Cell, Ref};
use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::FileType;
use rustix::io::Errno;
use tar::{Entry, EntryType};

use super::error::{hostile, io_error, UnpackError};
use super::fsops;
use super::path::{self, Whiteout};
use super::sparse;
use super::{LayerStats, UnpackOptions};

const COPY_BUFFER: usize = 256 * 1024;
/// The most bytes the tar reader may consume between two entries: headers,
/// padding and the GNU longname/longlink and PAX records it buffers whole in
/// memory. Real records are a few KiB (names stop at PATH_MAX, xattr values
/// at 64 KiB); a larger one is a memory bomb, not an image.
const METADATA_BUDGET: u64 = 1024 * 1024;

/// What the process may do while applying: keep the image's owners, create
/// device nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// `CAP_CHOWN`: keep the image's uid and gid.
    pub chown: bool,
    /// `CAP_MKNOD`: create block and character devices.
    pub mknod: bool,
}

impl Privileges {
    /// Reads the effective capability set of the calling thread.
    pub fn detect() -> Self {
        let has = |cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false);
        Privileges {
            chown: has(caps::Capability::CAP_CHOWN),
            mknod: has(caps::Capability::CAP_MKNOD),
        }
    }
}

/// Applies layers, in order, to one root directory.
pub struct Applier<'r> {
    root: BorrowedFd<'r>,
    privileges: Privileges,
    options: UnpackOptions,
    stats: LayerStats,
    /// Locations this layer wrote (see [`location_key`]): whiteouts must
    /// not touch them, whichever spelling of the path reaches them.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, set once the layer's children are in place.
    dir_times: Vec<(Vec<u8>, u64)>,
    /// The parent directories resolved last (see [`Parents`]).
    parents: Parents,
    /// The effective uid and gid: who owns what this process creates.
    creator: (u32, u32),
    /// The umask, when a new file's mode is exactly the mode it is
    /// created with, less the umask: see [`Applier::creation_mode`].
    /// `None` turns that off (unknown umask, a root that held something
    /// before, or any default ACL).
    umask: Option<u32>,
    buffer: Box<[u8]>,
}

/// How many resolved parent directories the applier keeps open. Tar
/// streams walk the tree depth first, so the next entry's parent is
/// nearly always the last one or one of its few ancestors.
const PARENTS_KEPT: usize = 8;

/// A resolved parent directory: its normalized path, an `O_PATH` fd, its
/// identity and its group.
struct Parent {
    path: Vec<u8>,
    fd: Rc<OwnedFd>,
    id: DirId,
    gid: u32,
}

/// The parent directories resolved last, most recent first. Anything that
/// removes or replaces a node clears it all, so no entry outlives the
/// directory it names; see [`Applier::forget_parents`].
#[derive(Default)]
struct Parents(Vec<Parent>);

impl<'r> Applier<'r> {
    /// An applier for the directory `root`, which the caller keeps open.
    pub fn new(root: BorrowedFd<'r>, options: UnpackOptions, privileges: Privileges) -> Self {
        Applier {
            root,
            privileges,
            options,
            stats: LayerStats::default(),
            written: HashSet::new(),
            dir_times: Vec::new(),
            parents: Parents::default(),
            creator: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            umask: exact_creation_umask(root),
            buffer: vec![0u8; COPY_BUFFER].into_boxed_slice(),
        }
    }

    /// The mode to create a regular file with, and whether that is its
    /// final mode, so no `fchmod` follows. It is when the mode has no
    /// setuid, setgid or sticky bit (a chown would clear those), grants
    /// no write to group or others (the file is not yet written), and
    /// loses nothing to the umask; otherwise the file starts private
    /// (0600) and gets its mode after its owner.
    pub(super) fn creation_mode(&self, mode: u32) -> (u32, bool) {
        match self.umask {
            Some(umask) if mode & (0o7022 | umask) == 0 => (mode, true),
            _ => (0o600, false),
        }
    }

    /// The totals over every layer applied so far.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }

    /// Applies one uncompressed tar stream as a layer. The reader is left
    /// positioned after the end-of-archive marker; the caller drains it.
    pub fn apply_layer<R: Read>(&mut self, reader: R) -> Result<R, UnpackError> {
        self.apply_stream(reader, None)
    }

    /// [`Applier::apply_layer`] for a stream that lends its bytes in place
    /// (see [`Lend`]): `reader` and `lender` are two handles on it.
    pub(crate) fn apply_layer_lent<R: Read>(
        &mut self,
        reader: R,
        lender: &dyn Lend,
    ) -> Result<R, UnpackError> {
        self.apply_stream(reader, Some(lender))
    }

    fn apply_stream<R: Read>(
        &mut self,
        reader: R,
        lender: Option<&dyn Lend>,
    ) -> Result<R, UnpackError> {
        let budget = Cell::new(METADATA_BUDGET);
        let mut archive = tar::Archive::new(Budgeted {
            inner: reader,
            budget: &budget,
        });
        let mut entries = archive.entries().map_err(UnpackError::Stream)?;
        loop {
            // Between entries the tar reader buffers metadata records whole:
            // bound what it may read.
            budget.set(METADATA_BUDGET);
            let next = entries.next();
            let exhausted = budget.get() == 0;
            budget.set(u64::MAX);
            let mut entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(_)) if exhausted => {
                    return Err(UnpackError::Limit {
                        what: "tar metadata record bytes",
                        limit: METADATA_BUDGET,
                    })
                }
                Some(Err(e)) => return Err(UnpackError::Stream(e)),
            };
            self.apply_entry(&mut entry, lender)?;
            // Skip what a non-file entry carries, outside the budget (and
            // take back what a lender lent, uncopied).
            drain(&mut entry, &mut self.buffer)?;
        }
        self.finish_layer()?;
        Ok(archive.into_inner().inner)
    }

    fn finish_layer(&mut self) -> Result<(), UnpackError> {
        self.forget_parents();
        // Parent fds opened for the stamping, most recent first; nothing
        // below changes the tree but timestamps, so they stay valid.
        let mut opened: Vec<(&[u8], Option<OwnedFd>)> = Vec::new();
        let times = std::mem::take(&mut self.dir_times);
        for (path, mtime) in &times {
            let (parent, name) = path::split_parent(path);
            match opened.iter().position(|(p, _)| *p == parent) {
                Some(at) => opened[..=at].rotate_right(1),
                None => {
                    opened.truncate(PARENTS_KEPT - 1);
                    let fd = fsops::open_dir_in_root(self.root, parent).ok();
                    opened.insert(0, (parent, fd));
                }
            }
            // A later entry of the same layer may have replaced the directory
            // (or its parent); then there is nothing left to stamp.
            let Some(dir) = opened[0].1.as_ref() else {
                continue;
            };
            match fsops::lstat_at(dir.as_fd(), name) {
                Ok(Some(st)) if fsops::file_type(&st) == FileType::Directory => {
                    fsops::set_times_at_nofollow(dir.as_fd(), name, *mtime)
                        .map_err(|e| io_error("set mtime of", path, e))?;
                }
                _ => {}
            }
        }
        self.written.clear();
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        lender: Option<&dyn Lend>,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        self.count_entry()?;
        let sparse = match kind {
            EntryType::Regular | EntryType::Continuous => sparse::detect(entry)?,
            _ => None,
        };
        let raw = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let path = path::normalize(&raw).map_err(|bad| hostile(&raw, bad_name(bad)))?;
        check_size(entry, &raw)?;
        let (parent, name) = path::split_parent(&path);
        if parent
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(path::WHITEOUT_PREFIX))
        {
            return Err(hostile(
                &raw,
                "a parent directory component is a whiteout name",
            ));
        }
        if name.is_empty() {
            return match kind {
                EntryType::Directory => self.root_metadata(entry),
                _ => Err(hostile(&raw, "non-directory entry for the root")),
            };
        }
        match path::classify(name) {
            Whiteout::None => {}
            Whiteout::AufsMeta => return Ok(()),
            Whiteout::Invalid => return Err(hostile(&raw, "whiteout of '.', '..' or ''")),
            Whiteout::Opaque => return self.opaque(parent),
            Whiteout::Delete(target) => return self.whiteout(parent, target),
        }
        match kind {
            EntryType::Regular | EntryType::Continuous => match sparse.as_ref() {
                None => self.regular(entry, &path, lender)?,
                Some(sparse) => self.sparse(entry, &path, sparse)?,
            },
            // Old GNU sparse: the tar crate fills the holes as it reads.
            EntryType::GNUSparse => self.regular(entry, &path, None)?,
            EntryType::Directory => self.directory(entry, &path)?,
            EntryType::Symlink => self.symlink(entry, &path)?,
            EntryType::Link => self.hardlink(entry, &path, &raw)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.special(entry, &path)?,
            other => {
                return Err(UnpackError::Unsupported {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    reason: format!("tar entry type {:?}", other.as_byte() as char),
                })
            }
        }
        let dir = self.parent_id(parent)?;
        self.written.insert(location_key(dir, name));
        Ok(())
    }

    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        match self.options.max_entries {
            Some(limit) if self.stats.entries > limit => Err(UnpackError::Limit {
                what: "entries",
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// The directory fd for `parent`, creating missing directories (0755) as
    /// tar does.
    pub(super) fn parent_fd(&mut self, parent: &[u8]) -> Result<BorrowedFd<'_>, UnpackError> {
        Ok(self.cache_parent(parent)?.fd.as_fd())
    }

    /// The cached parent directory as a shared handle, for handlers that
    /// call back into the applier while they hold it (no `dup` per entry).
    pub(super) fn parent_dir(&mut self, parent: &[u8]) -> Result<Rc<OwnedFd>, UnpackError> {
        Ok(Rc::clone(&self.cache_parent(parent)?.fd))
    }

    /// The identity of the directory `parent` resolves to.
    pub(super) fn parent_id(&mut self, parent: &[u8]) -> Result<DirId, UnpackError> {
        Ok(self.cache_parent(parent)?.id)
    }

    /// Whether a node this process creates now in `parent` is owned by
    /// `uid:gid` already, so that a chown would change nothing. The new
    /// node's owner is our effective uid; its group is our effective gid,
    /// or the directory's group when the directory is setgid (or the
    /// filesystem is mounted `grpid`): when both groups are `gid`, either
    /// rule gives `gid`.
    pub(super) fn created_as(
        &mut self,
        parent: &[u8],
        (uid, gid): (u32, u32),
    ) -> Result<bool, UnpackError> {
        let dir_gid = self.cache_parent(parent)?.gid;
        Ok((uid, gid) == self.creator && dir_gid == gid)
    }

    /// Drops every resolved parent: a node was removed or replaced, or a
    /// directory's owner or mode changed, so a kept fd or group may no
    /// longer be what its path names.
    pub(super) fn forget_parents(&mut self) {
        self.parents.0.clear();
    }

    fn cache_parent(&mut self, parent: &[u8]) -> Result<&Parent, UnpackError> {
        let kept = &mut self.parents.0;
        match kept.iter().position(|p| p.path.as_slice() == parent) {
            Some(0) => {}
            Some(at) => kept[..=at].rotate_right(1),
            None => {
                let fd = self.resolve_or_create_dir(parent)?;
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| io_error("stat directory", parent, io::Error::from(e)))?;
                let kept = &mut self.parents.0;
                kept.truncate(PARENTS_KEPT - 1);
                kept.insert(
                    0,
                    Parent {
                        path: parent.to_vec(),
                        fd: Rc::new(fd),
                        id: (st.st_dev, st.st_ino),
                        gid: st.st_gid,
                    },
                );
            }
        }
        Ok(&self.parents.0[0])
    }

    fn resolve_or_create_dir(&mut self, dir: &[u8]) -> Result<OwnedFd, UnpackError> {
        match fsops::open_dir_in_root(self.root, dir) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            Err(e) => return Err(io_error("open parent directory", dir, e)),
        }
        let (grandparent, name) = path::split_parent(dir);
        let gp = self.resolve_or_create_dir(grandparent)?;
        match fsops::mkdir_at(gp.as_fd(), name, 0o755) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
            Err(e) => return Err(io_error("create parent directory", dir, e)),
        }
        fsops::open_dir_in_root(self.root, dir)
            .map_err(|e| io_error("open parent directory", dir, e))
    }

    /// Removes whatever sits at `name` so that a new entry can take its place.
    pub(super) fn clear_slot(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UnpackError> {
        fsops::remove_any_at(dir, name).map_err(|e| io_error("replace", path, e))
    }
}

/// A layer stream that can lend its next bytes in place, so that file
/// content goes from the decoded chunk to the file with no copy between.
///
/// Bytes lent are consumed from the stream, and the tar reader, which
/// still counts them as the entry's data, is owed them: the stream's next
/// reads, up to that count, report bytes read without touching the
/// caller's buffer. Only the entry's own data may be lent, and the entry
/// is then drained (as every entry is), which takes the debt back before
/// the tar reader looks for the next header.
pub(crate) trait Lend {
    /// The next bytes of the stream, at most `max` of them; empty at the
    /// stream's end.
    fn lend(&self, max: usize) -> io::Result<Ref<'_, [u8]>>;
}

/// A directory's identity: device and inode.
type DirId = (u64, u64);

fn dir_id(fd: BorrowedFd<'_>) -> io::Result<DirId> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The key of a directory entry as the filesystem knows it: its directory's
/// identity and its name. Two spellings of one location (through a dirlink
/// such as `bin -> usr/bin`) give the same key; a hardlink elsewhere to the
/// same inode does not.
fn location_key(dir: DirId, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + name.len());
    key.extend_from_slice(&dir.0.to_le_bytes());
    key.extend_from_slice(&dir.1.to_le_bytes());
    key.extend_from_slice(name);
    key
}

/// Counts down a shared budget on every read; at zero, reads fail. The
/// applier opens the budget only while the tar reader moves between entries.
struct Budgeted<'b, R> {
    inner: R,
    budget: &'b Cell<u64>,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tar metadata record too large",
            ));
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
}

/// Reads the rest of an entry's data and drops it.
fn drain<R: Read>(entry: &mut Entry<'_, R>, buffer: &mut [u8]) -> Result<(), UnpackError> {
    loop {
        match entry.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Stream(e)),
        }
    }
}

fn bad_name(bad: path::BadName) -> &'static str {
    match bad {
        path::BadName::DotDot => "name has a '..' component",
        path::BadName::Nul => "name has a NUL byte",
    }
}

/// A PAX `size` overrides the header, as POSIX says; when both are set and
/// disagree, parsers that honour one or the other see different archives,
/// which is how entries get smuggled past a scanner. A zero header size is
/// how writers mark a size that does not fit the field, so only that may
/// differ.
fn check_size<R: Read>(entry: &Entry<'_, R>, raw: &[u8]) -> Result<(), UnpackError> {
    let header_size = entry.header().entry_size().map_err(UnpackError::Stream)?;
    if header_size != 0
        && header_size != entry.size()
        && !entry.header().entry_type().is_gnu_sparse()
    {
        return Err(hostile(raw, "PAX size disagrees with the header size"));
    }
    Ok(())
}

/// The umask under which a file created in `root`'s tree gets exactly its
/// creation mode less the umask: known, and no default ACL in the way.
/// Directories under `root` are all this unpack's own only if `root` is
/// empty now, and a default ACL that a layer sets later turns this off
/// ([`Applier::creation_mode`]'s caller sees to it).
fn exact_creation_umask(root: BorrowedFd<'_>) -> Option<u32> {
    let empty = fsops::is_empty_dir(root).unwrap_or(false);
    if !empty || fsops::has_default_acl(root) {
        return None;
    }
    fsops::current_umask()
}
