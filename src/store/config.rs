//! The run settings of an image config (`config.Entrypoint`, `Cmd`,
//! `Env`, `WorkingDir`, `User`) and how `docker run` combines them with
//! the command line.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::Deserialize;

use super::StoreError;
use crate::oci::Digest;

/// The `PATH` Docker gives a payload whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The largest passwd or group file read from an image.
const MAX_ACCOUNT_FILE: u64 = 4 * 1024 * 1024;

/// What an image says about how to run it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, in order, as `(key, value)`.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// `User`, if set: `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawExec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawExec {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

impl ImageConfig {
    /// Parses the config blob's run settings.
    pub fn parse(bytes: &[u8], digest: &Digest) -> Result<ImageConfig, StoreError> {
        let bad = |reason: String| StoreError::Config {
            digest: digest.clone(),
            reason,
        };
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let exec = raw.config.unwrap_or_default();
        let mut env = Vec::new();
        for pair in exec.env.unwrap_or_default() {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad(format!("Env entry {pair:?} has no '='")));
            };
            env.push((key.to_owned(), value.to_owned()));
        }
        Ok(ImageConfig {
            entrypoint: exec.entrypoint.unwrap_or_default(),
            cmd: exec.cmd.unwrap_or_default(),
            env,
            working_dir: exec.working_dir.filter(|d| !d.is_empty()),
            user: exec.user.filter(|u| !u.is_empty()),
        })
    }

    /// The command line, as `docker run` builds it: the entrypoint
    /// (`entrypoint` replaces the image's, and then drops the image's
    /// `Cmd` too), followed by `args` or else the image's `Cmd`.
    pub fn command(&self, entrypoint: Option<&[String]>, args: &[String]) -> Vec<String> {
        let (entry, default_cmd) = match entrypoint {
            Some(entry) => (entry, &[][..]),
            None => (&self.entrypoint[..], &self.cmd[..]),
        };
        let tail = if args.is_empty() { default_cmd } else { args };
        entry.iter().chain(tail).cloned().collect()
    }

    /// The image's `Env` with `overrides` merged over it (a key given
    /// again replaces the image's value in place), and Docker's default
    /// `PATH` when neither sets one.
    pub fn environment(&self, overrides: &[(String, String)]) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (key, value) in overrides {
            match env.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => env.push((key.clone(), value.clone())),
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".to_owned(), DEFAULT_PATH.to_owned()));
        }
        env
    }
}

/// Resolves a `User` spec (`name`, `uid`, `name:group`, `uid:gid`) to
/// numbers through the tree's `/etc/passwd` and `/etc/group`, read inside
/// the tree (a symlinked `/etc` cannot point out of it). A uid alone takes
/// the passwd entry's group, or 0 when it has none, as Docker does.
pub fn resolve_user(tree: &Path, spec: &str) -> Result<(u32, u32), StoreError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |what, name: &str, file| StoreError::UnknownUser {
        user: spec.to_owned(),
        what,
        name: name.to_owned(),
        file,
    };
    let passwd = read_account_file(tree, "etc/passwd")?;
    let entry = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user || f[2] == user));
    let uid = match (user.parse::<u32>(), &entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(fields)) => parse_id(fields[2], spec)?,
        (Err(_), None) => return Err(unknown("user", user, "/etc/passwd")),
    };
    let gid = match group {
        None => match &entry {
            Some(fields) => parse_id(fields[3], spec)?,
            None => 0,
        },
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_account_file(tree, "etc/group")?;
                let fields = groups
                    .lines()
                    .map(|line| line.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == group)
                    .ok_or_else(|| unknown("group", group, "/etc/group"))?;
                parse_id(fields[2], spec)?
            }
        },
    };
    Ok((uid, gid))
}

fn parse_id(field: &str, spec: &str) -> Result<u32, StoreError> {
    field.parse().map_err(|_| StoreError::UnknownUser {
        user: spec.to_owned(),
        what: "numeric id for",
        name: field.to_owned(),
        file: "account files",
    })
}

/// A file of the tree, resolved inside it; missing reads as empty.
fn read_account_file(tree: &Path, rel: &str) -> Result<String, StoreError> {
    let path = tree.join(rel);
    let root = rustix::fs::open(
        tree,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::io("open tree", tree, e.into()))?;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat2(&root, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(StoreError::io("open", &path, e.into())),
    };
    let mut text = String::new();
    File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_string(&mut text)
        .map_err(|e| StoreError::io("read", &path, e))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        let json = br#"{"config":{"Entrypoint":["/bin/echo","e"],"Cmd":["c"],
            "Env":["A=1","PATH=/bin"],"WorkingDir":"/w","User":"app"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        ImageConfig::parse(
            json,
            &Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn commands_combine_as_docker_run_does() {
        let c = config();
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(c.command(None, &[]), s(&["/bin/echo", "e", "c"]));
        assert_eq!(c.command(None, &s(&["x"])), s(&["/bin/echo", "e", "x"]));
        assert_eq!(c.command(Some(&s(&["/bin/sh"])), &[]), s(&["/bin/sh"]));
        assert_eq!(
            c.command(Some(&s(&["/bin/sh"])), &s(&["-c", "id"])),
            s(&["/bin/sh", "-c", "id"])
        );
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
        let env = c.environment(&[("A".into(), "2".into()), ("B".into(), "3".into())]);
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(env, pairs(&[("A", "2"), ("PATH", "/bin"), ("B", "3")]));
        assert_eq!(ImageConfig::default().environment(&[])[0].1, DEFAULT_PATH);
    }

    #[test]
    fn users_resolve_through_the_trees_account_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        std::fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(tmp.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(tmp.path(), "app").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(tmp.path(), "app:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(tmp.path(), "1000").unwrap(), (1000, 1001));
        assert_eq!(resolve_user(tmp.path(), "4242").unwrap(), (4242, 0));
        assert_eq!(resolve_user(tmp.path(), "7:8").unwrap(), (7, 8));
        let err = resolve_user(tmp.path(), "nobody").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"nobody\": no user \"nobody\" in the image's /etc/passwd"
        );
        let err = resolve_user(tmp.path(), "app:wheel").unwrap_err();
        assert!(err.to_string().contains("no group \"wheel\""), "{err}");
    }
}
