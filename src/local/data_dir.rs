//! pgwal's own corner of a data directory, `pg_wal/pgwal/`: the archive
//! markers (`archive/<repo-id>/NAME.ok`) and the fetch spool (`fetch/`).
//! Inside `pg_wal` because every backup tool, pgwal's included, skips
//! `pg_wal`'s contents, and PostgreSQL itself only touches names that look
//! like WAL files there.
//!
//! Both are caches whose entries say "this file is this content": an entry is
//! trusted only while the file it describes still has the inode, size and
//! modification time (nanoseconds) recorded for it, and, for the fetch spool,
//! only within the boot that wrote it (files written without fsync may come
//! back empty or torn after a power loss).

use std::path::{Path, PathBuf};

use crate::repo::frame;
use crate::storage::RepoUrl;

/// `pg_wal/pgwal` for the WAL directory `wal_dir`.
pub fn pgwal_dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join("pgwal")
}

/// A short, stable name for a repository: markers of one repository never
/// vouch for another.
pub fn repo_id(url: &RepoUrl) -> String {
    frame::hex(&frame::sha256(url.to_string().as_bytes()))[..16].to_string()
}

/// The data directory of a command run by PostgreSQL: the working directory
/// when it is one (PostgreSQL runs archive_command and restore_command
/// there), else the configured one.
pub fn data_dir(cwd: Option<&Path>, pgdata: Option<&Path>) -> Option<PathBuf> {
    cwd.filter(|d| d.join("PG_VERSION").exists()).or(pgdata).map(Path::to_path_buf)
}

/// Whether the server in `data_dir` is (still) recovering: PostgreSQL removes
/// both signal files when recovery ends.
pub fn in_recovery(data_dir: &Path) -> bool {
    data_dir.join("recovery.signal").exists() || data_dir.join("standby.signal").exists()
}

/// The PID of the postmaster running in `data_dir`, if one runs: the first
/// line of its `postmaster.pid`, when that process is alive. A file left by
/// a killed server names a process that is gone (or, after a reboot, the
/// rare reused PID: then the prefetcher lives until its idle exit).
pub fn running_postmaster(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // Signal 0 checks existence only; EPERM means alive but another user's.
    // SAFETY: kill with signal 0 sends nothing.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    alive.then_some(pid)
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub inode: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: meta.len(),
            inode: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The stamp of the file at `path` (following links, as opening it does).
    pub fn read(path: &Path) -> std::io::Result<FileStamp> {
        std::fs::metadata(path).map(|m| FileStamp::of(&m))
    }
}

/// This boot's identity (Linux), so that files written without fsync before
/// a crash are never trusted after it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The system identifier recorded in `data_dir`'s `global/pg_control` (its
/// first eight bytes, little-endian on the platforms PostgreSQL runs on here).
pub fn system_identifier(data_dir: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(data_dir.join("global/pg_control")).ok()?.read_exact(&mut head).ok()?;
    Some(u64::from_le_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postmaster_pid_file_counts_only_while_its_process_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(running_postmaster(dir.path()), None, "no file");
        let me = std::process::id() as i32;
        std::fs::write(dir.path().join("postmaster.pid"), format!("{me}\n/data\n1700000000\n5432\n")).expect("write");
        assert_eq!(running_postmaster(dir.path()), Some(me));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let gone = child.id() as i32;
        child.wait().expect("wait");
        std::fs::write(dir.path().join("postmaster.pid"), format!("{gone}\n")).expect("write");
        assert_eq!(running_postmaster(dir.path()), None, "a reaped process");
        std::fs::write(dir.path().join("postmaster.pid"), "garbage\n").expect("write");
        assert_eq!(running_postmaster(dir.path()), None);
    }

    #[test]
    fn repo_ids_differ_per_repository() {
        let a: RepoUrl = "file:///a".parse().expect("url");
        let b: RepoUrl = "s3://bucket/a".parse().expect("url");
        assert_ne!(repo_id(&a), repo_id(&b));
        assert_eq!(repo_id(&a), repo_id(&a.clone()));
        assert_eq!(repo_id(&a).len(), 16);
    }

    #[test]
    fn stamps_change_when_the_file_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"one").expect("write");
        let first = FileStamp::read(&f).expect("stamp");
        assert_eq!(first, FileStamp::read(&f).expect("stamp"));
        std::fs::write(dir.path().join("g"), b"two").expect("write");
        std::fs::rename(dir.path().join("g"), &f).expect("rename");
        assert_ne!(first, FileStamp::read(&f).expect("stamp"), "another inode");
    }
}
