//! What lives in the repository: its format and cluster identity, and framed
//! objects stored create-only (an existing object is compared, never replaced).

pub mod backup;
pub mod catalog;
pub mod coverage;
pub mod crypt;
pub mod drill;
pub mod frame;
pub mod keyring;
pub mod keys;
pub mod lock;
pub mod parts;
#[cfg(any(test, feature = "test-support"))]
pub mod synthetic;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use self::frame::{Compression, FrameHeader};
use self::keyring::{Keyring, RepositoryKey};
use crate::error::{Error, Result};
use crate::storage::{RepoUrl, RetryPolicy, Store};

/// How many deletes [`Repository::delete`] has in flight.
pub const DELETES_IN_FLIGHT: usize = 16;

/// The repository format this build writes and reads (plaintext).
pub const FORMAT_VERSION: u32 = 1;
/// The format of an encrypted repository: a pgwal that knows only format 1
/// refuses it rather than write plaintext into it.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;

/// The format version object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormatInfo {
    /// Repository format version.
    pub format: u32,
    /// The pgwal that created the repository.
    pub created_by: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// A random tag set at creation, so that a repository wiped and created
    /// again at the same URL is told apart from the old one (PGDATA's
    /// archive markers name the repository instance they vouch for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How the repository is encrypted; absent in a plaintext repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
}

/// The format object's word on encryption (in cleartext: it is the one
/// object that is never sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// The cipher every other object is sealed with: "aes-256-gcm".
    pub cipher: String,
    /// The pointer object naming the keyring in use.
    pub keyring: String,
}

/// What the format object said, read once per process.
#[derive(Debug)]
struct Opened {
    /// The keyring of an encrypted repository.
    keyring: Option<Arc<Keyring>>,
}

/// What a repository says about itself: whether its format object exists
/// (it has been created), and the cluster it records, if any yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoIdentity {
    /// The format object exists.
    pub format_exists: bool,
    /// The recorded cluster.
    pub cluster: Option<ClusterIdentity>,
}

/// The one cluster a repository holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// `pg_control`'s system identifier; a string in JSON because it exceeds 2^53.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// 128 random bits as hex (from the kernel; time and PID if that fails).
fn random_tag() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_ok();
    if !random {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&frame::sha256(format!("{nanos}-{}", std::process::id()).as_bytes())[..16]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The instance tag of a repository whose format object is `format`.
fn instance_of(format: &[u8]) -> String {
    frame::hex(&frame::sha256(format))[..32].to_string()
}

/// [`Repository::cache_tag`] of a handle on `url` with `key`, known
/// without opening the store: the archiving helper's client names the
/// repository it wants, and `fetch` serves the spool, before either builds
/// a storage client.
pub fn cache_tag(url: &RepoUrl, key: Option<&RepositoryKey>) -> String {
    match key {
        Some(k) => format!("{url} (key {})", k.fingerprint()),
        None => url.to_string(),
    }
}

/// What a create-only put found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was stored by this call.
    Stored,
    /// An identical object was already there (PostgreSQL retried after a crash).
    AlreadyIdentical,
}

/// What a delimiter listing found directly below a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// Sub-directory (common prefix) names.
    pub dirs: Vec<String>,
    /// Object names.
    pub objects: Vec<String>,
}

/// A repository: a store plus the rules for what goes into it.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Store,
    url: RepoUrl,
    retry: RetryPolicy,
    /// The configured repository key, if any.
    key: Option<Arc<RepositoryKey>>,
    /// The format object and the opened keyring, once read.
    opened: Arc<tokio::sync::OnceCell<Opened>>,
}

fn storage_err(op: &'static str, key: &Path) -> impl FnOnce(object_store::Error) -> Error {
    let key = key.to_string();
    move |source| Error::Storage { op, key, source }
}

