//! What a data directory remembers about the repository it archives into,
//! `pg_wal/pgwal/identity/<repo-id>.json`: the repository's instance tag
//! (the SHA-256 of its format object, which holds a random tag from its
//! creation) and the cluster identity recorded in it. With it, `archive`
//! reads only the format object before a store, instead of the format and
//! the cluster objects: on an object store that is one connection and one
//! request less per call.
//!
//! The cache never answers on its own. Its cluster identity is used only
//! after the format object, read afresh by the same call, still has the
//! cached instance tag: within one repository instance the cluster object
//! is create-only and never deleted, so it cannot have changed; a
//! repository wiped and created again at the same URL has another tag, and
//! the call reads both objects again and rewrites the cache. An entry also
//! names the repository handle it was read through (URL and key
//! fingerprint, `Repository::cache_tag`), so a handle with another key never
//! takes it. A file that cannot be read or parsed (torn by a crash, edited by
//! hand) is simply no cache.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::local::data_dir;
use crate::repo::ClusterIdentity;
use crate::storage::{pgdata, RepoUrl};

/// What is remembered about one repository instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownRepository {
    /// The handle it was read through: URL and key fingerprint
    /// (`Repository::cache_tag`).
    pub repo: String,
    /// The repository instance tag (`Repository::instance_tag`).
    pub instance: String,
    /// The cluster the repository records.
    pub cluster: ClusterIdentity,
}

/// The cache file of one repository in one data directory.
#[derive(Debug, Clone)]
pub struct IdentityCache {
    path: PathBuf,
}

impl IdentityCache {
    /// The cache of repository `url` beside the WAL directory `wal_dir`'s
    /// archive markers (`pg_wal/pgwal/identity/<repo-id>.json`).
    pub fn for_wal_dir(wal_dir: &Path, url: &RepoUrl) -> IdentityCache {
        let dir = data_dir::pgwal_dir(wal_dir).join("identity");
        IdentityCache { path: dir.join(format!("{}.json", data_dir::repo_id(url))) }
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is remembered for the handle `repo_tag`, if anything.
    pub fn load(&self, repo_tag: &str) -> Option<KnownRepository> {
        let text = std::fs::read(&self.path).ok()?;
        let known: KnownRepository = serde_json::from_slice(&text).ok()?;
        (known.repo == repo_tag).then_some(known)
    }

    /// Remembers `known` (atomically: temp file, rename), unless that is
    /// what the file says already. A cache that cannot be written is no
    /// error: the next call reads the repository as if there were none.
    pub fn store(&self, known: &KnownRepository) {
        if self.load(&known.repo).as_ref() == Some(known) {
            return;
        }
        let Some(dir) = self.path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let json = serde_json::to_vec(known).expect("invariant: plain structs serialize");
        if let Err(e) = pgdata::write_file(&self.path, &json, 0o600) {
            crate::log_debug!("cannot remember the repository identity in '{}': {e}", self.path.display());
        }
    }

    /// Forgets what is remembered (a repository that no longer matches).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(repo: &str, instance: &str) -> KnownRepository {
        KnownRepository {
            repo: repo.into(),
            instance: instance.into(),
            cluster: ClusterIdentity { system_identifier: u64::MAX - 7, pg_version: 15, wal_segment_size: 16 << 20 },
        }
    }

    #[test]
    fn remembers_per_repository_and_per_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(&wal).expect("mkdir");
        let url: RepoUrl = "s3://b/p".parse().expect("url");
        let other: RepoUrl = "s3://b/q".parse().expect("url");
        let cache = IdentityCache::for_wal_dir(&wal, &url);
        assert!(cache.path().starts_with(wal.join("pgwal/identity")));
        assert_eq!(cache.load("s3://b/p"), None, "nothing yet");

        cache.store(&known("s3://b/p", "aa"));
        assert_eq!(cache.load("s3://b/p"), Some(known("s3://b/p", "aa")));
        assert_eq!(cache.load("s3://b/p (key 1234)"), None, "a handle with a key never takes it");
        assert_eq!(IdentityCache::for_wal_dir(&wal, &other).load("s3://b/q"), None, "per repository");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private like everything pgwal writes");

        // A new instance replaces the old one; forgetting removes it.
        cache.store(&known("s3://b/p", "bb"));
        assert_eq!(cache.load("s3://b/p").map(|k| k.instance), Some("bb".into()));
        cache.forget();
        assert_eq!(cache.load("s3://b/p"), None);
    }

    #[test]
    fn a_torn_or_foreign_file_is_no_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url: RepoUrl = "file:///r".parse().expect("url");
        let cache = IdentityCache::for_wal_dir(dir.path(), &url);
        std::fs::create_dir_all(cache.path().parent().expect("parent")).expect("mkdir");
        for text in [&b"{\"repo\": \"file:///r\", \"inst"[..], b"", b"[]", b"{\"repo\":\"file:///r\"}"] {
            std::fs::write(cache.path(), text).expect("write");
            assert_eq!(cache.load("file:///r"), None, "{:?}", String::from_utf8_lossy(text));
        }
        // Writing over a torn file works.
        cache.store(&known("file:///r", "cc"));
        assert_eq!(cache.load("file:///r").map(|k| k.instance), Some("cc".into()));
    }
}
