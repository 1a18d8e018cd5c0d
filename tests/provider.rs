//! Integration tests for `metalor::runtime::linux_provider` (§4.4).
//!
//! The "provider" is a temporary directory on this machine and its shell is
//! `/bin/sh -c`, so every script the session builds really runs.

use metalor::runtime::linux_provider::{
    parse_provider_metadata_env, provider_metadata_path, read_provider_metadata_env,
    render_provider_metadata_env, write_provider_metadata_env, LocalLinuxProviderKind,
    LocalLinuxProviderSelection, ProviderRuntimeLayout, ProviderRuntimeMetadata, ProviderSession,
    ProviderShell, RemoteJobRoot, WarmState, PROVIDER_METADATA_FILE,
    PROVIDER_RUNTIME_LAYOUT_VERSION,
};
use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use tempfile::TempDir;

/// The provider shell used throughout: a closure, as callers write it.
fn sh() -> impl Fn(&str) -> anyhow::Result<Command> {
    |script: &str| {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        Ok(command)
    }
}

fn session() -> ProviderSession<impl ProviderShell> {
    ProviderSession::new(sh())
}

/// A shell that ignores the script and runs `replacement` instead, to play
/// a misbehaving provider.
fn fake_shell(replacement: String) -> impl Fn(&str) -> anyhow::Result<Command> {
    move |_script: &str| {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(&replacement);
        Ok(command)
    }
}

fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_string()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn sample_metadata() -> ProviderRuntimeMetadata {
    ProviderRuntimeMetadata {
        kind: LocalLinuxProviderKind::MacLocal,
        identity: "vm one".to_string(),
        runtime_root: "/opt/metalor".to_string(),
        runtime_layout_version: "v1".to_string(),
        bootstrap_version: "3".to_string(),
        bootstrap_stamp: "/opt/metalor/bootstrap-3.stamp".to_string(),
    }
}

const SAMPLE_ENV: &str = "provider_kind=mac-local\nprovider_identity=vm one\nruntime_root=/opt/metalor\nruntime_layout_version=v1\nbootstrap_version=3\nbootstrap_stamp=/opt/metalor/bootstrap-3.stamp\n";

// ---------------------------------------------------------------- selection

#[test]
fn selection_parses_trimmed_values_and_blank_as_auto() {
    let parse = |s: &str| LocalLinuxProviderSelection::from_str(s).unwrap();
    assert_eq!(parse(""), LocalLinuxProviderSelection::Auto);
    assert_eq!(parse("   "), LocalLinuxProviderSelection::Auto);
    assert_eq!(parse(" auto "), LocalLinuxProviderSelection::Auto);
    assert_eq!(parse("\twsl2\n"), LocalLinuxProviderSelection::Wsl2);
    assert_eq!(parse("mac-local"), LocalLinuxProviderSelection::MacLocal);
    for selection in [
        LocalLinuxProviderSelection::Auto,
        LocalLinuxProviderSelection::Wsl2,
        LocalLinuxProviderSelection::MacLocal,
    ] {
        assert_eq!(parse(selection.as_str()), selection);
    }
}

#[test]
fn selection_rejects_unknown_values_with_the_expected_list() {
    let error = LocalLinuxProviderSelection::from_str(" x ").unwrap_err();
    assert_eq!(
        error.to_string(),
        "unsupported local Linux provider selection \"x\"; expected one of: auto, wsl2, mac-local"
    );
    assert!(LocalLinuxProviderSelection::from_str("WSL2").is_err());
}

#[test]
fn kind_parses_and_rejects_blank_and_auto() {
    assert_eq!(
        LocalLinuxProviderKind::from_str(" wsl2 ").unwrap(),
        LocalLinuxProviderKind::Wsl2
    );
    assert_eq!(
        LocalLinuxProviderKind::from_str("mac-local").unwrap(),
        LocalLinuxProviderKind::MacLocal
    );
    assert_eq!(LocalLinuxProviderKind::Wsl2.as_str(), "wsl2");
    assert_eq!(LocalLinuxProviderKind::MacLocal.as_str(), "mac-local");
    let error = LocalLinuxProviderKind::from_str("auto").unwrap_err();
    assert_eq!(
        error.to_string(),
        "unsupported local Linux provider kind \"auto\"; expected one of: wsl2, mac-local"
    );
    assert!(LocalLinuxProviderKind::from_str("").is_err());
}

#[test]
fn selection_and_kind_use_kebab_case_serde() {
    let json = serde_json::to_string(&LocalLinuxProviderSelection::MacLocal).unwrap();
    assert_eq!(json, "\"mac-local\"");
    let parsed: LocalLinuxProviderSelection = serde_json::from_str("\"auto\"").unwrap();
    assert_eq!(parsed, LocalLinuxProviderSelection::Auto);
    let kind: LocalLinuxProviderKind = serde_json::from_str("\"wsl2\"").unwrap();
    assert_eq!(kind, LocalLinuxProviderKind::Wsl2);
    assert!(serde_json::from_str::<LocalLinuxProviderKind>("\"auto\"").is_err());
    let metadata = sample_metadata();
    let round: ProviderRuntimeMetadata =
        serde_json::from_str(&serde_json::to_string(&metadata).unwrap()).unwrap();
    assert_eq!(round, metadata);
}

// ----------------------------------------------------------------- metadata

