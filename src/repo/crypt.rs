//! The encryption envelope of an encrypted repository: every object but the
//! format object is stored as its framed bytes (see `frame`) sealed with
//! AES-256-GCM, so that the frame header (sizes, the content's SHA-256) is
//! secret too: a cleartext SHA-256 would tell which objects hold equal
//! content and confirm guesses of known WAL.
//!
//! ```text
//! offset size  field
//!      0    8  magic "PGWALENC"
//!      8    2  envelope version (1), little-endian
//!     10    2  reserved, zero
//!     12    4  data key generation (the keyring's identifier), little-endian
//!     16   32  salt: random, fresh for every object
//!     48    8  size of the sealed (framed) bytes, little-endian
//!     56    8  reserved, zero
//!     64       sealed chunks: ciphertext then a 16-byte GCM tag each
//! ```
//!
//! Chunk 0 holds the first [`HEAD_CHUNK`] bytes (the frame header), so that a
//! frame header is read and authenticated with one small range read; the
//! chunks after it hold [`CHUNK`] bytes each, the last one what remains.
//!
//! Each object gets its own key: HKDF-SHA256 of the data key with the salt.
//! Nonces are then the chunk index (a counter), which cannot repeat under one
//! key, so there is no bound on how many objects one data key seals (a
//! random 96-bit nonce under one key would be limited to about 2^32 chunks).
//! The additional data of each chunk is the envelope header, the object's key
//! in the repository, the chunk index and whether it is the last chunk: a
//! chunk moved, dropped, appended, or an object renamed or truncated fails
//! authentication. A flipped bit is an error, never other bytes.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use bytes::Bytes;

use super::keyring::DataKey;
use crate::storage::mapped::HugeBuffer;

/// Length of the envelope header.
pub const ENVELOPE_LEN: usize = 64;
/// Magic bytes at the start of every sealed object.
pub const MAGIC: &[u8; 8] = b"PGWALENC";
/// The envelope version this build writes and reads.
pub const VERSION: u16 = 1;
/// Plain bytes in chunk 0: a frame header.
pub const HEAD_CHUNK: usize = super::frame::HEADER_LEN;
/// Plain bytes in every further chunk but the last.
pub const CHUNK: usize = 1 << 20;
/// Bytes GCM adds to each chunk.
pub const TAG_LEN: usize = 16;

/// Why a sealed object does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short, wrong magic, reserved bits set.
    #[error("not an encrypted pgwal object (no valid envelope)")]
    NotSealed,
    /// Written by a newer pgwal.
    #[error("envelope version {0} is newer than this pgwal understands (1)")]
    UnsupportedVersion(u16),
    /// The keyring has no data key of this generation.
    #[error("sealed with data key {0}, which the keyring does not hold")]
    UnknownKey(u32),
    /// Length differs from what the header implies: truncated or appended to.
    #[error("sealed object is {actual} bytes but its envelope says {expected}")]
    Size { expected: u64, actual: u64 },
    /// A chunk failed authentication: damaged, moved or forged.
    #[error("chunk {0} fails authentication (damaged, truncated or not this object)")]
    Authentication(u64),
}

/// The decoded envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Generation of the data key that sealed the object.
    pub generation: u32,
    /// The object's salt.
    pub salt: [u8; 32],
    /// Size of the plain (framed) bytes.
    pub plain_size: u64,
}

impl Envelope {
    /// Parses the first [`ENVELOPE_LEN`] bytes of a sealed object.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < ENVELOPE_LEN || &bytes[0..8] != MAGIC {
            return Err(EnvelopeError::NotSealed);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        if bytes[10..12].iter().chain(&bytes[56..64]).any(|&b| b != 0) {
            return Err(EnvelopeError::NotSealed);
        }
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&bytes[16..48]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&bytes[48..56]);
        Ok(Envelope {
            generation: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            salt,
            plain_size: u64::from_le_bytes(size),
        })
    }

    fn write(&self) -> [u8; ENVELOPE_LEN] {
        let mut out = [0u8; ENVELOPE_LEN];
        out[0..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..48].copy_from_slice(&self.salt);
        out[48..56].copy_from_slice(&self.plain_size.to_le_bytes());
        out
    }

    /// The plain size of each chunk, in order (at least one, for empty content).
    fn chunk_sizes(&self) -> impl Iterator<Item = usize> {
        let size = self.plain_size;
        let head = size.min(HEAD_CHUNK as u64);
        let rest = size - head;
        let full = rest / CHUNK as u64;
        let tail = rest % CHUNK as u64;
        std::iter::once(head as usize)
            .chain(std::iter::repeat_n(CHUNK, full as usize))
            .chain((tail > 0).then_some(tail as usize))
    }

    /// The sealed object's total size.
    pub fn sealed_size(&self) -> u64 {
        ENVELOPE_LEN as u64 + self.plain_size + TAG_LEN as u64 * self.chunk_sizes().count() as u64
    }
}

