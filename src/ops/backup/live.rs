//! Proof that the directory a backup reads is the live data directory of
//! the server it is connected to (SPEC §3.8). A `cp -a` of the cluster, a
//! restored PITR copy or a standby's directory all carry the same system
//! identifier as the primary, so that check alone would let `--pgdata`
//! point at any of them and store a stale copy as the newest backup.
//!
//! Three pieces of evidence, each of which a copy fails:
//!
//! 1. **The path**, when the role may read `data_directory`: the canonical
//!    path of DIR must be the server's. This settles it on one host, but not
//!    across hosts (a standby's directory on another host often has the
//!    primary's path), and many backup roles cannot read the setting.
//! 2. **`postmaster.pid`**, before the backup starts: a running server's
//!    directory has one, naming that directory (line 2) and the server's
//!    port (line 4). A stopped copy (pg_basebackup, `pgwal restore`) has
//!    none; a `cp -a` of a running cluster has one naming the original
//!    directory; another server's names its own port (two servers on one
//!    host cannot share one).
//! 3. **`global/pg_control`**, after `pg_backup_start`: that call ends with a
//!    checkpoint (on a standby a restartpoint, or the latest one when there
//!    is nothing new to restart from) that the server writes to its live
//!    `pg_control` before it returns the start LSN, so the live file's REDO
//!    is at or after the start LSN, and it is the very file the server reads
//!    for `pg_control_checkpoint()`. DIR's must therefore name the same
//!    checkpoint record and REDO as the server reports (read around it, so a
//!    checkpoint in between is told apart from a mismatch), the same
//!    timeline, the same time of last write (`pg_control_last_modified`:
//!    PostgreSQL stamps every write of the file), and the state that goes
//!    with the server's role ("in production" on a primary, "in archive
//!    recovery" on a standby). A copy
//!    holds an older checkpoint (the primary's forced checkpoint is new), and
//!    a standby's directory says "in archive recovery" where the primary is
//!    in production. This works for every role that can take a backup, on a
//!    primary and a standby alike, which is why it is the check that never
//!    depends on privileges.
//!
//! All three must hold. What none can tell apart is a second standby on
//! another host with the same path and port as the one connected to, that
//! restarted from the same checkpoint and last wrote its `pg_control` in the
//! same second: connect to the standby you back up (pgwal must run on its
//! host anyway, to read its files).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::{ConnTarget, ControlCheckpoint as ServerCheckpoint, Session};
use crate::error::{Error, Result};
use crate::pg::control::{ControlFile, DbState};
use crate::pg::Lsn;

/// Where the directory came from, for the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirOrigin {
    /// `--pgdata`, `PGDATA` or `pgdata` in the config file.
    Configured,
    /// The server's `data_directory`.
    Server,
}

/// The refusal: one line naming the directory and the server, and a hint.
pub fn refuse(dir: &Path, conn: &ConnTarget, origin: DirOrigin, reason: &str) -> Error {
    let hint = match origin {
        DirOrigin::Configured => {
            "drop --pgdata / PGDATA (pgwal then reads the server's data_directory), or point it at the data \
             directory of the server --conninfo reaches (SHOW data_directory there); to back up a standby, \
             connect to that standby"
        }
        DirOrigin::Server => {
            "run pgwal backup on the host of the server --conninfo reaches, as a user who can read its data directory"
        }
    };
    Error::config(
        format!("'{}' is not the live data directory of the server at {}: {reason}", dir.display(), conn.describe()),
        hint,
    )
}

/// The lines of `postmaster.pid` that name its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    /// Line 2: the data directory as the postmaster was given it.
    pub data_dir: PathBuf,
    /// Line 4: the port.
    pub port: Option<u16>,
}

impl PidFile {
    /// Parses `postmaster.pid`; `None` if it has fewer than four lines.
    pub fn parse(text: &str) -> Option<PidFile> {
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() < 4 {
            return None;
        }
        Some(PidFile { data_dir: PathBuf::from(lines[1].trim()), port: lines[3].trim().parse().ok() })
    }
}

