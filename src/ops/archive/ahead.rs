//! Archiving ahead of PostgreSQL. PostgreSQL calls `archive_command` for one
//! file at a time and waits for each; with a backlog that serialises every
//! compression, fsync and round trip. So when `pgwal archive pg_wal/N` runs
//! inside a data directory, it also stores up to `archive.ahead` other files
//! that already have `pg_wal/archive_status/NAME.ready` and come after N
//! (history files first, then by name, as PostgreSQL's archiver orders them), `archive.parallel`
//! at once, all within this call. Nothing runs after the call returns, and it
//! returns 0 only once N itself is durably stored.
//!
//! For each file stored ahead it writes a marker, `pg_wal/pgwal/archive/
//! <repo-id>/NAME.ok`, only after the object is durable, fsynced together
//! with its directory. The marker records the file's inode, size and
//! modification time, the SHA-256 of what was stored, and the repository
//! instance (a random tag in its format object). PostgreSQL's later call for
//! NAME returns 0 at once when the marker matches the file and the
//! repository; anything else (no marker, another file under that name, a
//! repository recreated at the same URL) takes the normal path, which is
//! itself safe because stores are create-only with a checksum compare. A
//! crash at any point costs at most a re-upload.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::local::data_dir::{self as walspool, FileStamp};
use crate::ops::archive::{self, Known};
use crate::pg::{WalFileKind, WalFileName};
use crate::repo::{frame, PutOutcome, Repository};
use crate::storage::pgdata;

/// What a marker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// The WAL file name.
    name: String,
    /// The repository URL (for people; the directory name is its ID).
    repo: String,
    /// The repository instance tag ([`Repository::instance_tag`]).
    instance: String,
    /// The file that was stored.
    stamp: FileStamp,
    /// SHA-256 of the stored content.
    sha256: String,
}

/// Where one WAL directory's archive status and markers live.
#[derive(Debug, Clone)]
struct Layout {
    wal_dir: PathBuf,
    status_dir: PathBuf,
    markers: PathBuf,
}

impl Layout {
    /// The layout for a file PostgreSQL handed over as `pg_wal/NAME`; `None`
    /// outside a data directory (no `archive_status` beside the file).
    fn for_file(path: &Path, repo: &Repository) -> Option<Layout> {
        let wal_dir = wal_dir_of(path);
        let status_dir = wal_dir.join("archive_status");
        if !status_dir.is_dir() {
            return None;
        }
        let markers = walspool::pgwal_dir(&wal_dir).join("archive").join(walspool::repo_id(repo.url()));
        Some(Layout { wal_dir, status_dir, markers })
    }

    fn marker_path(&self, name: &WalFileName) -> PathBuf {
        self.markers.join(format!("{name}.ok"))
    }

    /// A marker that matches the file as it is now, if there is one.
    fn matching_marker(&self, name: &WalFileName, repo_url: &str) -> Option<Marker> {
        let text = std::fs::read(self.marker_path(name)).ok()?;
        let marker: Marker = serde_json::from_slice(&text).ok()?;
        let stamp = FileStamp::read(&self.wal_dir.join(name.to_string())).ok()?;
        (marker.name == name.to_string() && marker.repo == repo_url && marker.stamp == stamp).then_some(marker)
    }

    /// Files with a `.ready` status that PostgreSQL will ask for after `own`
    /// (history files, and names after `own`), in the order it asks for
    /// them, without those already marked stored. Names before `own` were
    /// asked for already: a `.ready` left for one of them is not our business.
    fn candidates(&self, own: &WalFileName, repo_url: &str, limit: usize) -> Vec<WalFileName> {
        let mut ready = ready_names(&self.status_dir);
        let own_text = own.to_string();
        ready.retain(|n| n != own && (n.kind() == WalFileKind::History || n.to_string() > own_text));
        ready.sort_by_key(|n| (n.kind() != WalFileKind::History, n.to_string()));
        ready
            .into_iter()
            .filter(|n| self.wal_dir.join(n.to_string()).is_file() && self.matching_marker(n, repo_url).is_none())
            .take(limit)
            .collect()
    }

