//! `pgwal expire [--retain-full N] [--retain-days D] [--dry-run]`: deletes
//! the backups the retention policy lets go and the WAL no retained backup
//! needs (the decision is [`plan::plan`], a pure function). The only command
//! that deletes. `pgwal expire --backup ID [--with-dependents]` deletes one
//! backup (and the backups depending on it) and the WAL no remaining backup
//! needs ([`plan::plan_removal`]); it leaves incomplete backups to a policy run.
//!
//! Except with `--dry-run`, expire holds the repository lock (`lock/backup`,
//! [`crate::repo::lock`]) from before it reads the catalog until its last
//! deletion, so it never interleaves with a backup: a backup choosing or
//! storing an incr on a parent expire is about to delete, or an expire
//! planning from a catalog that lacks the incr a backup is storing. While a
//! backup holds the lock, expire deletes nothing and fails at once (exit 4,
//! naming the holder); a cron or daemon run again later finishes the job.
//! A lock left by a killed backup or expire is taken over as by a backup.
//! SIGTERM or SIGINT stops it between two deletions (both named), then the
//! lock is released.
//!
//! Order of deletion, so the repository is consistent after every step and
//! an interrupted expire can simply be run again:
//! 1. each expired backup, dependents before what they depend on (a diff or
//!    incr before its parent and its full), otherwise oldest stop time
//!    first: its manifest (from then on the backup does not exist for list,
//!    restore and verify), then its packs; so an interrupted expire never
//!    leaves a listed backup without the packs it reads;
//! 2. packs of backups without a manifest (interrupted backups or expires):
//!    with the lock held, no backup is being taken (a dry run leaves them
//!    out while one is);
//! 3. WAL, timeline by timeline, oldest segment first, so what is kept never
//!    gets a hole; `.history` files stay.
//!
//! Nothing goes without a record (SPEC §3.9): each backup and each run of
//! WAL files (at most one log file directory) is named on the output,
//! flushed, as soon as it is gone and before the next deletion starts;
//! deletes run in batches that end before the next begins, so when one
//! fails, exactly what went before it is named too. With no retention
//! policy configured, expire deletes nothing and warns (pgBackRest does the
//! same), so the documented cron line goes on to `verify`.
//!
//! Expire reads only listings, the manifests and the history files: WAL
//! directories wholly kept are not even listed.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;

use self::plan::{Model, Plan, PlanBackup, PolicyError, WalKeep};
use crate::error::{Error, Result};
use crate::ops::restore::select::BackupInfo;
use crate::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::backup::{manifest_key, BackupId, Manifest};
use crate::repo::catalog::{Backups, Catalog, HistoryState, Scope, Unreadable, WalListing};
use crate::repo::keys::{self, parse_log_dir};
use crate::repo::lock::{live_holder, BackupLock, LockFor};
use crate::repo::Repository;

pub use crate::config::expire::ExpireOptions;

/// The objects of one backup, manifest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupObjects {
    /// The backup.
    pub id: String,
    /// Its manifest, if it has one (deleted first).
    pub manifest: Option<Path>,
    /// Everything else under `backup/<id>/`.
    pub rest: Vec<Path>,
    /// Its drill results (`drill/<id>/`): they go with it, last.
    pub drills: Vec<Path>,
    /// Hidden staging files below `backup/<id>/` (local disk only): what a
    /// backup killed in the middle of a put leaves, listed by no one.
    pub staging: usize,
}

impl BackupObjects {
    /// `, 2 drill results` when it has any.
    fn drills_suffix(&self) -> String {
        match self.drills.len() {
            0 => String::new(),
            1 => ", 1 drill result".into(),
            n => format!(", {n} drill results"),
        }
    }
}

/// A run of consecutive WAL segment numbers of one timeline that goes,
/// never spanning two log file directories (so a long expire reports its
/// WAL as it goes, one line per directory at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRun {
    /// Timeline.
    pub timeline: TimelineId,
    /// First segment number's file name.
    pub first: String,
    /// Last segment number's file name.
    pub last: String,
    /// Complete segments in the run.
    pub segments: usize,
    /// `.partial` segments in the run.
    pub partials: usize,
    /// `.backup` (backup history) files in the run.
    pub backup_files: usize,
    /// The keys, in deletion order.
    pub keys: Vec<Path>,
}

impl WalRun {
    /// `12 segments, 1 .backup file`: each kind counted on its own.
    fn counts(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        if self.segments > 0 || (self.partials == 0 && self.backup_files == 0) {
            parts.push(plural(self.segments, "segment", "segments"));
        }
        if self.partials > 0 {
            parts.push(plural(self.partials, ".partial segment", ".partial segments"));
        }
        if self.backup_files > 0 {
            parts.push(plural(self.backup_files, ".backup file", ".backup files"));
        }
        parts.join(", ")
    }

