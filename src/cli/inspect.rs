#![forbid(unsafe_code)]
//! `metalor inspect IMAGE`: print an image's manifest, config and platform
//! summary as JSON.
//!
//! IMAGE is `oci:DIR[:REF]` or `DIR[:REF]`. Registry sources (`docker://`)
//! are refused for now; pull them into a layout first.

use anyhow::{bail, Context, Result};
use metalor::oci::{ImageLayout, LayoutRef, OciError, Platform, ResolvedImage};
use serde_json::{json, Map, Value};
use std::io::Write;

/// The fields of an image config's `config` section worth showing; the
/// rest (labels, volumes, healthchecks) is noise for a rootfs tool.
const CONFIG_FIELDS: [&str; 5] = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User"];

/// Arguments of `metalor inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The image: oci:DIR[:REF] or DIR[:REF].
    pub image: String,
    /// The platform to choose from an index, linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    pub platform: Option<String>,
}

/// Resolves the image and prints its summary as pretty JSON on stdout.
pub fn run(args: &InspectArgs) -> Result<()> {
    let summary = summarize(args)?;
    let text = serde_json::to_string_pretty(&summary).context("encode inspect output")?;
    // A closed pipe (`metalor inspect X | head`) is the reader's choice,
    // not an error worth a panic.
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

/// Builds the JSON summary; separate from printing so it can be tested.
fn summarize(args: &InspectArgs) -> Result<Value> {
    let layout_ref = parse_image(&args.image)?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text)?,
        None => Platform::host(),
    };
    let layout = ImageLayout::open(&layout_ref.dir)?;
    let image = layout
        .resolve(layout_ref.reference.as_deref(), &platform)
        .with_context(|| format!("inspect {}", args.image))?;
    Ok(describe(&args.image, &layout_ref, &image))
}

/// Parses IMAGE, turning a registry source into a pointed hint.
fn parse_image(image: &str) -> Result<LayoutRef> {
    match LayoutRef::parse(image) {
        Err(OciError::UnsupportedTransport { transport, .. }) if transport == "docker://" => bail!(
            "inspect {image}: docker:// sources are not supported yet; \
             run `metalor pull {image} oci:DIR:REF` and inspect oci:DIR:REF"
        ),
        other => Ok(other?),
    }
}

/// The summary object.
fn describe(input: &str, layout_ref: &LayoutRef, image: &ResolvedImage) -> Value {
    let layers: Vec<Value> = image
        .layers
        .iter()
        .map(|layer| {
            json!({
                "digest": layer.digest,
                "size": layer.size,
                "mediaType": layer.media_type,
                "diffId": layer.diff_id,
            })
        })
        .collect();
    let mut summary = json!({
        "reference": input,
        "layout": layout_ref.dir,
        "ref": layout_ref.reference,
        "manifestDigest": image.manifest_digest,
        "manifestMediaType": image.manifest_media_type,
        "configDigest": image.config_digest,
        "platform": image.platform,
        "layers": layers,
    });
    if let Some(config) = runtime_config(&image.config_bytes) {
        summary["config"] = Value::Object(config);
    }
    summary
}

/// Picks [`CONFIG_FIELDS`] from the config's `config` section, if any.
/// The config bytes were verified and parsed during resolution, so a parse
/// failure here cannot happen in practice and simply omits the section.
fn runtime_config(config_bytes: &[u8]) -> Option<Map<String, Value>> {
    let config: Value = serde_json::from_slice(config_bytes).ok()?;
    let section = config.get("config")?.as_object()?;
    let picked: Map<String, Value> = CONFIG_FIELDS
        .iter()
        .filter_map(|&key| Some((key.to_owned(), section.get(key)?.clone())))
        .collect();
    Some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalor::oci::Digest;
    use std::path::Path;

    /// Stores a blob in a layout and returns its descriptor.
    fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
        let digest = Digest::sha256_of(bytes);
        std::fs::write(dir.join("blobs/sha256").join(digest.hex()), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    fn one_layer_layout(dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layer = blob(dir, "application/vnd.oci.image.layer.v1.tar", b"layer");
        let config = json!({
            "os": "linux", "architecture": "arm64",
            "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(b"layer")]},
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Labels": {"a": "b"}},
        });
        let config = blob(
            dir,
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let manifest = json!({"schemaVersion": 2, "config": config, "layers": [layer]});
        let mut manifest = blob(
            dir,
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        manifest["annotations"] = json!({"org.opencontainers.image.ref.name": "image"});
        let index = json!({"schemaVersion": 2, "manifests": [manifest]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    #[test]
    fn summarizes_a_layout_image() {
        let dir = tempfile::tempdir().unwrap();
        one_layer_layout(dir.path());
        let args = InspectArgs {
            image: format!("oci:{}:image", dir.path().display()),
            platform: None,
        };
        let summary = summarize(&args).unwrap();
        assert_eq!(summary["ref"], "image");
        assert_eq!(summary["platform"]["architecture"], "arm64");
        assert_eq!(summary["layers"][0]["size"], 5);
        assert_eq!(summary["config"]["Cmd"][0], "sh");
        assert!(summary["config"].get("Labels").is_none());
    }

    #[test]
    fn refuses_registry_sources_with_a_hint() {
        let args = InspectArgs {
            image: "docker://127.0.0.1:5000/alpine:3".to_owned(),
            platform: None,
        };
        let err = summarize(&args).unwrap_err().to_string();
        assert!(
            err.contains("not supported yet") && err.contains("metalor pull"),
            "{err}"
        );
    }
}
