//! `metalor unpack [--platform linux/ARCH] --image DIR[:REF] ROOTFS`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use indicatif::ProgressBar;
use metalor::oci::{ImageLayout, LayoutRef};
use metalor::unpack::{unpack_layers_into, LayerInput, UnpackOptions};

use super::progress::Bars;

/// Arguments of `metalor unpack`.
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// Platform to pick from an index, as linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    platform: Option<String>,
    /// The image: an OCI layout as DIR[:REF] or oci:DIR[:REF].
    #[arg(long)]
    image: String,
    /// Stop when file content exceeds this many bytes (bomb guard).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Stop when the layers hold more than this many entries.
    #[arg(long, value_name = "COUNT")]
    max_entries: Option<u64>,
    /// No progress and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// The rootfs directory to create; it must not exist or be empty.
    rootfs: PathBuf,
}

/// Resolves the image, then applies its layers into a staging directory
/// that is renamed to ROOTFS only when every layer applied and verified.
pub fn run(args: &UnpackArgs) -> anyhow::Result<()> {
    // First, while this is the only thread: Ctrl-C or a SIGTERM then
    // removes the staging directory and exits 130 or 143.
    metalor::cleanup::remove_temporaries_on_signal()
        .context("block SIGINT and SIGTERM for the cleanup thread")?;
    let source = LayoutRef::parse(&args.image)?;
    let platform = super::platform_arg(args.platform.as_deref())?;
    let layout = ImageLayout::open(&source.dir)?;
    let image = layout
        .resolve(source.reference.as_deref(), &platform)
        .with_context(|| format!("resolve image {}", args.image))?;
    let layers = LayerInput::from_layout(&layout, &image)?;
    let options = UnpackOptions {
        max_bytes: args.max_bytes,
        max_entries: args.max_entries,
    };
    let (layers, bars) = with_layer_bars(&Bars::new(args.quiet), layers);
    let stats = unpack_layers_into(&args.rootfs, layers, options, &mut |i, _| {
        if let Some(bar) = bars.get(i) {
            bar.finish_with_message("applied");
        }
    })
    .with_context(|| {
        format!(
            "unpack {} ({}) into {}",
            args.image,
            image.manifest_digest,
            args.rootfs.display()
        )
    })?;
    if !args.quiet {
        eprintln!(
            "unpacked {} layers into {}: {} entries, {} bytes, {} devices skipped, {} xattrs skipped",
            image.layers.len(),
            args.rootfs.display(),
            stats.entries,
            stats.bytes,
            stats.skipped_devices,
            stats.skipped_xattrs
        );
    }
    Ok(())
}

/// One bar per layer, moved by the layer's blob stream as the unpacker
/// reads it. Hidden bars wrap nothing, so the quiet path reads the blobs
/// directly.
fn with_layer_bars(bars: &Bars, layers: Vec<LayerInput>) -> (Vec<LayerInput>, Vec<ProgressBar>) {
    if !bars.is_shown() {
        return (layers, Vec::new());
    }
    let count = layers.len();
    let mut shown = Vec::with_capacity(count);
    let layers = layers
        .into_iter()
        .enumerate()
        .map(|(i, mut layer)| {
            let bar = bars.layer_bar(i, count, layer.size);
            layer.blob = Box::new(bar.wrap_read(layer.blob));
            shown.push(bar);
            layer
        })
        .collect();
    (layers, shown)
}
