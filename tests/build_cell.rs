//! Build cells end to end, as root, over a busybox rootfs prepared by
//! `prepare_oci_rootfs`: the `metalor` binary is the re-exec target (its
//! hidden `__inner-build-cell` verb reads the request and calls
//! `run_build_cell`), and `finalize_build_cell` runs afterwards, as a
//! consumer would. Covers seeds (directory, .tar, .tar.gz), read-only
//! imports, read-write caches synced back, exports (workspace, cache,
//! rootfs fallback), every cleanup policy, an export failure that still
//! cleans up, networking disabled (only `lo`), limits, and every
//! validation phrase of upstream §3.7.

#[path = "../vendor-tests/support/mod.rs"]
mod support;

mod build_cell_support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use build_cell_support::{busybox_rootfs, Prefix, INNER_BUILD_CELL, METALOR};
use metalor::{
    build_cell_reexec_command, finalize_build_cell, BuildCellResult, BuildCellSpec, CacheSpec,
    CleanupPolicy, CommandSpec, ExportSpec, HostPath, ImportSpec, NetworkPolicy, ResourceLimits,
    WorkspaceSeed,
};

/// A prefix with a busybox rootfs at `<prefix>/pkg/oci/bundle/rootfs`.
struct Cell {
    prefix: Prefix,
    rootfs: PathBuf,
}

impl Cell {
    fn new(test: &str) -> Option<Cell> {
        let prefix = Prefix::new();
        let rootfs = busybox_rootfs(&prefix, "pkg", test)?;
        Some(Cell { prefix, rootfs })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.prefix.join(name)
    }