#[test]
fn metadata_validate_names_each_blank_field() {
    assert!(sample_metadata().validate().is_ok());
    type Blank = fn(&mut ProviderRuntimeMetadata);
    let cases: [(Blank, &str); 5] = [
        (
            |m| m.identity = " ".into(),
            "provider_identity must not be empty",
        ),
        (
            |m| m.runtime_root = "".into(),
            "runtime_root must not be empty",
        ),
        (
            |m| m.runtime_layout_version = "\t".into(),
            "runtime_layout_version must not be empty",
        ),
        (
            |m| m.bootstrap_version = "".into(),
            "bootstrap_version must not be empty",
        ),
        (
            |m| m.bootstrap_stamp = " ".into(),
            "bootstrap_stamp must not be empty",
        ),
    ];
    for (blank, message) in cases {
        let mut metadata = sample_metadata();
        blank(&mut metadata);
        assert_eq!(metadata.validate().unwrap_err().to_string(), message);
        assert_eq!(
            render_provider_metadata_env(&metadata)
                .unwrap_err()
                .to_string(),
            message
        );
    }
}

#[test]
fn metadata_renders_six_lines_in_order() {
    assert_eq!(
        render_provider_metadata_env(&sample_metadata()).unwrap(),
        SAMPLE_ENV
    );
}

#[test]
fn metadata_parse_round_trips_and_is_lenient() {
    assert_eq!(
        parse_provider_metadata_env(SAMPLE_ENV).unwrap(),
        sample_metadata()
    );
    let lenient = "\n  unknown_key=whatever  \nprovider_kind=wsl2\nprovider_identity = first\n\
        provider_identity =  second one  \nruntime_root=/a=b\nruntime_layout_version=v1\n\
        bootstrap_version=7\n\n   \nbootstrap_stamp=/a=b/bootstrap-7.stamp\n";
    let parsed = parse_provider_metadata_env(lenient).unwrap();
    assert_eq!(parsed.kind, LocalLinuxProviderKind::Wsl2);
    // Only the key is trimmed; the value keeps what follows the first `=`
    // on the trimmed line, and the later duplicate wins.
    assert_eq!(parsed.identity, "  second one");
    assert_eq!(parsed.runtime_root, "/a=b");
    assert_eq!(parsed.bootstrap_stamp, "/a=b/bootstrap-7.stamp");
}

#[test]
fn metadata_parse_reports_bad_lines_missing_keys_and_bad_values() {
    let bad_line = format!("{SAMPLE_ENV}  nonsense  \n");
    assert_eq!(
        parse_provider_metadata_env(&bad_line)
            .unwrap_err()
            .to_string(),
        "invalid provider metadata line \"nonsense\": expected key=value"
    );
    let missing = SAMPLE_ENV.replace("bootstrap_stamp=/opt/metalor/bootstrap-3.stamp\n", "");
    assert_eq!(
        parse_provider_metadata_env(&missing)
            .unwrap_err()
            .to_string(),
        "missing required provider metadata key bootstrap_stamp"
    );
    let bad_kind = SAMPLE_ENV.replace("mac-local", "auto");
    assert!(parse_provider_metadata_env(&bad_kind)
        .unwrap_err()
        .to_string()
        .starts_with("unsupported local Linux provider kind \"auto\""));
    let blank = SAMPLE_ENV.replace("bootstrap_version=3", "bootstrap_version=  ");
    assert_eq!(
        parse_provider_metadata_env(&blank).unwrap_err().to_string(),
        "bootstrap_version must not be empty"
    );
}

#[test]
fn metadata_write_creates_parents_and_read_round_trips() {
    let temp = TempDir::new().unwrap();
    let path = temp.path().join("a/b").join(PROVIDER_METADATA_FILE);
    write_provider_metadata_env(&path, &sample_metadata()).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), SAMPLE_ENV);
    assert_eq!(
        read_provider_metadata_env(&path).unwrap(),
        sample_metadata()
    );
    let mut blank = sample_metadata();
    blank.identity.clear();
    let other = temp.path().join("other.env");
    assert!(write_provider_metadata_env(&other, &blank).is_err());
    assert!(!other.exists());
}

#[test]
fn metadata_read_adds_file_context() {
    let temp = TempDir::new().unwrap();
    let missing = temp.path().join("missing.env");
    let error = read_provider_metadata_env(&missing).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to read provider metadata {}", missing.display())
    );
    let corrupt = temp.path().join("corrupt.env");
    fs::write(&corrupt, "provider_kind=wsl2\n").unwrap();
    let error = read_provider_metadata_env(&corrupt).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to parse provider metadata {}", corrupt.display())
    );
    assert!(
        format!("{error:#}").contains("missing required provider metadata key provider_identity")
    );
}

// ------------------------------------------------------------------- layout

#[test]
fn layout_trims_and_strips_trailing_slashes() {
    let layout = ProviderRuntimeLayout::new("  /opt/metalor//  ").unwrap();
    assert_eq!(layout.root(), "/opt/metalor");
    assert_eq!(layout.jobs_root(), "/opt/metalor/jobs");
    assert_eq!(layout.metadata_path(), "/opt/metalor/provider-metadata.env");
    let root = ProviderRuntimeLayout::new(String::from("/")).unwrap();
    assert_eq!(root.root(), "/");
    assert_eq!(root.jobs_root(), "/jobs");
    assert_eq!(root.metadata_path(), "/provider-metadata.env");
    assert_eq!(root.join("x").unwrap(), "/x");
}

