//! The escape oracle shared by the fuzz target and `tests/escape_oracle.rs`.
//!
//! Fuzz bytes are decoded into a sequence of tar entries whose names and
//! link targets are drawn mostly from a small hostile dictionary (`..`,
//! absolute paths, whiteouts, names that point at the canary), so that the
//! fuzzer spends its time on escapes rather than on random bytes. The
//! layers are applied to `sandbox/root`; the oracle then checks that the
//! sandbox still holds exactly `root` and an unchanged `canary`.

use std::fs;
use std::os::fd::AsFd;

use metalor::unpack::{Applier, Privileges, UnpackOptions};

const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "c",
    "..",
    ".",
    "",
    "canary",
    "file",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..",
    ".wh.",
    ".wh.canary",
    "etc",
    "usr",
    "bin",
];
const TARGETS: &[&str] = &[
    "/",
    "..",
    "../..",
    "../canary",
    "../canary/file",
    "/canary",
    "/canary/file",
    "a",
    "a/b",
    "/a",
    "../../../../",
    "b/../..",
    ".",
    "",
];
const KINDS: &[u8] = b"0255123456"; // file (x2), symlink (x2), dir, hardlink...

/// Decodes `data` into layers, applies them, and panics if anything outside
/// the target changed.
pub fn check(data: &[u8]) {
    let sandbox = tempdir();
    let root = sandbox.join("root");
    let canary = sandbox.join("canary");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&canary).unwrap();
    fs::write(canary.join("file"), b"canary").unwrap();

    let root_fd = fs::File::open(&root).unwrap();
    let privileges = Privileges {
        chown: false,
        mknod: false,
    };
    let mut applier = Applier::new(root_fd.as_fd(), UnpackOptions::default(), privileges);
    for layer in data.split(|&b| b == 0xff).take(4) {
        let tar = build_tar(layer);
        // Errors are fine; escapes are not.
        let _ = applier.apply_layer(&tar[..]);
    }

    let mut names: Vec<_> = fs::read_dir(&sandbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "root"],
        "something appeared beside the target"
    );
    let canary_names: Vec<_> = fs::read_dir(&canary)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(canary_names, ["file"], "the canary directory changed");
    let meta = fs::symlink_metadata(canary.join("file")).unwrap();
    assert!(meta.is_file(), "the canary file was replaced");
    assert_eq!(
        fs::read(canary.join("file")).unwrap(),
        b"canary",
        "the canary was written"
    );
    assert_eq!(meta.len(), 6);
    let _ = fs::remove_dir_all(&sandbox);
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "metalor-oracle-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
}

fn path_from(bytes: &mut Bytes<'_>, dictionary: &[&str]) -> Option<String> {
    let n = bytes.next()? % 4 + 1;
    let mut parts = Vec::new();
    for _ in 0..n {
        parts.push(dictionary[bytes.next()? as usize % dictionary.len()]);
    }
    let mut path = parts.join("/");
    if bytes.next()? % 5 == 0 {
        path.insert(0, '/');
    }
    Some(path)
}

fn build_tar(layer: &[u8]) -> Vec<u8> {
    let mut bytes = Bytes(layer);
    let mut out = Vec::new();
    while let Some(kind) = bytes.next() {
        let kind = KINDS[kind as usize % KINDS.len()];
        let Some(name) = path_from(&mut bytes, COMPONENTS) else {
            break;
        };
        let link = match kind {
            b'1' | b'2' => path_from(&mut bytes, TARGETS).unwrap_or_default(),
            _ => String::new(),
        };
        let body: &[u8] = if kind == b'0' { b"payload" } else { b"" };
        out.extend(header(&name, &link, kind, body.len()));
        out.extend(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

/// A raw ustar header, so that names the `tar` crate's builder would refuse
/// (`..`, absolute) can be written.
fn header(name: &str, link: &str, kind: u8, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, len: usize, s: &[u8]| {
        let n = s.len().min(len);
        h[at..at + n].copy_from_slice(&s[..n]);
    };
    put(&mut h, 0, 100, name.as_bytes());
    put(&mut h, 100, 8, b"0000755\0");
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, 12, b"00000000000\0");
    h[156] = kind;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 8, b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}
