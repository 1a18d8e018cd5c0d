//! Workspace seeds: copying a snapshot directory, which the Linux build
//! cell and the macOS/Windows workers share, and unpacking a seed archive
//! with the portable extractor, which only the workers use (on Linux the
//! build cell unpacks through `unpack::Applier`).
#![forbid(unsafe_code)]

use super::copy_directory_entries;
use super::extract::{self, Refusal};
use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// Copies the snapshot directory `seed` into the existing `workspace`,
/// which takes the seed's permissions. Only a seed that is there but not a
/// directory gets upstream's `must be a directory`; one that cannot be
/// inspected fails with the real error, naming the path.
pub(crate) fn copy_seed_directory(seed: &Path, workspace: &Path) -> Result<()> {
    let metadata = fs::metadata(seed)
        .with_context(|| format!("failed to inspect build workspace seed {}", seed.display()))?;
    if !metadata.is_dir() {
        bail!(
            "build workspace seed must be a directory: {}",
            seed.display()
        );
    }
    fs::set_permissions(workspace, metadata.permissions())
        .with_context(|| format!("failed to apply permissions to {}", workspace.display()))?;
    copy_directory_entries(seed, workspace)
}

/// Whether a workspace seed archive is gzipped, by its suffix as upstream
/// decides: `.tar.gz` and `.tgz` are, `.tar` is not, anything else is an
/// error.
pub(crate) fn workspace_archive_is_gzipped(archive: &Path) -> Result<bool> {
    let name = archive
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let gzipped = name.ends_with(".tar.gz") || name.ends_with(".tgz");
    if !gzipped && !name.ends_with(".tar") {
        bail!(
            "unsupported workspace archive format {} (expected .tar, .tar.gz, or .tgz)",
            archive.display()
        );
    }
    Ok(gzipped)
}

/// Upstream's message for a seed member with a root, `..` or prefix
/// component, kept word for word because callers match on it.
pub(crate) fn unsafe_seed_member(archive: &Path, name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "workspace archive {} contained an unsafe path {name}",
        archive.display()
    )
}

