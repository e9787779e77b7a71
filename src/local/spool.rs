//! The fetch spool, `pg_wal/pgwal/fetch/`: segments the background
//! prefetcher has already fetched and checked, waiting for PostgreSQL's
//! `restore_command` to ask for them.
//!
//! A spooled segment is `NAME` plus a sidecar `NAME.meta` that says which
//! repository and cluster it came from, its SHA-256 (checked against the
//! stored one when it was written), the boot it was written in and the
//! file's inode, size and modification time. The data file is complete and
//! checked before it gets its final name (temp file, then rename); its
//! sidecar is written before that rename, so a `NAME` without a matching
//! sidecar is never served. `fetch` serves `NAME` by renaming it to DEST only
//! if the sidecar names this NAME, this repository, the system identifier in
//! `global/pg_control` and this boot, and the file still has the recorded
//! inode, size and time; anything else is deleted and fetched from the
//! repository as usual.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::local::data_dir;
use crate::local::stamp::{self, FileStamp};
use crate::pg::WalFileName;

/// The sidecar of a spooled segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolMeta {
    /// The WAL file name.
    pub name: String,
    /// The repository URL it was fetched from.
    pub repo: String,
    /// The repository's cluster.
    pub system_identifier: u64,
    /// `/proc/sys/kernel/random/boot_id` when it was written.
    pub boot_id: String,
    /// The data file as written.
    pub stamp: FileStamp,
    /// SHA-256 of the content, as stored in the repository.
    pub sha256: String,
}

/// The spool of one data directory.
#[derive(Debug, Clone)]
pub struct Spool {
    /// `pg_wal/pgwal/fetch`.
    pub dir: PathBuf,
    data_dir: PathBuf,
}

impl Spool {
    /// The spool of `data_dir`.
    pub fn new(data_dir: &Path) -> Spool {
        Spool { dir: data_dir::pgwal_dir(&data_dir.join("pg_wal")).join("fetch"), data_dir: data_dir.to_path_buf() }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where a spooled segment lives.
    pub fn file(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    /// Where the prefetcher writes `name` before it is checked and published.
    pub fn temp_file(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!(".{name}.tmp"))
    }

    /// Waits while the prefetcher is fetching `name` itself (its temp file
    /// exists and it holds its lock), for at most `limit`: fetching the same
    /// segment a second time beside it would only halve the speed of both.
    /// Returns whether it stopped being in progress (published or dropped).
    pub fn wait_while_fetching(&self, name: &WalFileName, limit: std::time::Duration) -> bool {
        let tmp = self.temp_file(name);
        if !tmp.exists() || !self.prefetcher_running() {
            return true;
        }
        let deadline = std::time::Instant::now() + limit;
        while tmp.exists() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    fn meta(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!("{name}.meta"))
    }

    /// The file in which `fetch` records the last segment PostgreSQL asked for.
    pub fn last_path(&self) -> PathBuf {
        self.dir.join("last")
    }

    /// The prefetcher's lock file (beside the spool, which it may remove).
    pub fn lock_path(&self) -> PathBuf {
        data_dir::pgwal_dir(&self.data_dir.join("pg_wal")).join("prefetch.lock")
    }

    /// Moves the spooled `name` to `dest` if it may be trusted (see the
    /// module comment); `false` if it is not there or not trusted, and then
    /// the caller fetches from the repository. Never fails otherwise.
    pub fn take(&self, name: &WalFileName, repo_url: &str, dest: &Path) -> bool {
        let meta_path = self.meta(name);
        let Ok(text) = std::fs::read(&meta_path) else { return false };
        let file = self.file(name);
        let trusted = serde_json::from_slice::<SpoolMeta>(&text).ok().is_some_and(|m| {
            m.name == name.to_string()
                && m.repo == repo_url
                && Some(m.system_identifier) == data_dir::system_identifier(&self.data_dir)
                && m.boot_id == stamp::boot_id()
                && FileStamp::read(&file).ok() == Some(m.stamp)
        });
        if trusted && std::fs::rename(&file, dest).is_ok() {
            let _ = std::fs::remove_file(&meta_path);
            return true;
        }
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&meta_path);
        false
    }

