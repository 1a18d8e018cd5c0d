#![forbid(unsafe_code)]
//! `metalor inspect [--raw | --config] IMAGE`: print an image's summary as
//! JSON, or its manifest or config exactly as stored.
//!
//! IMAGE is `oci:DIR[:REF]`, `DIR[:REF]` or `docker://HOST/REPO[:TAG|@DIGEST]`.
//! For a layout the summary names the layout, ref, manifest, config,
//! platform and layers. For a registry it is `skopeo inspect`'s shape
//! (`Name`, `Digest`, `RepoTags`, `Created`, `Architecture`, `Os`,
//! `Layers`, `LayersData`, `Env`…), so that users of one recognize the
//! other. `--raw` prints the manifest or index the reference names, byte
//! for byte and without resolving an index; `--config` prints the config
//! blob of the image chosen for `--platform`, byte for byte (skopeo's
//! `--config --raw`).

use anyhow::{Context, Result};
use metalor::oci::registry::remote::{self, RemoteImage};
use metalor::oci::registry::{ImageReference, PullOptions};
use metalor::oci::{ImageLayout, LayoutRef, Platform, ResolvedImage};
use serde_json::{json, Map, Value};
use std::io::Write;

/// The fields of an image config's `config` section worth showing; the
/// rest (labels, volumes, healthchecks) is noise for a rootfs tool.
const CONFIG_FIELDS: [&str; 5] = ["Env", "Cmd", "Entrypoint", "WorkingDir", "User"];

/// Arguments of `metalor inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The image: oci:DIR[:REF], DIR[:REF] or docker://HOST/REPO[:TAG|@DIGEST].
    pub image: String,
    /// The platform to choose from an index, linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    pub platform: Option<String>,
    /// Print the manifest (or index) exactly as stored or served.
    #[arg(long)]
    pub raw: bool,
    /// Print the image's config blob exactly as stored or served.
    #[arg(long)]
    pub config: bool,
    /// Use plain HTTP for this registry even when it is not on loopback.
    #[arg(long)]
    pub insecure: bool,
}

/// What `inspect` prints.
enum Output {
    /// A summary, printed as pretty JSON.
    Json(Value),
    /// Bytes printed as they are.
    Bytes(Vec<u8>),
}

