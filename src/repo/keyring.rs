//! Keys of an encrypted repository (envelope encryption).
//!
//! The repository key (the key file's 32 random bytes) never encrypts data:
//! it derives (HKDF-SHA256, with the keyring's random salt) a key-encryption
//! key that wraps the data keys with AES-256-GCM. The wrapped data keys live
//! in a keyring object `keyring/<tag>`; the pointer `keyring/current` names
//! the keyring in use. Each data key has a generation number, written in the
//! envelope of every object it seals (see `crypt`), so several generations
//! can coexist.
//!
//! `rekey` wraps the same data keys with a new repository key into a NEW
//! keyring (create-only), replaces the pointer (the one object pgwal ever
//! overwrites) and then deletes the older keyrings: no data object is
//! rewritten. A reader that finds the pointer's keyring does not open with
//! its key tries the other keyrings present, so a rekey interrupted at any
//! step leaves a repository that opens with the old or the new key (and
//! that can be rekeyed again with whichever opens it).

use std::collections::BTreeMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::frame::{self, Compression};
use super::{crypt, keys, Repository};
use crate::error::{Error, Result};

/// The repository key: what the key file holds. Never printed.
#[derive(Clone)]
pub struct RepositoryKey {
    bytes: Zeroizing<[u8; 32]>,
    /// The key file, for messages.
    source: String,
}

impl std::fmt::Debug for RepositoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepositoryKey({})", self.source)
    }
}

impl RepositoryKey {
    /// A key read from `source` (a file name, for messages only).
    pub fn new(bytes: [u8; 32], source: impl Into<String>) -> RepositoryKey {
        RepositoryKey { bytes: Zeroizing::new(bytes), source: source.into() }
    }

    /// Where the key came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A public name of this key (16 hex digits, one-way from it): tags what
    /// pgwal keeps in the data directory, so that a spooled segment is only
    /// handed out under the key it was fetched with.
    pub fn fingerprint(&self) -> String {
        let mut out = [0u8; 8];
        hkdf::Salt::new(hkdf::HKDF_SHA256, b"pgwal key fingerprint v1")
            .extract(&self.bytes[..])
            .expand(&[b"fingerprint"], FingerprintLen)
            .and_then(|okm| okm.fill(&mut out))
            .expect("invariant: HKDF-SHA256 yields 8 bytes");
        hex(&out)
    }

    /// The key-encryption key of a keyring with this salt.
    fn kek(&self, salt: &[u8]) -> LessSafeKey {
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
            .extract(&self.bytes[..])
            .expand(&[b"pgwal keyring kek v1"], AesKeyLen)
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("invariant: HKDF-SHA256 yields 32 bytes");
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &out[..]).expect("invariant: 32-byte AES-256 key"))
    }
}

struct FingerprintLen;

impl hkdf::KeyType for FingerprintLen {
    fn len(&self) -> usize {
        8
    }
}

struct AesKeyLen;

impl hkdf::KeyType for AesKeyLen {
    fn len(&self) -> usize {
        32
    }
}

/// One data key. Never printed.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A data key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

/// The opened keyring: the data keys by generation.
#[derive(Debug)]
pub struct Keyring {
    /// The keyring object's tag (`keyring/<tag>`).
    pub tag: String,
    /// The generation new objects are sealed with.
    pub current: u32,
    keys: BTreeMap<u32, DataKey>,
}

impl Keyring {
    /// A keyring with one fresh data key, generation 1.
    pub fn fresh() -> Keyring {
        Keyring { tag: new_tag(), current: 1, keys: BTreeMap::from([(1, DataKey::from_bytes(crypt::random()))]) }
    }

    /// The data key of `generation`.
    pub fn key(&self, generation: u32) -> Option<&DataKey> {
        self.keys.get(&generation)
    }

    /// The key new objects are sealed with, and its generation.
    pub fn current(&self) -> (u32, &DataKey) {
        (self.current, self.keys.get(&self.current).expect("invariant: the current generation is held"))
    }

