//! Host preparation (upstream-api.md, "Shared validation rules"): the
//! runtime root prefix, the
//! symlink-refusing directory walk, and the root sentinel `.metalor-root`.
//!
//! The walk goes through directory fds (`openat` with `O_NOFOLLOW`, then
//! `mkdirat`), so a component is checked and used through the same fd and
//! cannot be swapped for a symlink in between. The walk's last fd is what
//! it returns ([`DirHandle`]): the sentinel is written, and the inner
//! runner mounts and `chroot`s, through that fd, never by reopening the
//! path.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::validate::validate_host_absolute;

/// The file in a container root that records which prefix it was prepared
/// under; the inner runner refuses a root whose sentinel disagrees.
pub(crate) const ROOT_SENTINEL: &str = ".metalor-root";

/// A directory held open: everything done in it goes through `fd`. `path`
/// is where it was when opened, canonical, for messages and for the
/// re-exec's args only; nothing reopens it.
#[derive(Debug)]
pub(crate) struct DirHandle {
    pub(crate) fd: OwnedFd,
    pub(crate) path: PathBuf,
}

/// What a name in a directory turned out to be, opened without following
/// a final symlink.
pub(crate) enum Entry {
    Missing,
    Symlink,
    Directory(OwnedFd),
    Other(OwnedFd),
}

/// Opens `name` in `dir` as an `O_PATH` fd, never following a symlink.
pub(crate) fn open_entry(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Entry> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Entry::Missing),
        Err(err) => return Err(err.into()),
    };
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
    Ok(match kind {
        FileType::Symlink => Entry::Symlink,
        FileType::Directory => Entry::Directory(fd),
        _ => Entry::Other(fd),
    })
}

/// Opens an absolute path as an `O_PATH` directory fd; the last component
/// must not be a symlink. Earlier components are followed.
pub(crate) fn open_dir_nofollow(path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Creates directory `name` in `dir` unless it appeared meanwhile.
pub(crate) fn make_dir_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Upstream's `prepare_host_directory`: walk `path` from `/`, creating
/// missing directories one level at a time, refusing any symlink or
/// non-directory component. Returns the final directory's fd, and the path
/// the walk took, which is canonical: it has no symlink and no `..`.
pub(crate) fn prepare_host_directory(path: &Path, ctx: &str) -> Result<DirHandle> {
    let mut dir = open_dir_nofollow(Path::new("/")).context("failed to open /")?;
    let mut partial = PathBuf::from("/");
    for component in path.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{ctx} must not contain '..': {}", path.display())
            }
        };
        partial.push(name);
        let mut entry = open_entry(&dir, name)
            .with_context(|| format!("failed to inspect {}", partial.display()))?;
        if let Entry::Missing = entry {
            make_dir_at(&dir, name)
                .with_context(|| format!("failed to create {}", partial.display()))?;
            entry = open_entry(&dir, name)
                .with_context(|| format!("failed to inspect {}", partial.display()))?;
        }
        dir = match entry {
            Entry::Directory(fd) => fd,
            Entry::Symlink => bail!("{ctx} {} traverses a symlink", partial.display()),
            Entry::Other(_) | Entry::Missing => bail!(
                "{ctx} {} traverses a non-directory path component at {}",
                path.display(),
                partial.display()
            ),
        };
    }
    Ok(DirHandle {
        fd: dir,
        path: partial,
    })
}

/// Opens `path` as an `O_PATH` directory fd, following symlinks, and
/// returns it with the canonical path of what was opened: upstream's
/// `fs::canonicalize`, but bound to the fd, so the directory checked is
/// the directory used.
pub(crate) fn open_dir_canonical(path: &Path) -> std::io::Result<DirHandle> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    // The kernel's own name for the open directory, not a second lookup.
    let path = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(DirHandle { fd, path })
}

/// Upstream's `canonicalize_runtime_root_prefix`.
pub(crate) fn canonicalize_runtime_root_prefix(prefix: &Path) -> Result<PathBuf> {
    if prefix == Path::new("/") {
        bail!("runtime root prefix must not be /");
    }
    validate_host_absolute(prefix, "runtime root prefix")?;
    fs::canonicalize(prefix).with_context(|| {
        format!(
            "failed to canonicalize runtime root prefix {}",
            prefix.display()
        )
    })
}