/// Evidence 1 and 2, before the backup starts. `canonical` is DIR resolved;
/// `server_dir` the server's `data_directory` if the role may read it.
pub fn check_path_and_pid_file(
    canonical: &Path,
    server_dir: Option<&Path>,
    pid_file: Option<&str>,
    server_port: u16,
) -> std::result::Result<(), String> {
    if let Some(server_dir) = server_dir {
        match std::fs::canonicalize(server_dir) {
            Ok(s) if s == canonical => {}
            Ok(s) => return Err(format!("the server's data_directory is '{}'", s.display())),
            Err(_) => {
                return Err(format!(
                    "the server's data_directory '{}' is not on this host (or not visible to this user)",
                    server_dir.display()
                ))
            }
        }
    }
    let Some(text) = pid_file else {
        return Err("it has no postmaster.pid, so no server is running on it (a stopped or restored copy?)".into());
    };
    let pid = PidFile::parse(text).ok_or("its postmaster.pid is incomplete (is the server starting up?)")?;
    let named = std::fs::canonicalize(&pid.data_dir).unwrap_or_else(|_| pid.data_dir.clone());
    if named != canonical {
        return Err(format!(
            "its postmaster.pid belongs to the server of '{}' (a copy of that directory?)",
            pid.data_dir.display()
        ));
    }
    if pid.port != Some(server_port) {
        return Err(format!(
            "its postmaster.pid names port {}, the server listens on {server_port} (another server of the same cluster?)",
            pid.port.map_or_else(|| "?".into(), |p| p.to_string())
        ));
    }
    Ok(())
}

/// Evidence 3, after `pg_backup_start` returned `start`.
pub fn check_control(
    dir: &ControlFile,
    server: &ServerCheckpoint,
    in_recovery: bool,
    start: Lsn,
) -> std::result::Result<(), String> {
    let expected = if in_recovery { DbState::InArchiveRecovery } else { DbState::InProduction };
    if dir.state != expected {
        return Err(format!(
            "its pg_control says \"{}\", the server is {}",
            dir.state.describe(),
            if in_recovery { "a standby (in archive recovery)" } else { "a primary (in production)" }
        ));
    }
    if dir.redo < start {
        return Err(format!(
            "its pg_control's latest checkpoint (REDO {}) is older than the backup's start {start}, which the \
             server's own pg_control holds: a stale copy",
            dir.redo
        ));
    }
    if (dir.checkpoint, dir.redo, dir.timeline) != (server.checkpoint, server.redo, server.timeline) {
        return Err(format!(
            "its pg_control's latest checkpoint is {} (REDO {}, timeline {}), the server's is {} (REDO {}, timeline {})",
            dir.checkpoint, dir.redo, dir.timeline, server.checkpoint, server.redo, server.timeline
        ));
    }
    if dir.time != server.last_modified {
        let at = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.format("%F %T UTC").to_string())
        };
        return Err(format!(
            "its pg_control was last written at {}, the server's at {} (another server of the same cluster?)",
            at(dir.time),
            at(server.last_modified)
        ));
    }
    Ok(())
}

/// Evidence 1 and 2 against the server.
pub async fn before_start(
    session: &Session,
    conn: &ConnTarget,
    dir: &Path,
    origin: DirOrigin,
    server_dir: Option<&Path>,
) -> Result<()> {
    let canonical = std::fs::canonicalize(dir).map_err(Error::io("cannot resolve the data directory", dir))?;
    let pid_file = std::fs::read_to_string(dir.join("postmaster.pid")).ok();
    let port = session.port().await?;
    check_path_and_pid_file(&canonical, server_dir, pid_file.as_deref(), port)
        .map_err(|reason| refuse(dir, conn, origin, &reason))
}

