//! The portable extractor for untrusted tar archives, and the rules it
//! shares with the Linux callers of `unpack::Applier`.
//!
//! The archives are workspace seeds staged by the macOS and Windows workers
//! and trees collected from a Linux provider. Both land in a plain host
//! directory that host tools will later walk and follow links in, so the
//! rules keep every member, and everything a member points at, inside the
//! destination. macOS and Windows have no `openat2`, so [`unpack`] writes
//! with paths; on Linux the same rules run in [`sanitize`] and the
//! fd-based applier writes.
//!
//! # Rules
//! Each member, checked against the archive alone (the [`Checker`]):
//! 1. Its name is relative with no `..` component; `.` and empty segments
//!    are dropped. A member naming the destination itself (`./`) may only
//!    be a directory, and is skipped: the destination belongs to the caller.
//! 2. Its last component does not start with `.wh.`: the Linux applier
//!    reads such names as OCI whiteouts, so one archive would make different
//!    trees on different hosts.
//! 3. No parent of it is a name an earlier member made a symlink or a
//!    non-directory. A later directory member does not clear a symlink,
//!    because the Linux applier keeps a link to a directory (keep-dirlinks).
//! 4. A symlink target is relative, climbs (`..`) only before its first
//!    name, and no higher than the destination. Each link is checked from
//!    a real directory, so links cannot chain their way out either.
//! 5. A hard link names, like a member, a regular file an earlier member
//!    made, and not itself.
//! 6. Only directories, regular files, symlinks and hard links are
//!    extracted; PAX global headers are skipped. Device nodes, FIFOs and
//!    every other entry type are refused: they have no meaning in a
//!    workspace or a collected tree.
//! 7. Permissions and the sticky bit are kept; setuid and setgid are
//!    dropped, since the files belong to whoever extracts them.
//!
//! [`unpack`] also checks the disk as it goes: a parent that is a symlink
//! or a non-directory (one that was there before the extraction) is
//! refused, an existing non-directory at a member's name is replaced
//! without being followed, and directory modes and mtimes are set last so
//! a read-only directory does not block its own contents.
#![forbid(unsafe_code)]

use super::{create_symlink, remove_path_if_exists};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tar::{Entry, EntryType};

/// Mode bits kept from the archive: permissions and sticky, never setuid
/// or setgid.
#[cfg(unix)]
const MODE_MASK: u32 = 0o1777;

/// A member the rules refused. Typed so that the seed callers can put
/// upstream's message for an unsafe name on top.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// Rule 1: an absolute name or a `..` component.
    #[error("refusing archive entry {name:?}: the name {reason}")]
    UnsafeName { name: String, reason: &'static str },
    /// Rules 1 and 2: a name the extractor will not create.
    #[error("refusing archive entry {name:?}: {reason}")]
    ReservedName { name: String, reason: &'static str },
    /// Rule 3, or a symlink found on disk.
    #[error("refusing to extract {name} through symlink {through}")]
    ThroughSymlink { name: String, through: String },
    /// Rule 3, or a non-directory found on disk.
    #[error("refusing to extract {name}: {through} is not a directory")]
    ThroughNonDirectory { name: String, through: String },
    /// Rule 4.
    #[error("refusing symlink {name} -> {target}: the target may leave the destination")]
    SymlinkEscape { name: String, target: String },
    /// Rule 5.
    #[error("refusing hard link {name} -> {target}: {reason}")]
    HardLink {
        name: String,
        target: String,
        reason: &'static str,
    },
    /// Rule 6.
    #[error("refusing {name}: {what} cannot be extracted")]
    UnsupportedType { name: String, what: String },
}

/// What one accepted member asks for, with its name normalized.
pub(crate) enum Member {
    /// `./`: the destination itself, which is left alone.
    Root,
    /// A PAX global header: nothing to extract.
    Skip,
    Directory(PathBuf),
    File(PathBuf),
    Symlink {
        name: PathBuf,
        target: PathBuf,
    },
    HardLink {
        name: PathBuf,
        source: PathBuf,
    },
}

/// What an earlier member left at a name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    Directory,
    File,
    Symlink,
}

