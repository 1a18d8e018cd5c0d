//! The layer pipeline, sized for two cores: a decoder thread reads, checks
//! and decompresses each blob; a hasher thread computes the diff_id of the
//! decompressed stream; the calling thread parses and applies it.
//!
//! Decompressed chunks are shared (`Arc`) between the hasher and the
//! applier through bounded channels and return to a pool when both are done
//! with them, so memory stays at a few MiB whatever the layer size, and
//! layer N+1 is already decoding while layer N is still being applied.
//! Regular-file data goes from the chunk to the file without a copy in
//! between: the applier borrows it in place ([`Lend`]), and the tar reader
//! only counts those bytes.
//!
//! With only one core (`taskset`, a cgroup quota) threads would only take
//! turns, so [`apply_inline`] does it all in the calling thread instead,
//! with the same checks and errors.
#![forbid(unsafe_code)]

use std::cell::{Ref, RefCell};
use std::io::{self, Read};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

use super::apply::{Applier, Lend};
use super::decode::{self, Compression, Rewound};
use super::error::UnpackError;
use crate::oci::{Digest, DigestHasher, ImageLayout, OciError, ResolvedImage};

const CHUNK: usize = 1024 * 1024;
/// Chunks queued to the applier and to the hasher. Eight rather than four
/// lets the three threads ride out each other's scheduling gaps on two
/// cores: 3-4% less wall time on the Debian image (gzip and zstd, tmpfs)
/// for about 4 MiB more peak RSS. 1 MiB chunks beat 256 KiB and 4 MiB.
const IN_FLIGHT: usize = 8;

type Chunk = Arc<Vec<u8>>;

/// One layer blob to apply, with what the image says about it.
pub struct LayerInput {
    /// The compressed blob stream (usually the blob file).
    pub blob: Box<dyn Read + Send>,
    /// The blob digest from the manifest.
    pub digest: Digest,
    /// The blob size from the manifest.
    pub size: u64,
    /// The uncompressed digest from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// The compression the layer's media type declares, which decides the
    /// decoder; `None` for a bare stream no manifest describes, which is
    /// then read by its magic bytes (see [`decode`] for the rule).
    pub compression: Option<Compression>,
    /// The caller has just verified this blob's digest and size itself
    /// (it wrote the blob into the layout moments ago, as a pull does), so
    /// the compressed bytes are not hashed a second time; they are still
    /// counted against `size`, and the diff_id of the uncompressed stream
    /// is always checked. `false` for a blob read from an existing layout.
    pub blob_verified: bool,
}

impl LayerInput {
    /// Every layer of `image`, read from `layout`: each blob is hashed and
    /// size-checked as it streams, and each diff_id is checked, so a layout
    /// that changed since it was resolved cannot slip a layer past.
    pub fn from_layout(
        layout: &ImageLayout,
        image: &ResolvedImage,
    ) -> Result<Vec<LayerInput>, OciError> {
        let mut layers = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            layers.push(LayerInput {
                blob: Box::new(layout.open_blob(&layer.digest)?),
                digest: layer.digest.clone(),
                size: layer.size,
                diff_id: layer.diff_id.clone(),
                compression: Some(layer.compression),
                blob_verified: false,
            });
        }
        Ok(layers)
    }
}

/// Decoder to applier.
enum Msg {
    Data(Chunk),
    /// The blob was read to its end and matched its digest and size;
    /// `hashed` says whether the hasher checks this layer's diff_id.
    End {
        hashed: bool,
    },
    Failed(UnpackError),
}

/// Decoder to hasher.
enum HashMsg {
    /// A layer begins: the diff_id to check.
    Start(Digest),
    Data(Chunk),
    End,
}

/// Gives a chunk's buffer back to the pool when this was the last reference.
fn recycle(chunk: Chunk, pool: &SyncSender<Vec<u8>>) {
    if let Ok(buffer) = Arc::try_unwrap(chunk) {
        let _ = pool.try_send(buffer);
    }
}

/// A fresh hasher for `digest`, or the error for an algorithm metalor
/// cannot compute.
fn hasher_for(what: &'static str, digest: &Digest) -> Result<DigestHasher, UnpackError> {
    digest
        .hasher()
        .map_err(|_| UnpackError::UnverifiableDigest {
            what,
            digest: digest.clone(),
        })
}

/// Compares what `hasher` saw with `expected`.
fn verify(what: &'static str, expected: &Digest, hasher: DigestHasher) -> Result<(), UnpackError> {
    let found = hasher.finish_hex();
    if found == expected.hex() {
        return Ok(());
    }
    Err(UnpackError::Mismatch {
        what,
        expected: expected.to_string(),
        found: format!("{}:{found}", expected.algorithm()),
    })
}