    /// The generations held.
    pub fn generations(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The keyring object: every data key wrapped by `key`, under a new tag.
    fn wrap(&self, key: &RepositoryKey, tag: &str) -> KeyringObject {
        let salt: [u8; 32] = crypt::random();
        let kek = key.kek(&salt);
        let keys = self
            .keys
            .iter()
            .map(|(&generation, dek)| {
                let nonce: [u8; 12] = crypt::random();
                let mut wrapped = dek.bytes().to_vec();
                kek.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(wrap_aad(tag, generation)),
                    &mut wrapped,
                )
                .expect("invariant: AES-GCM seals 32 bytes");
                WrappedKey { generation, nonce: hex(&nonce), wrapped: hex(&wrapped) }
            })
            .collect();
        KeyringObject {
            version: 1,
            kdf: "hkdf-sha256".into(),
            wrap: "aes-256-gcm".into(),
            salt: hex(&salt),
            current: self.current,
            keys,
        }
    }

    /// Opens a keyring object with `key`; `None` if the key does not open it.
    fn unwrap(object: &KeyringObject, tag: &str, key: &RepositoryKey) -> Option<Keyring> {
        if object.version != 1 || object.kdf != "hkdf-sha256" || object.wrap != "aes-256-gcm" {
            return None;
        }
        let kek = key.kek(&unhex(&object.salt)?);
        let mut keys = BTreeMap::new();
        for w in &object.keys {
            let nonce: [u8; 12] = unhex(&w.nonce)?.try_into().ok()?;
            let mut wrapped = Zeroizing::new(unhex(&w.wrapped)?);
            let plain = kek
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(wrap_aad(tag, w.generation)),
                    &mut wrapped,
                )
                .ok()?;
            let bytes: [u8; 32] = (&*plain).try_into().ok()?;
            keys.insert(w.generation, DataKey::from_bytes(bytes));
        }
        keys.contains_key(&object.current).then(|| Keyring { tag: tag.to_string(), current: object.current, keys })
    }
}

/// Binds a wrapped key to its keyring and generation: a wrapped key copied
/// into another keyring or generation does not open.
fn wrap_aad(tag: &str, generation: u32) -> Vec<u8> {
    let mut a = b"pgwal data key v1 ".to_vec();
    a.extend_from_slice(&generation.to_le_bytes());
    a.extend_from_slice(tag.as_bytes());
    a
}

fn new_tag() -> String {
    hex(&crypt::random::<16>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// A keyring object's content (framed JSON, not sealed: it holds only
/// wrapped keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringObject {
    version: u32,
    kdf: String,
    wrap: String,
    /// Hex salt of the key-encryption key's derivation.
    salt: String,
    current: u32,
    keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WrappedKey {
    generation: u32,
    nonce: String,
    /// Hex of the data key sealed by the key-encryption key, tag appended.
    wrapped: String,
}

/// The pointer object's content: the tag of the keyring in use and a copy
/// of it, so that opening a repository costs one read, made beside the
/// format object's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pointer {
    keyring: String,
    copy: KeyringObject,
}

/// The one line for a key that opens no keyring of the repository.
pub fn wrong_key(url: &str, key: &RepositoryKey) -> Error {
    Error::Key {
        message: format!("the encryption key in '{}' does not open repository '{url}'", key.source()),
        hint: Some(
            "use the key file this repository was created or last rekeyed with ([encryption] key_file, \
             PGWAL_ENCRYPTION_KEY_FILE or --encryption-key-file)"
                .into(),
        ),
    }
}

/// Steps of `rekey`, for tests that stop it after each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RekeyStep {
    /// The new keyring is stored.
    NewKeyringStored,
    /// The pointer names it.
    PointerReplaced,
    /// The older keyrings are deleted.
    OldKeyringsDeleted,
}

/// What `rekey` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyOutcome {
    /// The new keyring's tag.
    pub keyring: String,
    /// The keyrings it deleted.
    pub retired: Vec<String>,
    /// The data key generations it re-wrapped.
    pub generations: Vec<u32>,
}

