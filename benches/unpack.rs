//! The unpack hot path on a generated layer, all in memory.
//!
//! One layer of ~3000 entries (directories, regular files of mixed sizes and
//! compressibility, symlinks, hardlinks) plus a small edit layer on top
//! (overwrites, whiteouts, an opaque directory), built at start-up as plain
//! tar, gzip and zstd. Groups:
//!
//! - `decode`: `decode::decoder` over a sniffed stream, to a sink;
//! - `sha256`: one digest pass over the plain tar (the pipeline makes two:
//!   blob digest and diff_id);
//! - `apply`: `Applier::apply_layer` of the plain tar into a fresh directory;
//! - `unpack_layers_into`: the whole staged pipeline (both layers, digests,
//!   diff_ids, decode thread) for gzip and zstd.
//!
//! Targets go under `$METALOR_BENCH_DIR`, else `/dev/shm` (tmpfs, so the
//! numbers measure metalor rather than a disk), else the temp dir. Each
//! iteration writes into a fresh directory; removal happens outside the
//! timed region.
//!
//! `cargo bench --bench unpack` (full) or `cargo bench --bench unpack -- --quick`.

use std::io::{self, Cursor, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use metalor::oci::Digest;
use metalor::unpack::decode::{self, Rewound};
use metalor::unpack::{unpack_layers_into, Applier, LayerInput, Privileges, UnpackOptions};
use sha2::{Digest as _, Sha256};

const FILES: usize = 3000;
const DIRS: usize = 120;
const SYMLINKS: usize = 200;
const HARDLINKS: usize = 150;
const MTIME: u64 = 1_700_000_000;

/// A small deterministic generator (xorshift64*), so every run benches the
/// same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// File sizes shaped like a distro tree: mostly small, a tail of big ones.
fn file_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=54 => rng.below(2048) as usize,
        55..=84 => 2048 + rng.below(30 * 1024) as usize,
        85..=97 => 32 * 1024 + rng.below(224 * 1024) as usize,
        _ => 256 * 1024 + rng.below(1792 * 1024) as usize,
    }
}

/// File content: text-like (compresses ~4x) or random (incompressible).
fn file_data(rng: &mut Rng, size: usize) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"usr",
        b"lib",
        b"static ",
        b"inline ",
        b"return ",
        b"const ",
        b"=> ",
        b"{\n",
        b"}\n",
        b"int ",
        b"void ",
        b"struct ",
        b"0x1f8b ",
        b"the ",
        b"layer ",
        b"digest ",
        b"\t",
        b"; ",
        b"// ",
        b"#include ",
        b"<stdio.h>\n",
        b"sha256:",
        b"rootfs ",
        b"OCI ",
    ];
    let mut out = Vec::with_capacity(size + 16);
    if rng.below(5) == 0 {
        while out.len() < size {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
    } else {
        while out.len() < size {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize]);
            if rng.below(8) == 0 {
                out.extend_from_slice(format!("{}", rng.below(100_000)).as_bytes());
            }
        }
    }
    out.truncate(size);
    out
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

struct Layer {
    tar: Vec<u8>,
    entries: usize,
}

/// The big layer: a tree of directories with files, symlinks and hardlinks.
fn base_layer() -> Layer {
    let mut rng = Rng(0x6d65_7461_6c6f_7221);
    let mut b = tar::Builder::new(Vec::new());
    let mut entries = 0;
    let mut dirs = Vec::new();
    for i in 0..DIRS {
        // Three levels: top/sub/leaf, so parent lookups are not all trivial.
        let path = match i {
            0..=7 => format!("d{i}"),
            8..=39 => format!("d{}/s{i}", i % 8),
            _ => format!("d{}/s{}/l{i}", i % 8, 8 + i % 32),
        };
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, &path, io::empty()).unwrap();
        dirs.push(path);
        entries += 1;
    }
    let mut files = Vec::new();
    for i in 0..FILES {
        // Tar order keeps a directory's files together, as real layers do.
        let dir = &dirs[i * DIRS / FILES];
        let size = file_size(&mut rng);
        let data = file_data(&mut rng, size);
        let mode = if rng.below(6) == 0 { 0o755 } else { 0o644 };
        let path = format!("{dir}/file-{i:05}.dat");
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, &path, &data[..]).unwrap();
        files.push(path);
        entries += 1;
    }
    for i in 0..SYMLINKS {
        let dir = &dirs[rng.below(DIRS as u64) as usize];
        let target = if i % 2 == 0 {
            format!("/{}", files[rng.below(FILES as u64) as usize])
        } else {
            format!("../{}", rng.below(1000))
        };
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("{dir}/link-{i:04}"), target)
            .unwrap();
        entries += 1;
    }
    for i in 0..HARDLINKS {
        let dir = &dirs[rng.below(DIRS as u64) as usize];
        let target = &files[rng.below(FILES as u64) as usize];
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        b.append_link(&mut h, format!("{dir}/hard-{i:04}"), target)
            .unwrap();
        entries += 1;
    }
    Layer {
        tar: b.into_inner().unwrap(),
        entries,
    }
}

