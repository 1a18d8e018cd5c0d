//! Upstream's validation rules (upstream-api.md, "Shared validation rules"),
//! with its exact top-level phrases.
//! Pure string and path checks: nothing here touches the filesystem.

use std::path::{Component, Path};

use anyhow::{bail, Result};

use super::{ContainerRunCommand, RUN_HELPER_DIR};

/// A host path must be absolute and free of `..`; `.` and symlinks are
/// allowed, and existence is not checked.
pub(crate) fn validate_host_absolute(path: &Path, ctx: &str) -> Result<()> {
    if !path.is_absolute() {
        bail!("{ctx} must be absolute: {}", path.display());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        bail!("{ctx} must not contain '..': {}", path.display());
    }
    Ok(())
}

/// The same rules for a path inside the container, compared as a string.
pub(crate) fn validate_container_absolute(path: &str, ctx: &str) -> Result<()> {
    let as_path = Path::new(path);
    if !as_path.is_absolute() {
        bail!("{ctx} must be absolute: {path}");
    }
    if as_path.components().any(|c| c == Component::ParentDir) {
        bail!("{ctx} must not contain '..': {path}");
    }
    Ok(())
}

/// An absolute container path, or a single bare command name.
pub(crate) fn validate_executable(executable: &str) -> Result<()> {
    if executable.starts_with('/') {
        return validate_container_absolute(executable, "container executable");
    }
    let mut components = Path::new(executable).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        (Some(Component::ParentDir), _) => {
            bail!("container executable must not contain '..': {executable}")
        }
        _ => bail!("container executable must be absolute or a bare command name: {executable}"),
    }
}

/// Keys non-empty, without `=` or NUL; values without NUL. Duplicates are
/// allowed (the last wins when spawning).
pub(crate) fn validate_env(env: &[(String, String)]) -> Result<()> {
    for (key, value) in env {
        if key.is_empty() {
            bail!("container environment keys must not be empty");
        }
        if key.contains('=') {
            bail!("container environment keys must not contain '=': {key}");
        }
        if key.contains('\0') {
            bail!("container environment keys must not contain NUL bytes");
        }
        if value.contains('\0') {
            bail!("container environment values must not contain NUL bytes");
        }
    }
    Ok(())
}

/// An emulator is a container path under [`RUN_HELPER_DIR`].
pub(crate) fn validate_emulator(emulator: &str) -> Result<()> {
    validate_container_absolute(emulator, "container emulator")?;
    if !emulator.starts_with(&format!("{RUN_HELPER_DIR}/")) {
        bail!("container emulator must live under {RUN_HELPER_DIR}: {emulator}");
    }
    Ok(())
}

/// Upstream's `validate_container_request`, in its order: cwd, executable,
/// env, emulator, then each mount's source and destination.
pub(crate) fn validate_container_request(command: &ContainerRunCommand) -> Result<()> {
    validate_container_absolute(&command.cwd, "container cwd")?;
    validate_executable(&command.executable)?;
    validate_env(&command.env)?;
    if let Some(emulator) = &command.emulator {
        validate_emulator(emulator)?;
    }
    for mount in &command.mounts {
        validate_host_absolute(&mount.source, "bind mount source")?;
        validate_container_absolute(&mount.destination, "container mount destination")?;
    }
    Ok(())
}

/// Whether a mount at `dest` hides `target`: a raw string comparison, as
/// upstream does, so `/w/` does not cover `/w/x`.
pub(crate) fn mount_covers(dest: &str, target: &str) -> bool {
    dest == target
        || dest == "/"
        || target
            .strip_prefix(dest)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_rules() {
        assert!(validate_executable("env").is_ok());
        assert!(validate_executable("foo/").is_ok());
        assert!(validate_executable("/bin/true").is_ok());
        for (bad, phrase) in [
            ("bin/true", "must be absolute or a bare command name"),
            ("./x", "must be absolute or a bare command name"),
            ("", "must be absolute or a bare command name"),
            ("..", "must not contain '..'"),
            ("../x", "must not contain '..'"),
            ("/a/../b", "must not contain '..'"),
        ] {
            let err = validate_executable(bad).unwrap_err().to_string();
            assert!(err.contains(phrase), "{bad}: {err}");
        }
    }

    #[test]
    fn covers_is_a_raw_string_match() {
        assert!(mount_covers("/dev", "/dev/null"));
        assert!(mount_covers("/", "/etc/resolv.conf"));
        assert!(mount_covers("/dev/null", "/dev/null"));
        assert!(!mount_covers("/w/", "/w/x"));
        assert!(!mount_covers("/de", "/dev/null"));
    }
}
