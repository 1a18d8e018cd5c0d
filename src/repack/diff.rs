//! The rootfs form: walk the changed tree beside the image's model and
//! list what differs (see the module doc for the rule and its blind spot).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::{io_err, RepackError};
use super::lower::{LowerNode, LowerTree};
use super::node::{
    disk_path, join, link_groups, node_from_disk, note_inode, read_xattrs, sorted_children, split,
    Change, Inodes, Item, Kind, Node, Xattrs,
};
use crate::unpack::image_xattr;

/// One path of the rootfs, as the walk found it.
pub(crate) struct Found {
    path: Vec<u8>,
    node: Node,
    source: PathBuf,
}

/// The rootfs as the walk found it, in walk order, with its hardlink
/// groups.
pub(crate) struct Walked {
    found: Vec<Found>,
    inodes: Inodes,
}

/// Walks the rootfs at `root` (`lstat`, `readlink`, `llistxattr` on every
/// path). Independent of the image, so it runs beside the layer scan.
pub(crate) fn walk(root: &Path) -> Result<Walked, RepackError> {
    let mut walked = Walked {
        found: Vec::new(),
        inodes: Inodes::new(),
    };
    walk_dir(root, b"", &mut walked)?;
    Ok(walked)
}

fn walk_dir(root: &Path, path: &[u8], walked: &mut Walked) -> Result<(), RepackError> {
    for name in sorted_children(&disk_path(root, path))? {
        let child = join(path, &name);
        let source = disk_path(root, &child);
        let meta = std::fs::symlink_metadata(&source).map_err(|e| io_err("lstat", &source, e))?;
        note_inode(&mut walked.inodes, &meta, &child);
        let node = node_from_disk(&source, &meta, image_xattrs(&source)?)?;
        let is_dir = node.kind == Kind::Dir;
        walked.found.push(Found {
            path: child.clone(),
            node,
            source,
        });
        if is_dir {
            walk_dir(root, &child, walked)?;
        }
    }
    Ok(())
}

/// The layer items that turn the image's tree into the walked rootfs at
/// `root`, sorted by tar name.
pub(crate) fn diff(
    root: &Path,
    walked: Walked,
    lower: &LowerTree,
    hash: bool,
) -> Result<Vec<Item>, RepackError> {
    let mut items = Vec::new();
    let mut seen = HashSet::with_capacity(walked.found.len());
    let mut dirs: HashSet<Vec<u8>> = HashSet::from([Vec::new()]);
    // Directories some of whose lower children are still there.
    let mut kept: HashSet<Vec<u8>> = HashSet::new();
    for found in walked.found {
        let old = lower.nodes.get(&found.path);
        if old.is_some() {
            kept.insert(split(&found.path).0.to_vec());
        }
        let changed = match old {
            None => true,
            Some(old) => differs(old, &found.node, &found.source, hash)?,
        };
        seen.insert(found.path.clone());
        if found.node.kind == Kind::Dir {
            dirs.insert(found.path.clone());
        }
        if changed {
            items.push(Item {
                path: found.path,
                change: Change::Put {
                    node: found.node,
                    source: found.source,
                },
            });
        }
    }
    // A directory none of whose lower content is left was replaced
    // wholesale (`rm -rf d && mkdir d`): one opaque marker says so.
    let opaque: HashSet<Vec<u8>> = dirs
        .iter()
        .filter(|d| !d.is_empty() && !kept.contains(*d) && lower.has_children(d))
        .cloned()
        .collect();
    items.extend(opaque.iter().map(|d| Item {
        path: d.clone(),
        change: Change::Opaque,
    }));
    items.extend(deletions(lower, &seen, &dirs, &opaque));
    link_groups(items, &walked.inodes, &mut |path| put_item(root, path))
}

/// Whether the rootfs node differs from the image's.
fn differs(
    lower: &LowerNode,
    node: &Node,
    on_disk: &Path,
    hash: bool,
) -> Result<bool, RepackError> {
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
    match (&lower.sha256, hash && node.kind == Kind::File) {
        (Some(expected), true) => Ok(hash_file(on_disk)? != *expected),
        _ => Ok(false),
    }
}

/// Whiteouts for the image's paths the rootfs no longer has: only the
/// topmost one of a deleted subtree, and none inside an opaque or a
/// replaced directory.
fn deletions<'a>(
    lower: &'a LowerTree,
    seen: &'a HashSet<Vec<u8>>,
    dirs: &'a HashSet<Vec<u8>>,
    opaque: &'a HashSet<Vec<u8>>,
) -> impl Iterator<Item = Item> + 'a {
    lower.nodes.keys().filter_map(move |path| {
        let parent = split(path).0;
        let hidden = !seen.contains(path) && dirs.contains(parent) && !opaque.contains(parent);
        hidden.then(|| Item {
            path: path.clone(),
            change: Change::Whiteout,
        })
    })
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