#[test]
fn layout_rejects_bad_roots() {
    let cases = [
        ("  ", "provider runtime root must not be empty"),
        (
            "opt/x",
            "provider runtime root must be an absolute Linux path: opt/x",
        ),
        (
            "/opt\\x",
            "provider runtime root must use '/' separators: /opt\\x",
        ),
        (
            "/opt/./x",
            "provider runtime root must not contain '.' or '..': /opt/./x",
        ),
        (
            "/opt/../x",
            "provider runtime root must not contain '.' or '..': /opt/../x",
        ),
        (
            "/opt/..",
            "provider runtime root must not contain '.' or '..': /opt/..",
        ),
    ];
    for (root, message) in cases {
        let error = ProviderRuntimeLayout::new(root).unwrap_err();
        assert_eq!(error.to_string(), message, "root {root:?}");
    }
}

#[test]
fn layout_join_validates_trimmed_form_but_joins_untrimmed() {
    let layout = ProviderRuntimeLayout::new("/rt").unwrap();
    assert_eq!(layout.join("cache/x").unwrap(), "/rt/cache/x");
    assert_eq!(layout.join(" cache/x ").unwrap(), "/rt/ cache/x ");
    let what = "provider runtime relative path";
    let cases = [
        (" ", format!("{what} must not be empty")),
        ("/abs", format!("{what} must be relative: /abs")),
        ("a\\b", format!("{what} must use '/' separators: a\\b")),
        (
            "a/",
            format!("{what} must not contain empty, '.' or '..' components: a/"),
        ),
        (
            "a//b",
            format!("{what} must not contain empty, '.' or '..' components: a//b"),
        ),
        (
            "./a",
            format!("{what} must not contain empty, '.' or '..' components: ./a"),
        ),
        (
            "a/../b",
            format!("{what} must not contain empty, '.' or '..' components: a/../b"),
        ),
    ];
    for (relative, message) in cases {
        assert_eq!(layout.join(relative).unwrap_err().to_string(), message);
    }
}

#[test]
fn layout_stamp_path_limits_the_charset() {
    let layout = ProviderRuntimeLayout::new("/rt/").unwrap();
    assert_eq!(
        layout.stamp_path("tool_chain.x-1", "V2.0").unwrap(),
        "/rt/tool_chain.x-1-V2.0.stamp"
    );
    assert_eq!(
        layout.stamp_path("", "v1").unwrap_err().to_string(),
        "provider stamp label must not be empty"
    );
    assert_eq!(
        layout.stamp_path("a/b", "v1").unwrap_err().to_string(),
        "provider stamp label must contain only ASCII letters, digits, '-', '_', and '.': a/b"
    );
    assert_eq!(
        layout.stamp_path("a", "v 1").unwrap_err().to_string(),
        "provider stamp version must contain only ASCII letters, digits, '-', '_', and '.': v 1"
    );
    assert!(layout.stamp_path("a", "é").is_err());
}

#[test]
fn layout_metadata_fills_version_and_stamp() {
    let layout = ProviderRuntimeLayout::new("/rt").unwrap();
    let metadata = layout
        .metadata(LocalLinuxProviderKind::Wsl2, "Ubuntu-24.04", "b7")
        .unwrap();
    assert_eq!(
        metadata,
        ProviderRuntimeMetadata {
            kind: LocalLinuxProviderKind::Wsl2,
            identity: "Ubuntu-24.04".into(),
            runtime_root: "/rt".into(),
            runtime_layout_version: PROVIDER_RUNTIME_LAYOUT_VERSION.into(),
            bootstrap_version: "b7".into(),
            bootstrap_stamp: "/rt/bootstrap-b7.stamp".into(),
        }
    );
    assert_eq!(PROVIDER_RUNTIME_LAYOUT_VERSION, "v1");
    assert!(layout
        .metadata(LocalLinuxProviderKind::Wsl2, "x", "bad version")
        .is_err());
    assert_eq!(
        layout
            .metadata(LocalLinuxProviderKind::Wsl2, "  ", "v1")
            .unwrap_err()
            .to_string(),
        "provider_identity must not be empty"
    );
}

#[test]
fn provider_metadata_path_cases() {
    assert_eq!(PROVIDER_METADATA_FILE, "provider-metadata.env");
    assert_eq!(provider_metadata_path("/"), "/provider-metadata.env");
    assert_eq!(provider_metadata_path("/rt"), "/rt/provider-metadata.env");
    assert_eq!(
        provider_metadata_path("/rt///"),
        "/rt/provider-metadata.env"
    );
    assert_eq!(
        provider_metadata_path(String::from("rel")),
        "rel/provider-metadata.env"
    );
    assert_eq!(provider_metadata_path("//"), "provider-metadata.env");
    assert_eq!(provider_metadata_path(""), "provider-metadata.env");
}

// ------------------------------------------------------------------ session

#[test]
fn run_appends_stdout_then_stderr_to_the_log() {
    let mut log = String::from("before\n");
    session()
        .run("printf 'err\\n' >&2; printf 'out\\n'", &mut log)
        .unwrap();
    assert_eq!(log, "before\nout\nerr\n");
}

#[test]
fn run_failure_reports_status_and_trimmed_output() {
    let mut log = String::new();
    let error = session()
        .run("printf ' o \\n\\n'; printf 'e\\n' >&2; exit 3", &mut log)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "provider shell command failed with status exit status: 3\nstdout:  o\nstderr: e"
    );
    assert_eq!(log, " o \n\ne\n");
    let error = session().run("exit 4", &mut log).unwrap_err();
    assert_eq!(
        error.to_string(),
        "provider shell command failed with status exit status: 4"
    );
    let error = session()
        .run("echo only >&2; exit 5", &mut log)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "provider shell command failed with status exit status: 5\nstderr: only"
    );
}

