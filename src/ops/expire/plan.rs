//! What `expire` keeps and what may go: a pure function of the backups, the
//! timeline tree and the policy, so it can be property-tested on models of
//! repositories (see the tests below) and printed by `--dry-run` exactly as
//! it will be carried out.
//!
//! Rules:
//! - Backups are ranked by stop time (then stop LSN), never by ID or name.
//! - `retain_full = N` keeps the N newest full backups; `retain_days = D`
//!   keeps every backup that stopped in the last D days plus the newest one
//!   that stopped before them, so that every point of the last D days stays
//!   recoverable. With both, a backup either rule keeps is kept. The newest
//!   backup is always kept.
//! - Chains (SPEC §7): a kept backup keeps everything it depends on (its
//!   parent and every backup its extents point into), transitively
//!   (incr → incr → full); a diff/incr is kept exactly when everything it
//!   depends on is kept, so the dependents of a kept full stay with it and
//!   those of an expired full go with it.
//! - Deletion order: every expired backup goes before anything it depends on
//!   (dependents first, then their full), otherwise oldest stop time first,
//!   so an interrupted expire never leaves a listed backup whose parent is
//!   gone.
//! - `--backup ID` ([`plan_removal`]) deletes one backup, and with
//!   `--with-dependents` every backup depending on it; it refuses a backup
//!   others depend on without that flag, and the newest backup (which the
//!   policy always keeps too).
//! - WAL: on each timeline, everything from the first segment any retained
//!   backup reads from it on (see [`crate::repo::coverage::needed_from`]) is
//!   kept; what lies before goes, oldest first. WAL of a timeline no
//!   retained backup reaches goes, unless a backup is being taken (its
//!   timeline may be that one) or the timeline's history is unknown.
//! - `.history` files are never deleted: they are tiny, and PostgreSQL's
//!   search for the newest timeline probes history files in sequence and
//!   stops at the first missing one, so removing an old one could hide newer
//!   timelines from recovery.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::ops::restore::select::BackupInfo;
use crate::pg::timeline::TimelineTree;
use crate::pg::{SegmentNo, TimelineId, WalSegmentSize};
use crate::repo::backup::{BackupId, BackupType};
use crate::repo::coverage::needed_from;

/// A complete backup as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanBackup {
    /// Times, LSNs and timelines.
    pub info: BackupInfo,
    /// Full or incremental.
    pub kind: BackupType,
    /// The backup a diff/incr one builds on.
    pub parent: Option<BackupId>,
    /// The other backups whose packs its extents point into
    /// ([`crate::repo::backup::Manifest::referenced_backups`]).
    pub refs: Vec<BackupId>,
}

impl PlanBackup {
    /// Every backup this one needs besides itself: its parent and the
    /// backups its extents point into.
    pub fn depends_on(&self) -> impl Iterator<Item = &BackupId> {
        self.parent.iter().chain(self.refs.iter())
    }
}

/// The retention policy: the one type the config file and the flags fill.
pub use crate::config::RetentionPolicy as Policy;

/// What to keep of one timeline's WAL (segments, `.partial` segments and
/// `.backup` files alike, by their segment number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKeep {
    /// Everything.
    All,
    /// From this segment on; earlier ones go.
    From(SegmentNo),
    /// Nothing: no retained backup reaches this timeline.
    Nothing,
}

impl WalKeep {
    /// Whether a file of segment `seg` goes.
    pub fn deletes(self, seg: SegmentNo) -> bool {
        match self {
            WalKeep::All => false,
            WalKeep::From(first) => seg < first,
            WalKeep::Nothing => true,
        }
    }
}

