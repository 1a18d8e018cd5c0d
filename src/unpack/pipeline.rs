//! Two-core layer pipeline: one thread reads, hashes and decompresses blobs;
//! the calling thread hashes the tar stream (diff_id) and applies it.
//!
//! Chunks travel through a bounded channel and their buffers come back for
//! reuse, so memory stays at a few MiB whatever the layer size, and layer
//! N+1 is already decoding while layer N is still being applied.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::apply::Applier;
use super::decode::{self, Compression, Rewound};
use super::digest::{DigestCheck, Hasher};
use super::error::UnpackError;

const CHUNK: usize = 1024 * 1024;
const IN_FLIGHT: usize = 4;

/// One layer blob to apply, with what the image says about it.
pub struct LayerInput {
    /// The compressed blob stream (usually the blob file).
    pub blob: Box<dyn Read + Send>,
    /// The blob digest (`algorithm:hex`) from the manifest.
    pub digest: String,
    /// The blob size from the manifest.
    pub size: u64,
    /// The uncompressed digest from the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

enum Msg {
    Data(Vec<u8>),
    /// The blob was read to its end and matched its digest and size.
    End,
    Failed(UnpackError),
}

/// Applies `layers` in order with `applier`, verifying each blob digest, blob
/// size and diff_id. `on_layer` is told when each layer is done.
pub fn apply_layers(
    applier: &mut Applier<'_>,
    layers: Vec<LayerInput>,
    on_layer: &mut dyn FnMut(usize, &str),
) -> Result<(), (usize, UnpackError)> {
    let mut checks = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let blob = DigestCheck::parse(&layer.digest).map_err(|e| (i, e))?;
        let diff = DigestCheck::parse(&layer.diff_id).map_err(|e| (i, e))?;
        checks.push((layer.digest.clone(), blob == diff, diff));
    }
    let (tx, rx) = sync_channel::<Msg>(IN_FLIGHT);
    let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    std::thread::scope(|scope| {
        scope.spawn(move || decode_all(layers, tx, pool_rx));
        let mut stream = ChunkStream {
            rx,
            pool: pool_tx,
            current: Vec::new(),
            pos: 0,
            hasher: None,
            ended: false,
            failure: None,
        };
        for (i, (digest, same_as_blob, diff)) in checks.into_iter().enumerate() {
            // For an uncompressed layer the diff_id is the blob digest, which
            // the decoder already checks: hash once.
            stream.hasher = (!same_as_blob).then(|| diff.hasher());
            stream.ended = false;
            apply_one(applier, &mut stream).map_err(|e| (i, e))?;
            if let Some(hasher) = stream.hasher.take() {
                diff.verify("diff_id", hasher).map_err(|e| (i, e))?;
            }
            on_layer(i, &digest);
        }
        Ok(())
    })
}

fn apply_one(applier: &mut Applier<'_>, stream: &mut ChunkStream) -> Result<(), UnpackError> {
    let result = applier.apply_layer(&mut *stream).map(|_| ());
    if let Some(failure) = stream.failure.take() {
        return Err(failure);
    }
    result?;
    // Hash what follows the end-of-archive marker too: the diff_id covers
    // the whole stream. A decoder failure (a digest or size mismatch found
    // at the blob's end) is the error to report, not the read that saw it.
    let drained = io::copy(stream, &mut io::sink());
    match (stream.failure.take(), drained) {
        (Some(failure), _) => Err(failure),
        (None, Err(e)) => Err(UnpackError::Stream(e)),
        (None, Ok(_)) => Ok(()),
    }
}

/// The applier's side of the channel: a `Read` over the chunks of one layer.
struct ChunkStream {
    rx: Receiver<Msg>,
    pool: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    hasher: Option<Hasher>,
    ended: bool,
    failure: Option<UnpackError>,
}

