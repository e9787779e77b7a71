//! `pgwal backup`: a base backup of the running cluster through the
//! non-exclusive backup API. Order of work, each step only after the last:
//!
//! 1. take the repository's backup lock (`lock/backup`);
//! 2. connect, and check the server is the repository's cluster (recording
//!    it on first use); from a standby (in recovery), connect to the primary
//!    too (`backup.primary_conninfo`), or refuse;
//! 3. check that the data directory is the server's by its path and its
//!    `postmaster.pid` (see [`live`]);
//! 4. `pg_backup_start` on a session held open until the end (if pgwal dies,
//!    the session ends and PostgreSQL aborts the backup by itself), then
//!    check that the directory's `pg_control` holds the checkpoint that
//!    call just made (see [`live`]): before anything is stored;
//! 5. walk the data directory and tablespaces, and store the files in packs
//!    (see [`packer`]); a diff/incr backup stores only the blocks and files
//!    that differ from its parent's (chosen in [`parent`], compared in
//!    [`blocks`]) and references the rest where the chain holds it;
//! 6. `pg_backup_stop`, which gives the `backup_label` and `tablespace_map`;
//!    from a standby, switch WAL on the primary, so that the segment holding
//!    the stop LSN is completed and archived even on a quiet primary (on a
//!    primary, `pg_backup_stop` switches by itself);
//! 7. wait until every WAL segment from the start to the stop LSN is in the
//!    repository (the primary's `archive_command` ships them);
//! 8. store the manifest, last: only now does the backup exist. A diff/incr
//!    checks just before and just after that its parent and every backup
//!    the parent reads from are still there: `expire` takes the same lock,
//!    so it cannot delete them meanwhile, but a lock taken over as stale
//!    from another host (`backup.lock_stale_after`) could still let one in.
//!
//! A backup that fails after step 4 removes the packs it stored (they are
//! not a backup) and says so; so does one stopped by SIGTERM or SIGINT, which
//! then releases its lock and exits 1. One killed (SIGKILL) before 8 leaves packs that
//! no manifest names, invisible to `list` and `restore`, and a lock the next
//! backup takes over; `expire` removes those packs.

pub mod blocks;
pub mod live;
pub mod packer;
pub mod parent;
pub mod walk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use crate::config::CheckpointMode;
use crate::db::{label_timeline, ConnTarget, Session};
use crate::error::{Error, Result};
use crate::pg::control::ControlFile;
use crate::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::progress::Progress;
use crate::repo::backup::{manifest_key, BackupId, BackupType, Manifest, MANIFEST_FORMAT, MANIFEST_FORMAT_CHAINED};
use crate::repo::lock::{BackupLock, LockFor};
use crate::repo::{keys, ClusterIdentity, Repository};

pub use crate::config::backup::BackupRequest;

/// Takes a backup into `repo` and returns its ID once it is complete.
pub fn backup(rt: &tokio::runtime::Runtime, repo: &Repository, req: &BackupRequest) -> Result<BackupId> {
    req.validate()?;
    rt.block_on(async {
        let crate::repo::RepoIdentity { format_exists, cluster: identity } = repo.identity().await?;
        if !format_exists {
            repo.create_format().await?;
        }
        let lock = BackupLock::acquire(repo, req.opts.lock_stale_after, LockFor::Backup).await?;
        let chosen = std::sync::OnceLock::new();
        // SIGTERM / SIGINT (the daemon stopping, a systemd stop, Ctrl-C) drop
        // the backup where it is: its session ends, so PostgreSQL aborts the
        // backup; then the packs go and the lock is released, as after any failure.
        let result = tokio::select! {
            r = backup_locked(repo, req, identity, &chosen) => r,
            signal = crate::interrupt::received() => Err(Error::Interrupted { signal, what: "the backup is abandoned: its packs are removed and the lock released".into() }),
        };
        if let (Err(e), Some(id)) = (&result, chosen.get()) {
            remove_own_packs(repo, id, matches!(e, Error::Interrupted { .. })).await;
        }
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
        source: None,
    })
}

