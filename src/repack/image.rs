//! The new image's documents: the config with the new diff_id and history
//! entry, and the manifest with the new layer. Everything else in both is
//! kept as it was, unknown fields included.
#![forbid(unsafe_code)]

use serde_json::{json, Value};

use super::error::RepackError;
use super::write::WrittenLayer;
use super::RepackOptions;
use crate::oci::{media, Compression, Digest, ResolvedImage};

/// Refuses a compression the image's manifest type cannot declare: a
/// Docker manifest has no zstd or plain-tar layer type metalor writes.
pub(crate) fn check_compression(
    image: &ResolvedImage,
    compression: Compression,
) -> Result<(), RepackError> {
    if image.manifest_media_type == media::DOCKER_MANIFEST && compression != Compression::Gzip {
        return Err(image_err(
            "manifest",
            &image.manifest_digest,
            format!(
                "a Docker manifest cannot declare a {} layer",
                compression.name()
            ),
        ));
    }
    Ok(())
}

/// The layer media type for the manifest's own family.
fn layer_media_type(manifest_media_type: &str, compression: Compression) -> &'static str {
    match (manifest_media_type == media::DOCKER_MANIFEST, compression) {
        (true, _) => media::DOCKER_LAYER_TAR_GZIP,
        (false, Compression::Gzip) => media::OCI_LAYER_TAR_GZIP,
        (false, Compression::Zstd) => media::OCI_LAYER_TAR_ZSTD,
        (false, Compression::None) => media::OCI_LAYER_TAR,
    }
}

/// The config with `diff_id` appended to `rootfs.diff_ids`, a history
/// entry for the layer, and `created` set to the same time.
pub(crate) fn new_config(
    image: &ResolvedImage,
    diff_id: &Digest,
    created: &str,
    created_by: &str,
) -> Result<Vec<u8>, RepackError> {
    let bad = |reason: &str| image_err("config", &image.config_digest, reason.to_owned());
    let mut config: Value =
        serde_json::from_slice(&image.config_bytes).map_err(|e| bad(&e.to_string()))?;
    let object = config
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object"))?;
    object.insert("created".into(), json!(created));
    let rootfs = object
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("rootfs.diff_ids is not a list"))?
        .push(json!(diff_id.as_str()));
    let history = object.entry("history").or_insert_with(|| json!([]));
    history
        .as_array_mut()
        .ok_or_else(|| bad("history is not a list"))?
        .push(json!({"created": created, "created_by": created_by}));
    serde_json::to_vec(&config).map_err(|e| bad(&e.to_string()))
}

/// The manifest with the new config descriptor and the new layer last.
pub(crate) fn new_manifest(
    image: &ResolvedImage,
    config: &Digest,
    config_size: usize,
    layer: &WrittenLayer,
    options: &RepackOptions,
) -> Result<Vec<u8>, RepackError> {
    let bad = |reason: &str| image_err("manifest", &image.manifest_digest, reason.to_owned());
    let mut manifest: Value =
        serde_json::from_slice(&image.manifest_bytes).map_err(|e| bad(&e.to_string()))?;
    let config_desc = manifest
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("no config descriptor"))?;
    config_desc.insert("digest".into(), json!(config.as_str()));
    config_desc.insert("size".into(), json!(config_size));
    let media_type = layer_media_type(&image.manifest_media_type, options.compression);
    manifest
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("layers is not a list"))?
        .push(json!({
            "mediaType": media_type,
            "digest": layer.digest.as_str(),
            "size": layer.size,
        }));
    serde_json::to_vec(&manifest).map_err(|e| bad(&e.to_string()))
}

fn image_err(what: &'static str, digest: &Digest, reason: String) -> RepackError {
    RepackError::Image {
        what,
        digest: digest.clone(),
        reason,
    }
}

/// `SOURCE_DATE_EPOCH` (or now) as RFC 3339 in UTC, to the second.
pub(crate) fn rfc3339(epoch: Option<u64>) -> String {
    let secs = epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Some(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(Some(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}
