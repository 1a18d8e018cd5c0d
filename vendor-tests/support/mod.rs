//! Shared helpers for the differential suites: tool discovery with the
//! CI-fails / elsewhere-skips rule, running `metalor` and the oracle tools,
//! and a tree snapshot that two rootfs directories are compared with.
#![allow(dead_code)]

#[path = "../../fixtures/src/lib.rs"]
pub mod fixtures;
#[path = "../../tests/skip/mod.rs"]
mod skip;
#[allow(unused_imports)] // each test crate uses a different subset
pub use skip::{in_ci, require_root, require_tool, skip_or_fail, which};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// The committed fixture layouts, `fixtures/oci/`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/oci")
}

/// Runs a command, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `metalor unpack --image LAYOUT:TAG ROOTFS`.
pub fn metalor_unpack(layout: &Path, tag: &str, rootfs: &Path) {
    let image = format!("{}:{tag}", layout.display());
    run(Command::new(env!("CARGO_BIN_EXE_metalor"))
        .args(["unpack", "--quiet", "--image"])
        .arg(&image)
        .arg(rootfs));
    assert!(
        rootfs.is_dir(),
        "metalor left no rootfs at {}",
        rootfs.display()
    );
}

/// `umoci unpack --rootless --keep-dirlinks --image LAYOUT:TAG BUNDLE`;
/// returns `BUNDLE/rootfs`.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--keep-dirlinks", "--image"])
        .arg(&image)
        .arg(bundle));
    bundle.join("rootfs")
}

/// One filesystem entry as the comparisons see it. Owners and timestamps
/// are left out on purpose (see the suites for why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, `fifo`, `char`, `block` or `socket`.
    pub kind: &'static str,
    /// Permission bits including setuid, setgid and sticky (none for
    /// symlinks, whose mode means nothing on Linux).
    pub mode: Option<u32>,
    /// Regular files: size and content sha256.
    pub content: Option<(u64, String)>,
    /// Symlinks: the target, verbatim.
    pub target: Option<String>,
    /// Regular files with more than one link: the first path, in sorted
    /// order, of the files sharing this inode inside the tree.
    pub link_group: Option<String>,
    /// Device numbers of char and block devices.
    pub rdev: Option<u64>,
    /// Extended attributes (name, value), sorted; `security.selinux` left
    /// out because the host labels it.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// uid and gid; `None` once a suite decides owners are not comparable
    /// (see [`drop_owners`]).
    pub owner: Option<(u32, u32)>,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(m) = self.mode {
            write!(f, " mode={m:04o}")?;
        }
        if let Some((size, sha)) = &self.content {
            write!(f, " size={size} sha256={}", &sha[..16])?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {t:?}")?;
        }
        if let Some(g) = &self.link_group {
            write!(f, " hardlinked-with={g:?}")?;
        }
        if let Some(r) = self.rdev {
            write!(f, " rdev={r:#x}")?;
        }
        if let Some((uid, gid)) = self.owner {
            write!(f, " owner={uid}:{gid}")?;
        }
        for (k, v) in &self.xattrs {
            write!(f, " xattr:{k}={:?}", String::from_utf8_lossy(v))?;
        }
        Ok(())
    }
}

/// A sorted snapshot of a tree: relative path (`.` for the root) to node.
pub type Snapshot = BTreeMap<String, Node>;

/// Walks `root` without following symlinks and records every entry.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk(root, root, &mut out, &mut inodes);
    for paths in inodes.values_mut().filter(|p| p.len() > 1) {
        paths.sort();
        let first = paths[0].clone();
        for p in paths.iter() {
            out.get_mut(p).expect("walked").link_group = Some(first.clone());
        }
    }
    out
}

fn walk(
    root: &Path,
    path: &Path,
    out: &mut Snapshot,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let rel = match path.strip_prefix(root).expect("under root") {
        p if p.as_os_str().is_empty() => ".".to_string(),
        p => p.to_string_lossy().into_owned(),
    };
    let ft = meta.file_type();
    let mode = Some(meta.mode() & 0o7777);
    let mut node = Node {
        kind: "other",
        mode,
        content: None,
        target: None,
        link_group: None,
        rdev: None,
        xattrs: xattrs(path),
        owner: Some((meta.uid(), meta.gid())),
    };
    if ft.is_dir() {
        node.kind = "dir";
        let mut children: Vec<_> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        children.sort();
        for child in children {
            walk(root, &child, out, inodes);
        }
    } else if ft.is_file() {
        node.kind = "file";
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        node.content = Some((meta.len(), hex(&Sha256::digest(&data))));
        if meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
    } else if ft.is_symlink() {
        node.kind = "symlink";
        node.mode = None;
        let target = fs::read_link(path).expect("readlink");
        node.target = Some(String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned());
    } else if ft.is_fifo() {
        node.kind = "fifo";
    } else if ft.is_char_device() {
        node.kind = "char";
        node.rdev = Some(meta.rdev());
    } else if ft.is_block_device() {
        node.kind = "block";
        node.rdev = Some(meta.rdev());
    } else if ft.is_socket() {
        node.kind = "socket";
    }
    out.insert(rel, node);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The extended attributes of `path` (not following symlinks), sorted.
fn xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: c_path is NUL-terminated and `names` is a writable buffer of
    // the length passed.
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let name_str = String::from_utf8_lossy(name).into_owned();
        if name_str == "security.selinux" {
            continue;
        }
        let c_name = std::ffi::CString::new(name).expect("no NUL in name");
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated and `value` is a writable
        // buffer of the length passed.
        let len = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((name_str, value));
        }
    }
    out.sort();
    out
}

