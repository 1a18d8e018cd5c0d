//! Fuzz the index, manifest and image config parsers and the platform
//! walk. A document that parses must read the same after a JSON
//! re-serialisation.
//!
//! Input: blobs separated by a NUL byte. The first is parsed alone (and
//! under each claimed type); then all of them drive one walk, the `n`th
//! blob answering the walk's `n`th request.
//!
//! Run: `cargo +nightly fuzz run documents` from the repository root.
#![no_main]

use metalor::oci::{fuzz_document, fuzz_walk, Platform};

const CLAIMS: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let blobs: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    for claimed in CLAIMS {
        check_document(claimed, blobs[0]);
    }
    let wanted = [("amd64", None), ("arm64", Some("v8")), ("arm", Some("v7"))];
    for (architecture, variant) in wanted {
        let wanted = Platform::from_image("linux", architecture, variant);
        let _ = fuzz_walk(&wanted, &blobs);
    }
});

fn check_document(claimed: Option<&str>, bytes: &[u8]) {
    let Ok(parsed) = fuzz_document(claimed, bytes) else {
        return;
    };
    // serde skips unknown fields without checking their strings are UTF-8,
    // so an accepted document may not be JSON a strict reader takes. That
    // divergence cannot change what the known fields say; any other one is
    // a bug.
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(_) if std::str::from_utf8(bytes).is_err() => return,
        Err(e) => panic!("a parsed document is not JSON: {e}"),
    };
    let again = serde_json::to_vec(&value).expect("JSON re-serialises");
    let reparsed = fuzz_document(claimed, &again);
    assert_eq!(reparsed.as_ref().ok(), Some(&parsed), "{claimed:?}");
}
