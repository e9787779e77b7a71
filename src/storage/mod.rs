//! The repository's object store: built from a repository URL (the only seam
//! where storage configuration enters), plus the retry policy every storage
//! call goes through.

#[cfg(any(test, feature = "test-support"))]
pub mod faults;
pub mod mapped;
pub mod owner;
pub mod pgdata;
mod retry;
mod url;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

pub use self::retry::{RetryNotes, RetryPolicy};
pub use self::url::{RepoUrl, KNOWN_SCHEMES};
use crate::error::{Error, Result};

/// S3 settings: the config file's `[s3]` section as it is read; the `AWS_*`
/// environment overrides them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL for self-hosted or non-AWS S3 (path-style requests).
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key ID.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token.
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
}

/// Google Cloud Storage settings (the `[gcs]` section); the `GOOGLE_*`
/// environment overrides them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsOptions {
    /// Path to a service account JSON key file.
    pub service_account_path: Option<String>,
}

/// Azure Blob Storage settings (the `[azure]` section); the `AZURE_*`
/// environment overrides them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureOptions {
    /// Storage account name.
    pub account: Option<String>,
    /// Storage account key.
    pub access_key: Option<String>,
    /// Endpoint URL (e.g. azurite).
    pub endpoint: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
}

/// Everything needed to open a repository's store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// S3 settings.
    pub s3: S3Options,
    /// GCS settings.
    pub gcs: GcsOptions,
    /// Azure settings.
    pub azure: AzureOptions,
}

/// An opened store and, for `file://`, the directory it lives in.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store, rooted at the repository (prefix applied).
    pub objects: Arc<dyn ObjectStore>,
    /// The repository directory of a `file://` repository.
    pub local_root: Option<PathBuf>,
}

impl Store {
    /// An empty store in memory, for tests and benchmarks.
    pub fn in_memory() -> Store {
        Store { objects: Arc::new(object_store::memory::InMemory::new()), local_root: None }
    }

    /// A store that is not a local directory (a wrapper, e.g. the tests'
    /// fault-injecting one, or any other `ObjectStore`).
    pub fn from_objects(objects: Arc<dyn ObjectStore>) -> Store {
        Store { objects, local_root: None }
    }

    /// Reads a whole local object mapped rather than copied (objects are
    /// never modified once created); `None` if the store is not local.
    pub fn read_mapped(&self, key: &object_store::path::Path) -> Option<Result<Option<bytes::Bytes>>> {
        let root = self.local_root.as_ref()?;
        let path = root.join(key.as_ref());
        Some(match std::fs::File::open(&path) {
            Ok(file) => file
                .metadata()
                .map_err(Error::io("cannot stat", &path))
                .and_then(|m| mapped::MappedFile::map(&file, m.len() as usize).map_err(Error::io("cannot read", &path)))
                .map(|mapped| Some(bytes::Bytes::from_owner(mapped))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &path)(e)),
        })
    }

    /// A local store writes `<key>#N` staging files and hard-links them into
    /// place; a process killed in between leaves them behind, invisible to
    /// listings but taking space. Removes those of this key (local only). A
    /// concurrent put of the same key may lose its staging file to this;
    /// `Repository::put_create` then writes it again.
    pub fn sweep_staging(&self, key: &object_store::path::Path) {
        let Some(root) = &self.local_root else { return };
        let base = root.join(key.as_ref());
        for n in 1..=64 {
            let mut staging = base.clone().into_os_string();
            staging.push(format!("#{n}"));
            if std::fs::remove_file(&staging).is_err() {
                break;
            }
        }
    }

    /// Removes every staging file (`<name>#N`) in the local directories of
    /// `keys`: left by a process killed mid-put, they are hidden from
    /// listings, so deleting the objects a listing names leaves them behind.
    /// Only for directories no writer can be using (a backup's, while expire
    /// holds the repository lock); nothing elsewhere.
    pub fn sweep_staging_beside(&self, keys: &[object_store::path::Path]) {
        let Some(root) = &self.local_root else { return };
        let mut dirs: Vec<PathBuf> =
            keys.iter().filter_map(|k| root.join(k.as_ref()).parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if is_staging_name(&entry.file_name()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// The staging files (`<name>#N`) anywhere below `prefix` (local only;
    /// none on object storage, where an unfinished put leaves nothing). A
    /// backup killed during its first put leaves a directory holding only
    /// these: no listing shows them, so [`Self::sweep_staging_beside`],
    /// which follows listed keys, never reaches them.
    pub fn staging_below(&self, prefix: &object_store::path::Path) -> Vec<PathBuf> {
        let Some(root) = &self.local_root else { return Vec::new() };
        let mut found = Vec::new();
        let mut dirs = vec![root.join(prefix.as_ref())];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                match entry.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(entry.path()),
                    Ok(t) if t.is_file() && is_staging_name(&entry.file_name()) => found.push(entry.path()),
                    _ => {}
                }
            }
        }
        found.sort();
        found
    }

    /// Removes the staging files below `prefix` and then every directory
    /// there left empty, `prefix`'s own included; how many files went.
    /// Only for a directory no writer can be using (a backup's, while expire
    /// holds the repository lock).
    pub fn sweep_staging_below(&self, prefix: &object_store::path::Path) -> usize {
        let Some(root) = &self.local_root else { return 0 };
        let removed = self.staging_below(prefix).iter().filter(|f| std::fs::remove_file(f).is_ok()).count();
        remove_empty_dirs(&root.join(prefix.as_ref()));
        removed
    }

    /// After deleting `keys`: removes the local directories (and their
    /// parents below the root) they leave empty; nothing elsewhere.
    pub fn prune_empty_dirs(&self, keys: &[object_store::path::Path]) {
        let Some(root) = &self.local_root else { return };
        let mut dirs: Vec<PathBuf> =
            keys.iter().filter_map(|k| root.join(k.as_ref()).parent().map(Path::to_path_buf)).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs.iter().rev() {
            // Fails harmlessly while the directory holds anything.
            let _ = std::fs::remove_dir(dir);
            if let Some(parent) = dir.parent().filter(|p| p.starts_with(root) && *p != root.as_path()) {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// With no format object found: fails with the store's own error if the
    /// bucket or container is missing or refuses a listing (never for a local store).
    pub async fn probe(&self, url: &RepoUrl) -> Result<()> {
        if self.local_root.is_some() {
            return Ok(());
        }
        match self.objects.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) if crate::error::is_missing_object(&e) => Ok(()),
            Err(source) => Err(Error::Storage { op: "list", key: url.to_string(), source }),
        }
    }
}