/// What the repository looks like to the plan.
#[derive(Debug, Clone)]
pub struct Model {
    /// WAL segment size.
    pub size: WalSegmentSize,
    /// Complete backups (those with a manifest).
    pub backups: Vec<PlanBackup>,
    /// The timeline tree; `timelines` must list every timeline holding WAL.
    pub tree: TimelineTree,
    /// Whether a backup is being taken right now.
    pub backup_running: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Backups kept, oldest stop time first.
    pub keep: Vec<BackupId>,
    /// Backups to delete, in the order of deletion: each before everything
    /// it depends on, otherwise oldest stop time first.
    pub expire: Vec<BackupId>,
    /// Per timeline holding WAL, what of it stays.
    pub wal: BTreeMap<TimelineId, WalKeep>,
    /// Why some WAL is kept that the policy alone would let go.
    pub notes: Vec<String>,
}

/// Why a policy cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Neither rule given.
    #[error("no retention policy: give --retain-full, --retain-days, or expire.retain_full / expire.retain_days in the config file")]
    Missing,
    /// `retain_full = 0` would delete every backup.
    #[error("--retain-full must be at least 1 (0 would delete every backup)")]
    ZeroFull,
    /// `retain_days = 0`.
    #[error("--retain-days must be at least 1")]
    ZeroDays,
    /// Nothing to apply it to.
    #[error("the repository holds no complete backup, so there is nothing to expire")]
    NoBackups,
    /// `--backup ID` names no complete backup.
    #[error("the repository holds no complete backup {0}")]
    UnknownBackup(String),
    /// `--backup ID` without `--with-dependents` while others depend on it.
    #[error("backup {backup} cannot be expired alone: {dependents} depend(s) on it")]
    HasDependents {
        /// The backup asked for.
        backup: String,
        /// Its dependents, comma-separated, oldest first.
        dependents: String,
    },
    /// `--backup ID` would delete the newest backup.
    #[error("backup {0} is the newest backup, which expire always keeps")]
    Newest(String),
}

/// Refuses policies that make no sense.
pub fn validate(policy: &Policy) -> Result<(), PolicyError> {
    match (policy.retain_full, policy.retain_days) {
        (None, None) => Err(PolicyError::Missing),
        (Some(0), _) => Err(PolicyError::ZeroFull),
        (_, Some(0)) => Err(PolicyError::ZeroDays),
        _ => Ok(()),
    }
}

fn rank(b: &PlanBackup) -> (DateTime<Utc>, crate::pg::Lsn, BackupId) {
    (b.info.stop_time, b.info.stop_lsn, b.info.id.clone())
}

/// The backups the policy keeps (IDs), before dependencies.
fn chosen(backups: &[&PlanBackup], policy: &Policy, now: DateTime<Utc>) -> BTreeSet<BackupId> {
    let mut keep = BTreeSet::new();
    // `backups` is sorted newest first.
    if let Some(first) = backups.first() {
        keep.insert(first.info.id.clone());
    }
    if let Some(n) = policy.retain_full {
        let fulls = backups.iter().filter(|b| b.kind == BackupType::Full);
        keep.extend(fulls.take(n as usize).map(|b| b.info.id.clone()));
    }
    if let Some(days) = policy.retain_days {
        let window_start = now - Duration::days(i64::from(days));
        let mut before_window = false;
        for b in backups {
            if b.info.stop_time >= window_start {
                keep.insert(b.info.id.clone());
            } else if !before_window && b.kind == BackupType::Full {
                // The newest full backup before the window recovers to its start.
                keep.insert(b.info.id.clone());
                before_window = true;
            }
        }
    }
    keep
}

