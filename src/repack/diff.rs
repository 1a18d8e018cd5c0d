//! The rootfs form: walk the changed tree beside the image's model and
//! list what differs (see the module doc for the rule and its blind spot).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::error::{io_err, RepackError};
use super::lower::{LowerNode, LowerTree};
use super::node::{
    disk_path, join, link_groups, node_from_disk, note_inode, read_xattrs, sorted_children, split,
    Change, Inodes, Item, Kind, Node, Xattrs,
};
use crate::unpack::image_xattr;

/// The layer items that turn the image's tree into the one at `root`,
/// sorted by tar name.
pub(crate) fn diff(root: &Path, lower: &LowerTree, hash: bool) -> Result<Vec<Item>, RepackError> {
    let mut walk = Walk {
        root,
        lower,
        hash,
        items: Vec::new(),
        inodes: Inodes::new(),
        seen: HashSet::new(),
        dirs: HashSet::new(),
        opaque: HashSet::new(),
    };
    walk.dir(b"")?;
    walk.deletions();
    link_groups(walk.items, &walk.inodes, &mut |path| put_item(root, path))
}

struct Walk<'a> {
    root: &'a Path,
    lower: &'a LowerTree,
    hash: bool,
    items: Vec<Item>,
    inodes: Inodes,
    /// Every path of the rootfs.
    seen: HashSet<Vec<u8>>,
    /// The directories of the rootfs.
    dirs: HashSet<Vec<u8>>,
    /// Directories written opaque: their lower content needs no whiteouts.
    opaque: HashSet<Vec<u8>>,
}

impl Walk<'_> {
    /// Compares the children of directory `path`, and recurses.
    fn dir(&mut self, path: &[u8]) -> Result<(), RepackError> {
        self.dirs.insert(path.to_vec());
        let mut kept_lower = 0usize;
        for name in sorted_children(&disk_path(self.root, path))? {
            let child = join(path, &name);
            let on_disk = disk_path(self.root, &child);
            let meta =
                std::fs::symlink_metadata(&on_disk).map_err(|e| io_err("lstat", &on_disk, e))?;
            note_inode(&mut self.inodes, &meta, &child);
            let node = node_from_disk(&on_disk, &meta, image_xattrs(&on_disk)?)?;
            let lower = self.lower.nodes.get(&child);
            kept_lower += usize::from(lower.is_some());
            let changed = match lower {
                None => true,
                Some(lower) => self.differs(lower, &node, &on_disk)?,
            };
            let is_dir = node.kind == Kind::Dir;
            if changed {
                self.items.push(Item {
                    path: child.clone(),
                    change: Change::Put {
                        node,
                        source: on_disk,
                    },
                });
            }
            self.seen.insert(child.clone());
            if is_dir {
                self.dir(&child)?;
            }
        }
        // A directory none of whose lower content is left was replaced
        // wholesale (`rm -rf d && mkdir d`): one opaque marker says so.
        if !path.is_empty() && kept_lower == 0 && self.lower.has_children(path) {
            self.opaque.insert(path.to_vec());
            self.items.push(Item {
                path: path.to_vec(),
                change: Change::Opaque,
            });
        }
        Ok(())
    }

    /// Whether the rootfs node differs from the image's.
    fn differs(&self, lower: &LowerNode, node: &Node, on_disk: &Path) -> Result<bool, RepackError> {
        let old = &lower.node;
        if old.kind != node.kind
            || old.uid != node.uid
            || old.gid != node.gid
            || old.mtime != node.mtime
        {
            return Ok(true);
        }
        // The applier leaves a symlink's mode alone and cannot set its
        // xattrs, so only its target, owner and mtime say anything.
        if matches!(node.kind, Kind::Symlink(_)) {
            return Ok(false);
        }
        if old.mode != node.mode || old.size != node.size || old.xattrs != node.xattrs {
            return Ok(true);
        }
        match (&lower.sha256, self.hash && node.kind == Kind::File) {
            (Some(expected), true) => Ok(hash_file(on_disk)? != *expected),
            _ => Ok(false),
        }
    }

    /// Whiteouts for the image's paths the rootfs no longer has: only the
    /// topmost one of a deleted subtree, and none inside an opaque or a
    /// replaced directory.
    fn deletions(&mut self) {
        for path in self.lower.nodes.keys() {
            if self.seen.contains(path) {
                continue;
            }
            let parent = split(path).0;
            if self.dirs.contains(parent) && !self.opaque.contains(parent) {
                self.items.push(Item {
                    path: path.clone(),
                    change: Change::Whiteout,
                });
            }
        }
    }
}

/// The `Put` item for a rootfs path the walk did not list as changed.
fn put_item(root: &Path, path: &[u8]) -> Result<Item, RepackError> {
    let on_disk = disk_path(root, path);
    let meta = std::fs::symlink_metadata(&on_disk).map_err(|e| io_err("lstat", &on_disk, e))?;
    let node = node_from_disk(&on_disk, &meta, image_xattrs(&on_disk)?)?;
    Ok(Item {
        path: path.to_vec(),
        change: Change::Put {
            node,
            source: on_disk,
        },
    })
}

/// The xattrs of a rootfs path that are image content (the applier's
/// rule): what a layer could have set there.
fn image_xattrs(path: &Path) -> Result<Xattrs, RepackError> {
    let mut xattrs = read_xattrs(path)?;
    xattrs.retain(|(name, _)| image_xattr(name));
    Ok(xattrs)
}

fn hash_file(path: &Path) -> Result<[u8; 32], RepackError> {
    let err = |e| io_err("read", path, e);
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
}