/// Applies `layers` in order with `applier`, verifying each blob digest, blob
/// size and diff_id. `on_layer` is told when each layer is done. A digest
/// that cannot be verified fails before anything is applied.
pub fn apply_layers(
    applier: &mut Applier<'_>,
    layers: Vec<LayerInput>,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<(), (usize, UnpackError)> {
    let mut digests = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        hasher_for("blob digest", &layer.digest).map_err(|e| (i, e))?;
        hasher_for("diff_id", &layer.diff_id).map_err(|e| (i, e))?;
        digests.push(layer.digest.clone());
    }
    if one_core() {
        return apply_inline(applier, layers, on_layer);
    }
    let (tx, rx) = sync_channel::<Msg>(IN_FLIGHT);
    let (hash_tx, hash_rx) = sync_channel::<HashMsg>(IN_FLIGHT);
    let (verdict_tx, verdict_rx) = channel::<Result<(), UnpackError>>();
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(2 * IN_FLIGHT + 2);
    let hasher_pool = pool_tx.clone();
    std::thread::scope(|scope| {
        scope.spawn(move || decode_all(layers, tx, hash_tx, pool_rx));
        scope.spawn(move || hash_all(hash_rx, verdict_tx, hasher_pool));
        let stream = RefCell::new(ChunkStream {
            rx,
            pool: pool_tx,
            current: Arc::new(Vec::new()),
            pos: 0,
            owed: 0,
            ended: None,
            failure: None,
        });
        for (i, digest) in digests.iter().enumerate() {
            stream.borrow_mut().ended = None;
            let hashed = apply_one(applier, &stream).map_err(|e| (i, e))?;
            if hashed {
                let verdict = verdict_rx.recv().unwrap_or_else(|_| {
                    Err(UnpackError::Stream(io::Error::other(
                        "diff_id hasher stopped",
                    )))
                });
                verdict.map_err(|e| (i, e))?;
            }
            tracing::debug!(layer = i, %digest, "layer applied");
            on_layer(i, digest);
        }
        Ok(())
    })
}

/// Applies one layer from the stream and reads the stream to the layer's
/// end. Returns whether the hasher checks this layer's diff_id.
fn apply_one(
    applier: &mut Applier<'_>,
    stream: &RefCell<ChunkStream>,
) -> Result<bool, UnpackError> {
    let result = applier
        .apply_layer_lent(Shared(stream), &Shared(stream))
        .map(|_| ());
    if let Some(failure) = stream.borrow_mut().failure.take() {
        return Err(failure);
    }
    result?;
    // Consume what follows the end-of-archive marker: the decoder's verdict
    // on the blob comes after it. A decoder failure (a digest or size
    // mismatch found at the blob's end) is the error to report, not the read
    // that saw it.
    let drained = io::copy(&mut Shared(stream), &mut io::sink());
    let mut stream = stream.borrow_mut();
    match (stream.failure.take(), drained, stream.ended) {
        (Some(failure), _, _) => Err(failure),
        (None, Err(e), _) => Err(UnpackError::Stream(e)),
        (None, Ok(_), Some(hashed)) => Ok(hashed),
        (None, Ok(_), None) => Err(UnpackError::Stream(io::Error::other(
            "layer stream ended without a verdict",
        ))),
    }
}

/// The applier's side of the channel: the chunks of one layer, read
/// through [`Shared`].
struct ChunkStream {
    rx: Receiver<Msg>,
    pool: SyncSender<Vec<u8>>,
    current: Chunk,
    pos: usize,
    /// Bytes lent in place that the tar reader has not read yet (see
    /// [`Lend`]).
    owed: u64,
    /// Set at the layer's end: whether the hasher checks its diff_id.
    ended: Option<bool>,
    failure: Option<UnpackError>,
}

impl ChunkStream {
    /// Makes the current chunk one with bytes left to read, receiving the
    /// next chunk if need be. False at the layer's end.
    fn ready(&mut self) -> io::Result<bool> {
        while self.pos == self.current.len() {
            if self.ended.is_some() || self.failure.is_some() {
                return Ok(false);
            }
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    let old = std::mem::replace(&mut self.current, chunk);
                    recycle(old, &self.pool);
                    self.pos = 0;
                }
                Ok(Msg::End { hashed }) => {
                    self.ended = Some(hashed);
                    return Ok(false);
                }
                Ok(Msg::Failed(e)) => {
                    self.failure = Some(e);
                    return Err(io::Error::other("layer decoder failed"));
                }
                Err(_) => {
                    return Err(io::Error::other("layer decoder stopped"));
                }
            }
        }
        Ok(true)
    }
}

