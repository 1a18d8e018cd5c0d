//! What one path is, in the image model or on disk, and the layer items
//! built from it. Shared by the rootfs diff and the upper-dir reader.
#![forbid(unsafe_code)]

use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::{io_err, RepackError};
use crate::unpack::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// Extended attributes as (name, value), sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A node's type, with what only that type has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// The metadata a layer records for a path. `mode` holds the permission
/// bits with setuid, setgid and sticky; xattrs are sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
    pub xattrs: Xattrs,
}

/// What the layer says about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// The node, with regular-file content read from `source`.
    Put { node: Node, source: PathBuf },
    /// A hardlink to an earlier entry of the layer.
    Link { target: Vec<u8> },
    /// `.wh.NAME`: the path is gone.
    Whiteout,
    /// `.wh..wh..opq` in the path: its lower content is gone.
    Opaque,
}

/// One layer entry: a normalized path (no leading `/`) and its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub path: Vec<u8>,
    pub change: Change,
}

impl Item {
    /// The name the entry has in the tar stream.
    pub fn tar_name(&self) -> Vec<u8> {
        let (parent, name) = split(&self.path);
        let leaf: Vec<u8> = match self.change {
            Change::Whiteout => [WHITEOUT_PREFIX, name].concat(),
            Change::Opaque => return join(&self.path, OPAQUE_MARKER),
            _ => return self.path.clone(),
        };
        join(parent, &leaf)
    }
}

/// `parent/name`, or `name` at the top.
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    [parent, b"/".as_slice(), name].concat()
}

/// The parent path and the last component.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The node for a file on disk, from its `lstat` metadata. Symlink
/// targets and xattrs are read here; `xattr_filter` chooses which xattrs
/// the node keeps.
pub(crate) fn node_from_disk(
    path: &Path,
    meta: &Metadata,
    xattrs: Xattrs,
) -> Result<Node, RepackError> {
    let ft = meta.file_type();
    let dev = || {
        (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        )
    };
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| io_err("readlink", path, e))?;
        Kind::Symlink(target.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        let (major, minor) = dev();
        Kind::Char(major, minor)
    } else if ft.is_block_device() {
        let (major, minor) = dev();
        Kind::Block(major, minor)
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(RepackError::Unrepresentable {
            path: path.display().to_string(),
            reason: "a socket has no tar entry type",
        });
    };
    Ok(Node {
        size: if kind == Kind::File { meta.len() } else { 0 },
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        xattrs,
    })
}

/// Every xattr of `path` (not following a symlink), sorted by name. A
/// filesystem without xattr support has none.
pub(crate) fn read_xattrs(path: &Path) -> Result<Xattrs, RepackError> {
    let err = |e: rustix::io::Errno| io_err("list xattrs of", path, e.into());
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name, &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(err(e)),
            }
        };
        if n != usize::MAX {
            value.truncate(n);
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The names of a directory's entries, sorted bytewise.
pub(crate) fn sorted_children(dir: &Path) -> Result<Vec<Vec<u8>>, RepackError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("read directory", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read directory", dir, e))?;
        names.push(entry.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

/// Joins a tree path onto the directory it lives in on disk.
pub(crate) fn disk_path(root: &Path, path: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(path))
}

/// Hardlink groups: paths of regular files that share an inode, in walk
/// order, keyed by (device, inode).
pub(crate) type Inodes = std::collections::HashMap<(u64, u64), Vec<Vec<u8>>>;

/// Records `path` under its inode when other names share it.
pub(crate) fn note_inode(inodes: &mut Inodes, meta: &Metadata, path: &[u8]) {
    if meta.file_type().is_file() && meta.nlink() > 1 {
        inodes
            .entry((meta.dev(), meta.ino()))
            .or_default()
            .push(path.to_vec());
    }
}

/// Turns every name but the first of an inode group that has any name in
/// `items` into a hardlink to the first, adding the names the change left
/// out (an unchanged name of a changed inode, a new link to an old file),
/// so the layer keeps the group one inode. `put` builds the `Put` item for
/// a name that is not in `items` yet. Returns the items sorted by tar name.
pub(crate) fn link_groups(
    mut items: Vec<Item>,
    inodes: &Inodes,
    put: &mut dyn FnMut(&[u8]) -> Result<Item, RepackError>,
) -> Result<Vec<Item>, RepackError> {
    let index: std::collections::HashMap<Vec<u8>, usize> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| matches!(it.change, Change::Put { .. }))
        .map(|(i, it)| (it.path.clone(), i))
        .collect();
    for names in inodes.values() {
        if !names.iter().any(|n| index.contains_key(n)) {
            continue;
        }
        let mut sorted = names.clone();
        sorted.sort();
        let first = sorted[0].clone();
        if !index.contains_key(&first) {
            items.push(put(&first)?);
        }
        for name in &sorted[1..] {
            let link = Change::Link {
                target: first.clone(),
            };
            match index.get(name) {
                Some(&i) => items[i].change = link,
                None => items.push(Item {
                    path: name.clone(),
                    change: link,
                }),
            }
        }
    }
    items.sort_by_cached_key(Item::tar_name);
    Ok(items)
}
