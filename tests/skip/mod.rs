//! The one rule for a test that cannot find what it needs: under `CI=true`
//! it fails, so a green CI run has really run everything; elsewhere it prints
//! why it skips and the caller returns.
//!
//! Shared by `tests/` and `vendor-tests/`: include it with
//! `#[path = ".../tests/skip/mod.rs"] mod skip;` (the vendor-tests support
//! module re-exports it).
#![allow(dead_code)]

use std::path::PathBuf;

/// True when running under CI (`CI=true`), where a missing tool, privilege
/// or kernel feature fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Under `CI=true`, panics with `reason`; elsewhere prints a skip notice and
/// returns false, so a caller can write `if !cond { return skip_or_fail(..) }`
/// or `if !require_x(..) { return; }`.
pub fn skip_or_fail(test: &str, reason: &str) -> bool {
    assert!(!in_ci(), "{test}: {reason}, and CI=true requires it");
    eprintln!("SKIP {test}: {reason}");
    false
}

/// The full path of `tool` on `PATH`, if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Whether `tool` is on `PATH`; when it is not, [`skip_or_fail`] with the
/// Debian package that provides it.
pub fn require_tool(tool: &str, package: &str, test: &str) -> bool {
    which(tool).is_some()
        || skip_or_fail(
            test,
            &format!(
                "`{tool}` is not on PATH (Debian package `{package}`; scripts/test.sh installs it)"
            ),
        )
}

/// Whether this process is root; when it is not, [`skip_or_fail`].
pub fn require_root(test: &str) -> bool {
    rustix::process::geteuid().is_root() || skip_or_fail(test, "needs root")
}

/// The running test's name, which the libtest harness gives its thread;
/// for helpers that skip on behalf of whichever test called them.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}
