//! A data directory as pgwal sees it from outside the server: whether a
//! directory is one, which one a command run by PostgreSQL belongs to, its
//! recovery state (the signal files), whether its postmaster runs, its
//! cluster; and pgwal's own corner of it, `pg_wal/pgwal/`, which holds the
//! archive markers (`archive/<repo-id>/NAME.ok`) and the fetch spool
//! (`fetch/`). That corner is inside `pg_wal` because every backup tool,
//! pgwal's included, skips `pg_wal`'s contents, and PostgreSQL itself only
//! touches names that look like WAL files there.
//!
//! Markers and spool are caches whose entries say "this file is this
//! content": an entry is trusted only while the file it describes still has
//! the inode, size and modification time (nanoseconds) recorded for it
//! ([`crate::local::stamp`]), and, for the fetch spool, only within the boot
//! that wrote it (files written without fsync may come back empty or torn
//! after a power loss).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
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

/// Whether `dir` is a PostgreSQL data directory: it has a `PG_VERSION`.
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file()
}

/// The data directory of a command run by PostgreSQL: the working directory
/// when it is one (PostgreSQL runs archive_command and restore_command
/// there), else `pgdata` as given.
pub fn of_command(cwd: Option<&Path>, pgdata: Option<&Path>) -> Option<PathBuf> {
    cwd.filter(|d| is_data_dir(d)).or(pgdata).map(Path::to_path_buf)
}

/// The data directory `archive`, `fetch` and `list` look at: the working
/// directory when PostgreSQL runs the command there, else the configured
/// `--pgdata` / `PGDATA` if that is a data directory. A `PGDATA` pointing
/// elsewhere (or nowhere) is never written into by `archive` or `fetch`.
pub fn of_this_process(configured: Option<&Path>) -> Option<PathBuf> {
    of_command(std::env::current_dir().ok().as_deref(), configured.filter(|d| is_data_dir(d)))
}

/// A `--pgdata` / `PGDATA` that was given must be a data directory (for
/// `list`: say so rather than leave out the backlog the user asked about).
pub fn require_if_given(configured: Option<&Path>) -> Result<()> {
    match configured {
        Some(d) if !is_data_dir(d) => Err(Error::config(
            format!(
                "--pgdata / PGDATA '{}' is not a PostgreSQL data directory{}",
                d.display(),
                if d.exists() { " (no PG_VERSION in it)" } else { ": it does not exist" }
            ),
            "give the data directory of the cluster that archives into this repository, or leave --pgdata out",
        )),
        _ => Ok(()),
    }
}

/// Whether the server in `data_dir` is (still) recovering: PostgreSQL removes
/// both signal files when recovery ends.
pub fn in_recovery(data_dir: &Path) -> bool {
    data_dir.join("recovery.signal").exists() || in_standby_mode(data_dir)
}

/// Whether the server in `data_dir` recovers in standby mode (it retries a
/// failed `restore_command` rather than end recovery).
pub fn in_standby_mode(data_dir: &Path) -> bool {
    data_dir.join("standby.signal").exists()
}

/// Whether `dest` (relative to the working directory if relative) is
/// `<data_dir>/pg_wal/RECOVERYXLOG` of a data directory with a
/// `global/pg_control`: the file PostgreSQL's startup process, and
/// pg_rewind's `--restore-target-wal` for a stopped cluster, have
/// restore_command write. A symlinked pg_wal counts as itself.
pub fn is_recovery_xlog(data_dir: &Path, dest: &Path) -> bool {
    if dest.file_name() != Some(std::ffi::OsStr::new("RECOVERYXLOG")) || !data_dir.join("global/pg_control").is_file() {
        return false;
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), data_dir.join("pg_wal").canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
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

/// The system identifier recorded in `data_dir`'s `global/pg_control`.
pub fn system_identifier(data_dir: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(data_dir.join("global/pg_control")).ok()?.read_exact(&mut head).ok()?;
    crate::pg::control::system_identifier(&head)
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
    fn recovery_xlog_is_pg_wal_recoveryxlog_of_a_data_dir_with_pg_control() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("pg_wal")).expect("mkdir");
        let dest = data.join("pg_wal/RECOVERYXLOG");
        assert!(!is_recovery_xlog(&data, &dest), "no global/pg_control");
        std::fs::create_dir_all(data.join("global")).expect("mkdir");
        std::fs::write(data.join("global/pg_control"), [0u8; 8192]).expect("write");
        assert!(is_recovery_xlog(&data, &dest));
        assert!(is_recovery_xlog(&data, &data.join("global/../pg_wal/RECOVERYXLOG")));
        assert!(!is_recovery_xlog(&data, &data.join("pg_wal/000000010000000000000001")));
        assert!(!is_recovery_xlog(&data, &data.join("RECOVERYXLOG")));
        assert!(!is_recovery_xlog(&data, &dir.path().join("RECOVERYXLOG")));
        // pg_wal elsewhere (initdb -X), reached through the link or directly.
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(&wal).expect("mkdir");
        std::fs::remove_dir(data.join("pg_wal")).expect("rmdir");
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).expect("symlink");
        assert!(is_recovery_xlog(&data, &data.join("pg_wal/RECOVERYXLOG")));
        assert!(is_recovery_xlog(&data, &wal.join("RECOVERYXLOG")));
    }

    #[test]
    fn repo_ids_differ_per_repository() {
        let a: RepoUrl = "file:///a".parse().expect("url");
        let b: RepoUrl = "s3://bucket/a".parse().expect("url");
        assert_ne!(repo_id(&a), repo_id(&b));
        assert_eq!(repo_id(&a), repo_id(&a.clone()));
        assert_eq!(repo_id(&a).len(), 16);
    }
}