#[test]
fn run_propagates_shell_construction_errors() {
    let failing = ProviderSession::new(|_: &str| -> anyhow::Result<Command> {
        anyhow::bail!("provider unavailable")
    });
    let mut log = String::new();
    let error = failing.run("true", &mut log).unwrap_err();
    assert_eq!(error.to_string(), "provider unavailable");
    assert!(log.is_empty());
}

#[test]
fn path_exists_quotes_spaces_and_single_quotes() {
    let temp = TempDir::new().unwrap();
    let odd = temp.path().join("it's a $(dir) `x`");
    let session = session();
    assert!(!session.path_exists(&text(&odd)).unwrap());
    fs::create_dir(&odd).unwrap();
    assert!(session.path_exists(&text(&odd)).unwrap());
    let dangling = temp.path().join("dangling");
    symlink(temp.path().join("nowhere"), &dangling).unwrap();
    assert!(!session.path_exists(&text(&dangling)).unwrap());
    let broken = ProviderSession::new(fake_shell("echo nope >&2; exit 9".into()));
    let error = broken.path_exists("/").unwrap_err();
    assert_eq!(
        error.to_string(),
        "provider shell command failed with status exit status: 9\nstderr: nope"
    );
}

#[test]
fn prepare_job_root_sanitizes_label_and_creates_an_empty_directory() {
    let temp = TempDir::new().unwrap();
    let layout = ProviderRuntimeLayout::new(text(temp.path())).unwrap();
    let mut log = String::new();
    let job = session()
        .prepare_job_root(&layout, "my job/é:1", &mut log)
        .unwrap();
    let prefix = format!("{}/my-job---1-{}-", layout.jobs_root(), std::process::id());
    assert!(job.root.starts_with(&prefix), "{}", job.root);
    let nanos = &job.root[prefix.len()..];
    assert!(!nanos.is_empty() && nanos.chars().all(|c| c.is_ascii_digit()));
    assert!(Path::new(&job.root).is_dir());
    assert_eq!(fs::read_dir(&job.root).unwrap().count(), 0);
    assert_eq!(log, format!("provider job root: {}\n", job.root));

    let fallback = session().prepare_job_root(&layout, "", &mut log).unwrap();
    let prefix = format!("{}/job-{}-", layout.jobs_root(), std::process::id());
    assert!(fallback.root.starts_with(&prefix), "{}", fallback.root);
    assert_ne!(fallback, job);
    let copy: RemoteJobRoot = fallback.clone();
    assert_eq!(copy.root, fallback.root);
}

#[test]
fn write_runtime_metadata_writes_the_rendered_file() {
    let temp = TempDir::new().unwrap();
    let root = temp.path().join("runtime 'root'");
    let layout = ProviderRuntimeLayout::new(text(&root)).unwrap();
    let metadata = layout
        .metadata(LocalLinuxProviderKind::MacLocal, "vm $HOME `x`", "v1")
        .unwrap();
    let mut log = String::new();
    session()
        .write_runtime_metadata(&metadata, &mut log)
        .unwrap();
    let path = PathBuf::from(layout.metadata_path());
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        render_provider_metadata_env(&metadata).unwrap()
    );
    assert_eq!(read_provider_metadata_env(&path).unwrap(), metadata);
    let mut blank = metadata;
    blank.bootstrap_stamp.clear();
    assert!(session().write_runtime_metadata(&blank, &mut log).is_err());
}

#[test]
fn ensure_warm_state_runs_cold_once_then_is_warm() {
    let temp = TempDir::new().unwrap();
    let stamp = text(&temp.path().join("stamps/sub/tools-v1.stamp"));
    let required = temp.path().join("tool");
    let required = text(&required);
    let session = session();
    let mut log = String::new();
    let mut cold_runs = 0;
    let state = session
        .ensure_warm_state("tools", &stamp, &[&required], &mut log, |s, log| {
            cold_runs += 1;
            s.run(&format!("touch '{required}'"), log)
        })
        .unwrap();
    assert_eq!(state, WarmState::Cold);
    assert_eq!(cold_runs, 1);
    assert!(Path::new(&stamp).is_file());
    assert_eq!(log, "provider tools: cold\n");

    let state = session
        .ensure_warm_state("tools", &stamp, &[&required], &mut log, |_, _| {
            panic!("cold path must not run when warm")
        })
        .unwrap();
    assert_eq!(state, WarmState::Warm);
    assert!(log.ends_with("provider tools: warm\n"));

    fs::remove_file(&required).unwrap();
    let state = session
        .ensure_warm_state("tools", &stamp, &[&required], &mut log, |s, log| {
            s.run(&format!("touch '{required}'"), log)
        })
        .unwrap();
    assert_eq!(state, WarmState::Cold);
    assert!(log.ends_with("provider tools: cold\n"));
}

