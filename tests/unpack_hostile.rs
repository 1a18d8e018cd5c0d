//! Hostile layers. Each test checks the specific error (or, where the
//! semantics say contain, that the effect stayed inside the rootfs), that the
//! canary beside the target is unchanged, and that a failed unpack leaves
//! neither a target nor a staging directory.
#![cfg(target_os = "linux")]

mod common;
mod skip;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use metalor::unpack::{LayerInput, UnpackError, UnpackOptions};

fn one(tar: &Tar) -> Vec<Vec<u8>> {
    vec![tar.finish()]
}

#[test]
fn dotdot_names_are_rejected_with_the_entry_name() {
    for name in [
        "../x",
        "a/../../b",
        "a/..",
        "..",
        "./../canary/canary-file",
        "/../x",
    ] {
        let s = Scene::new();
        let mut t = Tar::new();
        t.file("fine", b"f").file(name, b"evil");
        let err = s.unpack_fails(&one(&t));
        assert_hostile(&err, "'..'");
        assert!(err.to_string().contains(name), "{err} should name {name}");
    }
}

#[test]
fn dotdot_in_a_directory_or_symlink_or_link_entry_name() {
    for t in [
        Tar::new().dir("../canary").clone(),
        Tar::new().symlink("../canary/new", "x").clone(),
        Tar::new()
            .file("f", b"")
            .hardlink("../canary/new", "f")
            .clone(),
        Tar::new()
            .entry(Hdr::new(b"../fifo", kind::FIFO), b"")
            .clone(),
        Tar::new().whiteout("../canary/.wh.x").clone(),
        Tar::new().whiteout("../.wh.canary").clone(),
    ] {
        let s = Scene::new();
        assert_hostile(&s.unpack_fails(&one(&t)), "'..'");
    }
}

#[test]
fn absolute_names_are_contained() {
    let s = Scene::new();
    let abs = s.canary.dir.join("canary-file");
    let mut t = Tar::new();
    t.file(abs.to_str().unwrap(), b"contained").file("/x", b"x");
    s.unpack_tars(&one(&t));
    let inside = abs.strip_prefix("/").unwrap();
    assert_eq!(s.read(inside.to_str().unwrap()), b"contained");
    assert_eq!(s.read("x"), b"x");
    s.canary.assert_unchanged();
}

#[test]
fn nul_in_a_pax_path_is_rejected() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.pax(&[("path", b"a\0b")]).file("x", b"");
    let err = s.unpack_fails(&one(&t));
    assert_hostile(&err, "NUL");
}

#[test]
fn non_directory_for_the_root_is_rejected() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.file("./", b"x");
    assert_hostile(&s.unpack_fails(&one(&t)), "root");
}

/// A symlink out of the rootfs and a write through it, in one layer or two.
fn symlink_escape(link: &str, two_layers: bool) -> Scene {
    let s = Scene::new();
    let mut l1 = Tar::new();
    // The rootfs has its own `canary/` so that a clamped `../canary` lands.
    l1.dir("canary").symlink("a", link);
    let mut l2 = Tar::new();
    l2.file("a/canary-file", b"escaped?")
        .file("a/sub/deep", b"escaped?");
    let tars = if two_layers {
        vec![l1.finish(), l2.finish()]
    } else {
        l1.file("a/canary-file", b"escaped?")
            .file("a/sub/deep", b"escaped?");
        vec![l1.finish()]
    };
    s.unpack_tars(&tars);
    s.canary.assert_unchanged();
    assert!(s.meta("a").file_type().is_symlink());
    s
}

#[test]
fn absolute_symlink_to_root_is_clamped() {
    for two in [false, true] {
        let s = symlink_escape("/", two);
        assert_eq!(s.read("canary-file"), b"escaped?");
        assert_eq!(s.read("sub/deep"), b"escaped?");
    }
}

#[test]
fn relative_dotdot_symlink_is_clamped() {
    for two in [false, true] {
        let s = symlink_escape("../../..", two);
        assert_eq!(s.read("canary-file"), b"escaped?");
        let s = symlink_escape("../canary", two);
        assert_eq!(s.read("canary/canary-file"), b"escaped?");
        assert_eq!(s.read("canary/sub/deep"), b"escaped?");
    }
}

