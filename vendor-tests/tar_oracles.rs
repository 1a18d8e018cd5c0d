//! Archives written by the real GNU `tar` and `bsdtar`, with their quirks
//! (GNU longname/longlink records, old-GNU and PAX sparse files, PAX
//! headers, PAX xattrs, ustar prefix splitting, hardlinks), wrapped as
//! one-layer OCI layouts: metalor must unpack each to the same tree as the
//! tool's own `-x` into a fresh directory.
//!
//! Both sides run as root, so tar restores permissions exactly (including
//! setuid/setgid) as metalor does.

mod support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{assert_same_tree, metalor_unpack, require_tool, run};

const LONG_DIR: &str =
    "a-directory-name-that-is-long-enough-to-need-an-extension-header-0123456789";
const LONG_FILE: &str =
    "and-a-file-name-that-alone-is-more-than-one-hundred-bytes-long-so-ustar-cannot-store-it-without-help.txt";

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The tree every archive is made from: long names and link targets,
/// hardlinks (one with a long name), symlinks, odd modes, an empty file and
/// a fifo.
fn source_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    chmod(root, 0o755);
    let long = root.join(LONG_DIR).join(LONG_DIR);
    fs::create_dir_all(&long).unwrap();
    fs::write(long.join(LONG_FILE), b"deep and long\n").unwrap();
    fs::create_dir(root.join("etc")).unwrap();
    fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    fs::write(root.join("etc/empty"), b"").unwrap();
    fs::write(root.join("etc/script"), b"#!/bin/sh\n").unwrap();
    chmod(&root.join("etc/script"), 0o4755);
    fs::hard_link(root.join("etc/hosts"), root.join("etc/hosts.hardlink")).unwrap();
    fs::hard_link(long.join(LONG_FILE), root.join("hardlink-to-long-name")).unwrap();
    fs::hard_link(root.join("etc/hosts"), long.join("hardlink-under-long-dir")).unwrap();
    symlink("hosts", root.join("etc/hosts.symlink")).unwrap();
    symlink("/etc/hosts", root.join("absolute-symlink")).unwrap();
    symlink(
        format!("{LONG_DIR}/{LONG_DIR}/{LONG_FILE}"),
        root.join("symlink-with-long-target"),
    )
    .unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();
    fs::create_dir(root.join("shared")).unwrap();
    chmod(&root.join("shared"), 0o3775);
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/secret"), b"s\n").unwrap();
    chmod(&root.join("private/secret"), 0o400);
    chmod(&root.join("private"), 0o700);
    run(Command::new("mkfifo").arg(root.join("fifo")));
}

/// Adds sparse files: holes at the start, in the middle and at the end.
fn add_sparse_files(root: &Path) {
    let mut f = fs::File::create(root.join("sparse")).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"data after a 1 MiB hole\n").unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"more data\n").unwrap();
    f.set_len(5 << 20).unwrap();
    let g = fs::File::create(root.join("all-hole")).unwrap();
    g.set_len(2 << 20).unwrap();
}

/// Sets a `user.*` xattr; false if the filesystem refuses user xattrs.
fn add_xattr(path: &Path) -> bool {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import os,sys; os.setxattr(sys.argv[1], 'user.metalor', b'oracle value')")
        .arg(path)
        .output();
    matches!(out, Ok(o) if o.status.success())
}

struct Case<'a> {
    test: &'a str,
    tool: &'a str,
    package: &'a str,
    create: &'a [&'a str],
    extract: &'a [&'a str],
    sparse: bool,
    xattr: bool,
}

/// Creates the archive with `tool CREATE -f A -C SRC .`, extracts it with
/// `tool EXTRACT -f A -C FRESH`, unpacks it with metalor as a one-layer
/// image, and compares the trees.
fn check(case: Case<'_>) -> Option<PathBuf> {
    if !require_tool(case.tool, case.package, case.test) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_tree(&src);
    if case.sparse {
        add_sparse_files(&src);
    }
    if case.xattr {
        assert!(
            add_xattr(&src.join("etc/hosts")),
            "{}: cannot set user xattrs in {}",
            case.test,
            src.display()
        );
    }
    let archive = tmp.path().join("layer.tar");
    run(Command::new(case.tool)
        .args(case.create)
        .arg("-f")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let extracted = tmp.path().join("extracted");
    fs::create_dir(&extracted).unwrap();
    run(Command::new(case.tool)
        .args(case.extract)
        .arg("-f")
        .arg(&archive)
        .arg("-C")
        .arg(&extracted));
    // Sanity: the tool's own round trip reproduces the source.
    assert_same_tree(case.test, ("source", &src), (case.tool, &extracted));

    let layout = tmp.path().join("layout");
    support::fixtures::write_single_tar_layout(&layout, fs::read(&archive).unwrap()).unwrap();
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "latest", &rootfs);
    assert_same_tree(case.test, (case.tool, &extracted), ("metalor", &rootfs));
    if case.xattr {
        let snap = support::snapshot(&rootfs);
        let node = &snap["etc/hosts"];
        assert!(
            node.xattrs
                .iter()
                .any(|(k, v)| k == "user.metalor" && v == b"oracle value"),
            "{}: xattr lost: {node}",
            case.test
        );
    }
    Some(tmp.keep())
}