#[test]
fn ensure_warm_state_stops_at_first_miss_and_keeps_stamp_on_failure() {
    let temp = TempDir::new().unwrap();
    let stamp = text(&temp.path().join("x.stamp"));
    let scripts = RefCell::new(Vec::<String>::new());
    let recording = |script: &str| {
        scripts.borrow_mut().push(script.to_string());
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        Ok(command)
    };
    let session = ProviderSession::new(recording);
    let mut log = String::new();
    let error = session
        .ensure_warm_state("x", &stamp, &["/a", "/b"], &mut log, |_, _| {
            anyhow::bail!("cold failed")
        })
        .unwrap_err();
    assert_eq!(error.to_string(), "cold failed");
    // Only the stamp was probed, and no touch followed the failed cold run.
    assert_eq!(scripts.borrow().len(), 1);
    assert!(scripts.borrow()[0].contains("x.stamp"));
    assert!(!Path::new(&stamp).exists());

    fs::write(&stamp, "").unwrap();
    scripts.borrow_mut().clear();
    let missing_a = text(&temp.path().join("a"));
    let state = session
        .ensure_warm_state("x", &stamp, &[&missing_a, "/b"], &mut log, |_, _| Ok(()))
        .unwrap();
    assert_eq!(state, WarmState::Cold);
    let scripts = scripts.borrow();
    assert_eq!(scripts.len(), 3, "stamp, first path, touch: {scripts:?}");
    assert!(!scripts.iter().any(|s| s.contains("'/b'")));
}

#[test]
fn ensure_warm_state_rejects_a_blank_label() {
    let mut log = String::new();
    let error = session()
        .ensure_warm_state(" ", "/x.stamp", &[], &mut log, |_, _| Ok(()))
        .unwrap_err();
    assert_eq!(error.to_string(), "warm-state label must not be empty");
    assert!(log.is_empty());
}

#[test]
fn remove_path_removes_recursively_and_tolerates_missing() {
    let temp = TempDir::new().unwrap();
    let target = temp.path().join("it's gone");
    fs::create_dir_all(target.join("deep/er")).unwrap();
    fs::write(target.join("deep/er/f"), "x").unwrap();
    let mut log = String::new();
    session().remove_path(&text(&target), &mut log).unwrap();
    assert!(!target.exists());
    assert!(temp.path().exists());
    session().remove_path(&text(&target), &mut log).unwrap();
}

// ---------------------------------------------------------------- transfers

/// A host tree with nested directories, a symlink, an executable and a
/// `bin/` file that lost its executable bit.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/nested")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("sub/nested/file.txt"), "nested\n").unwrap();
    fs::write(root.join("top.txt"), "top\n").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o644)).unwrap();
    symlink("sub/nested/file.txt", root.join("link")).unwrap();
}

fn assert_tree(root: &Path) {
    assert_eq!(
        fs::read_to_string(root.join("sub/nested/file.txt")).unwrap(),
        "nested\n"
    );
    assert_eq!(fs::read_to_string(root.join("top.txt")).unwrap(), "top\n");
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        PathBuf::from("sub/nested/file.txt")
    );
    assert_eq!(fs::read_to_string(root.join("link")).unwrap(), "nested\n");
    assert_eq!(mode(&root.join("run.sh")), 0o755);
}

#[test]
fn stage_host_path_round_trips_a_tree_into_a_quoted_parent() {
    let temp = TempDir::new().unwrap();
    let local = temp.path().join("host/my tree");
    build_tree(&local);
    let remote_parent = text(&temp.path().join("provider/it's a dir"));
    let mut log = String::new();
    let staged = session()
        .stage_host_path(&local, &remote_parent, false, &mut log)
        .unwrap();
    assert_eq!(staged, format!("{remote_parent}/my tree"));
    assert_tree(Path::new(&staged));
    assert_eq!(mode(&Path::new(&staged).join("bin/tool")), 0o644);
    let parent = fs::canonicalize(temp.path().join("host")).unwrap();
    assert_eq!(
        log,
        format!(
            "push into provider with tar -cf - -C {} my tree\n",
            parent.display()
        )
    );
}

#[test]
fn stage_host_path_restores_executable_bins_when_asked() {
    let temp = TempDir::new().unwrap();
    let local = temp.path().join("host/pkg");
    build_tree(&local);
    let remote_parent = text(&temp.path().join("provider"));
    let mut log = String::new();
    let staged = session()
        .stage_host_path(&local, &remote_parent, true, &mut log)
        .unwrap();
    assert_eq!(mode(&Path::new(&staged).join("bin/tool")), 0o755);
    // Only files under bin/ change.
    assert_eq!(mode(&Path::new(&staged).join("top.txt")) & 0o111, 0);

    // Without a bin/ directory the flag is harmless.
    let plain = temp.path().join("host/plain");
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("f"), "f").unwrap();
    let staged = session()
        .stage_host_path(&plain, &remote_parent, true, &mut log)
        .unwrap();
    assert_eq!(
        fs::read_to_string(Path::new(&staged).join("f")).unwrap(),
        "f"
    );
}

#[test]
fn stage_host_path_stages_a_single_file_through_a_symlink() {
    let temp = TempDir::new().unwrap();
    fs::create_dir_all(temp.path().join("host")).unwrap();
    let file = temp.path().join("host/real.bin");
    fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    let alias = temp.path().join("alias");
    symlink(&file, &alias).unwrap();
    let remote_parent = text(&temp.path().join("provider"));
    let mut log = String::new();
    // The local path is canonicalized first, so the real name is staged.
    let staged = session()
        .stage_host_path(&alias, &remote_parent, false, &mut log)
        .unwrap();
    assert_eq!(staged, format!("{remote_parent}/real.bin"));
    assert_eq!(fs::read(&staged).unwrap(), [0u8, 1, 2, 255]);
}

#[test]
fn stage_host_path_reports_a_missing_local_path() {
    let temp = TempDir::new().unwrap();
    let missing = temp.path().join("missing");
    let mut log = String::new();
    let error = session()
        .stage_host_path(&missing, "/unused", false, &mut log)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("failed to access {}", missing.display())
    );
    assert!(log.is_empty());
}