/// One handle on the applier's stream, as the tar reader's `Read` and as
/// the applier's [`Lend`]; the two never hold it at once.
struct Shared<'s>(&'s RefCell<ChunkStream>);

impl Read for Shared<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self.0.borrow_mut();
        if stream.owed > 0 {
            // Written to the file in place already: only counted here.
            let n = usize::try_from(stream.owed).map_or(buf.len(), |owed| owed.min(buf.len()));
            stream.owed -= n as u64;
            return Ok(n);
        }
        if !stream.ready()? {
            return Ok(0);
        }
        let at = stream.pos;
        let n = buf.len().min(stream.current.len() - at);
        buf[..n].copy_from_slice(&stream.current[at..at + n]);
        stream.pos += n;
        Ok(n)
    }
}

impl Lend for Shared<'_> {
    fn lend(&self, max: usize) -> io::Result<Ref<'_, [u8]>> {
        let range = {
            let mut stream = self.0.borrow_mut();
            if !stream.ready()? {
                0..0
            } else {
                let at = stream.pos;
                let n = max.min(stream.current.len() - at);
                stream.pos += n;
                stream.owed += n as u64;
                at..at + n
            }
        };
        Ok(Ref::map(self.0.borrow(), |stream| &stream.current[range]))
    }
}

/// The hasher thread: one diff_id check per `Start`..`End` run of chunks.
fn hash_all(
    rx: Receiver<HashMsg>,
    verdicts: Sender<Result<(), UnpackError>>,
    pool: SyncSender<Vec<u8>>,
) {
    let mut current: Option<(Digest, DigestHasher)> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            HashMsg::Start(diff_id) => match hasher_for("diff_id", &diff_id) {
                Ok(hasher) => current = Some((diff_id, hasher)),
                // This layer's verdict, sent early; End then has none to send.
                Err(e) => {
                    current = None;
                    if verdicts.send(Err(e)).is_err() {
                        return;
                    }
                }
            },
            HashMsg::Data(chunk) => {
                if let Some((_, hasher)) = current.as_mut() {
                    hasher.update(&chunk);
                }
                recycle(chunk, &pool);
            }
            HashMsg::End => {
                if let Some((diff_id, hasher)) = current.take() {
                    if verdicts.send(verify("diff_id", &diff_id, hasher)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn decode_all(
    layers: Vec<LayerInput>,
    tx: SyncSender<Msg>,
    hash_tx: SyncSender<HashMsg>,
    pool: Receiver<Vec<u8>>,
) {
    for layer in layers {
        let msg = match decode_one(layer, &tx, &hash_tx, &pool) {
            Ok(Some(hashed)) => Msg::End { hashed },
            Ok(None) => return,
            Err(e) => Msg::Failed(e),
        };
        let failed = matches!(msg, Msg::Failed(_));
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

/// Streams one blob through its digest check and decoder into chunks for
/// the applier (and the hasher). Returns whether the hasher checks the
/// diff_id, or `None` if the applier hung up.
fn decode_one(
    layer: LayerInput,
    tx: &SyncSender<Msg>,
    hash_tx: &SyncSender<HashMsg>,
    pool: &Receiver<Vec<u8>>,
) -> Result<Option<bool>, UnpackError> {
    let (mut hashed, layer) = HashingReader::of(layer)?;
    let target = layer.target();
    let streamed = stream_blob(&mut hashed, target, tx, hash_tx, pool);
    let streamed = oversize(streamed, &hashed, layer.size);
    let Some(diff_check) = streamed? else {
        return Ok(None);
    };
    finish_blob(
        hashed,
        &layer.digest,
        layer.size,
        &layer.diff_id,
        diff_check,
    )
    .map(Some)
}

/// The checks once a blob was read to its end: its size, its digest, and
/// the diff_id if it was hashed here. Returns whether the hasher thread
/// checks the diff_id instead.
fn finish_blob(
    hashed: HashingReader,
    digest: &Digest,
    size: u64,
    diff_id: &Digest,
    diff_check: DiffCheck,
) -> Result<bool, UnpackError> {
    if hashed.count != size {
        return Err(UnpackError::Mismatch {
            what: "blob size",
            expected: size.to_string(),
            found: hashed.count.to_string(),
        });
    }
    if let Some(hasher) = hashed.hasher {
        verify("blob digest", digest, hasher)?;
    }
    // The blob's own checks first: a blob that is not what the manifest
    // names is reported as such, not by the diff_id it then also misses.
    match diff_check {
        DiffCheck::Here(hasher) => verify("diff_id", diff_id, *hasher)?,
        DiffCheck::Thread => return Ok(true),
        DiffCheck::Covered => {}
    }
    Ok(false)
}

/// Past the declared size is a size mismatch, whatever read saw it.
fn oversize<T>(
    result: Result<T, UnpackError>,
    hashed: &HashingReader,
    size: u64,
) -> Result<T, UnpackError> {
    match result {
        Err(_) if hashed.count > size => Err(UnpackError::Mismatch {
            what: "blob size",
            expected: size.to_string(),
            found: format!("more than {size}"),
        }),
        other => other,
    }
}

/// Who checks a layer's diff_id.
enum DiffCheck {
    /// The blob digest covers the stream already (an uncompressed blob
    /// whose diff_id is its digest, hashed here).
    Covered,
    /// The hasher thread.
    Thread,
    /// The thread that decodes, as it reads the decoded stream (the
    /// one-core path, [`apply_inline`]).
    Here(Box<DigestHasher>),
}

/// Who checks the diff_id of a blob decoded as `kind`: nobody when the
/// blob digest, hashed here, covers the stream; the decoding thread when
/// `here`; the hasher thread otherwise.
fn diff_check(
    blob_hashed_here: bool,
    kind: Compression,
    target: &StreamTarget<'_>,
    here: bool,
) -> Result<DiffCheck, UnpackError> {
    Ok(
        if blob_hashed_here && kind == Compression::None && *target.digest == target.diff_id {
            DiffCheck::Covered
        } else if here {
            DiffCheck::Here(Box::new(hasher_for("diff_id", &target.diff_id)?))
        } else {
            DiffCheck::Thread
        },
    )
}

/// Whether only one core is ours (`taskset`, a cgroup quota). Threads then
/// only take turns: one thread doing everything is measurably faster (zstd
/// 6%, gzip 1%, on the Debian image pinned to one core).
fn one_core() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() < 2)
}

/// The one-core path: each layer is read, checked, decoded, hashed and
/// applied in the calling thread, with the same checks, in the same order,
/// and the same errors as the threaded path.
fn apply_inline(
    applier: &mut Applier<'_>,
    layers: Vec<LayerInput>,
    on_layer: &mut dyn FnMut(usize, &Digest),
) -> Result<(), (usize, UnpackError)> {
    for (i, layer) in layers.into_iter().enumerate() {
        let digest = layer.digest.clone();
        apply_inline_one(applier, layer).map_err(|e| (i, e))?;
        tracing::debug!(layer = i, %digest, "layer applied");
        on_layer(i, &digest);
    }
    Ok(())
}

fn apply_inline_one(applier: &mut Applier<'_>, layer: LayerInput) -> Result<(), UnpackError> {
    let (mut hashed, layer) = HashingReader::of(layer)?;
    let target = layer.target();
    let streamed = oversize(
        inline_blob(applier, &mut hashed, target),
        &hashed,
        layer.size,
    );
    let check = streamed?;
    finish_blob(hashed, &layer.digest, layer.size, &layer.diff_id, check).map(|_| ())
}

/// [`stream_blob`] and [`apply_one`] in one thread: the tar reader reads
/// the decoder directly. A decoder error is the error to report, not the
/// tar reader's view of it.
fn inline_blob(
    applier: &mut Applier<'_>,
    hashed: &mut HashingReader,
    target: StreamTarget<'_>,
) -> Result<DiffCheck, UnpackError> {
    let blob_hashed_here = hashed.hasher.is_some();
    let (sniffed, rewound) = Rewound::sniff(&mut *hashed).map_err(UnpackError::Stream)?;
    let kind = decode::decide(target.declared, sniffed)?;
    let mut check = diff_check(blob_hashed_here, kind, &target, true)?;
    {
        let mut decoded = Decoded {
            inner: decode::decoder(kind, rewound).map_err(UnpackError::Stream)?,
            hasher: match &mut check {
                DiffCheck::Here(hasher) => Some(&mut **hasher),
                _ => None,
            },
            failure: None,
        };
        let applied = applier.apply_layer(&mut decoded).map(|_| ());
        // Past the end-of-archive marker: the diff_id covers it too.
        let drained = applied.and_then(|()| {
            io::copy(&mut decoded, &mut io::sink())
                .map(|_| ())
                .map_err(UnpackError::Stream)
        });
        if let Some(failure) = decoded.failure.take() {
            return Err(UnpackError::Stream(failure));
        }
        drained?;
    }
    // The decoder may stop at its end marker; the digest covers every byte.
    io::copy(hashed, &mut io::sink()).map_err(UnpackError::Stream)?;
    Ok(check)
}

/// The decoded stream of the one-core path: hashed as it is read, and
/// keeping the decoder's first error for the caller.
struct Decoded<'h, R> {
    inner: R,
    hasher: Option<&'h mut DigestHasher>,
    failure: Option<io::Error>,
}

impl<R: Read> Read for Decoded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("layer decoder failed"));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(hasher) = self.hasher.as_mut() {
                    hasher.update(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.failure = Some(e);
                Err(io::Error::other("layer decoder failed"))
            }
        }
    }
}