    /// A spec running `sh -c script` in `/workspace`.
    fn spec(&self, script: &str) -> BuildCellSpec {
        BuildCellSpec {
            root: HostPath::new(&self.rootfs),
            scratch: HostPath::new(self.path("scratch")),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::Empty,
            imports: vec![],
            caches: vec![],
            exports: vec![],
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "sh".into(),
                argv: vec!["-c".into(), script.into()],
            },
            env: vec![("PATH".into(), "/bin".into())],
            network: NetworkPolicy::Enabled,
            limits: ResourceLimits::default(),
            cleanup: CleanupPolicy::Always,
        }
    }

    /// Outer side, child, then finalize: (child output, finalize result).
    fn run(&self, spec: &BuildCellSpec) -> (std::process::Output, anyhow::Result<BuildCellResult>) {
        let mut command = build_cell_reexec_command(
            Path::new(METALOR),
            INNER_BUILD_CELL,
            &self.prefix.path,
            spec,
        )
        .expect("build the cell command");
        let output = command.output().expect("spawn the cell");
        let result = finalize_build_cell(spec, output.status.success());
        (output, result)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ran(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "cell failed: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn cell_with_seed_import_cache_and_exports() {
    let Some(cell) = Cell::new("cell_with_seed_import_cache_and_exports") else {
        return;
    };
    let seed = cell.path("seed");
    fs::create_dir_all(seed.join("src")).unwrap();
    fs::write(seed.join("src/main.txt"), "seeded\n").unwrap();
    symlink("src/main.txt", seed.join("link")).unwrap();
    let import = cell.path("import");
    fs::create_dir_all(&import).unwrap();
    fs::write(import.join("dep.txt"), "dependency\n").unwrap();
    let cache = cell.path("cache");
    fs::create_dir_all(&cache).unwrap();
    fs::write(cache.join("old"), "stale\n").unwrap();
    let out = cell.path("out");
    let mut spec = cell.spec(
        "set -e
         cat src/main.txt > built.txt
         cat link >> built.txt
         cat /workspace/deps/dep.txt >> built.txt
         if echo x > /workspace/deps/new 2>/dev/null; then echo import-writable; exit 9; fi
         test -e /cache/old
         rm /cache/old
         echo fresh > /cache/new
         echo from-root > /etc/cell-note",
    );
    spec.workspace_seed = WorkspaceSeed::SnapshotDir(HostPath::new(&seed));
    spec.imports.push(ImportSpec {
        source: HostPath::new(&import),
        destination: "/workspace/deps".into(),
    });
    spec.caches.push(CacheSpec {
        source: HostPath::new(&cache),
        destination: "/cache".into(),
    });
    spec.exports = vec![
        ExportSpec {
            source: "/workspace/built.txt".into(),
            destination: HostPath::new(out.join("built.txt")),
        },
        ExportSpec {
            source: "/cache/new".into(),
            destination: HostPath::new(out.join("cache-new")),
        },
        ExportSpec {
            source: "/etc/cell-note".into(),
            destination: HostPath::new(out.join("note")),
        },
    ];
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    let result = result.expect("finalize");
    assert!(!result.scratch_preserved);
    assert!(!cell.path("scratch").exists(), "Always removes the scratch");
    assert_eq!(
        fs::read_to_string(out.join("built.txt")).unwrap(),
        "seeded\nseeded\ndependency\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("cache-new")).unwrap(),
        "fresh\n"
    );
    assert_eq!(fs::read_to_string(out.join("note")).unwrap(), "from-root\n");
    // The cache is replaced by the job's view: the deleted file is gone.
    assert!(!cache.join("old").exists());
    assert_eq!(fs::read_to_string(cache.join("new")).unwrap(), "fresh\n");
    // The import on the host was never writable from the cell.
    assert!(!import.join("new").exists());
    // Nothing the cell mounted is left on the host.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(cell.prefix.path.to_str().unwrap()));
}

#[test]
fn missing_cache_source_starts_empty_and_is_created() {
    let Some(cell) = Cell::new("missing_cache_source_starts_empty_and_is_created") else {
        return;
    };
    let cache = cell.path("new-cache");
    let mut spec = cell.spec("test -z \"$(ls /cache)\" && echo made > /cache/file");
    spec.caches.push(CacheSpec {
        source: HostPath::new(&cache),
        destination: "/cache".into(),
    });
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    result.unwrap();
    assert_eq!(fs::read_to_string(cache.join("file")).unwrap(), "made\n");
}

/// A tar with a regular file, a directory, a symlink pointing out of the
/// workspace, and a member written through that symlink.
fn hostile_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(data.len() as u64);
        header.set_mtime(1_600_000_000);
        match link {
            Some(target) => builder.append_link(&mut header, name, target).unwrap(),
            None => builder.append_data(&mut header, name, data).unwrap(),
        }
    };
    add("dir/", tar::EntryType::Directory, None, b"");
    add(
        "dir/file.txt",
        tar::EntryType::Regular,
        None,
        b"from archive\n",
    );
    add("escape", tar::EntryType::Symlink, Some("/"), b"");
    add(
        "escape/pwned-by-archive",
        tar::EntryType::Regular,
        None,
        b"x",
    );
    add(
        "up",
        tar::EntryType::Symlink,
        Some("../../../../../../.."),
        b"",
    );
    add(
        "up/tmp/pwned-by-archive",
        tar::EntryType::Regular,
        None,
        b"x",
    );
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn archive_seeds_unpack_safely() {
    let Some(cell) = Cell::new("archive_seeds_unpack_safely") else {
        return;
    };
    let tar = hostile_tar();
    for (name, bytes) in [
        ("seed.tar", tar.clone()),
        ("seed.tar.gz", gzip(&tar)),
        ("seed.tgz", gzip(&tar)),
    ] {
        let archive = cell.path(name);
        fs::write(&archive, bytes).unwrap();
        let out = cell.path(&format!("out-{name}"));
        let mut spec = cell.spec("cat dir/file.txt > copy.txt");
        spec.workspace_seed = WorkspaceSeed::Archive(HostPath::new(&archive));
        spec.exports.push(ExportSpec {
            source: "/workspace/copy.txt".into(),
            destination: HostPath::new(&out),
        });
        spec.cleanup = CleanupPolicy::Never;
        let (output, result) = cell.run(&spec);
        assert_ran(&output);
        assert!(result.unwrap().scratch_preserved);
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "from archive\n",
            "{name}"
        );
        // The writes through the links stayed inside the workspace.
        assert!(!Path::new("/pwned-by-archive").exists(), "{name}");
        assert!(!Path::new("/tmp/pwned-by-archive").exists(), "{name}");
        let workspace = cell.path("scratch/workspace");
        // Links resolve inside the workspace, as in a rootfs.
        assert_eq!(
            fs::read_link(workspace.join("escape")).unwrap(),
            Path::new("/")
        );
        assert!(workspace.join("pwned-by-archive").is_file(), "{name}");
        assert!(workspace.join("tmp/pwned-by-archive").is_file(), "{name}");
    }
}

