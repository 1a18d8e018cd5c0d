//! The layer applier: one tar stream in, OCI changeset semantics out.
//!
//! One handler per entry type, a dispatcher in front of them. Every write
//! goes through a parent fd resolved inside the root (see `fsops`).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::FileType;
use rustix::io::Errno;
use tar::{Entry, EntryType};

use super::error::{hostile, io_error, UnpackError};
use super::fsops;
use super::path::{self, Whiteout};
use super::sparse::{self, PaxSparse};
use super::{LayerStats, UnpackOptions};

const COPY_BUFFER: usize = 256 * 1024;
const XATTR_PREFIX: &str = "SCHILY.xattr.";
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
    /// The last parent directory resolved, by normalized path, with its
    /// identity.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>, DirId)>,
    buffer: Box<[u8]>,
}

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
            parent_cache: None,
            buffer: vec![0u8; COPY_BUFFER].into_boxed_slice(),
        }
    }

    /// The totals over every layer applied so far.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }

    /// Applies one uncompressed tar stream as a layer. The reader is left
    /// positioned after the end-of-archive marker; the caller drains it.
    pub fn apply_layer<R: Read>(&mut self, reader: R) -> Result<R, UnpackError> {
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
            self.apply_entry(&mut entry)?;
            // Skip what a non-file entry carries, outside the budget.
            drain(&mut entry, &mut self.buffer)?;
        }
        self.finish_layer()?;
        Ok(archive.into_inner().inner)
    }

    fn finish_layer(&mut self) -> Result<(), UnpackError> {
        self.parent_cache = None;
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            // A later entry of the same layer may have replaced the directory;
            // then there is nothing left to stamp.
            let (parent, name) = path::split_parent(&path);
            let Ok(dir) = fsops::open_dir_in_root(self.root, parent) else {
                continue;
            };
            match fsops::lstat_at(dir.as_fd(), name) {
                Ok(Some(st)) if fsops::file_type(&st) == FileType::Directory => {
                    fsops::set_times_at_nofollow(dir.as_fd(), name, mtime)
                        .map_err(|e| io_error("set mtime of", &path, e))?;
                }
                _ => {}
            }
        }
        self.written.clear();
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), UnpackError> {
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
            return Err(hostile(&raw, "whiteout name contains '/'"));
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
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, &path, sparse.as_ref())?
            }
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

    /// A `./` entry sets the rootfs directory's owner and mode, as umoci
    /// and `tar -xp` do.
    fn root_metadata<R: Read>(&mut self, entry: &Entry<'_, R>) -> Result<(), UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Stream)?;
        if self.privileges.chown {
            let (uid, gid) = owner(entry, b".")?;
            fsops::chown_fd(self.root, uid, gid).map_err(|e| io_error("chown", b".", e))?;
        }
        fsops::chmod_fd(self.root, mode).map_err(|e| io_error("chmod", b".", e))
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
    fn parent_fd(&mut self, parent: &[u8]) -> Result<BorrowedFd<'_>, UnpackError> {
        self.cache_parent(parent)?;
        Ok(self
            .parent_cache
            .as_ref()
            .map(|(_, fd, _)| fd.as_fd())
            .unwrap())
    }

    /// The cached parent directory as a shared handle, for handlers that
    /// call back into the applier while they hold it (no `dup` per entry).
    fn parent_dir(&mut self, parent: &[u8]) -> Result<Rc<OwnedFd>, UnpackError> {
        self.cache_parent(parent)?;
        Ok(self
            .parent_cache
            .as_ref()
            .map(|(_, fd, _)| Rc::clone(fd))
            .unwrap())
    }

    /// The identity of the directory `parent` resolves to.
    fn parent_id(&mut self, parent: &[u8]) -> Result<DirId, UnpackError> {
        self.cache_parent(parent)?;
        Ok(self.parent_cache.as_ref().map(|(_, _, id)| *id).unwrap())
    }

    fn cache_parent(&mut self, parent: &[u8]) -> Result<(), UnpackError> {
        let hit = matches!(&self.parent_cache, Some((p, _, _)) if p.as_slice() == parent);
        if !hit {
            let fd = self.resolve_or_create_dir(parent)?;
            let id = dir_id(fd.as_fd()).map_err(|e| io_error("stat directory", parent, e))?;
            self.parent_cache = Some((parent.to_vec(), Rc::new(fd), id));
        }
        Ok(())
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
    fn clear_slot(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UnpackError> {
        fsops::remove_any_at(dir, name).map_err(|e| io_error("replace", path, e))
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        sparse: Option<&PaxSparse>,
    ) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(path);
        let file = self.create_file(parent, name, path)?;
        let mut file = std::fs::File::from(file);
        if let Some(sparse) = sparse {
            let (stats, limit) = (&mut self.stats, self.options.max_bytes);
            let mut count = |n: u64| count_bytes(stats, limit, n);
            sparse.write(entry, &mut file, path, &mut self.buffer, &mut count)?;
            self.stats.files += 1;
            return self.finish_metadata(file.as_fd(), entry, path);
        }
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Stream(e)),
            };
            written += n as u64;
            count_bytes(&mut self.stats, self.options.max_bytes, n as u64)?;
            file.write_all(&self.buffer[..n])
                .map_err(|e| io_error("write", path, e))?;
        }
        if written != entry.size() {
            return Err(UnpackError::Stream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {written} of {} bytes before the stream ended",
                    String::from_utf8_lossy(path),
                    entry.size()
                ),
            )));
        }
        self.stats.files += 1;
        self.finish_metadata(file.as_fd(), entry, path)?;
        Ok(())
    }

    fn create_file(
        &mut self,
        parent: &[u8],
        name: &[u8],
        path: &[u8],
    ) -> Result<OwnedFd, UnpackError> {
        let dir = self.parent_fd(parent)?;
        match fsops::create_file_at(dir, name) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {}
            Err(e) => return Err(io_error("create", path, e)),
        }
        let dir = self.parent_dir(parent)?;
        self.clear_slot(dir.as_fd(), name, path)?;
        self.parent_cache = None;
        fsops::create_file_at(dir.as_fd(), name).map_err(|e| io_error("create", path, e))
    }

    /// Ownership, mode (after ownership, which clears setuid), xattrs, mtime.
    fn finish_metadata<R: Read>(
        &mut self,
        fd: BorrowedFd<'_>,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Stream)?;
        if self.privileges.chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::chown_fd(fd, uid, gid).map_err(|e| io_error("chown", path, e))?;
        }
        fsops::chmod_fd(fd, mode).map_err(|e| io_error("chmod", path, e))?;
        self.apply_xattrs(fd, entry)?;
        if entry.header().entry_type() != EntryType::Directory {
            let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
            fsops::set_times_fd(fd, mtime).map_err(|e| io_error("set mtime of", path, e))?;
        }
        Ok(())
    }

    fn apply_xattrs<R: Read>(
        &mut self,
        fd: BorrowedFd<'_>,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? else {
            return Ok(());
        };
        for ext in extensions {
            let ext = ext.map_err(UnpackError::Stream)?;
            let Some(name) = ext.key_bytes().strip_prefix(XATTR_PREFIX.as_bytes()) else {
                continue;
            };
            match fsops::set_xattr_fd(fd, name, ext.value_bytes()) {
                Ok(()) => self.stats.xattrs += 1,
                Err(_) => self.stats.skipped_xattrs += 1,
            }
        }
        Ok(())
    }

    fn directory<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        match fsops::mkdir_at(dir.as_fd(), name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::EXIST.raw_os_error()) => {
                if !self.merge_into_existing(dir.as_fd(), name, path)? {
                    // keep-dirlinks: a symlink to a directory stays, and the
                    // layer's children go through it.
                    return Ok(());
                }
            }
            Err(e) => return Err(io_error("mkdir", path, e)),
        }
        let fd = fsops::open_subdir_nofollow(dir.as_fd(), name)
            .map_err(|e| io_error("open directory", path, e))?;
        self.stats.dirs += 1;
        self.finish_metadata(fd.as_fd(), entry, path)?;
        let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
        self.dir_times.push((path.to_vec(), mtime));
        Ok(())
    }

    /// A directory entry met an existing name. Returns true when a real
    /// directory is now there to take the metadata, false for a kept dirlink.
    fn merge_into_existing(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<bool, UnpackError> {
        let st = fsops::lstat_at(dir, name).map_err(|e| io_error("stat", path, e))?;
        match st.map(|st| fsops::file_type(&st)) {
            Some(FileType::Directory) => return Ok(true),
            Some(FileType::Symlink) if fsops::open_dir_in_root(self.root, path).is_ok() => {
                return Ok(false)
            }
            _ => {}
        }
        self.clear_slot(dir, name, path)?;
        self.parent_cache = None;
        fsops::mkdir_at(dir, name, 0o700).map_err(|e| io_error("mkdir", path, e))?;
        Ok(true)
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| hostile(path, "symlink without a target"))?
            .into_owned();
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        if let Err(e) = fsops::symlink_at(dir.as_fd(), name, &target) {
            if e.raw_os_error() != Some(Errno::EXIST.raw_os_error()) {
                return Err(io_error("symlink", path, e));
            }
            self.clear_slot(dir.as_fd(), name, path)?;
            self.parent_cache = None;
            fsops::symlink_at(dir.as_fd(), name, &target)
                .map_err(|e| io_error("symlink", path, e))?;
        }
        if self.privileges.chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::lchown_at(dir.as_fd(), name, uid, gid)
                .map_err(|e| io_error("chown", path, e))?;
        }
        if entry
            .pax_extensions()
            .map_err(UnpackError::Stream)?
            .is_some()
        {
            // xattrs on a symlink need a path-based call; they are counted,
            // not applied.
            self.count_symlink_xattrs(entry)?;
        }
        let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
        fsops::set_times_at_nofollow(dir.as_fd(), name, mtime)
            .map_err(|e| io_error("set mtime of", path, e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn count_symlink_xattrs<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? {
            for ext in extensions.flatten() {
                if ext.key_bytes().starts_with(XATTR_PREFIX.as_bytes()) {
                    self.stats.skipped_xattrs += 1;
                }
            }
        }
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        raw: &[u8],
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| hostile(raw, "hardlink without a target"))?
            .into_owned();
        let target = path::normalize(&raw_target).map_err(|bad| {
            hostile(
                raw,
                match bad {
                    path::BadName::DotDot => "hardlink target has a '..' component",
                    path::BadName::Nul => "hardlink target has a NUL byte",
                },
            )
        })?;
        if target.is_empty() {
            return Err(hostile(raw, "hardlink to the root directory"));
        }
        if target == path {
            return Err(hostile(raw, "hardlink to itself"));
        }
        let (tparent, tname) = path::split_parent(&target);
        let src_dir = match fsops::open_dir_in_root(self.root, tparent) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT) | Some(Errno::NOTDIR)
                ) =>
            {
                return Err(hostile(raw, "hardlink target does not exist in the rootfs"))
            }
            Err(e) => return Err(io_error("resolve hardlink target", &target, e)),
        };
        match fsops::lstat_at(src_dir.as_fd(), tname)
            .map_err(|e| io_error("stat hardlink target", &target, e))?
        {
            None => return Err(hostile(raw, "hardlink target does not exist in the rootfs")),
            Some(st) if fsops::file_type(&st) == FileType::Directory => {
                return Err(hostile(raw, "hardlink to a directory"))
            }
            Some(_) => {}
        }
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        if let Err(e) = fsops::link_at(src_dir.as_fd(), tname, dir.as_fd(), name) {
            if e.raw_os_error() != Some(Errno::EXIST.raw_os_error()) {
                return Err(io_error("hardlink", path, e));
            }
            self.clear_slot(dir.as_fd(), name, path)?;
            self.parent_cache = None;
            fsops::link_at(src_dir.as_fd(), tname, dir.as_fd(), name)
                .map_err(|e| io_error("hardlink", path, e))?;
        }
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn special<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if kind != FileType::Fifo && !self.privileges.mknod {
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        let dev = rustix::fs::makedev(major, minor);
        let mode = header.mode().map_err(UnpackError::Stream)?;
        let mtime = header.mtime().map_err(UnpackError::Stream)?;
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        self.clear_slot(dir.as_fd(), name, path)?;
        self.parent_cache = None;
        fsops::mknod_at(dir.as_fd(), name, kind, mode, dev)
            .map_err(|e| io_error("mknod", path, e))?;
        if self.privileges.chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::lchown_at(dir.as_fd(), name, uid, gid)
                .map_err(|e| io_error("chown", path, e))?;
        }
        fsops::chmod_at(dir.as_fd(), name, mode).map_err(|e| io_error("chmod", path, e))?;
        fsops::set_times_at_nofollow(dir.as_fd(), name, mtime)
            .map_err(|e| io_error("set mtime of", path, e))?;
        self.stats.devices += 1;
        Ok(())
    }

    /// `.wh.NAME`: delete NAME as lower layers left it, sparing what this
    /// layer wrote there.
    fn whiteout(&mut self, parent: &[u8], target: &[u8]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let path = join(parent, target);
        let Some(dir) = self.existing_dir(parent)? else {
            return Ok(());
        };
        self.parent_cache = None;
        let id = dir_id(dir.as_fd()).map_err(|e| io_error("stat directory", parent, e))?;
        self.remove_lower(dir.as_fd(), id, target, &path)
    }

    /// `.wh..wh..opq`: empty the directory of lower-layer content.
    fn opaque(&mut self, dir_path: &[u8]) -> Result<(), UnpackError> {
        self.stats.whiteouts += 1;
        let Some(dir) = self.existing_dir(dir_path)? else {
            return Ok(());
        };
        // Reopen readable: the resolved fd is O_PATH, which cannot list.
        let dir = fsops::open_subdir_nofollow(dir.as_fd(), b".")
            .map_err(|e| io_error("open directory", dir_path, e))?;
        self.parent_cache = None;
        let id = dir_id(dir.as_fd()).map_err(|e| io_error("stat directory", dir_path, e))?;
        self.remove_lower_children(dir.as_fd(), id, dir_path)
    }

    fn existing_dir(&self, dir_path: &[u8]) -> Result<Option<OwnedFd>, UnpackError> {
        match fsops::open_dir_in_root(self.root, dir_path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT) | Some(Errno::NOTDIR)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_error("open directory", dir_path, e)),
        }
    }

    /// Removes what lower layers left at `name` in `dir`. What this layer
    /// wrote stays: a directory that holds some of it is kept and only its
    /// lower-layer children go.
    fn remove_lower(
        &mut self,
        dir: BorrowedFd<'_>,
        id: DirId,
        name: &[u8],
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let written = self.written.contains(&location_key(id, name));
        let Some(st) = fsops::lstat_at(dir, name).map_err(|e| io_error("stat", path, e))? else {
            return Ok(());
        };
        if fsops::file_type(&st) != FileType::Directory {
            if written {
                return Ok(());
            }
            return fsops::remove_any_at(dir, name).map_err(|e| io_error("remove", path, e));
        }
        let child = fsops::open_subdir_nofollow(dir, name)
            .map_err(|e| io_error("open directory", path, e))?;
        let child_id = (st.st_dev, st.st_ino);
        self.remove_lower_children(child.as_fd(), child_id, path)?;
        if written {
            return Ok(());
        }
        // A lower directory that still holds this layer's entries stays.
        match fsops::rmdir_at(dir, name) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOTEMPTY) | Some(Errno::EXIST)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io_error("remove", path, e)),
        }
    }

    fn remove_lower_children(
        &mut self,
        dir: BorrowedFd<'_>,
        id: DirId,
        dir_path: &[u8],
    ) -> Result<(), UnpackError> {
        let names = fsops::list_dir(dir).map_err(|e| io_error("list", dir_path, e))?;
        for name in names {
            let child = join(dir_path, &name);
            self.remove_lower(dir, id, &name, &child)?;
        }
        Ok(())
    }
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
/// Adds file content to the totals and enforces the byte limit.
fn count_bytes(stats: &mut LayerStats, limit: Option<u64>, n: u64) -> Result<(), UnpackError> {
    stats.bytes += n;
    match limit {
        Some(limit) if stats.bytes > limit => Err(UnpackError::Limit {
            what: "bytes",
            limit,
        }),
        _ => Ok(()),
    }
}

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

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn owner<R: Read>(entry: &Entry<'_, R>, path: &[u8]) -> Result<(u32, u32), UnpackError> {
    let header = entry.header();
    let uid = header.uid().map_err(UnpackError::Stream)?;
    let gid = header.gid().map_err(UnpackError::Stream)?;
    let fit = |id: u64| u32::try_from(id).ok().filter(|&v| v != u32::MAX);
    match (fit(uid), fit(gid)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(UnpackError::Unsupported {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: format!("owner {uid}:{gid} does not fit a Linux id"),
        }),
    }
}