#[test]
fn absolute_symlink_to_the_real_canary_never_reaches_it() {
    for two in [false, true] {
        let s = Scene::new();
        let real = s.canary.dir.to_str().unwrap().to_string();
        let mut l1 = Tar::new();
        l1.symlink("a", &real);
        let mut l2 = Tar::new();
        l2.file("a/canary-file", b"escaped?");
        let tars = if two {
            vec![l1.finish(), l2.finish()]
        } else {
            l1.file("a/canary-file", b"escaped?");
            vec![l1.finish()]
        };
        // The target does not exist inside the rootfs: the write fails.
        let err = s.unpack_fails(&tars);
        assert!(matches!(err, UnpackError::Io { .. }), "{}", chain(&err));
    }
}

#[test]
fn entry_over_a_symlink_replaces_the_symlink_not_its_target() {
    let s = Scene::new();
    let real = s.canary.dir.join("canary-file");
    let mut l1 = Tar::new();
    l1.symlink("f", real.to_str().unwrap())
        .symlink("g", "../canary/canary-file")
        .symlink("d", "../canary")
        .symlink("h", "../canary/x");
    let mut l2 = Tar::new();
    l2.file("f", b"over")
        .file_mode("g", b"over", 0o777)
        .dir_mode("d", 0o777)
        .symlink("h", "elsewhere");
    s.unpack_tars(&[l1.finish(), l2.finish()]);
    assert_eq!(s.read("f"), b"over");
    assert_eq!(s.read("g"), b"over");
    assert!(s.meta("d").is_dir());
    assert_eq!(fs::read_link(s.path("h")).unwrap().as_os_str(), "elsewhere");
    s.canary.assert_unchanged();
}

#[test]
fn device_and_fifo_through_a_symlinked_parent_are_contained() {
    let s = Scene::new();
    let mut l1 = Tar::new();
    l1.dir("canary").symlink("a", "../canary");
    let mut dev = Hdr::new(b"a/null", kind::CHAR);
    dev.devmajor = 1;
    dev.devminor = 3;
    l1.entry(dev, b"")
        .entry(Hdr::new(b"a/fifo", kind::FIFO), b"");
    s.unpack_tars(&one(&l1));
    assert!(s.exists("canary/fifo"));
    s.canary.assert_unchanged();
}

/// A device header whose major or minor field is not an octal number.
fn device_with_garbled_number(name: &[u8], typeflag: u8, field: std::ops::Range<usize>) -> Vec<u8> {
    let mut block = Hdr::new(name, typeflag).encode();
    block[field].copy_from_slice(b"zz\0\0\0\0\0\0");
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Tar::new().bytes(&block).finish()
}

/// Unreadable device numbers used to become 0:0, a different device.
#[test]
fn unreadable_device_numbers_fail_with_the_path() {
    for (typeflag, field) in [(kind::CHAR, 329..337), (kind::BLOCK, 337..345)] {
        let s = Scene::new();
        let tar = device_with_garbled_number(b"dev/bad", typeflag, field);
        match s.unpack_fails(&[tar]) {
            UnpackError::Io { op, path, .. } => {
                assert_eq!((op, path.as_str()), ("read device number of", "dev/bad"))
            }
            other => panic!("expected an I/O error for dev/bad, got {}", chain(&other)),
        }
    }
}

#[test]
fn hardlink_with_dotdot_target_is_rejected() {
    for target in ["../canary/canary-file", "a/../../x", ".."] {
        let s = Scene::new();
        let mut t = Tar::new();
        t.file("a/f", b"").hardlink("h", target);
        assert_hostile(&s.unpack_fails(&one(&t)), "'..'");
    }
}

#[test]
fn hardlink_via_a_symlinked_parent_stays_inside() {
    // Nothing of that name in the rootfs: rejected.
    let s = Scene::new();
    let mut t = Tar::new();
    t.symlink("s", "../canary").hardlink("h", "s/canary-file");
    assert_hostile(&s.unpack_fails(&one(&t)), "does not exist");

    let s = Scene::new();
    let mut t = Tar::new();
    t.symlink("s", "/")
        .hardlink("h", &format!("s{}", s.canary.dir.join("x").display()));
    assert_hostile(&s.unpack_fails(&one(&t)), "does not exist");

    // The clamped path exists in the rootfs: the link is to that one.
    let s = Scene::new();
    let mut t = Tar::new();
    t.file("canary/canary-file", b"inner")
        .symlink("s", "../../canary")
        .hardlink("h", "s/canary-file");
    s.unpack_tars(&one(&t));
    assert_eq!(s.meta("h").ino(), s.meta("canary/canary-file").ino());
    assert_ne!(
        s.meta("h").ino(),
        fs::metadata(s.canary.dir.join("canary-file"))
            .unwrap()
            .ino()
    );
    s.canary.assert_unchanged();
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    let s = Scene::new();
    let real = s.canary.dir.join("canary-file");
    let mut t = Tar::new();
    t.symlink("s", real.to_str().unwrap()).hardlink("h", "s");
    s.unpack_tars(&one(&t));
    assert!(s.meta("h").file_type().is_symlink());
    assert_eq!(s.meta("h").ino(), s.meta("s").ino());
    s.canary.assert_unchanged();
}