fn ensure_under_prefix(root: &Path, prefix: &Path, ctx: &str) -> Result<()> {
    if !root.starts_with(prefix) {
        bail!(
            "{ctx} {} must live under runtime root prefix {}",
            root.display(),
            prefix.display()
        );
    }
    Ok(())
}

/// Upstream's `prepare_runtime_workspace`: `root` must be spelled under the
/// canonical prefix, is created with the symlink-refusing walk, and must
/// still be under the prefix once canonical. Returns the walk's handle;
/// its path is the canonical path, which upstream got from a second,
/// symlink-following lookup.
pub(crate) fn prepare_runtime_workspace(
    root: &Path,
    prefix: &Path,
    ctx: &str,
) -> Result<DirHandle> {
    if root == Path::new("/") {
        bail!("container root must not be /");
    }
    validate_host_absolute(root, ctx)?;
    ensure_under_prefix(root, prefix, ctx)?;
    let dir = prepare_host_directory(root, ctx)?;
    ensure_under_prefix(&dir.path, prefix, ctx)?;
    Ok(dir)
}

/// Upstream's `prepare_runtime_root`: prepare the container root and write
/// the sentinel holding the canonical prefix. Returns the root's handle.
pub(crate) fn prepare_runtime_root(root: &Path, prefix: &Path) -> Result<DirHandle> {
    let dir = prepare_runtime_workspace(root, prefix, "container root")?;
    write_sentinel(&dir, prefix)?;
    Ok(dir)
}

/// Creates or overwrites the sentinel through the root's fd, never through
/// a symlink. A sentinel that already holds the prefix is left alone: the
/// result is the same, and a run on a prepared root then writes nothing
/// (on ext4 the rename below would flush the new file to disk).
fn write_sentinel(dir: &DirHandle, prefix: &Path) -> Result<()> {
    let (root, path) = (&dir.fd, &dir.path.join(ROOT_SENTINEL));
    let name = OsStr::new(ROOT_SENTINEL);
    match open_entry(root, name).with_context(|| format!("failed to inspect {}", path.display()))? {
        Entry::Symlink => bail!(
            "runtime root sentinel {} must not be a symlink",
            path.display()
        ),
        Entry::Directory(_) => bail!("runtime root sentinel {} must be a file", path.display()),
        Entry::Other(fd) => {
            let kind = FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
            if kind != FileType::RegularFile {
                bail!("runtime root sentinel {} must be a file", path.display());
            }
            if holds_exactly(root, name, prefix.as_os_str().as_bytes()) {
                return Ok(());
            }
        }
        Entry::Missing => {}
    }
    // Written beside it and renamed over it: parallel runs on one root
    // rewrite the sentinel while others verify it, and a truncate-then-write
    // would let them read it empty. A rename replaces the entry itself, so
    // it never writes through a symlink either.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let temp = format!("{ROOT_SENTINEL}.{}-{nanos:09}", std::process::id());
    let failed = || format!("failed to write runtime root sentinel {}", path.display());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(root, temp.as_str(), flags, Mode::from_raw_mode(0o644))
        .with_context(failed)?;
    let written = fs::File::from(fd)
        .write_all(prefix.as_os_str().as_bytes())
        .and_then(|()| Ok(rustix::fs::renameat(root, temp.as_str(), root, name)?));
    if written.is_err() {
        let _ = rustix::fs::unlinkat(root, temp.as_str(), rustix::fs::AtFlags::empty());
    }
    written.with_context(failed)
}

/// Whether `name` in `dir` is a regular file holding exactly `expected`;
/// any failure to tell counts as no. Opened non-blocking, so a FIFO swapped
/// in since the caller's check cannot hang the open.
fn holds_exactly(dir: &OwnedFd, name: &OsStr, expected: &[u8]) -> bool {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::openat(dir, name, flags, Mode::empty()) else {
        return false;
    };
    let regular = rustix::fs::fstat(&fd)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
    if !regular {
        return false;
    }
    // One byte more than expected tells a longer file apart.
    let mut content = Vec::with_capacity(expected.len() + 1);
    let file = fs::File::from(fd);
    let read = std::io::Read::read_to_end(
        &mut std::io::Read::take(file, expected.len() as u64 + 1),
        &mut content,
    );
    read.is_ok() && content == expected
}