/// Whether a local put failed because its staging file vanished before it
/// was linked into place (swept by a concurrent put of the same key, see
/// [`Store::sweep_staging`]).
fn staging_swept(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut rename = false;
    while let Some(c) = cause {
        rename |= c.to_string().contains("Unable to rename file");
        if rename && c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
            return true;
        }
        cause = c.source();
    }
    false
}

impl Repository {
    /// Wraps an opened store.
    pub fn new(store: Store, url: RepoUrl, retry: RetryPolicy) -> Repository {
        Repository { store, url, retry, key: None, opened: Arc::default() }
    }

    /// The same repository opened with the repository key `key` (required
    /// for an encrypted repository, refused by a plaintext one).
    pub fn with_key(self, key: Option<RepositoryKey>) -> Repository {
        Repository { key: key.map(Arc::new), opened: Arc::default(), ..self }
    }

    /// Reads the format object once and, for an encrypted repository, opens
    /// its keyring with the configured key; `None` while there is no
    /// format object. Every read and write of any other object comes here
    /// first, so no command reaches an encrypted repository's content
    /// without the key, nor writes plaintext into it.
    async fn opened(&self) -> Result<Option<&Opened>> {
        if let Some(o) = self.opened.get() {
            return Ok(Some(o));
        }
        let (format, pointer) = self.read_format_and_pointer().await?;
        let Some(format) = format else { return Ok(None) };
        self.open_with(&format, pointer).await.map(Some)
    }

    /// The format object and, when a key is configured and the keyring is
    /// not open yet, the keyring pointer, read concurrently (one round trip).
    async fn read_format_and_pointer(&self) -> Result<(Option<Bytes>, Option<Bytes>)> {
        if self.key.is_none() || self.opened.get().is_some() {
            return Ok((self.get_plain(&keys::format()).await?, None));
        }
        let (format_key, pointer_key) = (keys::format(), keys::keyring_pointer());
        let (format, pointer) = tokio::join!(self.get_plain(&format_key), self.get_plain(&pointer_key));
        Ok((format?, pointer?))
    }

    /// Checks the format object `format` against the key and, once per
    /// handle, opens the keyring (from `pointer` if it was read already).
    async fn open_with(&self, format: &[u8], pointer: Option<Bytes>) -> Result<&Opened> {
        let encrypted = self.format_says_encrypted(format)?;
        if let Some(o) = self.opened.get() {
            return Ok(o);
        }
        let keyring = match (encrypted, &self.key) {
            (true, Some(key)) => Some(Arc::new(self.open_keyring(key, pointer).await?)),
            _ => None,
        };
        Ok(self.opened.get_or_init(|| async { Opened { keyring } }).await)
    }

    /// Checks a format object: its version, and that the configured key
    /// agrees with it (a key for an encrypted repository, none for a
    /// plaintext one); whether it says the repository is encrypted.
    fn format_says_encrypted(&self, raw: &[u8]) -> Result<bool> {
        let corrupt = |reason: String| Error::Corrupt { key: keys::format().to_string(), reason };
        let json = frame::decode(raw).map_err(|e| corrupt(e.to_string()))?;
        let info: FormatInfo = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        let url = self.url.to_string();
        let encrypted = match (info.format, &info.encryption) {
            (FORMAT_VERSION, None) => false,
            (ENCRYPTED_FORMAT_VERSION, Some(e)) if e.cipher == "aes-256-gcm" => true,
            (found, _) => {
                return Err(Error::UnsupportedFormat { url, found, supported: ENCRYPTED_FORMAT_VERSION });
            }
        };
        match (encrypted, &self.key) {
            (true, None) => Err(Error::Key {
                message: format!("repository '{url}' is encrypted, but no encryption key is configured"),
                hint: Some(
                    "set [encryption] key_file in the config file, PGWAL_ENCRYPTION_KEY_FILE or \
                     --encryption-key-file to the repository's key file"
                        .into(),
                ),
            }),
            (false, Some(key)) => Err(Error::Key {
                message: format!(
                    "repository '{url}' is not encrypted, but an encryption key is configured ('{}')",
                    key.source()
                ),
                hint: Some(
                    "a repository is encrypted from its creation on: remove the key setting for this \
                     repository, or archive and back up into a new repository with the key"
                        .into(),
                ),
            }),
            _ => Ok(encrypted),
        }
    }