/// `<name>#N`: the staging file of a local put (object_store's own naming).
fn is_staging_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.rsplit_once('#'))
        .is_some_and(|(base, n)| !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes `dir` and the directories below it that hold nothing else
/// (depth first); a directory with any file in it stays.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    // Fails harmlessly while the directory holds anything.
    let _ = std::fs::remove_dir(dir);
}

/// Whether opening may create the repository, and whether the command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `archive`, `backup`: create on first use.
    CreateIfMissing,
    /// `expire`: writes (deletes, the lock) into an existing repository.
    WriteExisting,
    /// Every other command: reads only; a missing repository is an error.
    MustExist,
}

/// How long one request may take within a retry `deadline`: half of it, so
/// that a request that stalls (a server that took it and never answers, a
/// connection that went silent) is abandoned while there is still time to
/// send it again; at least 2 s, at most the deadline itself.
pub fn request_timeout(deadline: Duration) -> Duration {
    (deadline / 2).max(Duration::from_secs(2)).min(deadline)
}

/// Opens the store for `url`, for work that retries within `deadline`: each
/// request gets [`request_timeout`] of it. pgwal retries itself (see
/// [`RetryPolicy`]), so the client's own retries are turned off.
pub fn open(url: &RepoUrl, opts: &StoreOptions, access: Access, deadline: Duration) -> Result<Store> {
    let request_timeout = request_timeout(deadline);
    let client = ClientOptions::new()
        .with_timeout(request_timeout)
        .with_connect_timeout(request_timeout.min(Duration::from_secs(5)));
    let no_retry = RetryConfig { max_retries: 0, retry_timeout: request_timeout, ..RetryConfig::default() };
    let cloud_err = |e: object_store::Error| {
        Error::config(
            format!("cannot use repository '{url}': {e}"),
            "check the repository URL and the storage settings",
        )
    };
    let (objects, prefix): (Arc<dyn ObjectStore>, &str) = match url {
        RepoUrl::File(dir) => return open_local(url, dir, access),
        RepoUrl::S3 { bucket, prefix } => {
            let mut b = AmazonS3Builder::new();
            let s3 = &opts.s3;
            let settings = [
                (&s3.endpoint, "aws_endpoint"),
                (&s3.region, "aws_region"),
                (&s3.access_key_id, "aws_access_key_id"),
                (&s3.secret_access_key, "aws_secret_access_key"),
                (&s3.session_token, "aws_session_token"),
            ];
            for (value, key) in settings {
                if let Some(v) = value {
                    b = b.with_config(key.parse().map_err(cloud_err)?, v);
                }
            }
            // The environment wins over the file (SPEC §1: flag, env, file).
            let mut allow_http = s3.allow_http.unwrap_or(false);
            for (k, v) in std::env::vars() {
                if k == "AWS_ALLOW_HTTP" {
                    allow_http = v.eq_ignore_ascii_case("true") || v == "1";
                } else if k.starts_with("AWS_") {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
            }
            if b.get_config_value(&"aws_region".parse().map_err(cloud_err)?).is_none() {
                b = b.with_region("us-east-1");
            }
            // with_client_options replaces an earlier with_allow_http, so both go in one ClientOptions.
            let b =
                b.with_bucket_name(bucket).with_client_options(client.with_allow_http(allow_http)).with_retry(no_retry);
            (Arc::new(b.build().map_err(cloud_err)?), prefix)
        }
        RepoUrl::Gcs { bucket, prefix } => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            if std::env::var_os("GOOGLE_SERVICE_ACCOUNT").is_none() {
                if let Some(p) = &opts.gcs.service_account_path {
                    b = b.with_service_account_path(p);
                }
            }
            let b = b.with_client_options(client).with_retry(no_retry);
            (Arc::new(b.build().map_err(cloud_err)?), prefix)
        }
        RepoUrl::Azure { container, prefix } => {
            let az = &opts.azure;
            let mut b = MicrosoftAzureBuilder::new();
            if let Some(v) = &az.account {
                b = b.with_account(v);
            }
            if let Some(v) = &az.access_key {
                b = b.with_access_key(v);
            }
            if let Some(v) = &az.endpoint {
                b = b.with_endpoint(v.clone());
            }
            let mut allow_http = az.allow_http.unwrap_or(false);
            for (k, v) in std::env::vars() {
                if k == "AZURE_ALLOW_HTTP" {
                    allow_http = v.eq_ignore_ascii_case("true") || v == "1";
                } else if k.starts_with("AZURE_") {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
            }
            let b = b
                .with_container_name(container)
                .with_client_options(client.with_allow_http(allow_http))
                .with_retry(no_retry);
            (Arc::new(b.build().map_err(cloud_err)?), prefix)
        }
    };
    let objects: Arc<dyn ObjectStore> =
        if prefix.is_empty() { objects } else { Arc::new(PrefixStore::new(objects, prefix.to_string())) };
    Ok(Store { objects, local_root: None })
}

/// Like [`open`], but first refuses, when running as root, to write into a
/// `file://` repository that belongs to another user ([`owner`]). The
/// commands use this; the library's own callers (tests, tools) decide for
/// themselves.
pub fn open_as_caller(url: &RepoUrl, opts: &StoreOptions, access: Access, deadline: Duration) -> Result<Store> {
    if let (RepoUrl::File(dir), Access::CreateIfMissing | Access::WriteExisting) = (url, access) {
        owner::refuse_root_into_foreign(dir)?;
    }
    open(url, opts, access, deadline)
}

/// A `file://` repository. Only its own directory is ever created, and only
/// when its parent exists: a typo in the path must not start a new
/// repository somewhere unexpected.
fn open_local(url: &RepoUrl, dir: &Path, access: Access) -> Result<Store> {
    match access {
        Access::MustExist | Access::WriteExisting if !dir.is_dir() => {
            return Err(Error::RepositoryMissing { url: url.to_string() })
        }
        Access::MustExist | Access::WriteExisting => {}
        Access::CreateIfMissing => create_repository_dir(url, dir)?,
    }
    // parse_url_opts would ignore fsync for file:// URLs: build it ourselves.
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| {
            Error::config(
                format!("cannot use repository directory '{}': {e}", dir.display()),
                "the repository path must be an existing, absolute directory",
            )
        })?
        .with_fsync(true);
    Ok(Store { objects: Arc::new(fs), local_root: Some(dir.to_path_buf()) })
}

