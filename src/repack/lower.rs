//! The image's tree as its layers describe it, read from the tar headers
//! alone: nothing is written, whiteouts apply as the layers stack.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufReader, Read};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::error::RepackError;
use super::node::{join, split, Kind, Node, Xattrs};
use crate::oci::{Digest, ImageLayout, LayerDescriptor, ResolvedImage};
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

/// What one layer entry does to the tree, read without the tree (so
/// layers can be read in parallel) and applied in layer order.
enum Op {
    /// A node at a path (as the layer spells it).
    Put(Vec<u8>, LowerNode),
    /// A hardlink at a path to a target path; `raw` names it in errors.
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
        raw: Vec<u8>,
    },
    /// `.wh.NAME`: the path, as spelled.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq` in this directory, as spelled.
    Opaque(Vec<u8>),
}

/// Reads every layer of `image` and stacks them into a [`LowerTree`].
/// With `hash`, each regular file's content is hashed too. Layers are
/// decoded on up to as many threads as there are CPUs (decompression is
/// the cost), and stacked in order as each one is ready.
pub(crate) fn scan(
    layout: &ImageLayout,
    image: &ResolvedImage,
    hash: bool,
    on_layer: &mut dyn FnMut(usize, usize, &LayerDescriptor),
) -> Result<LowerTree, RepackError> {
    let total = image.layers.len();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(total);
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<Op>, RepackError>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(layer) = image.layers.get(i) else {
                    return;
                };
                if tx.send((i, read_layer(layout, layer, hash))).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut tree = LowerTree::default();
        let mut ready: Vec<Option<Vec<Op>>> = (0..total).map(|_| None).collect();
        let mut stacked = 0;
        while stacked < total {
            let Ok((i, ops)) = rx.recv() else {
                break;
            };
            // Ask the workers to stop at the first error.
            let ops = ops.inspect_err(|_| next.store(total, Ordering::Relaxed))?;
            ready[i] = Some(ops);
            while let Some(ops) = ready.get_mut(stacked).and_then(Option::take) {
                let layer = &image.layers[stacked];
                tree.stack(ops)
                    .map_err(|source| layer_err(&layer.digest, source))?;
                on_layer(stacked, total, layer);
                stacked += 1;
            }
        }
        Ok(tree)
    })
}

fn layer_err(digest: &Digest, source: UnpackError) -> RepackError {
    RepackError::Layer {
        digest: digest.clone(),
        source,
    }
}

/// Decodes one layer blob into its [`Op`]s.
fn read_layer(
    layout: &ImageLayout,
    layer: &LayerDescriptor,
    hash: bool,
) -> Result<Vec<Op>, RepackError> {
    let blob = BufReader::with_capacity(256 * 1024, layout.open_blob(&layer.digest)?);
    let ops = (|| {
        let (sniffed, rewound) = Rewound::sniff(blob).map_err(UnpackError::Stream)?;
        let kind = decode::decide(Some(layer.compression), sniffed)?;
        let reader = decode::decoder(kind, rewound).map_err(UnpackError::Stream)?;
        layer_ops(reader, hash)
    })();
    ops.map_err(|source| layer_err(&layer.digest, source))
}

/// The ops of one uncompressed layer, in archive order.
fn layer_ops(reader: impl Read, hash: bool) -> Result<Vec<Op>, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut ops = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(UnpackError::Stream)? {
        let mut entry = entry.map_err(UnpackError::Stream)?;
        let op = entry_op(&mut entry, hash)?;
        // The tar reader would skip the content 8 KiB at a time; big reads
        // cost the decoder fewer calls.
        drain(&mut entry, &mut buffer)?;
        ops.extend(op);
    }
    Ok(ops)
}

