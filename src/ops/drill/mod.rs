//! `pgwal drill`: proves that a backup restores. Restores it (with the
//! restore command's own code) into a scratch directory, recovers it in a
//! throwaway PostgreSQL of the backup's major version, lets PostgreSQL's
//! own tools judge the result, records the verdict in the repository
//! (`drill/<backup>/<started>`, create-only) and removes the copy.
//!
//! Never touches the live cluster: no connection to it, nothing written
//! into its data directory or tablespaces (they are moved into the scratch
//! directory), and the throwaway server neither listens on TCP nor archives.
//!
//! A check that fails is a finding (recorded, exit 3); trouble that says
//! nothing about the backup (an unreachable repository, no server binaries,
//! no room) is an error and records nothing. So is a signal: an
//! interrupted drill proves nothing either way.

mod binaries;
mod checks;
mod plan;
pub mod report;
mod scratch;
mod server;

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

use self::checks::{check, Reached};
use self::scratch::Scratch;
use self::server::{Recovery, Server};
use crate::config::drill::DrillRequest;
use crate::config::restore::{RestoreOptions, RESTORE_RETRY_DEADLINE};
use crate::error::{Error, Result};
use crate::interrupt;
use crate::ops::restore;
use crate::pg::recovery::TargetAction;
use crate::repo::backup::BackupId;
use crate::repo::drill::{CheckOutcome, DrillCheck, DrillRecord, DRILL_FORMAT};
use crate::repo::Repository;

/// How a drill's start is spelled in its record's key and its scratch directory.
const RECORD_TIME: &str = "%Y%m%dT%H%M%SZ";

/// The checks of a drill, in the order they run.
pub const CHECKS: [&str; 6] = ["restore", "recovery_target", "queries", "pg_amcheck", "shutdown", "pg_checksums"];

/// How long a clean shutdown may take even when the drill's deadline is near.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Refuses to run as root: PostgreSQL does not start as root, and the
/// scratch copy would belong to root.
pub fn refuse_root() -> Result<()> {
    if crate::storage::owner::effective_uid() != 0 {
        return Ok(());
    }
    Err(Error::BadRequest {
        message: "refusing to run a drill as root: PostgreSQL does not start as root".into(),
        hint: Some("run it as the postgres user, e.g. sudo -u postgres pgwal drill".into()),
    })
}

/// What a drill leaves for the caller: the record (stored already) and
/// where the scratch directory was kept, with `--keep`.
#[derive(Debug)]
pub struct Outcome {
    /// The stored record.
    pub record: DrillRecord,
    /// The scratch directory, when kept.
    pub kept: Option<PathBuf>,
}

/// Routes SIGINT and SIGTERM to the drill, which then stops its server,
/// removes its scratch directory and returns [`Error::Interrupted`]. For
/// the `pgwal drill` process only: it replaces the process's handlers (a
/// long-running caller runs the command as a child process instead).
pub fn catch_signals() {
    interrupt::install();
}

/// Runs one drill as `req` says and stores its record.
pub fn drill(rt: &tokio::runtime::Runtime, repo: &Repository, req: &DrillRequest) -> Result<Outcome> {
    let clock = Instant::now();
    let deadline = clock + req.options.timeout;
    let plan = rt.block_on(plan::plan(repo, req))?;
    let m = &plan.manifest;
    let started = unused_start(rt, repo, &m.id);
    let bin = binaries::find(binaries::major_of(m.server_version_num))?;
    crate::log_info!(
        "drilling backup {} ({}, {}) with {} from '{}'",
        m.id,
        crate::human::human_size(m.data_size),
        plan.expect.describe(),
        bin.version,
        bin.dir.display()
    );
    scratch::check_room(&req.options.dir, m.data_size, &m.id)?;
    let s = scratch::create(&req.options.dir, &m.id, &started.format(RECORD_TIME).to_string())?;
    let result = run(rt, repo, req, &plan, &bin, &s, deadline);
    let finish = |keep: bool| -> Option<PathBuf> {
        if keep {
            return Some(s.root.clone());
        }
        if let Err(e) = scratch::remove(&s) {
            crate::log_warn!("could not remove the scratch directory '{}': {e}", s.root.display());
        }
        None
    };
    let (checks, reached) = match result {
        Ok(r) => r,
        Err(e) => {
            // Interrupted: never kept, whatever --keep says (nothing to look at).
            let interrupted = matches!(e, Error::Interrupted { .. });
            if let Some(kept) = finish(req.keep && !interrupted) {
                crate::log_notice!("kept the scratch directory '{}'", kept.display());
            }
            return Err(e);
        }
    };
    let finished = Utc::now();
    let record = DrillRecord {
        format: DRILL_FORMAT,
        backup: m.id.clone(),
        started: started.to_rfc3339_opts(SecondsFormat::Secs, true),
        finished: finished.to_rfc3339_opts(SecondsFormat::Secs, true),
        duration_seconds: (clock.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        target: plan.expect.describe(),
        reached_lsn: reached.lsn.map(|l| l.to_string()),
        reached_timeline: reached.timeline.map(|t| t.0),
        reached_time: reached.time,
        passed: !checks.iter().any(|c| c.outcome == CheckOutcome::Failed),
        checks,
    };
    let stored = rt.block_on(repo.store_drill(&record));
    let kept = finish(req.keep);
    stored?;
    Ok(Outcome { record, kept })
}

/// Now, or the next second no record of this backup's drills starts in: a
/// record's key is its start to the second, and a drill that fails at once
/// can follow another within one.
fn unused_start(rt: &tokio::runtime::Runtime, repo: &Repository, id: &BackupId) -> DateTime<Utc> {
    loop {
        let now = Utc::now();
        let key = crate::repo::keys::drill_record_key(id, &now.format(RECORD_TIME).to_string());
        if rt.block_on(repo.modified_once(&key)).is_none() {
            return now;
        }
        let into_second = Duration::from_nanos(u64::from(now.timestamp_subsec_nanos()));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(into_second) + Duration::from_millis(5));
    }
}

