//! The image's tree as its layers describe it, read from the tar headers
//! alone: nothing is written, whiteouts apply as the layers stack.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufReader, Read};
use std::ops::Bound;

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::error::RepackError;
use super::node::{join, split, Kind, Node, Xattrs};
use crate::oci::{Digest, ImageLayout, ResolvedImage};
use crate::unpack::decode::{self, Rewound};
use crate::unpack::{
    classify_name, image_xattr, normalize_name, UnpackError, Whiteout, XATTR_PREFIX,
};

/// A path of the image: its node and, when the scan hashed, the sha256 of
/// its content.
#[derive(Debug, Clone)]
pub(crate) struct LowerNode {
    pub node: Node,
    pub sha256: Option<[u8; 32]>,
}

/// The image's tree: every path (normalized, the root left out) and what
/// it is.
#[derive(Debug, Default)]
pub(crate) struct LowerTree {
    pub nodes: BTreeMap<Vec<u8>, LowerNode>,
}

/// Reads every layer of `image` and stacks them into a [`LowerTree`].
/// With `hash`, each regular file's content is hashed too.
pub(crate) fn scan(
    layout: &ImageLayout,
    image: &ResolvedImage,
    hash: bool,
    on_layer: &mut dyn FnMut(usize, usize, &Digest),
) -> Result<LowerTree, RepackError> {
    let mut tree = LowerTree::default();
    for (i, layer) in image.layers.iter().enumerate() {
        let blob = BufReader::with_capacity(256 * 1024, layout.open_blob(&layer.digest)?);
        let scanned = (|| {
            let (sniffed, rewound) = Rewound::sniff(blob).map_err(UnpackError::Stream)?;
            let kind = decode::decide(Some(layer.compression), sniffed)?;
            let reader = decode::decoder(kind, rewound).map_err(UnpackError::Stream)?;
            tree.add_layer(reader, hash)
        })();
        scanned.map_err(|source| RepackError::Layer {
            digest: layer.digest.clone(),
            source,
        })?;
        on_layer(i, image.layers.len(), &layer.digest);
    }
    Ok(tree)
}