/// Checks members in archive order against the rules in the module doc,
/// remembering what each accepted member made.
#[derive(Default)]
pub(crate) struct Checker {
    made: BTreeMap<PathBuf, Made>,
}

impl Checker {
    /// Accepts or refuses `entry`; a refusal is a [`Refusal`].
    pub(crate) fn check<R: Read>(&mut self, entry: &Entry<'_, R>) -> Result<Member> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(Member::Skip);
        }
        let raw = entry
            .path()
            .context("failed to decode archive entry name")?;
        let shown = raw.display().to_string();
        let name = member_name(&raw).map_err(|reason| Refusal::UnsafeName {
            name: shown.clone(),
            reason,
        })?;
        let is_dir = kind.is_dir()
            || (kind == EntryType::Regular
                && entry.header().as_ustar().is_none()
                && entry.path_bytes().ends_with(b"/"));
        if name.as_os_str().is_empty() {
            if is_dir {
                return Ok(Member::Root);
            }
            bail!(Refusal::ReservedName {
                name: shown,
                reason: "only a directory may name the destination itself",
            });
        }
        if name
            .file_name()
            .is_some_and(|last| last.as_encoded_bytes().starts_with(b".wh."))
        {
            bail!(Refusal::ReservedName {
                name: shown,
                reason: "names starting with .wh. are OCI whiteouts",
            });
        }
        self.check_parents(&name)?;
        let member = self.classify(entry, kind, is_dir, name)?;
        self.record(&member);
        Ok(member)
    }

    fn classify<R: Read>(
        &self,
        entry: &Entry<'_, R>,
        kind: EntryType,
        is_dir: bool,
        name: PathBuf,
    ) -> Result<Member> {
        if is_dir {
            return Ok(Member::Directory(name));
        }
        let what = match kind {
            EntryType::Regular | EntryType::Continuous => return Ok(Member::File(name)),
            EntryType::Symlink => {
                let target = link_name(entry, &name)?;
                check_symlink_target(&name, &target)?;
                return Ok(Member::Symlink { name, target });
            }
            EntryType::Link => {
                let source = self.hard_link_source(&name, &link_name(entry, &name)?)?;
                return Ok(Member::HardLink { name, source });
            }
            EntryType::Char | EntryType::Block => "a device node".to_string(),
            EntryType::Fifo => "a FIFO".to_string(),
            other => format!("tar entry type {:?}", other.as_byte() as char),
        };
        bail!(Refusal::UnsupportedType {
            name: name.display().to_string(),
            what,
        })
    }

    fn check_parents(&self, name: &Path) -> Result<(), Refusal> {
        let mut parent = PathBuf::new();
        let mut components = name.components().peekable();
        while let Some(component) = components.next() {
            if components.peek().is_none() {
                break;
            }
            parent.push(component);
            let (name, through) = (name.display().to_string(), parent.display().to_string());
            match self.made.get(&parent) {
                Some(Made::Symlink) => return Err(Refusal::ThroughSymlink { name, through }),
                Some(Made::File) => return Err(Refusal::ThroughNonDirectory { name, through }),
                Some(Made::Directory) | None => {}
            }
        }
        Ok(())
    }

    fn hard_link_source(&self, name: &Path, raw: &Path) -> Result<PathBuf, Refusal> {
        let refuse = |reason| Refusal::HardLink {
            name: name.display().to_string(),
            target: raw.display().to_string(),
            reason,
        };
        let source = member_name(raw).map_err(|reason| match reason {
            ABSOLUTE => refuse("the source is absolute"),
            _ => refuse("the source has a '..' component"),
        })?;
        if source == name {
            return Err(refuse("a member cannot link to itself"));
        }
        if self.made.get(&source) != Some(&Made::File) {
            return Err(refuse(
                "the source must be a regular file an earlier member made",
            ));
        }
        Ok(source)
    }

    fn record(&mut self, member: &Member) {
        let (name, made) = match member {
            Member::Root | Member::Skip => return,
            Member::Directory(name) => {
                // keep-dirlinks: the link stays, and so does rule 3 for it.
                if self.made.get(name) == Some(&Made::Symlink) {
                    return;
                }
                (name, Made::Directory)
            }
            Member::File(name) | Member::HardLink { name, .. } => (name, Made::File),
            Member::Symlink { name, .. } => (name, Made::Symlink),
        };
        if made != Made::Directory {
            self.forget_below(name);
        }
        self.made.insert(name.clone(), made);
    }

    /// Drops what was recorded under `name`, which a non-directory replaced.
    /// Paths order component-wise, so everything below `name` sorts right
    /// after it.
    fn forget_below(&mut self, name: &Path) {
        let below: Vec<PathBuf> = self
            .made
            .range::<Path, _>((Bound::Excluded(name), Bound::Unbounded))
            .map(|(path, _)| path)
            .take_while(|path| path.starts_with(name))
            .cloned()
            .collect();
        for path in below {
            self.made.remove(&path);
        }
    }
}