macro_rules! tar_case {
    ($test:ident, $tool:literal, $pkg:literal, [$($c:literal),*], [$($x:literal),*], sparse: $sparse:literal, xattr: $xattr:literal) => {
        #[test]
        fn $test() {
            if let Some(dir) = check(Case {
                test: stringify!($test),
                tool: $tool,
                package: $pkg,
                create: &[$($c),*],
                extract: &[$($x),*],
                sparse: $sparse,
                xattr: $xattr,
            }) {
                fs::remove_dir_all(dir).unwrap();
            }
        }
    };
}

tar_case!(gnu_tar_gnu_format, "tar", "tar", ["--format=gnu", "-c"], ["-xp"], sparse: false, xattr: false);
tar_case!(gnu_tar_gnu_format_sparse, "tar", "tar", ["--format=gnu", "--sparse", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(gnu_tar_oldgnu_format_sparse, "tar", "tar", ["--format=oldgnu", "--sparse", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(gnu_tar_pax_format, "tar", "tar", ["--format=pax", "-c"], ["-xp"], sparse: false, xattr: false);
tar_case!(gnu_tar_pax_xattrs, "tar", "tar", ["--format=pax", "--xattrs", "-c"], ["--xattrs", "--xattrs-include=user.*", "-xp"], sparse: false, xattr: true);
tar_case!(gnu_tar_pax_sparse_0_0, "tar", "tar", ["--format=pax", "--sparse", "--sparse-version=0.0", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(gnu_tar_pax_sparse_0_1, "tar", "tar", ["--format=pax", "--sparse", "--sparse-version=0.1", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(gnu_tar_pax_sparse_1_0, "tar", "tar", ["--format=pax", "--sparse", "--sparse-version=1.0", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(bsdtar_pax_sparse, "bsdtar", "libarchive-tools", ["--format=pax", "-c"], ["-xp"], sparse: true, xattr: false);
tar_case!(bsdtar_pax_format, "bsdtar", "libarchive-tools", ["--format=pax", "-c"], ["-xp"], sparse: false, xattr: false);
tar_case!(bsdtar_restricted_pax_format, "bsdtar", "libarchive-tools", ["--format=paxr", "-c"], ["-xp"], sparse: false, xattr: false);
tar_case!(bsdtar_gnutar_format, "bsdtar", "libarchive-tools", ["--format=gnutar", "-c"], ["-xp"], sparse: false, xattr: false);
tar_case!(bsdtar_pax_xattrs, "bsdtar", "libarchive-tools", ["--format=pax", "--xattrs", "-c"], ["--xattrs", "-xp"], sparse: false, xattr: true);

/// bsdtar's archive, extracted by GNU tar too: the two oracles and metalor
/// agree.
#[test]
fn bsdtar_pax_extracted_by_gnu_tar() {
    let test = "bsdtar_pax_extracted_by_gnu_tar";
    if !require_tool("bsdtar", "libarchive-tools", test) || !require_tool("tar", "tar", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source_tree(&src);
    let archive = tmp.path().join("a.tar");
    run(Command::new("bsdtar")
        .args(["--format=pax", "-c", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("."));
    let extracted = tmp.path().join("gnu");
    fs::create_dir(&extracted).unwrap();
    run(Command::new("tar")
        .args(["-xp", "-f"])
        .arg(&archive)
        .arg("-C")
        .arg(&extracted));
    let layout = tmp.path().join("layout");
    support::fixtures::write_single_tar_layout(&layout, fs::read(&archive).unwrap()).unwrap();
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "latest", &rootfs);
    assert_same_tree(test, ("GNU tar", &extracted), ("metalor", &rootfs));
}
