//! Test fixtures: tar archives with raw member names, so tests can build
//! the hostile members that `tar::Header::set_path` refuses.
#![forbid(unsafe_code)]

use std::io::Write;
pub(crate) use tar::EntryType;
use tar::{Builder, Header};

/// One archive member, written with its name and link target as given.
pub(crate) enum Member<'a> {
    Dir(&'a str),
    /// A directory with the given mode (`Dir` is 0755).
    DirMode(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    /// A character or block device or a FIFO.
    Special(&'a str, EntryType),
}

fn raw_header(name: &str, kind: EntryType, link: &str, size: usize, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(size as u64);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    header
}

/// The archive holding `members` in order.
pub(crate) fn tar_bytes(members: &[Member<'_>]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for member in members {
        let (header, data): (Header, &[u8]) = match member {
            Member::Dir(name) => (raw_header(name, EntryType::Directory, "", 0, 0o755), &[]),
            Member::DirMode(name, mode) => {
                (raw_header(name, EntryType::Directory, "", 0, *mode), &[])
            }
            Member::File(name, data, mode) => (
                raw_header(name, EntryType::Regular, "", data.len(), *mode),
                data,
            ),
            Member::Symlink(name, target) => {
                (raw_header(name, EntryType::Symlink, target, 0, 0o777), &[])
            }
            Member::HardLink(name, target) => {
                (raw_header(name, EntryType::Link, target, 0, 0o644), &[])
            }
            Member::Special(name, kind) => (raw_header(name, *kind, "", 0, 0o644), &[]),
        };
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// `bytes` gzipped.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}
