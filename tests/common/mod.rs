//! Shared fixtures for the layer-applier tests: a raw tar writer that can
//! produce hostile archives byte for byte, compression wrappers, verified
//! `LayerInput`s, and a canary tree that proves nothing outside the target
//! changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use metalor::oci::Digest;
use metalor::unpack::{
    unpack_layers_into, LayerInput, LayerStats, StagedUnpackError, UnpackError, UnpackOptions,
};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Tar entry types, as the typeflag byte.
pub mod kind {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
    pub const GNU_LONGNAME: u8 = b'L';
    pub const GNU_LONGLINK: u8 = b'K';
}

/// One ustar header, every field under the test's control.
#[derive(Clone, Debug)]
pub struct Hdr {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// The size written in the header; the data written may differ.
    pub size: u64,
    pub mtime: u64,
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

impl Hdr {
    pub fn new(name: &[u8], typeflag: u8) -> Self {
        Hdr {
            name: name.to_vec(),
            typeflag,
            mode: if typeflag == kind::DIR { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_600_000_000,
            linkname: Vec::new(),
            devmajor: 0,
            devminor: 0,
        }
    }

    /// The 512-byte ustar block. Names and link names must fit their
    /// 100-byte fields: longer ones go through GNU or PAX records, so a test
    /// always knows exactly what it wrote.
    pub fn encode(&self) -> [u8; 512] {
        assert!(self.name.len() <= 100, "name too long for a raw header");
        assert!(
            self.linkname.len() <= 100,
            "linkname too long for a raw header"
        );
        let mut b = [0u8; 512];
        b[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], self.uid);
        octal(&mut b[116..124], self.gid);
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        b[157..157 + self.linkname.len()].copy_from_slice(&self.linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[265..269].copy_from_slice(b"root");
        b[297..301].copy_from_slice(b"root");
        octal(&mut b[329..337], u64::from(self.devmajor));
        octal(&mut b[337..345], u64::from(self.devminor));
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        let cksum = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(cksum.as_bytes());
        b
    }
}

/// Zero-padded octal with a trailing NUL, as ustar numeric fields are.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    assert!(s.len() <= digits, "value {value} does not fit");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// A tar stream written block by block.
#[derive(Default, Clone)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    /// A header followed by `data`, padded to the block size. The header's
    /// size field is taken as given, so it may lie about `data`.
    pub fn raw_entry(&mut self, hdr: &Hdr, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&hdr.encode());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// A header whose size field matches `data`.
    pub fn entry(&mut self, mut hdr: Hdr, data: &[u8]) -> &mut Self {
        hdr.size = data.len() as u64;
        self.raw_entry(&hdr, data)
    }

    /// Raw bytes, unpadded.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self
    }

    fn pad(&mut self) {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(Hdr::new(name.as_bytes(), kind::FILE), data)
    }

    pub fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = Hdr::new(name.as_bytes(), kind::FILE);
        h.mode = mode;
        self.entry(h, data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(Hdr::new(name.as_bytes(), kind::DIR), b"")
    }

