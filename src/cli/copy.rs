//! `metalor copy [--all] SRC DST` (skopeo's verb, any direction) and
//! `metalor push SRC DST` (a layout to a registry).
//!
//! Progress: with a terminal on stderr and no `--quiet`, one bar per blob
//! pushed ([`Bars::push_events`]); the pull half of a copy draws none yet.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use metalor::oci::registry::{self, PushOptions, PushReport};

use super::progress::Bars;

/// Flags `copy` and `push` share.
#[derive(clap::Args, Debug)]
pub struct TransferFlags {
    /// Platform to pick from an index, as linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    platform: Option<String>,
    /// Use plain HTTP for the registry even when it is not on loopback.
    #[arg(long)]
    insecure: bool,
    /// Read credentials from this auth file (skopeo's auth.json format)
    /// instead of the standard ones.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// No progress and no summary.
    #[arg(long, short)]
    quiet: bool,
}

/// Arguments of `metalor copy`.
#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// Copy an index whole, with every manifest it names (not between two
    /// layouts).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    flags: TransferFlags,
    /// docker://HOST[:PORT]/REPO[:TAG|@DIGEST], a bare reference, or
    /// oci:DIR[:REF].
    source: String,
    /// The same forms as the source.
    destination: String,
}

/// Arguments of `metalor push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Push an index whole, with every manifest it names.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    flags: TransferFlags,
    /// The layout image, oci:DIR[:REF] or DIR[:REF].
    source: String,
    /// docker://HOST[:PORT]/REPO[:TAG] or a bare reference.
    destination: String,
}

/// Copies and prints a one-line summary unless `--quiet`.
pub fn run_copy(args: &CopyArgs) -> anyhow::Result<()> {
    let options = options(&args.flags, args.all)?;
    // The error starts with `pull …` or `push …` and names the blob or
    // manifest; more context would say it twice.
    let report = registry::copy_str(&args.source, &args.destination, &options)?;
    if !args.flags.quiet {
        match (&report.push, &report.pull) {
            (Some(push), _) => summarize(push),
            (None, Some(pull)) => eprintln!(
                "copied {} as {} ({} blobs, {} bytes fetched)",
                pull.manifest_digest, pull.ref_name, pull.blobs, pull.bytes_fetched
            ),
            (None, None) => {}
        }
    }
    Ok(())
}

/// Pushes and prints a one-line summary unless `--quiet`.
pub fn run_push(args: &PushArgs) -> anyhow::Result<()> {
    let options = options(&args.flags, args.all)?;
    let report = registry::push_str(&args.source, &args.destination, &options)?;
    if !args.flags.quiet {
        summarize(&report);
    }
    Ok(())
}

/// The options from the flags; also readies interrupt cleanup (a
/// registry-to-registry copy has a temp layout).
fn options(flags: &TransferFlags, all: bool) -> anyhow::Result<PushOptions> {
    metalor::cleanup::remove_temporaries_on_signal()
        .context("block SIGINT and SIGTERM for the cleanup thread")?;
    let platform = super::platform_arg(flags.platform.as_deref())?;
    Ok(PushOptions {
        platform,
        all,
        insecure: flags.insecure,
        auth_file: flags.authfile.clone(),
        progress: Bars::new(flags.quiet).push_events(),
        ..PushOptions::default()
    })
}

fn summarize(report: &PushReport) {
    let digest = report
        .digest
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    eprintln!(
        "pushed {digest} to {} ({} blobs: {} uploaded, {} mounted, {} present; {} bytes sent)",
        report.reference,
        report.blobs,
        report.uploaded,
        report.mounted,
        report.present,
        report.bytes_uploaded
    );
}
