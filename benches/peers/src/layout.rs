//! Reading a local OCI image layout: `index.json`, then the tagged manifest,
//! then its layer blobs. Only what the drivers need, and no more trusting
//! than metalor: digests must look like digests before they become paths.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Descriptor>,
}

/// One layer blob of the image, in manifest order (base first).
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub path: PathBuf,
}

/// The layers of `LAYOUT:TAG`, base first.
pub fn layers(layout_tag: &str) -> Result<Vec<Layer>> {
    let (dir, tag) = layout_tag
        .rsplit_once(':')
        .with_context(|| format!("{layout_tag}: expected LAYOUT:TAG"))?;
    let dir = Path::new(dir);
    let index: Index = read_json(&dir.join("index.json"))?;
    let found: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
        .collect();
    let manifest = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "{}: no manifest tagged {tag:?}",
            dir.join("index.json").display()
        ),
        _ => bail!(
            "{}: {} manifests tagged {tag:?}",
            dir.join("index.json").display(),
            found.len()
        ),
    };
    ensure!(
        MANIFEST_TYPES.contains(&manifest.media_type.as_str()),
        "{tag}: {} is a {}, not an image manifest",
        manifest.digest,
        manifest.media_type
    );
    let manifest_path = blob_path(dir, &manifest.digest)?;
    let manifest: Manifest = read_json(&manifest_path)?;
    manifest
        .layers
        .into_iter()
        .map(|d| {
            let path = blob_path(dir, &d.digest)?;
            ensure!(
                path.is_file(),
                "layer {}: no blob at {}",
                d.digest,
                path.display()
            );
            Ok(Layer {
                digest: d.digest,
                media_type: d.media_type,
                path,
            })
        })
        .collect()
}

/// `blobs/ALG/ENCODED` for a digest, refusing anything that could leave `blobs/`.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, encoded) = digest
        .split_once(':')
        .with_context(|| format!("digest {digest:?}: expected ALGORITHM:ENCODED"))?;
    let alg_ok = alg.starts_with(|c: char| c.is_ascii_alphanumeric())
        && alg
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
    let encoded_ok = !encoded.is_empty()
        && encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=_-".contains(c));
    ensure!(
        alg_ok && encoded_ok,
        "digest {digest:?}: not a valid OCI digest"
    );
    Ok(dir.join("blobs").join(alg).join(encoded))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
}