    /// Removes markers whose file is gone (archived and recycled by PostgreSQL)
    /// and half-written markers of a process that was killed.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.markers) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else { continue };
            let stale = match file_name.strip_suffix(".ok") {
                Some(name) => !self.wal_dir.join(name).exists(),
                None => orphaned_temp(file_name),
            };
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A temp file `NAME.pgwal-PID.tmp` (see `pgdata::write_file`) whose writer
/// no longer runs. A live writer's file is left alone: it is about to be
/// renamed into place.
fn orphaned_temp(file_name: &str) -> bool {
    let Some(pid) = file_name.strip_suffix(".tmp").and_then(|n| n.rsplit_once(".pgwal-")).map(|(_, pid)| pid) else {
        return false;
    };
    pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// The directory holding a file PostgreSQL passed as `%p`, taken lexically
/// (a `pg_wal` that is a symbolic link must not lead elsewhere).
pub fn wal_dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The names of the files in `status_dir` with a `.ready` status.
pub fn ready_names(status_dir: &Path) -> Vec<WalFileName> {
    let Ok(entries) = std::fs::read_dir(status_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready")?.parse::<WalFileName>().ok())
        .collect()
}

/// Archives the file at `path` as `archive::archive` does, answering from a
/// marker when the file was already stored ahead, and pushing ready files
/// ahead of PostgreSQL on the way.
pub fn archive(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let name = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<WalFileName>().ok());
    let (Some(layout), Some(name)) = (Layout::for_file(path, repo), name) else {
        return archive::archive(rt, repo, path, opts);
    };
    let url = repo.url().to_string();
    if let Some(marker) = layout.matching_marker(&name, &url) {
        let marker_path = layout.marker_path(&name);
        // A marker is used once; a leftover one after a crash is still true.
        let _ = std::fs::remove_file(&marker_path);
        if rt.block_on(repo.instance_tag())?.as_deref() == Some(marker.instance.as_str()) {
            return Ok(PutOutcome::Stored);
        }
        // Another repository now answers at this URL: store it again.
    } else {
        let _ = std::fs::remove_file(layout.marker_path(&name));
    }
    let candidates = if opts.ahead > 0 { layout.candidates(&name, &url, opts.ahead) } else { Vec::new() };
    if candidates.is_empty() {
        return archive::archive(rt, repo, path, opts);
    }
    layout.sweep();
    std::fs::create_dir_all(&layout.markers).map_err(Error::io("cannot create", &layout.markers))?;
    rt.block_on(batch(repo, path, &layout, &candidates, opts))
}

/// Stores `path` and the `ahead` files, `opts.parallel` at once.
async fn batch(
    repo: &Repository,
    path: &Path,
    layout: &Layout,
    ahead: &[WalFileName],
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let level = opts.compress_level;
    let own = path.to_path_buf();
    let first = tokio::task::spawn_blocking(move || archive::encode_file(&own, level));
    let (known, instance) = tokio::join!(repo.identity(), repo.instance_tag());
    let known = match known {
        Ok(k) => k,
        Err(e) => {
            let _ = first.await;
            return Err(e);
        }
    };
    let push_own = async {
        let encoded = first.await.map_err(|_| panicked(path))??;
        archive::store_encoded(repo, &encoded, known).await
    };
    // A repository without its format object yet is created by this call's
    // own store; ahead work waits for the next call.
    let Some(instance) = instance.ok().flatten().filter(|_| known.0) else { return push_own.await };
    let known_now = known;
    let pushes = futures::stream::iter(ahead.iter().copied())
        .map(|name| push_ahead(repo, layout, name, known_now, &instance, level))
        .buffer_unordered(opts.parallel.saturating_sub(1).max(1));
    let (outcome, results) = tokio::join!(push_own, pushes.collect::<Vec<_>>());
    for (name, result) in results {
        if let Err(e) = result {
            // PostgreSQL will call for it and get the error then.
            crate::log_warn!("archiving '{name}' ahead failed: {}", e.one_line());
        }
    }
    outcome
}

fn panicked(path: &Path) -> Error {
    Error::InvalidWalFile { path: path.into(), reason: "worker thread panicked".into() }
}

/// Stores one file ahead and writes its marker once the object is durable.
async fn push_ahead(
    repo: &Repository,
    layout: &Layout,
    name: WalFileName,
    known: Known,
    instance: &str,
    level: i32,
) -> (WalFileName, Result<()>) {
    let path = layout.wal_dir.join(name.to_string());
    let result = async {
        let file = path.clone();
        let encoded = tokio::task::spawn_blocking(move || archive::encode_file(&file, level))
            .await
            .map_err(|_| panicked(&path))??;
        archive::store_encoded(repo, &encoded, known).await?;
        let marker = Marker {
            name: name.to_string(),
            repo: repo.url().to_string(),
            instance: instance.to_string(),
            stamp: encoded.stamp,
            sha256: frame::hex(&encoded.header.sha256),
        };
        let json = serde_json::to_vec(&marker).expect("invariant: plain structs serialize");
        let marker_path = layout.marker_path(&name);
        tokio::task::spawn_blocking(move || {
            pgdata::write_file(&marker_path, &json, 0o600).map_err(Error::io("cannot write", marker_path))
        })
        .await
        .map_err(|_| panicked(&path))?
    }
    .await;
    (name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_dir_is_taken_lexically() {
        assert_eq!(wal_dir_of(Path::new("pg_wal/000000010000000000000001")), Path::new("pg_wal"));
        assert_eq!(wal_dir_of(Path::new("000000010000000000000001")), Path::new("."));
        assert_eq!(wal_dir_of(Path::new("/d/pg_wal/00000002.history")), Path::new("/d/pg_wal"));
    }

    #[test]
    fn candidates_follow_postgres_order_and_skip_marked_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).expect("mkdir");
        let names = [
            "000000010000000000000000",
            "000000010000000000000003",
            "000000010000000000000001",
            "000000010000000000000002",
            "00000002.history",
            "000000010000000000000004.partial",
        ];
        for n in names {
            std::fs::write(wal.join(n), n).expect("write");
            std::fs::write(wal.join("archive_status").join(format!("{n}.ready")), "").expect("ready");
        }
        // A .ready whose file is gone is skipped.
        std::fs::write(wal.join("archive_status/000000010000000000000009.ready"), "").expect("ready");
        let layout = Layout {
            wal_dir: wal.clone(),
            status_dir: wal.join("archive_status"),
            markers: wal.join("pgwal/archive/x"),
        };
        let own: WalFileName = "000000010000000000000001".parse().expect("name");
        let got: Vec<String> = layout.candidates(&own, "file:///r", 10).iter().map(|n| n.to_string()).collect();
        assert_eq!(
            got,
            [
                "00000002.history",
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004.partial"
            ]
        );
        // A matching marker takes a file off the list; a marker for another
        // version of the file (other size, inode or time) does not.
        std::fs::create_dir_all(&layout.markers).expect("mkdir");
        let two: WalFileName = "000000010000000000000002".parse().expect("name");
        let marker = |stamp| Marker {
            name: two.to_string(),
            repo: "file:///r".into(),
            instance: "i".into(),
            stamp,
            sha256: String::new(),
        };
        let stamp = FileStamp::read(&wal.join(two.to_string())).expect("stamp");
        let stale = FileStamp { size: stamp.size + 1, ..stamp };
        std::fs::write(layout.marker_path(&two), serde_json::to_vec(&marker(stale)).expect("json")).expect("write");
        assert_eq!(layout.candidates(&own, "file:///r", 10).len(), 4);
        std::fs::write(layout.marker_path(&two), serde_json::to_vec(&marker(stamp)).expect("json")).expect("write");
        assert_eq!(layout.candidates(&own, "file:///r", 10).len(), 3);
        assert_eq!(layout.candidates(&own, "file:///other", 10).len(), 4, "markers are per repository");
        assert_eq!(layout.candidates(&own, "file:///r", 2).len(), 2);
        // Markers of files PostgreSQL has recycled are swept.
        std::fs::remove_file(wal.join(two.to_string())).expect("rm");
        layout.sweep();
        assert!(!layout.marker_path(&two).exists());
        // A killed writer's temp file goes; a live writer's stays.
        let dead = layout.markers.join(format!("{own}.ok.pgwal-{}.tmp", u32::MAX));
        let live = layout.markers.join(format!("{own}.ok.pgwal-{}.tmp", std::process::id()));
        std::fs::write(&dead, b"{").expect("write");
        std::fs::write(&live, b"{").expect("write");
        layout.sweep();
        assert!(!dead.exists() && live.exists());
    }
}