const ABSOLUTE: &str = "is absolute";

/// `raw` as plain components, or why it is refused (rule 1).
fn member_name(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut name = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => name.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err(ABSOLUTE),
        }
    }
    Ok(name)
}

fn link_name<R: Read>(entry: &Entry<'_, R>, name: &Path) -> Result<PathBuf> {
    match entry
        .link_name()
        .with_context(|| format!("failed to decode the link target of {}", name.display()))?
    {
        Some(target) if !target.as_os_str().is_empty() => Ok(target.into_owned()),
        _ => bail!(Refusal::UnsupportedType {
            name: name.display().to_string(),
            what: "a link without a target".to_string(),
        }),
    }
}

/// Rule 4: every `..` comes before the first name, and there are no more
/// of them than directories above `name` inside the destination.
fn check_symlink_target(name: &Path, target: &Path) -> Result<(), Refusal> {
    let mut depth = name.components().count().saturating_sub(1);
    let mut climbing = true;
    for component in target.components() {
        let stays = match component {
            Component::CurDir => true,
            Component::Normal(_) => {
                climbing = false;
                true
            }
            Component::ParentDir if climbing && depth > 0 => {
                depth -= 1;
                true
            }
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => false,
        };
        if !stays {
            return Err(Refusal::SymlinkEscape {
                name: name.display().to_string(),
                target: target.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Upstream's rule for Linux workspace seeds, which the applier then
/// writes: a member name with a root, `..` or a prefix component is
/// refused with `contained an unsafe path`. The applier would confine such
/// a name rather than refuse it, hence this separate pass.
#[cfg(target_os = "linux")]
pub(crate) fn check_seed_member_names(archive: &Path, reader: impl Read) -> Result<()> {
    let read_failed = || format!("failed to read workspace archive {}", archive.display());
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().with_context(read_failed)? {
        let entry = entry.with_context(read_failed)?;
        let name = entry.path().with_context(read_failed)?;
        if member_name(&name).is_err() {
            return Err(super::seed::unsafe_seed_member(
                archive,
                &name.display().to_string(),
            ));
        }
    }
    Ok(())
}

/// Checks every member of `reader` against the rules and writes the
/// accepted ones to `writer` as a fresh archive: normalized names, masked
/// modes, no owners, no PAX records. The Linux provider collection hands
/// that to the applier, which so only ever parses bytes this function
/// wrote.
///
/// The applier sets a directory's mode as soon as it creates it, so each
/// directory is first written owner-writable and written again, with its
/// real mode, after every other member (deepest first, and only where the
/// archive left a directory): a read-only directory must not block its
/// own contents when the host user is not root.
#[cfg(target_os = "linux")]
pub(crate) fn sanitize<W: io::Write>(reader: impl Read, writer: W) -> Result<W> {
    let mut archive = tar::Archive::new(reader);
    let mut checker = Checker::default();
    let mut builder = tar::Builder::new(writer);
    let mut directories = Vec::new();
    for entry in archive.entries().context("failed to read archive")? {
        let mut entry = entry.context("failed to read archive entry")?;
        let member = checker.check(&entry)?;
        let mode = entry.header().mode().context("invalid mode")? & MODE_MASK;
        let mtime = entry.header().mtime().context("invalid mtime")?;
        let header = |kind, mode| clean_header(kind, mode, mtime);
        let written = match member {
            Member::Root | Member::Skip => continue,
            Member::Directory(name) => {
                let mut header = header(EntryType::Directory, mode | 0o700);
                let written = builder.append_data(&mut header, &name, io::empty());
                directories.push((name, mode, mtime));
                written
            }
            Member::File(name) => {
                let mut header = header(EntryType::Regular, mode);
                header.set_size(entry.size());
                builder.append_data(&mut header, name, &mut entry)
            }
            Member::Symlink { name, target } => {
                builder.append_link(&mut header(EntryType::Symlink, mode), name, target)
            }
            Member::HardLink { name, source } => {
                builder.append_link(&mut header(EntryType::Link, mode), name, source)
            }
        };
        written.context("failed to write the checked archive")?;
    }
    for (name, mode, mtime) in directories.iter().rev() {
        if checker.made.get(name) == Some(&Made::Directory) {
            let mut header = clean_header(EntryType::Directory, *mode, *mtime);
            builder
                .append_data(&mut header, name, io::empty())
                .context("failed to write the checked archive")?;
        }
    }
    builder
        .into_inner()
        .context("failed to write the checked archive")
}

/// A header with only what the applier should see. Owners are not kept:
/// the host user owns what it collects.
#[cfg(target_os = "linux")]
fn clean_header(kind: EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header
}

/// Extracts every member of the tar stream `reader` under `root`, which
/// must exist, following the rules in the module doc. Returns the reader,
/// positioned after the end-of-archive marker, so the caller can drain it.
pub(crate) fn unpack<R: Read>(reader: R, root: &Path) -> Result<R> {
    let mut archive = tar::Archive::new(reader);
    let mut checker = Checker::default();
    let mut directories = Vec::new();
    for entry in archive.entries().context("failed to read archive")? {
        let mut entry = entry.context("failed to read archive entry")?;
        let member = checker.check(&entry)?;
        directories.extend(write_member(&mut entry, root, member)?);
    }
    for directory in directories.iter().rev() {
        directory.apply()?;
    }
    Ok(archive.into_inner())
}

/// Mode and mtime of a directory member, applied after all members.
struct DirectoryAttrs {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

impl DirectoryAttrs {
    fn apply(&self) -> Result<()> {
        // A later member may have replaced the directory; never chmod
        // through whatever took its place.
        let still_directory = fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.is_dir());
        if still_directory {
            set_directory_attrs(&self.path, self.mode, self.mtime)
                .with_context(|| format!("failed to set attributes of {}", self.path.display()))?;
        }
        Ok(())
    }
}

fn write_member<R: Read>(
    entry: &mut Entry<'_, R>,
    root: &Path,
    member: Member,
) -> Result<Option<DirectoryAttrs>> {
    match member {
        Member::Root | Member::Skip => Ok(None),
        Member::Directory(name) => write_directory(entry, root, &name).map(Some),
        Member::File(name) => write_file(entry, root, &name).map(|()| None),
        Member::Symlink { name, target } => {
            let path = checked_path(root, &name, true)?;
            clear_path(&path)?;
            let resolved = path.parent().map(|parent| parent.join(&target));
            let target_is_dir = resolved.is_some_and(|resolved| resolved.is_dir());
            create_symlink(&target, &path, target_is_dir).map(|()| None)
        }
        Member::HardLink { name, source } => {
            let source = checked_path(root, &source, false)?;
            if !fs::symlink_metadata(&source).is_ok_and(|meta| meta.is_file()) {
                bail!(
                    "hard link source {} is not a regular file",
                    source.display()
                );
            }
            let path = checked_path(root, &name, true)?;
            clear_path(&path)?;
            fs::hard_link(&source, &path)
                .with_context(|| {
                    format!("failed to link {} to {}", path.display(), source.display())
                })
                .map(|()| None)
        }
    }
}

fn write_directory<R: Read>(
    entry: &Entry<'_, R>,
    root: &Path,
    name: &Path,
) -> Result<DirectoryAttrs> {
    let path = checked_path(root, name, true)?;
    if !fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
        clear_path(&path)?;
        fs::create_dir(&path).with_context(|| format!("failed to create {}", path.display()))?;
    }
    let header = entry.header();
    Ok(DirectoryAttrs {
        path,
        mode: header.mode().context("invalid mode")?,
        mtime: header.mtime().context("invalid mtime")?,
    })
}

fn write_file<R: Read>(entry: &mut Entry<'_, R>, root: &Path, name: &Path) -> Result<()> {
    let path = checked_path(root, name, true)?;
    clear_path(&path)?;
    // `create_new` refuses to open through anything that appeared
    // meanwhile, symlinks included.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    io::copy(entry, &mut file).with_context(|| format!("failed to write {}", path.display()))?;
    let header = entry.header();
    set_file_mode(&file, header.mode().context("invalid mode")?)
        .with_context(|| format!("failed to set the mode of {}", path.display()))?;
    file.set_modified(mtime(header.mtime().context("invalid mtime")?))
        .with_context(|| format!("failed to set the mtime of {}", path.display()))
}

/// `root/name`, after checking on disk that every parent of it under
/// `root` is a real directory (created when `create` is set and it is
/// missing). A symlink in the way is refused: walking through it could
/// leave `root`.
fn checked_path(root: &Path, name: &Path, create: bool) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    let mut components = name.components().peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_none() {
            break;
        }
        let refuse_through = |symlink: bool| {
            let (name, through) = (name.display().to_string(), path.display().to_string());
            match symlink {
                true => Refusal::ThroughSymlink { name, through },
                false => Refusal::ThroughNonDirectory { name, through },
            }
        };
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(refuse_through(true)),
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!(refuse_through(false)),
            Err(error) if error.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&path)
                    .with_context(|| format!("failed to create {}", path.display()))?
            }
            Err(error) => {
                return Err(error).with_context(|| format!("failed to inspect {}", path.display()))
            }
        }
    }
    Ok(path)
}