/// Unpacks a `.tar`, `.tar.gz` or `.tgz` seed (chosen by suffix, as
/// upstream) into `workspace` with the portable extractor, whose rules
/// (see `tree::extract`) keep every member and link inside the workspace.
///
/// Upstream extracted with `tar::Entry::unpack` and confined only member
/// names, so links could point anywhere on the host. Now a symlink that
/// leaves the workspace, a device node or a FIFO is refused too. A rooted
/// or `..` name keeps upstream's message on top.
pub(crate) fn unpack_seed_archive(archive: &Path, workspace: &Path) -> Result<()> {
    let gzipped = workspace_archive_is_gzipped(archive)?;
    let file = fs::File::open(archive)
        .with_context(|| format!("failed to open workspace archive {}", archive.display()))?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let unpack = || -> Result<()> {
        let mut rest = extract::unpack(reader, workspace)?;
        // The gzip trailer is checked only when the stream is read to its end.
        io::copy(&mut rest, &mut io::sink()).context("failed to read to the end")?;
        Ok(())
    };
    unpack().map_err(|error| match error.downcast_ref() {
        Some(Refusal::UnsafeName { name, .. }) => unsafe_seed_member(archive, name),
        _ => error.context(format!(
            "failed to unpack workspace archive {}",
            archive.display()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tree::test_tar::{gzip, tar_bytes, EntryType, Member};
    use std::path::PathBuf;
    use tempfile::TempDir;

    /// Lays out `<tmp>/outside`, an empty `<tmp>/workspace` and the archive
    /// `<tmp>/<file_name>`; returns the archive and workspace paths.
    fn archive_fixture(tmp: &TempDir, file_name: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
        let archive = tmp.path().join(file_name);
        fs::write(&archive, bytes).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::create_dir(tmp.path().join("workspace")).unwrap();
        (archive, tmp.path().join("workspace"))
    }

    fn outside_is_untouched(tmp: &TempDir) {
        let entries: Vec<_> = fs::read_dir(tmp.path().join("outside")).unwrap().collect();
        assert!(entries.is_empty(), "something escaped: {entries:?}");
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("seed."))
            .collect();
        names.sort();
        assert_eq!(names, ["outside", "workspace"]);
    }

    #[test]
    fn snapshot_seed_is_copied_with_links_and_permissions() {
        let tmp = TempDir::new().unwrap();
        let seed = tmp.path().join("seed");
        let workspace = tmp.path().join("workspace");
        fs::create_dir_all(seed.join("sub")).unwrap();
        fs::create_dir(&workspace).unwrap();
        fs::write(seed.join("top.txt"), "top").unwrap();
        fs::write(seed.join("sub/inner.txt"), "inner").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::symlink("sub/inner.txt", seed.join("link")).unwrap();
            fs::set_permissions(seed.join("top.txt"), fs::Permissions::from_mode(0o750)).unwrap();
            fs::set_permissions(&seed, fs::Permissions::from_mode(0o711)).unwrap();
        }
        copy_seed_directory(&seed, &workspace).unwrap();
        let read = |relative: &str| fs::read_to_string(workspace.join(relative)).unwrap();
        assert_eq!(read("top.txt"), "top");
        assert_eq!(read("sub/inner.txt"), "inner");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(
                fs::read_link(workspace.join("link")).unwrap(),
                Path::new("sub/inner.txt")
            );
            assert_eq!(mode(&workspace.join("top.txt")), 0o750);
            assert_eq!(mode(&workspace), 0o711);
        }
    }

    /// Section 6 fix: only an existing non-directory is "not a directory";
    /// a seed that cannot be inspected reports why, naming the path.
    #[test]
    fn snapshot_seed_must_be_an_inspectable_directory() {
        let tmp = TempDir::new().unwrap();
        let seed = tmp.path().join("seed-file");
        fs::write(&seed, "x").unwrap();
        assert_eq!(
            copy_seed_directory(&seed, tmp.path())
                .unwrap_err()
                .to_string(),
            format!(
                "build workspace seed must be a directory: {}",
                seed.display()
            )
        );
        let missing = tmp.path().join("missing");
        let error = copy_seed_directory(&missing, tmp.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "failed to inspect build workspace seed {}",
                missing.display()
            )
        );
        let cause = error.downcast_ref::<io::Error>().unwrap();
        assert_eq!(cause.kind(), io::ErrorKind::NotFound);
    }

    fn benign_archive() -> Vec<u8> {
        tar_bytes(&[
            Member::Dir("src/"),
            Member::File("src/main.txt", b"main", 0o644),
            Member::File("./bin/run", b"#!run", 0o755),
            Member::Symlink("src/up", "../bin/run"),
            Member::Symlink("src/bin", "../bin"),
            Member::HardLink("src/again.txt", "src/main.txt"),
        ])
    }

    fn assert_benign_unpacked(workspace: &Path) {
        let read = |relative: &str| fs::read_to_string(workspace.join(relative)).unwrap();
        assert_eq!(read("src/main.txt"), "main");
        assert_eq!(read("src/again.txt"), "main");
        assert_eq!(read("src/up"), "#!run");
        assert_eq!(
            fs::read_link(workspace.join("src/bin")).unwrap(),
            Path::new("../bin")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(workspace.join("bin/run"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }

    #[test]
    fn tar_and_gzip_seeds_are_unpacked_by_suffix() {
        for (name, bytes) in [
            ("seed.tar", benign_archive()),
            ("seed.tar.gz", gzip(&benign_archive())),
            ("seed.tgz", gzip(&benign_archive())),
        ] {
            let tmp = TempDir::new().unwrap();
            let (archive, workspace) = archive_fixture(&tmp, name, &bytes);
            unpack_seed_archive(&archive, &workspace).unwrap();
            assert_benign_unpacked(&workspace);
            outside_is_untouched(&tmp);
        }
    }

    #[test]
    fn unknown_archive_suffix_is_rejected() {
        let tmp = TempDir::new().unwrap();
        let (archive, workspace) = archive_fixture(&tmp, "seed.zip", b"PK");
        assert_eq!(
            unpack_seed_archive(&archive, &workspace)
                .unwrap_err()
                .to_string(),
            format!(
                "unsupported workspace archive format {} (expected .tar, .tar.gz, or .tgz)",
                archive.display()
            )
        );
    }

    /// The named fix: the rules of `tree::extract` apply to seeds, so a link
    /// that leaves the workspace (even one that stays in the job root) and
    /// a device node are refused, along with upstream's unsafe names, which
    /// keep upstream's message.
    #[test]
    fn hostile_seed_archives_are_refused() {
        let unsafe_path = |name: &str| format!("contained an unsafe path {name}");
        let refusal = |text: &str| format!(": {text}");
        let cases: Vec<(Vec<Member<'_>>, String)> = vec![
            (
                vec![Member::File("/outside/abs", b"x", 0o644)],
                unsafe_path("/outside/abs"),
            ),
            (
                vec![Member::File("../../outside/up", b"x", 0o644)],
                unsafe_path("../../outside/up"),
            ),
            (
                vec![Member::File("a/../../../outside/mid", b"x", 0o644)],
                unsafe_path("a/../../../outside/mid"),
            ),
            (
                vec![Member::Symlink("to-job-root", "..")],
                refusal("refusing symlink to-job-root -> ..: the target may leave the destination"),
            ),
            (
                vec![Member::Symlink("abs", "/tmp")],
                refusal("refusing symlink abs -> /tmp: the target may leave the destination"),
            ),
            (
                vec![Member::Special("dev/null", EntryType::Char)],
                refusal("refusing dev/null: a device node cannot be extracted"),
            ),
            (
                vec![Member::Special("disk", EntryType::Block)],
                refusal("refusing disk: a device node cannot be extracted"),
            ),
        ];
        for (members, expected) in cases {
            let tmp = TempDir::new().unwrap();
            let (archive, workspace) = archive_fixture(&tmp, "seed.tar", &tar_bytes(&members));
            let error = unpack_seed_archive(&archive, &workspace).unwrap_err();
            let message = format!("{error:#}");
            let top = match expected.starts_with(": ") {
                true => format!("failed to unpack workspace archive {}", archive.display()),
                false => format!("workspace archive {} {expected}", archive.display()),
            };
            assert_eq!(error.to_string(), top);
            assert!(
                message.ends_with(&expected),
                "expected {expected:?}, got {message:?}"
            );
            outside_is_untouched(&tmp);
            assert_eq!(fs::read_dir(&workspace).unwrap().count(), 0, "{expected}");
        }
    }

    #[test]
    fn later_members_replace_earlier_links_instead_of_following_them() {
        let tmp = TempDir::new().unwrap();
        let members = [
            Member::Symlink("link", "."),
            Member::File("link", b"now a file", 0o644),
        ];
        let (archive, workspace) = archive_fixture(&tmp, "seed.tar", &tar_bytes(&members));
        unpack_seed_archive(&archive, &workspace).unwrap();
        let link = workspace.join("link");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(fs::read_to_string(link).unwrap(), "now a file");
    }
}
