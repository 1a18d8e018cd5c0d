//! In-process extraction of an archive that comes from the provider.
//!
//! The provider is a separate machine from the host's point of view, so its
//! archive is treated as untrusted: every entry must stay under the
//! destination. Names must be relative with no `..`; parent directories
//! must be real directories (a symlink is never walked through, so a link
//! planted by an earlier entry cannot redirect a later write); symlink
//! targets must be relative and stay inside the destination; hard links
//! must name an entry already inside it. Nothing is followed out of it.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tar::{Entry, EntryType};

/// Mode bits kept from the archive: permissions and sticky, but never
/// setuid or setgid, since the files belong to the host user.
#[cfg(unix)]
const MODE_MASK: u32 = 0o1777;

/// Extracts every entry of the tar stream `reader` under `root`, which
/// must exist. Directory modes and mtimes are applied last, so a read-only
/// directory does not block its own contents.
pub(super) fn unpack<R: Read>(reader: R, root: &Path, log: &mut String) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut directories = Vec::new();
    for entry in archive.entries().context("failed to read archive")? {
        let mut entry = entry.context("failed to read archive entry")?;
        let Some(name) = entry_name(&entry)? else {
            continue;
        };
        let directory = unpack_entry(&mut entry, root, &name, log)
            .with_context(|| format!("failed to extract {}", name.display()))?;
        directories.extend(directory);
    }
    for directory in directories.iter().rev() {
        directory.apply()?;
    }
    Ok(())
}

/// Mode and mtime of a directory entry, applied after all entries.
struct DirectoryAttrs {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

impl DirectoryAttrs {
    fn apply(&self) -> Result<()> {
        // A later entry may have replaced the directory; never chmod through
        // whatever took its place.
        let still_directory = fs::symlink_metadata(&self.path)
            .map(|meta| meta.is_dir())
            .unwrap_or(false);
        if still_directory {
            set_directory_attrs(&self.path, self.mode, self.mtime)
                .with_context(|| format!("failed to set attributes of {}", self.path.display()))?;
        }
        Ok(())
    }
}

fn unpack_entry<R: Read>(
    entry: &mut Entry<'_, R>,
    root: &Path,
    name: &Path,
    log: &mut String,
) -> Result<Option<DirectoryAttrs>> {
    match entry.header().entry_type() {
        EntryType::Directory => unpack_directory(entry, root, name).map(Some),
        EntryType::Regular | EntryType::Continuous => unpack_file(entry, root, name).map(|_| None),
        EntryType::Symlink => unpack_symlink(entry, root, name).map(|_| None),
        EntryType::Link => unpack_hard_link(entry, root, name).map(|_| None),
        EntryType::XGlobalHeader => Ok(None),
        other => {
            log.push_str(&format!(
                "host tar: skip {} ({other:?} entries are not extracted)\n",
                name.display()
            ));
            Ok(None)
        }
    }
}

/// The entry's name as a relative path of normal components, or `None` for
/// the archive root (`.`). Absolute names and `..` are refused outright
/// rather than rewritten, because a well-formed `tar -C dir name` never
/// produces them.
fn entry_name<R: Read>(entry: &Entry<'_, R>) -> Result<Option<PathBuf>> {
    let raw = entry
        .path()
        .context("failed to decode archive entry name")?;
    let name = relative_name(&raw)
        .with_context(|| format!("refusing archive entry {:?}", raw.display().to_string()))?;
    Ok((!name.as_os_str().is_empty()).then_some(name))
}

fn relative_name(raw: &Path) -> Result<PathBuf> {
    let mut name = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => name.push(part),
            Component::CurDir => {}
            Component::ParentDir => bail!("the name has a '..' component"),
            Component::RootDir | Component::Prefix(_) => bail!("the name is absolute"),
        }
    }
    Ok(name)
}