#[test]
fn stage_host_path_reports_the_provider_extract_failure() {
    let temp = TempDir::new().unwrap();
    let local = temp.path().join("tree");
    build_tree(&local);
    let blocker = temp.path().join("file");
    fs::write(&blocker, "not a dir").unwrap();
    let remote_parent = text(&blocker.join("below"));
    let mut log = String::new();
    let error = session()
        .stage_host_path(&local, &remote_parent, false, &mut log)
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("provider extract failed with status exit status: 1\nstderr: "),
        "{message}"
    );
    assert!(log.starts_with("push into provider with tar "));
}

#[test]
fn stage_host_path_reports_the_producer_before_the_consumer() {
    let temp = TempDir::new().unwrap();
    let local = temp.path().join("tree");
    fs::create_dir_all(&local).unwrap();
    // A socket cannot be archived, so the in-process producer fails.
    let _listener = std::os::unix::net::UnixListener::bind(local.join("sock")).unwrap();
    let failing = ProviderSession::new(fake_shell("cat >/dev/null; exit 5".into()));
    let mut log = String::new();
    let error = failing
        .stage_host_path(&local, "/unused", false, &mut log)
        .unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("tar producer failed: "), "{message}");
    assert!(message.contains("socket"), "{message}");
}

#[test]
fn stage_host_path_ignores_a_consumer_that_stops_reading_successfully() {
    let temp = TempDir::new().unwrap();
    let local = temp.path().join("big");
    fs::create_dir_all(&local).unwrap();
    fs::write(local.join("blob"), vec![7u8; 4 << 20]).unwrap();
    let quitter = ProviderSession::new(fake_shell("exit 0".into()));
    let mut log = String::new();
    let staged = quitter
        .stage_host_path(&local, "/p", false, &mut log)
        .unwrap();
    assert_eq!(staged, "/p/big");
}

#[test]
fn collect_path_round_trips_a_tree_into_a_new_local_parent() {
    let temp = TempDir::new().unwrap();
    let remote = temp.path().join("provider/it's out");
    build_tree(&remote);
    let local_parent = temp.path().join("host/new parent");
    let mut log = String::new();
    session()
        .collect_path(&format!("{}/", text(&remote)), &local_parent, &mut log)
        .unwrap();
    let collected = local_parent.join("it's out");
    assert_tree(&collected);
    assert_eq!(mode(&collected.join("bin/tool")), 0o644);
    assert_eq!(
        log,
        format!(
            "pull from provider with tar -xf - -C {}\n",
            local_parent.display()
        )
    );
    // Collecting again over the previous result replaces it in place.
    fs::write(remote.join("top.txt"), "changed\n").unwrap();
    session()
        .collect_path(&text(&remote), &local_parent, &mut log)
        .unwrap();
    assert_eq!(
        fs::read_to_string(collected.join("top.txt")).unwrap(),
        "changed\n"
    );
}

#[test]
fn collect_path_round_trips_a_single_file_and_hard_links() {
    let temp = TempDir::new().unwrap();
    let remote = temp.path().join("provider/dir");
    fs::create_dir_all(&remote).unwrap();
    fs::write(remote.join("a"), "shared").unwrap();
    fs::hard_link(remote.join("a"), remote.join("b")).unwrap();
    let local_parent = temp.path().join("host");
    let mut log = String::new();
    session()
        .collect_path(&text(&remote), &local_parent, &mut log)
        .unwrap();
    assert_eq!(
        fs::read_to_string(local_parent.join("dir/a")).unwrap(),
        "shared"
    );
    assert_eq!(
        fs::read_to_string(local_parent.join("dir/b")).unwrap(),
        "shared"
    );
    session()
        .collect_path(
            &text(&remote.join("a")),
            &local_parent.join("single"),
            &mut log,
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(local_parent.join("single/a")).unwrap(),
        "shared"
    );
}

/// A read-only directory keeps its mode and still gets its contents (the
/// mode is applied after them, which matters when the host user is not
/// root).
#[test]
fn collect_path_keeps_read_only_directories_with_their_contents() {
    let temp = TempDir::new().unwrap();
    let remote = temp.path().join("provider/mods");
    fs::create_dir_all(remote.join("ro")).unwrap();
    fs::write(remote.join("ro/f"), "kept\n").unwrap();
    fs::set_permissions(remote.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let local_parent = temp.path().join("host");
    let mut log = String::new();
    session()
        .collect_path(&text(&remote), &local_parent, &mut log)
        .unwrap();
    let collected = local_parent.join("mods/ro");
    assert_eq!(mode(&collected), 0o555);
    assert_eq!(fs::read_to_string(collected.join("f")).unwrap(), "kept\n");
}

/// Names and link targets past the 100 bytes of a tar header survive the
/// check and re-emit in front of the applier.
#[test]
fn collect_path_round_trips_long_names_and_link_targets() {
    let temp = TempDir::new().unwrap();
    let remote = temp.path().join("provider/long");
    let deep = remote.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    let file = format!("{}.txt", "f".repeat(80));
    fs::write(deep.join(&file), "deep\n").unwrap();
    let target = format!("{}/{}/{file}", "d".repeat(60), "e".repeat(60));
    symlink(&target, remote.join("link")).unwrap();
    let local_parent = temp.path().join("host");
    let mut log = String::new();
    session()
        .collect_path(&text(&remote), &local_parent, &mut log)
        .unwrap();
    let collected = local_parent.join("long");
    assert_eq!(
        fs::read_link(collected.join("link")).unwrap(),
        PathBuf::from(&target)
    );
    assert_eq!(
        fs::read_to_string(collected.join("link")).unwrap(),
        "deep\n"
    );
}

#[test]
fn collect_path_rejects_remote_paths_without_a_name() {
    let temp = TempDir::new().unwrap();
    let mut log = String::new();
    let error = session()
        .collect_path("/", temp.path(), &mut log)
        .unwrap_err();
    assert_eq!(error.to_string(), "remote path has no parent: /");
    let error = session()
        .collect_path("/a/..", temp.path(), &mut log)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "remote path must have a normal file name: /a/.."
    );
}