/// Reads the sentinel of the opened root for the inner check, without
/// following a symlink.
pub(crate) fn verify_sentinel(root: &DirHandle, prefix: &Path) -> Result<()> {
    let path = root.path.join(ROOT_SENTINEL);
    let dir = &root.fd;
    match open_entry(dir, OsStr::new(ROOT_SENTINEL))
        .with_context(|| format!("failed to inspect {}", path.display()))?
    {
        Entry::Missing => bail!("missing runtime root sentinel {}", path.display()),
        Entry::Symlink => bail!(
            "runtime root sentinel {} must not be a symlink",
            path.display()
        ),
        Entry::Directory(_) => bail!("runtime root sentinel {} must be a file", path.display()),
        Entry::Other(_) => {}
    }
    // Non-blocking: a FIFO swapped in after the check above must not hang
    // the open; the fstat below refuses it.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, OsStr::new(ROOT_SENTINEL), flags, Mode::empty())
        .with_context(|| format!("failed to read runtime root sentinel {}", path.display()))?;
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        bail!("runtime root sentinel {} must be a file", path.display());
    }
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut content)
        .with_context(|| format!("failed to read runtime root sentinel {}", path.display()))?;
    if content != prefix.as_os_str().as_bytes() {
        bail!(
            "runtime root sentinel {} did not match the declared runtime root prefix",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A prefix holding `root` (walked and prepared) and a `decoy`; then
    /// `root` is moved to `moved` and a symlink to `decoy` takes its
    /// place. Whatever acts through the handle must land in `moved`.
    struct Swapped {
        _tmp: tempfile::TempDir,
        prefix: PathBuf,
        moved: PathBuf,
        decoy: PathBuf,
        handle: DirHandle,
    }

    fn swapped_after_walk() -> Swapped {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = fs::canonicalize(tmp.path()).unwrap();
        let root = prefix.join("root");
        let handle = prepare_runtime_workspace(&root, &prefix, "container root").unwrap();
        assert_eq!(handle.path, root, "the walk's path is the canonical one");
        let (moved, decoy) = (prefix.join("moved"), prefix.join("decoy"));
        fs::create_dir(&decoy).unwrap();
        fs::rename(&root, &moved).unwrap();
        symlink(&decoy, &root).unwrap();
        Swapped {
            _tmp: tmp,
            prefix,
            moved,
            decoy,
            handle,
        }
    }

    #[test]
    fn the_sentinel_is_written_through_the_walked_fd() {
        let fx = swapped_after_walk();
        write_sentinel(&fx.handle, &fx.prefix).unwrap();
        let written = fs::read(fx.moved.join(ROOT_SENTINEL)).unwrap();
        assert_eq!(written, fx.prefix.as_os_str().as_bytes());
        assert!(!fx.decoy.join(ROOT_SENTINEL).exists());
    }

    #[test]
    fn the_sentinel_is_verified_through_the_held_fd() {
        let fx = swapped_after_walk();
        write_sentinel(&fx.handle, &fx.prefix).unwrap();
        fs::write(fx.decoy.join(ROOT_SENTINEL), b"/somewhere/else").unwrap();
        verify_sentinel(&fx.handle, &fx.prefix).unwrap();
    }

    #[test]
    fn walks_refuse_a_symlinked_component() {
        let fx = swapped_after_walk();
        let through = fx.prefix.join("root/child");
        let err = prepare_runtime_workspace(&through, &fx.prefix, "container root").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "container root {} traverses a symlink",
                fx.prefix.join("root").display()
            )
        );
        assert!(!fx.decoy.join("child").exists());
    }

    #[test]
    fn an_opened_root_knows_its_canonical_path() {
        let fx = swapped_after_walk();
        // Opened through the symlink, as upstream's canonicalize followed
        // it; the path is the kernel's name for what was opened.
        let opened = open_dir_canonical(&fx.prefix.join("root")).unwrap();
        assert_eq!(opened.path, fx.decoy);
        assert_eq!(fd_path(&fx.handle.fd), fx.moved);
    }

    fn fd_path(fd: &OwnedFd) -> PathBuf {
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
    }
}