#[test]
fn unsafe_archive_members_and_formats_are_refused() {
    let Some(cell) = Cell::new("unsafe_archive_members_and_formats_are_refused") else {
        return;
    };
    for member in ["../evil", "/abs/evil", "a/../../evil"] {
        let mut raw = tar::Header::new_old();
        {
            let bytes = raw.as_mut_bytes();
            bytes[..member.len()].copy_from_slice(member.as_bytes());
        }
        raw.set_mode(0o644);
        raw.set_size(1);
        raw.set_entry_type(tar::EntryType::Regular);
        raw.set_cksum();
        let mut data = raw.as_bytes().to_vec();
        data.extend_from_slice(b"x");
        data.resize(512 * 2, 0);
        data.extend_from_slice(&[0u8; 1024]);
        let archive = cell.path("bad.tar");
        fs::write(&archive, data).unwrap();
        let mut spec = cell.spec("true");
        spec.workspace_seed = WorkspaceSeed::Archive(HostPath::new(&archive));
        let err = build_cell_reexec_command(
            Path::new(METALOR),
            INNER_BUILD_CELL,
            &cell.prefix.path,
            &spec,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "workspace archive {} contained an unsafe path",
                archive.display()
            )),
            "{member}: {err}"
        );
    }
    let zip = cell.path("seed.zip");
    fs::write(&zip, b"PK").unwrap();
    let mut spec = cell.spec("true");
    spec.workspace_seed = WorkspaceSeed::Archive(HostPath::new(&zip));
    let err = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "unsupported workspace archive format {} (expected .tar, .tar.gz, or .tgz)",
            zip.display()
        )),
        "{err}"
    );
    let file_seed = cell.path("not-a-dir");
    fs::write(&file_seed, b"").unwrap();
    spec.workspace_seed = WorkspaceSeed::SnapshotDir(HostPath::new(&file_seed));
    let err = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "build workspace seed must be a directory: {}",
            file_seed.display()
        )),
        "{err}"
    );
    // A seed that cannot be inspected fails with the real error, not with
    // "must be a directory".
    let missing_seed = cell.path("missing-seed");
    spec.workspace_seed = WorkspaceSeed::SnapshotDir(HostPath::new(&missing_seed));
    let err = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to inspect build workspace seed {}",
            missing_seed.display()
        )
    );
    assert!(
        format!("{err:#}").contains("No such file or directory"),
        "{err:#}"
    );
}

#[test]
fn cleanup_policies() {
    let Some(cell) = Cell::new("cleanup_policies") else {
        return;
    };
    let cases = [
        (CleanupPolicy::Always, true, false),
        (CleanupPolicy::Always, false, false),
        (CleanupPolicy::PreserveOnFailure, true, false),
        (CleanupPolicy::PreserveOnFailure, false, true),
        (CleanupPolicy::Never, true, true),
        (CleanupPolicy::Never, false, true),
    ];
    for (policy, succeed, preserved) in cases {
        let mut spec = cell.spec(if succeed { "exit 0" } else { "exit 3" });
        spec.cleanup = policy;
        let (output, result) = cell.run(&spec);
        assert_eq!(output.status.success(), succeed, "{policy:?}");
        if !succeed {
            assert_eq!(output.status.code(), Some(3), "exit code is passed on");
        }
        let result = result.expect("finalize");
        assert_eq!(result.scratch_preserved, preserved, "{policy:?} {succeed}");
        assert_eq!(
            cell.path("scratch").exists(),
            preserved,
            "{policy:?} {succeed}"
        );
        if preserved {
            assert!(cell.path("scratch/build-cell-request.json").is_file());
        }
    }
}

