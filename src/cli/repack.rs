//! `metalor repack --image DIR[:REF] (--rootfs ROOTFS | --upper UPPER) --tag NEW`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use metalor::oci::{Compression, LayoutRef};
use metalor::repack::{repack, Changes, RepackOptions};

use super::progress::Bars;

/// The layer compressions `--compression` takes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LayerCompression {
    Gzip,
    Zstd,
}

/// Arguments of `metalor repack`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("changes").required(true).args(["rootfs", "upper"]))]
pub struct RepackArgs {
    /// The image the changes were made on: an OCI layout as DIR[:REF] or
    /// oci:DIR[:REF]. The new image goes into the same layout.
    #[arg(long)]
    image: String,
    /// A rootfs unpacked from the image and changed since: it is diffed
    /// against what the image unpacks to.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// An overlayfs upper dir whose lower dir was the image's rootfs.
    #[arg(long)]
    upper: Option<PathBuf>,
    /// The ref name the new image gets in the layout.
    #[arg(long)]
    tag: String,
    /// The new layer's compression.
    #[arg(long, value_enum, default_value = "gzip")]
    compression: LayerCompression,
    /// Compare regular files by content too, not only by size, mtime,
    /// mode, owner and xattrs (rootfs form).
    #[arg(long)]
    hash: bool,
    /// Platform to pick from an index, as linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    platform: Option<String>,
    /// No progress and no summary.
    #[arg(long, short)]
    quiet: bool,
}

/// Repacks the changes into a new layer and image, and prints the new
/// manifest digest on stdout.
pub fn run(args: &RepackArgs) -> anyhow::Result<()> {
    metalor::cleanup::remove_temporaries_on_signal()
        .context("block SIGINT and SIGTERM for the cleanup thread")?;
    let source = LayoutRef::parse(&args.image)?;
    let platform = super::platform_arg(args.platform.as_deref())?;
    let changes = match (&args.rootfs, &args.upper) {
        (Some(rootfs), _) => Changes::Rootfs(rootfs),
        (None, Some(upper)) => Changes::Upper(upper),
        (None, None) => anyhow::bail!("repack needs --rootfs or --upper"),
    };
    let options = RepackOptions {
        compression: match args.compression {
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        },
        hash: args.hash,
        source_date_epoch: source_date_epoch()?,
        ..RepackOptions::default()
    };
    // One bar per scanned layer, drawn as each layer is stacked (the
    // layers decode on worker threads).
    let bars = Bars::new(args.quiet);
    let repacked = repack(
        &source.dir,
        source.reference.as_deref(),
        &platform,
        changes,
        &args.tag,
        &options,
        &mut |i, total, layer| {
            let bar = bars.layer_bar(i, total, layer.size);
            bar.set_position(layer.size);
            bar.finish_with_message("scanned");
        },
    )
    .with_context(|| format!("repack {} as {}", args.image, args.tag))?;
    if !args.quiet {
        eprintln!(
            "repacked {} as {}: layer {} ({} entries, {} bytes)",
            args.image, args.tag, repacked.layer, repacked.entries, repacked.layer_size
        );
    }
    println!("{}", repacked.manifest);
    Ok(())
}

/// `SOURCE_DATE_EPOCH`, when set: seconds since the epoch.
fn source_date_epoch() -> anyhow::Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) if !value.is_empty() => value
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")),
        _ => Ok(None),
    }
}
