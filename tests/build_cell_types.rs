//! The portable build-cell contract: serde shapes, defaults, backend
//! capabilities and the request file, checked against hand-written golden
//! files in `fixtures/requests/` that follow upstream's byte format.

use metalor::{
    backend_caps, build_cell_request_path, read_build_cell_request, write_build_cell_request,
    BackendCaps, BuildCellResult, BuildCellSpec, CacheSpec, CellPath, CleanupPolicy, CommandSpec,
    ExportSpec, HostPath, ImportSpec, NetworkPolicy, ResourceLimits, WorkspaceSeed,
};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/requests")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    fs::read(fixture_path(name)).unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn minimal_spec() -> BuildCellSpec {
    BuildCellSpec {
        root: HostPath::new("/srv/cells/root"),
        scratch: HostPath::new("/srv/cells/scratch"),
        workspace_path: "/workspace".into(),
        workspace_seed: WorkspaceSeed::Empty,
        imports: Vec::new(),
        caches: Vec::new(),
        exports: Vec::new(),
        command: CommandSpec {
            cwd: "/workspace".into(),
            executable: "/bin/true".to_string(),
            argv: Vec::new(),
        },
        env: Vec::new(),
        network: NetworkPolicy::Enabled,
        limits: Default::default(),
        cleanup: CleanupPolicy::Always,
    }
}

fn full_snapshot_spec() -> BuildCellSpec {
    BuildCellSpec {
        root: HostPath::from(PathBuf::from("/srv/cells/root")),
        scratch: HostPath::from(Path::new("/srv/cells/scratch")),
        workspace_path: CellPath::new("/workspace"),
        workspace_seed: WorkspaceSeed::SnapshotDir(HostPath::new("/srv/seed")),
        imports: vec![
            ImportSpec {
                source: HostPath::new("/srv/inputs/main.c"),
                destination: "/workspace/main.c".into(),
            },
            ImportSpec {
                source: HostPath::new("/srv/inputs/include"),
                destination: "/workspace/include".into(),
            },
        ],
        caches: vec![CacheSpec {
            source: HostPath::new("/srv/cache/ccache"),
            destination: "/cache/ccache".into(),
        }],
        exports: vec![ExportSpec {
            source: "/workspace/main.o".into(),
            destination: HostPath::new("/srv/out/main.o"),
        }],
        command: CommandSpec {
            cwd: "/workspace".into(),
            executable: "/bin/sh".to_string(),
            argv: strings(&["-c", "cc -c main.c\necho \"done\" > status", ""]),
        },
        env: pairs(&[("PATH", "/usr/bin:/bin"), ("GREETING", "grüße")]),
        network: NetworkPolicy::Disabled,
        limits: ResourceLimits {
            cpu_time_seconds: Some(600),
            memory_bytes: Some(2_147_483_648),
            max_processes: Some(256),
        },
        cleanup: CleanupPolicy::PreserveOnFailure,
    }
}

fn full_archive_spec() -> BuildCellSpec {
    BuildCellSpec {
        root: HostPath::new("/srv/cells/root"),
        scratch: HostPath::new("/srv/cells/scratch"),
        workspace_path: String::from("/src").into(),
        workspace_seed: WorkspaceSeed::Archive(HostPath::new("/srv/seed.tar.gz")),
        imports: Vec::new(),
        caches: vec![CacheSpec {
            source: HostPath::new("/srv/cache/cargo"),
            destination: "/root/.cargo/registry".into(),
        }],
        exports: vec![
            ExportSpec {
                source: "/src/target/release/tool".into(),
                destination: HostPath::new("/srv/out/tool"),
            },
            ExportSpec {
                source: "/src/target/doc".into(),
                destination: HostPath::new("/srv/out/doc"),
            },
        ],
        command: CommandSpec {
            cwd: "/src".into(),
            executable: "cargo".to_string(),
            argv: strings(&["build", "--release"]),
        },
        env: pairs(&[("CARGO_HOME", "/root/.cargo")]),
        network: NetworkPolicy::Enabled,
        limits: ResourceLimits {
            memory_bytes: Some(1_073_741_824),
            ..ResourceLimits::default()
        },
        cleanup: CleanupPolicy::Never,
    }
}