impl Repository {
    async fn read_framed_json<T: serde::de::DeserializeOwned>(&self, key: &Path) -> Result<Option<T>> {
        let Some(object) = self.get_plain(key).await? else { return Ok(None) };
        let corrupt = |reason: String| Error::Corrupt { key: key.to_string(), reason };
        let json = frame::decode(&object).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&json).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    async fn store_keyring(&self, keyring: &Keyring, key: &RepositoryKey, tag: &str) -> Result<KeyringObject> {
        let object = keyring.wrap(key, tag);
        let json = serde_json::to_vec_pretty(&object).expect("invariant: plain structs serialize");
        let (framed, header) = frame::encode(&json, Compression::None)
            .map_err(|e| Error::Corrupt { key: keys::keyring(tag).to_string(), reason: e.to_string() })?;
        self.put_create_plain(&keys::keyring(tag), framed.into(), &header).await?;
        Ok(object)
    }

    fn pointer_object(tag: &str, copy: KeyringObject) -> (Vec<u8>, frame::FrameHeader) {
        let json = serde_json::to_vec_pretty(&Pointer { keyring: tag.to_string(), copy })
            .expect("invariant: plain structs serialize");
        frame::encode(&json, Compression::None).expect("invariant: framing without compression cannot fail")
    }

    /// The tags of every keyring object present.
    async fn keyring_tags(&self) -> Result<Vec<String>> {
        let pointer = keys::keyring_pointer();
        let pointer_name = pointer.filename().unwrap_or_default();
        let mut tags = self.list_entries(&keys::keyrings_prefix()).await?.objects;
        tags.retain(|t| t != pointer_name);
        Ok(tags)
    }