#[test]
fn hardlink_to_a_directory_is_rejected() {
    for target in ["d", "d/", "./d/.", "/"] {
        let s = Scene::new();
        let mut t = Tar::new();
        t.dir("d").hardlink("h", target);
        let err = s.unpack_fails(&one(&t));
        assert!(
            matches!(&err, UnpackError::Hostile { reason, .. } if reason.contains("directory")),
            "{target}: {}",
            chain(&err)
        );
    }
}

#[test]
fn hardlink_without_a_target_is_rejected() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.hardlink("h", "");
    assert_hostile(&s.unpack_fails(&one(&t)), "without a target");
}

#[test]
fn hardlink_to_a_whited_out_path_is_rejected() {
    let s = Scene::new();
    let l1 = Tar::new().file("victim", b"v").finish();
    let l2 = Tar::new()
        .whiteout(".wh.victim")
        .hardlink("h", "victim")
        .finish();
    assert_hostile(&s.unpack_fails(&[l1, l2]), "does not exist");
}

#[test]
fn hardlink_to_a_missing_path_is_rejected() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.hardlink("h", "nowhere/at/all");
    assert_hostile(&s.unpack_fails(&one(&t)), "does not exist");
}

#[test]
fn hardlink_to_itself_is_rejected() {
    for (name, target) in [("h", "h"), ("h", "./h"), ("/d/h", "d//h")] {
        let s = Scene::new();
        let mut t = Tar::new();
        t.file("d/h", b"").file("h", b"").hardlink(name, target);
        assert_hostile(&s.unpack_fails(&one(&t)), "itself");
    }
}

#[test]
fn whiteout_of_dot_dotdot_or_empty_is_rejected() {
    for name in [".wh.", ".wh..", ".wh...", "d/.wh.", "d/.wh..", "d/.wh..."] {
        let s = Scene::new();
        let l1 = Tar::new().file("d/keep", b"k").finish();
        let l2 = Tar::new().whiteout(name).finish();
        let err = s.unpack_fails(&[l1, l2]);
        assert_hostile(&err, "whiteout");
    }
}