/// The data directory to read: the configured one, else the server's; its
/// `pg_control` must hold the server's system identifier, so that a wrong
/// `--pgdata` cannot make a backup of another cluster's files. Returns the
/// directory, where it came from, and the server's `data_directory` when
/// this role may read it (for [`live`]).
async fn data_directory(
    session: &Session,
    conn: &ConnTarget,
    configured: Option<&Path>,
    system_identifier: u64,
) -> Result<(PathBuf, live::DirOrigin, Option<PathBuf>)> {
    let server_dir = session.data_directory().await?;
    let (dir, origin) = match (configured, &server_dir) {
        (Some(d), _) => (d.to_path_buf(), live::DirOrigin::Configured),
        (None, Some(d)) => (d.clone(), live::DirOrigin::Server),
        (None, None) => {
            return Err(Error::config(
                "no data directory: the server does not tell this role its data_directory",
                "pass --pgdata (or set PGDATA, or pgdata in the config file)",
            ))
        }
    };
    let control = dir.join("global/pg_control");
    let bytes = std::fs::read(&control).map_err(|e| {
        Error::config(
            format!("cannot read '{}': {e}", control.display()),
            "run pgwal backup on the database host as a user who can read the data directory, and check --pgdata",
        )
    })?;
    let found = ControlFile::parse(&bytes).map(|c| c.system_identifier);
    if found != Some(system_identifier) {
        return Err(Error::config(
            format!(
                "data directory '{}' does not belong to the server at {} (its pg_control names cluster {}, the server is {})",
                dir.display(),
                conn.describe(),
                found.map_or_else(|| "?".into(), |f| f.to_string()),
                system_identifier
            ),
            "point --pgdata / PGDATA at the data directory of the server that --conninfo reaches",
        ));
    }
    Ok((dir, origin, server_dir))
}

/// The primary of the standby being backed up, checked to be a primary of
/// the same cluster on which this role may switch WAL. The session is not
/// kept: a backup can take hours, and an idle session may be cut by then;
/// pgwal connects again after `pg_backup_stop`. Refuses at once without
/// one: from a standby, the
/// segment holding the stop LSN is only completed (and archived) when the
/// primary switches WAL, which on a quiet primary may take hours. pgBackRest
/// requires the primary for the same reason; waiting for `archive_timeout`
/// instead would depend on a setting pgwal cannot see or rely on.
async fn check_primary(req: &BackupRequest, system_identifier: u64) -> Result<ConnTarget> {
    let Some(target) = req.primary.clone() else {
        return Err(Error::config(
            format!(
                "the server at {} is a standby (in recovery): a backup from it needs a connection to its primary, \
                 to switch WAL there so that the backup's last segment gets archived",
                req.conn.describe()
            ),
            "give the primary's connection with --primary-conninfo \"host=... user=...\" (or PGWAL_PRIMARY_CONNINFO, \
             or backup.primary_conninfo in the config file), or back up the primary itself",
        ));
    };
    let primary = target.connect().await?;
    if primary.in_recovery().await? {
        return Err(Error::config(
            format!("--primary-conninfo reaches {}, which is in recovery too, not a primary", target.describe()),
            "give the connection of the primary at the top of the replication chain (pg_switch_wal works only there)",
        ));
    }
    let theirs = primary.system_identifier().await?;
    if theirs != system_identifier {
        return Err(Error::config(
            format!(
                "--primary-conninfo reaches {} of cluster {theirs}, the standby is of cluster {system_identifier}",
                target.describe()
            ),
            "give the connection of this standby's own primary",
        ));
    }
    if !primary.may_switch_wal().await? {
        return Err(Error::config(
            format!("--primary-conninfo reaches {}, where this role may not call pg_switch_wal()", target.describe()),
            "connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the role on the primary",
        ));
    }
    Ok(target)
}

/// A backup ID of `kind` for now whose second no earlier backup of any
/// type (complete, or interrupted) has used: IDs then sort as the backups
/// were taken. Two backups of one second differed only in their type
/// letter, and `F` < `I` made a full taken after an incr in the same second
/// sort, and be chosen as a parent, before it.
async fn fresh_id(repo: &Repository, kind: BackupType) -> Result<(BackupId, chrono::DateTime<chrono::Utc>)> {
    'second: loop {
        let now = chrono::Utc::now();
        for other in [BackupType::Full, BackupType::Diff, BackupType::Incr] {
            let dir = crate::repo::keys::backup_dir(BackupId::new(now, other).as_str());
            let leftovers = repo.list_objects(&dir).await?;
            // A backup killed during its first put leaves only a hidden staging
            // file (local disk), which no listing shows: that counts too.
            if !leftovers.is_empty() || repo.staging_below(&dir) > 0 {
                // Taken this very second: take the next one.
                tokio::time::sleep(Duration::from_millis(1000 - u64::from(now.timestamp_subsec_millis()).min(999)))
                    .await;
                continue 'second;
            }
        }
        return Ok((BackupId::new(now, kind), now));
    }
}

