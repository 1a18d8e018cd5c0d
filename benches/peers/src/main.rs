//! `peers`: unpack an OCI image with one of metalor's Rust peers, for
//! `benches/compare.sh`. Each driver is the shortest honest use of the
//! peer's public API, with its defaults. oci-unpack checks blob digests as
//! it downloads; none of them checks a diff_id.
//!
//!   peers oci-image  LAYOUT:TAG DEST       apply_layer_file per layer
//!   peers ocirender  LAYOUT:TAG DEST       convert_streaming to a directory
//!   peers oci-unpack 127.0.0.1:PORT/REPO:TAG DEST
//!                                          pull over plain HTTP (loopback),
//!                                          rootfs lands in DEST/rootfs

mod layout;

use std::convert::Infallible;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

const USAGE: &str = "usage: peers oci-image|ocirender LAYOUT:TAG DEST\n       \
                     peers oci-unpack 127.0.0.1:PORT/REPO:TAG DEST";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["oci-image", image, dest] => oci_image(image, Path::new(dest)),
        ["ocirender", image, dest] => ocirender(image, Path::new(dest)),
        ["oci-unpack", reference, dest] => oci_unpack(reference, Path::new(dest)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// oci-image: each layer blob applied in turn onto `dest`, with the crate's
/// default options (all cores, parallel gzip where the blob allows it,
/// owners kept as root).
fn oci_image(image: &str, dest: &Path) -> Result<()> {
    let layers = layout::layers(image)?;
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let opts = oci_image::UnpackOptions::default();
    for layer in &layers {
        oci_image::apply_layer_file(&layer.path, dest, &opts).with_context(|| {
            format!(
                "oci-image: apply layer {} ({}) onto {}",
                layer.digest,
                layer.path.display(),
                dest.display()
            )
        })?;
    }
    Ok(())
}

/// ocirender: all layers handed over at once as a stream of local blobs,
/// merged into the directory `dest`.
fn ocirender(image: &str, dest: &Path) -> Result<()> {
    let layers = layout::layers(image)?;
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    let total = layers.len();
    let blobs = layers.into_iter().enumerate().map(|(index, l)| {
        Ok::<_, Infallible>(ocirender::LayerBlob {
            path: l.path,
            media_type: l.media_type,
            index,
        })
    });
    let spec = ocirender::ImageSpec::Dir {
        path: dest.to_path_buf(),
    };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("ocirender: start the tokio runtime")?
        .block_on(ocirender::convert_streaming(
            futures_util::stream::iter(blobs),
            total,
            spec,
        ))
        .with_context(|| {
            format!(
                "ocirender: layers {} into {}",
                digests.join(", "),
                dest.display()
            )
        })
}

/// oci-unpack: pull `reference` (plain HTTP, since it is a loopback address)
/// and unpack it under `dest/rootfs`, without the optional Landlock sandbox.
fn oci_unpack(reference: &str, dest: &Path) -> Result<()> {
    let parsed = oci_unpack::Reference::try_from(reference)
        .map_err(|e| anyhow!("oci-unpack: reference {reference:?}: {e}"))?;
    oci_unpack::Unpacker::new(parsed)
        .require_sandbox(false)
        .unpack(dest)
        .with_context(|| format!("oci-unpack: pull {reference} into {}", dest.display()))
}