/// Applies `policy` at time `now` to `model`.
pub fn plan(model: &Model, policy: &Policy, now: DateTime<Utc>) -> Result<Plan, PolicyError> {
    validate(policy)?;
    if model.backups.is_empty() {
        return Err(PolicyError::NoBackups);
    }
    let mut newest_first: Vec<&PlanBackup> = model.backups.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(rank(b)));
    let mut keep = chosen(&newest_first, policy, now);
    let by_id: BTreeMap<&BackupId, &PlanBackup> = model.backups.iter().map(|b| (&b.info.id, b)).collect();
    // A kept backup keeps everything it depends on, transitively.
    let mut todo: Vec<BackupId> = keep.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        let Some(b) = by_id.get(&id) else { continue };
        for dep in b.depends_on() {
            if by_id.contains_key(dep) && keep.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    // A diff/incr is kept when everything it depends on is (oldest first, to a
    // fixpoint: a chain is kept link by link).
    let oldest_first: Vec<&PlanBackup> = newest_first.iter().rev().copied().collect();
    loop {
        let mut changed = false;
        for b in &oldest_first {
            if b.kind == BackupType::Full || keep.contains(&b.info.id) {
                continue;
            }
            let mut deps = b.depends_on().peekable();
            if deps.peek().is_some() && deps.all(|d| keep.contains(d)) {
                keep.insert(b.info.id.clone());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(finish(model, &oldest_first, &keep))
}

/// `expire --backup ID [--with-dependents]`: deletes `target` (and, with
/// `with_dependents`, every backup depending on it, transitively); everything
/// else is kept, and the WAL no kept backup needs goes.
pub fn plan_removal(model: &Model, target: &str, with_dependents: bool) -> Result<Plan, PolicyError> {
    if model.backups.is_empty() {
        return Err(PolicyError::NoBackups);
    }
    let Some(target) = model.backups.iter().find(|b| b.info.id.as_str() == target) else {
        return Err(PolicyError::UnknownBackup(target.to_string()));
    };
    let mut newest_first: Vec<&PlanBackup> = model.backups.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(rank(b)));
    let oldest_first: Vec<&PlanBackup> = newest_first.iter().rev().copied().collect();
    let mut doomed: BTreeSet<BackupId> = [target.info.id.clone()].into_iter().collect();
    loop {
        let before = doomed.len();
        for b in &oldest_first {
            if !doomed.contains(&b.info.id) && b.depends_on().any(|d| doomed.contains(d)) {
                doomed.insert(b.info.id.clone());
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    if doomed.len() > 1 && !with_dependents {
        let dependents: Vec<&str> = oldest_first
            .iter()
            .filter(|b| b.info.id != target.info.id && doomed.contains(&b.info.id))
            .map(|b| b.info.id.as_str())
            .collect();
        return Err(PolicyError::HasDependents {
            backup: target.info.id.to_string(),
            dependents: dependents.join(", "),
        });
    }
    if let Some(newest) = newest_first.first().filter(|b| doomed.contains(&b.info.id)) {
        return Err(PolicyError::Newest(newest.info.id.to_string()));
    }
    let keep: BTreeSet<BackupId> =
        model.backups.iter().map(|b| b.info.id.clone()).filter(|id| !doomed.contains(id)).collect();
    Ok(finish(model, &oldest_first, &keep))
}

/// The plan for keeping exactly `keep`: the deletion order of the rest and
/// what of the WAL stays.
fn finish(model: &Model, oldest_first: &[&PlanBackup], keep: &BTreeSet<BackupId>) -> Plan {
    let (kept, expired): (Vec<&PlanBackup>, Vec<&PlanBackup>) =
        oldest_first.iter().copied().partition(|b| keep.contains(&b.info.id));

    let mut need: BTreeMap<TimelineId, SegmentNo> = BTreeMap::new();
    for b in &kept {
        for (tli, first) in needed_from(&b.info, &model.tree, model.size) {
            let e = need.entry(tli).or_insert(first);
            *e = (*e).min(first);
        }
    }
    let mut notes = Vec::new();
    let unknown: BTreeSet<TimelineId> = model.tree.unknown().into_iter().collect();
    let mut wal = BTreeMap::new();
    for &tli in &model.tree.timelines {
        let rule = if unknown.contains(&tli) {
            notes.push(format!("keeping all WAL of timeline {tli}: its history file is missing or unreadable"));
            WalKeep::All
        } else if let Some(first) = need.get(&tli) {
            WalKeep::From(*first)
        } else if model.backup_running {
            notes.push(format!(
                "keeping the WAL of timeline {tli}, which no retained backup reaches: a backup is being taken"
            ));
            WalKeep::All
        } else {
            WalKeep::Nothing
        };
        wal.insert(tli, rule);
    }
    Plan { keep: kept.iter().map(|b| b.info.id.clone()).collect(), expire: deletion_order(&expired), wal, notes }
}

/// Orders `expired` (oldest stop time first) for deletion: each backup
/// before every backup of the set it depends on, otherwise oldest first.
fn deletion_order(expired: &[&PlanBackup]) -> Vec<BackupId> {
    let pos: BTreeMap<&BackupId, usize> = expired.iter().enumerate().map(|(i, b)| (&b.info.id, i)).collect();
    // For each backup, how many of the set still to delete depend on it.
    let mut waiting = vec![0usize; expired.len()];
    for b in expired {
        let deps: BTreeSet<usize> = b.depends_on().filter_map(|d| pos.get(d).copied()).collect();
        for d in deps {
            waiting[d] += 1;
        }
    }
    let mut ready: BTreeSet<usize> = (0..expired.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(expired.len());
    let mut done = vec![false; expired.len()];
    while let Some(i) = ready.pop_first() {
        done[i] = true;
        order.push(expired[i].info.id.clone());
        let deps: BTreeSet<usize> = expired[i].depends_on().filter_map(|d| pos.get(d).copied()).collect();
        for d in deps {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.insert(d);
            }
        }
    }
    // A dependency cycle (impossible from real manifests): the rest, oldest first.
    order.extend(expired.iter().enumerate().filter(|(i, _)| !done[*i]).map(|(_, b)| b.info.id.clone()));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::HistoryEntry;
    use crate::pg::Lsn;
    use proptest::prelude::*;

    const SEG: u64 = 16 << 20;

    fn size() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    /// IDs that sort against stop time: names must never decide.
    fn id(n: u32) -> BackupId {
        id_of(n, BackupType::Full)
    }

    fn id_of(n: u32, kind: BackupType) -> BackupId {
        let t = DateTime::from_timestamp(2_000_000_000 - i64::from(n) * 3600, 0).expect("time");
        BackupId::new(t, kind)
    }

    /// A diff/incr backup `n` on `parent`, its extents also in `refs`.
    fn chained(
        n: u32,
        kind: BackupType,
        parent: &BackupId,
        refs: &[&BackupId],
        start_seg: u64,
        stop: i64,
    ) -> PlanBackup {
        let mut b = full(n, start_seg, 1, stop);
        b.info.id = id_of(n, kind);
        b.kind = kind;
        b.parent = Some(parent.clone());
        b.refs = refs.iter().map(|r| (*r).clone()).collect();
        b
    }

    fn full(n: u32, start_seg: u64, tli: u32, stop_secs: i64) -> PlanBackup {
        PlanBackup {
            info: BackupInfo {
                id: id(n),
                stop_time: at(stop_secs),
                start_lsn: Lsn(start_seg * SEG + 0x28),
                stop_lsn: Lsn(start_seg * SEG + 0x2000),
                timeline: TimelineId(tli),
                stop_timeline: TimelineId(tli),
            },
            kind: BackupType::Full,
            parent: None,
            refs: Vec::new(),
        }
    }

    fn model(backups: Vec<PlanBackup>, tree: TimelineTree) -> Model {
        Model { size: size(), backups, tree, backup_running: false }
    }

    fn one_timeline() -> TimelineTree {
        TimelineTree { histories: BTreeMap::new(), timelines: [TimelineId(1)].into_iter().collect() }
    }

    #[test]
    fn keeps_the_newest_by_stop_time_not_by_name() {
        let m = model(vec![full(1, 2, 1, 100), full(2, 5, 1, 200), full(3, 9, 1, 300)], one_timeline());
        let p = plan(&m, &Policy { retain_full: Some(2), retain_days: None }, at(400)).expect("plan");
        assert_eq!(p.keep, vec![id(2), id(3)]);
        assert_eq!(p.expire, vec![id(1)]);
        assert_eq!(p.wal[&TimelineId(1)], WalKeep::From(SegmentNo(5)));
    }

    #[test]
    fn days_keep_the_window_and_the_backup_before_it() {
        let day = 86_400;
        let m = model(
            vec![full(1, 2, 1, 0), full(2, 5, 1, day), full(3, 9, 1, 5 * day), full(4, 12, 1, 9 * day)],
            one_timeline(),
        );
        let p = plan(&m, &Policy { retain_full: None, retain_days: Some(7) }, at(10 * day)).expect("plan");
        assert_eq!(p.keep, vec![id(2), id(3), id(4)], "id 2 (day 1) recovers to the window's start (day 3)");
        let p = plan(&m, &Policy { retain_full: None, retain_days: Some(1) }, at(100 * day)).expect("plan");
        assert_eq!(p.keep, vec![id(4)], "the newest always stays");
    }

    #[test]
    fn bad_policies_are_refused() {
        let m = model(vec![full(1, 2, 1, 0)], one_timeline());
        let refuse = |p: Policy| plan(&m, &p, at(0)).expect_err("refused");
        assert_eq!(refuse(Policy::default()), PolicyError::Missing);
        assert_eq!(refuse(Policy { retain_full: Some(0), retain_days: None }), PolicyError::ZeroFull);
        assert_eq!(refuse(Policy { retain_full: None, retain_days: Some(0) }), PolicyError::ZeroDays);
        let empty = model(vec![], one_timeline());
        let p = Policy { retain_full: Some(1), retain_days: None };
        assert_eq!(plan(&empty, &p, at(0)).expect_err("empty"), PolicyError::NoBackups);
    }

    #[test]
    fn unreachable_and_unknown_timelines() {
        // TL2 branched off TL1 at segment 4, before the only retained backup (TL1, segment 9).
        let mut histories = BTreeMap::new();
        histories.insert(TimelineId(2), vec![HistoryEntry { parent: TimelineId(1), switch_point: Lsn(4 * SEG + 8) }]);
        let tree = TimelineTree { histories, timelines: [1, 2, 3].map(TimelineId).into_iter().collect() };
        let mut m = model(vec![full(1, 2, 1, 100), full(2, 9, 1, 200)], tree);
        let policy = Policy { retain_full: Some(1), retain_days: None };
        let p = plan(&m, &policy, at(300)).expect("plan");
        assert_eq!(p.wal[&TimelineId(1)], WalKeep::From(SegmentNo(9)));
        assert_eq!(p.wal[&TimelineId(2)], WalKeep::Nothing);
        assert_eq!(p.wal[&TimelineId(3)], WalKeep::All, "no history: keep");
        m.backup_running = true;
        let p = plan(&m, &policy, at(300)).expect("plan");
        assert_eq!(p.wal[&TimelineId(2)], WalKeep::All, "a running backup may be on it");
    }

    /// Two chains, full1 <- incr <- incr and full2 <- diff: the older chain goes
    /// as a whole, tips first; the newer one stays as a whole.
    fn two_chains() -> (Model, [BackupId; 5]) {
        use BackupType::{Diff, Incr};
        let f1 = full(1, 2, 1, 100);
        let i1 = chained(2, Incr, &f1.info.id, &[], 3, 200);
        let i2 = chained(3, Incr, &i1.info.id, &[&f1.info.id], 4, 300);
        let f2 = full(4, 6, 1, 400);
        let d2 = chained(5, Diff, &f2.info.id, &[], 8, 500);
        let ids = [&f1, &i1, &i2, &f2, &d2].map(|b| b.info.id.clone());
        (model(vec![d2, i1, f2, i2, f1], one_timeline()), ids)
    }

    #[test]
    fn chains_go_as_a_whole_dependents_first() {
        let (m, [f1, i1, i2, f2, d2]) = two_chains();
        let p = plan(&m, &Policy { retain_full: Some(1), retain_days: None }, at(1000)).expect("plan");
        assert_eq!(p.keep, vec![f2.clone(), d2.clone()]);
        assert_eq!(p.expire, vec![i2.clone(), i1.clone(), f1.clone()], "tip first, the full last");
        assert_eq!(p.wal[&TimelineId(1)], WalKeep::From(SegmentNo(6)), "from the kept full's start");
        let p = plan(&m, &Policy { retain_full: Some(2), retain_days: None }, at(1000)).expect("plan");
        assert_eq!(
            p.keep,
            vec![f1.clone(), i1.clone(), i2.clone(), f2.clone(), d2.clone()],
            "a kept full keeps its dependents"
        );
        // A window that holds only the newest incr of the old chain keeps its ancestry.
        let mut m2 = m.clone();
        m2.backups.retain(|b| b.info.id != f2 && b.info.id != d2);
        let p = plan(&m2, &Policy { retain_full: None, retain_days: Some(1) }, at(300 + 3600)).expect("plan");
        assert_eq!(p.keep, vec![f1.clone(), i1.clone(), i2.clone()]);
        assert!(p.expire.is_empty());
    }

    #[test]
    fn removal_of_one_backup() {
        let (m, [f1, i1, i2, f2, d2]) = two_chains();
        match plan_removal(&m, f1.as_str(), false) {
            Err(PolicyError::HasDependents { backup, dependents }) => {
                assert_eq!(backup, f1.to_string());
                assert_eq!(dependents, format!("{i1}, {i2}"));
            }
            other => panic!("{other:?}"),
        }
        let p = plan_removal(&m, f1.as_str(), true).expect("with dependents");
        assert_eq!(p.expire, vec![i2.clone(), i1.clone(), f1.clone()]);
        assert_eq!(p.keep, vec![f2.clone(), d2.clone()]);
        assert_eq!(p.wal[&TimelineId(1)], WalKeep::From(SegmentNo(6)));
        let p = plan_removal(&m, i2.as_str(), false).expect("a tip goes alone");
        assert_eq!(p.expire, vec![i2.clone()]);
        assert_eq!(p.wal[&TimelineId(1)], WalKeep::From(SegmentNo(2)));
        assert_eq!(plan_removal(&m, d2.as_str(), false), Err(PolicyError::Newest(d2.to_string())));
        assert_eq!(plan_removal(&m, f2.as_str(), true), Err(PolicyError::Newest(d2.to_string())));
        assert_eq!(
            plan_removal(&m, "20000101T000000F", true),
            Err(PolicyError::UnknownBackup("20000101T000000F".into()))
        );
    }

    // ---- property test: expire never removes what a retained backup needs ----

    /// A repository built by a random history of events.
    #[derive(Debug, Clone)]
    struct Sim {
        backups: Vec<PlanBackup>,
        histories: BTreeMap<TimelineId, Vec<HistoryEntry>>,
        /// Archived segments per timeline.
        wal: BTreeMap<TimelineId, BTreeSet<u64>>,
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// Archive this many segments on the current timeline.
        Archive(u8),
        /// Take a backup on the current timeline, with an ID number and a
        /// type (0 full, 1 diff on the newest full, 2 incr on the newest
        /// backup; full while there is none).
        Backup(u32, u8),
        /// A promotion or point-in-time restore: a new timeline branching off
        /// a known one at a fraction of what it archived.
        Branch { from: u8, at_permille: u16 },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (1u8..6).prop_map(Event::Archive),
            2 => (0u32..1000, 0u8..3).prop_map(|(n, t)| Event::Backup(n, t)),
            1 => (any::<u8>(), 0u16..1000).prop_map(|(from, at_permille)| Event::Branch { from, at_permille }),
        ]
    }

    fn simulate(events: &[Event]) -> Sim {
        let mut sim = Sim { backups: vec![], histories: BTreeMap::new(), wal: BTreeMap::new() };
        // Each timeline: its next segment to write (its head).
        let mut heads: BTreeMap<TimelineId, u64> = BTreeMap::new();
        heads.insert(TimelineId(1), 1);
        sim.wal.insert(TimelineId(1), BTreeSet::new());
        let mut current = TimelineId(1);
        let mut clock = 0i64;
        let mut used_ids = BTreeSet::new();
        for e in events {
            clock += 3600;
            match *e {
                Event::Archive(n) => {
                    let head = heads.get_mut(&current).expect("current timeline");
                    for _ in 0..n {
                        sim.wal.entry(current).or_default().insert(*head);
                        *head += 1;
                    }
                }
                Event::Backup(n, t) => {
                    if !used_ids.insert(n) {
                        continue;
                    }
                    let newest_full = sim.backups.iter().rev().find(|b| b.kind == BackupType::Full);
                    let (kind, parent) = match (t, newest_full, sim.backups.last()) {
                        (1, Some(f), _) => (BackupType::Diff, Some(f)),
                        (2, _, Some(last)) => (BackupType::Incr, Some(last)),
                        _ => (BackupType::Full, None),
                    };
                    // An incr's extents may also point into its chain's full.
                    let refs: Vec<BackupId> = match (kind, newest_full) {
                        (BackupType::Incr, Some(f)) if n % 2 == 0 => vec![f.info.id.clone()],
                        _ => Vec::new(),
                    };
                    let parent = parent.map(|p| p.info.id.clone());
                    let head = heads.get_mut(&current).expect("current timeline");
                    let start = *head;
                    // The backup's WAL (start to stop) is archived before it completes.
                    sim.wal.entry(current).or_default().insert(start);
                    *head += 1;
                    sim.backups.push(PlanBackup {
                        info: BackupInfo {
                            id: id_of(n, kind),
                            stop_time: at(clock),
                            start_lsn: Lsn(start * SEG + 0x28),
                            stop_lsn: Lsn(start * SEG + 0x1000),
                            timeline: current,
                            stop_timeline: current,
                        },
                        kind,
                        parent,
                        refs,
                    });
                }
                Event::Branch { from, at_permille } => {
                    let known: Vec<TimelineId> = heads.keys().copied().collect();
                    let parent = known[from as usize % known.len()];
                    let parent_chain = sim.histories.get(&parent).cloned().unwrap_or_default();
                    let begin = parent_chain.last().map_or(1, |h| h.switch_point.0 / SEG);
                    let head = heads[&parent];
                    let switch_seg = begin + (head.saturating_sub(begin)) * u64::from(at_permille) / 1000;
                    let tli = TimelineId(known.iter().map(|t| t.0).max().unwrap_or(1) + 1);
                    let mut history = parent_chain;
                    history.push(HistoryEntry { parent, switch_point: Lsn(switch_seg * SEG + 0x100) });
                    sim.histories.insert(tli, history);
                    // The new timeline's first segment holds the switch point.
                    heads.insert(tli, switch_seg);
                    sim.wal.insert(tli, BTreeSet::new());
                    current = tli;
                }
            }
        }
        sim
    }

    fn tree_of(sim: &Sim) -> TimelineTree {
        TimelineTree { histories: sim.histories.clone(), timelines: sim.wal.keys().copied().collect() }
    }

    /// The oracle, written pointwise from the history files alone (sharing no
    /// code with the plan): along timeline `t`, the timeline in effect at an
    /// LSN is the first ancestor not yet left by then. A backup can recover
    /// along `t` when `t`'s history passes through the backup's timelines at
    /// its start and stop. Each segment number from the backup's start to the
    /// newest one archived along `t` is read from the file of the timeline in
    /// effect at the segment's last byte; if that file was archived, it must
    /// still be there.
    fn needed_files(sim: &Sim, b: &BackupInfo) -> BTreeSet<(TimelineId, u64)> {
        let mut out = BTreeSet::new();
        let max_seg = sim.wal.values().flatten().max().copied().unwrap_or(0);
        for &t in sim.wal.keys() {
            let history = sim.histories.get(&t).cloned().unwrap_or_default();
            let tl_at = |x: u64| history.iter().find(|h| x < h.switch_point.0).map_or(t, |h| h.parent);
            if tl_at(b.start_lsn.0) != b.timeline || tl_at(b.stop_lsn.0 - 1) != b.stop_timeline {
                continue;
            }
            let file_of = |s: u64| (tl_at((s + 1) * SEG - 1), s);
            let archived = |f: (TimelineId, u64)| sim.wal.get(&f.0).is_some_and(|w| w.contains(&f.1));
            let start = b.start_lsn.0 / SEG;
            let stop = (b.stop_lsn.0 - 1) / SEG;
            let newest = (start..=max_seg).rev().find(|s| archived(file_of(*s))).unwrap_or(stop).max(stop);
            out.extend((start..=newest).map(file_of).filter(|f| archived(*f)));
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn expire_never_removes_what_a_retained_backup_needs(
            events in proptest::collection::vec(event(), 1..60),
            retain_full in proptest::option::of(1u32..4),
            retain_days in proptest::option::of(1u32..4),
            running in any::<bool>(),
        ) {
            let sim = simulate(&events);
            let policy = Policy { retain_full, retain_days: if retain_full.is_none() { retain_days.or(Some(1)) } else { retain_days } };
            let m = Model { size: size(), backups: sim.backups.clone(), tree: tree_of(&sim), backup_running: running };
            let now = at(events.len() as i64 * 3600 + 36 * 3600);
            let p = match plan(&m, &policy, now) {
                Ok(p) => p,
                Err(PolicyError::NoBackups) => { prop_assert!(sim.backups.is_empty()); return Ok(()); }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            // Every backup is either kept or expired, once; the newest is kept.
            prop_assert_eq!(p.keep.len() + p.expire.len(), sim.backups.len());
            let kept: BTreeSet<&BackupId> = p.keep.iter().collect();
            prop_assert!(p.expire.iter().all(|e| !kept.contains(e)), "nothing kept is deleted");
            for b in &sim.backups {
                let deps_kept = b.depends_on().all(|d| kept.contains(d));
                if kept.contains(&b.info.id) {
                    prop_assert!(deps_kept, "kept {} lost a dependency", b.info.id);
                } else if b.kind != BackupType::Full {
                    prop_assert!(!deps_kept, "{} goes though all it depends on stays", b.info.id);
                }
                // Deleted before everything it depends on.
                if let Some(i) = p.expire.iter().position(|e| *e == b.info.id) {
                    for d in b.depends_on() {
                        prop_assert!(p.expire[..i].iter().all(|e| e != d), "{} deleted after its dependency {}", b.info.id, d);
                    }
                }
            }
            let newest = sim.backups.iter().max_by_key(|b| rank(b)).expect("some");
            prop_assert!(p.keep.contains(&newest.info.id));
            if let Some(n) = retain_full {
                prop_assert_eq!(p.keep.len().min(n as usize), (n as usize).min(sim.backups.len()));
                // The kept ones are the newest by stop time.
                let mut by_stop: Vec<&PlanBackup> = sim.backups.iter().collect();
                by_stop.sort_by_key(|b| std::cmp::Reverse(rank(b)));
                for b in by_stop.iter().take(n as usize) {
                    prop_assert!(p.keep.contains(&b.info.id));
                }
            }
            // What survives: every file not marked for deletion.
            let survives = |tli: TimelineId, s: u64| !p.wal.get(&tli).copied().unwrap_or(WalKeep::All).deletes(SegmentNo(s));
            for b in sim.backups.iter().filter(|b| p.keep.contains(&b.info.id)) {
                for (tli, s) in needed_files(&sim, &b.info) {
                    prop_assert!(survives(tli, s), "backup {} needs {:?}/{} which expire deletes", b.info.id, tli, s);
                }
            }
            // Deletion never opens a gap inside what is kept: per timeline it is a prefix.
            for (tli, segs) in &sim.wal {
                let kept: Vec<u64> = segs.iter().copied().filter(|s| survives(*tli, *s)).collect();
                if let Some(first) = kept.first() {
                    prop_assert!(segs.iter().filter(|s| *s >= first).all(|s| survives(*tli, *s)));
                }
            }
        }
    }
}
