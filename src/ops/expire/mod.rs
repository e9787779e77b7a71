//! `pgwal expire [--retain-full N] [--retain-days D] [--dry-run]`: deletes
//! the backups the retention policy lets go and the WAL no retained backup
//! needs (the decision is [`plan::plan`], a pure function). The only command
//! that deletes.
//!
//! Order of deletion, so the repository is consistent after every step and
//! an interrupted expire can simply be run again:
//! 1. each expired backup, oldest stop time first: its manifest (from then
//!    on the backup does not exist for list, restore and verify), then its
//!    packs;
//! 2. packs of backups without a manifest (interrupted backups or expires),
//!    but only while no backup is being taken;
//! 3. WAL, timeline by timeline, oldest segment first, so what is kept never
//!    gets a hole; `.history` files stay.
//!
//! Expire reads only listings, the manifests and the history files: WAL
//! directories wholly kept are not even listed.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;

use self::plan::{Model, Plan, PlanBackup, Policy, PolicyError, WalKeep};
use crate::error::{Error, Result};
use crate::ops::coverage::TimelineTree;
use crate::ops::list::load_manifests;
use crate::ops::lock::live_holder;
use crate::ops::restore::select::BackupInfo;
use crate::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::backup::{manifest_key, BackupId, Manifest};
use crate::repo::Repository;

/// What `expire` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct ExpireOptions {
    /// The retention policy (flags over the config file).
    pub policy: Policy,
    /// Print what would go, delete nothing.
    pub dry_run: bool,
    /// When a backup lock from another host counts as abandoned.
    pub lock_stale_after: Duration,
}

/// The objects of one backup, manifest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupObjects {
    /// The backup.
    pub id: String,
    /// Its manifest, if it has one (deleted first).
    pub manifest: Option<Path>,
    /// Everything else under `backup/<id>/`.
    pub rest: Vec<Path>,
}

/// A run of consecutive WAL segment numbers of one timeline that goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRun {
    /// Timeline.
    pub timeline: TimelineId,
    /// First segment number's file name.
    pub first: String,
    /// Last segment number's file name.
    pub last: String,
    /// Files (segments, `.partial`, `.backup`) in the run.
    pub files: usize,
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
    /// WAL keys, in deletion order.
    pub wal: Vec<Path>,
    /// The WAL as runs, for people.
    pub wal_runs: Vec<WalRun>,
    /// Why something the policy lets go is kept.
    pub notes: Vec<String>,
    /// Whether anything was deleted.
    pub dry_run: bool,
}

impl Outcome {
    /// The report for stdout: one line per backup and per WAL run.
    pub fn render(&self) -> String {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        let mut out = String::new();
        for b in &self.expired {
            out.push_str(&format!("{verb} backup {} ({} objects)\n", b.id, b.rest.len() + 1));
        }
        for b in &self.orphans {
            out.push_str(&format!("{verb} incomplete backup {} ({} objects, no manifest)\n", b.id, b.rest.len()));
        }
        for r in &self.wal_runs {
            let range = if r.first == r.last { r.first.clone() } else { format!("{} .. {}", r.first, r.last) };
            out.push_str(&format!("{verb} WAL timeline {}: {range} ({} files)\n", r.timeline, r.files));
        }
        if self.expired.is_empty() && self.orphans.is_empty() && self.wal.is_empty() {
            out.push_str("nothing to expire\n");
        }
        out.push_str(&format!("kept {} backup(s): {}\n", self.kept.len(), self.kept.join(", ")));
        out
    }
}

fn plan_backup(m: &Manifest) -> Result<PlanBackup> {
    Ok(PlanBackup { info: BackupInfo::from_manifest(m)?, kind: m.kind, parent: m.parent.clone() })
}

fn policy_error(e: PolicyError) -> Error {
    let hint = match e {
        PolicyError::NoBackups => "take a backup with 'pgwal backup' first; expire deletes nothing without one",
        _ => "e.g. 'pgwal expire --retain-full 2' keeps the two newest full backups and the WAL they need",
    };
    Error::BadRequest { message: e.to_string(), hint: Some(hint.into()) }
}

/// The timeline of a log file directory name (`TTTTTTTTLLLLLLLL`) and its log number.
fn parse_log_dir(dir: &str) -> Option<(TimelineId, u64)> {
    if dir.len() != 16 || !dir.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&dir[..8], 16).ok().filter(|t| *t > 0)?;
    let log = u64::from_str_radix(&dir[8..], 16).ok()?;
    Some((TimelineId(tli), log))
}

/// Reads what the plan needs: the backups, the lock, the timeline tree.
async fn model(repo: &Repository, stale_after: Duration) -> Result<(Model, Vec<String>, Vec<String>, Vec<String>)> {
    let (format, identity) = repo.identity().await?;
    if !format {
        return Err(Error::RepositoryMissing { url: repo.url().to_string() });
    }
    // Listing first, lock second: a backup directory without a manifest seen
    // here while no lock is held belongs to a backup that is gone.
    let (manifests, incomplete) = load_manifests(repo).await?;
    let holder = live_holder(repo, stale_after).await?;
    let size = identity.and_then(|i| WalSegmentSize::new(i.wal_segment_size)).unwrap_or(WalSegmentSize::DEFAULT);
    let top = repo.list_entries(&Path::from("wal")).await?;
    let mut tree = TimelineTree::default();
    let mut notes = Vec::new();
    for name in &top.objects {
        if let Ok(WalFileName::History { tli }) = name.parse::<WalFileName>() {
            tree.timelines.insert(tli);
            match repo.timeline_history(tli).await {
                Ok(Some(h)) => {
                    tree.histories.insert(tli, h);
                }
                Ok(None) => {}
                Err(e) => notes.push(format!("cannot read the history of timeline {tli}: {}", e.one_line())),
            }
        }
    }
    let mut dirs = Vec::new();
    for d in top.dirs {
        if let Some((tli, _)) = parse_log_dir(&d) {
            tree.timelines.insert(tli);
            dirs.push(d);
        }
    }
    let backups: Vec<PlanBackup> = manifests.iter().map(plan_backup).collect::<Result<_>>()?;
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
    let listed = repo.list_objects(&Path::from(format!("backup/{id}"))).await?;
    let manifest = id.parse::<BackupId>().ok().map(|i| manifest_key(&i));
    let mut rest: Vec<Path> = listed.into_iter().map(|o| o.location).filter(|l| Some(l) != manifest.as_ref()).collect();
    rest.sort();
    Ok(BackupObjects { id: id.to_string(), manifest: if with_manifest { manifest } else { None }, rest })
}

