//! Bringing a sealed bundle back to its pristine tree by redoing only what
//! changed since the seal (see [`super::seal`] for why a ctime at or
//! above the seal time is exactly "changed").
//!
//! One walk of the bundle's rootfs beside the pristine tree:
//! - an entry whose ctime is below the seal time is as it was copied: a
//!   file is left alone, a directory is walked into (its own entries are
//!   unchanged, deeper ones may not be);
//! - a changed directory has its names compared with the pristine one:
//!   extra names are removed, missing ones copied, and its owner, mode,
//!   xattrs and mtime are set again once its children are done;
//! - any other changed entry, or one whose type changed, is removed and
//!   copied again from the pristine tree.
//!
//! Every name of a hardlinked file shares its inode, so when one name is
//! changed, all are, and all are copied again as one set of links (the
//! copier's link map). The caller removes the seal before it starts, so a
//! repair that fails or is killed half-way is never taken for a whole
//! bundle: the next call copies it afresh.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{openat, statat, AtFlags, Dir, FileType, Mode, Stat};

use super::clone::{apply_metadata, dir_flags, in_dir, root_metadata, shown, xattr_names, Copy};
use super::seal::{ctime, Ctime};
use crate::runtime::tree::remove_path_if_exists;

/// Repairs `rootfs` against `pristine`; returns how many entries it redid.
pub(super) fn repair(pristine: &Path, rootfs: &Path, sealed: Ctime) -> Result<usize> {
    let open = |path: &Path| {
        openat(rustix::fs::CWD, path, dir_flags(), Mode::empty())
            .with_context(|| format!("open {}", path.display()))
    };
    let (from, to) = (open(pristine)?, open(rootfs)?);
    let mut walk = Repair {
        copy: Copy::into(&to)?,
        sealed,
        redone: 0,
    };
    let stat = |fd: &OwnedFd, path: &Path| {
        statat(fd, "", AtFlags::EMPTY_PATH).with_context(|| format!("stat {}", path.display()))
    };
    let root = stat(&to, rootfs)?;
    walk.directory(&from, &to, Path::new(""), ctime(&root) >= sealed)
        .with_context(|| format!("repair {} from {}", rootfs.display(), pristine.display()))?;
    if ctime(&root) >= sealed {
        let pristine_root = stat(&from, pristine)?;
        drop_extra_xattrs(
            &in_dir(&from, OsStr::new(".")),
            &in_dir(&to, OsStr::new(".")),
        )
        .context("remove xattrs of .")?;
        root_metadata(&from, &to, &pristine_root)?;
        walk.redone += 1;
    }
    Ok(walk.redone)
}

struct Repair {
    copy: Copy,
    sealed: Ctime,
    redone: usize,
}

