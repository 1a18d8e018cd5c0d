//! Member names from a layer: normalization and whiteout recognition.
//!
//! Names are attacker-controlled bytes. They are turned into a list of plain
//! components (no `.`, no empty parts, no leading `/`) before anything
//! touches the filesystem; a `..` component rejects the layer.
#![forbid(unsafe_code)]

/// The prefix that marks a whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name that marks a directory as opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// aufs metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`) carry no meaning
/// for OCI and are skipped, as Docker does.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Why a member name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    /// A `..` component.
    DotDot,
    /// A NUL byte inside the name.
    Nul,
}

/// Normalizes a member name to a relative path of plain components joined by
/// `/`. An empty result means the root itself.
pub fn normalize(unsafe_path: &[u8]) -> Result<Vec<u8>, BadName> {
    let mut out = Vec::with_capacity(unsafe_path.len());
    for component in unsafe_path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err(BadName::DotDot),
            c if c.contains(&0) => return Err(BadName::Nul),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalized path into its parent path and last component.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// What a member's last component says about whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary entry.
    None,
    /// `.wh..wh..opq`: hide the lower content of the parent directory.
    Opaque,
    /// `.wh.NAME`: delete NAME from lower layers.
    Delete(&'a [u8]),
    /// aufs bookkeeping, ignored.
    AufsMeta,
    /// A whiteout of `.`, `..` or an empty name: the layer is rejected.
    Invalid,
}

/// Classifies the last component of a normalized member name.
pub fn classify(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE_MARKER {
        return Whiteout::Opaque;
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Whiteout::AufsMeta;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        None => Whiteout::None,
        Some(b"") | Some(b".") | Some(b"..") => Whiteout::Invalid,
        Some(target) => Whiteout::Delete(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_roots_dots_and_slashes() {
        assert_eq!(normalize(b"/usr//bin/./sh").unwrap(), b"usr/bin/sh");
        assert_eq!(normalize(b"./etc/").unwrap(), b"etc");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"a/../b"), Err(BadName::DotDot));
        assert_eq!(normalize(b"../x"), Err(BadName::DotDot));
        assert_eq!(normalize(b"a\0b"), Err(BadName::Nul));
        // `..` as part of a longer name is an ordinary name.
        assert_eq!(normalize(b"a/..b/c..").unwrap(), b"a/..b/c..");
    }

    #[test]
    fn split_parent_handles_top_level_names() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }

    #[test]
    fn classify_recognizes_whiteouts() {
        assert_eq!(classify(b"file"), Whiteout::None);
        assert_eq!(classify(b".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify(b".wh.foo"), Whiteout::Delete(b"foo"));
        assert_eq!(classify(b".wh..hidden"), Whiteout::Delete(b".hidden"));
        assert_eq!(classify(b".wh."), Whiteout::Invalid);
        assert_eq!(classify(b".wh.."), Whiteout::Invalid);
        assert_eq!(classify(b".wh..."), Whiteout::Invalid);
        assert_eq!(classify(b".wh..wh.plnk"), Whiteout::AufsMeta);
        assert_eq!(classify(b".whx"), Whiteout::None);
    }
}