    /// The keyring of an encrypted repository (errors as [`Self::opened`]).
    async fn keyring(&self) -> Result<Arc<Keyring>> {
        match self.opened().await? {
            Some(Opened { keyring: Some(k), .. }) => Ok(k.clone()),
            Some(_) => Err(Error::Key {
                message: format!("repository '{}' is not encrypted", self.url),
                hint: Some("only an encrypted repository has a key to change".into()),
            }),
            None => Err(Error::RepositoryMissing { url: self.url.to_string() }),
        }
    }

    /// Whether objects at `key` are sealed: every object of an encrypted
    /// repository but the format object and the keyring objects. A key
    /// configured for a repository not created yet cannot seal anything
    /// before `create_format_for` stored the keyring.
    async fn sealing_for(&self, key: &Path) -> Result<Option<Arc<Keyring>>> {
        if *key == keys::format() || key.prefix_matches(&keys::keyrings_prefix()) {
            return Ok(None);
        }
        match self.opened().await? {
            Some(o) => Ok(o.keyring.clone()),
            None if self.key.is_some() => Err(Error::RepositoryMissing { url: self.url.to_string() }),
            None => Ok(None),
        }
    }

    /// Whether the object at `key` is sealed, as far as is known without a
    /// request (for sizes from listings and HEAD requests).
    fn sealed_now(&self, key: &Path) -> bool {
        !(*key == keys::format() || key.prefix_matches(&keys::keyrings_prefix()))
            && self.opened.get().is_some_and(|o| o.keyring.is_some())
    }

    /// The size of the framed object behind a stored size: what the
    /// manifests record (a sealed size that fits no framed size stays as
    /// it is, and so is reported as a mismatch).
    fn framed_size(&self, key: &Path, stored: u64) -> u64 {
        if self.sealed_now(key) {
            crypt::plain_size(stored).unwrap_or(stored)
        } else {
            stored
        }
    }

