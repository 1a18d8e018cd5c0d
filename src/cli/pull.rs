//! `metalor pull [--platform linux/ARCH] [--insecure] [--quiet] SOURCE [oci:DIR[:REF]]`
//!
//! With no destination, the image goes into the store (`--store`).
#![forbid(unsafe_code)]

use anyhow::Context;
use metalor::oci::registry::{self, PullOptions};

use super::progress::Bars;

/// Arguments of `metalor pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Platform to pick from an index, as linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    platform: Option<String>,
    /// Use plain HTTP for this registry even when it is not on loopback.
    #[arg(long)]
    insecure: bool,
    /// No progress and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// docker://HOST[:PORT]/REPO[:TAG|@DIGEST], a bare reference, or
    /// oci:DIR[:REF].
    source: String,
    /// The destination layout, oci:DIR[:REF]; REF defaults to the source
    /// tag, else `latest`. Without it, the image goes into the store.
    destination: Option<String>,
    /// The image store, when there is no destination.
    #[arg(long, value_name = "DIR", conflicts_with = "destination")]
    store: Option<std::path::PathBuf>,
}

/// Pulls the image and prints a one-line summary unless `--quiet`.
pub fn run(args: &PullArgs) -> anyhow::Result<()> {
    // Before the runtime's threads start, so that they inherit the blocked
    // mask: Ctrl-C or a SIGTERM then removes the registered temporaries
    // and exits 130 or 143.
    metalor::cleanup::remove_temporaries_on_signal()
        .context("block SIGINT and SIGTERM for the cleanup thread")?;
    let platform = super::platform_arg(args.platform.as_deref())?;
    let options = PullOptions {
        platform,
        insecure: args.insecure,
        progress: Bars::new(args.quiet).pull_events(),
        ..PullOptions::default()
    };
    let Some(destination) = &args.destination else {
        let store = super::run_image::open_store(args.store.as_ref())?;
        let image = store.pull(&args.source, &options)?;
        if !args.quiet {
            eprintln!(
                "pulled {} as {} into {}",
                image.reference,
                image.resolved.manifest_digest,
                store.path().display()
            );
        }
        return Ok(());
    };
    // The error already starts with `pull SOURCE`, and a failure at the
    // destination names its path; more context would say it all twice.
    let report = registry::pull_str(&args.source, destination, &options)?;
    if !args.quiet {
        eprintln!(
            "pulled {} as {} ({} blobs, {} bytes fetched)",
            report.manifest_digest, report.ref_name, report.blobs, report.bytes_fetched
        );
    }
    Ok(())
}
