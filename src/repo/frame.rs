//! Object framing: every object pgwal stores is a fixed 64-byte header followed
//! by the payload. The header carries the SHA-256 and size of the original
//! bytes, so any object verifies on its own, with nothing else read.
//!
//! ```text
//! offset size  field
//!      0    8  magic "PGWALOBJ"
//!      8    2  frame format version (1), little-endian
//!     10    1  compression: 0 none, 1 zstd
//!     11    5  reserved, zero
//!     16    8  original size in bytes
//!     24    8  payload size in bytes (what follows the header)
//!     32   32  SHA-256 of the original bytes
//! ```
//!
//! A zstd payload is a sequence of independent zstd frames, one per chunk of
//! [`CHUNK_SIZE`] original bytes. Any zstd decoder reads the concatenation as
//! one stream; pgwal compresses and decompresses the chunks on all cores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use sha2::{Digest, Sha256};

use crate::storage::mapped::HugeBuffer;

/// Length of the frame header.
pub const HEADER_LEN: usize = 64;
/// Magic bytes at the start of every object.
pub const MAGIC: &[u8; 8] = b"PGWALOBJ";
/// The frame format version this build writes and reads.
pub const FRAME_VERSION: u16 = 1;
/// Original bytes per zstd frame: small enough that a 16 MiB segment spreads
/// evenly over the cores and that hashing can follow decompression closely
/// (the hash, strictly in order, is the critical path of `fetch`), large
/// enough that the ratio loss at frame edges stays negligible (measured on
/// real WAL at level 1: 4.401 with 4 MiB frames, 4.388 with 1 MiB).
pub const CHUNK_SIZE: usize = 1 << 20;

/// The most original bytes one frame may claim when read back: a corrupt
/// frame header must not make a reader allocate without bound. Generous, so
/// objects written with other chunk sizes stay readable.
const MAX_FRAME_CONTENT: usize = 64 << 20;

/// Inputs from this size on are compressed into huge-page buffers (see
/// `encode_parts`); smaller ones, the metadata objects, into plain vectors.
const HUGE_OUTPUT_MIN: usize = 2 * CHUNK_SIZE;

/// How the payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is (small metadata objects).
    None,
    /// zstd at the given level.
    Zstd(i32),
}

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Lower-case hex of a digest, for messages and JSON.
pub fn hex(digest: &Sha256Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// 0 none, 1 zstd.
    pub compression: u8,
    /// Size of the original bytes.
    pub original_size: u64,
    /// Size of the payload after the header.
    pub payload_size: u64,
    /// SHA-256 of the original bytes.
    pub sha256: Sha256Digest,
}

/// Why an object cannot be decoded into the bytes it claims to hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header, or the magic is wrong.
    #[error("not a pgwal object (no valid header)")]
    NotAnObject,
    /// Written by a newer pgwal.
    #[error("object frame version {0} is newer than this pgwal understands (1)")]
    UnsupportedVersion(u16),
    /// Unknown compression code.
    #[error("unknown compression code {0}")]
    UnknownCompression(u8),
    /// The payload is not as long as the header says: truncated or appended to.
    #[error("payload is {actual} bytes but the header says {expected}")]
    PayloadSize { expected: u64, actual: u64 },
    /// The payload does not decompress.
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    /// The decompressed size differs from the header's.
    #[error("content is {actual} bytes but the header says {expected}")]
    OriginalSize { expected: u64, actual: u64 },
    /// The content's SHA-256 differs from the header's.
    #[error("SHA-256 mismatch: header says {expected}, content hashes to {actual}")]
    Checksum { expected: String, actual: String },
    /// The object's encryption envelope does not open (see `crypt`).
    #[error("{0}")]
    Sealed(String),
    /// Compression failed (out of memory, bad level).
    #[error("compression failed: {0}")]
    Compress(String),
}

