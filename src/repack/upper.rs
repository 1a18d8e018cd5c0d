//! The upper-dir form: an overlayfs upper dir is a list of changes already.
//!
//! A char device 0/0 is a whiteout; a directory with `overlay.opaque=y`
//! (under `trusted.` or, for a `userxattr` mount, `user.`) hides its lower
//! content; a regular file with `overlay.whiteout` is a whiteout too (the
//! xattr form kernels from 6.7 use inside containers, in a directory
//! marked `overlay.opaque=x`, which is not opaque). Every other entry
//! is added as it is. The other overlay xattrs either only keep overlay's
//! own books (`origin`, `impure`, `nlink`, `uuid`: dropped) or change what
//! a path means (`redirect`: the directory's lower content lives
//! elsewhere; `metacopy`: the file's data is still in the lower dir), and
//! those, like any overlay xattr not named here, fail the repack: the
//! layer would silently differ from the merged view.
#![forbid(unsafe_code)]

use std::path::Path;

use super::error::{io_err, RepackError};
use super::node::{
    disk_path, join, link_groups, node_from_disk, note_inode, read_xattrs, sorted_children, Change,
    Inodes, Item, Kind,
};
use crate::unpack::image_xattr;

/// The namespaces overlayfs keeps its xattrs under.
const OVERLAY_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Overlay xattrs that only keep overlayfs's books and say nothing about
/// the merged tree.
const BOOKKEEPING: [&[u8]; 4] = [b"origin", b"impure", b"nlink", b"uuid"];

/// What overlay metadata marks an upper entry as.
#[derive(Debug, Default, PartialEq, Eq)]
struct Marks {
    opaque: bool,
    whiteout: bool,
}

/// The layer items for the upper dir `upper`, sorted by tar name.
pub(crate) fn changes(upper: &Path) -> Result<Vec<Item>, RepackError> {
    let mut items = Vec::new();
    let mut inodes = Inodes::new();
    walk(upper, b"", &mut items, &mut inodes)?;
    link_groups(items, &inodes, &mut |path| {
        Err(io_err(
            "find hardlink",
            disk_path(upper, path),
            std::io::Error::other("an inode group lost a name during the walk"),
        ))
    })
}

fn walk(
    upper: &Path,
    path: &[u8],
    items: &mut Vec<Item>,
    inodes: &mut Inodes,
) -> Result<(), RepackError> {
    for name in sorted_children(&disk_path(upper, path))? {
        let child = join(path, &name);
        let on_disk = disk_path(upper, &child);
        let meta = std::fs::symlink_metadata(&on_disk).map_err(|e| io_err("lstat", &on_disk, e))?;
        let mut xattrs = read_xattrs(&on_disk)?;
        let marks = overlay_marks(&child, &xattrs)?;
        xattrs.retain(|(name, _)| image_xattr(name));
        let node = node_from_disk(&on_disk, &meta, xattrs)?;
        if node.kind == Kind::Char(0, 0) || marks.whiteout {
            items.push(Item {
                path: child,
                change: Change::Whiteout,
            });
            continue;
        }
        note_inode(inodes, &meta, &child);
        let is_dir = node.kind == Kind::Dir;
        items.push(Item {
            path: child.clone(),
            change: Change::Put {
                node,
                source: on_disk,
            },
        });
        if is_dir {
            if marks.opaque {
                items.push(Item {
                    path: child.clone(),
                    change: Change::Opaque,
                });
            }
            walk(upper, &child, items, inodes)?;
        }
    }
    Ok(())
}

/// Reads the overlay xattrs of one upper entry: the marks metalor turns
/// into whiteouts, the bookkeeping it drops, and an error for the rest.
fn overlay_marks(path: &[u8], xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Marks, RepackError> {
    let mut marks = Marks::default();
    for (name, value) in xattrs {
        let Some(key) = OVERLAY_PREFIXES
            .iter()
            .find_map(|prefix| name.strip_prefix(*prefix))
        else {
            continue;
        };
        match key {
            b"opaque" if value.as_slice() == b"y" => marks.opaque = true,
            // Not opaque: the directory holds xattr whiteouts (below).
            b"opaque" if value.as_slice() == b"x" => {}
            b"whiteout" => marks.whiteout = true,
            key if BOOKKEEPING.contains(&key) => {}
            _ => {
                return Err(RepackError::OverlayXattr {
                    path: String::from_utf8_lossy(path).into_owned(),
                    name: String::from_utf8_lossy(name).into_owned(),
                })
            }
        }
    }
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xattr(name: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn overlay_xattrs_are_read_or_refused() {
        let opaque = [xattr("trusted.overlay.opaque", "y"), xattr("user.a", "b")];
        assert!(overlay_marks(b"d", &opaque).unwrap().opaque);
        let books = [
            xattr("trusted.overlay.origin", "x"),
            xattr("user.overlay.impure", "y"),
        ];
        assert_eq!(overlay_marks(b"d", &books).unwrap(), Marks::default());
        for bad in [
            "trusted.overlay.redirect",
            "user.overlay.metacopy",
            "trusted.overlay.zzz",
        ] {
            let err = overlay_marks(b"a/b", &[xattr(bad, "")])
                .unwrap_err()
                .to_string();
            assert!(err.contains("a/b") && err.contains(bad), "{err}");
        }
        let dir_of_whiteouts = [xattr("trusted.overlay.opaque", "x")];
        assert_eq!(
            overlay_marks(b"d", &dir_of_whiteouts).unwrap(),
            Marks::default()
        );
        let whiteout = [xattr("user.overlay.whiteout", "")];
        assert!(overlay_marks(b"d/f", &whiteout).unwrap().whiteout);
        let err = overlay_marks(b"d", &[xattr("trusted.overlay.opaque", "z")]).unwrap_err();
        assert!(err.to_string().contains("trusted.overlay.opaque"));
    }
}