    /// The line naming the run: `<verb> WAL of timeline 1: A .. B (3 segments)`.
    fn line(&self, verb: &str) -> String {
        let range =
            if self.first == self.last { self.first.clone() } else { format!("{} .. {}", self.first, self.last) };
        format!("{verb} WAL of timeline {}: {range} ({})", self.timeline, self.counts())
    }
}

/// What expire deletes (or, with `--dry-run`, would delete).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Backups kept, oldest stop time first.
    pub kept: Vec<String>,
    /// Expired backups, in deletion order.
    pub expired: Vec<BackupObjects>,
    /// Backup directories without a manifest that are cleaned up.
    pub orphans: Vec<BackupObjects>,
    /// Drill results of backups that are gone altogether (an expire
    /// interrupted after the backup's objects went): only `drills` is set.
    pub stray_drills: Vec<BackupObjects>,
    /// WAL keys, in deletion order.
    pub wal: Vec<Path>,
    /// The WAL as runs, in deletion order.
    pub wal_runs: Vec<WalRun>,
    /// Why something the policy lets go is kept.
    pub notes: Vec<String>,
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// No retention policy was configured: nothing was looked at or deleted.
    pub no_policy: bool,
}

impl Outcome {
    /// The summary printed after the per-deletion lines.
    pub fn render(&self) -> String {
        if self.no_policy {
            return String::new();
        }
        let mut out = String::new();
        if self.expired.is_empty() && self.orphans.is_empty() && self.stray_drills.is_empty() && self.wal.is_empty() {
            out.push_str("nothing to expire\n");
        }
        out.push_str(&format!("kept {} backup(s): {}\n", self.kept.len(), self.kept.join(", ")));
        out
    }
}