/// Steps 2 to 8. `chosen` receives the backup's ID as soon as it has one,
/// for the cleanup of a backup that fails or is interrupted.
async fn backup_locked(
    repo: &Repository,
    req: &BackupRequest,
    recorded: Option<ClusterIdentity>,
    chosen: &std::sync::OnceLock<BackupId>,
) -> Result<BackupId> {
    let began = Instant::now();
    let session = req.conn.connect().await?;
    let segment_size = check_cluster(repo, &session, &req.conn, recorded).await?;
    let system_identifier = session.system_identifier().await?;
    let in_recovery = session.in_recovery().await?;
    let primary = match in_recovery {
        true => Some(check_primary(req, system_identifier).await?),
        false => None,
    };
    let (pgdata, origin, server_dir) =
        data_directory(&session, &req.conn, req.pgdata.as_deref(), system_identifier).await?;
    live::before_start(&session, &req.conn, &pgdata, origin, server_dir.as_deref()).await?;
    let base = base_of(repo, req.kind, system_identifier, session.version_num() / 10000).await?;
    let (id, started) = fresh_id(repo, base.kind).await?;
    let _ = chosen.set(id.clone());
    let fast = req.opts.checkpoint == CheckpointMode::Fast;
    if !fast {
        crate::log_info!("waiting for a spread checkpoint; --checkpoint fast to hurry");
    }
    let start_lsn = session.backup_start(&format!("pgwal backup {id}"), fast).await?;
    live::after_start(&session, &req.conn, &pgdata, origin, in_recovery, start_lsn).await?;

    let started_at = Started { id: &id, time: started, start_lsn, began, segment_size, system_identifier };
    store(repo, req, &session, primary.as_ref(), &pgdata, &started_at, base).await?;
    Ok(id)
}

/// What a backup builds on: nothing (full), or a parent and its chain.
struct Base {
    kind: BackupType,
    parent: std::sync::Arc<parent::ParentIndex>,
    chain: Vec<BackupId>,
}

/// Chooses and loads the parent of a diff/incr backup; without a usable
/// one, the backup is taken full and a notice says why.
async fn base_of(repo: &Repository, kind: BackupType, system_identifier: u64, major: u32) -> Result<Base> {
    let full = Base { kind: BackupType::Full, parent: Default::default(), chain: vec![] };
    if kind == BackupType::Full {
        return Ok(full);
    }
    match parent::choose(kind, &parent::catalog(repo).await?, system_identifier, major) {
        parent::Choice::Full(why) => {
            crate::log_notice!("{why}");
            Ok(full)
        }
        parent::Choice::On { parent, chain, packs } => {
            let index = parent::ParentIndex::load(repo, &parent, &packs).await?;
            crate::log_info!("{kind} backup: building on backup '{}' (only what changed since is stored)", parent.id);
            Ok(Base { kind, parent: std::sync::Arc::new(index), chain })
        }
    }
}

/// What is known once the backup has started.
struct Started<'a> {
    id: &'a BackupId,
    time: chrono::DateTime<chrono::Utc>,
    start_lsn: Lsn,
    began: Instant,
    segment_size: WalSegmentSize,
    system_identifier: u64,
}

