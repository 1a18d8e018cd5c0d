//! File-descriptor operations that confine every mutation to the rootfs.
//!
//! Parents are resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! relative to the root directory fd, so `..` and absolute symlinks in the
//! tree are clamped to the root. The last component is always acted on with
//! an `*at` call that does not follow symlinks. No path string is checked and
//! then used: what was resolved is the fd we act on.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

/// Flags for every resolution below the root: clamp to the root, refuse
/// `/proc` magic links.
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Opens the directory at `unsafe_path` (relative, already normalized, may be
/// empty for the root itself) inside `root`. Symlinks on the way, including
/// the last component, are followed but clamped to the root: this is what
/// gives keep-dirlinks semantics for parents.
pub fn open_dir_in_root(root: BorrowedFd<'_>, unsafe_path: &[u8]) -> io::Result<OwnedFd> {
    let path: &[u8] = if unsafe_path.is_empty() {
        b"."
    } else {
        unsafe_path
    };
    loop {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`, with `None` for a missing name.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file type recorded in a `Stat`.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Removes `name` from `dir`, whatever it is; a directory goes with its whole
/// subtree. A missing name is not an error.
pub fn remove_any_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => remove_tree_at(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// Removes the directory `name` in `dir` and everything below it, walking by
/// fds so that a symlink inside is removed, never followed.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let child = match open_subdir_nofollow(dir, name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc_enoent()) => return Ok(()),
        Err(e) => return Err(e),
    };
    clear_dir(child.as_fd(), &mut |_| false)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn libc_enoent() -> i32 {
    Errno::NOENT.raw_os_error()
}

/// Opens the directory `name` directly in `dir` without following a symlink.
pub fn open_subdir_nofollow(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Lists the names in a directory fd, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Removes every child of `dir` for which `keep` says no.
pub fn clear_dir(dir: BorrowedFd<'_>, keep: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
    for name in list_dir(dir)? {
        if !keep(&name) {
            remove_any_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Creates a new regular file `name` in `dir` with permission bits `mode`
/// (which the umask and a default ACL may narrow), refusing to follow or
/// reuse anything already there (the caller removes it first).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )
    .map_err(io::Error::from)
}

/// Whether `dir` has no entries.
pub fn is_empty_dir(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for entry in Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `dir` carries a default ACL, which then narrows the mode of
/// what is created in it instead of the umask. An error counts as yes.
pub fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    match rustix::fs::fgetxattr(dir, "system.posix_acl_default", &mut [0u8; 0][..]) {
        Ok(_) => true,
        Err(e) => !matches!(e, Errno::NODATA | Errno::NOTSUP),
    }
}

/// This process's umask, from `/proc/self/status` (reading it any other
/// way means setting it, which would race with the caller's threads);
/// `None` without procfs.
pub fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// `mkdirat` that treats an existing name as success only when the caller
/// says so.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(io::Error::from)
}

/// Creates a symlink `name` in `dir` whose target is stored verbatim.
pub fn symlink_at(dir: BorrowedFd<'_>, name: &[u8], target: &[u8]) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(io::Error::from)
}

/// Hardlinks `src_dir/src_name` to `dst_dir/dst_name` without following a
/// symlink at the source.
pub fn link_at(
    src_dir: BorrowedFd<'_>,
    src_name: &[u8],
    dst_dir: BorrowedFd<'_>,
    dst_name: &[u8],
) -> io::Result<()> {
    rustix::fs::linkat(src_dir, src_name, dst_dir, dst_name, AtFlags::empty())
        .map_err(io::Error::from)
}

/// Creates a device node or fifo.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: FileType,
    mode: u32,
    dev: u64,
) -> io::Result<()> {
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(mode & 0o7777), dev)
        .map_err(io::Error::from)
}

/// Sets ownership on an open fd.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(io::Error::from)
}

/// Sets ownership of `name` in `dir` without following a symlink.
pub fn lchown_at(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Sets all permission bits (setuid, setgid and sticky included) on an fd.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(io::Error::from)
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets atime and mtime on an open fd.
pub fn set_times_fd(fd: BorrowedFd<'_>, mtime: u64) -> io::Result<()> {
    rustix::fs::futimens(fd, &timestamps(mtime)).map_err(io::Error::from)
}

/// Sets atime and mtime of `name` in `dir`, on a symlink itself.
pub fn set_times_at_nofollow(dir: BorrowedFd<'_>, name: &[u8], mtime: u64) -> io::Result<()> {
    rustix::fs::utimensat(dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// Sets one extended attribute on an open fd.
pub fn set_xattr_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()).map_err(io::Error::from)
}

/// Renames `from` to `to`; an existing empty directory at `to` is replaced,
/// anything else fails.
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &[u8],
    to_dir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    rustix::fs::renameat(from_dir, from, to_dir, to).map_err(io::Error::from)
}

/// Sets permission bits on `name` in `dir`, for nodes that cannot be opened
/// safely (devices, fifos) right after the caller created them.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// Removes the empty directory `name` in `dir`.
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io::Error::from)
}