impl FrameHeader {
    /// Parses and checks a header from the first [`HEADER_LEN`] bytes of an object.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        if bytes.len() < HEADER_LEN || &bytes[0..8] != MAGIC {
            return Err(FrameError::NotAnObject);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let compression = bytes[10];
        if bytes[11..16].iter().any(|&b| b != 0) {
            return Err(FrameError::NotAnObject);
        }
        if compression > 1 {
            return Err(FrameError::UnknownCompression(compression));
        }
        let u64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(v)
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&bytes[32..64]);
        Ok(FrameHeader { compression, original_size: u64_at(16), payload_size: u64_at(24), sha256 })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
        out.push(self.compression);
        out.extend_from_slice(&[0u8; 5]);
        out.extend_from_slice(&self.original_size.to_le_bytes());
        out.extend_from_slice(&self.payload_size.to_le_bytes());
        out.extend_from_slice(&self.sha256);
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Sha256Digest {
    Sha256::digest(data).into()
}

/// Worker threads for chunk work: the cores we have, at most one per job.
fn workers(jobs: usize) -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, jobs.max(1))
}

/// Frames `data`: compresses and hashes it, using all cores. The hash runs as
/// one job beside the chunk compressions so that both overlap.
pub fn encode(data: &[u8], compression: Compression) -> Result<(Vec<u8>, FrameHeader), FrameError> {
    let (parts, header) = encode_parts(data, compression)?;
    Ok((parts.concat(), header))
}

/// [`encode`] as the pieces of the object in order: the header, then each
/// compressed frame. A store can write them one after the other, which spares
/// `archive` a copy of the whole object on its critical path.
pub fn encode_parts(data: &[u8], compression: Compression) -> Result<(Vec<bytes::Bytes>, FrameHeader), FrameError> {
    let level = match compression {
        Compression::None => {
            let header = FrameHeader {
                compression: 0,
                original_size: data.len() as u64,
                payload_size: data.len() as u64,
                sha256: sha256(data),
            };
            let mut out = Vec::with_capacity(HEADER_LEN + data.len());
            header.write(&mut out);
            out.extend_from_slice(data);
            return Ok((vec![out.into()], header));
        }
        Compression::Zstd(level) => level,
    };
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(CHUNK_SIZE).collect() };
    // Job 0 hashes the whole input; job i >= 1 compresses chunk i - 1.
    let jobs = chunks.len() + 1;
    let next = AtomicUsize::new(0);
    // Large inputs: each worker writes its frames one after the other into
    // one buffer of its own in huge pages. A fresh Vec per 1 MiB frame costs
    // a page fault per 4 KiB written, about 1000 per WAL segment.
    let bound: usize = chunks.iter().map(|c| zstd::zstd_safe::compress_bound(c.len())).sum();
    let huge = data.len() >= HUGE_OUTPUT_MIN;
    let mut digest: Option<Sha256Digest> = None;
    let mut compressed: Vec<Option<Result<bytes::Bytes, FrameError>>> = (0..chunks.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..workers(jobs) {
            let tx = tx.clone();
            let (next, chunks) = (&next, &chunks);
            s.spawn(move || {
                let compress_err = |e: std::io::Error| FrameError::Compress(e.to_string());
                // One compression context per worker, reused across its chunks.
                let mut cctx = zstd::bulk::Compressor::new(level).map_err(compress_err);
                let mut out = if huge { Some(HugeBuffer::new(bound).map_err(compress_err)) } else { None };
                let mut used = 0;
                // Frames written into `out`: (chunk, range), sent once it is full.
                let mut placed: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= jobs {
                        break;
                    }
                    let result = if job == 0 {
                        Err(sha256(data))
                    } else {
                        let chunk = chunks[job - 1];
                        let frame = match (cctx.as_mut(), out.as_mut()) {
                            (Err(e), _) | (_, Some(Err(e))) => Some(Err(e.clone())),
                            (Ok(c), None) => Some(c.compress(chunk).map(bytes::Bytes::from).map_err(compress_err)),
                            (Ok(c), Some(Ok(buf))) => {
                                match c.compress_to_buffer(chunk, &mut buf.as_mut_slice()[used..]) {
                                    Ok(n) => {
                                        placed.push((job - 1, used..used + n));
                                        used += n;
                                        None
                                    }
                                    Err(e) => Some(Err(compress_err(e))),
                                }
                            }
                        };
                        match frame {
                            Some(frame) => Ok((job - 1, frame)),
                            None => continue,
                        }
                    };
                    if tx.send(result).is_err() {
                        return;
                    }
                }
                if let Some(Ok(buf)) = out {
                    let shared = bytes::Bytes::from_owner(buf);
                    for (chunk, range) in placed {
                        if tx.send(Ok((chunk, Ok(shared.slice(range))))).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        for result in rx {
            match result {
                Err(d) => digest = Some(d),
                Ok((chunk, c)) => compressed[chunk] = Some(c),
            }
        }
    });
    let sha256 = digest.expect("invariant: the hash job always runs");
    let mut parts = Vec::with_capacity(compressed.len() + 1);
    parts.push(bytes::Bytes::new());
    for part in compressed {
        parts.push(part.expect("invariant: every chunk job runs")?);
    }
    let payload_size: usize = parts.iter().map(bytes::Bytes::len).sum();
    let header =
        FrameHeader { compression: 1, original_size: data.len() as u64, payload_size: payload_size as u64, sha256 };
    let mut head = Vec::with_capacity(HEADER_LEN);
    header.write(&mut head);
    parts[0] = head.into();
    Ok((parts, header))
}

/// Splits a zstd payload into its frames, each with the content size its
/// frame header declares (pgwal always writes it).
fn zstd_frames(payload: &[u8]) -> Result<Vec<(&[u8], usize)>, FrameError> {
    let mut frames = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|code| FrameError::Decompress(zstd::zstd_safe::get_error_name(code).to_string()))?;
        let content = match zstd::zstd_safe::get_frame_content_size(rest) {
            Ok(Some(n)) => n,
            _ => return Err(FrameError::Decompress("zstd frame without a content size".into())),
        };
        let (frame, tail) = rest.split_at(len);
        // A frame cannot expand beyond the zstd format's limit; refuse absurd
        // sizes from a corrupt header before allocating for them.
        let content = usize::try_from(content)
            .ok()
            .filter(|&c| c <= MAX_FRAME_CONTENT)
            .ok_or_else(|| FrameError::Decompress("zstd frame claims an impossible size".into()))?;
        frames.push((frame, content));
        rest = tail;
    }
    Ok(frames)
}