#[test]
fn failed_export_still_cleans_up_and_reports_the_first_error() {
    let Some(cell) = Cell::new("failed_export_still_cleans_up_and_reports_the_first_error") else {
        return;
    };
    let out = cell.path("out");
    let mut spec = cell.spec("echo ok > present");
    spec.exports = vec![
        ExportSpec {
            source: "/workspace/missing".into(),
            destination: HostPath::new(out.join("missing")),
        },
        ExportSpec {
            source: "/workspace/also-missing".into(),
            destination: HostPath::new(out.join("also-missing")),
        },
        ExportSpec {
            source: "/workspace/present".into(),
            destination: HostPath::new(out.join("present")),
        },
    ];
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    let err = result.unwrap_err().to_string();
    let expected = format!(
        "expected build export /workspace/missing to exist at {}",
        cell.path("scratch/workspace/missing").display()
    );
    assert_eq!(err, expected);
    assert!(
        !cell.path("scratch").exists(),
        "Always cleaned up despite the error"
    );
    assert_eq!(fs::read_to_string(out.join("present")).unwrap(), "ok\n");

    // A failed command skips missing exports instead of failing on them.
    let mut spec = cell.spec("exit 1");
    spec.exports = vec![ExportSpec {
        source: "/workspace/missing".into(),
        destination: HostPath::new(out.join("skipped")),
    }];
    let (output, result) = cell.run(&spec);
    assert!(!output.status.success());
    assert!(!result.unwrap().scratch_preserved);
    assert!(!out.join("skipped").exists());
}

#[test]
fn network_disabled_cells_see_only_loopback() {
    let Some(cell) = Cell::new("network_disabled_cells_see_only_loopback") else {
        return;
    };
    let script = "cat /proc/net/dev > /workspace/dev; test -e /etc/resolv.conf && echo resolv > /workspace/resolv; true";
    let mut spec = cell.spec(script);
    spec.network = NetworkPolicy::Disabled;
    spec.cleanup = CleanupPolicy::Never;
    let command = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
    )
    .unwrap();
    let args: Vec<_> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args,
        [
            INNER_BUILD_CELL.to_owned(),
            "--net".to_owned(),
            "--build-cell-request".to_owned(),
            cell.path("scratch/build-cell-request.json")
                .display()
                .to_string(),
        ]
    );
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    result.unwrap();
    let dev = fs::read_to_string(cell.path("scratch/workspace/dev")).unwrap();
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{dev}");
    assert!(
        !cell.path("scratch/workspace/resolv").exists(),
        "resolv.conf is not bound"
    );

    // With networking enabled the host's interfaces are visible.
    let mut spec = cell.spec(script);
    spec.cleanup = CleanupPolicy::Never;
    let command = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
    )
    .unwrap();
    assert!(!command.get_args().any(|a| a == "--net"));
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    result.unwrap();
    let host = fs::read_to_string("/proc/net/dev").unwrap();
    let dev = fs::read_to_string(cell.path("scratch/workspace/dev")).unwrap();
    assert_eq!(dev.lines().count(), host.lines().count());
}

#[test]
fn limits_apply_to_the_command() {
    let Some(cell) = Cell::new("limits_apply_to_the_command") else {
        return;
    };
    let mut spec = cell.spec("ulimit -t > cpu; ulimit -v > mem");
    spec.limits = ResourceLimits {
        cpu_time_seconds: Some(77),
        memory_bytes: Some(512 * 1024 * 1024),
        max_processes: Some(4096),
    };
    spec.cleanup = CleanupPolicy::Never;
    let (output, result) = cell.run(&spec);
    assert_ran(&output);
    result.unwrap();
    let read = |name: &str| fs::read_to_string(cell.path("scratch/workspace").join(name)).unwrap();
    assert_eq!(read("cpu").trim(), "77");
    assert_eq!(read("mem").trim(), (512 * 1024).to_string());
}