#[test]
fn a_parent_directory_named_like_a_whiteout_is_rejected() {
    for name in [".wh.a/b", "d/.wh.x/y", ".wh..wh..opq/x", "d/.wh.x/e/f"] {
        let s = Scene::new();
        let l1 = Tar::new().file("a/b", b"k").file("d/x/y", b"").finish();
        let l2 = Tar::new().whiteout(name).finish();
        let err = s.unpack_fails(&[l1, l2]);
        assert_hostile(&err, "a parent directory component is a whiteout name");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn whiteout_through_a_symlinked_dir_stays_inside() {
    for link in ["/", "..", "../..", "../canary"] {
        let s = Scene::new();
        let l1 = Tar::new()
            .file("canary/canary-file", b"inner")
            .file("canary/x", b"inner")
            .file("other", b"o")
            .symlink("d", link)
            .finish();
        let l2 = Tar::new()
            .whiteout("d/.wh.canary-file")
            .whiteout("d/.wh.x")
            .whiteout("d/.wh.canary")
            .finish();
        s.unpack_tars(&[l1, l2]);
        s.canary.assert_unchanged();
        assert_eq!(s.read("other"), b"o");
    }
}

#[test]
fn opaque_through_a_symlinked_dir_stays_inside() {
    for link in ["/", "../..", "../canary"] {
        let s = Scene::new();
        let l1 = Tar::new()
            .file("canary/sub/deep", b"inner")
            .symlink("d", link)
            .finish();
        let l2 = Tar::new().whiteout("d/.wh..wh..opq").finish();
        s.unpack_tars(&[l1, l2]);
        s.canary.assert_unchanged();
    }
}

#[test]
fn pax_size_agreeing_or_filling_a_zero_header_is_honoured() {
    // A smuggled header hides in the content: it must stay content.
    let s = Scene::new();
    let smuggled = Hdr::new(b"smuggled", kind::FILE).encode();
    let mut h = Hdr::new(b"f", kind::FILE);
    h.size = 0;
    let mut t = Tar::new();
    t.pax(&[("size", b"512")]).raw_entry(&h, &smuggled);
    s.unpack_tars(&one(&t));
    assert_eq!(s.read("f"), smuggled.to_vec());
    assert!(!s.exists("smuggled"));
    s.canary.assert_unchanged();
}

#[test]
fn pax_size_disagreeing_with_the_header_is_rejected() {
    let smuggled = Hdr::new(b"smuggled", kind::FILE).encode();
    for (pax, header) in [("0", 512u64), ("1024", 5)] {
        let s = Scene::new();
        let mut h = Hdr::new(b"f", kind::FILE);
        h.size = header;
        let mut t = Tar::new();
        t.pax(&[("size", pax.as_bytes())]).raw_entry(&h, &smuggled);
        t.bytes(&[0u8; 512]);
        let err = s.unpack_fails(&one(&t));
        assert_hostile(&err, "size");
    }
}

#[test]
fn gnu_longname_with_dotdot_is_rejected() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.gnu_longname(b"../canary/canary-file")
        .file("innocent", b"evil");
    assert_hostile(&s.unpack_fails(&one(&t)), "'..'");

    let s = Scene::new();
    let mut t = Tar::new();
    t.file("f", b"")
        .gnu_longlink(b"../canary/canary-file")
        .hardlink("h", "f");
    assert_hostile(&s.unpack_fails(&one(&t)), "'..'");
}

#[test]
fn gnu_longname_followed_by_nothing_is_a_stream_error() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.file("f", b"").gnu_longname(b"orphan");
    assert_stream(&s.unpack_fails(&one(&t)));

    let s = Scene::new();
    let mut t = Tar::new();
    t.gnu_longname(b"twice")
        .gnu_longname(b"again")
        .file("f", b"");
    assert_stream(&s.unpack_fails(&one(&t)));

    let s = Scene::new();
    let mut t = Tar::new();
    t.pax(&[("path", b"orphan")]);
    assert_stream(&s.unpack_fails(&one(&t)));
}

#[test]
fn oversized_metadata_records_are_refused_before_being_buffered() {
    // A longname record that claims 8 MiB: a decompression bomb aimed at
    // the name buffer, not at file content.
    let s = Scene::new();
    let mut h = Hdr::new(b"././@LongLink", kind::GNU_LONGNAME);
    h.size = 8 << 20;
    let mut t = Tar::new();
    t.raw_entry(&h, &vec![b'a'; 8 << 20]).file("f", b"");
    let blob = Blob::new(&t.finish(), Wrap::Zstd);
    let err = layer_error(s.unpack(vec![blob.input()]).unwrap_err());
    assert!(matches!(err, UnpackError::Limit { .. }), "{}", chain(&err));
    s.assert_clean_failure();
}

#[test]
fn duplicate_entries_last_one_wins() {
    let s = Scene::new();
    let mut t = Tar::new();
    t.file("p", b"first")
        .dir("p")
        .file("p/child", b"c")
        .file("p", b"last")
        .symlink("q", "p")
        .dir("q")
        .file("q", b"q")
        .hardlink("r", "q")
        .file("r", b"r");
    s.unpack_tars(&one(&t));
    assert_eq!(s.read("p"), b"last");
    assert_eq!(s.read("q"), b"q");
    assert_eq!(s.read("r"), b"r");
    assert_ne!(s.meta("q").ino(), s.meta("r").ino());
    s.canary.assert_unchanged();
}

#[test]
fn truncated_plain_tar_inside_a_file_is_a_stream_error() {
    let s = Scene::new();
    let tar = Tar::new().file("f", &[1u8; 4096]).unterminated();
    let cut = tar[..512 + 1000].to_vec();
    assert_stream(&s.unpack_fails(&[cut]));
}