impl Read for ChunkStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    let old = std::mem::replace(&mut self.current, chunk);
                    let _ = self.pool.try_send(old);
                    self.pos = 0;
                }
                Ok(Msg::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(Msg::Failed(e)) => {
                    self.failure = Some(e);
                    self.ended = true;
                    return Err(io::Error::other("layer decoder failed"));
                }
                Err(_) => {
                    self.ended = true;
                    return Err(io::Error::other("layer decoder stopped"));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn decode_all(layers: Vec<LayerInput>, tx: SyncSender<Msg>, pool: Receiver<Vec<u8>>) {
    for layer in layers {
        let msg = match decode_one(layer, &tx, &pool) {
            Ok(()) => Msg::End,
            Err(e) => Msg::Failed(e),
        };
        let failed = matches!(msg, Msg::Failed(_));
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

/// Streams one blob through its digest check and decoder into chunks.
/// Returns early (quietly) if the applier hung up.
fn decode_one(
    layer: LayerInput,
    tx: &SyncSender<Msg>,
    pool: &Receiver<Vec<u8>>,
) -> Result<(), UnpackError> {
    let check = DigestCheck::parse(&layer.digest)?;
    let diff = DigestCheck::parse(&layer.diff_id)?;
    let mut hashed = HashingReader {
        inner: layer.blob,
        hasher: check.hasher(),
        count: 0,
        limit: layer.size,
    };
    let streamed = stream_blob(&mut hashed, check == diff, &diff, tx, pool);
    let streamed = match streamed {
        // Past the declared size is a size mismatch, whatever read saw it.
        Err(_) if hashed.count > layer.size => Err(UnpackError::Mismatch {
            what: "blob size",
            expected: layer.size.to_string(),
            found: format!("more than {}", layer.size),
        }),
        other => other,
    };
    let Some(diff_hasher) = streamed? else {
        return Ok(());
    };
    if hashed.count != layer.size {
        return Err(UnpackError::Mismatch {
            what: "blob size",
            expected: layer.size.to_string(),
            found: hashed.count.to_string(),
        });
    }
    check.verify("blob digest", hashed.hasher)?;
    match diff_hasher {
        Some(hasher) => diff.verify("diff_id", hasher),
        None => Ok(()),
    }
}

/// Decodes the blob into chunks for the applier, then reads the blob to its
/// end so the digest covers every byte. Returns `None` if the applier hung
/// up. When the image says diff_id == blob digest, the applier skips the
/// diff_id hash; that is only sound for an uncompressed blob, so for a
/// compressed one the decoded stream is hashed here and returned.
fn stream_blob(
    hashed: &mut HashingReader,
    diff_is_blob: bool,
    diff: &DigestCheck,
    tx: &SyncSender<Msg>,
    pool: &Receiver<Vec<u8>>,
) -> Result<Option<Option<Hasher>>, UnpackError> {
    let (kind, rewound) = Rewound::sniff(&mut *hashed).map_err(UnpackError::Stream)?;
    let mut diff_hasher = (diff_is_blob && kind != Compression::None).then(|| diff.hasher());
    {
        let mut decoder = decode::decoder(kind, rewound).map_err(UnpackError::Stream)?;
        loop {
            let mut chunk = pool
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            chunk.resize(CHUNK, 0);
            let n = fill(&mut decoder, &mut chunk).map_err(UnpackError::Stream)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            if let Some(h) = diff_hasher.as_mut() {
                h.update(&chunk);
            }
            if tx.send(Msg::Data(chunk)).is_err() {
                return Ok(None);
            }
        }
    }
    // The decoder may stop at its end marker; the digest covers every byte.
    io::copy(hashed, &mut io::sink()).map_err(UnpackError::Stream)?;
    Ok(Some(diff_hasher))
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

/// Hashes and counts the compressed bytes; refuses to read past the
/// declared size, so a lying size cannot make us read forever.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Hasher,
    count: u64,
    limit: u64,
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
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