#[test]
fn rootfs_symlinked_etc_fails_resolv_bind_before_creating_through_it() {
    let Some(cell) = Cell::new("rootfs_symlinked_etc_fails_resolv_bind_before_creating_through_it")
    else {
        return;
    };
    if !Path::new("/etc/resolv.conf").exists() {
        support::skip_or_fail(
            "rootfs_symlinked_etc_fails_resolv_bind_before_creating_through_it",
            "the host has no /etc/resolv.conf to bind",
        );
        return;
    }
    let outside = cell.path("outside-etc");
    fs::create_dir_all(&outside).unwrap();
    fs::remove_dir_all(cell.rootfs.join("etc")).unwrap();
    symlink(&outside, cell.rootfs.join("etc")).unwrap();
    let spec = cell.spec("true");
    let (output, result) = cell.run(&spec);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("traverses a symlink"),
        "{}",
        text(&output.stderr)
    );
    assert!(!outside.join("resolv.conf").exists());
    result.unwrap();
}

#[test]
fn run_build_cell_refuses_the_host_namespace() {
    let Some(cell) = Cell::new("run_build_cell_refuses_the_host_namespace") else {
        return;
    };
    let spec = cell.spec("true");
    // Called directly, outside any re-exec: no METALOR_PRIVATE_NS.
    let err = metalor::run_build_cell(&spec).unwrap_err().to_string();
    assert!(
        err.contains("refusing to run container command without METALOR_PRIVATE_NS=1"),
        "{err}"
    );
}

// ---------------------------------------------------------------- validation

fn rejects(spec: &BuildCellSpec, prefix: &Path, phrase: &str) {
    let err = build_cell_reexec_command(Path::new(METALOR), INNER_BUILD_CELL, prefix, spec)
        .expect_err(phrase)
        .to_string();
    assert!(err.contains(phrase), "expected {phrase:?}, got {err:?}");
    let err = finalize_build_cell(spec, true)
        .expect_err(phrase)
        .to_string();
    assert!(
        err.contains(phrase),
        "finalize: expected {phrase:?}, got {err:?}"
    );
    let err = metalor::run_build_cell(spec).expect_err(phrase).to_string();
    assert!(
        err.contains(phrase),
        "run: expected {phrase:?}, got {err:?}"
    );
}

