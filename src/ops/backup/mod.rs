//! `pgwal backup`: a base backup of the running cluster through the
//! non-exclusive backup API. Order of work, each step only after the last:
//!
//! 1. take the repository's backup lock (`lock/backup`);
//! 2. connect, and check the server is the repository's cluster (recording
//!    it on first use) and that `--pgdata` is that server's directory;
//! 3. `pg_backup_start` on a session held open until the end (if pgwal dies,
//!    the session ends and PostgreSQL aborts the backup by itself);
//! 4. walk the data directory and tablespaces, and store the files in packs
//!    (see [`packer`]);
//! 5. `pg_backup_stop`, which gives the `backup_label` and `tablespace_map`;
//! 6. wait until every WAL segment from the start to the stop LSN is in the
//!    repository (the server's `archive_command` ships them);
//! 7. store the manifest, last: only now does the backup exist.
//!
//! A backup killed anywhere before 7 leaves packs that no manifest names,
//! invisible to `list` and `restore`, and a lock the next backup takes over.

pub mod packer;
pub mod walk;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::BackupOptions;
use crate::db::{label_timeline, ConnTarget, Session};
use crate::error::{Error, Result};
use crate::ops::lock::BackupLock;
use crate::ops::progress::Progress;
use crate::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::backup::{manifest_key, BackupId, BackupType, Manifest, MANIFEST_FORMAT};
use crate::repo::{keys, ClusterIdentity, Repository};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Full or incremental (refused for now).
    pub kind: BackupType,
    /// The data directory; asked from the server when `None`.
    pub pgdata: Option<PathBuf>,
    /// How to reach the server.
    pub conn: ConnTarget,
    /// `[backup]` options.
    pub opts: BackupOptions,
}

impl BackupRequest {
    /// Refuses what cannot be done before anything is opened or created.
    pub fn validate(&self) -> Result<()> {
        if self.kind == BackupType::Incr {
            return Err(Error::Usage(
                "incremental backups are not implemented yet; take a full backup with '--type full'".into(),
            ));
        }
        Ok(())
    }
}

/// Takes a backup into `repo` and returns its ID once it is complete.
pub fn backup(rt: &tokio::runtime::Runtime, repo: &Repository, req: &BackupRequest) -> Result<BackupId> {
    req.validate()?;
    rt.block_on(async {
        let (format_exists, identity) = repo.identity().await?;
        if !format_exists {
            repo.create_format().await?;
        }
        let lock = BackupLock::acquire(repo, req.opts.lock_stale_after).await?;
        let result = backup_locked(repo, req, identity).await;
        let released = lock.release(repo).await;
        let id = result?;
        released?;
        Ok(id)
    })
}

/// Checks the server against the repository's recorded cluster, recording
/// it when the repository has none yet. Returns the segment size.
async fn check_cluster(
    repo: &Repository,
    session: &Session,
    conn: &ConnTarget,
    recorded: Option<ClusterIdentity>,
) -> Result<WalSegmentSize> {
    let offered = ClusterIdentity {
        system_identifier: session.system_identifier().await?,
        pg_version: session.version_num() / 10000,
        wal_segment_size: session.wal_segment_size().await?,
    };
    let recorded = match recorded {
        Some(id) => id,
        None => repo.create_identity(&offered).await?,
    };
    let what = || format!("the server at {}", conn.describe());
    if recorded.system_identifier != offered.system_identifier {
        return Err(Error::WrongCluster {
            what: what(),
            expected: recorded.system_identifier,
            found: offered.system_identifier,
        });
    }
    if recorded.wal_segment_size != offered.wal_segment_size {
        return Err(Error::config(
            format!(
                "{} uses WAL segments of {} bytes, the repository's cluster {}",
                what(),
                offered.wal_segment_size,
                recorded.wal_segment_size
            ),
            "each repository holds one cluster: give this cluster its own repository",
        ));
    }
    WalSegmentSize::new(offered.wal_segment_size).ok_or_else(|| Error::Database {
        what: "cannot read wal_segment_size".into(),
        detail: format!("{} is not a valid segment size", offered.wal_segment_size),
    })
}

/// The data directory to read: the configured one, else the server's, and
/// in either case it must be the server's (its `pg_control` holds the same
/// system identifier), so that a wrong `--pgdata` cannot make a backup of
/// another cluster's files.
async fn data_directory(session: &Session, configured: Option<&Path>, system_identifier: u64) -> Result<PathBuf> {
    let dir = match configured {
        Some(d) => d.to_path_buf(),
        None => session.data_directory().await?.ok_or_else(|| {
            Error::config(
                "no data directory: the server does not tell this role its data_directory",
                "pass --pgdata (or set PGDATA, or pgdata in the config file)",
            )
        })?,
    };
    let control = dir.join("global/pg_control");
    let bytes = std::fs::read(&control).map_err(|e| {
        Error::config(
            format!("cannot read '{}': {e}", control.display()),
            "run pgwal backup on the database host as a user who can read the data directory, and check --pgdata",
        )
    })?;
    let found = bytes.get(..8).map(|b| u64::from_ne_bytes(b.try_into().expect("invariant: 8 bytes")));
    if found != Some(system_identifier) {
        return Err(Error::config(
            format!(
                "data directory '{}' does not belong to the server (its pg_control names cluster {}, the server is {})",
                dir.display(),
                found.map_or_else(|| "?".into(), |f| f.to_string()),
                system_identifier
            ),
            "point --pgdata / PGDATA at the data directory of the server that --conninfo reaches",
        ));
    }
    Ok(dir)
}