/// The WAL keys the plan deletes, oldest first per timeline, and their runs.
async fn wal_to_delete(
    repo: &Repository,
    dirs: &[String],
    plan: &Plan,
    size: WalSegmentSize,
) -> Result<(Vec<Path>, Vec<WalRun>)> {
    let per = size.segments_per_log_file();
    let mut doomed: BTreeMap<(TimelineId, SegmentNo), Vec<String>> = BTreeMap::new();
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
            let l = repo.list_entries(&Path::from(format!("wal/{d}"))).await?;
            Ok::<_, Error>((d, l.objects))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    for (d, names) in listings {
        for name in names {
            let Ok(parsed) = name.parse::<WalFileName>() else { continue };
            let Some(seg) = parsed.segment_no(size) else { continue };
            let tli = parsed.timeline();
            if parsed.log_file_prefix().as_deref() != Some(d.as_str()) {
                continue;
            }
            if plan.wal.get(&tli).copied().unwrap_or(WalKeep::All).deletes(seg) {
                doomed.entry((tli, seg)).or_default().push(format!("wal/{d}/{name}"));
            }
        }
    }
    let mut keys = Vec::new();
    let mut runs: Vec<WalRun> = Vec::new();
    let mut last: Option<(TimelineId, SegmentNo)> = None;
    for ((tli, seg), mut names) in doomed {
        names.sort();
        let name = WalFileName::segment(tli, seg, size).to_string();
        let extends = last.is_some_and(|(t, s)| t == tli && s.0 + 1 == seg.0);
        match runs.last_mut() {
            Some(r) if extends => {
                r.last = name;
                r.files += names.len();
            }
            _ => runs.push(WalRun { timeline: tli, first: name.clone(), last: name, files: names.len() }),
        }
        last = Some((tli, seg));
        keys.extend(names.into_iter().map(Path::from));
    }
    Ok((keys, runs))
}

/// Plans and (unless `dry_run`) carries out the expiry.
pub async fn expire(repo: &Repository, opts: &ExpireOptions, now: DateTime<Utc>) -> Result<Outcome> {
    opts.policy.validate().map_err(policy_error)?;
    let (model, incomplete, dirs, mut notes) = model(repo, opts.lock_stale_after).await?;
    let plan = plan::plan(&model, &opts.policy, now).map_err(policy_error)?;
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
    if !model.backup_running {
        let expired: BTreeSet<&str> = plan.expire.iter().map(BackupId::as_str).collect();
        for id in incomplete.iter().filter(|i| !expired.contains(i.as_str())) {
            let objects = backup_objects(repo, id, false).await?;
            if !objects.rest.is_empty() {
                outcome.orphans.push(objects);
            }
        }
    }
    let (wal, runs) = wal_to_delete(repo, &dirs, &plan, model.size).await?;
    outcome.wal = wal;
    outcome.wal_runs = runs;
    if opts.dry_run {
        return Ok(outcome);
    }
    for b in &outcome.expired {
        if let Some(m) = &b.manifest {
            repo.delete(std::slice::from_ref(m)).await?;
        }
        repo.delete(&b.rest).await?;
    }
    for b in &outcome.orphans {
        repo.delete(&b.rest).await?;
    }
    repo.delete(&outcome.wal).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lock::BackupLock;
    use crate::pg::Lsn;
    use crate::repo::synthetic;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// A backup being taken (live lock, packs without a manifest) is never
    /// touched; once the lock is gone, its packs count as left behind.
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
            let lock = BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("lock");
            let opts = ExpireOptions {
                policy: Policy { retain_full: Some(1), retain_days: None },
                dry_run: false,
                lock_stale_after: Duration::from_secs(3600),
            };
            let out = expire(&repo, &opts, at(10)).await.expect("expire");
            assert_eq!(out.expired.len(), 1);
            assert!(out.orphans.is_empty(), "the running backup's packs stay");
            assert!(out.notes.iter().any(|n| n.contains("a backup is being taken")), "{:?}", out.notes);
            let pack = crate::repo::backup::pack_key(&running, 0);
            assert!(repo.get(&pack).await.expect("get").is_some());
            assert_eq!(out.wal.len(), 5, "segments 1-5 go, 6 on stay: {:?}", out.wal);
            // The backup ended without a manifest (killed): now its packs go.
            lock.release(&repo).await.expect("release");
            let out = expire(&repo, &opts, at(10)).await.expect("expire");
            assert_eq!(out.orphans.len(), 1);
            assert!(repo.get(&pack).await.expect("get").is_none());
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