/// The op of one entry, `None` for one that leaves nothing in the tree.
fn entry_op<R: Read>(entry: &mut tar::Entry<'_, R>, hash: bool) -> Result<Option<Op>, UnpackError> {
    let raw = entry.path_bytes().into_owned();
    let path = normalize_name(&raw).map_err(|_| hostile(&raw, "bad member name"))?;
    if path.is_empty() {
        return Ok(None);
    }
    let (parent, name) = split(&path);
    match classify_name(name) {
        Whiteout::None => {}
        Whiteout::AufsMeta => return Ok(None),
        Whiteout::Invalid => return Err(hostile(&raw, "whiteout of '.', '..' or ''")),
        Whiteout::Opaque => return Ok(Some(Op::Opaque(parent.to_vec()))),
        Whiteout::Delete(target) => return Ok(Some(Op::Whiteout(join(parent, target)))),
    }
    if entry.header().entry_type() == EntryType::Link {
        let target = link_name(entry, &raw)?;
        let target = normalize_name(&target).map_err(|_| hostile(&raw, "bad hardlink target"))?;
        return Ok(Some(Op::Link { path, target, raw }));
    }
    Ok(entry_node(entry, &raw, hash)?.map(|node| Op::Put(path, node)))
}

/// Reads the rest of an entry's content and drops it.
fn drain(entry: &mut impl Read, buffer: &mut [u8]) -> Result<(), UnpackError> {
    loop {
        match entry.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Stream(e)),
        }
    }
}

impl LowerTree {
    /// Stacks one layer's ops onto the tree: entries in order, then the
    /// whiteouts, which hide only what lower layers left.
    fn stack(&mut self, ops: Vec<Op>) -> Result<(), UnpackError> {
        let mut written = HashSet::new();
        let mut hidden = Vec::new();
        for op in ops {
            match op {
                Op::Put(path, node) => {
                    let path = self.resolve_parent(&path);
                    self.insert(path.clone(), node);
                    written.insert(path);
                }
                Op::Link { path, target, raw } => {
                    let path = self.resolve_parent(&path);
                    let node = match self.nodes.get(&self.resolve_parent(&target)) {
                        Some(lower) if lower.node.kind != Kind::Dir => lower.clone(),
                        _ => return Err(hostile(&raw, "hardlink target does not exist")),
                    };
                    self.insert(path.clone(), node);
                    written.insert(path);
                }
                Op::Whiteout(path) => hidden.push((self.resolve_parent(&path), true)),
                Op::Opaque(dir) => hidden.push((self.resolve_parent(&join(&dir, b"x")), false)),
            }
        }
        for (path, whole) in hidden {
            let target = if whole { path } else { split(&path).0.to_vec() };
            if whole && !written.contains(&target) {
                self.nodes.remove(&target);
            }
            self.remove_below(&target, &written);
        }
        Ok(())
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

/// The node a non-whiteout entry describes, `None` for an entry type
/// that leaves nothing in the tree (PAX globals, GNU long names).
fn entry_node<R: Read>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_mtime(7);
            header.set_uid(0);
            header.set_gid(0);
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            builder.append_data(&mut header, path, io::empty()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn stacked(layers: &[Vec<u8>]) -> Vec<String> {
        let mut tree = LowerTree::default();
        for layer in layers {
            tree.stack(layer_ops(&layer[..], false).unwrap()).unwrap();
        }
        tree.nodes
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn layers_stack_with_whiteouts_opaques_and_dirlinks() {
        use EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};
        let bottom = tar(&[
            ("usr/", D, ""),
            ("usr/bin/", D, ""),
            ("bin", S, "usr/bin"),
            ("a/", D, ""),
            ("a/x", F, ""),
            ("a/y", F, ""),
            ("o/", D, ""),
            ("o/old", F, ""),
        ]);
        let top = tar(&[
            ("bin/", D, ""),
            ("bin/sh", F, ""),
            ("bin/ash", H, "bin/sh"),
            ("a/.wh.x", F, ""),
            ("o/.wh..wh..opq", F, ""),
            ("o/new", F, ""),
        ]);
        assert_eq!(
            stacked(&[bottom, top]),
            [
                "a",
                "a/y",
                "bin",
                "o",
                "o/new",
                "usr",
                "usr/bin",
                "usr/bin/ash",
                "usr/bin/sh"
            ]
        );
    }

    #[test]
    fn a_file_over_a_directory_replaces_its_subtree() {
        use EntryType::{Directory as D, Regular as F};
        let bottom = tar(&[("d/", D, ""), ("d/x", F, ""), ("dx", F, "")]);
        let top = tar(&[("d", F, "")]);
        assert_eq!(stacked(&[bottom, top]), ["d", "dx"]);
    }
}