#[test]
fn validation_phrases_in_upstream_order() {
    let prefix = Prefix::new();
    let base = BuildCellSpec {
        root: HostPath::new(prefix.join("root")),
        scratch: HostPath::new(prefix.join("scratch")),
        workspace_path: "/workspace".into(),
        workspace_seed: WorkspaceSeed::Empty,
        imports: vec![],
        caches: vec![],
        exports: vec![],
        command: CommandSpec {
            cwd: "/workspace".into(),
            executable: "sh".into(),
            argv: vec![],
        },
        env: vec![],
        network: NetworkPolicy::Enabled,
        limits: ResourceLimits::default(),
        cleanup: CleanupPolicy::Always,
    };
    let p = &prefix.path;
    let with = |f: &dyn Fn(&mut BuildCellSpec)| {
        let mut spec = base.clone();
        f(&mut spec);
        spec
    };
    let import = |src: &str, dst: &str| ImportSpec {
        source: HostPath::new(src),
        destination: dst.into(),
    };
    let cache = |src: &str, dst: &str| CacheSpec {
        source: HostPath::new(src),
        destination: dst.into(),
    };
    // Root before scratch, both `/` checks before the absolute checks.
    rejects(
        &with(&|s| {
            s.root = HostPath::new("/");
            s.scratch = HostPath::new("/");
        }),
        p,
        "build cell root must not be /",
    );
    rejects(
        &with(&|s| {
            s.scratch = HostPath::new("/");
            s.root = HostPath::new("rel");
        }),
        p,
        "build scratch must not be /",
    );
    rejects(
        &with(&|s| s.root = HostPath::new("rel/root")),
        p,
        "build cell root must be absolute: rel/root",
    );
    rejects(
        &with(&|s| s.root = HostPath::new("/a/../root")),
        p,
        "build cell root must not contain '..': /a/../root",
    );
    rejects(
        &with(&|s| s.scratch = HostPath::new("scratch")),
        p,
        "build scratch must be absolute: scratch",
    );
    rejects(
        &with(&|s| s.workspace_path = "workspace".into()),
        p,
        "build cell workspace path must be absolute: workspace",
    );
    rejects(
        &with(&|s| s.workspace_path = "/".into()),
        p,
        "build cell workspace path must not be /",
    );
    rejects(
        &with(&|s| s.workspace_path = "/w/../x".into()),
        p,
        "build cell workspace path must not contain '..'",
    );
    rejects(
        &with(&|s| s.workspace_seed = WorkspaceSeed::SnapshotDir(HostPath::new("seed"))),
        p,
        "build workspace seed must be absolute: seed",
    );
    rejects(
        &with(&|s| s.workspace_seed = WorkspaceSeed::Archive(HostPath::new("a.tar"))),
        p,
        "build workspace archive must be absolute: a.tar",
    );
    rejects(
        &with(&|s| s.imports.push(import("in", "/in"))),
        p,
        "build import source must be absolute: in",
    );
    rejects(
        &with(&|s| s.imports.push(import("/in", "in"))),
        p,
        "build import destination must be absolute: in",
    );
    rejects(
        &with(&|s| s.imports.push(import("/in", "/"))),
        p,
        "build import destination must not be /",
    );
    rejects(
        &with(&|s| s.caches.push(cache("c", "/c"))),
        p,
        "build cache source must be absolute: c",
    );
    rejects(
        &with(&|s| s.caches.push(cache("/c", "/c/../d"))),
        p,
        "build cache destination must not contain '..'",
    );
    rejects(
        &with(&|s| s.caches.push(cache("/c", "/"))),
        p,
        "build cache destination must not be /",
    );
    rejects(
        &with(&|s| {
            s.exports.push(ExportSpec {
                source: "out".into(),
                destination: HostPath::new("/o"),
            })
        }),
        p,
        "build export source must be absolute: out",
    );
    rejects(
        &with(&|s| {
            s.exports.push(ExportSpec {
                source: "/out".into(),
                destination: HostPath::new("o"),
            })
        }),
        p,
        "build export destination must be absolute: o",
    );
    rejects(
        &with(&|s| {
            s.imports.push(import("/a", "/deps"));
            s.imports.push(import("/b", "/deps/sub"));
        }),
        p,
        "portable import destination /deps conflicts with import destination /deps/sub",
    );
    rejects(
        &with(&|s| {
            s.imports.push(import("/a", "/deps/sub"));
            s.caches.push(cache("/b", "/deps"));
        }),
        p,
        "portable import destination /deps/sub conflicts with cache destination /deps",
    );
    rejects(
        &with(&|s| {
            s.caches.push(cache("/a", "/c"));
            s.caches.push(cache("/b", "/c"));
        }),
        p,
        "portable cache destination /c conflicts with cache destination /c",
    );
    rejects(
        &with(&|s| s.command.cwd = "workspace".into()),
        p,
        "build cell cwd must be absolute: workspace",
    );
    rejects(
        &with(&|s| s.command.executable = "bin/sh".into()),
        p,
        "container executable must be absolute or a bare command name: bin/sh",
    );
    rejects(
        &with(&|s| s.command.executable = "/bin/../sh".into()),
        p,
        "container executable must not contain '..'",
    );
    rejects(
        &with(&|s| s.env = vec![(String::new(), "v".into())]),
        p,
        "container environment keys must not be empty",
    );
    rejects(
        &with(&|s| s.env = vec![("A=B".into(), "v".into())]),
        p,
        "container environment keys must not contain '=': A=B",
    );
    rejects(
        &with(&|s| s.env = vec![("A\0".into(), "v".into())]),
        p,
        "container environment keys must not contain NUL bytes",
    );
    rejects(
        &with(&|s| s.env = vec![("A".into(), "v\0".into())]),
        p,
        "container environment values must not contain NUL bytes",
    );
    // Imports and caches inside the workspace are fine (upstream's test does it).
    let fine = with(&|s| {
        s.imports.push(import("/a", "/workspace/deps"));
        s.caches.push(cache("/b", "/workspace/cache"));
    });
    let err = finalize_build_cell(&fine, false).unwrap_err().to_string();
    assert!(!err.contains("conflicts"), "{err}");
    assert!(
        err.contains("failed to inspect"),
        "only the missing staged cache fails: {err}"
    );
}