#[test]
fn collect_path_reports_the_provider_tar_failure() {
    let temp = TempDir::new().unwrap();
    fs::create_dir_all(temp.path().join("provider")).unwrap();
    let missing = temp.path().join("provider/missing");
    let mut log = String::new();
    let error = session()
        .collect_path(&text(&missing), &temp.path().join("host"), &mut log)
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("provider tar failed with status exit status: 2\nstderr: "),
        "{message}"
    );
    assert!(message.contains("missing"), "{message}");
    assert!(!message.contains("\nstdout:"), "{message}");
}

// ------------------------------------------------------- hostile archives

/// Writes a tar header with a raw name (and link name), bypassing the tar
/// crate's own checks, so the archive can contain what a hostile provider
/// would send.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish_archive(mut out: Vec<u8>) -> Vec<u8> {
    out.resize(out.len() + 1024, 0);
    out
}

struct Hostile {
    temp: TempDir,
    local_parent: PathBuf,
    outside: PathBuf,
}

impl Hostile {
    fn new() -> Self {
        let temp = TempDir::new().unwrap();
        let local_parent = temp.path().join("sandbox/collect");
        let outside = temp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        Self {
            temp,
            local_parent,
            outside,
        }
    }

    /// Serves `archive` from a fake provider that exits with `status`.
    fn collect(&self, archive: Vec<u8>, status: i32) -> anyhow::Result<()> {
        let file = self.temp.path().join("hostile.tar");
        fs::write(&file, archive).unwrap();
        let provider = ProviderSession::new(fake_shell(format!(
            "cat '{}'; exit {status}",
            file.display()
        )));
        let mut log = String::new();
        provider.collect_path("/remote/out", &self.local_parent, &mut log)
    }

    fn assert_nothing_escaped(&self) {
        assert_eq!(fs::read_dir(&self.outside).unwrap().count(), 0);
        let sandbox = self.temp.path().join("sandbox");
        let names: Vec<_> = fs::read_dir(&sandbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("collect")]);
    }
}