#[test]
fn truncated_gzip_is_a_stream_error() {
    let tar = Tar::new().file("f", &vec![3u8; 200_000]).finish();
    let gz = gzip(&tar);
    for cut in [gz.len() / 2, gz.len() - 4] {
        let s = Scene::new();
        let blob = Blob::with_diff_id(gz[..cut].to_vec(), sha256(&tar));
        let err = layer_error(s.unpack(vec![blob.input()]).unwrap_err());
        assert_stream(&err);
        s.assert_clean_failure();
    }
}

#[test]
fn truncated_zstd_is_a_stream_error() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tar = Tar::new().file("f", &data).finish();
    let zs = zstd(&tar);
    for cut in [zs.len() / 2, zs.len() - 3] {
        let s = Scene::new();
        let blob = Blob::with_diff_id(zs[..cut].to_vec(), sha256(&tar));
        let err = layer_error(s.unpack(vec![blob.input()]).unwrap_err());
        assert_stream(&err);
        s.assert_clean_failure();
    }
}

fn two_layers_second(blob: Blob) -> UnpackError {
    let s = Scene::new();
    let first = Blob::new(&Tar::new().file("first", b"1").finish(), Wrap::Gzip);
    let err = s.unpack(vec![first.input(), blob.input()]).unwrap_err();
    let metalor::unpack::StagedUnpackError::Layer { index, .. } = &err else {
        panic!("{}", chain(&err));
    };
    assert_eq!(*index, 1);
    s.assert_clean_failure();
    layer_error(err)
}

#[test]
fn blob_digest_mismatch_fails_and_leaves_nothing() {
    let tar = Tar::new().file("f", b"x").finish();
    for wrap in [Wrap::Plain, Wrap::Gzip, Wrap::Zstd] {
        let err = two_layers_second(Blob::new(&tar, wrap).wrong_digest());
        assert_mismatch(&err, "blob digest");
    }
}

#[test]
fn blob_size_mismatch_fails_and_leaves_nothing() {
    let tar = Tar::new().file("f", &[5u8; 10_000]).finish();
    for wrap in [Wrap::Plain, Wrap::Gzip, Wrap::Zstd] {
        let blob = Blob::new(&tar, wrap);
        let real = blob.size;
        for size in [real - 1, real + 1, 0, real / 2] {
            let err = two_layers_second(blob.clone().wrong_size(size));
            assert_mismatch(&err, "blob size");
        }
    }
}

#[test]
fn diff_id_mismatch_fails_and_leaves_nothing() {
    let tar = Tar::new().file("f", b"x").finish();
    for wrap in [Wrap::Plain, Wrap::Gzip, Wrap::Zstd] {
        let err = two_layers_second(Blob::new(&tar, wrap).wrong_diff_id());
        assert_mismatch(&err, "diff_id");
    }
}

/// `blob_verified` (the caller pulled and verified the blob itself) only
/// skips hashing the compressed bytes again: the size and the diff_id of
/// the uncompressed stream are still checked.
#[test]
fn caller_verified_blobs_still_get_size_and_diff_id_checks() {
    let verified = |blob: &Blob| LayerInput {
        blob_verified: true,
        ..blob.input()
    };
    let tar = Tar::new().file("f", &[5u8; 10_000]).finish();
    for wrap in [Wrap::Plain, Wrap::Gzip, Wrap::Zstd] {
        let blob = Blob::new(&tar, wrap);
        let s = Scene::new();
        s.unpack(vec![verified(&blob)]).unwrap();
        assert_eq!(fs::read(s.target.join("f")).unwrap(), [5u8; 10_000]);
        for (bad, what) in [
            (blob.clone().wrong_diff_id(), "diff_id"),
            (blob.clone().wrong_size(blob.size - 1), "blob size"),
            (blob.clone().wrong_size(blob.size + 1), "blob size"),
        ] {
            let s = Scene::new();
            let err = layer_error(s.unpack(vec![verified(&bad)]).unwrap_err());
            assert_mismatch(&err, what);
            s.assert_clean_failure();
        }
    }
    // An uncompressed blob's diff_id is its digest: when the caller vouches
    // for the blob, the bytes actually read are still hashed for the
    // diff_id, so content that changed after the caller's check (same size,
    // same claims) is caught.
    let blob = Blob::new(&tar, Wrap::Plain);
    let swapped = Tar::new().file("f", &[6u8; 10_000]).finish();
    assert_eq!(swapped.len(), tar.len());
    let tampered = Blob {
        bytes: swapped,
        ..blob.clone()
    };
    let s = Scene::new();
    let err = layer_error(s.unpack(vec![verified(&tampered)]).unwrap_err());
    assert_mismatch(&err, "diff_id");
    s.assert_clean_failure();
}