/// Every step in the scratch directory; the server is stopped when this returns.
fn run(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    req: &DrillRequest,
    plan: &plan::Plan,
    bin: &binaries::Binaries,
    s: &Scratch,
    deadline: Instant,
) -> Result<(Vec<DrillCheck>, Reached)> {
    let mut checks = Vec::new();
    let mut reached = Reached::default();
    let phase = Instant::now();
    match restore_in_background(rt, repo, restore_options(req, plan, s), deadline)? {
        Restored::Done(outcome) => {
            crate::log_info!("{} in {:.1}s", outcome.summary(), phase.elapsed().as_secs_f64());
            checks.push(check("restore", CheckOutcome::Passed, outcome.summary()));
        }
        Restored::Finding(e) => {
            checks.push(check("restore", CheckOutcome::Failed, e.one_line()));
            return Ok((skip_rest(checks, "the backup did not restore"), reached));
        }
        Restored::TimedOut => {
            checks.push(check("restore", CheckOutcome::Failed, timed_out(req)));
            return Ok((skip_rest(checks, "the restore did not finish"), reached));
        }
    }
    server::write_config(s)?;
    let phase = Instant::now();
    let mut pg = Server::start(bin, s)?;
    crate::log_info!("started the throwaway server (PID {}) on '{}'", pg.pid(), s.data().display());
    match pg.wait_recovery(s, deadline, || rt.block_on(checks::out_of_recovery(s)))? {
        Recovery::Ended => crate::log_info!("recovery ended after {:.1}s", phase.elapsed().as_secs_f64()),
        Recovery::Exited(status) => {
            let log = server::read_log(s);
            let why = server::last_fatal(&log).unwrap_or_else(|| "no FATAL line in its log".into());
            checks.push(check(
                "recovery_target",
                CheckOutcome::Failed,
                format!("the server exited during recovery ({status}): {why}"),
            ));
            return Ok((skip_rest(checks, "recovery failed"), reached));
        }
        Recovery::TimedOut => {
            pg.kill();
            checks.push(check("recovery_target", CheckOutcome::Failed, format!("recovery: {}", timed_out(req))));
            return Ok((skip_rest(checks, "recovery did not finish"), reached));
        }
    }
    let mut amcheck_as = None;
    match rt.block_on(checks::connect(s)) {
        Ok(sql) => {
            match rt.block_on(checks::reached(&sql, s)) {
                Ok(r) => reached = r,
                Err(e) => crate::log_warn!("could not ask the throwaway server where recovery ended: {e}"),
            }
            checks.push(checks::judge_target(&plan.expect, &reached, &server::read_log(s)));
            let (q, superuser) = rt.block_on(checks::queries(&sql));
            checks.push(q);
            amcheck_as = Some((superuser.unwrap_or_else(|| sql.user.clone()), sql.dbname.clone()));
        }
        Err(e) => {
            let detail = format!("cannot connect to the throwaway server: {e}");
            checks.push(check("recovery_target", CheckOutcome::Failed, detail.clone()));
            checks.push(check("queries", CheckOutcome::Failed, detail));
        }
    }
    if let Some(sig) = interrupt::pending() {
        return Err(server::interrupted(sig));
    }
    let phase = Instant::now();
    checks.push(match &amcheck_as {
        Some((user, db)) => checks::amcheck(bin, s, user, db, deadline)?,
        None => check("pg_amcheck", CheckOutcome::Skipped, "not run: no connection"),
    });
    crate::log_info!("pg_amcheck took {:.1}s", phase.elapsed().as_secs_f64());
    let shutdown_by = deadline.max(Instant::now() + SHUTDOWN_GRACE);
    let control = match pg.stop_fast(shutdown_by) {
        Some(status) => {
            let control = checks::controldata(bin, s, shutdown_by)?;
            let state = control.as_ref().map_or("unknown (pg_controldata failed)".to_string(), |c| c.state.clone());
            let clean = status.success() && state == "shut down";
            let detail = if clean {
                "fast shutdown; pg_controldata: shut down".to_string()
            } else {
                let why = server::last_fatal(&server::read_log(s)).unwrap_or_default();
                format!("the server exited with {status}, pg_controldata says '{state}' {why}")
            };
            checks.push(check("shutdown", if clean { CheckOutcome::Passed } else { CheckOutcome::Failed }, detail));
            control
        }
        None => {
            pg.kill();
            checks.push(check("shutdown", CheckOutcome::Failed, "a fast shutdown did not end in time"));
            None
        }
    };
    drop(pg);
    if let Some(sig) = interrupt::pending() {
        return Err(server::interrupted(sig));
    }
    checks.push(checks::checksums(bin, s, control.as_ref(), deadline.max(Instant::now() + SHUTDOWN_GRACE))?);
    Ok((checks, reached))
}