#[test]
fn collect_path_refuses_parent_dir_members() {
    let hostile = Hostile::new();
    let mut archive = Vec::new();
    raw_entry(
        &mut archive,
        "../evil",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.starts_with("host tar failed: "), "{message}");
    assert!(
        message.contains("../evil") && message.contains("'..'"),
        "{message}"
    );
    assert!(!hostile.local_parent.parent().unwrap().join("evil").exists());
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_refuses_absolute_members() {
    let hostile = Hostile::new();
    let target = hostile.outside.join("abs");
    let mut archive = Vec::new();
    raw_entry(
        &mut archive,
        &text(&target),
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
    assert!(format!("{error:#}").contains("absolute"), "{error:#}");
    assert!(!target.exists());
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_refuses_an_absolute_symlink_and_a_write_through_it() {
    let hostile = Hostile::new();
    let mut archive = Vec::new();
    raw_entry(&mut archive, "out/", tar::EntryType::Directory, "", b"");
    raw_entry(
        &mut archive,
        "out/link",
        tar::EntryType::Symlink,
        &text(&hostile.outside),
        b"",
    );
    raw_entry(
        &mut archive,
        "out/link/pwned",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.starts_with("host tar failed: "), "{message}");
    assert!(message.contains("refusing symlink out/link"), "{message}");
    assert!(!hostile.outside.join("pwned").exists());
    assert!(fs::symlink_metadata(hostile.local_parent.join("out/link")).is_err());
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_refuses_relative_symlinks_that_climb_out() {
    for target in ["../../../outside", "sub/../../..", "./../.."] {
        let hostile = Hostile::new();
        let mut archive = Vec::new();
        raw_entry(&mut archive, "out/", tar::EntryType::Directory, "", b"");
        raw_entry(&mut archive, "out/up", tar::EntryType::Symlink, target, b"");
        let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
        assert!(
            format!("{error:#}").contains("refusing symlink"),
            "{target}: {error:#}"
        );
        assert!(fs::symlink_metadata(hostile.local_parent.join("out/up")).is_err());
        hostile.assert_nothing_escaped();
    }
}

#[test]
fn collect_path_never_writes_through_a_symlink_even_one_inside() {
    let hostile = Hostile::new();
    let mut archive = Vec::new();
    raw_entry(&mut archive, "out/", tar::EntryType::Directory, "", b"");
    raw_entry(
        &mut archive,
        "out/real/",
        tar::EntryType::Directory,
        "",
        b"",
    );
    raw_entry(
        &mut archive,
        "out/alias",
        tar::EntryType::Symlink,
        "real",
        b"",
    );
    raw_entry(
        &mut archive,
        "out/alias/f",
        tar::EntryType::Regular,
        "",
        b"x",
    );
    let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
    assert!(
        format!("{error:#}").contains("refusing to extract out/alias/f through symlink out/alias"),
        "{error:#}"
    );
    // The whole archive is checked before anything is written.
    assert_eq!(fs::read_dir(&hostile.local_parent).unwrap().count(), 0);
    hostile.assert_nothing_escaped();

    // Contained symlinks themselves are fine.
    let mut archive = Vec::new();
    raw_entry(&mut archive, "out/", tar::EntryType::Directory, "", b"");
    raw_entry(
        &mut archive,
        "out/alias",
        tar::EntryType::Symlink,
        "real",
        b"",
    );
    hostile.collect(finish_archive(archive), 0).unwrap();
    assert_eq!(
        fs::read_link(hostile.local_parent.join("out/alias")).unwrap(),
        PathBuf::from("real")
    );
}

/// Device nodes, FIFOs and `.wh.` names are refused, the last so that the
/// applier cannot read them as whiteouts and delete what the host already
/// had in the destination.
#[test]
fn collect_path_refuses_devices_fifos_and_whiteout_names() {
    let cases = [
        (
            "out/null",
            tar::EntryType::Char,
            "a device node cannot be extracted",
        ),
        (
            "out/sda",
            tar::EntryType::Block,
            "a device node cannot be extracted",
        ),
        (
            "out/pipe",
            tar::EntryType::Fifo,
            "a FIFO cannot be extracted",
        ),
        (
            "out/.wh.kept",
            tar::EntryType::Regular,
            "names starting with .wh. are OCI whiteouts",
        ),
        (
            "out/.wh..wh..opq",
            tar::EntryType::Regular,
            "names starting with .wh. are OCI whiteouts",
        ),
    ];
    for (name, kind, expected) in cases {
        let hostile = Hostile::new();
        fs::create_dir_all(hostile.local_parent.join("out")).unwrap();
        fs::write(hostile.local_parent.join("out/kept"), "host data").unwrap();
        let mut archive = Vec::new();
        raw_entry(&mut archive, name, kind, "", b"");
        let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.starts_with("host tar failed: "), "{message}");
        assert!(message.contains(expected), "{name}: {message}");
        assert_eq!(
            fs::read_to_string(hostile.local_parent.join("out/kept")).unwrap(),
            "host data"
        );
        assert_eq!(
            fs::read_dir(hostile.local_parent.join("out"))
                .unwrap()
                .count(),
            1
        );
        hostile.assert_nothing_escaped();
    }
}

#[test]
fn collect_path_drops_setuid_and_setgid_bits() {
    let hostile = Hostile::new();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o6755);
    header.set_size(1);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, "out/tool", &b"x"[..])
        .unwrap();
    hostile.collect(builder.into_inner().unwrap(), 0).unwrap();
    assert_eq!(mode(&hostile.local_parent.join("out/tool")), 0o755);
}

/// A symlink the host already had in the destination is not in the
/// archive, so the rules cannot see it: on Linux the applier resolves it
/// inside the destination, so a write through it still cannot leave.
#[test]
fn collect_path_confines_writes_through_a_planted_directory_symlink() {
    let hostile = Hostile::new();
    fs::create_dir_all(&hostile.local_parent).unwrap();
    symlink(&hostile.outside, hostile.local_parent.join("out")).unwrap();
    let mut archive = Vec::new();
    raw_entry(&mut archive, "out/pwned", tar::EntryType::Regular, "", b"x");
    let _ = hostile.collect(finish_archive(archive), 0);
    assert!(!hostile.outside.join("pwned").exists());
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_refuses_hard_links_out_of_the_destination() {
    let hostile = Hostile::new();
    let secret = hostile.outside.join("secret");
    fs::write(&secret, "secret").unwrap();
    for link in [text(&secret), "../../outside/secret".to_string()] {
        let mut archive = Vec::new();
        raw_entry(&mut archive, "out/", tar::EntryType::Directory, "", b"");
        raw_entry(&mut archive, "out/h", tar::EntryType::Link, &link, b"");
        let error = hostile.collect(finish_archive(archive), 0).unwrap_err();
        assert!(
            format!("{error:#}").contains("refusing hard link"),
            "{error:#}"
        );
        assert!(!hostile.local_parent.join("out/h").exists());
    }
    assert_eq!(fs::read_to_string(&secret).unwrap(), "secret");
    fs::remove_file(&secret).unwrap();
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_replaces_a_planted_symlink_instead_of_following_it() {
    let hostile = Hostile::new();
    fs::create_dir_all(hostile.local_parent.join("out")).unwrap();
    symlink(
        hostile.outside.join("victim"),
        hostile.local_parent.join("out/f"),
    )
    .unwrap();
    let mut archive = Vec::new();
    raw_entry(&mut archive, "out/f", tar::EntryType::Regular, "", b"data");
    hostile.collect(finish_archive(archive), 0).unwrap();
    let f = hostile.local_parent.join("out/f");
    assert!(fs::symlink_metadata(&f).unwrap().is_file());
    assert_eq!(fs::read_to_string(&f).unwrap(), "data");
    hostile.assert_nothing_escaped();
}

#[test]
fn collect_path_reports_the_provider_before_the_host_tar() {
    let hostile = Hostile::new();
    let mut archive = Vec::new();
    raw_entry(
        &mut archive,
        "../evil",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    let error = hostile.collect(finish_archive(archive), 7).unwrap_err();
    assert_eq!(
        error.to_string(),
        "provider tar failed with status exit status: 7"
    );
    hostile.assert_nothing_escaped();
}