/// Decodes the blob into chunks, then reads the blob to its end so the
/// digest and the size cover every byte. For an uncompressed blob whose
/// diff_id is its digest, our blob check already covers the stream and
/// the decoded bytes are not hashed; otherwise (and always for a blob the
/// caller verified, whose bytes we do not hash here) the hasher thread gets
/// every chunk. Returns who checks the diff_id, or `None` if the applier
/// hung up.
fn stream_blob(
    hashed: &mut HashingReader,
    target: StreamTarget<'_>,
    tx: &SyncSender<Msg>,
    hash_tx: &SyncSender<HashMsg>,
    pool: &Receiver<Vec<u8>>,
) -> Result<Option<DiffCheck>, UnpackError> {
    let blob_hashed_here = hashed.hasher.is_some();
    let (sniffed, rewound) = Rewound::sniff(&mut *hashed).map_err(UnpackError::Stream)?;
    let kind = decode::decide(target.declared, sniffed)?;
    // On two cores the hasher thread beats hashing in the decoder, for
    // zstd too (0.89x the wall time, Debian image, tmpfs).
    let check = diff_check(blob_hashed_here, kind, &target, false)?;
    let thread = matches!(check, DiffCheck::Thread);
    if thread && hash_tx.send(HashMsg::Start(target.diff_id)).is_err() {
        return Ok(None);
    }
    {
        let mut decoder = decode::decoder(kind, rewound).map_err(UnpackError::Stream)?;
        loop {
            let mut buffer = pool
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            buffer.resize(CHUNK, 0);
            let n = fill(&mut decoder, &mut buffer).map_err(UnpackError::Stream)?;
            if n == 0 {
                break;
            }
            buffer.truncate(n);
            let chunk = Arc::new(buffer);
            if thread && hash_tx.send(HashMsg::Data(Arc::clone(&chunk))).is_err() {
                return Ok(None);
            }
            if tx.send(Msg::Data(chunk)).is_err() {
                return Ok(None);
            }
        }
    }
    // The decoder may stop at its end marker; the digest covers every byte.
    io::copy(hashed, &mut io::sink()).map_err(UnpackError::Stream)?;
    if thread && hash_tx.send(HashMsg::End).is_err() {
        return Ok(None);
    }
    Ok(Some(check))
}

fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What one blob is checked against and decoded as.
struct StreamTarget<'a> {
    digest: &'a Digest,
    diff_id: Digest,
    declared: Option<Compression>,
}

/// Hashes (unless the caller already verified the blob) and counts the
/// compressed bytes; refuses to read past the declared size, so a lying
/// size cannot make us read forever.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Option<DigestHasher>,
    count: u64,
    limit: u64,
}

/// What of a [`LayerInput`] the checks need once its stream is taken.
struct LayerCheck {
    digest: Digest,
    diff_id: Digest,
    compression: Option<Compression>,
    size: u64,
}

impl LayerCheck {
    fn target(&self) -> StreamTarget<'_> {
        StreamTarget {
            digest: &self.digest,
            diff_id: self.diff_id.clone(),
            declared: self.compression,
        }
    }
}

impl HashingReader {
    /// The layer's blob stream, hashed against its digest unless the blob
    /// was verified already, and bounded by its size; with what the
    /// checks after the stream need.
    fn of(layer: LayerInput) -> Result<(HashingReader, LayerCheck), UnpackError> {
        let hasher = if layer.blob_verified {
            None
        } else {
            Some(hasher_for("blob digest", &layer.digest)?)
        };
        let reader = HashingReader {
            inner: layer.blob,
            hasher,
            count: 0,
            limit: layer.size,
        };
        let check = LayerCheck {
            digest: layer.digest,
            diff_id: layer.diff_id,
            compression: layer.compression,
            size: layer.size,
        };
        Ok((reader, check))
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob is larger than its declared size {}", self.limit),
            ));
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}