#[test]
fn diff_id_claiming_the_compressed_digest_is_a_mismatch() {
    // Hashing once is only right for an uncompressed blob.
    let tar = Tar::new().file("f", b"x").finish();
    for wrap in [Wrap::Gzip, Wrap::Zstd] {
        let mut blob = Blob::new(&tar, wrap);
        blob.diff_id = blob.digest.clone();
        let err = two_layers_second(blob);
        assert_mismatch(&err, "diff_id");
    }
}

/// A malformed digest cannot be a `Digest` at all; one the grammar allows
/// but metalor cannot compute fails before any layer is applied.
#[test]
fn unverifiable_digests_are_rejected_up_front() {
    let tar = Tar::new().file("f", b"x").finish();
    let mut blob = Blob::new(&tar, Wrap::Plain);
    blob.digest = "md5:abcd".into();
    assert_unverifiable(&two_layers_second(blob), "blob digest", "md5:abcd");
    let mut blob = Blob::new(&tar, Wrap::Plain);
    blob.diff_id = "multihash+base58:QmRZxt2b1F".into();
    assert_unverifiable(
        &two_layers_second(blob),
        "diff_id",
        "multihash+base58:QmRZxt2b1F",
    );
}

#[track_caller]
fn assert_unverifiable(err: &UnpackError, what: &str, digest: &str) {
    match err {
        UnpackError::UnverifiableDigest { what: w, digest: d } => {
            assert_eq!((*w, d.as_str()), (what, digest))
        }
        other => panic!("expected an unverifiable {what}, got {}", chain(other)),
    }
}

#[test]
fn failure_in_a_late_layer_after_escape_attempts_leaves_nothing() {
    let s = Scene::new();
    let l1 = Tar::new()
        .dir("canary")
        .symlink("a", "../canary")
        .file("a/canary-file", b"in")
        .finish();
    let l2 = Tar::new()
        .file("a/sub/deep", b"in")
        .file("../x", b"evil")
        .finish();
    let err = s.unpack_fails(&[l1, l2]);
    assert_hostile(&err, "'..'");
}

#[test]
fn limits_stop_a_bomb_and_leave_nothing() {
    let s = Scene::new();
    let tar = Tar::new().file("bomb", &vec![0u8; 8 << 20]).finish();
    let blob = Blob::new(&tar, Wrap::Zstd);
    let opts = UnpackOptions {
        max_bytes: Some(1 << 20),
        ..UnpackOptions::default()
    };
    let err = layer_error(s.unpack_with(vec![blob.input()], opts).unwrap_err());
    assert!(
        matches!(err, UnpackError::Limit { what: "bytes", .. }),
        "{}",
        chain(&err)
    );
    s.assert_clean_failure();
}

/// The xattr `name` of `path`, or `None` when it has none by that name.
fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", path.display()),
    }
}

/// Xattrs that steer the host instead of describing the file.
const STEERING: [(&str, &[u8]); 7] = [
    ("trusted.overlay.opaque", b"y"),
    ("trusted.overlay.redirect", b"/etc"),
    ("trusted.overlay.metacopy", b""),
    ("trusted.glusterfs.volume-id", b"v"),
    ("user.overlay.opaque", b"y"),
    ("user.overlay.redirect", b"/etc"),
    ("security.selinux", b"system_u:object_r:shadow_t:s0"),
];

fn pax_xattrs<'a>(xattrs: &[(&'a str, &'a [u8])]) -> Vec<(String, &'a [u8])> {
    let key = |name| format!("SCHILY.xattr.{name}");
    xattrs.iter().map(|(n, v)| (key(n), *v)).collect()
}

fn with_pax<'t>(t: &'t mut Tar, records: &[(String, &[u8])]) -> &'t mut Tar {
    let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    t.pax(&records)
}