    pub fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
        let mut h = Hdr::new(name.as_bytes(), kind::DIR);
        h.mode = mode;
        self.entry(h, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Hdr::new(name.as_bytes(), kind::SYMLINK);
        h.mode = 0o777;
        h.linkname = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Hdr::new(name.as_bytes(), kind::HARDLINK);
        h.linkname = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    /// `.wh.`-style entries are ordinary empty files in the archive.
    pub fn whiteout(&mut self, name: &str) -> &mut Self {
        self.file(name, b"")
    }

    /// A PAX `x` record describing the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend_from_slice(&pax_record(key, value));
        }
        let mut h = Hdr::new(b"./PaxHeaders/x", kind::PAX);
        h.mode = 0o644;
        self.entry(h, &data)
    }

    /// A GNU `L` record: the next entry's name.
    pub fn gnu_longname(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        self.entry(Hdr::new(b"././@LongLink", kind::GNU_LONGNAME), &data)
    }

    /// A GNU `K` record: the next entry's link target.
    pub fn gnu_longlink(&mut self, target: &[u8]) -> &mut Self {
        let mut data = target.to_vec();
        data.push(0);
        self.entry(Hdr::new(b"././@LongLink", kind::GNU_LONGLINK), &data)
    }

    /// The archive with its two zero blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// The archive without an end-of-archive marker.
    pub fn unterminated(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

/// One PAX record, `"%d %s=%s\n"` where the length counts itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    assert_eq!(rec.len(), len);
    rec
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// gzip with one member per piece, as pigz and some registries write.
pub fn gzip_members(data: &[u8], pieces: usize) -> Vec<u8> {
    let step = data.len().div_ceil(pieces).max(1);
    data.chunks(step).flat_map(gzip).collect()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// zstd with one frame per piece.
pub fn zstd_frames(data: &[u8], pieces: usize) -> Vec<u8> {
    let step = data.len().div_ceil(pieces).max(1);
    data.chunks(step).flat_map(zstd).collect()
}

pub fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Wrap {
    Plain,
    Gzip,
    Zstd,
}

/// A layer blob and what the image claims about it.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

impl Blob {
    /// A blob with true claims for the tar stream `tar`.
    pub fn new(tar: &[u8], wrap: Wrap) -> Self {
        let bytes = match wrap {
            Wrap::Plain => tar.to_vec(),
            Wrap::Gzip => gzip(tar),
            Wrap::Zstd => zstd(tar),
        };
        Blob::with_diff_id(bytes, sha256(tar))
    }

    /// Already compressed bytes with a true digest and size.
    pub fn with_diff_id(bytes: Vec<u8>, diff_id: String) -> Self {
        Blob {
            digest: sha256(&bytes),
            size: bytes.len() as u64,
            diff_id,
            bytes,
        }
    }

    pub fn wrong_digest(mut self) -> Self {
        self.digest = sha256(b"not this blob");
        self
    }

    pub fn wrong_size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    pub fn wrong_diff_id(mut self) -> Self {
        self.diff_id = sha256(b"not this tar");
        self
    }

    pub fn input(&self) -> LayerInput {
        LayerInput {
            blob: Box::new(Cursor::new(self.bytes.clone())),
            digest: Digest::parse(&self.digest).expect("test blob digest"),
            size: self.size,
            diff_id: Digest::parse(&self.diff_id).expect("test diff_id"),
            compression: None,
            blob_verified: false,
        }
    }
}

/// Plain, correctly described layers.
pub fn layers(tars: &[Vec<u8>]) -> Vec<LayerInput> {
    tars.iter()
        .map(|t| Blob::new(t, Wrap::Plain).input())
        .collect()
}

/// What one node of a tree looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub nlink: u64,
    pub mtime: i64,
    pub content: String,
    pub link: Option<PathBuf>,
}

/// Snapshots every node under `root` (the root included), by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let (kind, content, link) = if ft.is_symlink() {
        ("symlink", String::new(), Some(fs::read_link(path).unwrap()))
    } else if ft.is_dir() {
        ("dir", String::new(), None)
    } else if ft.is_file() {
        ("file", sha256(&fs::read(path).unwrap()), None)
    } else {
        ("special", String::new(), None)
    };
    out.insert(
        path.strip_prefix(root).unwrap().to_path_buf(),
        Node {
            kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            mtime: meta.mtime(),
            content,
            link,
        },
    );
    if ft.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            walk(root, &entry.unwrap().path(), out);
        }
    }
}