/// A small layer on top: overwrites, file and directory whiteouts, an opaque
/// directory.
fn edit_layer() -> Layer {
    let mut rng = Rng(0x6564_6974_6c61_7972);
    let mut b = tar::Builder::new(Vec::new());
    let mut entries = 0;
    for i in (0..FILES).step_by(50) {
        let dir = i * DIRS / FILES;
        let dir = match dir {
            0..=7 => format!("d{dir}"),
            8..=39 => format!("d{}/s{dir}", dir % 8),
            _ => format!("d{}/s{}/l{dir}", dir % 8, 8 + dir % 32),
        };
        if i % 100 == 0 {
            let data = file_data(&mut rng, 4096);
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, format!("{dir}/file-{i:05}.dat"), &data[..])
                .unwrap();
        } else {
            let mut h = header(tar::EntryType::Regular, 0o644, 0);
            b.append_data(&mut h, format!("{dir}/.wh.file-{i:05}.dat"), io::empty())
                .unwrap();
        }
        entries += 1;
    }
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "d3/s11/.wh..wh..opq", io::empty())
        .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "d5/.wh.s13", io::empty()).unwrap();
    entries += 2;
    Layer {
        tar: b.into_inner().unwrap(),
        entries,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // Level 6 is what `gzip`, Docker and umoci write.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// One layer blob plus what the manifest and config say about it.
struct Blob {
    bytes: Vec<u8>,
    digest: Digest,
    diff_id: Digest,
}

impl Blob {
    fn new(tar: &[u8], compress: fn(&[u8]) -> Vec<u8>) -> Self {
        let bytes = compress(tar);
        Blob {
            digest: Digest::parse(&sha256(&bytes)).unwrap(),
            diff_id: Digest::parse(&sha256(tar)).unwrap(),
            bytes,
        }
    }

    fn input(&self) -> LayerInput {
        LayerInput {
            blob: Box::new(Cursor::new(self.bytes.clone())),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            diff_id: self.diff_id.clone(),
            compression: None,
            blob_verified: false,
        }
    }
}

fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("METALOR_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh directory name under the scratch root, unique per iteration.
fn fresh(base: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    base.join(format!("t{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn benches(c: &mut Criterion) {
    let t0 = Instant::now();
    let base = base_layer();
    let edit = edit_layer();
    let gz = Blob::new(&base.tar, gzip);
    let zs = Blob::new(&base.tar, zstd);
    let gz_edit = Blob::new(&edit.tar, gzip);
    let zs_edit = Blob::new(&edit.tar, zstd);
    eprintln!(
        "generated in {:.1?}: base layer {} entries, tar {} B, gzip {} B, zstd {} B; edit layer {} entries",
        t0.elapsed(),
        base.entries,
        base.tar.len(),
        gz.bytes.len(),
        zs.bytes.len(),
        edit.entries
    );
    let scratch = tempfile::Builder::new()
        .prefix("metalor-bench-")
        .tempdir_in(scratch_root())
        .expect("scratch directory");
    let privileges = Privileges::detect();
    let tar_len = base.tar.len() as u64;

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(tar_len));
    for (name, blob) in [
        ("plain", &base.tar),
        ("gzip", &gz.bytes),
        ("zstd", &zs.bytes),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), blob, |b, blob| {
            b.iter(|| {
                let (kind, rewound) = Rewound::sniff(&blob[..]).unwrap();
                let mut d = decode::decoder(kind, rewound).unwrap();
                let n = io::copy(&mut d, &mut io::sink()).unwrap();
                assert_eq!(n, tar_len);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(tar_len));
    g.bench_function("plain_tar", |b| b.iter(|| Sha256::digest(&base.tar)));
    g.finish();

    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(base.entries as u64));
    g.bench_function("plain_tar", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = fresh(scratch.path());
                std::fs::create_dir(&dir).unwrap();
                let root = std::fs::File::open(&dir).unwrap();
                let start = Instant::now();
                let mut applier = Applier::new(root.as_fd(), UnpackOptions::default(), privileges);
                let mut rest = applier.apply_layer(&base.tar[..]).unwrap();
                io::copy(&mut rest, &mut io::sink()).unwrap();
                total += start.elapsed();
                assert_eq!(applier.stats().entries, base.entries as u64);
                drop(root);
                std::fs::remove_dir_all(&dir).unwrap();
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("unpack_layers_into");
    g.throughput(Throughput::Elements((base.entries + edit.entries) as u64));
    for (name, layers) in [("gzip", [&gz, &gz_edit]), ("zstd", [&zs, &zs_edit])] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let target = fresh(scratch.path());
                    let inputs = layers.iter().map(|l| l.input()).collect();
                    let start = Instant::now();
                    let stats = unpack_layers_into(
                        &target,
                        inputs,
                        UnpackOptions::default(),
                        &mut |_, _| {},
                    )
                    .unwrap();
                    total += start.elapsed();
                    assert!(stats.whiteouts > 0);
                    std::fs::remove_dir_all(&target).unwrap();
                }
                total
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = unpack;
    config = config();
    targets = benches
}
criterion_main!(unpack);
