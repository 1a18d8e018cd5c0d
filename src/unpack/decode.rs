//! Layer stream decoding: which decoder a layer gets, gzip through
//! ISA-L or zlib-rs, zstd.
//!
//! # Which decoder a layer gets
//!
//! This is the one place the rule is written; [`decide`] applies it.
//!
//! - **The declared media type decides.** A known layer type names its
//!   [`Compression`] ([`Compression::from_layer_media_type`]), as it does for
//!   umoci, which picks its decompressor from the media type alone. An
//!   unknown layer type is refused when the image is resolved
//!   ([`crate::oci::OciError::UnknownLayerMediaType`]), never guessed.
//! - **The magic bytes only check that declaration.** A blob whose first
//!   bytes say otherwise (a `tar+gzip` layer that holds plain tar or zstd, a
//!   `tar` layer that starts with gzip or zstd magic) fails with a
//!   `layer compression` mismatch naming both, instead of being decoded as
//!   either one. umoci fails on such a blob too, only later and less
//!   clearly ("gzip: invalid header"); and decoding by the bytes would make
//!   the tree depend on which tool read the image.
//! - **Without a declaration the magic bytes decide.** A
//!   [`LayerInput`](super::LayerInput) whose `compression` is `None` (a bare
//!   layer stream that no manifest describes) is read as gzip or zstd when
//!   it starts with their magic, as plain tar otherwise.
//! - **A zstd skippable frame is zstd magic.** zstd:chunked layers begin
//!   with one (its metadata); libzstd skips such frames wherever they are.
//! - **Empty is valid only where the format says so.** A blob declared gzip
//!   or zstd must be a stream of it, so an empty one fails the declaration
//!   check. An empty plain layer has no end-of-archive blocks, yet umoci
//!   (Go's archive/tar), GNU tar and bsdtar all read it as an archive with
//!   no members, and so do we; its diff_id is checked all the same.
//!
//! gzip goes through ISA-L's igzip when metalor is built with the `isal`
//! feature (about 1.5x faster than zlib-rs; it needs nasm and autotools to
//! build, so it is not the default), and through `zlib_rs::Inflate`
//! otherwise. zlib-rs is called directly rather than through flate2: the
//! layout store (ocidir) switches flate2 to the C zlib backend for the whole
//! build, and zlib-rs decodes about 1.65x faster than that.
#![forbid(unsafe_code)]

use std::io::{self, Read};

pub use crate::oci::media::Compression;