/// Steps 5 to 8: packs, stop, WAL, manifest.
async fn store(
    repo: &Repository,
    req: &BackupRequest,
    session: &Session,
    primary: Option<&ConnTarget>,
    pgdata: &Path,
    st: &Started<'_>,
    base: Base,
) -> Result<()> {
    let id = st.id;
    let major = session.version_num() / 10000;
    let walk_dir = pgdata.to_path_buf();
    let walked = tokio::task::spawn_blocking(move || walk::walk(&walk_dir, major))
        .await
        .map_err(|e| Error::io("cannot walk", pgdata)(std::io::Error::other(e.to_string())))??;
    let pack_opts = packer::PackOptions { compress_level: req.opts.compress_level, workers: req.opts.workers };
    let progress = Progress::new(format!("backup {id}"), walked.files.iter().map(|f| f.size).sum());
    let packed =
        packer::pack_files(repo, id, walked.files, std::sync::Arc::clone(&base.parent), &pack_opts, &progress).await;
    progress.finish();
    let mut packed = packed?;

    let stop = session.backup_stop().await?;
    let stopped = chrono::Utc::now();
    let timeline = match label_timeline(&stop.label) {
        Some(t) => t,
        None => session.checkpoint_timeline().await?,
    };
    let stop_timeline = timeline;
    let last = WalFileName::segment(
        stop_timeline,
        SegmentNo(*needed_segments(st.start_lsn, stop.lsn, st.segment_size).end()),
        st.segment_size,
    );
    // The archiver to ask when WAL does not come: the primary's, from a standby.
    let primary_session = match primary {
        Some(target) => switch_on_primary(target, &last, stop.lsn).await,
        None => None,
    };
    let archiver = match &primary_session {
        Some(primary) => (primary, "the primary"),
        None => (session, "the server"),
    };
    wait_for_wal(
        repo,
        archiver,
        &[timeline, stop_timeline],
        st.start_lsn,
        stop.lsn,
        st.segment_size,
        req.opts.wal_timeout,
    )
    .await?;

    packed.files.sort_by(|a, b| (a.tablespace, &a.path).cmp(&(b.tablespace, &b.path)));
    packed.packs.sort_by_key(|p| p.number);
    packed.maps.sort_by_key(|p| p.number);
    let rfc3339 = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = Manifest {
        format: if base.kind == BackupType::Full { MANIFEST_FORMAT } else { MANIFEST_FORMAT_CHAINED },
        id: id.clone(),
        kind: base.kind,
        parent: base.parent.id.clone(),
        system_identifier: st.system_identifier.to_string(),
        server_version_num: session.version_num(),
        timeline,
        start_lsn: st.start_lsn,
        stop_lsn: stop.lsn,
        stop_timeline,
        start_time: rfc3339(st.time),
        stop_time: rfc3339(stopped),
        backup_label: stop.label,
        tablespace_map: stop.tablespace_map,
        tablespaces: walked.tablespaces,
        data_size: packed.files.iter().map(|f| f.size).sum(),
        stored_size: packed.packs.iter().map(|p| p.stored_size).sum(),
        packs: packed.packs,
        maps: packed.maps,
        directories: walked.dirs,
        files: packed.files,
    };
    parent::check_still_there(repo, id, &base.chain).await?;
    repo.store_json(&manifest_key(id), &manifest).await?;
    // An expire that removed a parent while the manifest was being stored:
    // the backup fails, and its cleanup removes the manifest with the packs.
    parent::check_still_there(repo, id, &base.chain).await?;
    let first = WalFileName::segment(
        timeline,
        SegmentNo(*needed_segments(st.start_lsn, stop.lsn, st.segment_size).start()),
        st.segment_size,
    );
    crate::log_info!("{}", summary(&manifest, st.began.elapsed(), &first, &last));
    Ok(())
}

/// Connects to the primary and switches WAL there, so that it completes
/// and archives `last`, the segment holding the standby backup's stop LSN.
/// A failure is only a warning: the segment still comes once the primary
/// fills or times it out (`archive_timeout`), within `backup.wal_timeout` or
/// not. Returns the session, for the archiver's statistics.
async fn switch_on_primary(target: &ConnTarget, last: &WalFileName, stop: Lsn) -> Option<Session> {
    let switched = match target.connect().await {
        Ok(primary) => primary.switch_wal().await.map(|s| (primary, s)),
        Err(e) => Err(e),
    };
    match switched {
        Ok((primary, switched)) => {
            crate::log_info!(
                "backup from a standby: switched WAL on the primary ({}, which completed '{switched}'), so \
                 that the backup's last segment '{last}' (stop LSN {stop}) gets archived",
                target.describe()
            );
            Some(primary)
        }
        Err(e) => {
            crate::log_warn!(
                "cannot switch WAL on the primary ({}): {}; the backup's last segment '{last}' arrives only \
                 once the primary completes it by itself",
                target.describe(),
                e.one_line()
            );
            None
        }
    }
}

/// The one line a cron log keeps of a backup.
fn summary(m: &Manifest, took: Duration, first: &WalFileName, last: &WalFileName) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let on = m.parent.as_ref().map(|p| format!(", {} on top of {p}", m.kind)).unwrap_or_default();
    format!(
        "backup {} complete: {} files, {}, {} stored, {:.1}s, WAL {}..{} ({first}..{last}){on}",
        m.id,
        m.files.len(),
        mib(m.data_size),
        mib(m.stored_size),
        took.as_secs_f64(),
        m.start_lsn,
        m.stop_lsn
    )
}

