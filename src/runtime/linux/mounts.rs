//! Mount targets and mounts for the inner runner (upstream-api.md:
//! `prepare_container_mount_target` under "Shared validation rules", and
//! steps 2 to 6 of "the inner runner").
//!
//! A target is prepared by walking from the root's fd through directory
//! fds and refusing every symlink, and the mount goes onto the fd that walk
//! ended with (`move_mount` with `MOVE_MOUNT_T_EMPTY_PATH`), so no path
//! string is resolved again between the check and the mount. Bind sources
//! are cloned (`open_tree`) before anything else looks at them, and their
//! type is read from the clone.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsmount, fsopen, move_mount, open_tree, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use super::host::{make_dir_at, open_entry, Entry};
use crate::sys;

/// Whether a mount target should be a directory or a file.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum TargetKind {
    Directory,
    File,
}

/// Upstream's `prepare_container_mount_target`: creates the missing parts
/// of `dest` under the root held by `root` (directories, and an empty file
/// or directory at the end), refusing symlinks and wrong types. Returns an
/// `O_PATH` fd of the target; `dest` `/` is the root itself. `shown` is the
/// root's path, for messages only.
pub(crate) fn prepare_container_mount_target(
    root: &OwnedFd,
    shown: &Path,
    dest: &str,
    kind: TargetKind,
    ctx: &str,
) -> Result<OwnedFd> {
    let names: Vec<&OsStr> = Path::new(dest)
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    if names.is_empty() && kind == TargetKind::File {
        bail!("{ctx} must not be /");
    }
    let mut current = root
        .try_clone()
        .with_context(|| format!("failed to duplicate the fd of {}", shown.display()))?;
    let mut partial = PathBuf::from(shown);
    for (index, name) in names.iter().enumerate() {
        let last = index + 1 == names.len();
        partial.push(name);
        let inspect = || format!("failed to inspect {}", partial.display());
        let mut entry = open_entry(&current, name).with_context(inspect)?;
        if let Entry::Missing = entry {
            if last && kind == TargetKind::File {
                create_empty_file(&current, name)
                    .with_context(|| format!("failed to create {}", partial.display()))?;
            } else {
                make_dir_at(&current, name)
                    .with_context(|| format!("failed to create {}", partial.display()))?;
            }
            entry = open_entry(&current, name).with_context(inspect)?;
        }
        current = match (entry, last, kind) {
            (Entry::Symlink, _, _) => {
                bail!("{ctx} {dest} traverses a symlink at {}", partial.display())
            }
            (Entry::Directory(fd), false, _)
            | (Entry::Directory(fd), true, TargetKind::Directory) => fd,
            (Entry::Directory(_), true, TargetKind::File) => bail!(
                "{ctx} {dest} already exists as a directory at {}",
                partial.display()
            ),
            (Entry::Other(_), true, TargetKind::Directory) => bail!(
                "{ctx} {dest} already exists as a non-directory at {}",
                partial.display()
            ),
            (Entry::Other(fd), true, TargetKind::File) => fd,
            (Entry::Other(_), false, _) | (Entry::Missing, _, _) => bail!(
                "{ctx} {dest} traverses a non-directory path component at {}",
                partial.display()
            ),
        };
    }
    Ok(current)
}

fn create_empty_file(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644)) {
        Ok(_) | Err(Errno::EXIST) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Whether `dest` names the container root itself: a mount there replaces
/// the root for everything after it.
pub(crate) fn is_root_destination(dest: &str) -> bool {
    !Path::new(dest)
        .components()
        .any(|c| matches!(c, Component::Normal(_)))
}

/// A detached, non-recursive clone of `source` (symlinks followed), to be
/// attached with [`attach_bind`].
pub(crate) fn clone_bind_source(source: &Path) -> std::io::Result<OwnedFd> {
    Ok(open_tree(
        CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?)
}

/// Whether a bind clone is of a directory, read from the clone itself.
pub(crate) fn is_directory(tree: &OwnedFd) -> std::io::Result<bool> {
    let mode = rustix::fs::fstat(tree)?.st_mode;
    Ok(FileType::from_raw_mode(mode) == FileType::Directory)
}

/// Attaches a bind clone onto `target`, read-only if asked. The clone is
/// made read-only while still detached, so the target is never writable,
/// and locked flags are kept.
pub(crate) fn attach_bind(
    tree: &OwnedFd,
    target: &OwnedFd,
    read_only: bool,
) -> std::io::Result<()> {
    if read_only {
        sys::mount_set_readonly(tree.as_fd())?;
    }
    attach(tree, target)
}

/// Mounts a fresh procfs of the caller's PID namespace onto `target`.
pub(crate) fn mount_proc_onto(target: &OwnedFd) -> std::io::Result<()> {
    mount_new_fs_onto("proc", target).map(drop)
}

/// Mounts binfmt_misc onto `target`: the instance of the caller's user
/// namespace (the host's under the privileged backend). Returns the
/// mount's fd, through which the rule is registered and unregistered, so
/// whatever the payload later mounts over the path cannot redirect that.
pub(crate) fn mount_binfmt_misc_onto(target: &OwnedFd) -> std::io::Result<OwnedFd> {
    mount_new_fs_onto("binfmt_misc", target)
}

fn mount_new_fs_onto(fstype: &str, target: &OwnedFd) -> std::io::Result<OwnedFd> {
    let context = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_create(&context)?;
    let mount = fsmount(
        &context,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )?;
    attach(&mount, target)?;
    Ok(mount)
}

fn attach(mount: &OwnedFd, target: &OwnedFd) -> std::io::Result<()> {
    Ok(move_mount(
        mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::super::host::prepare_host_directory;
    use super::*;

    #[test]
    fn targets_are_prepared_under_the_held_root_after_a_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let root = prepare_host_directory(&base.join("root"), "container root").unwrap();
        fs::create_dir(base.join("decoy")).unwrap();
        fs::rename(base.join("root"), base.join("moved")).unwrap();
        symlink(base.join("decoy"), base.join("root")).unwrap();
        for (dest, kind) in [
            ("/proc/sys", TargetKind::Directory),
            ("/etc/resolv.conf", TargetKind::File),
        ] {
            prepare_container_mount_target(&root.fd, &root.path, dest, kind, "t").unwrap();
            let rel = dest.trim_start_matches('/');
            assert!(base.join("moved").join(rel).exists(), "{dest}");
            assert!(!base.join("decoy").join(rel).exists(), "{dest}");
        }
    }

    #[test]
    fn root_destinations() {
        for dest in ["/", "//", "/."] {
            assert!(is_root_destination(dest), "{dest}");
        }
        for dest in ["/a", "/./a", "/a/"] {
            assert!(!is_root_destination(dest), "{dest}");
        }
    }
}