/// A backup ID for now that no earlier, interrupted backup has used.
async fn fresh_id(repo: &Repository) -> Result<(BackupId, chrono::DateTime<chrono::Utc>)> {
    loop {
        let now = chrono::Utc::now();
        let id = BackupId::new(now, BackupType::Full);
        let leftovers = repo.list_objects(&object_store::path::Path::from(format!("backup/{id}"))).await?;
        if leftovers.is_empty() {
            return Ok((id, now));
        }
        // Packs of a killed backup that started this very second: take the next second.
        tokio::time::sleep(Duration::from_millis(1000 - u64::from(now.timestamp_subsec_millis()).min(999))).await;
    }
}

async fn backup_locked(repo: &Repository, req: &BackupRequest, recorded: Option<ClusterIdentity>) -> Result<BackupId> {
    let session = req.conn.connect().await?;
    let segment_size = check_cluster(repo, &session, &req.conn, recorded).await?;
    let system_identifier = session.system_identifier().await?;
    let pgdata = data_directory(&session, req.pgdata.as_deref(), system_identifier).await?;
    let (id, started) = fresh_id(repo).await?;
    let start_lsn = session.backup_start(&format!("pgwal backup {id}"), true).await?;
    let major = session.version_num() / 10000;
    let walk_dir = pgdata.clone();
    let walked = tokio::task::spawn_blocking(move || walk::walk(&walk_dir, major))
        .await
        .map_err(|e| Error::io("cannot walk", &pgdata)(std::io::Error::other(e.to_string())))??;
    let pack_opts = packer::PackOptions { compress_level: req.opts.compress_level, workers: req.opts.workers };
    let progress = Progress::new(format!("backup {id}"), walked.files.iter().map(|f| f.size).sum());
    let packed = packer::pack_files(repo, &id, walked.files, &pack_opts, &progress).await;
    progress.finish();
    let mut packed = packed?;

    let stop = session.backup_stop().await?;
    let stopped = chrono::Utc::now();
    let timeline = match label_timeline(&stop.label) {
        Some(t) => t,
        None => session.checkpoint_timeline().await?,
    };
    let stop_timeline = timeline;
    wait_for_wal(repo, &session, &[timeline, stop_timeline], start_lsn, stop.lsn, segment_size, req.opts.wal_timeout)
        .await?;

    packed.files.sort_by(|a, b| (a.tablespace, &a.path).cmp(&(b.tablespace, &b.path)));
    packed.packs.sort_by_key(|p| p.number);
    let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        id: id.clone(),
        kind: BackupType::Full,
        parent: None,
        system_identifier: system_identifier.to_string(),
        server_version_num: session.version_num(),
        timeline,
        start_lsn,
        stop_lsn: stop.lsn,
        stop_timeline,
        start_time: rfc3339(started),
        stop_time: rfc3339(stopped),
        backup_label: stop.label,
        tablespace_map: stop.tablespace_map,
        tablespaces: walked.tablespaces,
        data_size: packed.files.iter().map(|f| f.size).sum(),
        stored_size: packed.packs.iter().map(|p| p.stored_size).sum(),
        packs: packed.packs,
        directories: walked.dirs,
        files: packed.files,
    };
    repo.store_json(&manifest_key(&id), &manifest).await?;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "pgwal: backup {id} complete: {} files, {} MiB, {} MiB stored, WAL {}..{}",
            manifest.files.len(),
            manifest.data_size >> 20,
            manifest.stored_size >> 20,
            manifest.start_lsn,
            manifest.stop_lsn
        );
    }
    Ok(id)
}

/// The segments a backup needs: from the one holding `start` to the one
/// holding the last byte before `stop`.
pub fn needed_segments(start: Lsn, stop: Lsn, size: WalSegmentSize) -> std::ops::RangeInclusive<u64> {
    let first = start.0 / size.bytes();
    let last = stop.0.saturating_sub(1).max(start.0) / size.bytes();
    first..=last
}

/// Waits until every segment the backup needs is in the repository, on any
/// of `timelines`.
async fn wait_for_wal(
    repo: &Repository,
    session: &Session,
    timelines: &[TimelineId],
    start: Lsn,
    stop: Lsn,
    size: WalSegmentSize,
    timeout: Duration,
) -> Result<()> {
    let began = Instant::now();
    for segno in needed_segments(start, stop, size) {
        let names: Vec<WalFileName> =
            timelines.iter().map(|&tli| WalFileName::segment(tli, SegmentNo(segno), size)).collect();
        loop {
            let mut found = false;
            for name in &names {
                if repo.read_header(&keys::wal(name)).await?.is_some() {
                    found = true;
                    break;
                }
            }
            if found {
                break;
            }
            if began.elapsed() >= timeout {
                let archiver = session.archiver_stats().await.ok().map(|s| {
                    format!(
                        "the server's archiver last archived '{}' and last failed on '{}'{}",
                        s.last_archived_wal.as_deref().unwrap_or("-"),
                        s.last_failed_wal.as_deref().unwrap_or("-"),
                        s.last_failed_time.map(|t| format!(" at {t}")).unwrap_or_default()
                    )
                });
                return Err(Error::WalMissing { segment: names[0].to_string(), seconds: timeout.as_secs(), archiver });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_from_start_to_the_byte_before_stop() {
        let s = WalSegmentSize::DEFAULT;
        let seg = s.bytes();
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(2 * seg + 0x100), s), 2..=2);
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(5 * seg), s), 2..=4, "a stop on a boundary ends before it");
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(5 * seg + 1), s), 2..=5);
    }
}