fn unpack_directory<R: Read>(
    entry: &mut Entry<'_, R>,
    root: &Path,
    name: &Path,
) -> Result<DirectoryAttrs> {
    let path = parent_checked_path(root, name, true)?;
    let is_directory = fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir());
    if !is_directory {
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

fn unpack_file<R: Read>(entry: &mut Entry<'_, R>, root: &Path, name: &Path) -> Result<()> {
    let path = parent_checked_path(root, name, true)?;
    clear_path(&path)?;
    // `create_new` refuses to open through anything that appeared meanwhile,
    // symlinks included.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    io::copy(entry, &mut file).with_context(|| format!("failed to write {}", path.display()))?;
    let header = entry.header();
    set_file_mode(&file, header.mode().context("invalid mode")?)?;
    file.set_modified(mtime(header.mtime().context("invalid mtime")?))
        .with_context(|| format!("failed to set mtime of {}", path.display()))
}

fn unpack_symlink<R: Read>(entry: &mut Entry<'_, R>, root: &Path, name: &Path) -> Result<()> {
    let Some(target) = entry.link_name().context("invalid symlink target")? else {
        bail!("symlink has no target");
    };
    check_symlink_target(name, &target, root)?;
    let path = parent_checked_path(root, name, true)?;
    clear_path(&path)?;
    make_symlink(&target, &path)
        .with_context(|| format!("failed to create symlink {}", path.display()))
}

fn unpack_hard_link<R: Read>(entry: &mut Entry<'_, R>, root: &Path, name: &Path) -> Result<()> {
    let Some(raw_source) = entry.link_name().context("invalid hard link target")? else {
        bail!("hard link has no target");
    };
    let source_name = relative_name(&raw_source).with_context(|| {
        format!(
            "refusing hard link to {:?}",
            raw_source.display().to_string()
        )
    })?;
    let source = parent_checked_path(root, &source_name, false)?;
    let source_meta = fs::symlink_metadata(&source)
        .with_context(|| format!("hard link target {} is missing", source.display()))?;
    if source_meta.is_dir() {
        bail!("hard link target {} is a directory", source.display());
    }
    let path = parent_checked_path(root, name, true)?;
    if path == source {
        return Ok(());
    }
    clear_path(&path)?;
    fs::hard_link(&source, &path)
        .with_context(|| format!("failed to link {} to {}", path.display(), source.display()))
}

/// `root/name`, after checking that every parent of it under `root` is a
/// real directory (created when `create` is set and it is missing). A
/// symlink in the way is an error: walking through it could leave `root`.
fn parent_checked_path(root: &Path, name: &Path, create: bool) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    let mut components = name.components().peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_some() {
            ensure_real_directory(&path, create)?;
        }
    }
    Ok(path)
}

fn ensure_real_directory(path: &Path, create: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("refusing to extract through symlink {}", path.display())
        }
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!("{} is not a directory", path.display()),
        Err(error) if error.kind() == io::ErrorKind::NotFound && create => {
            fs::create_dir(path).with_context(|| format!("failed to create {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("failed to inspect {}", path.display())),
    }
}

/// A symlink may only point inside `root`: its target must be relative,
/// and any `..` must come first and climb no higher than `root`. Later
/// normal components may be symlinks too, but each of those passed this
/// same check from a real directory, so resolution never leaves `root`.
fn check_symlink_target(name: &Path, target: &Path, root: &Path) -> Result<()> {
    let mut depth = name.components().count().saturating_sub(1);
    let mut climbing = true;
    for component in target.components() {
        let escapes = match component {
            Component::CurDir => false,
            Component::Normal(_) => {
                climbing = false;
                false
            }
            Component::ParentDir if climbing && depth > 0 => {
                depth -= 1;
                false
            }
            _ => true,
        };
        if escapes {
            bail!(
                "refusing symlink {} -> {}: the target may leave {}",
                name.display(),
                target.display(),
                root.display()
            );
        }
    }
    Ok(())
}

/// Removes whatever is at `path` without following it, so the new entry
/// replaces it the way `tar` replaces an existing file.
fn clear_path(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.with_context(|| format!("failed to replace {}", path.display()))
}

fn mtime(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(unix)]
fn set_file_mode(file: &File, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))
        .context("failed to set file mode")
}

#[cfg(not(unix))]
fn set_file_mode(_file: &File, _mode: u32) -> Result<()> {
    // Windows has no mode bits to carry over; the ACLs of the destination
    // directory apply.
    Ok(())
}

#[cfg(unix)]
fn set_directory_attrs(path: &Path, mode: u32, seconds: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let directory = File::open(path)?;
    directory.set_permissions(fs::Permissions::from_mode(mode & MODE_MASK))?;
    directory.set_modified(mtime(seconds))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_directory_attrs(_path: &Path, _mode: u32, _seconds: u64) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn make_symlink(target: &Path, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(windows)]
fn make_symlink(target: &Path, path: &Path) -> io::Result<()> {
    let resolved = path.parent().map(|parent| parent.join(target));
    if resolved.is_some_and(|resolved| resolved.is_dir()) {
        std::os::windows::fs::symlink_dir(target, path)
    } else {
        std::os::windows::fs::symlink_file(target, path)
    }
}