fn names(dir: &OwnedFd, rel: &Path) -> Result<BTreeSet<OsString>> {
    let mut names = BTreeSet::new();
    for entry in Dir::read_from(dir).with_context(|| format!("read {}", shown(rel)))? {
        let entry = entry.with_context(|| format!("read {}", shown(rel)))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

impl Repair {
    /// Repairs the entries of `to` (at `rel`) from `from`; `changed` says
    /// whether `to`'s own entries may differ from `from`'s.
    fn directory(&mut self, from: &OwnedFd, to: &OwnedFd, rel: &Path, changed: bool) -> Result<()> {
        let ours = names(to, rel)?;
        if !changed {
            for name in &ours {
                self.entry(from, to, name, &rel.join(name))?;
            }
            return Ok(());
        }
        let theirs = names(from, rel)?;
        for name in ours.difference(&theirs) {
            let path = rel.join(name);
            remove_path_if_exists(&in_dir(to, name))
                .with_context(|| format!("remove {}", path.display()))?;
            self.redone += 1;
        }
        for name in theirs.difference(&ours) {
            let path = rel.join(name);
            self.copy
                .node(from, to, name, &path)
                .with_context(|| format!("copy {}", path.display()))?;
            self.redone += 1;
        }
        for name in ours.intersection(&theirs) {
            self.entry(from, to, name, &rel.join(name))?;
        }
        Ok(())
    }

    /// Repairs one entry that both trees have by name.
    fn entry(&mut self, from: &OwnedFd, to: &OwnedFd, name: &OsStr, rel: &Path) -> Result<()> {
        let ours = statat(to, name, AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("stat {}", rel.display()))?;
        let changed = ctime(&ours) >= self.sealed;
        let kind = FileType::from_raw_mode(ours.st_mode);
        if !changed && kind != FileType::Directory {
            return Ok(());
        }
        let theirs = statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("stat {} in the pristine tree", rel.display()))?;
        if kind == FileType::Directory && FileType::from_raw_mode(theirs.st_mode) == kind {
            let open = |dir: &OwnedFd| {
                openat(dir, name, dir_flags(), Mode::empty())
                    .with_context(|| format!("open {}", rel.display()))
            };
            self.directory(&open(from)?, &open(to)?, rel, changed)?;
            if changed {
                self.directory_metadata(from, to, name, &theirs, rel)?;
            }
            return Ok(());
        }
        remove_path_if_exists(&in_dir(to, name))
            .with_context(|| format!("remove {}", rel.display()))?;
        self.copy
            .node(from, to, name, rel)
            .with_context(|| format!("copy {}", rel.display()))?;
        self.redone += 1;
        Ok(())
    }

    /// A changed directory's own metadata, set again from the pristine one.
    fn directory_metadata(
        &mut self,
        from: &OwnedFd,
        to: &OwnedFd,
        name: &OsStr,
        theirs: &Stat,
        rel: &Path,
    ) -> Result<()> {
        drop_extra_xattrs(&in_dir(from, name), &in_dir(to, name))
            .with_context(|| format!("remove xattrs of {}", rel.display()))?;
        apply_metadata(from, to, name, theirs, rel)
            .with_context(|| format!("reset {}", rel.display()))?;
        self.redone += 1;
        Ok(())
    }
}

/// Removes the xattrs `to` has and `from` has not.
fn drop_extra_xattrs(from: &Path, to: &Path) -> Result<(), rustix::io::Errno> {
    let keep = xattr_names(from)?;
    let keep: BTreeSet<&[u8]> = keep.split(|&b| b == 0).collect();
    for name in xattr_names(to)?
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        if !keep.contains(name) {
            rustix::fs::lremovexattr(to, OsStr::from_bytes(name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::linux::oci_rootfs::clone::clone_tree;
    use crate::runtime::linux::oci_rootfs::seal;

    /// Path → (mode, owner, size, mtime in ns, content or link target, the
    /// other names of its inode), for comparing two trees.
    type Snapshot = BTreeMap<PathBuf, (u32, u32, u64, i64, Vec<u8>, Vec<PathBuf>)>;

    fn snapshot(root: &Path) -> Snapshot {
        let mut by_inode: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        let mut nodes = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let rel = rel.join(entry.unwrap().file_name());
                let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
                let body = match meta.file_type() {
                    t if t.is_dir() => {
                        stack.push(rel.clone());
                        Vec::new()
                    }
                    t if t.is_symlink() => fs::read_link(root.join(&rel))
                        .unwrap()
                        .into_os_string()
                        .into_vec(),
                    _ => fs::read(root.join(&rel)).unwrap(),
                };
                if !meta.is_dir() {
                    by_inode.entry(meta.ino()).or_default().push(rel.clone());
                }
                nodes.push((rel, meta, body));
            }
        }
        use std::os::unix::ffi::OsStringExt;
        nodes
            .into_iter()
            .map(|(rel, meta, body)| {
                let mut links = by_inode.get(&meta.ino()).cloned().unwrap_or_default();
                links.sort();
                let mtime = meta.mtime_nsec() + meta.mtime() * 1_000_000_000;
                let value = (meta.mode(), meta.uid(), meta.len(), mtime, body, links);
                (rel, value)
            })
            .collect()
    }

    #[test]
    fn a_repair_redoes_exactly_what_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let pristine = tmp.path().join("pristine");
        for dir in ["etc/sub", "usr/lib", "var/old/deep", "opt"] {
            fs::create_dir_all(pristine.join(dir)).unwrap();
        }
        fs::write(pristine.join("etc/hosts"), b"hosts\n").unwrap();
        fs::write(pristine.join("etc/sub/conf"), b"conf\n").unwrap();
        fs::write(pristine.join("usr/lib/a"), b"shared\n").unwrap();
        fs::hard_link(pristine.join("usr/lib/a"), pristine.join("usr/lib/b")).unwrap();
        fs::hard_link(pristine.join("usr/lib/a"), pristine.join("opt/c")).unwrap();
        fs::write(pristine.join("var/old/deep/f"), b"f\n").unwrap();
        symlink("../etc/hosts", pristine.join("opt/link")).unwrap();
        let oci = tmp.path().join("oci");
        let bundle = oci.join("bundle");
        fs::create_dir_all(&bundle).unwrap();
        let rootfs = bundle.join("rootfs");
        clone_tree(&pristine, &rootfs).unwrap();
        seal::seal(&oci, &bundle, &pristine, "k");
        let sealed = seal::sealed_time(&oci, &bundle, &pristine, "k").unwrap();
        assert_eq!(repair(&pristine, &rootfs, sealed).unwrap(), 0, "untouched");
        // Writes, a chmod, an xattr, new and removed names, a type change,
        // a write through one name of three links and a new fourth link.
        fs::write(rootfs.join("etc/hosts"), b"changed\n").unwrap();
        fs::write(rootfs.join("etc/sub/new"), b"new\n").unwrap();
        fs::set_permissions(rootfs.join("etc/sub"), fs::Permissions::from_mode(0o700)).unwrap();
        let _ = rustix::fs::setxattr(
            rootfs.join("etc"),
            "user.extra",
            b"x",
            rustix::fs::XattrFlags::empty(),
        );
        fs::remove_dir_all(rootfs.join("var/old")).unwrap();
        fs::write(rootfs.join("var/old"), b"now a file\n").unwrap();
        fs::write(rootfs.join("opt/c"), b"through a link\n").unwrap();
        fs::hard_link(rootfs.join("usr/lib/a"), rootfs.join("usr/lib/d")).unwrap();
        fs::remove_file(rootfs.join("opt/link")).unwrap();
        assert!(repair(&pristine, &rootfs, sealed).unwrap() > 0);
        assert_eq!(snapshot(&rootfs), snapshot(&pristine));
        assert!(rustix::fs::getxattr(rootfs.join("etc"), "user.extra", &mut [0u8; 8][..]).is_err());
        let ino = |p: &str| fs::metadata(rootfs.join(p)).unwrap().ino();
        assert_eq!(ino("usr/lib/a"), ino("opt/c"), "the links are links again");
    }
}