    /// Opens the keyring with `key`: the one the pointer names, else any
    /// other keyring present (an interrupted rekey). One line if none opens.
    /// `pointer`: the pointer object as read already, if it was.
    pub(super) async fn open_keyring(&self, key: &RepositoryKey, pointer: Option<Bytes>) -> Result<Keyring> {
        let pointer_key = keys::keyring_pointer();
        let pointer = match pointer {
            Some(p) => Some(p),
            None => self.get_plain(&pointer_key).await?,
        };
        let corrupt = |reason: String| Error::Corrupt { key: pointer_key.to_string(), reason };
        let pointer: Option<Pointer> = pointer
            .map(|p| {
                let json = frame::decode(&p).map_err(|e| corrupt(e.to_string()))?;
                serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
            })
            .transpose()?;
        let mut tried = None;
        if let Some(p) = &pointer {
            if let Some(keyring) = Keyring::unwrap(&p.copy, &p.keyring, key) {
                return Ok(keyring);
            }
            tried = Some(p.keyring.clone());
        }
        let tags = self.keyring_tags().await?;
        if tags.is_empty() {
            return Err(Error::Corrupt {
                key: keys::keyrings_prefix().to_string(),
                reason: "the repository is encrypted but holds no keyring".into(),
            });
        }
        for tag in tags.iter().filter(|t| Some(*t) != tried.as_ref()) {
            let object = match self.read_framed_json::<KeyringObject>(&keys::keyring(tag)).await {
                Ok(Some(o)) => o,
                // A keyring deleted or damaged meanwhile: another may open.
                Ok(None) | Err(Error::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Some(keyring) = Keyring::unwrap(&object, tag, key) {
                return Ok(keyring);
            }
        }
        Err(wrong_key(&self.url.to_string(), key))
    }

    /// Stores a fresh keyring for a repository being created, unless a
    /// pointer exists already (a concurrent or an interrupted creation):
    /// then that keyring must open with `key`.
    pub(super) async fn create_keyring(&self, key: &RepositoryKey) -> Result<Keyring> {
        if let Some(pointer) = self.get_plain(&keys::keyring_pointer()).await? {
            return self.open_keyring(key, Some(pointer)).await;
        }
        let keyring = Keyring::fresh();
        let object = self.store_keyring(&keyring, key, &keyring.tag).await?;
        let (pointer, header) = Repository::pointer_object(&keyring.tag, object);
        match self.put_create_plain(&keys::keyring_pointer(), pointer.into(), &header).await {
            Ok(_) => Ok(keyring),
            // Another process created the repository first: use its keyring
            // (ours stays unused; the next rekey deletes it).
            Err(Error::Conflict { .. }) => self.open_keyring(key, None).await,
            Err(e) => Err(e),
        }
    }

    /// Wraps the data keys with `new_key`: a new keyring (create-only), then
    /// the pointer replaced, then the older keyrings deleted. `stop_after`
    /// ends it early (tests of interrupted runs).
    pub async fn rekey(&self, new_key: &RepositoryKey, stop_after: Option<RekeyStep>) -> Result<RekeyOutcome> {
        let keyring = self.keyring().await?;
        let tag = new_tag();
        let object = self.store_keyring(&keyring, new_key, &tag).await?;
        let mut outcome =
            RekeyOutcome { keyring: tag.clone(), retired: Vec::new(), generations: keyring.generations() };
        if stop_after == Some(RekeyStep::NewKeyringStored) {
            return Ok(outcome);
        }
        let (pointer, _) = Repository::pointer_object(&tag, object);
        self.put_overwrite_plain(&keys::keyring_pointer(), pointer.into()).await?;
        if stop_after == Some(RekeyStep::PointerReplaced) {
            return Ok(outcome);
        }
        let old: Vec<String> = self.keyring_tags().await?.into_iter().filter(|t| *t != tag).collect();
        let doomed: Vec<Path> = old.iter().map(|t| keys::keyring(t)).collect();
        self.delete(&doomed).await?;
        outcome.retired = old;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{RetryPolicy, Store};
    use object_store::ObjectStoreExt;

    fn repo(store: &Store, key: Option<u8>) -> Repository {
        let url = crate::storage::RepoUrl::S3 { bucket: "memory".into(), prefix: String::new() };
        Repository::new(store.clone(), url, RetryPolicy::with_deadline(std::time::Duration::from_secs(1)))
            .with_key(key.map(|k| RepositoryKey::new([k; 32], format!("/keys/{k}"))))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    const MARKER: &[u8] = b"a marker row that must never show in the repository";

    /// An encrypted repository holding one WAL-like object with a marker.
    async fn encrypted(store: &Store) -> Path {
        let r = repo(store, Some(1));
        r.create_format_for(Some(7)).await.expect("create");
        let key = keys::cluster();
        let (object, header) = frame::encode(&MARKER.repeat(100), Compression::Zstd(1)).expect("frame");
        r.put_create(&key, object.into(), &header).await.expect("put");
        key
    }

    async fn reads(store: &Store, key: &Path, with: Option<u8>) -> Result<Vec<u8>> {
        let object = repo(store, with).get(key).await?.expect("stored");
        Ok(frame::decode(&object).expect("decodes"))
    }

    async fn all_objects(store: &Store) -> Vec<(String, Vec<u8>)> {
        use futures::TryStreamExt;
        let metas: Vec<_> = store.objects.list(None).try_collect().await.expect("list");
        let mut out = Vec::new();
        for m in metas {
            let b = store.objects.get(&m.location).await.expect("get").bytes().await.expect("bytes");
            out.push((m.location.to_string(), b.to_vec()));
        }
        out
    }

    /// What a fetch with one key spooled is never handed to a fetch with
    /// another key, or none; the tag does not show the key.
    #[test]
    fn spool_tags_differ_by_key() {
        let store = Store::in_memory();
        let tags: Vec<String> = [None, Some(1), Some(2)].iter().map(|k| repo(&store, *k).cache_tag()).collect();
        assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2], "{tags:?}");
        assert_eq!(repo(&store, Some(1)).cache_tag(), tags[1]);
        assert!(!tags[1].contains(&hex(&[1u8; 32])[..16]));
    }

    #[test]
    fn only_the_format_and_keyrings_are_cleartext_and_nothing_shows() {
        rt().block_on(async {
            let store = Store::in_memory();
            let key = encrypted(&store).await;
            assert_eq!(reads(&store, &key, Some(1)).await.expect("opens"), MARKER.repeat(100));
            for (name, bytes) in all_objects(&store).await {
                assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER), "{name} shows the marker");
                let sealed = bytes.starts_with(crypt::MAGIC);
                assert_eq!(sealed, name != "format" && !name.starts_with("keyring/"), "{name}");
            }
            // The header read (conflict checks) works on sealed objects.
            let r = repo(&store, Some(1));
            let header = r.read_header(&key).await.expect("read").expect("exists");
            assert_eq!(header.original_size, (MARKER.len() * 100) as u64);
        });
    }