    /// Opens a sealed object read from `key`.
    fn unseal(keyring: &Keyring, key: &Path, sealed: &[u8]) -> Result<Bytes> {
        crypt::open(sealed, key.as_ref(), |g| keyring.key(g))
            .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() })
    }

    /// Seals the framed `object` to be stored at `key`.
    fn seal(keyring: &Keyring, key: &Path, object: &PutPayload) -> PutPayload {
        let (generation, data_key) = keyring.current();
        let parts: Vec<&[u8]> = object.iter().map(|b| &b[..]).collect();
        PutPayload::from(crypt::seal(&parts, key.as_ref(), generation, data_key))
    }

    /// An empty repository in memory, for tests and benchmarks.
    pub fn in_memory() -> Repository {
        let store = Store::in_memory();
        let url = RepoUrl::S3 { bucket: "memory".into(), prefix: String::new() };
        Repository::new(store, url, RetryPolicy::with_deadline(std::time::Duration::from_secs(1)))
    }

    /// Whether the repository is a local directory (`file://`), where a
    /// put or a get costs no round trip.
    pub fn is_local(&self) -> bool {
        self.store.local_root.is_some()
    }

    /// The repository URL.
    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    /// What the data directory's spool records as the source of a segment:
    /// the URL, and the configured key's fingerprint, so that a fetch with
    /// another key (or none) never takes what a fetch with this one spooled.
    pub fn cache_tag(&self) -> String {
        cache_tag(&self.url, self.key.as_deref())
    }

    /// Reads a whole object, opened if the repository is encrypted; `None`
    /// if there is none.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>> {
        let keyring = self.sealing_for(key).await?;
        let Some(stored) = self.get_plain(key).await? else { return Ok(None) };
        match keyring {
            Some(k) => Self::unseal(&k, key, &stored).map(Some),
            None => Ok(Some(stored)),
        }
    }

    /// Reads a whole object as stored; `None` if there is none. A local
    /// object is mapped rather than copied: objects are never modified once created.
    async fn get_plain(&self, key: &Path) -> Result<Option<Bytes>> {
        if let Some(mapped) = self.store.read_mapped(key) {
            return mapped;
        }
        self.retry
            .run(&format!("reading '{key}'"), || async {
                match self.store.objects.get(key).await {
                    Ok(r) => r.bytes().await.map(Some).map_err(storage_err("get", key)),
                    Err(e) if crate::error::is_missing_object(&e) => Ok(None),
                    Err(e) => Err(storage_err("get", key)(e)),
                }
            })
            .await
    }

    /// Reads only the frame header of an object; `None` if there is none.
    pub async fn read_header(&self, key: &Path) -> Result<Option<FrameHeader>> {
        let keyring = self.sealing_for(key).await?;
        let len = if keyring.is_some() { crypt::HEAD_READ } else { frame::HEADER_LEN };
        let bytes = self
            .retry
            .run(&format!("reading '{key}'"), || async {
                let opts = GetOptions { range: Some(GetRange::Bounded(0..len as u64)), ..Default::default() };
                match self.store.objects.get_opts(key, opts).await {
                    Ok(r) => r.bytes().await.map(Some).map_err(storage_err("get", key)),
                    Err(e) if crate::error::is_missing_object(&e) => Ok(None),
                    Err(e) => Err(storage_err("get", key)(e)),
                }
            })
            .await?;
        let corrupt = |reason: String| Error::Corrupt { key: key.to_string(), reason };
        let Some(bytes) = bytes else { return Ok(None) };
        let head = match keyring {
            Some(k) => crypt::open_head(&bytes, key.as_ref(), |g| k.key(g)).map_err(|e| corrupt(e.to_string()))?,
            None => bytes,
        };
        FrameHeader::parse(&head).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    /// Stores a framed object create-only. If the key is taken, the stored
    /// object's checksum decides: identical is success (PostgreSQL calls again
    /// after a crash, and a retried PUT may find its own first attempt),
    /// different is a [`Error::Conflict`] and nothing changes.
    /// In an encrypted repository the object is sealed first (see `crypt`).
    pub async fn put_create(&self, key: &Path, object: PutPayload, header: &FrameHeader) -> Result<PutOutcome> {
        match self.sealing_for(key).await? {
            Some(k) => self.put_create_plain(key, Self::seal(&k, key, &object), header).await,
            None => self.put_create_plain(key, object, header).await,
        }
    }

    /// [`Self::put_create`] of an object exactly as given.
    async fn put_create_plain(&self, key: &Path, object: PutPayload, header: &FrameHeader) -> Result<PutOutcome> {
        let outcome = self
            .retry
            .run(&format!("storing '{key}'"), || {
                let payload = object.clone();
                async move {
                    let mut swept = 0;
                    loop {
                        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                        match self.store.objects.put_opts(key, payload.clone(), opts).await {
                            Ok(_) => return Ok(PutOutcome::Stored),
                            Err(object_store::Error::AlreadyExists { .. }) => return Ok(PutOutcome::AlreadyIdentical),
                            // A concurrent put of the same key (PostgreSQL retrying
                            // while a slow call still runs) swept this put's staging
                            // file before it was linked: nothing was stored, write it
                            // again (a few times at most: once the key exists every
                            // put ends in AlreadyExists).
                            Err(e) if self.store.local_root.is_some() && staging_swept(&e) && swept < 8 => swept += 1,
                            Err(e) => return Err(storage_err("put", key)(e)),
                        }
                    }
                }
            })
            .await?;
        self.store.sweep_staging(key);
        if outcome == PutOutcome::AlreadyIdentical {
            let stored = self.read_header(key).await?;
            let same = stored.is_some_and(|s| s.sha256 == header.sha256 && s.original_size == header.original_size);
            if !same {
                return Err(Error::Conflict {
                    key: key.to_string(),
                    stored: stored.map_or_else(|| "unreadable".into(), |s| frame::hex(&s.sha256)),
                    offered: frame::hex(&header.sha256),
                });
            }
        }
        Ok(outcome)
    }

    /// Creates an object (the lock) in one attempt, without
    /// retries: a retried create could find its own first attempt and could
    /// not tell it from another process's. `Ok(false)` if the key is taken.
    pub async fn create_once(&self, key: &Path, object: Bytes) -> Result<bool> {
        let payload = match self.sealing_for(key).await? {
            Some(k) => Self::seal(&k, key, &PutPayload::from(object)),
            None => PutPayload::from(object),
        };
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.objects.put_opts(key, payload, opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(storage_err("put", key)(e)),
        }
    }

    /// Reads an object and its modification time in one attempt; `None` if
    /// there is none (the lock: its reader decides what a failure means).
    pub async fn get_once(&self, key: &Path) -> Result<Option<(Bytes, chrono::DateTime<chrono::Utc>)>> {
        let keyring = self.sealing_for(key).await?;
        let result = match self.store.objects.get(key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(storage_err("get", key)(e)),
        };
        let modified = result.meta.last_modified;
        let bytes = result.bytes().await.map_err(storage_err("get", key))?;
        // A lock that does not open reads as one of unknown content (the
        // lock's rules for those apply), not as an error.
        let bytes = match keyring {
            Some(k) => Self::unseal(&k, key, &bytes).unwrap_or_default(),
            None => bytes,
        };
        Ok(Some((bytes, modified)))
    }

    /// Replaces an object (only `rekey`'s keyring pointer), retried: the
    /// one overwrite pgwal makes, of an object that holds only a name.
    async fn put_overwrite_plain(&self, key: &Path, object: Bytes) -> Result<()> {
        self.retry
            .run(&format!("storing '{key}'"), || async {
                let opts = PutOptions { mode: PutMode::Overwrite, ..Default::default() };
                self.store
                    .objects
                    .put_opts(key, PutPayload::from(object.clone()), opts)
                    .await
                    .map_err(storage_err("put", key))
            })
            .await?;
        self.store.sweep_staging(key);
        Ok(())
    }

    /// Deletes one object in one attempt (the lock); one already gone counts as deleted.
    pub async fn delete_once(&self, key: &Path) -> Result<()> {
        match self.store.objects.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_err("delete", key)(e)),
        }
    }

    /// The size of an object (one HEAD request, retried); `None` if there
    /// is none. In an encrypted repository, the size of the framed object
    /// inside its envelope, as manifests record it.
    pub async fn object_size(&self, key: &Path) -> Result<Option<u64>> {
        use object_store::ObjectStoreExt;
        self.sealing_for(key).await?;
        let size = self
            .retry
            .run(&format!("reading '{key}'"), || async {
                match self.store.objects.head(key).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(e) if crate::error::is_missing_object(&e) => Ok(None),
                    Err(e) => Err(storage_err("head", key)(e)),
                }
            })
            .await?;
        Ok(size.map(|s| self.framed_size(key, s)))
    }

    /// When an object was stored, in one attempt; `None` if that cannot be
    /// told (gone or unreadable): for reports, which leave it out then.
    pub async fn modified_once(&self, key: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
        use object_store::ObjectStoreExt;
        self.store.objects.head(key).await.ok().map(|m| m.last_modified)
    }

    /// Deletes objects in the order given, at most [`DELETES_IN_FLIGHT`] at
    /// a time, so that an interrupted run has deleted a prefix of `keys` plus
    /// at most that many more just after it. An object already gone counts as
    /// deleted. Only `expire` deletes (SPEC §3.2). On local disk, directories
    /// left empty are removed too.
    pub async fn delete(&self, keys: &[Path]) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        futures::stream::iter(keys)
            .map(|key| async move {
                let what = format!("deleting '{key}'");
                self.retry
                    .run(&what, || async {
                        match self.store.objects.delete(key).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(storage_err("delete", key)(e)),
                        }
                    })
                    .await
            })
            .buffered(DELETES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        // A backup killed mid-put leaves hidden staging files in its
        // directories; expire (the only deleter) holds the repository lock,
        // so no backup writes there now.
        let backups = keys::backups_prefix();
        let backup_keys: Vec<Path> = keys.iter().filter(|k| k.prefix_matches(&backups)).cloned().collect();
        self.store.sweep_staging_beside(&backup_keys);
        self.store.prune_empty_dirs(keys);
        Ok(())
    }

    /// Hidden staging files below `prefix` that a put killed midway left
    /// on local disk (none on object storage): see [`Store::staging_below`].
    pub fn staging_below(&self, prefix: &Path) -> usize {
        self.store.staging_below(prefix).len()
    }

    /// Removes them and the directories they leave empty; only `expire`,
    /// holding the repository lock, for a backup directory it removes.
    pub fn sweep_staging_below(&self, prefix: &Path) -> usize {
        self.store.sweep_staging_below(prefix)
    }

    /// The names directly below `prefix` (a delimiter listing): e.g. the
    /// backup IDs below `backup/`, the log files below `wal/`.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>> {
        Ok(self.list_entries(prefix).await?.dirs)
    }

    /// Object names and sub-directory names directly below `prefix`.
    pub async fn list_entries(&self, prefix: &Path) -> Result<Entries> {
        let listed = self
            .retry
            .run(&format!("listing '{prefix}'"), || async {
                self.store.objects.list_with_delimiter(Some(prefix)).await.map_err(storage_err("list", prefix))
            })
            .await?;
        Ok(Entries {
            dirs: listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect(),
            objects: listed.objects.iter().filter_map(|o| o.location.filename().map(str::to_string)).collect(),
        })
    }

    /// Every object below `prefix`, recursively (sizes as [`Self::object_size`]).
    pub async fn list_objects(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        // Learns whether the repository is encrypted, for the sizes below.
        self.opened().await?;
        let mut listed: Vec<object_store::ObjectMeta> = self
            .retry
            .run(&format!("listing '{prefix}'"), || async {
                self.store.objects.list(Some(prefix)).try_collect().await.map_err(storage_err("list", prefix))
            })
            .await?;
        for o in &mut listed {
            o.size = self.framed_size(&o.location, o.size);
        }
        Ok(listed)
    }

    /// Reads and checks a framed JSON object; `None` if there is none.
    pub async fn load_json<T: serde::de::DeserializeOwned>(&self, key: &Path) -> Result<Option<T>> {
        self.get_json(key).await
    }

    /// Stores a framed JSON object create-only; an existing different one is a
    /// [`Error::Conflict`].
    pub async fn store_json<T: Serialize>(&self, key: &Path, value: &T) -> Result<PutOutcome> {
        let json = serde_json::to_vec_pretty(value).expect("invariant: plain structs serialize");
        let (object, header) = frame::encode(&json, Compression::Zstd(1))
            .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() })?;
        self.put_create(key, object.into(), &header).await
    }

    /// Reads and checks the small JSON objects (format, identity).
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &Path) -> Result<Option<T>> {
        let Some(object) = self.get(key).await? else { return Ok(None) };
        let corrupt = |reason: String| Error::Corrupt { key: key.to_string(), reason };
        let json = frame::decode(&object).map_err(|e| corrupt(e.to_string()))?;
        serde_json::from_slice(&json).map(Some).map_err(|e| corrupt(e.to_string()))
    }

    /// Stores a small JSON object create-only; returns what is stored, which is
    /// the existing object if another process created it first, and whether
    /// this call stored it.
    async fn create_json<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &Path,
        value: &T,
    ) -> Result<(T, bool)> {
        let json = serde_json::to_vec_pretty(value).expect("invariant: plain structs serialize");
        let (object, header) = frame::encode(&json, Compression::None)
            .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() })?;
        match self.put_create(key, object.into(), &header).await {
            Ok(outcome) => {
                Ok((serde_json::from_slice(&json).expect("invariant: own JSON parses"), outcome == PutOutcome::Stored))
            }
            // Created concurrently with other content (another time stamp): read theirs.
            Err(Error::Conflict { .. }) => {
                let theirs = self.get_json(key).await?.ok_or_else(|| Error::Corrupt {
                    key: key.to_string(),
                    reason: "vanished after a create conflict".into(),
                })?;
                Ok((theirs, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks the format object: `Ok(false)` if there is none (no repository here).
    /// An encrypted repository's keyring is opened here too, so a missing
    /// or wrong key fails any command that checks the format.
    /// The format object is read afresh each time (it is small); the
    /// keyring is opened once.
    pub async fn check_format(&self) -> Result<bool> {
        let (format, pointer) = self.read_format_and_pointer().await?;
        let Some(format) = format else { return Ok(false) };
        self.open_with(&format, pointer).await?;
        Ok(true)
    }

    /// The cluster this repository holds and its WAL segment size, for the
    /// commands that need a backup (restore, drill): one clear error when
    /// the repository is missing or holds nothing yet.
    pub async fn recorded_cluster(&self) -> Result<(ClusterIdentity, crate::pg::WalSegmentSize)> {
        self.require_exists().await?;
        let Some(identity) = self.identity().await?.cluster else {
            return Err(Error::Unreachable {
                message: format!("repository '{}' holds no cluster yet: nothing was archived or backed up", self.url()),
                hint: Some("check --repo; 'pgwal backup' takes the first backup".into()),
            });
        };
        let size = crate::pg::WalSegmentSize::new(identity.wal_segment_size).ok_or_else(|| Error::Corrupt {
            key: keys::cluster().to_string(),
            reason: format!("invalid WAL segment size {}", identity.wal_segment_size),
        })?;
        Ok((identity, size))
    }

    /// Fails with [`Error::RepositoryMissing`] unless a repository is here.
    /// On an object store, an absent format object is told apart from a
    /// missing bucket or a refused listing (some stores answer a GET in a
    /// missing bucket with NoSuchKey): one listing names the real cause.
    pub async fn require_exists(&self) -> Result<()> {
        if self.check_format().await? {
            return Ok(());
        }
        self.probe_store().await?;
        Err(Error::RepositoryMissing { url: self.url.to_string() })
    }

    /// With no format object found: fails with the store's own error if the
    /// bucket or container is missing or refuses a listing. Costs one
    /// listing, only when there is no repository (or before its first object).
    async fn probe_store(&self) -> Result<()> {
        self.store.probe(&self.url).await
    }

    /// The recorded cluster identity, checking the format on the way. Both
    /// objects are read concurrently: this runs once per archived segment.
    pub async fn identity(&self) -> Result<RepoIdentity> {
        Ok(self.identity_and_instance().await?.0)
    }

    /// [`Self::identity`] and the instance tag ([`Self::instance_tag`]) from
    /// the same read of the format object.
    pub async fn identity_and_instance(&self) -> Result<(RepoIdentity, Option<String>)> {
        let cluster_key = keys::cluster();
        let (found, cluster) = tokio::join!(self.read_format_and_pointer(), self.get_plain(&cluster_key));
        let (format, pointer) = found?;
        let keyring = match &format {
            Some(format) => self.open_with(format, pointer).await?.keyring.clone(),
            None => {
                self.probe_store().await?;
                None
            }
        };
        let cluster = match cluster? {
            // Without a format object only a plaintext cluster object is read as one.
            Some(_) if format.is_none() && self.key.is_some() => None,
            Some(stored) => {
                let object = match &keyring {
                    Some(k) => Self::unseal(k, &cluster_key, &stored)?,
                    None => stored,
                };
                let corrupt = |reason: String| Error::Corrupt { key: cluster_key.to_string(), reason };
                let json = frame::decode(&object).map_err(|e| corrupt(e.to_string()))?;
                Some(serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?)
            }
            None => None,
        };
        let instance = format.as_deref().map(instance_of);
        Ok((RepoIdentity { format_exists: format.is_some(), cluster }, instance))
    }

    /// [`Self::identity_and_instance`] for a caller that remembers the
    /// cluster `cluster` of the repository instance `instance` (see
    /// `local::identity`): reads only the format object, and takes the
    /// remembered cluster when the format object still has that instance
    /// tag (within an instance the cluster object is create-only and never
    /// deleted). Any other format object, or none, is read as if nothing
    /// were remembered.
    pub async fn identity_if_instance(
        &self,
        instance: &str,
        cluster: ClusterIdentity,
    ) -> Result<(RepoIdentity, Option<String>)> {
        let (format, pointer) = self.read_format_and_pointer().await?;
        match format {
            Some(format) if instance_of(&format) == instance => {
                self.open_with(&format, pointer).await?;
                Ok((RepoIdentity { format_exists: true, cluster: Some(cluster) }, Some(instance.to_string())))
            }
            _ => self.identity_and_instance().await,
        }
    }

    /// A tag for this repository instance: the SHA-256 (hex, 32 digits) of its
    /// format object, which holds a random tag since it was created; `None`
    /// if there is no repository yet.
    pub async fn instance_tag(&self) -> Result<Option<String>> {
        // With a key, the keyring is opened too (one round trip with the
        // format object): an archive marker must not vouch for a segment to
        // a caller whose key does not open the repository.
        let (format, pointer) = self.read_format_and_pointer().await?;
        let Some(format) = format else { return Ok(None) };
        self.open_with(&format, pointer).await?;
        Ok(Some(instance_of(&format)))
    }

    /// Creates the format object if missing (first use of a repository).
    pub async fn create_format(&self) -> Result<()> {
        self.create_format_for(None).await
    }

    /// Creates the format object if missing, for the cluster with this system
    /// identifier if known. A repository created here is announced with one
    /// notice line (it lands in PostgreSQL's log for `archive`): a mistyped
    /// URL must not start a new repository in silence.
    ///
    /// With a key, the keyring is stored before the format object, so a
    /// format object that says "encrypted" always has a keyring beside it.
    pub async fn create_format_for(&self, cluster: Option<u64>) -> Result<()> {
        if self.opened().await?.is_some() {
            return Ok(());
        }
        if let Some(key) = &self.key {
            self.create_keyring(key).await?;
        }
        let info = FormatInfo {
            format: if self.key.is_some() { ENCRYPTED_FORMAT_VERSION } else { FORMAT_VERSION },
            created_by: format!("pgwal {}", env!("CARGO_PKG_VERSION")),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            instance: Some(random_tag()),
            encryption: self
                .key
                .as_ref()
                .map(|_| EncryptionInfo { cipher: "aes-256-gcm".into(), keyring: keys::keyring_pointer().to_string() }),
        };
        let (_, created) = self.create_json(&keys::format(), &info).await?;
        // Reads back what is stored (perhaps another process's format
        // object): it must agree with the key, or nothing more is written.
        self.opened().await?;
        if created {
            match cluster {
                Some(id) => crate::log_notice!("created a new repository at '{}' for cluster {id}", self.url),
                None => crate::log_notice!("created a new repository at '{}'", self.url),
            }
        }
        Ok(())
    }

    /// Records `identity` as the repository's cluster, or returns the one
    /// already recorded (which the caller compares).
    pub async fn create_identity(&self, identity: &ClusterIdentity) -> Result<ClusterIdentity> {
        Ok(self.create_json(&keys::cluster(), identity).await?.0)
    }
}