/// The plain (framed) size of a sealed object of `sealed` bytes; `None` if
/// no plain size seals to exactly that many bytes.
pub fn plain_size(sealed: u64) -> Option<u64> {
    let first = (ENVELOPE_LEN + TAG_LEN) as u64;
    let r = sealed.checked_sub(first)?;
    let plain = if r <= HEAD_CHUNK as u64 {
        r
    } else {
        let rest = r - HEAD_CHUNK as u64;
        let chunks = rest.div_ceil((CHUNK + TAG_LEN) as u64);
        (rest - TAG_LEN as u64 * chunks) + HEAD_CHUNK as u64
    };
    let envelope = Envelope { generation: 0, salt: [0; 32], plain_size: plain };
    (envelope.sealed_size() == sealed).then_some(plain)
}

/// The length of chunk 0 sealed: what a frame-header read fetches.
pub const HEAD_READ: usize = ENVELOPE_LEN + HEAD_CHUNK + TAG_LEN;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The object's own AES-256-GCM key: HKDF-SHA256(data key, salt).
fn object_key(data_key: &DataKey, salt: &[u8; 32]) -> LessSafeKey {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(data_key.bytes())
        .expand(&[b"pgwal object key v1"], Len(32))
        .and_then(|okm| okm.fill(&mut bytes[..]))
        .expect("invariant: HKDF-SHA256 yields 32 bytes");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes[..]).expect("invariant: 32-byte AES-256 key"))
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&index.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(header: &[u8; ENVELOPE_LEN], object: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(ENVELOPE_LEN + 9 + object.len());
    a.extend_from_slice(header);
    a.extend_from_slice(&index.to_le_bytes());
    a.push(u8::from(last));
    a.extend_from_slice(object.as_bytes());
    a
}

/// Fresh random bytes from the kernel's CSPRNG (getrandom(2)). Not
/// aws-lc's own generator: seeding it runs a CPU-jitter entropy collector
/// that costs about 80 ms of CPU in every process, i.e. in every
/// `archive` call (measured with perf on benches/encryption.sh).
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into the rest of `out`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut out))
                .expect("invariant: the kernel's random number generator is available");
            break;
        }
    }
    out
}

/// Objects from this size on are sealed and opened in huge-page buffers:
/// a fresh vector of a few MiB costs a page fault per 4 KiB written (about
/// 1000 per WAL segment, more than the AES-GCM work itself).
const HUGE_MIN: usize = 2 << 20;

/// The memory a sealed or opened object is written into.
enum Out {
    Huge(HugeBuffer),
    Small(Vec<u8>),
}

impl Out {
    /// `len` zero bytes: huge pages for large objects (ordinary memory if
    /// the kernel refuses the mapping).
    fn zeroed(len: usize) -> Out {
        if len >= HUGE_MIN {
            if let Ok(h) = HugeBuffer::new(len) {
                return Out::Huge(h);
            }
        }
        Out::Small(vec![0; len])
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Out::Huge(h) => h.as_mut_slice(),
            Out::Small(v) => v,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Out::Huge(h) => Bytes::from_owner(h),
            Out::Small(v) => Bytes::from(v),
        }
    }
}