fn timed_out(req: &DrillRequest) -> String {
    format!(
        "did not finish within drill.timeout ({}s); the throwaway server was stopped",
        req.options.timeout.as_secs()
    )
}

/// Adds a skipped entry for every check not run, so that each record names all six.
fn skip_rest(mut checks: Vec<DrillCheck>, why: &str) -> Vec<DrillCheck> {
    for name in CHECKS {
        if !checks.iter().any(|c| c.name == name) {
            checks.push(check(name, CheckOutcome::Skipped, format!("not run: {why}")));
        }
    }
    checks
}

/// The restore a drill does: the plan's backup into the scratch directory,
/// tablespaces moved there too, promoting at a named target so that the
/// copy becomes queryable.
fn restore_options(req: &DrillRequest, plan: &plan::Plan, s: &Scratch) -> RestoreOptions {
    RestoreOptions {
        target_dir: s.data(),
        backup: Some(plan.manifest.id.clone()),
        target: req.target.clone(),
        action: req.target.as_ref().map(|_| TargetAction::Promote),
        timeline: plan.timeline,
        tablespace_map: plan
            .manifest
            .tablespaces
            .iter()
            .map(|t| (PathBuf::from(&t.location), s.tablespace(t.oid)))
            .collect(),
        delta: false,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()).min(16),
        standby: None,
        repo: req.repo.clone(),
        config_file: req.config_file.clone(),
        encryption_key_file: req.encryption_key_file.clone(),
        retry_deadline: RESTORE_RETRY_DEADLINE,
    }
}

/// How the restore step ended.
enum Restored {
    Done(restore::Outcome),
    /// The backup cannot be restored: a finding.
    Finding(Error),
    TimedOut,
}

/// Whether a restore error says something about the backup or its WAL
/// (a finding) rather than about this machine or the connection (an error).
fn is_finding(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. }
        | Error::Unreachable { .. }
        | Error::WrongCluster { .. }
        | Error::UnsupportedFormat { .. }
        | Error::Conflict { .. } => true,
        Error::Storage { source, .. } => crate::error::is_missing_object(source),
        Error::DeadlineExceeded { last, .. } => is_finding(last),
        _ => false,
    }
}

/// Runs the restore on its own thread, so that the deadline and signals
/// are noticed while it runs. A restore abandoned that way dies with the
/// process; the scratch directory is renamed before it is removed, so that
/// it cannot write there any more.
fn restore_in_background(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    opts: RestoreOptions,
    deadline: Instant,
) -> Result<Restored> {
    let repo = repo.clone();
    let handle: JoinHandle<Result<restore::Outcome>> = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("cannot start the I/O runtime", "-"))?;
        restore::restore(&rt, &repo, &opts)
    });
    loop {
        if handle.is_finished() {
            break;
        }
        if let Some(sig) = interrupt::pending() {
            return Err(server::interrupted(sig));
        }
        if Instant::now() >= deadline {
            return Ok(Restored::TimedOut);
        }
        // Drive the caller's runtime meanwhile: the object store client is
        // shared, and connections it opened there (listing the backups)
        // are served by tasks of that runtime.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
    match handle.join() {
        Ok(Ok(outcome)) => {
            for notice in outcome.notices.iter().skip(outcome.notices_printed) {
                crate::log_notice!("{notice}");
            }
            Ok(Restored::Done(outcome))
        }
        Ok(Err(e)) if is_finding(&e) => Ok(Restored::Finding(e)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Unreachable { message: "the restore of the drill panicked".into(), hint: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_names_every_check() {
        let checks =
            skip_rest(vec![check("restore", CheckOutcome::Failed, "missing WAL")], "the backup did not restore");
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, CHECKS);
        assert!(checks[1..].iter().all(|c| c.outcome == CheckOutcome::Skipped));
    }

    #[test]
    fn findings_and_errors() {
        assert!(is_finding(&Error::Corrupt { key: "k".into(), reason: "r".into() }));
        assert!(is_finding(&Error::Unreachable { message: "missing segment".into(), hint: None }));
        assert!(!is_finding(&Error::Usage("x".into())));
        assert!(!is_finding(&Error::Io {
            action: "cannot write",
            path: "p".into(),
            source: std::io::Error::other("full")
        }));
    }
}