fn golden_cases() -> [(&'static str, BuildCellSpec); 3] {
    [
        ("minimal.json", minimal_spec()),
        ("full-snapshot.json", full_snapshot_spec()),
        ("full-archive.json", full_archive_spec()),
    ]
}

// ---- golden request files ---------------------------------------------------

#[test]
fn golden_files_read_back_as_the_expected_specs() {
    for (name, expected) in golden_cases() {
        let spec = read_build_cell_request(&fixture_path(name)).unwrap();
        assert_eq!(spec, expected, "{name}");
    }
}

#[test]
fn written_requests_match_the_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, spec) in golden_cases() {
        let path = dir.path().join(name);
        write_build_cell_request(&path, &spec).unwrap();
        let written = fs::read(&path).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(fixture_bytes(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn golden_files_use_two_space_indent_and_no_trailing_newline() {
    for (name, _) in golden_cases() {
        let text = String::from_utf8(fixture_bytes(name)).unwrap();
        assert!(text.starts_with("{\n  \"root\": "), "{name}");
        assert!(text.ends_with("\n}"), "{name}");
    }
}

#[test]
fn lenient_request_ignores_unknown_keys_and_fills_defaults() {
    let spec = read_build_cell_request(&fixture_path("lenient.json")).unwrap();
    let expected = BuildCellSpec {
        limits: ResourceLimits {
            memory_bytes: Some(4096),
            ..ResourceLimits::default()
        },
        ..minimal_spec()
    };
    assert_eq!(spec, expected);
}

// ---- serde shapes ---------------------------------------------------------

#[test]
fn workspace_seed_uses_external_tagging() {
    let cases = [
        (WorkspaceSeed::Empty, json!("Empty")),
        (
            WorkspaceSeed::SnapshotDir(HostPath::new("/p")),
            json!({"SnapshotDir": "/p"}),
        ),
        (
            WorkspaceSeed::Archive(HostPath::new("/p.tar")),
            json!({"Archive": "/p.tar"}),
        ),
    ];
    for (seed, value) in cases {
        assert_eq!(serde_json::to_value(&seed).unwrap(), value);
        assert_eq!(
            serde_json::from_value::<WorkspaceSeed>(value).unwrap(),
            seed
        );
    }
}

#[test]
fn env_serializes_as_an_array_of_pairs() {
    let spec = BuildCellSpec {
        env: pairs(&[("PATH", "/bin"), ("A", "1")]),
        ..minimal_spec()
    };
    let value = serde_json::to_value(&spec).unwrap();
    assert_eq!(value["env"], json!([["PATH", "/bin"], ["A", "1"]]));
}

#[test]
fn network_policy_uses_exact_variant_names() {
    assert_eq!(NetworkPolicy::default(), NetworkPolicy::Enabled);
    for (policy, text) in [
        (NetworkPolicy::Enabled, "\"Enabled\""),
        (NetworkPolicy::Disabled, "\"Disabled\""),
    ] {
        assert_eq!(serde_json::to_string(&policy).unwrap(), text);
        assert_eq!(serde_json::from_str::<NetworkPolicy>(text).unwrap(), policy);
    }
    for wrong in ["\"enabled\"", "\"DISABLED\"", "\"Off\"", "true"] {
        assert!(
            serde_json::from_str::<NetworkPolicy>(wrong).is_err(),
            "{wrong}"
        );
    }
}

#[test]
fn cleanup_policy_uses_exact_variant_names() {
    assert_eq!(CleanupPolicy::default(), CleanupPolicy::Always);
    for (policy, text) in [
        (CleanupPolicy::Always, "\"Always\""),
        (CleanupPolicy::PreserveOnFailure, "\"PreserveOnFailure\""),
        (CleanupPolicy::Never, "\"Never\""),
    ] {
        assert_eq!(serde_json::to_string(&policy).unwrap(), text);
        assert_eq!(serde_json::from_str::<CleanupPolicy>(text).unwrap(), policy);
    }
    assert!(serde_json::from_str::<CleanupPolicy>("\"preserve_on_failure\"").is_err());
}

#[test]
fn resource_limits_serialize_none_as_null_and_read_missing_as_none() {
    let limits = ResourceLimits {
        cpu_time_seconds: Some(5),
        ..ResourceLimits::default()
    };
    assert_eq!(
        serde_json::to_value(limits).unwrap(),
        json!({"cpu_time_seconds": 5, "memory_bytes": null, "max_processes": null})
    );
    let read: ResourceLimits = serde_json::from_str(r#"{"max_processes": 3}"#).unwrap();
    assert_eq!(
        read,
        ResourceLimits {
            cpu_time_seconds: None,
            memory_bytes: None,
            max_processes: Some(3),
        }
    );
    let empty: ResourceLimits = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, ResourceLimits::default());
}

#[test]
fn resource_limits_are_unbounded_only_without_any_limit() {
    assert!(ResourceLimits::default().is_unbounded());
    let each_one = [
        ResourceLimits {
            cpu_time_seconds: Some(1),
            ..Default::default()
        },
        ResourceLimits {
            memory_bytes: Some(0),
            ..Default::default()
        },
        ResourceLimits {
            max_processes: Some(1),
            ..Default::default()
        },
    ];
    for limits in each_one {
        assert!(!limits.is_unbounded(), "{limits:?}");
    }
}

#[test]
fn command_argv_defaults_to_empty() {
    let command: CommandSpec =
        serde_json::from_str(r#"{"cwd": "/w", "executable": "make"}"#).unwrap();
    assert_eq!(
        command,
        CommandSpec {
            cwd: "/w".into(),
            executable: "make".to_string(),
            argv: Vec::new(),
        }
    );
}

#[test]
fn required_spec_fields_must_be_present() {
    let mut value = serde_json::to_value(minimal_spec()).unwrap();
    value.as_object_mut().unwrap().remove("workspace_seed");
    let error = serde_json::from_value::<BuildCellSpec>(value).unwrap_err();
    assert!(error.to_string().contains("workspace_seed"), "{error}");
}

#[test]
fn build_cell_result_round_trips() {
    let result = BuildCellResult {
        scratch_preserved: true,
    };
    let text = serde_json::to_string(&result).unwrap();
    assert_eq!(text, r#"{"scratch_preserved":true}"#);
    assert_eq!(
        serde_json::from_str::<BuildCellResult>(&text).unwrap(),
        result
    );
}

// ---- path newtypes ----------------------------------------------------------

#[test]
fn host_path_is_a_transparent_string() {
    let path = HostPath::new("/srv/x y");
    assert_eq!(serde_json::to_string(&path).unwrap(), r#""/srv/x y""#);
    assert_eq!(
        serde_json::from_str::<HostPath>(r#""/srv/x y""#).unwrap(),
        path
    );
}

#[test]
fn host_path_accessors_and_conversions_agree() {
    let from_buf = HostPath::from(PathBuf::from("/a/b"));
    let from_ref = HostPath::from(Path::new("/a/b"));
    assert_eq!(from_buf, from_ref);
    assert_eq!(from_buf.as_path(), Path::new("/a/b"));
    let as_ref: &Path = from_buf.as_ref();
    assert_eq!(as_ref, Path::new("/a/b"));
    assert_eq!(from_ref.into_path_buf(), PathBuf::from("/a/b"));
    // No validation on construction: relative and empty paths are kept.
    assert_eq!(HostPath::new("rel/../x").as_path(), Path::new("rel/../x"));
    assert_eq!(HostPath::new("").as_path(), Path::new(""));
}

#[cfg(unix)]
#[test]
fn non_utf8_host_path_fails_to_serialize() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let path = HostPath::new(OsStr::from_bytes(b"/srv/\xff"));
    let error = serde_json::to_string(&path).unwrap_err();
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

#[test]
fn cell_path_is_a_transparent_string() {
    let path: CellPath = "/workspace".into();
    assert_eq!(path.as_str(), "/workspace");
    assert_eq!(serde_json::to_string(&path).unwrap(), r#""/workspace""#);
    assert_eq!(
        serde_json::from_str::<CellPath>(r#""/workspace""#).unwrap(),
        path
    );
    assert_eq!(CellPath::from(String::from("/workspace")), path);
    assert_eq!(CellPath::new("/workspace"), path);
    assert_eq!(path.into_string(), "/workspace");
    // No validation: backends decide what an acceptable cell path is.
    assert_eq!(CellPath::new("..\\x").as_str(), "..\\x");
}

// ---- backend capabilities ---------------------------------------------------

#[test]
fn backend_caps_match_the_current_os() {
    let expected = if cfg!(target_os = "linux") {
        BackendCaps {
            oci_rootfs: true,
            live_bind_mounts: true,
            foreign_arch_exec: true,
            per_job_network_toggle: true,
            profile_selected_network: false,
        }
    } else if cfg!(target_os = "macos") {
        BackendCaps {
            oci_rootfs: false,
            live_bind_mounts: false,
            foreign_arch_exec: false,
            per_job_network_toggle: false,
            profile_selected_network: true,
        }
    } else {
        BackendCaps {
            oci_rootfs: false,
            live_bind_mounts: false,
            foreign_arch_exec: false,
            per_job_network_toggle: true,
            profile_selected_network: false,
        }
    };
    assert_eq!(backend_caps(), expected);
    assert_eq!(metalor::runtime::backend_caps(), expected);
}

// ---- request file -----------------------------------------------------------

#[test]
fn request_path_lives_in_scratch() {
    assert_eq!(
        build_cell_request_path(Path::new("/srv/scratch")),
        PathBuf::from("/srv/scratch/build-cell-request.json")
    );
    assert_eq!(
        metalor::runtime::build_cell_request_path(Path::new("rel")),
        PathBuf::from("rel/build-cell-request.json")
    );
}

#[test]
fn write_creates_parent_directories_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_cell_request_path(&dir.path().join("a/b/scratch"));
    let spec = full_snapshot_spec();
    write_build_cell_request(&path, &spec).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.last(), Some(&b'}'), "no trailing newline");
    assert_eq!(bytes, serde_json::to_vec_pretty(&spec).unwrap());
    assert_eq!(read_build_cell_request(&path).unwrap(), spec);
}

#[test]
fn write_replaces_an_existing_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_cell_request_path(dir.path());
    write_build_cell_request(&path, &full_snapshot_spec()).unwrap();
    write_build_cell_request(&path, &minimal_spec()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), fixture_bytes("minimal.json"));
}

#[test]
fn write_reports_a_parent_that_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, "not a directory").unwrap();
    let path = blocker.join("scratch/build-cell-request.json");
    let error = write_build_cell_request(&path, &minimal_spec()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to create {}", blocker.join("scratch").display())
    );
}

#[test]
fn write_reports_a_request_path_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    // The request path is an existing directory, so the write itself fails.
    let error = write_build_cell_request(dir.path(), &minimal_spec()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "failed to write build cell request {}",
            dir.path().display()
        )
    );
}

#[cfg(unix)]
#[test]
fn write_reports_a_spec_that_cannot_be_serialized() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = tempfile::tempdir().unwrap();
    let path = build_cell_request_path(dir.path());
    let spec = BuildCellSpec {
        root: HostPath::new(OsStr::from_bytes(b"/srv/\xfe")),
        ..minimal_spec()
    };
    let error = write_build_cell_request(&path, &spec).unwrap_err();
    assert_eq!(error.to_string(), "failed to serialize build cell request");
    assert!(
        !path.exists(),
        "nothing is written when serialization fails"
    );
}