impl LowerTree {
    /// Stacks one uncompressed layer onto the tree.
    fn add_layer(&mut self, reader: impl Read, hash: bool) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let mut written = HashSet::new();
        let mut whiteouts = Vec::new();
        let mut opaques = Vec::new();
        for entry in archive.entries().map_err(UnpackError::Stream)? {
            let mut entry = entry.map_err(UnpackError::Stream)?;
            let raw = entry.path_bytes().into_owned();
            let path = normalize_name(&raw).map_err(|_| hostile(&raw, "bad member name"))?;
            if path.is_empty() {
                continue;
            }
            let path = self.resolve_parent(&path);
            let (parent, name) = split(&path);
            match classify_name(name) {
                Whiteout::None => {}
                Whiteout::AufsMeta => continue,
                Whiteout::Invalid => return Err(hostile(&raw, "whiteout of '.', '..' or ''")),
                Whiteout::Opaque => {
                    opaques.push(parent.to_vec());
                    continue;
                }
                Whiteout::Delete(target) => {
                    whiteouts.push(join(parent, target));
                    continue;
                }
            }
            if let Some(node) = self.entry_node(&mut entry, &raw, hash)? {
                self.insert(path.clone(), node);
                written.insert(path);
            }
        }
        for path in whiteouts {
            if !written.contains(&path) {
                self.nodes.remove(&path);
            }
            self.remove_below(&path, &written);
        }
        for dir in opaques {
            self.remove_below(&dir, &written);
        }
        Ok(())
    }

    /// The node a non-whiteout entry describes, `None` for an entry type
    /// that leaves nothing in the tree (PAX globals, GNU long names).
    fn entry_node<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        hash: bool,
    ) -> Result<Option<LowerNode>, UnpackError> {
        let header = entry.header();
        let kind = match header.entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(link_name(entry, raw)?),
            EntryType::Char => Kind::Char(dev_major(header)?, dev_minor(header)?),
            EntryType::Block => Kind::Block(dev_major(header)?, dev_minor(header)?),
            EntryType::Fifo => Kind::Fifo,
            EntryType::Link => return self.hardlink(entry, raw).map(Some),
            _ => return Ok(None),
        };
        let stream = UnpackError::Stream;
        let mut node = Node {
            size: if kind == Kind::File { entry.size() } else { 0 },
            kind,
            mode: header.mode().map_err(stream)? & 0o7777,
            uid: id(header.uid().map_err(stream)?),
            gid: id(header.gid().map_err(stream)?),
            mtime: header.mtime().map_err(stream)?,
            xattrs: Vec::new(),
        };
        node.xattrs = entry_xattrs(entry)?;
        let sha256 = if hash && node.kind == Kind::File {
            Some(hash_content(entry)?)
        } else {
            None
        };
        Ok(Some(LowerNode { node, sha256 }))
    }

    /// A hardlink shares its target's node (one inode).
    fn hardlink<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<LowerNode, UnpackError> {
        let target = link_name(entry, raw)?;
        let target = normalize_name(&target).map_err(|_| hostile(raw, "bad hardlink target"))?;
        match self.nodes.get(&self.resolve_parent(&target)) {
            Some(lower) if lower.node.kind != Kind::Dir => Ok(lower.clone()),
            _ => Err(hostile(raw, "hardlink target does not exist in the rootfs")),
        }
    }

    /// Puts a node at `path` the way the applier does: a directory over a
    /// directory (or over a symlink to one, keep-dirlinks) merges; anything
    /// else replaces what was there, subtree included.
    fn insert(&mut self, path: Vec<u8>, new: LowerNode) {
        let old = self.nodes.get(&path).map(|l| &l.node.kind);
        match (old, &new.node.kind) {
            (Some(Kind::Dir), Kind::Dir) => {}
            (Some(Kind::Symlink(_)), Kind::Dir) if self.is_dir_link(&path) => return,
            (Some(_), _) => self.remove_below(&path, &HashSet::new()),
            (None, _) => {}
        }
        self.nodes.insert(path, new);
    }

    /// Whether the symlink at `path` resolves to a directory of the tree.
    fn is_dir_link(&self, path: &[u8]) -> bool {
        let resolved = self.follow(path.to_vec());
        resolved.is_empty() || matches!(self.kind(&resolved), Some(Kind::Dir))
    }

    fn kind(&self, path: &[u8]) -> Option<&Kind> {
        self.nodes.get(path).map(|l| &l.node.kind)
    }

    /// `path` with its parent directories resolved through the tree's
    /// symlinks, inside the root, as the applier's `RESOLVE_IN_ROOT` walk
    /// does: a layer that writes `bin/sh` over `bin -> usr/bin` puts it at
    /// `usr/bin/sh`. Most paths have a real directory as parent and are
    /// returned as they are.
    fn resolve_parent(&self, path: &[u8]) -> Vec<u8> {
        let (parent, name) = split(path);
        if parent.is_empty() || matches!(self.kind(parent), Some(Kind::Dir)) {
            return path.to_vec();
        }
        let mut at = Vec::new();
        for component in parent.split(|&b| b == b'/') {
            at = self.follow(join(&at, component));
        }
        join(&at, name)
    }

    /// Follows `path` while it names a symlink (40 hops at most, as the
    /// kernel allows), each target taken from the link's directory, or the
    /// root for an absolute one, and kept inside the root.
    fn follow(&self, mut path: Vec<u8>) -> Vec<u8> {
        for _ in 0..40 {
            let Some(Kind::Symlink(target)) = self.kind(&path) else {
                return path;
            };
            let base = if target.starts_with(b"/") {
                Vec::new()
            } else {
                split(&path).0.to_vec()
            };
            path = in_root(&base, target);
        }
        path
    }

    /// Removes everything below `dir` except paths in `keep`.
    fn remove_below(&mut self, dir: &[u8], keep: &HashSet<Vec<u8>>) {
        let prefix = descendants_prefix(dir);
        let doomed: Vec<Vec<u8>> = self
            .nodes
            .range::<Vec<u8>, _>((Bound::Included(&prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for path in doomed {
            self.nodes.remove(&path);
        }
    }

    /// Whether the tree holds anything below `dir`.
    pub fn has_children(&self, dir: &[u8]) -> bool {
        let prefix = descendants_prefix(dir);
        self.nodes
            .range::<Vec<u8>, _>((Bound::Included(&prefix), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

/// `target` taken from directory `base`, with `.` and `..` folded and
/// `..` stopping at the root (a symlink cannot point out of the tree).
fn in_root(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = base
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join(&b'/')
}

/// The prefix every path below `dir` starts with (`""` for the root).
fn descendants_prefix(dir: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        Vec::new()
    } else {
        [dir, b"/".as_slice()].concat()
    }
}

fn hostile(raw: &[u8], reason: &'static str) -> UnpackError {
    UnpackError::Hostile {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason,
    }
}

/// A tar id as a Linux id; out-of-range ids cannot be on disk, so they
/// saturate and never compare equal to a real one.
fn id(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, raw: &[u8]) -> Result<Vec<u8>, UnpackError> {
    entry
        .link_name_bytes()
        .map(|name| name.into_owned())
        .ok_or_else(|| hostile(raw, "link without a target"))
}

fn dev_major(header: &tar::Header) -> Result<u32, UnpackError> {
    Ok(header
        .device_major()
        .map_err(UnpackError::Stream)?
        .unwrap_or(0))
}

fn dev_minor(header: &tar::Header) -> Result<u32, UnpackError> {
    Ok(header
        .device_minor()
        .map_err(UnpackError::Stream)?
        .unwrap_or(0))
}

/// The entry's PAX xattrs that the applier would set, sorted by name.
fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Xattrs, UnpackError> {
    let mut out = Vec::new();
    let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? else {
        return Ok(out);
    };
    for ext in extensions {
        let ext = ext.map_err(UnpackError::Stream)?;
        if let Some(name) = ext.key_bytes().strip_prefix(XATTR_PREFIX.as_bytes()) {
            if image_xattr(name) {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn hash_content(reader: &mut impl Read) -> Result<[u8; 32], UnpackError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Stream(e)),
        }
    }
}