/// Removes whatever is at `path` without following it, so the new member
/// replaces it the way `tar` replaces an existing file.
fn clear_path(path: &Path) -> Result<()> {
    remove_path_if_exists(path).with_context(|| format!("failed to replace {}", path.display()))
}

fn mtime(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(unix)]
fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))
}

#[cfg(not(unix))]
fn set_file_mode(_file: &File, _mode: u32) -> io::Result<()> {
    // Windows has no mode bits to carry over; the ACLs of the destination
    // directory apply.
    Ok(())
}

#[cfg(unix)]
fn set_directory_attrs(path: &Path, mode: u32, seconds: u64) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let directory = File::open(path)?;
    directory.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))?;
    directory.set_modified(mtime(seconds))
}

#[cfg(not(unix))]
fn set_directory_attrs(_path: &Path, _mode: u32, _seconds: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tree::test_tar::{tar_bytes, Member as M};
    use tempfile::TempDir;

    /// Unpacks `members` into `<tmp>/dest`, beside an empty `<tmp>/outside`.
    fn unpack_members(members: &[M<'_>]) -> (TempDir, Result<()>) {
        let tmp = TempDir::new().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        let result = unpack(&tar_bytes(members)[..], &tmp.path().join("dest")).map(drop);
        (tmp, result)
    }

    fn assert_outside_untouched(tmp: &TempDir) {
        let outside: Vec<_> = fs::read_dir(tmp.path().join("outside")).unwrap().collect();
        assert!(outside.is_empty(), "something escaped: {outside:?}");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    /// Each archive is refused with `expected`, and nothing lands outside.
    fn assert_refused(cases: &[(&[M<'_>], &str)]) {
        for (members, expected) in cases {
            let (tmp, result) = unpack_members(members);
            let error = result.expect_err(expected);
            assert!(error.downcast_ref::<Refusal>().is_some(), "{error:#}");
            assert_eq!(error.to_string(), *expected);
            assert_outside_untouched(&tmp);
        }
    }

    #[test]
    fn a_benign_archive_is_extracted_with_masked_modes() {
        let (tmp, result) = unpack_members(&[
            M::Dir("./"),
            M::Dir("src/"),
            M::File("src/main.txt", b"main", 0o4755),
            M::File("./bin//run", b"run", 0o1700),
            M::Symlink("src/up", "../bin/run"),
            M::Symlink("src/deep/here", "./../../src"),
            M::HardLink("src/again.txt", "./src/main.txt"),
        ]);
        result.unwrap();
        let dest = tmp.path().join("dest");
        assert_eq!(
            fs::read_to_string(dest.join("src/again.txt")).unwrap(),
            "main"
        );
        assert_eq!(fs::read_to_string(dest.join("src/up")).unwrap(), "run");
        assert!(dest.join("src/deep/here/main.txt").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode();
            assert_eq!(mode("src/main.txt") & 0o7777, 0o755, "setuid is dropped");
            assert_eq!(mode("bin/run") & 0o7777, 0o1700, "sticky is kept");
            let mtime = fs::metadata(dest.join("src")).unwrap().mtime();
            assert_eq!(mtime, 1_700_000_000, "directory mtimes are set last");
        }
        assert_outside_untouched(&tmp);
    }

    #[test]
    fn unsafe_and_reserved_names_are_refused() {
        assert_refused(&[
            (
                &[M::File("/outside/abs", b"x", 0o644)],
                r#"refusing archive entry "/outside/abs": the name is absolute"#,
            ),
            (
                &[M::File("../outside/up", b"x", 0o644)],
                r#"refusing archive entry "../outside/up": the name has a '..' component"#,
            ),
            (
                &[M::Dir("a/"), M::File("a/../../outside/mid", b"x", 0o644)],
                r#"refusing archive entry "a/../../outside/mid": the name has a '..' component"#,
            ),
            (
                &[M::File(".", b"x", 0o644)],
                r#"refusing archive entry ".": only a directory may name the destination itself"#,
            ),
            (
                &[M::File("d/.wh.f", b"", 0o644)],
                r#"refusing archive entry "d/.wh.f": names starting with .wh. are OCI whiteouts"#,
            ),
        ]);
    }

    #[test]
    fn symlinks_that_may_leave_the_destination_are_refused() {
        let leave = |name: &str, target: &str| {
            format!("refusing symlink {name} -> {target}: the target may leave the destination")
        };
        for (name, target) in [
            ("up", ".."),
            ("up", "../outside"),
            ("d/up", "../../outside"),
            ("abs", "/tmp"),
            ("d/zig", "x/../../outside"),
            ("d/zag", "./../x/.."),
        ] {
            assert_refused(&[(&[M::Symlink(name, target)], &leave(name, target))]);
        }
    }

    #[test]
    fn members_never_pass_through_links_or_files_an_earlier_member_made() {
        assert_refused(&[
            (
                &[M::Symlink("inner", "."), M::File("inner/f", b"x", 0o644)],
                "refusing to extract inner/f through symlink inner",
            ),
            (
                // keep-dirlinks on Linux: a directory does not clear the link.
                &[
                    M::Dir("real/"),
                    M::Symlink("alias", "real"),
                    M::Dir("alias/"),
                    M::File("alias/f", b"x", 0o644),
                ],
                "refusing to extract alias/f through symlink alias",
            ),
            (
                &[
                    M::File("plain", b"x", 0o644),
                    M::File("plain/child", b"x", 0o644),
                ],
                "refusing to extract plain/child: plain is not a directory",
            ),
        ]);
    }

    #[test]
    fn hard_links_must_name_an_earlier_regular_file() {
        let refused =
            |target: &str, reason: &str| format!("refusing hard link h -> {target}: {reason}");
        let earlier = "the source must be a regular file an earlier member made";
        assert_refused(&[
            (
                &[M::HardLink("h", "/etc/passwd")],
                &refused("/etc/passwd", "the source is absolute"),
            ),
            (
                &[M::HardLink("h", "../outside/f")],
                &refused("../outside/f", "the source has a '..' component"),
            ),
            (
                &[M::HardLink("h", "h")],
                &refused("h", "a member cannot link to itself"),
            ),
            (&[M::HardLink("h", "missing")], &refused("missing", earlier)),
            (
                &[M::Symlink("soft", "."), M::HardLink("h", "soft")],
                &refused("soft", earlier),
            ),
            (
                // The file went with the directory a symlink replaced.
                &[
                    M::File("d/f", b"x", 0o644),
                    M::Symlink("d", "."),
                    M::HardLink("h", "d/f"),
                ],
                &refused("d/f", earlier),
            ),
        ]);
    }

    #[test]
    fn device_nodes_fifos_and_unknown_types_are_refused() {
        assert_refused(&[
            (
                &[M::Special("null", EntryType::Char)],
                "refusing null: a device node cannot be extracted",
            ),
            (
                &[M::Special("sda", EntryType::Block)],
                "refusing sda: a device node cannot be extracted",
            ),
            (
                &[M::Special("pipe", EntryType::Fifo)],
                "refusing pipe: a FIFO cannot be extracted",
            ),
            (
                &[M::Special("vol", EntryType::new(b'V'))],
                "refusing vol: tar entry type 'V' cannot be extracted",
            ),
        ]);
    }

    #[cfg(unix)]
    #[test]
    fn what_was_on_disk_before_is_replaced_or_refused_never_followed() {
        let tmp = TempDir::new().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        fs::create_dir_all(dest.join("d")).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), dest.join("d/f")).unwrap();
        let archive = tar_bytes(&[M::File("d/f", b"data", 0o644)]);
        unpack(&archive[..], &dest).unwrap();
        assert!(fs::symlink_metadata(dest.join("d/f")).unwrap().is_file());
        let archive = tar_bytes(&[M::File("out/pwned", b"x", 0o644)]);
        let error = unpack(&archive[..], &dest).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "refusing to extract out/pwned through symlink {}",
                dest.join("out").display()
            )
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sanitize_rewrites_names_and_modes_and_refuses_like_unpack() {
        let archive = tar_bytes(&[
            M::Dir("./"),
            M::Dir("gone/"),
            M::File("gone", b"", 0o644),
            M::File("./a//b", b"data", 0o6755),
            M::Symlink("a/l", "b"),
            M::HardLink("c", "a/b"),
            M::DirMode("ro/", 0o500),
            M::File("ro/f", b"", 0o644),
        ]);
        let clean = sanitize(&archive[..], Vec::new()).unwrap();
        let mut reread = tar::Archive::new(&clean[..]);
        let members: Vec<(String, EntryType, u32)> = reread
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.path().unwrap().display().to_string();
                (
                    name,
                    entry.header().entry_type(),
                    entry.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            members,
            [
                ("gone".to_string(), EntryType::Directory, 0o755),
                ("gone".to_string(), EntryType::Regular, 0o644),
                ("a/b".to_string(), EntryType::Regular, 0o755),
                ("a/l".to_string(), EntryType::Symlink, 0o777),
                ("c".to_string(), EntryType::Link, 0o644),
                ("ro".to_string(), EntryType::Directory, 0o700),
                ("ro/f".to_string(), EntryType::Regular, 0o644),
                // Last, and only for what is still a directory.
                ("ro".to_string(), EntryType::Directory, 0o500),
            ]
        );
        let hostile = tar_bytes(&[M::Symlink("up", "..")]);
        let error = sanitize(&hostile[..], Vec::new()).unwrap_err();
        assert!(matches!(
            error.downcast_ref(),
            Some(Refusal::SymlinkEscape { .. })
        ));
    }
}