    #[test]
    fn missing_wrong_and_unwanted_keys_are_key_errors() {
        rt().block_on(async {
            let store = Store::in_memory();
            let key = encrypted(&store).await;
            for with in [None, Some(2)] {
                let e = reads(&store, &key, with).await.expect_err("refused");
                assert!(matches!(e, Error::Key { .. }), "{e}");
                assert!(!e.one_line().contains('\n'));
                // Nothing is written either.
                let before = all_objects(&store).await;
                let r = repo(&store, with);
                let (object, header) = frame::encode(b"x", Compression::None).expect("frame");
                assert!(matches!(
                    r.put_create(&keys::backup_lock_key(), object.into(), &header).await,
                    Err(Error::Key { .. })
                ));
                assert!(matches!(r.create_format_for(None).await, Err(Error::Key { .. })));
                assert_eq!(all_objects(&store).await.len(), before.len());
            }
            let plain = Store::in_memory();
            repo(&plain, None).create_format_for(None).await.expect("plaintext repository");
            let e = repo(&plain, Some(1)).check_format().await.expect_err("a key for a plaintext repository");
            assert!(matches!(e, Error::Key { .. }), "{e}");
            assert!(matches!(repo(&plain, Some(1)).create_format_for(None).await, Err(Error::Key { .. })));
        });
    }

    #[test]
    fn rekey_swaps_the_key_and_interrupted_rekeys_open_with_either_and_finish() {
        rt().block_on(async {
            let store = Store::in_memory();
            let key = encrypted(&store).await;
            let data = MARKER.repeat(100);
            let sealed_before: Vec<_> =
                all_objects(&store).await.into_iter().filter(|(n, _)| !n.starts_with("keyring/")).collect();
            for stop in [RekeyStep::NewKeyringStored, RekeyStep::PointerReplaced] {
                // Start from key 1 again each time (finish any earlier run with key 1).
                repo(&store, Some(1)).rekey(&RepositoryKey::new([1; 32], "k"), None).await.expect("reset");
                repo(&store, Some(1)).rekey(&RepositoryKey::new([2; 32], "k"), Some(stop)).await.expect("partial");
                for with in [1, 2] {
                    assert_eq!(reads(&store, &key, Some(with)).await.expect("either key opens"), data, "{stop:?}");
                }
                assert!(reads(&store, &key, Some(3)).await.is_err());
                // Rekeying again finishes, whichever key opened it.
                let again = if stop == RekeyStep::NewKeyringStored { 1 } else { 2 };
                repo(&store, Some(again)).rekey(&RepositoryKey::new([4; 32], "k"), None).await.expect("again");
                assert!(matches!(reads(&store, &key, Some(1)).await, Err(Error::Key { .. })));
                assert!(matches!(reads(&store, &key, Some(2)).await, Err(Error::Key { .. })));
                assert_eq!(reads(&store, &key, Some(4)).await.expect("new key"), data);
                repo(&store, Some(4)).rekey(&RepositoryKey::new([1; 32], "k"), None).await.expect("back to 1");
            }
            // No data object was rewritten, and one keyring is left.
            let after = all_objects(&store).await;
            for (name, bytes) in &sealed_before {
                assert!(after.iter().any(|(n, b)| n == name && b == bytes), "{name} changed");
            }
            assert_eq!(after.iter().filter(|(n, _)| n.starts_with("keyring/") && n != "keyring/current").count(), 1);
        });
    }

    #[test]
    fn a_keyring_opens_with_its_key_only() {
        let ring = Keyring::fresh();
        let key = RepositoryKey::new([1; 32], "k1");
        let object = ring.wrap(&key, "t1");
        let opened = Keyring::unwrap(&object, "t1", &key).expect("opens");
        assert_eq!(opened.key(1).expect("gen 1").bytes(), ring.key(1).expect("gen 1").bytes());
        assert!(Keyring::unwrap(&object, "t1", &RepositoryKey::new([2; 32], "k2")).is_none());
        // A keyring copied under another tag does not open.
        assert!(Keyring::unwrap(&object, "t2", &key).is_none());
        let json = serde_json::to_string(&object).expect("json");
        assert!(!json.contains(&hex(ring.key(1).expect("gen 1").bytes())), "the data key is stored wrapped");
        assert!(!format!("{key:?} {:?}", ring.key(1)).contains("0101"), "keys never in Debug output");
    }
}