/// Evidence 3 against the server, after `pg_backup_start` returned `start`.
pub async fn after_start(
    session: &Session,
    conn: &ConnTarget,
    dir: &Path,
    origin: DirOrigin,
    in_recovery: bool,
    start: Lsn,
) -> Result<()> {
    let path = dir.join("global/pg_control");
    let read_dir = || -> Result<ControlFile> {
        let bytes = std::fs::read(&path).map_err(Error::io("cannot read", &path))?;
        ControlFile::parse(&bytes).ok_or_else(|| refuse(dir, conn, origin, "its pg_control is too short"))
    };
    let server = || session.control_checkpoint();
    // A checkpoint between the two readings changes both: read the server's
    // before and after DIR's, and judge only a stable pair.
    let mut last = None;
    for _ in 0..10 {
        let before = server().await?;
        let control = read_dir()?;
        let after = server().await?;
        if before == after {
            return check_control(&control, &after, in_recovery, start)
                .map_err(|reason| refuse(dir, conn, origin, &reason));
        }
        last = Some((control, after));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (control, server) = last.expect("invariant: the loop ran");
    check_control(&control, &server, in_recovery, start).map_err(|reason| refuse(dir, conn, origin, &reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::TimelineId;

    fn control(state: DbState, checkpoint: u64, redo: u64) -> ControlFile {
        ControlFile {
            system_identifier: 1,
            version: 1300,
            state,
            time: 1_764_660_000,
            checkpoint: Lsn(checkpoint),
            redo: Lsn(redo),
            timeline: TimelineId(1),
        }
    }

    const SERVER: ServerCheckpoint = ServerCheckpoint {
        checkpoint: Lsn(0x3000060),
        redo: Lsn(0x3000028),
        timeline: TimelineId(1),
        last_modified: 1_764_660_000,
    };

    #[test]
    fn the_live_control_file_passes_and_copies_fail() {
        let live = control(DbState::InProduction, 0x3000060, 0x3000028);
        assert_eq!(check_control(&live, &SERVER, false, Lsn(0x3000028)), Ok(()));
        let copy = control(DbState::InProduction, 0x2000060, 0x2000028);
        assert!(check_control(&copy, &SERVER, false, Lsn(0x3000028)).unwrap_err().contains("stale copy"));
        let standby = control(DbState::InArchiveRecovery, 0x3000060, 0x3000028);
        assert!(check_control(&standby, &SERVER, false, Lsn(0x3000028)).unwrap_err().contains("in archive recovery"));
        assert_eq!(check_control(&standby, &SERVER, true, Lsn(0x3000028)), Ok(()), "a standby backing itself up");
        let stopped = control(DbState::ShutDown, 0x3000060, 0x3000028);
        assert!(check_control(&stopped, &SERVER, false, Lsn(0x3000028)).is_err());
        let other_timeline = ControlFile { timeline: TimelineId(2), ..live };
        assert!(check_control(&other_timeline, &SERVER, false, Lsn(0x3000028)).is_err());
        let twin = ControlFile { time: 1_764_660_007, ..standby };
        let e = check_control(&twin, &SERVER, true, Lsn(0x3000028)).unwrap_err();
        assert!(
            e.contains("last written at 2025-12-02 07:20:07 UTC"),
            "a standby restarted from the same checkpoint: {e}"
        );
        let later = control(DbState::InProduction, 0x5000060, 0x5000028);
        assert!(check_control(&later, &SERVER, false, Lsn(0x3000028)).unwrap_err().contains("the server's is"));
    }

    #[test]
    fn pid_files_name_their_server() {
        let dir = tempfile::tempdir().expect("temp");
        let data = std::fs::canonicalize(dir.path()).expect("canonical");
        let other = tempfile::tempdir().expect("temp");
        let pid =
            |d: &Path, port: u16| format!("4242\n{}\n1764660000\n{port}\n/tmp\n*\n  1 2\nready   \n", d.display());
        assert_eq!(check_path_and_pid_file(&data, Some(&data), Some(&pid(&data, 5432)), 5432), Ok(()));
        assert_eq!(check_path_and_pid_file(&data, None, Some(&pid(&data, 5432)), 5432), Ok(()));
        let e = check_path_and_pid_file(&data, Some(other.path()), Some(&pid(&data, 5432)), 5432).unwrap_err();
        assert!(e.contains("the server's data_directory is"), "{e}");
        let e = check_path_and_pid_file(&data, Some(Path::new("/nonexistent/pg")), None, 5432).unwrap_err();
        assert!(e.contains("not on this host"), "{e}");
        assert!(check_path_and_pid_file(&data, None, None, 5432).unwrap_err().contains("no postmaster.pid"));
        let e = check_path_and_pid_file(&data, None, Some(&pid(other.path(), 5432)), 5432).unwrap_err();
        assert!(e.contains("belongs to the server of"), "{e}");
        let e = check_path_and_pid_file(&data, None, Some(&pid(&data, 5433)), 5432).unwrap_err();
        assert!(e.contains("port 5433"), "{e}");
        assert!(check_path_and_pid_file(&data, None, Some("4242\n"), 5432).unwrap_err().contains("incomplete"));
    }
}