/// Forgets every owner in `snap`, for comparisons where owners are not
/// expected to agree.
pub fn drop_owners(snap: &mut Snapshot) {
    for node in snap.values_mut() {
        node.owner = None;
    }
}

/// True when this process can give files away (euid 0), so metalor keeps
/// the image's owners.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The xattr in which `umoci unpack --rootless` records the image's owner
/// of a file it could not chown.
pub const ROOTLESS_XATTR: &str = "user.rootlesscontainers";

/// Turns an umoci `--rootless` snapshot into what a privileged unpack
/// would give: each `user.rootlesscontainers` xattr (protobuf message
/// `Resource { uint32 uid = 1; uint32 gid = 2; }`, where 0xffffffff means
/// "unchanged") is removed and becomes the node's owner.
pub fn apply_rootless_owners(snap: &mut Snapshot) {
    for (path, node) in snap.iter_mut() {
        let Some(i) = node.xattrs.iter().position(|(k, _)| k == ROOTLESS_XATTR) else {
            continue;
        };
        let (_, value) = node.xattrs.remove(i);
        let (mut uid, mut gid) = node.owner.expect("owners recorded");
        let mut rest = &value[..];
        while let Some((&tag, tail)) = rest.split_first() {
            let (v, tail) =
                varint(tail).unwrap_or_else(|| panic!("{path}: bad {ROOTLESS_XATTR} {value:?}"));
            rest = tail;
            let v =
                u32::try_from(v).unwrap_or_else(|_| panic!("{path}: id out of range in {value:?}"));
            match tag {
                0x08 if v != u32::MAX => uid = v,
                0x10 if v != u32::MAX => gid = v,
                0x08 | 0x10 => {}
                _ => panic!("{path}: unexpected field tag {tag:#x} in {ROOTLESS_XATTR} {value:?}"),
            }
        }
        node.owner = Some((uid, gid));
    }
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

/// Every difference between two snapshots, one line each.
pub fn diff_snapshots(
    left: &Snapshot,
    right: &Snapshot,
    left_name: &str,
    right_name: &str,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, l) in left {
        match right.get(path) {
            None => diffs.push(format!("only in {left_name}: {path}: {l}")),
            Some(r) if r != l => diffs.push(format!(
                "differs: {path}:\n    {left_name}: {l}\n    {right_name}: {r}"
            )),
            Some(_) => {}
        }
    }
    for (path, r) in right {
        if !left.contains_key(path) {
            diffs.push(format!("only in {right_name}: {path}: {r}"));
        }
    }
    diffs
}

/// Asserts that two trees have the same snapshot, printing every difference.
pub fn assert_same_tree(what: &str, left: (&str, &Path), right: (&str, &Path)) {
    let (l, r) = (snapshot(left.1), snapshot(right.1));
    assert_same_snapshot(what, (left.0, left.1, l), (right.0, right.1, r));
}

/// Asserts that two snapshots (of the trees at the given paths) are equal,
/// printing every difference.
pub fn assert_same_snapshot(
    what: &str,
    left: (&str, &Path, Snapshot),
    right: (&str, &Path, Snapshot),
) {
    let (l, r) = (&left.2, &right.2);
    assert!(
        l.contains_key("."),
        "{what}: empty snapshot of {}",
        left.1.display()
    );
    let diffs = diff_snapshots(l, r, left.0, right.0);
    assert!(
        diffs.is_empty(),
        "{what}: {} ({}) and {} ({}) differ in {} entries:\n{}",
        left.0,
        left.1.display(),
        right.0,
        right.1.display(),
        diffs.len(),
        diffs.join("\n")
    );
    eprintln!(
        "{what}: {} and {} agree on {} entries",
        left.0,
        right.0,
        l.len()
    );
}

/// The busybox layout, built into `dir/busybox` from the host's static
/// busybox; `None` (after the skip notice) when there is none outside CI.
pub fn busybox_layout(dir: &Path, test: &str) -> Option<PathBuf> {
    let Some(busybox) = fixtures::find_static_busybox() else {
        skip_or_fail(
            test,
            "no static busybox at /bin/busybox (Debian package `busybox-static`)",
        );
        return None;
    };
    let layout = dir.join("busybox");
    fixtures::write_busybox_layout(&layout, &busybox).expect("write the busybox layout");
    Some(layout)
}

/// `OsStr` helper for building `oci:` arguments.
pub fn oci_arg(layout: &Path, tag: &str) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from("oci:");
    s.push(layout.as_os_str());
    s.push(OsStr::new(":"));
    s.push(tag);
    s
}