/// Removes what a failed backup stored under its own ID (packs no manifest
/// names: not a backup), naming it. A failure to remove is only a warning:
/// `expire` sweeps such leftovers later.
///
/// An `interrupted` backup was dropped mid-upload: a pack write already
/// handed to the store (a local disk's blocking thread, a request whose body
/// was sent) cannot be called back and may land after the first sweep, so
/// the directory is swept until it stays empty (for at most 10 s).
async fn remove_own_packs(repo: &Repository, id: &BackupId, interrupted: bool) {
    remove_packs_once(repo, id).await;
    if !interrupted {
        return;
    }
    let prefix = crate::repo::keys::backup_dir(id.as_str());
    let began = Instant::now();
    let mut empty_since: Option<Instant> = None;
    while began.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match repo.list_objects(&prefix).await {
            Ok(o) if o.is_empty() => {
                if empty_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1) {
                    return;
                }
            }
            Ok(_) => {
                empty_since = None;
                remove_packs_once(repo, id).await;
            }
            Err(_) => return,
        }
    }
}

async fn remove_packs_once(repo: &Repository, id: &BackupId) {
    let prefix = crate::repo::keys::backup_dir(id.as_str());
    let keys: Vec<object_store::path::Path> = match repo.list_objects(&prefix).await {
        Ok(objects) => objects.into_iter().map(|o| o.location).collect(),
        Err(e) => {
            crate::log_warn!(
                "the failed backup {id} left its packs in '{prefix}/' ({}); 'pgwal expire' removes them",
                e.one_line()
            );
            return;
        }
    };
    if keys.is_empty() {
        return;
    }
    match repo.delete(&keys).await {
        Ok(()) => crate::log_notice!(
            "removed the {} pack(s) the failed backup {id} had stored ('{prefix}/'): it is not a backup",
            keys.len()
        ),
        Err(e) => crate::log_warn!(
            "the failed backup {id} left packs in '{prefix}/' ({}); 'pgwal expire' removes them",
            e.one_line()
        ),
    }
}

/// The segments a backup needs: from the one holding `start` to the one
/// holding the last byte before `stop`.
pub fn needed_segments(start: Lsn, stop: Lsn, size: WalSegmentSize) -> std::ops::RangeInclusive<u64> {
    let first = start.0 / size.bytes();
    let last = stop.0.saturating_sub(1).max(start.0) / size.bytes();
    first..=last
}

/// How many WAL segments [`wait_for_wal`] looks for at once.
const WAL_LOOKS_IN_FLIGHT: usize = 16;

/// The longest [`wait_for_wal`] goes without looking in the repository.
const WAL_LOOK_EVERY: Duration = Duration::from_millis(250);

/// Waits until every segment the backup needs is in the repository, on any
/// of `timelines`; says once which segment it waits for and why.
/// `session` is the server whose `archive_command` ships them, `archiver_name` names it.
async fn wait_for_wal(
    repo: &Repository,
    (session, archiver_name): (&Session, &str),
    timelines: &[TimelineId],
    start: Lsn,
    stop: Lsn,
    size: WalSegmentSize,
    timeout: Duration,
) -> Result<()> {
    let began = Instant::now();
    let mut said = false;
    let needed = needed_segments(start, stop, size);
    let last = WalFileName::segment(timelines[timelines.len() - 1], SegmentNo(*needed.end()), size);
    let names = |segno: u64| -> Vec<WalFileName> {
        timelines.iter().map(|&tli| WalFileName::segment(tli, SegmentNo(segno), size)).collect()
    };
    let mut missing: Vec<u64> = needed.collect();
    let mut archived = session.archiver_stats().await.ok().and_then(|s| s.last_archived_wal);
    loop {
        // Every segment still missing is looked for at once, a few requests
        // in flight: one by one, each would cost a round trip.
        let found: Vec<bool> = futures::stream::iter(missing.iter().map(|&segno| {
            let names = names(segno);
            async move {
                for name in &names {
                    if repo.read_header(&keys::wal(name)).await?.is_some() {
                        return Ok::<bool, Error>(true);
                    }
                }
                Ok(false)
            }
        }))
        .buffered(WAL_LOOKS_IN_FLIGHT)
        .try_collect()
        .await?;
        missing = missing.into_iter().zip(found).filter(|(_, f)| !f).map(|(segno, _)| segno).collect();
        let Some(&first) = missing.first() else { return Ok(()) };
        let names = names(first);
        if !said {
            said = true;
            crate::log_info!(
                "waiting up to {}s (backup.wal_timeout) for WAL segment '{}' to reach the repository: the \
                 backup needs every segment through '{last}' (stop LSN {stop}), which {archiver_name}'s \
                 archive_command stores",
                timeout.as_secs(),
                names[0]
            );
        }
        if began.elapsed() >= timeout {
            let archiver = session.archiver_stats().await.ok().map(|s| {
                format!(
                    "{archiver_name}'s archiver last archived '{}' and last failed on '{}'{}",
                    s.last_archived_wal.as_deref().unwrap_or("-"),
                    s.last_failed_wal.as_deref().unwrap_or("-"),
                    s.last_failed_time.map(|t| format!(" at {t}")).unwrap_or_default()
                )
            });
            return Err(Error::WalMissing { segment: names[0], seconds: timeout.as_secs(), archiver });
        }
        archived = archiver_progress(session, archived).await;
    }
}

