//! `metalor run --image REF`: the image from the store (pulled as
//! `--pull` says, unpacked once), run on an overlay of its pristine tree
//! with the image config's Entrypoint, Cmd, Env, WorkingDir and User.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use metalor::oci::registry::PullOptions;
use metalor::runtime::linux::{check_upper_dir, OverlayUpper};
use metalor::store::{resolve_user, PullPolicy, Store};
use metalor::ContainerRunCommand;

use super::inner::{ENV_OVERLAY_LOWER, ENV_OVERLAY_UPPER, ENV_OVERLAY_USERXATTR, ENV_RUN_USER};
use super::progress::Bars;
use super::run::{exec_run, RunArgs};

/// The `--image` flags of `metalor run`.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Run this image from the store (in place of --rootfs).
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// When to pull the image: missing, always or never.
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "missing",
        requires = "image"
    )]
    pull: String,
    /// Keep the run's writes in DIR, an overlay upper dir (default: a
    /// tmpfs per run, whose writes vanish with it).
    #[arg(
        long,
        value_name = "DIR",
        requires = "image",
        conflicts_with = "read_only"
    )]
    upper: Option<PathBuf>,
    /// Refuse every write to the root (binds keep their own modes).
    #[arg(long, requires = "image")]
    read_only: bool,
    /// Replace the image's Entrypoint (and drop its Cmd); empty clears it.
    #[arg(long, value_name = "CMD", requires = "image")]
    entrypoint: Option<String>,
    /// Run as USER[:GROUP] (names or ids from the image's /etc/passwd and
    /// /etc/group) instead of the image's User.
    #[arg(long, value_name = "USER[:GROUP]", requires = "image")]
    user: Option<String>,
    /// The image store (default: $METALOR_STORE, /var/lib/metalor for root,
    /// else $XDG_DATA_HOME/metalor).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Plain HTTP for a registry that is not on loopback.
    #[arg(long, requires = "image")]
    insecure: bool,
    /// Say nothing about pulling and unpacking.
    #[arg(long, short, requires = "image")]
    quiet: bool,
}

/// Opens `--store`, or the default store.
pub fn open_store(store: Option<&PathBuf>) -> Result<Store> {
    let dir = match store {
        Some(dir) => dir.clone(),
        None => Store::default_dir()?,
    };
    Ok(Store::open(&dir)?)
}

fn pull_policy(value: &str) -> Result<PullPolicy> {
    Ok(match value {
        "missing" => PullPolicy::Missing,
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        other => bail!("invalid --pull {other}: expected missing, always or never"),
    })
}

/// Resolves, unpacks and runs the image; see the module doc.
pub fn run(args: &RunArgs) -> Result<Infallible> {
    let flags = args.image_args();
    let Some(reference) = &flags.image else {
        bail!("metalor run needs --rootfs DIR or --image REF");
    };
    if args.arch().is_some() {
        bail!("--arch is not supported with --image yet: run a host-architecture image");
    }
    let policy = pull_policy(&flags.pull)?;
    let upper = upper_mode(flags)?;
    let store = open_store(flags.store.as_ref())?;
    let options = PullOptions {
        insecure: flags.insecure,
        progress: Bars::new(flags.quiet).pull_events(),
        ..PullOptions::default()
    };
    // Held until this process exits: the waiting parent of the run keeps
    // the tree's shared lock, so `prune` leaves the tree alone meanwhile.
    // A pulled image is unpacked while it downloads.
    let (image, tree) = store.image_and_tree(reference, policy, &options)?;
    if image.pulled && !flags.quiet {
        eprintln!(
            "pulled {} ({})",
            image.reference, image.resolved.manifest_digest
        );
    }
    if tree.made() && !flags.quiet {
        eprintln!(
            "unpacked {} into {}",
            image.reference,
            tree.path().display()
        );
    }
    let config = image.config()?;
    let entrypoint = flags.entrypoint.as_ref().map(|e| match e.is_empty() {
        true => Vec::new(),
        false => vec![e.clone()],
    });
    let argv = config.command(entrypoint.as_deref(), args.command());
    let Some((executable, rest)) = argv.split_first() else {
        bail!(
            "image {} sets no Entrypoint or Cmd: give a command after --",
            image.reference
        );
    };
    let user = match flags.user.as_deref().or(config.user.as_deref()) {
        Some(spec) => Some(resolve_user(tree.path(), spec)?),
        None => None,
    };
    let prefix = store.mount_prefix();
    let command = ContainerRunCommand {
        root: prefix.join(tree.key()),
        cwd: args
            .cwd()
            .or(config.working_dir.as_deref())
            .unwrap_or("/")
            .to_owned(),
        mounts: args.parsed_binds()?,
        env: config.environment(&args.parsed_env()?),
        emulator: None,
        executable: executable.clone(),
        argv: rest.to_vec(),
    };
    let mut env: Vec<(&str, OsString)> = vec![
        (ENV_OVERLAY_LOWER, tree.path().into()),
        (ENV_OVERLAY_UPPER, upper),
    ];
    if args.rootless() {
        env.push((ENV_OVERLAY_USERXATTR, "1".into()));
    }
    if let Some((uid, gid)) = user.filter(|&ids| ids != (0, 0)) {
        env.push((ENV_RUN_USER, format!("{uid}:{gid}").into()));
    }
    let started = exec_run(args, &prefix, &command, &env);
    drop(tree);
    started
}

/// `tmpfs`, `ro` or `dir:PATH` for the inner verb; an `--upper` is
/// checked and created here, as the caller.
fn upper_mode(flags: &ImageArgs) -> Result<OsString> {
    if flags.read_only {
        return Ok("ro".into());
    }
    let Some(dir) = &flags.upper else {
        return Ok("tmpfs".into());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("failed to canonicalize {}", dir.display()))?;
    check_upper_dir(&dir)?;
    let work = OverlayUpper::work_dir_for(&dir);
    std::fs::create_dir_all(&work)
        .with_context(|| format!("failed to create {}", work.display()))?;
    let mut mode = OsString::from("dir:");
    mode.push(dir);
    Ok(mode)
}