/// A directory beside the target that no layer may touch.
pub struct Canary {
    pub dir: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl Canary {
    /// Plants `parent/canary` with files, a subdirectory, a symlink and odd
    /// modes, and snapshots it.
    pub fn plant(parent: &Path) -> Self {
        let dir = parent.join("canary");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("canary-file"), b"do not touch").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/deep"), b"deep canary").unwrap();
        fs::set_permissions(dir.join("sub/deep"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("canary-file", dir.join("link")).unwrap();
        fs::write(dir.join("x"), b"x marks the spot").unwrap();
        let before = snapshot(&dir);
        Canary { dir, before }
    }

    pub fn assert_unchanged(&self) {
        let after = snapshot(&self.dir);
        assert_eq!(self.before, after, "the canary beside the target changed");
    }
}

/// A temp dir holding the target path (not yet created) and a canary.
pub struct Scene {
    pub tmp: TempDir,
    pub target: PathBuf,
    pub canary: Canary,
}

impl Scene {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("rootfs");
        let canary = Canary::plant(tmp.path());
        Scene {
            tmp,
            target,
            canary,
        }
    }

    pub fn unpack(&self, layers: Vec<LayerInput>) -> Result<LayerStats, StagedUnpackError> {
        self.unpack_with(layers, UnpackOptions::default())
    }

    pub fn unpack_with(
        &self,
        layers: Vec<LayerInput>,
        options: UnpackOptions,
    ) -> Result<LayerStats, StagedUnpackError> {
        unpack_layers_into(&self.target, layers, options, &mut |_, _| {})
    }

    /// Unpacks plain tars; panics on failure with the whole error chain.
    pub fn unpack_tars(&self, tars: &[Vec<u8>]) -> LayerStats {
        match self.unpack(layers(tars)) {
            Ok(stats) => stats,
            Err(e) => panic!("unpack failed: {}", chain(&e)),
        }
    }

    /// Unpacks plain tars that must fail; checks that nothing is left behind
    /// and the canary is intact, and returns the layer error.
    pub fn unpack_fails(&self, tars: &[Vec<u8>]) -> UnpackError {
        let err = self.unpack(layers(tars)).expect_err("the unpack must fail");
        self.assert_clean_failure();
        layer_error(err)
    }

    /// No target, no staging directory, canary intact.
    pub fn assert_clean_failure(&self) {
        assert!(
            fs::symlink_metadata(&self.target).is_err(),
            "a target was left behind"
        );
        let leftovers: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".rootfs.metalor-staging-"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
        self.canary.assert_unchanged();
    }

    /// Lists the names in the temp dir, to prove nothing new appeared there.
    pub fn siblings(&self) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.target.join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    pub fn meta(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.path(rel)).unwrap_or_else(|e| panic!("stat {rel}: {e}"))
    }
}

/// The layer error inside a staged-unpack error.
pub fn layer_error(err: StagedUnpackError) -> UnpackError {
    match err {
        StagedUnpackError::Layer { source, .. } => source,
        other => panic!("expected a layer error, got {}", chain(&other)),
    }
}

/// An error and its causes on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Asserts a hostile-member error whose reason contains `reason`.
#[track_caller]
pub fn assert_hostile(err: &UnpackError, reason: &str) {
    match err {
        UnpackError::Hostile { reason: r, .. } => {
            assert!(
                r.contains(reason),
                "hostile reason {r:?}, wanted {reason:?}"
            )
        }
        other => panic!("expected a hostile error ({reason}), got {}", chain(other)),
    }
}

/// Asserts a stream (read/decode) error.
#[track_caller]
pub fn assert_stream(err: &UnpackError) {
    assert!(
        matches!(err, UnpackError::Stream(_)),
        "expected a stream error, got {}",
        chain(err)
    );
}

/// Asserts a digest/size mismatch of kind `what`.
#[track_caller]
pub fn assert_mismatch(err: &UnpackError, what: &str) {
    match err {
        UnpackError::Mismatch { what: w, .. } => assert_eq!(*w, what, "{}", chain(err)),
        other => panic!("expected a {what} mismatch, got {}", chain(other)),
    }
}