#[test]
fn host_side_preparation_phrases() {
    let prefix = Prefix::new();
    let base = |root: PathBuf, scratch: PathBuf| BuildCellSpec {
        root: HostPath::new(root),
        scratch: HostPath::new(scratch),
        workspace_path: "/workspace".into(),
        workspace_seed: WorkspaceSeed::Empty,
        imports: vec![],
        caches: vec![],
        exports: vec![],
        command: CommandSpec {
            cwd: "/".into(),
            executable: "true".into(),
            argv: vec![],
        },
        env: vec![],
        network: NetworkPolicy::Enabled,
        limits: ResourceLimits::default(),
        cleanup: CleanupPolicy::Always,
    };
    let build = |spec: &BuildCellSpec| {
        build_cell_reexec_command(Path::new(METALOR), INNER_BUILD_CELL, &prefix.path, spec)
            .unwrap_err()
            .to_string()
    };
    let root = prefix.join("root");
    let err = build(&base(root.clone(), root.clone()));
    assert!(
        err.contains("build scratch must not equal the build cell root"),
        "{err}"
    );
    let err = build(&base(root.clone(), root.join("scratch")));
    assert!(
        err.contains(&format!(
            "build scratch {} must not overlap build cell root {}",
            root.join("scratch").display(),
            root.display()
        )),
        "{err}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().canonicalize().unwrap().join("scratch");
    let err = build(&base(root.clone(), outside.clone()));
    assert!(
        err.contains(&format!(
            "build scratch {} must live under runtime root prefix {}",
            outside.display(),
            prefix.path.display()
        )),
        "{err}"
    );
    symlink(elsewhere.path(), prefix.join("linked")).unwrap();
    let err = build(&base(root.clone(), prefix.join("linked/scratch")));
    assert!(err.contains("traverses a symlink"), "{err}");
    assert!(!elsewhere.path().join("scratch").exists());
    let err = build(&base(elsewhere.path().join("root"), prefix.join("scratch")));
    assert!(err.contains("must live under runtime root prefix"), "{err}");
    let err = build_cell_reexec_command(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        Path::new("/"),
        &base(root.clone(), prefix.join("s")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("runtime root prefix must not be /"), "{err}");
}

#[test]
fn request_file_holds_the_original_spec_and_scratch_is_reset() {
    let prefix = Prefix::new();
    let root = prefix.join("root");
    let scratch = prefix.join("scratch");
    fs::create_dir_all(scratch.join("leftover")).unwrap();
    let seed = prefix.join("seed");
    fs::create_dir_all(&seed).unwrap();
    fs::set_permissions(&seed, fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(seed.join("f"), "x").unwrap();
    let import_file = prefix.join("import.txt");
    fs::write(&import_file, "imp").unwrap();
    let spec = BuildCellSpec {
        root: HostPath::new(prefix.join("./root")),
        scratch: HostPath::new(&scratch),
        workspace_path: "/workspace".into(),
        workspace_seed: WorkspaceSeed::SnapshotDir(HostPath::new(&seed)),
        imports: vec![ImportSpec {
            source: HostPath::new(&import_file),
            destination: "/imp.txt".into(),
        }],
        caches: vec![CacheSpec {
            source: HostPath::new(prefix.join("nocache")),
            destination: "/cache".into(),
        }],
        exports: vec![],
        command: CommandSpec {
            cwd: "/".into(),
            executable: "true".into(),
            argv: vec![],
        },
        env: vec![],
        network: NetworkPolicy::Enabled,
        limits: ResourceLimits::default(),
        cleanup: CleanupPolicy::Always,
    };
    let command =
        build_cell_reexec_command(Path::new(METALOR), INNER_BUILD_CELL, &prefix.path, &spec)
            .unwrap();
    assert_eq!(command.get_program(), METALOR);
    let request = scratch.join("build-cell-request.json");
    assert_eq!(metalor::read_build_cell_request(&request).unwrap(), spec);
    assert!(!scratch.join("leftover").exists());
    assert_eq!(
        fs::metadata(scratch.join("workspace"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    assert_eq!(
        fs::read_to_string(scratch.join("workspace/f")).unwrap(),
        "x"
    );
    assert_eq!(
        fs::read_to_string(scratch.join("imports/0")).unwrap(),
        "imp"
    );
    assert!(scratch.join("caches/0").is_dir());
    assert_eq!(
        fs::read(root.join(".metalor-root")).unwrap(),
        prefix.path.as_os_str().as_encoded_bytes()
    );
    let envs: Vec<_> = command
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for key in [
        "METALOR_PRIVATE_NS",
        "METALOR_RUNTIME_ROOT_PREFIX",
        "METALOR_PARENT_MOUNT_NS",
    ] {
        assert!(envs.iter().any(|k| k == key), "{key} in {envs:?}");
    }
}

/// Upstream's signatures, as its readme tests coerce them, at the crate
/// root and under `metalor::runtime`.
type PrepareOciRootfs =
    fn(&str, &Path, &Path, Option<&Path>, Option<&str>) -> anyhow::Result<PathBuf>;

#[test]
fn upstream_signatures() {
    use metalor::LinuxNamespaceBackend;
    use std::process::Command;
    let _: fn(&Path, &str, &Path, &BuildCellSpec) -> anyhow::Result<Command> =
        metalor::build_cell_reexec_command;
    let _: fn(&Path, &str, &Path, &BuildCellSpec) -> anyhow::Result<Command> =
        metalor::runtime::build_cell_reexec_command;
    let _: fn(
        &Path,
        &str,
        &Path,
        &BuildCellSpec,
        LinuxNamespaceBackend,
    ) -> anyhow::Result<Command> = metalor::build_cell_reexec_command_with_backend;
    let _: fn(
        &Path,
        &str,
        &Path,
        &BuildCellSpec,
        LinuxNamespaceBackend,
    ) -> anyhow::Result<Command> = metalor::runtime::build_cell_reexec_command_with_backend;
    let _: fn(&BuildCellSpec) -> anyhow::Result<()> = metalor::run_build_cell;
    let _: fn(&BuildCellSpec) -> anyhow::Result<()> = metalor::runtime::run_build_cell;
    let _: fn(&BuildCellSpec, bool) -> anyhow::Result<BuildCellResult> =
        metalor::finalize_build_cell;
    let _: fn(&BuildCellSpec, bool) -> anyhow::Result<metalor::runtime::BuildCellResult> =
        metalor::runtime::finalize_build_cell;
    let _: fn(&Path, &str, &str) -> anyhow::Result<Option<String>> =
        metalor::prepare_runtime_emulator;
    let _: fn(&Path, &str, &str) -> anyhow::Result<Option<String>> =
        metalor::runtime::prepare_runtime_emulator;
    let _: PrepareOciRootfs = metalor::prepare_oci_rootfs;
    let _: PrepareOciRootfs = metalor::runtime::prepare_oci_rootfs;
    let _: PrepareOciRootfs = metalor::runtime::linux::prepare_oci_rootfs;
}

#[test]
fn rootless_cell() {
    let test = "rootless_cell";
    let probe = metalor::probe_rootless_userns(true);
    if !probe.ok {
        support::skip_or_fail(
            test,
            &format!("no rootless user namespaces: {}", probe.stderr),
        );
        return;
    }
    let Some(cell) = Cell::new(test) else {
        return;
    };
    let out = cell.path("out");
    let mut spec = cell.spec("id -u > uid; cat /proc/net/dev | tail -n +3 | cut -d: -f1 > net");
    spec.network = NetworkPolicy::Disabled;
    spec.exports = vec![
        ExportSpec {
            source: "/workspace/uid".into(),
            destination: HostPath::new(out.join("uid")),
        },
        ExportSpec {
            source: "/workspace/net".into(),
            destination: HostPath::new(out.join("net")),
        },
    ];
    let mut command = metalor::build_cell_reexec_command_with_backend(
        Path::new(METALOR),
        INNER_BUILD_CELL,
        &cell.prefix.path,
        &spec,
        metalor::LinuxNamespaceBackend::RootlessUser,
    )
    .unwrap();
    let output = command.output().unwrap();
    assert_ran(&output);
    assert!(!finalize_build_cell(&spec, true).unwrap().scratch_preserved);
    assert_eq!(fs::read_to_string(out.join("uid")).unwrap(), "0\n");
    assert_eq!(fs::read_to_string(out.join("net")).unwrap().trim(), "lo");
}
