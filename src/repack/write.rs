//! Writing the layer: items → PAX tar → compressor → hashers → a temp
//! blob in the layout, renamed to its digest at the end. Memory stays at
//! the compressor's window and a copy buffer, whatever the layer's size.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::error::{io_err, RepackError};
use super::node::{split, Change, Item, Kind, Node};
use super::RepackOptions;
use crate::oci::{Compression, Digest, LayoutWriter};

/// The biggest value the octal ustar fields hold: 8 digits for ids, 12
/// for sizes and times. Past them, the value goes into a PAX record.
const MAX_ID: u64 = 0o7777777;
const MAX_OCTAL12: u64 = 0o77777777777;

/// The new layer blob, as the manifest and config describe it.
#[derive(Debug, Clone)]
pub(crate) struct WrittenLayer {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub entries: u64,
}

/// Writes `items` (sorted) as a layer blob into the layout.
pub(crate) fn write_layer(
    writer: &LayoutWriter,
    items: &[Item],
    options: &RepackOptions,
) -> Result<WrittenLayer, RepackError> {
    let mut blob = writer.begin_new_blob()?;
    let blob_dir = writer.path().join("blobs/sha256");
    let (digest, size, diff_id) = stream_layer(blob.file(), items, options, &blob_dir)?;
    blob.commit(&digest)?;
    Ok(WrittenLayer {
        digest,
        size,
        diff_id,
        entries: items.len() as u64,
    })
}

/// Streams the layer into `file`; returns its digest, its size and its
/// diff_id.
fn stream_layer(
    file: &mut File,
    items: &[Item],
    options: &RepackOptions,
    blob_dir: &Path,
) -> Result<(Digest, u64, Digest), RepackError> {
    let blob_err = |e| io_err("write layer blob in", blob_dir, e);
    let compressed = Hashing::new(BufWriter::with_capacity(256 * 1024, file));
    let compressor = Compressor::new(options.compression, compressed).map_err(blob_err)?;
    let mut tar = tar::Builder::new(Hashing::new(compressor));
    for item in items {
        append_item(&mut tar, item, options.source_date_epoch)?;
    }
    let plain = tar.into_inner().map_err(blob_err)?;
    let diff_id = sha256_digest(plain.hasher);
    let mut compressed = plain.inner.finish().map_err(blob_err)?;
    compressed.inner.flush().map_err(blob_err)?;
    Ok((sha256_digest(compressed.hasher), compressed.count, diff_id))
}

fn sha256_digest(hasher: Sha256) -> Digest {
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Digest::parse(&format!("sha256:{hex}")).expect("a sha256 hex digest is valid")
}

/// Appends one item: its PAX record when it needs one, the header, and a
/// regular file's content.
fn append_item<W: Write>(
    tar: &mut tar::Builder<W>,
    item: &Item,
    clamp: Option<u64>,
) -> Result<(), RepackError> {
    let (header, pax) = item_header(item, clamp)?;
    let err = |e| io_err("write layer entry", lossy(&item.path), e);
    if !pax.is_empty() {
        append_pax(tar, &item.path, &pax).map_err(err)?;
    }
    match &item.change {
        Change::Put { node, source } if node.kind == Kind::File => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(source)
                .map_err(|e| io_err("open", source, e))?;
            let content = Exact {
                inner: file.take(node.size),
                left: node.size,
            };
            tar.append(&header, content)
                .map_err(|e| io_err("read", source, e))
        }
        _ => tar.append(&header, io::empty()).map_err(err),
    }
}

/// The item's header, and the PAX records it needs (empty when none).
fn item_header(item: &Item, clamp: Option<u64>) -> Result<(Header, Vec<u8>), RepackError> {
    check_name(&item.path)?;
    let mut pax = Vec::new();
    let mut header = Header::new_ustar();
    header.set_mode(0o644);
    header.set_size(0);
    header.set_mtime(0);
    let mut name = item.tar_name();
    match &item.change {
        Change::Whiteout | Change::Opaque => header.set_entry_type(EntryType::Regular),
        Change::Link { target } => {
            check_name(target)?;
            header.set_entry_type(EntryType::Link);
            set_link(&mut header, &mut pax, target);
        }
        Change::Put { node, .. } => {
            set_node(&mut header, &mut pax, node, &item.path, clamp)?;
            if node.kind == Kind::Dir {
                name.push(b'/');
            }
        }
    }
    set_name(&mut header, &mut pax, &name);
    header.set_cksum();
    Ok((header, pax))
}