/// Waits until the archiver's `last_archived_wal` moves on from `seen`, or
/// [`WAL_LOOK_EVERY`] passed: asking the server costs no round trip to the
/// repository, so the repository is looked at again as soon as a segment
/// may have arrived (the last one is usually being archived as the backup
/// stops), yet no less often than that when the server cannot tell (its
/// archiver ships elsewhere, or the query fails). Returns what it saw.
async fn archiver_progress(session: &Session, seen: Option<String>) -> Option<String> {
    let until = Instant::now() + WAL_LOOK_EVERY;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match session.archiver_stats().await {
            Ok(s) if s.last_archived_wal != seen => return s.last_archived_wal,
            _ => {}
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository on local disk at `dir`.
    fn local_repo(dir: &Path) -> Repository {
        let url: crate::storage::RepoUrl = format!("file://{}", dir.display()).parse().expect("url");
        let opts = crate::storage::StoreOptions::default();
        let store = crate::storage::open(&url, &opts, crate::storage::Access::CreateIfMissing, Duration::from_secs(5))
            .expect("store");
        Repository::new(store, url, crate::storage::RetryPolicy::with_deadline(Duration::from_secs(5)))
    }

    #[test]
    fn a_killed_backup_that_left_only_a_staging_file_keeps_its_id() {
        // A backup killed during its first put leaves `pack/<n>#N` on local
        // disk and nothing a listing shows; the next backup must not take
        // the same ID (and so the same directory).
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = local_repo(dir.path());
        let now = chrono::Utc::now();
        let taken: Vec<BackupId> =
            (0..2).map(|s| BackupId::new(now + chrono::Duration::seconds(s), BackupType::Incr)).collect();
        for id in &taken {
            let packs = dir.path().join("backup").join(id.as_str()).join("pack");
            std::fs::create_dir_all(&packs).expect("mkdir");
            std::fs::write(packs.join("0000000000000000#1"), b"half a pack").expect("write");
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (id, _) = rt.block_on(fresh_id(&repo, BackupType::Incr)).expect("fresh id");
        assert!(!taken.contains(&id), "{id:?} is the killed backup's ID");
    }

    #[test]
    fn a_backup_never_shares_its_second_with_one_of_another_type() {
        // A full right after an incr in the same second got `...I` and
        // `...F` IDs, and sorted before the incr it followed.
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = local_repo(dir.path());
        let now = chrono::Utc::now();
        let seconds: Vec<String> = (0..2)
            .map(|s| {
                let incr = BackupId::new(now + chrono::Duration::seconds(s), BackupType::Incr);
                let d = dir.path().join("backup").join(incr.as_str());
                std::fs::create_dir_all(&d).expect("mkdir");
                std::fs::write(d.join("manifest"), b"{}").expect("write");
                incr.as_str()[..15].to_string()
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (id, _) = rt.block_on(fresh_id(&repo, BackupType::Full)).expect("fresh id");
        assert!(!seconds.contains(&id.as_str()[..15].to_string()), "{id:?} shares a second with an incr");
    }

    #[test]
    fn segments_from_start_to_the_byte_before_stop() {
        let s = WalSegmentSize::DEFAULT;
        let seg = s.bytes();
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(2 * seg + 0x100), s), 2..=2);
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(5 * seg), s), 2..=4, "a stop on a boundary ends before it");
        assert_eq!(needed_segments(Lsn(2 * seg + 0x28), Lsn(5 * seg + 1), s), 2..=5);
    }
}
