//! A cache hit's rootfs: a copy of the entry's pristine tree, not a second
//! decompression of its layers.
//!
//! Every node is copied through fds relative to its parent directory:
//! regular files by `FICLONE` where the filesystem shares extents (btrfs,
//! XFS), else by `copy_file_range`, so the bytes never pass through user
//! space; hardlinks stay links; devices, FIFOs and symlinks are made
//! again; owners, modes, xattrs and mtimes are copied, directories' last
//! (their children would change their mtime). Measured on the generated
//! Debian image (README, "Run an image"), this is about twice as fast as
//! unpacking again on ext4 and more on tmpfs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{
    copy_file_range, ioctl_ficlone, linkat, mkdirat, mknodat, openat, readlinkat, statat,
    symlinkat, AtFlags, Dir, FileType, Mode, OFlags, Stat, Timestamps,
};
use rustix::io::Errno;

/// Copies the tree at `source` to a new directory `target` (whose parent
/// exists), as described in the module doc. On failure the caller
/// removes `target`.
pub(super) fn clone_tree(source: &Path, target: &Path) -> Result<()> {
    let open_dir = |path: &Path| {
        openat(rustix::fs::CWD, path, dir_flags(), Mode::empty())
            .with_context(|| format!("open {}", path.display()))
    };
    let from = open_dir(source)?;
    let root = statat(&from, "", AtFlags::EMPTY_PATH)
        .with_context(|| format!("stat {}", source.display()))?;
    let parent = target.parent().unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or(target.as_os_str());
    let parent_fd = open_dir(parent)?;
    mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700))
        .with_context(|| format!("mkdir {}", target.display()))?;
    let to = openat(&parent_fd, name, dir_flags(), Mode::empty())
        .with_context(|| format!("open {}", target.display()))?;
    let mut copy = Copy::into(&to)?;
    copy.directory(&from, &to, Path::new(""))
        .and_then(|()| root_metadata(&from, &to, &root))
        .with_context(|| format!("copy {} to {}", source.display(), target.display()))
}

/// [`apply_metadata`] for the tree's root, through its own fds.
pub(super) fn root_metadata(from: &OwnedFd, to: &OwnedFd, stat: &Stat) -> Result<()> {
    let owner = Some(rustix::fs::Uid::from_raw(stat.st_uid));
    let group = Some(rustix::fs::Gid::from_raw(stat.st_gid));
    rustix::fs::fchown(to, owner, group).context("chown .")?;
    rustix::fs::fchmod(to, Mode::from_raw_mode(stat.st_mode & 0o7777)).context("chmod .")?;
    let len = rustix::fs::flistxattr(from, &mut [0u8; 0][..]).context("listxattr .")?;
    let mut names = vec![0; len];
    let n = rustix::fs::flistxattr(from, &mut names[..]).context("listxattr .")?;
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let len = rustix::fs::fgetxattr(from, name, &mut [0u8; 0][..]).context("getxattr .")?;
        let mut value = vec![0; len];
        let n = rustix::fs::fgetxattr(from, name, &mut value[..]).context("getxattr .")?;
        rustix::fs::fsetxattr(to, name, &value[..n], rustix::fs::XattrFlags::empty())
            .context("setxattr .")?;
    }
    rustix::fs::futimens(to, &timestamps(stat)).context("utimensat .")
}

fn timestamps(stat: &Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: stat.st_atime as _,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: stat.st_mtime as _,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}

pub(super) fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Copies nodes into one target tree, keeping hardlinks as links.
pub(super) struct Copy {
    /// The target's root, which hardlinks are made relative to.
    to_root: OwnedFd,
    /// Cleared at the first file the filesystem cannot reflink.
    reflink: bool,
    /// (dev, ino) of every multiply-linked file copied, and its path.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copy {
    /// Copies into the tree whose root is open as `to_root`.
    pub(super) fn into(to_root: &OwnedFd) -> Result<Copy> {
        Ok(Copy {
            to_root: to_root.try_clone().context("dup the target fd")?,
            reflink: true,
            links: HashMap::new(),
        })
    }

    /// Copies the entries of `from` into `to`; `rel` is their path in
    /// the tree, for errors and hardlinks.
    fn directory(&mut self, from: &OwnedFd, to: &OwnedFd, rel: &Path) -> Result<()> {
        let listing = Dir::read_from(from).with_context(|| format!("read {}", shown(rel)))?;
        for entry in listing {
            let entry = entry.with_context(|| format!("read {}", shown(rel)))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
            if name == "." || name == ".." {
                continue;
            }
            let path = rel.join(&name);
            self.node(from, to, &name, &path)
                .with_context(|| format!("copy {}", path.display()))?;
        }
        Ok(())
    }