/// Decodes an object and checks it against its header, handing each piece of
/// original bytes to `sink` with its offset. Worker threads decompress the
/// zstd frames and hand them to `sink` in any order (so writing overlaps
/// decompression), while the calling thread hashes them strictly in order.
/// Nothing handed to `sink` may be trusted until this returns `Ok(Ok(_))`;
/// `Ok(Err(_))` is the first error `sink` returned.
pub fn decode_with<S>(object: &[u8], sink: S) -> Result<Result<FrameHeader, std::io::Error>, FrameError>
where
    S: Fn(u64, &[u8]) -> std::io::Result<()> + Sync,
{
    let header = FrameHeader::parse(object)?;
    let payload = &object[HEADER_LEN..];
    if payload.len() as u64 != header.payload_size {
        return Err(FrameError::PayloadSize { expected: header.payload_size, actual: payload.len() as u64 });
    }
    let sink_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let deliver = |offset: u64, piece: &[u8]| {
        if let Err(e) = sink(offset, piece) {
            sink_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
    };
    let mut hasher = Sha256::new();
    let mut hashed: u64 = 0;
    if header.compression == 0 {
        deliver(0, payload);
        hasher.update(payload);
        hashed = payload.len() as u64;
    } else {
        let frames = zstd_frames(payload)?;
        let declared: u64 = frames.iter().map(|f| f.1 as u64).sum();
        if declared != header.original_size {
            return Err(FrameError::OriginalSize { expected: header.original_size, actual: declared });
        }
        // One output buffer in huge pages, cut into one slice per frame: each
        // worker decompresses into its frame's slice and hands it to `sink`;
        // the calling thread hashes the slices in order as they complete.
        let mut output = HugeBuffer::new(declared as usize).map_err(|e| FrameError::Decompress(e.to_string()))?;
        let mut slots: Vec<Mutex<&mut [u8]>> = Vec::with_capacity(frames.len());
        let mut rest = output.as_mut_slice();
        for &(_, content) in &frames {
            let (slot, tail) = rest.split_at_mut(content);
            slots.push(Mutex::new(slot));
            rest = tail;
        }
        let offsets: Vec<u64> = frames
            .iter()
            .scan(0u64, |at, f| {
                let start = *at;
                *at += f.1 as u64;
                Some(start)
            })
            .collect();
        // Decompresses the next unclaimed frame into its slot and hands it to
        // `sink`; `None` when every frame is claimed.
        let next = AtomicUsize::new(0);
        let decompress_next = |dctx: &mut Result<zstd::bulk::Decompressor<'static>, FrameError>| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let &(frame, content) = frames.get(i)?;
            let mut slot = slots[i].lock().unwrap_or_else(|p| p.into_inner());
            let out = match dctx.as_mut() {
                Ok(d) => d.decompress_to_buffer(frame, &mut **slot).map_err(|e| FrameError::Decompress(e.to_string())),
                Err(e) => Err(e.clone()),
            }
            .and_then(|n| {
                if n == content {
                    Ok(())
                } else {
                    Err(FrameError::OriginalSize { expected: content as u64, actual: n as u64 })
                }
            });
            if out.is_ok() {
                deliver(offsets[i], &slot);
            }
            Some((i, out))
        };
        let new_dctx = || zstd::bulk::Decompressor::new().map_err(|e| FrameError::Decompress(e.to_string()));
        let mut failed = None;
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<(usize, Result<(), FrameError>)>();
            // One core is the calling thread's: it hashes in order and, when
            // the next frame is not ready yet, decompresses one itself rather
            // than wait, so no core is oversubscribed or idle.
            for _ in 1..workers(frames.len()) {
                let tx = tx.clone();
                let (decompress_next, new_dctx) = (&decompress_next, &new_dctx);
                s.spawn(move || {
                    let mut dctx = new_dctx();
                    while let Some((i, out)) = decompress_next(&mut dctx) {
                        let stop = out.is_err();
                        if tx.send((i, out)).is_err() || stop {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut dctx = new_dctx();
            let mut ready = vec![false; frames.len()];
            let mut cursor = 0;
            let mut note = |(i, out): (usize, Result<(), FrameError>), ready: &mut Vec<bool>| match out {
                Ok(()) => {
                    ready[i] = true;
                    true
                }
                Err(e) => {
                    failed = Some(e);
                    next.store(usize::MAX / 2, Ordering::Relaxed);
                    false
                }
            };
            while cursor < frames.len() {
                while let Ok(done) = rx.try_recv() {
                    if !note(done, &mut ready) {
                        return;
                    }
                }
                if ready[cursor] {
                    let slot = slots[cursor].lock().unwrap_or_else(|p| p.into_inner());
                    hasher.update(&**slot);
                    hashed += slot.len() as u64;
                    cursor += 1;
                    continue;
                }
                let done = match decompress_next(&mut dctx) {
                    Some(done) => done,
                    // Everything is claimed: wait for the workers.
                    None => match rx.recv() {
                        Ok(done) => done,
                        Err(_) => return,
                    },
                };
                if !note(done, &mut ready) {
                    return;
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if hashed != header.original_size {
        return Err(FrameError::OriginalSize { expected: header.original_size, actual: hashed });
    }
    let actual: Sha256Digest = hasher.finalize().into();
    if actual != header.sha256 {
        return Err(FrameError::Checksum { expected: hex(&header.sha256), actual: hex(&actual) });
    }
    Ok(match sink_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(header),
    })
}

/// Decodes an object into `out` (resized to the content, reusing its memory)
/// WITHOUT checking the content's SHA-256: only sizes and the zstd framing.
/// For a caller that checks every byte it uses against checksums of its own
/// before using it — restore, which checks each file against the SHA-256 the
/// (checked) manifest records for it — so that the bytes are hashed once,
/// not twice. Everyone else uses [`decode`] or [`decode_with`].
///
/// A worker thread that restores pack after pack keeps one `out` buffer:
/// a fresh allocation per pack costs the kernel zeroing every page of it.
pub fn decode_unhashed_into(object: &[u8], out: &mut Vec<u8>) -> Result<FrameHeader, FrameError> {
    let header = FrameHeader::parse(object)?;
    let payload = &object[HEADER_LEN..];
    if payload.len() as u64 != header.payload_size {
        return Err(FrameError::PayloadSize { expected: header.payload_size, actual: payload.len() as u64 });
    }
    if header.compression == 0 {
        if payload.len() as u64 != header.original_size {
            return Err(FrameError::OriginalSize { expected: header.original_size, actual: payload.len() as u64 });
        }
        out.clear();
        out.extend_from_slice(payload);
        return Ok(header);
    }
    let frames = zstd_frames(payload)?;
    let declared: usize = frames.iter().map(|f| f.1).sum();
    if declared as u64 != header.original_size {
        return Err(FrameError::OriginalSize { expected: header.original_size, actual: declared as u64 });
    }
    // Only growth is zero-filled; a reused buffer is simply overwritten.
    out.resize(declared, 0);
    let mut slots: Vec<Mutex<(&[u8], &mut [u8])>> = Vec::with_capacity(frames.len());
    let mut rest = out.as_mut_slice();
    for &(frame, content) in &frames {
        let (slot, tail) = rest.split_at_mut(content);
        slots.push(Mutex::new((frame, slot)));
        rest = tail;
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<FrameError>> = Mutex::new(None);
    let work = || {
        let mut dctx = match zstd::bulk::Decompressor::new() {
            Ok(d) => d,
            Err(e) => {
                failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(FrameError::Decompress(e.to_string()));
                return;
            }
        };
        while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            let (frame, ref mut dest) = *slot;
            let want = dest.len();
            let result = match dctx.decompress_to_buffer(frame, &mut **dest) {
                Ok(n) if n == want => Ok(()),
                Ok(n) => Err(FrameError::OriginalSize { expected: want as u64, actual: n as u64 }),
                Err(e) => Err(FrameError::Decompress(e.to_string())),
            };
            if let Err(e) = result {
                failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                next.store(usize::MAX / 2, Ordering::Relaxed);
                return;
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..workers(frames.len()) {
            s.spawn(work);
        }
        work();
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(header),
    }
}

/// Decodes a whole object into memory, checked. For small objects.
pub fn decode(object: &[u8]) -> Result<Vec<u8>, FrameError> {
    let header = FrameHeader::parse(object)?;
    // The header is not trusted yet: cap the allocation by what zstd could produce.
    let capacity = usize::try_from(header.original_size).unwrap_or(0).min(object.len().saturating_mul(1 << 10));
    let out = Mutex::new(Vec::with_capacity(capacity));
    let result = decode_with(object, |offset, piece| {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let end = offset as usize + piece.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        out[offset as usize..end].copy_from_slice(piece);
        Ok(())
    })?;
    result.map_err(|e| FrameError::Decompress(e.to_string()))?;
    Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhashed_decoding_into_a_reused_buffer_gives_the_content() {
        let mut out = vec![0xAA; 10];
        for (len, c) in [
            (5_000_000usize, Compression::Zstd(1)),
            (1000, Compression::None),
            (0, Compression::Zstd(1)),
            (300_000, Compression::Zstd(3)),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
            let (obj, header) = encode(&data, c).expect("encode");
            assert_eq!(decode_unhashed_into(&obj, &mut out).expect("decode"), header);
            assert_eq!(out, data, "len {len} {c:?}");
        }
        // Sizes and framing are still checked: a truncated object is refused.
        let data = vec![7u8; 3_000_000];
        let (obj, _) = encode(&data, Compression::Zstd(1)).expect("encode");
        assert!(decode_unhashed_into(&obj[..obj.len() - 100], &mut out).is_err());
    }
    use proptest::prelude::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter mixed into repeated text.
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ b"pgwal"[i % 5] ^ ((i >> 12) as u8)).collect()
    }

    #[test]
    fn round_trips_at_every_size_boundary() {
        for len in [0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17] {
            let data = sample(len);
            for c in [Compression::None, Compression::Zstd(1), Compression::Zstd(3)] {
                let (obj, header) = encode(&data, c).expect("encode");
                assert_eq!(header.original_size, len as u64);
                assert_eq!(header.sha256, sha256(&data));
                assert_eq!(FrameHeader::parse(&obj), Ok(header));
                assert_eq!(decode(&obj).expect("decode"), data, "len {len} {c:?}");
            }
        }
    }

    #[test]
    fn large_inputs_frame_each_chunk_as_zstd_alone_would() {
        // Above HUGE_OUTPUT_MIN the frames land in shared huge-page buffers:
        // the bytes must be those of compressing each chunk on its own.
        let data = sample(3 * CHUNK_SIZE + 17);
        assert!(data.len() >= HUGE_OUTPUT_MIN);
        let (parts, _) = encode_parts(&data, Compression::Zstd(1)).expect("encode");
        assert_eq!(parts.len(), 5);
        for (part, chunk) in parts[1..].iter().zip(data.chunks(CHUNK_SIZE)) {
            assert_eq!(&part[..], &zstd::bulk::compress(chunk, 1).expect("zstd")[..]);
        }
    }

    #[test]
    fn the_payload_is_plain_zstd() {
        let data = sample(2 * CHUNK_SIZE + 5);
        let (obj, _) = encode(&data, Compression::Zstd(3)).expect("encode");
        let plain = zstd::stream::decode_all(&obj[HEADER_LEN..]).expect("any zstd decoder reads it");
        assert_eq!(plain, data);
    }

    /// Many frames, more than there are threads: every piece reaches
    /// the sink once, at its offset; a damaged frame in the middle fails the
    /// decode (no hang, whatever thread hits it).
    #[test]
    fn many_frames_reach_the_sink_once() {
        let data = sample(20 * CHUNK_SIZE + 123);
        let (obj, _) = encode(&data, Compression::Zstd(1)).expect("encode");
        let seen = Mutex::new(vec![0u8; data.len()]);
        let pieces = AtomicUsize::new(0);
        let result = decode_with(&obj, |offset, piece| {
            seen.lock().expect("lock")[offset as usize..offset as usize + piece.len()].copy_from_slice(piece);
            pieces.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        assert!(matches!(result, Ok(Ok(_))), "{result:?}");
        assert_eq!(pieces.into_inner(), 21);
        assert!(seen.into_inner().expect("lock") == data);

        let frames = zstd_frames(&obj[HEADER_LEN..]).expect("frames");
        let thirteenth: usize = HEADER_LEN + frames[..13].iter().map(|f| f.0.len()).sum::<usize>();
        let mut bad = obj.clone();
        // Inside frame 13's compressed block, past its frame header.
        bad[thirteenth + frames[13].0.len() / 2] ^= 0xff;
        assert!(decode_with(&bad, |_, _| Ok(())).is_err());
    }

    /// A flipped bit either fails the checks or (in bits zstd ignores) still
    /// yields exactly the original bytes: wrong data never comes out.
    #[test]
    fn flipped_bytes_never_yield_wrong_data() {
        let data = sample(CHUNK_SIZE + 1000);
        let (obj, _) = encode(&data, Compression::Zstd(3)).expect("encode");
        // Flip bytes across the header and the payload, including the last.
        let positions: Vec<usize> =
            (0..HEADER_LEN).chain((HEADER_LEN..obj.len()).step_by(obj.len() / 97 + 1)).chain([obj.len() - 1]).collect();
        for at in positions {
            let mut bad = obj.clone();
            bad[at] ^= 0x40;
            if let Ok(out) = decode(&bad) {
                assert_eq!(out, data, "flip at {at} of {} produced wrong data", obj.len());
                assert!(at >= HEADER_LEN, "a header flip at {at} must be caught");
            }
        }
    }

    #[test]
    fn truncation_and_appending_are_caught() {
        let (obj, _) = encode(&sample(5000), Compression::Zstd(3)).expect("encode");
        for len in [0, 10, HEADER_LEN, HEADER_LEN + 1, obj.len() - 1] {
            assert!(decode(&obj[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = obj.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(FrameError::PayloadSize { .. })));
    }

    #[test]
    fn header_rejects_other_versions_and_codecs() {
        let (obj, _) = encode(b"x", Compression::None).expect("encode");
        let mut v2 = obj.clone();
        v2[8] = 2;
        assert_eq!(FrameHeader::parse(&v2), Err(FrameError::UnsupportedVersion(2)));
        let mut c9 = obj;
        c9[10] = 9;
        assert_eq!(FrameHeader::parse(&c9), Err(FrameError::UnknownCompression(9)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20000), level in 1i32..6) {
            let (obj, _) = encode(&data, Compression::Zstd(level)).expect("encode");
            prop_assert_eq!(decode(&obj).expect("decode"), data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut obj = MAGIC.to_vec();
            obj.extend_from_slice(&data);
            let _ = decode(&obj);
        }
    }
}