/// Creates the directory of a new `file://` repository (mode 0700), only if
/// its parent exists, and makes the new entry durable.
fn create_repository_dir(url: &RepoUrl, dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(Error::config(
            format!("cannot create repository '{url}': its parent directory '{}' does not exist", parent.display()),
            format!(
                "check the repository URL for a typo, or create '{}' first (owned by the user running pgwal)",
                parent.display()
            ),
        ));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(Error::io("cannot create repository directory", dir)(e)),
    }
    pgdata::sync_dir(parent).map_err(Error::io("cannot sync directory", parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_may_take_half_the_deadline() {
        let s = Duration::from_secs;
        assert_eq!(request_timeout(s(20)), s(10));
        assert_eq!(request_timeout(s(120)), s(60));
        assert_eq!(request_timeout(s(3)), s(2));
        assert_eq!(request_timeout(Duration::from_millis(1500)), Duration::from_millis(1500));
    }

    /// Staging files a killed put left beside deleted objects go; objects
    /// and names that only look alike stay.
    #[test]
    fn staging_files_beside_deleted_keys_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = RepoUrl::File(dir.path().to_path_buf());
        let store =
            open(&url, &StoreOptions::default(), Access::CreateIfMissing, Duration::from_secs(5)).expect("open");
        let packs = dir.path().join("backup/B/pack");
        std::fs::create_dir_all(&packs).expect("mkdir");
        for name in ["000001#1", "000002#12", "000003", "notes#x", "#7"] {
            std::fs::write(packs.join(name), b"x").expect("write");
        }
        store.sweep_staging_beside(&[object_store::path::Path::from("backup/B/pack/000003")]);
        let mut left: Vec<String> = std::fs::read_dir(&packs)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["#7", "000003", "notes#x"]);
    }
}