/// A layer cannot plant overlayfs metadata (or other host-steering xattrs)
/// on a directory or a file: they are dropped and counted, as root too,
/// where the filesystem would otherwise take every one of them.
#[test]
fn overlay_and_other_steering_xattrs_are_dropped() {
    let s = Scene::new();
    let records = pax_xattrs(&STEERING);
    let mut t = Tar::new();
    with_pax(&mut t, &records).dir("d");
    with_pax(&mut t, &records).file("d/f", b"x");
    let stats = s.unpack_tars(&one(&t));
    for path in ["d", "d/f"] {
        for (name, _) in STEERING {
            let found = xattr(&s.target.join(path), name);
            assert_eq!(found, None, "{name} on {path}");
        }
    }
    assert_eq!(stats.xattrs, 0);
    assert_eq!(stats.skipped_xattrs, 2 * STEERING.len() as u64);
    s.canary.assert_unchanged();
}

/// File capabilities are image content (`ping`): applied as root, with
/// the value the layer gives.
#[test]
fn security_capability_is_kept_as_root() {
    if !skip::require_root("security_capability_is_kept_as_root") {
        return;
    }
    // vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    let s = Scene::new();
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.security.capability", &cap)])
        .file_mode("bin/ping", b"elf", 0o755);
    let stats = s.unpack_tars(&one(&t));
    let found = xattr(&s.target.join("bin/ping"), "security.capability");
    assert_eq!(found.as_deref(), Some(&cap[..]));
    assert_eq!((stats.xattrs, stats.skipped_xattrs), (1, 0));
}

/// Mounts a read-only overlay of `lowers` (top first) on `at`.
fn mount_overlay(lowers: &[&std::path::Path], at: &std::path::Path) -> rustix::io::Result<()> {
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let data = format!("lowerdir={},redirect_dir=follow", lowers.join(":"));
    let data = std::ffi::CString::new(data).unwrap();
    let flags = rustix::mount::MountFlags::RDONLY;
    rustix::mount::mount("overlay", at, "overlay", flags, data.as_c_str())
}

fn overlay_sees(lowers: &[&std::path::Path], at: &std::path::Path, paths: &[&str]) -> Vec<bool> {
    if let Err(e) = mount_overlay(lowers, at) {
        panic!("mount overlay on {}: {e}", at.display());
    }
    let seen = paths.iter().map(|p| at.join(p).exists()).collect();
    rustix::mount::unmount(at, rustix::mount::UnmountFlags::DETACH).unwrap();
    seen
}