/// Seals `plain` (given in pieces, e.g. a frame header then zstd frames)
/// as the object `object` with the data key `generation`. The pieces are
/// copied once, into their place in the sealed object, and encrypted there.
pub fn seal(plain: &[impl AsRef<[u8]>], object: &str, generation: u32, data_key: &DataKey) -> Bytes {
    let plain_size: usize = plain.iter().map(|p| p.as_ref().len()).sum();
    let envelope = Envelope { generation, salt: random(), plain_size: plain_size as u64 };
    let header = envelope.write();
    let key = object_key(data_key, &envelope.salt);
    let mut out = Out::zeroed(envelope.sealed_size() as usize);
    let buf = out.as_mut_slice();
    buf[..ENVELOPE_LEN].copy_from_slice(&header);
    let mut at = ENVELOPE_LEN;
    let mut pieces = plain.iter().map(AsRef::as_ref);
    let mut piece: &[u8] = pieces.next().unwrap_or(&[]);
    let sizes: Vec<usize> = envelope.chunk_sizes().collect();
    for (index, &size) in sizes.iter().enumerate() {
        let (chunk, rest) = buf[at..].split_at_mut(size);
        let mut filled = 0;
        while filled < size {
            while piece.is_empty() {
                piece = pieces.next().expect("invariant: the pieces hold plain_size bytes");
            }
            let take = (size - filled).min(piece.len());
            chunk[filled..filled + take].copy_from_slice(&piece[..take]);
            piece = &piece[take..];
            filled += take;
        }
        let last = index + 1 == sizes.len();
        let tag = key
            .seal_in_place_separate_tag(nonce(index as u64), Aad::from(aad(&header, object, index as u64, last)), chunk)
            .expect("invariant: AES-GCM seals chunks of this size");
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        at += size + TAG_LEN;
    }
    out.into_bytes()
}

/// Opens a whole sealed object with the data key `key_for` finds for its
/// generation; the plain (framed) bytes.
pub fn open<'k>(
    sealed: &[u8],
    object: &str,
    key_for: impl Fn(u32) -> Option<&'k DataKey>,
) -> Result<Bytes, EnvelopeError> {
    let envelope = Envelope::parse(sealed)?;
    if sealed.len() as u64 != envelope.sealed_size() {
        return Err(EnvelopeError::Size { expected: envelope.sealed_size(), actual: sealed.len() as u64 });
    }
    let data_key = key_for(envelope.generation).ok_or(EnvelopeError::UnknownKey(envelope.generation))?;
    open_chunks(&envelope, sealed, object, data_key, usize::MAX)
}

/// Opens only chunk 0 of a sealed object (its first [`HEAD_READ`] bytes, or
/// all of a smaller object): the frame header, authenticated.
pub fn open_head<'k>(
    sealed_head: &[u8],
    object: &str,
    key_for: impl Fn(u32) -> Option<&'k DataKey>,
) -> Result<Bytes, EnvelopeError> {
    let envelope = Envelope::parse(sealed_head)?;
    let data_key = key_for(envelope.generation).ok_or(EnvelopeError::UnknownKey(envelope.generation))?;
    open_chunks(&envelope, sealed_head, object, data_key, 1)
}