/// Fills the header from a node; values past the ustar fields go to PAX.
fn set_node(
    header: &mut Header,
    pax: &mut Vec<u8>,
    node: &Node,
    path: &[u8],
    clamp: Option<u64>,
) -> Result<(), RepackError> {
    let (kind, size) = match &node.kind {
        Kind::File => (EntryType::Regular, node.size),
        Kind::Dir => (EntryType::Directory, 0),
        Kind::Symlink(target) => {
            check_utf8(path, target, "the symlink target is not UTF-8")?;
            set_link(header, pax, target);
            (EntryType::Symlink, 0)
        }
        Kind::Char(major, minor) | Kind::Block(major, minor) => {
            let dev_err = |e| io_err("set device numbers", lossy(path), e);
            header.set_device_major(*major).map_err(dev_err)?;
            header.set_device_minor(*minor).map_err(dev_err)?;
            let kind = if matches!(node.kind, Kind::Char(..)) {
                EntryType::Char
            } else {
                EntryType::Block
            };
            (kind, 0)
        }
        Kind::Fifo => (EntryType::Fifo, 0),
    };
    header.set_entry_type(kind);
    header.set_mode(node.mode);
    let mtime = clamp.map_or(node.mtime, |epoch| node.mtime.min(epoch));
    set_number(pax, "uid", u64::from(node.uid), MAX_ID, |v| {
        header.set_uid(v)
    });
    set_number(pax, "gid", u64::from(node.gid), MAX_ID, |v| {
        header.set_gid(v)
    });
    set_number(pax, "size", size, MAX_OCTAL12, |v| header.set_size(v));
    set_number(pax, "mtime", mtime, MAX_OCTAL12, |v| header.set_mtime(v));
    for (name, value) in &node.xattrs {
        check_utf8(path, name, "an xattr name is not UTF-8")?;
        let key = [b"SCHILY.xattr.".as_slice(), name].concat();
        pax_record(pax, &key, value);
    }
    Ok(())
}

/// Sets a numeric field, or a PAX record (and 0 in the field) when the
/// value does not fit.
fn set_number(pax: &mut Vec<u8>, key: &str, value: u64, max: u64, mut set: impl FnMut(u64)) {
    if value > max {
        pax_record(pax, key.as_bytes(), value.to_string().as_bytes());
        set(0);
    } else {
        set(value);
    }
}

/// The entry name: in the header when it fits, in a PAX `path` otherwise.
fn set_name(header: &mut Header, pax: &mut Vec<u8>, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    let room = field.len();
    if name.len() <= room {
        field[..name.len()].copy_from_slice(name);
    } else {
        field.copy_from_slice(&name[..room]);
        pax_record(pax, b"path", name);
    }
}

/// The link target: in the header when it fits, in a PAX `linkpath`
/// otherwise.
fn set_link(header: &mut Header, pax: &mut Vec<u8>, target: &[u8]) {
    let field = &mut header.as_old_mut().linkname;
    let room = field.len();
    if target.len() <= room {
        field[..target.len()].copy_from_slice(target);
    } else {
        field.copy_from_slice(&target[..room]);
        pax_record(pax, b"linkpath", target);
    }
}

/// Appends one `LEN KEY=VALUE\n` record; LEN counts the whole record,
/// its own digits included.
fn pax_record(pax: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    pax.extend_from_slice(len.to_string().as_bytes());
    pax.push(b' ');
    pax.extend_from_slice(key);
    pax.push(b'=');
    pax.extend_from_slice(value);
    pax.push(b'\n');
}

/// The `x` entry carrying `records` for the entry that follows.
fn append_pax<W: Write>(tar: &mut tar::Builder<W>, path: &[u8], records: &[u8]) -> io::Result<()> {
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_size(records.len() as u64);
    let leaf = split(path).1;
    let name = [b"PaxHeaders/".as_slice(), &leaf[..leaf.len().min(80)]].concat();
    header.as_old_mut().name[..name.len()].copy_from_slice(&name);
    header.set_cksum();
    tar.append(&header, records)
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// A path a tar reader would read back as written: UTF-8 (PAX records
/// are), and no component a reader would take for a whiteout.
fn check_name(path: &[u8]) -> Result<(), RepackError> {
    check_utf8(
        path,
        path,
        "the name is not UTF-8, which PAX records cannot carry",
    )?;
    if path.split(|&b| b == b'/').any(|c| c.starts_with(b".wh.")) {
        return Err(RepackError::Unrepresentable {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: "a name starting with .wh. would be read as a whiteout",
        });
    }
    Ok(())
}

fn check_utf8(path: &[u8], text: &[u8], reason: &'static str) -> Result<(), RepackError> {
    match std::str::from_utf8(text) {
        Ok(_) => Ok(()),
        Err(_) => Err(RepackError::Unrepresentable {
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
        }),
    }
}

/// Exactly `left` bytes from `inner`: a file that shrank since it was
/// listed fails instead of leaving the archive short.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being repacked",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The layer's compressor, chosen at run time.
enum Compressor<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(kind: Compression, inner: W) -> io::Result<Self> {
        Ok(match kind {
            Compression::None => Compressor::Plain(inner),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    /// Ends the compressed stream and hands back the writer below.
    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Plain(w) => Ok(w),
            Compressor::Gzip(enc) => enc.finish(),
            Compressor::Zstd(enc) => enc.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"x");
        assert_eq!(out, b"9 path=x\n");
        let mut out = Vec::new();
        let value = vec![b'a'; 95];
        pax_record(&mut out, b"path", &value);
        assert_eq!(out.len(), 105);
        assert!(out.starts_with(b"105 path="));
    }

    #[test]
    fn whiteout_names_and_bad_utf8_are_refused() {
        assert!(check_name(b"a/.wh.b").is_err());
        assert!(check_name(b"a/\xff").is_err());
        assert!(check_name(b"a/.whb").is_ok());
    }
}