/// The image store stacks unpacked trees as overlay lower dirs. A layer
/// carrying `trusted.overlay.redirect=/etc` on `d` (which would show the
/// lower tree's `/etc` at `d`) or `trusted.overlay.opaque` on `o` (which
/// would hide the lower tree's `o`) steers nothing once unpacked. The same
/// xattrs set by hand do steer this kernel's overlay, so the check bites.
#[test]
fn dropped_overlay_xattrs_cannot_steer_an_overlay_mount() {
    if !skip::require_root("dropped_overlay_xattrs_cannot_steer_an_overlay_mount") {
        return;
    }
    let s = Scene::new();
    let base = s.tmp.path().join("base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("etc/shadow"), b"root:secret").unwrap();
    fs::create_dir_all(base.join("o")).unwrap();
    fs::write(base.join("o/kept"), b"k").unwrap();
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .dir("d");
    t.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("o");
    s.unpack_tars(&one(&t));
    let merged = s.tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let lowers = [s.target.as_path(), base.as_path()];
    let seen = overlay_sees(&lowers, &merged, &["d/shadow", "o/kept"]);
    assert_eq!(
        seen,
        [false, true],
        "d must not be redirected, o not opaque"
    );

    let set = |path: &str, name: &str, value: &[u8]| {
        let flags = rustix::fs::XattrFlags::empty();
        rustix::fs::lsetxattr(s.target.join(path), name, value, flags).unwrap();
    };
    set("d", "trusted.overlay.redirect", b"/etc");
    set("o", "trusted.overlay.opaque", b"y");
    let steered = overlay_sees(&lowers, &merged, &["d/shadow", "o/kept"]);
    if steered != [true, false] {
        skip::skip_or_fail(
            "dropped_overlay_xattrs_cannot_steer_an_overlay_mount",
            &format!("this kernel's overlay ignores hand-set redirect/opaque ({steered:?})"),
        );
    }
    s.canary.assert_unchanged();
}

/// A layer declared with `compression`, otherwise true to its bytes.
fn declared(blob: &Blob, compression: metalor::oci::Compression) -> LayerInput {
    LayerInput {
        compression: Some(compression),
        ..blob.input()
    }
}

/// A zstd skippable frame (magic `0x184D2A5?`, here `nibble`) carrying
/// `payload`, as zstd:chunked writes its metadata.
fn skippable_frame(nibble: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = (0x184D_2A50u32 | u32::from(nibble)).to_le_bytes().to_vec();
    frame.extend((payload.len() as u32).to_le_bytes());
    frame.extend(payload);
    frame
}

#[test]
fn zstd_skippable_frames_are_skipped_wherever_they_are() {
    use metalor::oci::Compression;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let tar = Tar::new().file("f", &data).file("g", b"g").finish();
    let skip = |n| skippable_frame(n, &[0xa5; 1000]);
    let frames = zstd_frames(&tar, 2);
    let body = zstd(&tar);
    let blobs = [
        [skip(0), body.clone()].concat(),
        [skip(0xf), skip(3), body.clone()].concat(),
        [frames.clone(), skip(7)].concat(),
        [skip(1), zstd_frames(&tar, 3), skip(2)].concat(),
        [skippable_frame(0, b""), body].concat(),
    ];
    for bytes in blobs {
        let blob = Blob::with_diff_id(bytes, sha256(&tar));
        for input in [declared(&blob, Compression::Zstd), blob.input()] {
            let s = Scene::new();
            if let Err(e) = s.unpack(vec![input]) {
                panic!("unpack with skippable frames: {}", chain(&e));
            }
            assert_eq!(s.read("f"), data);
            assert_eq!(s.read("g"), b"g");
        }
    }
}

/// A blob declared compressed must be a stream of that compression: an
/// empty blob, bare magic or magic then garbage fail, naming the layer.
#[test]
fn empty_or_invalid_compressed_blobs_fail_with_the_layer_digest() {
    use metalor::oci::Compression;
    use metalor::unpack::StagedUnpackError;
    let cases: [(Compression, &[u8]); 7] = [
        (Compression::Gzip, b""),
        (Compression::Gzip, &[0x1f, 0x8b]),
        (
            Compression::Gzip,
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff],
        ),
        (Compression::Zstd, b""),
        (Compression::Zstd, &[0x28, 0xb5, 0x2f, 0xfd]),
        (
            Compression::Zstd,
            &[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff],
        ),
        // A skippable frame that claims more than the blob holds.
        (
            Compression::Zstd,
            &[0x50, 0x2a, 0x4d, 0x18, 0xff, 0, 0, 0, 1],
        ),
    ];
    for (compression, bytes) in cases {
        for blob in [
            Blob::with_diff_id(bytes.to_vec(), sha256(b"")),
            Blob::with_diff_id([bytes, &[0u8; 1024][..]].concat(), sha256(&[0u8; 1024])),
        ] {
            let s = Scene::new();
            let err = s
                .unpack(vec![declared(&blob, compression)])
                .expect_err("an invalid compressed blob must fail");
            let StagedUnpackError::Layer { digest, .. } = &err else {
                panic!("expected a layer error, got {}", chain(&err));
            };
            assert_eq!(digest.to_string(), blob.digest);
            assert!(chain(&err).contains(&blob.digest), "{}", chain(&err));
            s.assert_clean_failure();
        }
    }
}

/// An empty plain layer has no end-of-archive blocks, but umoci (Go's
/// archive/tar), GNU tar and bsdtar all read it as an archive without
/// members, and so does metalor: its diff_id (the digest of no bytes) is
/// still checked. The same holds for a valid gzip or zstd stream of no
/// bytes, which umoci also unpacks as an empty layer.
#[test]
fn an_empty_plain_layer_is_an_empty_layer_as_for_umoci() {
    use metalor::oci::Compression;
    for (blob, compression) in [
        (Blob::new(b"", Wrap::Plain), Compression::None),
        (Blob::new(b"", Wrap::Gzip), Compression::Gzip),
        (Blob::new(b"", Wrap::Zstd), Compression::Zstd),
    ] {
        for input in [declared(&blob, compression), blob.input()] {
            let s = Scene::new();
            let stats = s.unpack(vec![input]).unwrap();
            assert_eq!(stats.entries, 0);
            assert_eq!(fs::read_dir(&s.target).unwrap().count(), 0);
        }
        let s = Scene::new();
        let err = layer_error(
            s.unpack(vec![declared(&blob.wrong_diff_id(), compression)])
                .unwrap_err(),
        );
        assert_mismatch(&err, "diff_id");
    }
}