/// Resolves the image and prints what was asked for on stdout.
pub fn run(args: &InspectArgs) -> Result<()> {
    let bytes = match produce(args)? {
        Output::Json(summary) => {
            let mut text = serde_json::to_vec_pretty(&summary).context("encode inspect output")?;
            text.push(b'\n');
            text
        }
        Output::Bytes(bytes) => bytes,
    };
    // A closed pipe (`metalor inspect X | head`) is the reader's choice,
    // not an error worth a panic.
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

/// The platform `--platform` names, else the host's.
fn platform(args: &InspectArgs) -> Result<Platform> {
    super::platform_arg(args.platform.as_deref())
}

/// Builds the output; separate from printing so it can be tested.
fn produce(args: &InspectArgs) -> Result<Output> {
    if args.image.starts_with("docker://") {
        return produce_remote(args).with_context(|| format!("inspect {}", args.image));
    }
    let layout_ref = LayoutRef::parse(&args.image)?;
    let layout = ImageLayout::open(&layout_ref.dir)?;
    let reference = layout_ref.reference.as_deref();
    if args.raw && !args.config {
        let (_, _, bytes) = layout
            .top_document(reference)
            .with_context(|| format!("inspect {}", args.image))?;
        return Ok(Output::Bytes(bytes));
    }
    let image = layout
        .resolve(reference, &platform(args)?)
        .with_context(|| format!("inspect {}", args.image))?;
    if args.config {
        return Ok(Output::Bytes(image.config_bytes));
    }
    Ok(Output::Json(describe(&args.image, &layout_ref, &image)))
}

/// `inspect docker://…`: one registry session for what was asked.
fn produce_remote(args: &InspectArgs) -> Result<Output> {
    let reference = ImageReference::parse(&args.image)?;
    let options = PullOptions {
        platform: platform(args)?,
        insecure: args.insecure,
        ..PullOptions::default()
    };
    if args.raw && !args.config {
        let manifest = remote::fetch_raw_manifest(&reference, &options)?;
        return Ok(Output::Bytes(manifest.bytes));
    }
    if args.config {
        let image = remote::resolve_image(&reference, &options)?;
        return Ok(Output::Bytes(image.config));
    }
    let (image, tags) = remote::inspect(&reference, &options)?;
    Ok(Output::Json(describe_remote(&reference, &image, tags)))
}

/// skopeo inspect's summary of a registry image.
fn describe_remote(reference: &ImageReference, image: &RemoteImage, tags: Vec<String>) -> Value {
    let config: Value = serde_json::from_slice(&image.config).unwrap_or(Value::Null);
    let section = config.get("config").unwrap_or(&Value::Null);
    let layers_data: Vec<Value> = image
        .layers
        .iter()
        .map(|l| {
            json!({
                "MIMEType": l.media_type,
                "Digest": l.digest,
                "Size": l.size,
                "Annotations": if l.annotations.is_empty() { Value::Null } else { json!(l.annotations) },
            })
        })
        .collect();
    let mut summary = json!({
        "Name": format!("{}/{}", reference.registry, reference.repository),
        "Digest": image.digest,
        "RepoTags": tags,
    });
    let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    if let Some(created) = config.get("created") {
        summary["Created"] = created.clone();
    }
    summary["DockerVersion"] = json!(config
        .get("docker_version")
        .and_then(Value::as_str)
        .unwrap_or(""));
    summary["Labels"] = field(section.get("Labels"));
    summary["Architecture"] = field(config.get("architecture"));
    if let Some(variant) = config
        .get("variant")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        summary["Variant"] = variant.clone();
    }
    summary["Os"] = field(config.get("os"));
    summary["Layers"] = json!(image.layers.iter().map(|l| &l.digest).collect::<Vec<_>>());
    summary["LayersData"] = json!(layers_data);
    summary["Env"] = field(section.get("Env"));
    summary
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

    fn args(image: String) -> InspectArgs {
        InspectArgs {
            image,
            platform: None,
            raw: false,
            config: false,
            insecure: false,
        }
    }

    fn bytes(args: &InspectArgs) -> Vec<u8> {
        match produce(args).unwrap() {
            Output::Bytes(bytes) => bytes,
            Output::Json(v) => panic!("expected bytes, got {v}"),
        }
    }

    #[test]
    fn summarizes_a_layout_image() {
        let dir = tempfile::tempdir().unwrap();
        one_layer_layout(dir.path());
        let Output::Json(summary) =
            produce(&args(format!("oci:{}:image", dir.path().display()))).unwrap()
        else {
            panic!("expected a summary");
        };
        assert_eq!(summary["ref"], "image");
        assert_eq!(summary["platform"]["architecture"], "arm64");
        assert_eq!(summary["layers"][0]["size"], 5);
        assert_eq!(summary["config"]["Cmd"][0], "sh");
        assert!(summary["config"].get("Labels").is_none());
    }

    #[test]
    fn raw_and_config_print_the_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        one_layer_layout(dir.path());
        let mut a = args(format!("oci:{}:image", dir.path().display()));
        a.raw = true;
        let manifest = bytes(&a);
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            Digest::sha256_of(&manifest).to_string(),
            index["manifests"][0]["digest"].as_str().unwrap()
        );
        a.config = true;
        let config = bytes(&a);
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(
            Digest::sha256_of(&config).to_string(),
            manifest["config"]["digest"].as_str().unwrap()
        );
    }

    #[test]
    fn a_bad_registry_reference_names_it() {
        let err = produce(&args("docker://127.0.0.1:5000/UPPER:x".to_owned()))
            .err()
            .expect("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains("inspect docker://127.0.0.1:5000/UPPER:x"),
            "{text}"
        );
    }
}