    /// Records `name` as the segment PostgreSQL asked for last, for the
    /// prefetcher. Best effort: a lost update only delays prefetching.
    pub fn record_last(&self, name: &WalFileName) {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let tmp = self.dir.join(format!(".last.{}", std::process::id()));
        if std::fs::write(&tmp, name.to_string()).is_ok() && std::fs::rename(&tmp, self.last_path()).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The segment PostgreSQL asked for last, if recorded.
    pub fn last(&self) -> Option<WalFileName> {
        std::fs::read_to_string(self.last_path()).ok()?.trim().parse().ok()
    }

    /// Publishes a checked segment: `tmp` (in the spool directory, complete,
    /// its content's SHA-256 `sha256` matched the stored one) becomes `name`.
    pub fn publish(
        &self,
        tmp: &Path,
        name: &WalFileName,
        repo_url: &str,
        system_identifier: u64,
        sha256: String,
    ) -> std::io::Result<()> {
        let meta = SpoolMeta {
            name: name.to_string(),
            repo: repo_url.to_string(),
            system_identifier,
            boot_id: stamp::boot_id(),
            stamp: FileStamp::read(tmp)?,
            sha256,
        };
        let meta_tmp = self.dir.join(format!(".{name}.meta.tmp"));
        std::fs::write(&meta_tmp, serde_json::to_vec(&meta).expect("invariant: plain structs serialize"))?;
        std::fs::rename(&meta_tmp, self.meta(name))?;
        std::fs::rename(tmp, self.file(name))
    }

    /// Spooled segment names (with or without their sidecar).
    pub fn entries(&self) -> Vec<WalFileName> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<WalFileName>().ok()).collect()
    }

    /// Removes a spooled segment and its sidecar.
    pub fn discard(&self, name: &WalFileName) {
        let _ = std::fs::remove_file(self.meta(name));
        let _ = std::fs::remove_file(self.file(name));
    }

    /// Opens the prefetcher lock file.
    pub fn open_lock(&self) -> std::io::Result<File> {
        if let Some(parent) = self.lock_path().parent() {
            std::fs::create_dir_all(parent)?;
        }
        OpenOptions::new().create(true).truncate(false).write(true).open(self.lock_path())
    }

    /// Whether a prefetcher holds the lock now.
    pub fn prefetcher_running(&self) -> bool {
        match self.open_lock() {
            Ok(f) => f.try_lock().is_err(),
            Err(_) => true,
        }
    }

    /// Removes the spool when recovery is over and no prefetcher runs (the
    /// prefetcher normally does it itself; this catches one that was killed).
    pub fn remove_if_recovery_ended(&self) {
        if !self.dir.exists() || data_dir::in_recovery(&self.data_dir) {
            return;
        }
        let Ok(lock) = self.open_lock() else { return };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir_with_control(sysid: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("global")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("pg_wal")).expect("mkdir");
        let mut control = sysid.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(dir.path().join("global/pg_control"), control).expect("write");
        dir
    }

    fn spool_one(spool: &Spool, name: &WalFileName, content: &[u8], repo: &str, sysid: u64) {
        std::fs::create_dir_all(&spool.dir).expect("mkdir");
        let tmp = spool.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write");
        spool.publish(&tmp, name, repo, sysid, "ab".into()).expect("publish");
    }

    #[test]
    fn serves_only_what_it_may_trust() {
        let dir = data_dir_with_control(42);
        let spool = Spool::new(dir.path());
        let name: WalFileName = "000000010000000000000005".parse().expect("name");
        let dest = dir.path().join("pg_wal/RECOVERYXLOG");

        spool_one(&spool, &name, b"segment", "file:///r", 42);
        assert!(spool.take(&name, "file:///r", &dest));
        assert_eq!(std::fs::read(&dest).expect("read"), b"segment");
        assert!(spool.entries().is_empty(), "served files leave the spool");

        // Another repository, another cluster: deleted, never served.
        spool_one(&spool, &name, b"segment", "file:///other", 42);
        assert!(!spool.take(&name, "file:///r", &dest));
        assert!(!spool.file(&name).exists());
        spool_one(&spool, &name, b"segment", "file:///r", 43);
        assert!(!spool.take(&name, "file:///r", &dest));

        // A file changed after it was checked (other size, or replaced).
        spool_one(&spool, &name, b"segment", "file:///r", 42);
        std::fs::write(spool.file(&name), b"segmenX!").expect("overwrite");
        assert!(!spool.take(&name, "file:///r", &dest));
        spool_one(&spool, &name, b"segment", "file:///r", 42);
        let other = spool.dir.join("other");
        std::fs::write(&other, b"segmenX").expect("write");
        std::fs::rename(&other, spool.file(&name)).expect("replace");
        assert!(!spool.take(&name, "file:///r", &dest));

        // A sidecar for another name, or a data file without one.
        let six: WalFileName = "000000010000000000000006".parse().expect("name");
        spool_one(&spool, &name, b"segment", "file:///r", 42);
        std::fs::rename(spool.file(&name), spool.file(&six)).expect("rename");
        std::fs::rename(spool.meta(&name), spool.meta(&six)).expect("rename");
        assert!(!spool.take(&six, "file:///r", &dest));
        std::fs::write(spool.file(&name), b"segment").expect("write");
        assert!(!spool.take(&name, "file:///r", &dest));
        assert_eq!(std::fs::read(&dest).expect("read"), b"segment", "DEST untouched by refusals");
    }

    #[test]
    fn last_request_and_cleanup() {
        let dir = data_dir_with_control(1);
        let spool = Spool::new(dir.path());
        assert_eq!(spool.last(), None);
        let name: WalFileName = "000000020000000000000007".parse().expect("name");
        spool.record_last(&name);
        assert_eq!(spool.last(), Some(name));
        assert!(!spool.prefetcher_running());
        let lock = spool.open_lock().expect("lock");
        lock.try_lock().expect("take");
        assert!(spool.prefetcher_running());
        std::fs::write(dir.path().join("recovery.signal"), "").expect("signal");
        spool.remove_if_recovery_ended();
        assert!(spool.dir.exists(), "kept while recovering");
        std::fs::remove_file(dir.path().join("recovery.signal")).expect("rm");
        spool.remove_if_recovery_ended();
        assert!(spool.dir.exists(), "kept while a prefetcher runs");
        drop(lock);
        spool.remove_if_recovery_ended();
        assert!(!spool.dir.exists(), "removed after recovery");
    }
}