fn open_chunks(
    envelope: &Envelope,
    sealed: &[u8],
    object: &str,
    data_key: &DataKey,
    max_chunks: usize,
) -> Result<Bytes, EnvelopeError> {
    let header: [u8; ENVELOPE_LEN] = sealed[..ENVELOPE_LEN].try_into().expect("invariant: parsed above");
    let key = object_key(data_key, &envelope.salt);
    let sizes: Vec<usize> = envelope.chunk_sizes().collect();
    let wanted = sizes.len().min(max_chunks);
    let plain_len: usize = sizes[..wanted].iter().sum();
    let needed = ENVELOPE_LEN + plain_len + TAG_LEN * wanted;
    if sealed.len() < needed {
        return Err(EnvelopeError::Size { expected: envelope.sealed_size(), actual: sealed.len() as u64 });
    }
    // Each chunk is decrypted straight from the sealed bytes (a mapped
    // file, say) into its place in the output: no copy of the ciphertext.
    let mut out = Out::zeroed(plain_len);
    let mut rest = out.as_mut_slice();
    let mut at = ENVELOPE_LEN;
    for (index, &size) in sizes[..wanted].iter().enumerate() {
        let (ciphertext, tag) = sealed[at..at + size + TAG_LEN].split_at(size);
        at += size + TAG_LEN;
        let (plain, tail) = std::mem::take(&mut rest).split_at_mut(size);
        rest = tail;
        let last = index + 1 == sizes.len();
        key.open_separate_gather(
            nonce(index as u64),
            Aad::from(aad(&header, object, index as u64, last)),
            ciphertext,
            tag,
            plain,
        )
        .map_err(|_| EnvelopeError::Authentication(index as u64))?;
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> DataKey {
        DataKey::from_bytes([n; 32])
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ (i >> 9) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        let k = key(1);
        for len in [0, 1, HEAD_CHUNK - 1, HEAD_CHUNK, HEAD_CHUNK + 1, HEAD_CHUNK + CHUNK, HEAD_CHUNK + 2 * CHUNK + 5] {
            let data = sample(len);
            // Pieces cut across the chunk edges.
            let pieces: Vec<&[u8]> = data.chunks(70_001).collect();
            let sealed = seal(&pieces, "wal/x", 7, &k);
            assert_eq!(Envelope::parse(&sealed).expect("envelope").sealed_size(), sealed.len() as u64);
            assert_eq!(plain_size(sealed.len() as u64), Some(len as u64));
            let opened = open(&sealed, "wal/x", |g| (g == 7).then_some(&k)).expect("opens");
            assert!(opened == data, "len {len}");
            let head = open_head(&sealed[..HEAD_READ.min(sealed.len())], "wal/x", |_| Some(&k)).expect("head");
            assert_eq!(head, data[..len.min(HEAD_CHUNK)]);
        }
    }

    #[test]
    fn random_bytes_differ() {
        let (a, b) = (random::<32>(), random::<32>());
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }

    #[test]
    fn nothing_of_the_plain_bytes_shows() {
        let data = b"PGWALOBJ marker marker marker marker".repeat(1000);
        let sealed = seal(&[&data], "wal/x", 1, &key(1));
        assert!(!sealed.windows(6).any(|w| w == b"marker" || w == b"PGWALO"));
        // Equal content sealed twice differs (fresh salt).
        assert_ne!(sealed, seal(&[&data], "wal/x", 1, &key(1)));
    }

    #[test]
    fn any_flipped_bit_truncation_or_other_name_fails() {
        let k = key(2);
        let data = sample(HEAD_CHUNK + CHUNK + 300);
        let sealed = seal(&[&data], "backup/b/pack/000001", 1, &k);
        let opens = |s: &[u8], name: &str| open(s, name, |g| (g == 1).then_some(&k));
        let positions = (0..sealed.len()).step_by(sealed.len() / 211 + 1).chain(0..ENVELOPE_LEN + 100);
        for at in positions.chain([sealed.len() - 1]) {
            let mut bad = sealed.to_vec();
            bad[at] ^= 0x10;
            assert!(opens(&bad, "backup/b/pack/000001").is_err(), "flip at {at}");
        }
        for len in [0, 10, ENVELOPE_LEN, HEAD_READ, sealed.len() - TAG_LEN - 300, sealed.len() - 1] {
            assert!(opens(&sealed[..len], "backup/b/pack/000001").is_err(), "truncated to {len}");
        }
        // Cut at a chunk edge with the size field rewritten: the last-chunk flag catches it.
        let mut cut = sealed[..HEAD_READ + CHUNK + TAG_LEN].to_vec();
        cut[48..56].copy_from_slice(&((HEAD_CHUNK + CHUNK) as u64).to_le_bytes());
        assert!(opens(&cut, "backup/b/pack/000001").is_err());
        assert_eq!(opens(&sealed, "backup/b/pack/000002"), Err(EnvelopeError::Authentication(0)));
        let other = key(3);
        assert_eq!(open(&sealed, "backup/b/pack/000001", |_| Some(&other)), Err(EnvelopeError::Authentication(0)));
        assert_eq!(open(&sealed, "backup/b/pack/000001", |_| None), Err(EnvelopeError::UnknownKey(1)));
        assert_eq!(opens(&sealed, "backup/b/pack/000001").expect("intact"), data);
    }
}