use super::error::UnpackError;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Whether `head` starts with a zstd skippable frame, magic `0x184D2A50` to
/// `0x184D2A5F` (little-endian). zstd:chunked puts its metadata in such
/// frames, and a stream may begin with one; libzstd skips them wherever
/// they are.
fn is_zstd_skippable(head: &[u8]) -> bool {
    matches!(head, [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50)
}

/// Tells the compression from the first bytes of a stream. Anything without
/// gzip or zstd magic (a zstd frame or a skippable frame) is taken for
/// plain tar.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) || is_zstd_skippable(head) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Picks the decoder for a layer from what its media type declared (if
/// anything) and what its magic bytes show, following the module's rule: a
/// declaration decides and must agree with the bytes; without one, the
/// bytes decide.
pub fn decide(
    declared: Option<Compression>,
    sniffed: Compression,
) -> Result<Compression, UnpackError> {
    match declared {
        None => Ok(sniffed),
        Some(declared) if declared == sniffed => Ok(declared),
        Some(declared) => Err(UnpackError::Mismatch {
            what: "layer compression",
            expected: format!("{} per the media type", declared.name()),
            found: match sniffed {
                Compression::None => "neither gzip nor zstd magic bytes".to_owned(),
                other => format!("{} magic bytes", other.name()),
            },
        }),
    }
}

/// A reader that yields `head` first, then the rest of `inner`; it puts back
/// the bytes read for sniffing.
pub struct Rewound<R> {
    head: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: Read> Rewound<R> {
    /// Reads up to 4 bytes of `inner` for sniffing and returns them with a
    /// reader that replays them.
    pub fn sniff(mut inner: R) -> io::Result<(Compression, Self)> {
        let mut head = vec![0u8; 4];
        let mut n = 0;
        while n < head.len() {
            match inner.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        head.truncate(n);
        Ok((
            sniff(&head),
            Rewound {
                head,
                pos: 0,
                inner,
            },
        ))
    }
}

impl<R: Read> Read for Rewound<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Wraps `inner` in the decoder for `compression`.
pub fn decoder<'a, R: Read + 'a>(
    compression: Compression,
    inner: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(inner),
        Compression::Gzip => Box::new(GzipReader::new(inner)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
    })
}

#[cfg(any(not(feature = "isal"), test))]
const GZIP_WINDOW_BITS: u8 = 16 + 15;
const GZIP_INPUT_CHUNK: usize = 256 * 1024;

/// The inflate engine behind [`GzipReader`]: ISA-L when the `isal` feature
/// is on, zlib-rs otherwise. Both check each member's CRC32 and ISIZE.
enum Engine {
    // With ISA-L, zlib-rs only serves the tests that hold both engines to
    // the same rules.
    #[cfg(any(not(feature = "isal"), test))]
    ZlibRs(Box<zlib_rs::Inflate>),
    #[cfg(feature = "isal")]
    Isal(crate::sys::isal::GzipInflate),
}

/// What one inflate call did: input consumed, output produced, and whether
/// the member ended (its trailer read and matched).
struct Step {
    consumed: usize,
    produced: usize,
    finished: bool,
}

impl Engine {
    #[cfg(any(not(feature = "isal"), test))]
    fn zlib_rs() -> Self {
        Engine::ZlibRs(Box::new(zlib_rs::Inflate::new(true, GZIP_WINDOW_BITS)))
    }

    /// The build's default engine.
    fn best() -> Self {
        #[cfg(feature = "isal")]
        return Engine::Isal(crate::sys::isal::GzipInflate::new());
        #[cfg(not(feature = "isal"))]
        Engine::zlib_rs()
    }

    /// Readies the engine for the next member.
    fn reset(&mut self) {
        match self {
            #[cfg(any(not(feature = "isal"), test))]
            Engine::ZlibRs(inflate) => **inflate = zlib_rs::Inflate::new(true, GZIP_WINDOW_BITS),
            #[cfg(feature = "isal")]
            Engine::Isal(inflate) => inflate.reset(),
        }
    }

    fn step(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<Step> {
        match self {
            #[cfg(any(not(feature = "isal"), test))]
            Engine::ZlibRs(inflate) => {
                let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
                let status = inflate
                    .decompress(input, out, zlib_rs::InflateFlush::NoFlush)
                    .map_err(|_| corrupt(inflate.error_message().unwrap_or("inflate failed")))?;
                Ok(Step {
                    consumed: (inflate.total_in() - in_before) as usize,
                    produced: (inflate.total_out() - out_before) as usize,
                    finished: status == zlib_rs::Status::StreamEnd,
                })
            }
            #[cfg(feature = "isal")]
            Engine::Isal(inflate) => {
                let step = inflate
                    .inflate(input, out)
                    .map_err(|code| corrupt(crate::sys::isal::describe(code)))?;
                Ok(Step {
                    consumed: step.consumed,
                    produced: step.produced,
                    finished: step.finished,
                })
            }
        }
    }
}

/// A multi-member gzip decoder that checks every member's CRC and length
/// trailer, and fails on a truncated stream. It inflates with ISA-L when
/// metalor is built with the `isal` feature, with zlib-rs otherwise.
pub struct GzipReader<R> {
    inner: R,
    input: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    engine: Engine,
    member_done: bool,
    /// Calls in a row that neither consumed nor produced a byte.
    stalls: u8,
}

impl<R: Read> GzipReader<R> {
    /// A decoder reading compressed bytes from `inner`.
    pub fn new(inner: R) -> Self {
        Self::with_engine(inner, Engine::best())
    }

    fn with_engine(inner: R, engine: Engine) -> Self {
        GzipReader {
            inner,
            input: vec![0u8; GZIP_INPUT_CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            engine,
            member_done: false,
            stalls: 0,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        loop {
            match self.inner.read(&mut self.input) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.pos = 0;
                    self.len = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// After a member ends: true when another member follows. Trailing zero
    /// padding, which some writers add, ends the stream like EOF does.
    fn next_member(&mut self) -> io::Result<bool> {
        loop {
            if self.pos == self.len {
                if self.eof {
                    return Ok(false);
                }
                self.refill()?;
                continue;
            }
            if self.input[self.pos] != 0 {
                self.engine.reset();
                self.member_done = false;
                return Ok(true);
            }
            let rest = &self.input[self.pos..self.len];
            match rest.iter().position(|&b| b != 0) {
                Some(_) => return Err(corrupt("non-zero data in trailing padding")),
                None => self.pos = self.len,
            }
        }
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt gzip stream: {what}"),
    )
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.member_done && !self.next_member()? {
                return Ok(0);
            }
            if self.pos == self.len && !self.eof {
                self.refill()?;
            }
            let step = self.engine.step(&self.input[self.pos..self.len], out)?;
            self.pos += step.consumed;
            if step.finished {
                self.member_done = true;
            }
            if step.produced > 0 {
                self.stalls = 0;
                return Ok(step.produced);
            }
            if self.eof && self.pos == self.len && !self.member_done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated gzip stream",
                ));
            }
            // Input left, room for output, and nothing moved: an engine
            // that cannot go on (ISA-L on some bad headers) would spin.
            self.stalls = if step.consumed == 0 && !step.finished && self.pos < self.len {
                self.stalls + 1
            } else {
                0
            };
            if self.stalls > 2 {
                return Err(corrupt("inflate makes no progress"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn sniff_tells_formats_apart() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(&[0x50, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(sniff(&[0x5f, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(sniff(&[0x60, 0x2a, 0x4d, 0x18]), Compression::None);
        assert_eq!(sniff(&[0x50, 0x2a, 0x4d]), Compression::None);
        assert_eq!(sniff(b"usr/"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }

    #[test]
    fn a_declaration_decides_and_must_match_the_bytes() {
        use Compression::{Gzip, None as Plain, Zstd};
        for kind in [Plain, Gzip, Zstd] {
            assert_eq!(decide(None, kind).unwrap(), kind);
            assert_eq!(decide(Some(kind), kind).unwrap(), kind);
        }
        for (declared, sniffed) in [(Gzip, Plain), (Gzip, Zstd), (Zstd, Gzip), (Plain, Gzip)] {
            let err = decide(Some(declared), sniffed).unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::Mismatch {
                        what: "layer compression",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = decide(Some(Gzip), Plain).unwrap_err().to_string();
        assert_eq!(
            err,
            "layer compression mismatch: expected gzip per the media type, \
             found neither gzip nor zstd magic bytes"
        );
    }

    /// Every engine this build has, so both are tested when `isal` is on.
    fn engines(blob: &[u8]) -> Vec<GzipReader<&[u8]>> {
        #[allow(unused_mut)] // only pushed to with the `isal` feature
        let mut all = vec![GzipReader::with_engine(blob, Engine::zlib_rs())];
        #[cfg(feature = "isal")]
        all.push(GzipReader::with_engine(blob, Engine::best()));
        all
    }

    #[test]
    fn gzip_multi_member_and_padding() {
        let mut blob = gzip(b"hello ");
        blob.extend(gzip(b""));
        blob.extend(gzip(b"world"));
        blob.extend([0u8; 37]);
        for reader in engines(&blob) {
            assert_eq!(read_all(reader).unwrap(), b"hello world");
        }
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut blob = gzip(&big[..1_000_000]);
        blob.extend(gzip(&big[1_000_000..]));
        for reader in engines(&blob) {
            assert_eq!(read_all(reader).unwrap(), big);
        }
    }

    #[test]
    fn gzip_truncation_and_corruption_fail() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = gzip(&data);
        let n = blob.len();
        for cut in [1, 2, 9, n / 2, n - 9, n - 4, n - 1] {
            for reader in engines(&blob[..cut]) {
                let err = read_all(reader).unwrap_err();
                assert_eq!(
                    err.kind(),
                    io::ErrorKind::UnexpectedEof,
                    "cut at {cut}: {err}"
                );
            }
        }
        // The trailer: CRC32 (n-8..n-4), then ISIZE (n-4..n).
        for at in [n - 6, n - 2] {
            let mut bad = blob.clone();
            bad[at] ^= 0x01;
            for reader in engines(&bad) {
                let err = read_all(reader).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "byte {at}: {err}");
            }
        }
        let mut header = blob.clone();
        header[2] = 7; // not deflate
        for reader in engines(&header) {
            assert!(read_all(reader).is_err());
        }
        let mut trailing = blob;
        trailing.extend(b"\0\0garbage");
        for reader in engines(&trailing) {
            assert!(read_all(reader).is_err());
        }
    }

    #[test]
    fn zstd_multi_frame_and_rewound_sniff() {
        let mut blob = zstd::encode_all(&b"abc"[..], 1).unwrap();
        blob.extend(zstd::encode_all(&b"def"[..], 1).unwrap());
        let (kind, r) = Rewound::sniff(&blob[..]).unwrap();
        assert_eq!(kind, Compression::Zstd);
        assert_eq!(read_all(decoder(kind, r).unwrap()).unwrap(), b"abcdef");
        let truncated = &blob[..blob.len() - 2];
        assert!(read_all(decoder(Compression::Zstd, truncated).unwrap()).is_err());
    }
}
