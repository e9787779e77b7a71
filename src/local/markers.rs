//! The archive markers, `pg_wal/pgwal/archive/<repo-id>/NAME.ok`: for each
//! file `archive` stored ahead of PostgreSQL, written only after the object
//! is durable, fsynced together with its directory. A marker records the
//! file's inode, size and modification time, the SHA-256 of what was stored,
//! and the repository instance (a random tag in its format object).
//! PostgreSQL's later call for NAME returns 0 at once when the marker matches
//! the file and the repository; anything else takes the normal path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::local::data_dir;
use crate::local::stamp::FileStamp;
use crate::pg::{WalFileKind, WalFileName};
use crate::storage::RepoUrl;

/// What a marker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The WAL file name.
    pub name: String,
    /// The repository URL (for people; the directory name is its ID).
    pub repo: String,
    /// The repository instance tag (`Repository::instance_tag`).
    pub instance: String,
    /// The file that was stored.
    pub stamp: FileStamp,
    /// SHA-256 of the stored content.
    pub sha256: String,
}

/// Where one WAL directory's archive status and markers live.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The WAL directory (`pg_wal`).
    pub wal_dir: PathBuf,
    status_dir: PathBuf,
    /// This repository's marker directory.
    pub markers: PathBuf,
}

impl Layout {
    /// The layout for a file PostgreSQL handed over as `pg_wal/NAME`; `None`
    /// outside a data directory (no `archive_status` beside the file).
    pub fn for_file(path: &Path, url: &RepoUrl) -> Option<Layout> {
        let wal_dir = wal_dir_of(path);
        let status_dir = wal_dir.join("archive_status");
        if !status_dir.is_dir() {
            return None;
        }
        let markers = data_dir::pgwal_dir(&wal_dir).join("archive").join(data_dir::repo_id(url));
        Some(Layout { wal_dir, status_dir, markers })
    }

    pub fn marker_path(&self, name: &WalFileName) -> PathBuf {
        self.markers.join(format!("{name}.ok"))
    }

    /// A marker that matches the file as it is now, if there is one.
    pub fn matching_marker(&self, name: &WalFileName, repo_url: &str) -> Option<Marker> {
        let text = std::fs::read(self.marker_path(name)).ok()?;
        let marker: Marker = serde_json::from_slice(&text).ok()?;
        let stamp = FileStamp::read(&self.wal_dir.join(name.to_string())).ok()?;
        (marker.name == name.to_string() && marker.repo == repo_url && marker.stamp == stamp).then_some(marker)
    }

    /// Files with a `.ready` status that PostgreSQL will ask for after `own`
    /// (history files, and names after `own`), in the order it asks for
    /// them, without those already marked stored. Names before `own` were
    /// asked for already: a `.ready` left for one of them is not our business.
    pub fn candidates(&self, own: &WalFileName, repo_url: &str, limit: usize) -> Vec<WalFileName> {
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
    pub fn sweep(&self) {
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