/// One unit of deletion and its line.
enum Unit<'a> {
    Backup(&'a BackupObjects),
    Orphan(&'a BackupObjects),
    StrayDrills(&'a BackupObjects),
    Wal(&'a WalRun),
}

impl Unit<'_> {
    /// The keys, in stages: a backup's manifest goes alone and first (from
    /// then on the backup does not exist), its other objects after it.
    fn stages(&self) -> Vec<Vec<Path>> {
        match self {
            Unit::Backup(b) => vec![b.manifest.iter().cloned().collect(), b.rest.clone(), b.drills.clone()],
            Unit::Orphan(b) => vec![b.rest.clone(), b.drills.clone()],
            Unit::StrayDrills(b) => vec![b.drills.clone()],
            Unit::Wal(r) => vec![r.keys.clone()],
        }
    }

    fn line(&self, verb: &str) -> String {
        match self {
            Unit::Backup(b) => format!("{verb} backup {} ({} objects{})", b.id, b.rest.len() + 1, b.drills_suffix()),
            Unit::Orphan(b) => {
                let staging = match b.staging {
                    0 => String::new(),
                    1 => ", 1 staging file of a write cut short".into(),
                    n => format!(", {n} staging files of writes cut short"),
                };
                format!(
                    "{verb} incomplete backup {} ({} objects, no manifest{}{staging})",
                    b.id,
                    b.rest.len(),
                    b.drills_suffix()
                )
            }
            Unit::StrayDrills(b) => {
                format!("{verb} the drill results of backup {}, which is gone ({})", b.id, b.drills.len())
            }
            Unit::Wal(r) => r.line(verb),
        }
    }
}

/// Writes one line and flushes it: a deletion is on record before the next one starts.
fn record(out: &mut dyn Write, line: &str) -> Result<()> {
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|source| Error::Io {
        action: "cannot write the list of deletions to",
        path: "stdout".into(),
        source,
    })
}

/// How many deletes run at once. Each batch ends before the next starts, so
/// when one fails, exactly the keys deleted so far are known.
const DELETE_BATCH: usize = 32;

/// Deletes the keys of each stage in order, a batch at a time; on failure,
/// returns the keys that were deleted before it and the first error.
async fn delete_stages(repo: &Repository, stages: &[Vec<Path>]) -> std::result::Result<(), (Vec<Path>, Error)> {
    let mut done = Vec::new();
    for batch in stages.iter().flat_map(|keys| keys.chunks(DELETE_BATCH)) {
        let results = futures::future::join_all(batch.iter().map(|k| repo.delete(std::slice::from_ref(k)))).await;
        let mut failed = None;
        for (key, r) in batch.iter().zip(results) {
            match r {
                Ok(()) => done.push(key.clone()),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err((done, e));
        }
    }
    Ok(())
}

/// The line for a unit that failed part way: exactly what of it went.
fn partial_line(unit: &Unit<'_>, deleted: &[Path], size: WalSegmentSize) -> Vec<String> {
    if deleted.is_empty() {
        return Vec::new();
    }
    match unit {
        Unit::Wal(_) => {
            let names: Vec<(String, String)> = deleted
                .iter()
                .filter_map(|k| {
                    let name = k.filename()?.to_string();
                    let dir = k.parts().nth(1)?.as_ref().to_string();
                    Some((dir, name))
                })
                .collect();
            wal_runs(names, size).iter().map(|r| r.line("removed")).collect()
        }
        Unit::Backup(b) | Unit::Orphan(b) | Unit::StrayDrills(b) => {
            let total: usize = unit.stages().iter().map(Vec::len).sum();
            let keys: Vec<String> = deleted.iter().map(Path::to_string).collect();
            vec![format!(
                "removed {} of the {total} objects of backup {} before the error: {}",
                deleted.len(),
                b.id,
                keys.join(", ")
            )]
        }
    }
}

fn plan_backup(m: &Manifest) -> Result<PlanBackup> {
    Ok(PlanBackup {
        info: BackupInfo::from_manifest(m)?,
        kind: m.kind,
        parent: m.parent.clone(),
        refs: m.referenced_backups(),
    })
}

fn policy_error(e: PolicyError) -> Error {
    let hint = match e {
        PolicyError::NoBackups => "take a backup with 'pgwal backup' first; expire deletes nothing without one",
        PolicyError::UnknownBackup(_) => "'pgwal list' shows the backups",
        PolicyError::HasDependents { .. } => "add --with-dependents to expire them too, newest first",
        PolicyError::Newest(_) => "take a newer backup first: expire always keeps the newest backup",
        _ => "e.g. 'pgwal expire --retain-full 2' keeps the two newest full backups and the WAL they need",
    };
    Error::BadRequest { message: e.to_string(), hint: Some(hint.into()) }
}

/// Reads what the plan needs: the backups, the lock, the timeline tree.
/// `locked`: this process holds the repository lock, so no backup runs.
async fn model(
    repo: &Repository,
    stale_after: Duration,
    locked: bool,
) -> Result<(Model, Vec<String>, Vec<String>, Vec<String>)> {
    let crate::repo::RepoIdentity { format_exists: format, cluster: identity } = repo.identity().await?;
    if !format {
        return Err(Error::RepositoryMissing { url: repo.url().to_string() });
    }
    // Listing first, lock second (a dry run, which holds no lock): a backup
    // directory without a manifest seen here while no lock is held belongs
    // to a backup that is gone. Holding the lock, no backup runs at all.
    let mut catalog = Catalog::load(repo, &Scope { backups: Backups::All, ..Scope::default() }).await?;
    catalog.complete_backups()?; // a corrupt manifest stops expire before anything else is read
    let holder = if locked { None } else { live_holder(repo, stale_after).await? };
    let size = identity.and_then(|i| WalSegmentSize::new(i.wal_segment_size)).unwrap_or(WalSegmentSize::DEFAULT);
    let wal_scope =
        Scope { wal: WalListing::Top, histories: true, unreadable_histories: Unreadable::Record, ..Scope::default() };
    catalog.add(repo, &wal_scope).await?;
    let (manifests, incomplete) = catalog.complete_backups()?;
    let top = catalog.wal_top.clone().unwrap_or_default();
    let mut tree = catalog.timeline_tree();
    let mut notes = Vec::new();
    for (&tli, state) in &catalog.histories {
        tree.timelines.insert(tli);
        let reason = match state {
            HistoryState::Known(_) | HistoryState::Vanished => continue,
            HistoryState::Corrupt { key, reason } => {
                Error::Corrupt { key: key.clone(), reason: reason.clone() }.one_line()
            }
            HistoryState::Unreadable(e) => e.clone(),
        };
        notes.push(format!("cannot read the history of timeline {tli}: {reason}"));
    }
    let mut dirs = Vec::new();
    for d in top.log_dirs {
        if let Some((tli, _)) = parse_log_dir(&d) {
            tree.timelines.insert(tli);
            dirs.push(d);
        }
    }
    let backups: Vec<PlanBackup> = manifests.into_iter().map(plan_backup).collect::<Result<_>>()?;
    for b in &backups {
        tree.timelines.insert(b.info.timeline);
        tree.timelines.insert(b.info.stop_timeline);
    }
    if let Some(h) = &holder {
        notes.push(format!("a backup is being taken ({h}): backups without a manifest are left alone"));
    }
    let m = Model { size, backups, tree, backup_running: holder.is_some() };
    Ok((m, incomplete, dirs, notes))
}

/// Every object below `backup/<id>/`, manifest first.
async fn backup_objects(repo: &Repository, id: &str, with_manifest: bool) -> Result<BackupObjects> {
    let listed = repo.list_objects(&keys::backup_dir(id)).await?;
    let manifest = id.parse::<BackupId>().ok().map(|i| manifest_key(&i));
    let mut rest: Vec<Path> = listed.into_iter().map(|o| o.location).filter(|l| Some(l) != manifest.as_ref()).collect();
    rest.sort();
    let drills = drill_objects(repo, id).await?;
    let staging = repo.staging_below(&keys::backup_dir(id));
    Ok(BackupObjects {
        id: id.to_string(),
        manifest: if with_manifest { manifest } else { None },
        rest,
        drills,
        staging,
    })
}

/// Every drill result of backup `id` (none for a name that is not a backup ID).
async fn drill_objects(repo: &Repository, id: &str) -> Result<Vec<Path>> {
    let Ok(id) = id.parse::<BackupId>() else { return Ok(Vec::new()) };
    let mut keys: Vec<Path> = repo.list_objects(&keys::drills_of(&id)).await?.into_iter().map(|o| o.location).collect();
    keys.sort();
    Ok(keys)
}

/// Drill results whose backup has no directory left: none of `known`.
async fn stray_drills(repo: &Repository, known: &BTreeSet<&str>) -> Result<Vec<BackupObjects>> {
    let mut out = Vec::new();
    for dir in repo.list_dirs(&keys::drills_prefix()).await? {
        if known.contains(dir.as_str()) || dir.parse::<BackupId>().is_err() {
            continue;
        }
        let drills = drill_objects(repo, &dir).await?;
        if !drills.is_empty() {
            out.push(BackupObjects { id: dir, manifest: None, rest: Vec::new(), drills, staging: 0 });
        }
    }
    Ok(out)
}

/// Groups WAL files (`(log file directory, file name)`) into runs of
/// consecutive segment numbers per timeline and log file directory, oldest
/// first; names that are not WAL files of their directory are skipped.
fn wal_runs(files: Vec<(String, String)>, size: WalSegmentSize) -> Vec<WalRun> {
    let mut by_seg: BTreeMap<(TimelineId, SegmentNo), Vec<(String, WalFileName)>> = BTreeMap::new();
    for (dir, name) in files {
        let Ok(parsed) = name.parse::<WalFileName>() else { continue };
        let Some(seg) = parsed.segment_no(size) else { continue };
        if parsed.log_file_prefix().as_deref() != Some(dir.as_str()) {
            continue;
        }
        by_seg.entry((parsed.timeline(), seg)).or_default().push((keys::in_log_dir(&dir, &name).to_string(), parsed));
    }
    let per = size.segments_per_log_file();
    let mut runs: Vec<WalRun> = Vec::new();
    let mut last: Option<(TimelineId, SegmentNo)> = None;
    for ((tli, seg), mut files) in by_seg {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let name = WalFileName::segment(tli, seg, size).to_string();
        let extends = last.is_some_and(|(t, s)| t == tli && s.0 + 1 == seg.0 && s.0 / per == seg.0 / per);
        if !extends {
            runs.push(WalRun {
                timeline: tli,
                first: name.clone(),
                last: name.clone(),
                segments: 0,
                partials: 0,
                backup_files: 0,
                keys: Vec::new(),
            });
        }
        let r = runs.last_mut().expect("invariant: a run was just pushed or extended");
        r.last = name;
        for (key, parsed) in files {
            match parsed {
                WalFileName::Segment { .. } => r.segments += 1,
                WalFileName::Partial { .. } => r.partials += 1,
                WalFileName::Backup { .. } => r.backup_files += 1,
                WalFileName::History { .. } => continue,
            }
            r.keys.push(Path::from(key));
        }
        last = Some((tli, seg));
    }
    runs
}

/// The WAL runs the plan deletes, oldest first per timeline.
async fn wal_to_delete(repo: &Repository, dirs: &[String], plan: &Plan, size: WalSegmentSize) -> Result<Vec<WalRun>> {
    let per = size.segments_per_log_file();
    let mut wanted: Vec<String> = Vec::new();
    for d in dirs {
        let Some((tli, log)) = parse_log_dir(d) else { continue };
        let rule = plan.wal.get(&tli).copied().unwrap_or(WalKeep::All);
        if !rule.deletes(SegmentNo(log * per)) {
            continue; // the directory's first segment stays, so all of it does
        }
        wanted.push(d.clone());
    }
    use futures::{StreamExt, TryStreamExt};
    let listings: Vec<(String, Vec<String>)> = futures::stream::iter(wanted)
        .map(|d| async move {
            let l = repo.list_entries(&keys::log_dir_named(&d)).await?;
            Ok::<_, Error>((d, l.objects))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut doomed = Vec::new();
    for (d, names) in listings {
        for name in names {
            let Ok(parsed) = name.parse::<WalFileName>() else { continue };
            let Some(seg) = parsed.segment_no(size) else { continue };
            if plan.wal.get(&parsed.timeline()).copied().unwrap_or(WalKeep::All).deletes(seg) {
                doomed.push((d.clone(), name));
            }
        }
    }
    Ok(wal_runs(doomed, size))
}

/// Plans and (unless `dry_run`) carries out the expiry. Each backup and
/// each WAL run is named on `out` (flushed) as soon as it is gone, or, with
/// `--dry-run`, as what would go; when a deletion fails, what of its unit
/// went is named before the error is returned. Except for a dry run, it all
/// happens under the repository lock: [`Error::Locked`] (nothing read or
/// deleted) while a backup or another expire holds it.
pub async fn expire(
    repo: &Repository,
    opts: &ExpireOptions,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<Outcome> {
    if opts.backup.is_none() && opts.policy.retain_full.is_none() && opts.policy.retain_days.is_none() {
        crate::log_warn!(
            "no retention policy, nothing expired (hint: set expire.retain_full or expire.retain_days in the config file, or give --retain-full / --retain-days)"
        );
        return Ok(Outcome { no_policy: true, dry_run: opts.dry_run, ..Default::default() });
    }
    if opts.backup.is_none() {
        plan::validate(&opts.policy).map_err(policy_error)?;
    }
    if opts.dry_run {
        return expire_planned(repo, opts, now, out, false).await;
    }
    if !repo.identity().await?.format_exists {
        return Err(Error::RepositoryMissing { url: repo.url().to_string() });
    }
    // From here on SIGTERM / SIGINT (the daemon stopping, Ctrl-C) are only
    // noted: expire stops before its next deletion and releases the lock.
    // Installed before the lock is taken, so no signal can leave it behind.
    crate::interrupt::install();
    let lock = BackupLock::acquire(repo, opts.lock_stale_after, LockFor::Expire).await?;
    let result = expire_planned(repo, opts, now, out, true).await;
    let released = lock.release(repo).await;
    let outcome = result?;
    released?;
    Ok(outcome)
}

/// Fails with [`Error::Interrupted`] once a signal was noted (`locked`:
/// the signals are being noted, see [`crate::interrupt::install`]).
fn stop_if_signalled(locked: bool) -> Result<()> {
    match crate::interrupt::pending().filter(|_| locked) {
        Some(signal) => Err(Error::Interrupted {
            signal,
            what: "expire stopped before its next deletion (what went is named above) and released the lock; \
                   run it again to finish"
                .into(),
        }),
        None => Ok(()),
    }
}

/// [`expire`] once the lock is held (`locked`) or for a dry run.
async fn expire_planned(
    repo: &Repository,
    opts: &ExpireOptions,
    now: DateTime<Utc>,
    out: &mut dyn Write,
    locked: bool,
) -> Result<Outcome> {
    let (model, incomplete, dirs, mut notes) = model(repo, opts.lock_stale_after, locked).await?;
    stop_if_signalled(locked)?;
    let plan = match &opts.backup {
        Some(id) => plan::plan_removal(&model, id, opts.with_dependents),
        None => plan::plan(&model, &opts.policy, now),
    }
    .map_err(policy_error)?;
    notes.extend(plan.notes.iter().cloned());
    let mut outcome = Outcome {
        kept: plan.keep.iter().map(BackupId::to_string).collect(),
        dry_run: opts.dry_run,
        notes,
        ..Default::default()
    };
    for id in &plan.expire {
        outcome.expired.push(backup_objects(repo, id.as_str(), true).await?);
    }
    // `--backup` deletes what it names and the WAL; left-overs wait for a policy run.
    if !model.backup_running && opts.backup.is_none() {
        let expired: BTreeSet<&str> = plan.expire.iter().map(BackupId::as_str).collect();
        for id in incomplete.iter().filter(|i| !expired.contains(i.as_str())) {
            let objects = backup_objects(repo, id, false).await?;
            if !objects.rest.is_empty() || !objects.drills.is_empty() || objects.staging > 0 {
                outcome.orphans.push(objects);
            }
        }
    }
    let known: BTreeSet<&str> = outcome
        .kept
        .iter()
        .chain(&incomplete)
        .map(String::as_str)
        .chain(plan.expire.iter().map(BackupId::as_str))
        .collect();
    if opts.backup.is_none() {
        outcome.stray_drills = stray_drills(repo, &known).await?;
    }
    // Before anything goes: why some of it stays.
    for note in &outcome.notes {
        crate::log_notice!("{note}");
    }
    outcome.wal_runs = wal_to_delete(repo, &dirs, &plan, model.size).await?;
    outcome.wal = outcome.wal_runs.iter().flat_map(|r| r.keys.iter().cloned()).collect();
    let units: Vec<Unit<'_>> = outcome
        .expired
        .iter()
        .map(Unit::Backup)
        .chain(outcome.orphans.iter().map(Unit::Orphan))
        .chain(outcome.stray_drills.iter().map(Unit::StrayDrills))
        .chain(outcome.wal_runs.iter().map(Unit::Wal))
        .collect();
    for unit in &units {
        stop_if_signalled(locked)?;
        if opts.dry_run {
            record(out, &unit.line("would remove"))?;
            continue;
        }
        match delete_stages(repo, &unit.stages()).await {
            Ok(()) => {
                // What no listing shows: staging files of a backup killed
                // mid-put, in the directory that is now the backup's no more.
                if let Unit::Backup(b) | Unit::Orphan(b) = unit {
                    repo.sweep_staging_below(&keys::backup_dir(&b.id));
                }
                record(out, &unit.line("removed"))?
            }
            Err((deleted, e)) => {
                for line in partial_line(unit, &deleted, model.size) {
                    record(out, &line)?;
                }
                return Err(e);
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::expire::plan::Policy;
    use crate::pg::Lsn;
    use crate::repo::lock::BackupLock;
    use crate::repo::synthetic;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// While a backup is being taken (live lock, packs without a manifest)
    /// expire deletes nothing and fails with the lock error; a dry run, which
    /// takes no lock, leaves the backup's packs out. Once the lock is gone,
    /// expire takes it, expires by the policy and removes the packs left behind.
    #[test]
    fn a_running_backup_is_left_alone() {
        rt().block_on(async {
            let repo = Repository::in_memory();
            let size = WalSegmentSize::new(1 << 20).expect("size");
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=12 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
            for (seg, h) in [(2u64, 1), (6, 2)] {
                let start = Lsn(seg * size.bytes() + 0x28);
                synthetic::put_backup(&repo, 7, TimelineId(1), start, Lsn(start.0 + 0x100), at(h)).await.expect("b");
            }
            // A backup in progress: a pack, no manifest, and the lock held by this (live) process.
            let running: BackupId = "20261123T120000F".parse().expect("id");
            synthetic::put(&repo, &crate::repo::backup::pack_key(&running, 0), b"data").await.expect("pack");
            let lock = BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect("lock");
            let all = || async { repo.list_objects(&Path::from("")).await.expect("list").len() };
            let before = all().await;
            let mut opts = ExpireOptions {
                policy: Policy { retain_full: Some(1), retain_days: None },
                dry_run: false,
                lock_stale_after: Duration::from_secs(3600),
                backup: None,
                with_dependents: false,
            };
            let mut out = Vec::new();
            let err = expire(&repo, &opts, at(10), &mut out).await.expect_err("refused while the backup runs");
            assert!(matches!(&err, Error::Locked { running, .. } if running == "backup"), "{err}");
            assert!(out.is_empty() && all().await == before, "nothing deleted");
            assert_eq!(read_lock_holder(&repo).await, "backup", "the backup's lock is untouched");

            opts.dry_run = true;
            let dry = expire(&repo, &opts, at(10), &mut Vec::new()).await.expect("a dry run needs no lock");
            assert_eq!(dry.expired.len(), 1);
            assert!(dry.orphans.is_empty(), "the running backup's packs would stay");
            assert!(dry.notes.iter().any(|n| n.contains("a backup is being taken")), "{:?}", dry.notes);
            assert_eq!(all().await, before, "a dry run deletes nothing");

            // The backup ended without a manifest (killed): now its packs go too.
            lock.release(&repo).await.expect("release");
            opts.dry_run = false;
            let out = expire(&repo, &opts, at(10), &mut Vec::new()).await.expect("expire");
            assert_eq!(out.expired.len(), 1);
            assert_eq!(out.orphans.len(), 1);
            assert_eq!(out.wal.len(), 5, "segments 1-5 go, 6 on stay: {:?}", out.wal);
            let pack = crate::repo::backup::pack_key(&running, 0);
            assert!(repo.get(&pack).await.expect("get").is_none());
            assert!(crate::repo::lock::read_lock(&repo).await.expect("read").is_none(), "expire released its lock");
        });
    }

    async fn read_lock_holder(repo: &Repository) -> String {
        let found = crate::repo::lock::read_lock(repo).await.expect("read").expect("a lock");
        found.0.expect("readable").command
    }

    /// A lock left by a killed expire (a dead PID on this host) is taken
    /// over; expire does its work and leaves no lock.
    #[test]
    fn a_killed_expires_lock_is_taken_over() {
        rt().block_on(async {
            let repo = Repository::in_memory();
            let size = WalSegmentSize::new(1 << 20).expect("size");
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=8 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
            for (seg, h) in [(2u64, 1), (6, 2)] {
                let start = Lsn(seg * size.bytes() + 0x28);
                synthetic::put_backup(&repo, 7, TimelineId(1), start, Lsn(start.0 + 0x100), at(h)).await.expect("b");
            }
            let dead = crate::repo::lock::LockInfo {
                command: "expire".into(),
                host: crate::repo::lock::host_name(),
                pid: u32::MAX - 1, // above pid_max: never runs
                started: "2020-01-01T00:00:00Z".into(),
                token: "t".into(),
            };
            let (object, _) = crate::repo::frame::encode(
                &serde_json::to_vec(&dead).expect("json"),
                crate::repo::frame::Compression::None,
            )
            .expect("frame");
            let key = crate::repo::backup::backup_lock_key();
            assert!(repo.create_once(&key, bytes::Bytes::from(object)).await.expect("plant"));
            let opts = ExpireOptions {
                policy: Policy { retain_full: Some(1), retain_days: None },
                dry_run: false,
                lock_stale_after: Duration::from_secs(3600),
                backup: None,
                with_dependents: false,
            };
            let out = expire(&repo, &opts, at(10), &mut Vec::new()).await.expect("stale lock taken over");
            assert_eq!(out.expired.len(), 1);
            assert!(crate::repo::lock::read_lock(&repo).await.expect("read").is_none());
        });
    }

    /// `.backup` and `.partial` files are counted apart from segments, and a
    /// run never spans two log file directories.
    #[test]
    fn wal_runs_count_each_kind() {
        let size = WalSegmentSize::new(1 << 30).expect("size"); // 4 segments per log file
        let files = [
            ("0000000100000000", "000000010000000000000002"),
            ("0000000100000000", "000000010000000000000002.00000028.backup"),
            ("0000000100000000", "000000010000000000000003"),
            ("0000000100000001", "000000010000000100000000"),
            ("0000000100000001", "000000010000000100000001.partial"),
            ("0000000100000001", "not-a-wal-file"),
            ("0000000100000001", "000000010000000000000001"), // in the wrong directory
        ];
        let runs = wal_runs(files.iter().map(|(d, n)| (d.to_string(), n.to_string())).collect(), size);
        let lines: Vec<String> = runs.iter().map(|r| r.line("would remove")).collect();
        assert_eq!(
            lines,
            [
                "would remove WAL of timeline 1: 000000010000000000000002 .. 000000010000000000000003 (2 segments, 1 .backup file)",
                "would remove WAL of timeline 1: 000000010000000100000000 .. 000000010000000100000001 (1 segment, 1 .partial segment)",
            ]
        );
        assert_eq!(runs[0].keys.len(), 3);
        assert_eq!(runs[0].keys[1].as_ref(), "wal/0000000100000000/000000010000000000000002.00000028.backup");
    }

    /// Each backup and WAL run is named on the output, the dry run with the
    /// same lines; no policy deletes nothing.
    /// A backup's drill results go with it; those of a backup already gone
    /// (an interrupted expire) go too; a kept backup's stay.
    #[test]
    fn drill_results_go_with_their_backup() {
        use crate::repo::drill::{DrillRecord, DRILL_FORMAT};
        rt().block_on(async {
            let repo = Repository::in_memory();
            let size = WalSegmentSize::new(1 << 20).expect("size");
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=8 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
            let mut ids = Vec::new();
            for (seg, h) in [(2u64, 1), (4, 2)] {
                let start = Lsn(seg * size.bytes() + 0x28);
                let m = synthetic::put_backup(&repo, 7, TimelineId(1), start, Lsn(start.0 + 0x100), at(h))
                    .await
                    .expect("backup");
                ids.push(m.id);
            }
            let gone: BackupId = "20000101T000000F".parse().expect("id");
            let drill = |backup: &BackupId, h: i64| DrillRecord {
                format: DRILL_FORMAT,
                backup: backup.clone(),
                started: at(h).to_rfc3339(),
                finished: at(h).to_rfc3339(),
                duration_seconds: 1.0,
                target: "newest archived WAL on timeline 1".into(),
                reached_lsn: None,
                reached_timeline: None,
                reached_time: None,
                passed: true,
                checks: Vec::new(),
            };
            for (b, h) in [(&ids[0], 3), (&ids[0], 4), (&ids[1], 5), (&gone, 6)] {
                repo.store_drill(&drill(b, h)).await.expect("drill");
            }
            let policy = Policy { retain_full: Some(1), ..Policy::default() };
            let opts = ExpireOptions {
                policy,
                dry_run: false,
                lock_stale_after: Duration::from_secs(3600),
                backup: None,
                with_dependents: false,
            };
            let mut out = Vec::new();
            let done = expire(&repo, &opts, at(10), &mut out).await.expect("expire");
            let out = String::from_utf8(out).expect("utf-8");
            assert!(
                out.contains(&format!(
                    "removed backup {} ({} objects, 2 drill results)",
                    ids[0],
                    done.expired[0].rest.len() + 1
                )),
                "{out}"
            );
            assert!(out.contains(&format!("removed the drill results of backup {gone}, which is gone (1)")), "{out}");
            let left = repo.newest_drills().await.expect("drills");
            assert_eq!(left.keys().collect::<Vec<_>>(), vec![&ids[1]], "only the kept backup's drill is left");
        });
    }

    #[test]
    fn every_deletion_is_named() {
        rt().block_on(async {
            let repo = Repository::in_memory();
            let size = WalSegmentSize::new(1 << 20).expect("size");
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=8 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
            let mut ids = Vec::new();
            for (seg, h) in [(2u64, 1), (4, 2), (6, 3)] {
                let start = Lsn(seg * size.bytes() + 0x28);
                let m = synthetic::put_backup(&repo, 7, TimelineId(1), start, Lsn(start.0 + 0x100), at(h))
                    .await
                    .expect("backup");
                ids.push(m.id.to_string());
            }
            let mut opts = ExpireOptions {
                policy: Policy::default(),
                dry_run: false,
                lock_stale_after: Duration::from_secs(3600),
                backup: None,
                with_dependents: false,
            };
            let mut out = Vec::new();
            let none = expire(&repo, &opts, at(10), &mut out).await.expect("no policy is not an error");
            assert!(none.no_policy && out.is_empty() && none.render().is_empty());
            let scope = Scope { backups: Backups::All, ..Scope::default() };
            let catalog = Catalog::load(&repo, &scope).await.expect("list");
            assert_eq!(catalog.complete_backups().expect("complete").0.len(), 3, "nothing deleted");

            opts.policy.retain_full = Some(1);
            opts.dry_run = true;
            let mut dry = Vec::new();
            expire(&repo, &opts, at(10), &mut dry).await.expect("dry run");
            opts.dry_run = false;
            let done = expire(&repo, &opts, at(10), &mut out).await.expect("expire");
            let out = String::from_utf8(out).expect("utf-8");
            assert_eq!(String::from_utf8(dry).expect("utf-8").replace("would remove", "removed"), out);
            let backup_objects = |i: usize| done.expired[i].rest.len() + 1;
            assert_eq!(
                out.lines().collect::<Vec<_>>(),
                [
                    format!("removed backup {} ({} objects)", ids[0], backup_objects(0)),
                    format!("removed backup {} ({} objects)", ids[1], backup_objects(1)),
                    "removed WAL of timeline 1: 000000010000000000000001 .. 000000010000000000000005 (5 segments)"
                        .to_string(),
                ]
            );
            assert_eq!(done.render(), format!("kept 1 backup(s): {}\n", ids[2]));
        });
    }

    #[test]
    fn log_dirs() {
        assert_eq!(parse_log_dir("000000020000000A"), Some((TimelineId(2), 10)));
        assert_eq!(parse_log_dir("00000000000000AA"), None);
        assert_eq!(parse_log_dir("0000000200000A"), None);
        assert_eq!(parse_log_dir("zz000002000000AA"), None);
    }
}