    /// Copies one node (a directory with its subtree) and its metadata;
    /// `rel` is its path from the target's root.
    pub(super) fn node(
        &mut self,
        from: &OwnedFd,
        to: &OwnedFd,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        let stat = statat(from, name, AtFlags::SYMLINK_NOFOLLOW).context("stat")?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let key = (stat.st_dev, stat.st_ino);
        if kind == FileType::RegularFile && stat.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                return linkat(&self.to_root, first, to, name, AtFlags::empty())
                    .with_context(|| format!("link to {}", first.display()));
            }
            self.links.insert(key, rel.to_path_buf());
        }
        match kind {
            FileType::Directory => {
                mkdirat(to, name, Mode::from_raw_mode(0o700)).context("mkdir")?;
                let sub_from = openat(from, name, dir_flags(), Mode::empty()).context("open")?;
                let sub_to = openat(to, name, dir_flags(), Mode::empty()).context("open")?;
                self.directory(&sub_from, &sub_to, rel)?;
            }
            FileType::RegularFile => self.file(from, to, name, stat.st_size as u64)?,
            FileType::Symlink => {
                let target = readlinkat(from, name, Vec::new()).context("readlink")?;
                symlinkat(target.as_c_str(), to, name).context("symlink")?;
            }
            _ => mknodat(to, name, kind, Mode::from_raw_mode(0o600), stat.st_rdev)
                .context("mknod")?,
        }
        apply_metadata(from, to, name, &stat, rel)
    }

    /// Copies a regular file's bytes: reflinked when the filesystem can,
    /// else copied in the kernel.
    fn file(&mut self, from: &OwnedFd, to: &OwnedFd, name: &OsStr, size: u64) -> Result<()> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let input = openat(from, name, flags, Mode::empty()).context("open")?;
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let output = openat(
            to,
            name,
            create | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .context("create")?;
        if self.reflink && size > 0 {
            match ioctl_ficlone(&output, &input) {
                Ok(()) => return Ok(()),
                // No shared extents here (ext4, tmpfs) or across these
                // mounts: copy this file and every later one.
                Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY) => {
                    self.reflink = false;
                }
                Err(err) => return Err(err).context("FICLONE"),
            }
        }
        let mut left = size;
        while left > 0 {
            let chunk = usize::try_from(left).unwrap_or(usize::MAX).min(1 << 30);
            match copy_file_range(&input, None, &output, None, chunk).context("copy_file_range")? {
                0 => break,
                n => left -= n as u64,
            }
        }
        Ok(())
    }
}

/// Owner, mode (after the owner, which clears setuid), xattrs and times
/// of `name` in `to`, from `stat` and from `name` in `from`.
pub(super) fn apply_metadata(
    from: &OwnedFd,
    to: &OwnedFd,
    name: &OsStr,
    stat: &Stat,
    rel: &Path,
) -> Result<()> {
    let kind = FileType::from_raw_mode(stat.st_mode);
    let owner = Some(rustix::fs::Uid::from_raw(stat.st_uid));
    let group = Some(rustix::fs::Gid::from_raw(stat.st_gid));
    rustix::fs::chownat(to, name, owner, group, AtFlags::SYMLINK_NOFOLLOW).context("chown")?;
    if kind != FileType::Symlink {
        let mode = Mode::from_raw_mode(stat.st_mode & 0o7777);
        rustix::fs::chmodat(to, name, mode, AtFlags::empty()).context("chmod")?;
    }
    copy_xattrs(&in_dir(from, name), &in_dir(to, name))
        .with_context(|| format!("copy the xattrs of {}", shown(rel)))?;
    rustix::fs::utimensat(to, name, &timestamps(stat), AtFlags::SYMLINK_NOFOLLOW)
        .context("utimensat")
}

/// `name` in the directory open as `dir`, as a path the `l*xattr` calls
/// resolve through the fd: the last component is not followed.
pub(super) fn in_dir(dir: &impl AsFd, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    path.push(name);
    path
}

/// The NUL-separated xattr names of `path` (not following a last
/// symlink); none where the filesystem has no xattrs.
pub(super) fn xattr_names(path: &Path) -> Result<Vec<u8>, Errno> {
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
        Ok(len) => len,
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    let n = rustix::fs::llistxattr(path, spare(&mut names, len))?;
    names.truncate(n);
    Ok(names)
}

pub(super) fn copy_xattrs(from: &Path, to: &Path) -> Result<(), Errno> {
    let names = xattr_names(from)?;
    let mut value = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr_query(from, name)?;
        let n = rustix::fs::lgetxattr(from, name, spare(&mut value, len))?;
        rustix::fs::lsetxattr(to, name, &value[..n], rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}

/// `buf` cleared and grown to `len` bytes, to be written into.
fn spare(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.clear();
    buf.resize(len, 0);
    buf
}

pub(super) fn shown(rel: &Path) -> String {
    match rel.as_os_str().is_empty() {
        true => ".".to_owned(),
        false => rel.display().to_string(),
    }
}