#[test]
fn read_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.json");
    let error = read_build_cell_request(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to read build cell request {}", path.display())
    );
    assert!(
        error.source().is_some(),
        "the io error is kept as the cause"
    );
}

#[test]
fn read_reports_bad_json_with_serde_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    for payload in ["{ not json", "[]", r#"{"root": "/r"}"#, ""] {
        fs::write(&path, payload).unwrap();
        let error = read_build_cell_request(&path).unwrap_err();
        assert_eq!(
            error.to_string(),
            "failed to parse build cell request",
            "{payload:?}"
        );
        let chain = format!("{error:#}");
        assert!(
            chain.starts_with("failed to parse build cell request: "),
            "{chain}"
        );
    }
}

#[test]
fn read_rejects_a_wrongly_cased_enum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("request.json");
    let text = String::from_utf8(fixture_bytes("minimal.json"))
        .unwrap()
        .replace("\"Enabled\"", "\"enabled\"");
    fs::write(&path, text).unwrap();
    let error = read_build_cell_request(&path).unwrap_err();
    assert!(format!("{error:#}").contains("enabled"), "{error:#}");
}

// ---- public paths and signatures -------------------------------------------

#[test]
fn items_are_reachable_from_runtime_with_upstream_signatures() {
    // Upstream callers coerce these functions to fn pointers, so the exact
    // parameter and error types are part of the contract.
    let write: fn(&Path, &metalor::runtime::BuildCellSpec) -> anyhow::Result<()> =
        metalor::runtime::write_build_cell_request;
    let read: fn(&Path) -> anyhow::Result<metalor::runtime::BuildCellSpec> =
        metalor::runtime::read_build_cell_request;
    let request_path: fn(&Path) -> PathBuf = metalor::runtime::build_cell_request_path;
    let caps: fn() -> metalor::runtime::BackendCaps = metalor::runtime::backend_caps;

    let dir = tempfile::tempdir().unwrap();
    let path = request_path(dir.path());
    write(&path, &minimal_spec()).unwrap();
    assert_eq!(read(&path).unwrap(), minimal_spec());
    assert_eq!(caps(), backend_caps());

    // The crate-root items are the runtime items, not look-alikes: these
    // bindings compile only if the types are identical.
    let spec: metalor::runtime::BuildCellSpec = full_snapshot_spec();
    let seed: &metalor::runtime::WorkspaceSeed = &spec.workspace_seed;
    let imports: &[metalor::runtime::ImportSpec] = &spec.imports;
    let caches: &[metalor::runtime::CacheSpec] = &spec.caches;
    let exports: &[metalor::runtime::ExportSpec] = &spec.exports;
    let command: &metalor::runtime::CommandSpec = &spec.command;
    let cwd: &metalor::runtime::CellPath = &command.cwd;
    let root: &metalor::runtime::HostPath = &spec.root;
    let network: metalor::runtime::NetworkPolicy = spec.network;
    let limits: metalor::runtime::ResourceLimits = spec.limits;
    let cleanup: metalor::runtime::CleanupPolicy = spec.cleanup;
    let result = metalor::runtime::BuildCellResult {
        scratch_preserved: false,
    };
    assert!(matches!(seed, WorkspaceSeed::SnapshotDir(_)));
    assert_eq!((imports.len(), caches.len(), exports.len()), (2, 1, 1));
    assert_eq!(
        (cwd.as_str(), root.as_path()),
        ("/workspace", Path::new("/srv/cells/root"))
    );
    assert_eq!(
        (network, cleanup),
        (NetworkPolicy::Disabled, CleanupPolicy::PreserveOnFailure)
    );
    assert!(!limits.is_unbounded());
    assert!(!result.scratch_preserved);
}
