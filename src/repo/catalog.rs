//! The read side of a repository: every command (list, verify, expire,
//! restore, the prefetcher, drill, the daemon's metrics) reads what
//! is stored through a [`Catalog`], a snapshot listed and loaded from the
//! objects themselves for that one command. It is never the only record of
//! what is there: there is no index object, and nothing writes through it.
//!
//! [`Catalog::load`] loads what a [`Scope`] asks for, so lean paths (the
//! prefetcher, the restore of one named backup) list no more than they need:
//! - the backups: each backup directory (or only a named one) with its
//!   manifest's own outcome ([`ManifestState`]: complete, missing =
//!   incomplete, corrupt, describing another backup, unreadable), so each
//!   command keeps its own messages for them; this is the one manifest loader;
//! - the WAL: a delimiter listing of `wal/` ([`WalTop`]) and, to the
//!   [`WalInventory`], of each log file directory (16 at once); no segment is
//!   read, and [`TimelineWal::first_missing`] bisects;
//! - the history files `wal/` lists, each with its outcome ([`HistoryState`]:
//!   a corrupt or unreadable one is recorded, not dropped);
//! - the drill results: the newest readable record of each backup under
//!   `drill/` (a record that cannot be read is skipped with a warning: a
//!   damaged drill result must not hide the backups).
//!
//! It answers along a timeline chain: newest segment, first missing, latest
//! timeline, the complete backups by stop time and the windows recovery
//! reaches from them ([`crate::repo::coverage`] computes coverage and windows);
//! [`Repository::archive_times`] adds when segments were archived, for
//! restores to a target time, listing only the log file directories involved.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};

use chrono::{DateTime, Utc};

use super::backup::{reads_manifest_format, BackupId, Manifest};
use super::drill::DrillRecord;
use super::{keys, Repository};
use crate::error::{Error, Result};
use crate::pg::history::{parse_history, HistoryEntry};
use crate::pg::timeline::{Chain, Span, TimelineTree};
use crate::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};

/// What is archived on one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineWal {
    /// Complete segments, sorted.
    pub segments: Vec<SegmentNo>,
    /// `.partial` segments, sorted.
    pub partials: Vec<SegmentNo>,
}

impl TimelineWal {
    /// The first and last complete segment.
    pub fn range(&self) -> Option<(SegmentNo, SegmentNo)> {
        Some((*self.segments.first()?, *self.segments.last()?))
    }

    /// Missing runs between the first and last segment, inclusive bounds.
    pub fn gaps(&self) -> Vec<(SegmentNo, SegmentNo)> {
        self.segments
            .windows(2)
            .filter(|w| w[1].0 > w[0].0 + 1)
            .map(|w| (SegmentNo(w[0].0 + 1), SegmentNo(w[1].0 - 1)))
            .collect()
    }

    /// The first segment from `from` to `to` (inclusive) that is not
    /// stored, found by bisection (no walk over the range: a timeline may
    /// hold millions of segments).
    pub fn first_missing(&self, from: SegmentNo, to: SegmentNo) -> Option<SegmentNo> {
        if from > to {
            return None;
        }
        let start = self.segments.partition_point(|s| *s < from);
        if self.segments.get(start) != Some(&from) {
            return Some(from);
        }
        // Segments are sorted and unique, so `rest[k] - from - k` never
        // decreases: the run without a gap from `from` is where it is 0.
        let rest = &self.segments[start..];
        let in_run = |k: usize| rest[k].0 - from.0 == k as u64;
        let (mut lo, mut hi) = (0usize, rest.len()); // in_run(lo); nothing from hi on is
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if in_run(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let last = rest[lo];
        (last < to).then_some(SegmentNo(last.0 + 1))
    }

    /// Whether every segment from `from` to `to` (inclusive) is stored.
    pub fn has_all(&self, from: SegmentNo, to: SegmentNo) -> bool {
        if from > to {
            return true;
        }
        let Ok(start) = self.segments.binary_search(&from) else { return false };
        let span = (to.0 - from.0) as usize;
        self.segments.get(start + span) == Some(&to)
    }
}

/// The archived WAL of a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalInventory {
    /// Segment size the names were interpreted with.
    pub segment_size: Option<WalSegmentSize>,
    /// Per timeline.
    pub timelines: BTreeMap<TimelineId, TimelineWal>,
    /// Timelines that have a `.history` file.
    pub histories: Vec<TimelineId>,
}

impl WalInventory {
    /// The first segment of timeline `tli` from `lo` to `hi` (inclusive)
    /// that is not archived.
    pub fn first_missing(&self, tli: TimelineId, lo: SegmentNo, hi: SegmentNo) -> Option<SegmentNo> {
        match self.timelines.get(&tli) {
            Some(t) => t.first_missing(lo, hi),
            None => (lo <= hi).then_some(lo),
        }
    }

    /// The segments of timeline `tli` from `lo` to `hi` (inclusive) that are
    /// not archived, in order.
    pub fn missing(&self, tli: TimelineId, lo: SegmentNo, hi: SegmentNo) -> impl Iterator<Item = SegmentNo> + '_ {
        let segs = self.timelines.get(&tli).map_or(&[][..], |t| t.segments.as_slice());
        (lo.0..=hi.0).map(SegmentNo).filter(move |s| segs.binary_search(s).is_err())
    }
}

/// What selection needs to know about a complete backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup.
    pub id: BackupId,
    /// When it stopped: the earliest time it recovers to.
    pub stop_time: DateTime<Utc>,
    /// Where its WAL starts.
    pub start_lsn: Lsn,
    /// Where it is consistent.
    pub stop_lsn: Lsn,
    /// Timeline at start.
    pub timeline: TimelineId,
    /// Timeline at stop.
    pub stop_timeline: TimelineId,
}

impl BackupInfo {
    /// What a complete backup's manifest says about it; a manifest whose
    /// stop time does not parse is corrupt.
    pub fn from_manifest(m: &Manifest) -> crate::error::Result<BackupInfo> {
        let stop_time = DateTime::parse_from_rfc3339(&m.stop_time)
            .map_err(|e| Error::Corrupt {
                key: keys::manifest_key(&m.id).to_string(),
                reason: format!("invalid stop_time '{}': {e}", m.stop_time),
            })?
            .with_timezone(&Utc);
        Ok(BackupInfo {
            id: m.id.clone(),
            stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            timeline: m.timeline,
            stop_timeline: m.stop_timeline,
        })
    }

    /// The WAL the backup spans, for timeline arithmetic.
    pub fn span(&self) -> Span {
        Span {
            start_timeline: self.timeline,
            start_lsn: self.start_lsn,
            stop_timeline: self.stop_timeline,
            stop_lsn: self.stop_lsn,
        }
    }
}

/// The first segment from `from` to `to` (inclusive) that recovery along
/// `chain` needs and the archive lacks, as a file name.
pub fn first_missing(
    inv: &WalInventory,
    chain: &Chain,
    from: SegmentNo,
    to: SegmentNo,
    size: WalSegmentSize,
) -> Option<WalFileName> {
    chain
        .ranges(from, to, size)
        .into_iter()
        .find_map(|(tli, lo, hi)| inv.missing(tli, lo, hi).next().map(|seg| WalFileName::segment(tli, seg, size)))
}

/// The newest archived segment on the chain, with its timeline.
pub fn newest_segment(inv: &WalInventory, chain: &Chain, size: WalSegmentSize) -> Option<(TimelineId, SegmentNo)> {
    let ranges = chain.ranges(SegmentNo(0), SegmentNo(u64::MAX), size);
    ranges.iter().rev().find_map(|(tli, lo, hi)| {
        let segs = &inv.timelines.get(tli)?.segments;
        segs.iter().rev().find(|s| *s >= lo && *s <= hi).map(|s| (*tli, *s))
    })
}

/// The timeline `latest` means: the newest one the archive knows of.
pub fn latest_timeline(inv: &WalInventory) -> TimelineId {
    let by_wal = inv.timelines.iter().filter(|(_, t)| !t.segments.is_empty()).map(|(t, _)| *t).max();
    let by_history = inv.histories.iter().max().copied();
    by_wal.max(by_history).unwrap_or(TimelineId(1))
}

/// Which backups a [`Catalog`] loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backups {
    /// None: `backup/` is not listed.
    #[default]
    None,
    /// Every backup directory (one listing of `backup/`, then each manifest).
    All,
    /// Only this backup's manifest (nothing is listed).
    Only(BackupId),
}

/// How much of `wal/` a [`Catalog`] lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WalListing {
    /// Nothing.
    #[default]
    None,
    /// `wal/` itself: the history files and the log file directories.
    Top,
    /// `wal/` and every log file directory: the [`WalInventory`].
    Inventory(WalSegmentSize),
}

/// What to do when an object cannot be read at all (the store failed after
/// its retries; a corrupt object is always recorded, never an error here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Unreadable {
    /// The load fails with the store's error.
    #[default]
    Fail,
    /// The load goes on and records it with the object.
    Record,
}

/// What a [`Catalog`] loads, so that lean paths (prefetch, the restore of
/// one named backup) list no more than they need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Which manifests.
    pub backups: Backups,
    /// How much of `wal/`.
    pub wal: WalListing,
    /// Whether to read the history files `wal/` lists (needs `wal` listed).
    pub histories: bool,
    /// A manifest that cannot be read.
    pub unreadable_manifests: Unreadable,
    /// A history file that cannot be read.
    pub unreadable_histories: Unreadable,
    /// Whether to read the newest drill result of each backup (`drill/`).
    pub drills: bool,
}

/// What the manifest of one backup directory says.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestState {
    /// The manifest is stored and describes this backup: it is complete.
    Complete(Manifest),
    /// No manifest: the backup is running or was interrupted.
    Missing,
    /// The manifest is stored but cannot be decoded.
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The manifest describes another backup.
    OtherBackup(Manifest),
    /// It could not be read (recorded with [`Unreadable::Record`] only): the error.
    Unreadable(String),
}

/// One backup directory and its manifest's state.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupEntry {
    /// The directory's backup ID.
    pub id: BackupId,
    /// What its manifest says.
    pub state: ManifestState,
}

/// What a history file `wal/` lists says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryState {
    /// The timeline's ancestors, oldest first.
    Known(Vec<HistoryEntry>),
    /// Listed, but gone when read.
    Vanished,
    /// Stored but not a history file.
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// It could not be read (recorded with [`Unreadable::Record`] only): the error.
    Unreadable(String),
}

/// A snapshot of what a repository holds, listed and loaded once from the
/// objects for one command (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// The backups loaded, by ID.
    pub backups: Vec<BackupEntry>,
    /// The listing of `wal/`, if listed.
    pub wal_top: Option<WalTop>,
    /// The WAL inventory, if listed.
    pub inventory: Option<WalInventory>,
    /// The history files `wal/` lists, if read.
    pub histories: BTreeMap<TimelineId, HistoryState>,
    /// The newest readable drill result of each backup that has one, if
    /// read (an unreadable one is skipped with a warning).
    pub drills: BTreeMap<BackupId, DrillRecord>,
}

impl Catalog {
    /// Loads what `scope` asks for: the manifests (8 at a time), then
    /// `wal/`, its log file directories, the history files and the drill
    /// results, in that order.
    pub async fn load(repo: &Repository, scope: &Scope) -> Result<Catalog> {
        let mut catalog = Catalog::default();
        catalog.add(repo, scope).await?;
        Ok(catalog)
    }

    /// Loads what `scope` asks for and the snapshot does not hold yet (a
    /// command that must list `backup/` before it looks at the lock and
    /// `wal/` after, like `expire`, loads in two steps).
    pub async fn add(&mut self, repo: &Repository, scope: &Scope) -> Result<()> {
        if self.backups.is_empty() {
            self.backups = load_backups(repo, &scope.backups, scope.unreadable_manifests).await?;
        }
        if self.wal_top.is_none() && scope.wal != WalListing::None {
            self.wal_top = Some(repo.wal_top().await?);
        }
        if let (None, WalListing::Inventory(size), Some(top)) = (&self.inventory, scope.wal, &self.wal_top) {
            self.inventory = Some(repo.inventory_below(top, size).await?);
        }
        if scope.histories && self.histories.is_empty() {
            let listed = self.wal_top.as_ref().map_or(&[][..], |t| t.histories.as_slice());
            for &tli in listed {
                let state = match repo.timeline_history(tli).await {
                    Ok(Some(h)) => HistoryState::Known(h),
                    Ok(None) => HistoryState::Vanished,
                    Err(Error::Corrupt { key, reason }) => HistoryState::Corrupt { key, reason },
                    Err(e) if scope.unreadable_histories == Unreadable::Record => {
                        HistoryState::Unreadable(e.one_line())
                    }
                    Err(e) => return Err(e),
                };
                self.histories.insert(tli, state);
            }
        }
        if scope.drills && self.drills.is_empty() {
            self.drills = repo.newest_drills().await?;
        }
        Ok(())
    }

    /// Every complete backup's manifest, oldest stop time first, and the IDs
    /// of those without one; a corrupt manifest, or one describing another
    /// backup, is an error (`list`, `expire`).
    pub fn complete_backups(&self) -> Result<(Vec<&Manifest>, Vec<String>)> {
        let mut manifests = Vec::new();
        let mut incomplete = Vec::new();
        for b in &self.backups {
            match &b.state {
                ManifestState::Complete(m) => manifests.push(m),
                ManifestState::Missing => incomplete.push(b.id.to_string()),
                ManifestState::Corrupt { key, reason } => {
                    return Err(Error::Corrupt { key: key.clone(), reason: reason.clone() })
                }
                ManifestState::OtherBackup(m) => {
                    return Err(Error::Corrupt {
                        key: keys::manifest_key(&b.id).to_string(),
                        reason: format!("it describes backup '{}'", m.id),
                    })
                }
                ManifestState::Unreadable(e) => {
                    return Err(Error::Corrupt { key: keys::manifest_key(&b.id).to_string(), reason: e.clone() })
                }
            }
        }
        // RFC 3339 UTC with whole seconds sorts as text; the ID breaks ties.
        manifests.sort_by(|a, b| (&a.stop_time, a.stop_lsn, &a.id).cmp(&(&b.stop_time, b.stop_lsn, &b.id)));
        incomplete.sort();
        Ok((manifests, incomplete))
    }

    /// The histories that were read, by timeline (corrupt, vanished and
    /// unreadable ones left out: commands that report them look at
    /// [`Catalog::histories`]).
    pub fn known_histories(&self) -> BTreeMap<TimelineId, Vec<HistoryEntry>> {
        self.histories
            .iter()
            .filter_map(|(t, h)| match h {
                HistoryState::Known(h) => Some((*t, h.clone())),
                _ => None,
            })
            .collect()
    }

    /// The histories that were read; `Err` for the first corrupt one
    /// (`restore`, the prefetcher).
    pub fn readable_histories(&self) -> Result<BTreeMap<TimelineId, Vec<HistoryEntry>>> {
        if let Some((key, reason)) = self.histories.values().find_map(|h| match h {
            HistoryState::Corrupt { key, reason } => Some((key, reason)),
            _ => None,
        }) {
            return Err(Error::Corrupt { key: key.clone(), reason: reason.clone() });
        }
        Ok(self.known_histories())
    }

    /// The timeline tree of the histories that were read (its `timelines`
    /// left for the command to fill with what it counts as mentioned).
    pub fn timeline_tree(&self) -> TimelineTree {
        TimelineTree { histories: self.known_histories(), ..Default::default() }
    }

    /// The WAL inventory (empty if `wal/` was not listed to that depth).
    pub fn wal(&self) -> &WalInventory {
        static EMPTY: std::sync::OnceLock<WalInventory> = std::sync::OnceLock::new();
        self.inventory.as_ref().unwrap_or_else(|| EMPTY.get_or_init(WalInventory::default))
    }

    /// The newest archived segment on `chain`, with its timeline.
    pub fn newest_segment(&self, chain: &Chain, size: WalSegmentSize) -> Option<(TimelineId, SegmentNo)> {
        newest_segment(self.wal(), chain, size)
    }

    /// The first segment from `from` to `to` that recovery along `chain` lacks.
    pub fn first_missing(
        &self,
        chain: &Chain,
        from: SegmentNo,
        to: SegmentNo,
        size: WalSegmentSize,
    ) -> Option<WalFileName> {
        first_missing(self.wal(), chain, from, to, size)
    }

    /// The timeline `latest` means.
    pub fn latest_timeline(&self) -> TimelineId {
        latest_timeline(self.wal())
    }

    /// The windows recovery along `chain` reaches from the complete backups
    /// (see [`super::coverage::recovery_windows`]); manifests whose stop time
    /// does not parse are left out.
    pub fn recovery_windows(&self, chain: &Chain, size: WalSegmentSize) -> Vec<super::coverage::Window> {
        let infos: Vec<BackupInfo> = self
            .backups
            .iter()
            .filter_map(|b| match &b.state {
                ManifestState::Complete(m) => BackupInfo::from_manifest(m).ok(),
                _ => None,
            })
            .collect();
        super::coverage::recovery_windows(&infos, chain, self.wal(), size)
    }
}

/// Reads the manifests `which` names, 8 at a time, each with its own
/// outcome; backup directories whose name is not a backup ID are not ours.
async fn load_backups(repo: &Repository, which: &Backups, unreadable: Unreadable) -> Result<Vec<BackupEntry>> {
    let ids: Vec<BackupId> = match which {
        Backups::None => return Ok(Vec::new()),
        Backups::Only(id) => vec![id.clone()],
        Backups::All => repo.list_dirs(&keys::backups_prefix()).await?.iter().filter_map(|d| d.parse().ok()).collect(),
    };
    let loaded: Vec<BackupEntry> = futures::stream::iter(ids)
        .map(|id| async move {
            let state = match repo.load_json::<Manifest>(&keys::manifest_key(&id)).await {
                // A newer format may depend on backups this build cannot see:
                // never list (or expire around) what it cannot read.
                Ok(Some(m)) if !reads_manifest_format(m.format) => ManifestState::Corrupt {
                    key: keys::manifest_key(&id).to_string(),
                    reason: format!(
                        "manifest format {} is newer than this pgwal reads (1 and 2): upgrade pgwal",
                        m.format
                    ),
                },
                Ok(Some(m)) if m.id == id => ManifestState::Complete(m),
                Ok(Some(m)) => ManifestState::OtherBackup(m),
                Ok(None) => ManifestState::Missing,
                Err(Error::Corrupt { key, reason }) => ManifestState::Corrupt { key, reason },
                Err(e) if unreadable == Unreadable::Record => ManifestState::Unreadable(e.to_string()),
                Err(e) => return Err(e),
            };
            Ok(BackupEntry { id, state })
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut loaded = loaded;
    loaded.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(loaded)
}

/// What a delimiter listing of `wal/` shows: the timelines with a history
/// file and the log file directories (`TTTTTTTTLLLLLLLL`), sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalTop {
    /// Timelines whose `.history` file is stored.
    pub histories: Vec<TimelineId>,
    /// Log file directory names.
    pub log_dirs: Vec<String>,
}

impl Repository {
    /// Lists `wal/` itself (one delimiter listing, no segment keys): the
    /// history files' timelines and the log file directories. Every reader
    /// of the WAL starts here.
    pub async fn wal_top(&self) -> Result<WalTop> {
        let top = self.list_entries(&keys::wal_root()).await?;
        let mut histories: Vec<TimelineId> = top
            .objects
            .iter()
            .filter_map(|name| match name.parse::<WalFileName>() {
                Ok(WalFileName::History { tli }) => Some(tli),
                _ => None,
            })
            .collect();
        histories.sort();
        let mut log_dirs = top.dirs;
        log_dirs.sort();
        Ok(WalTop { histories, log_dirs })
    }

    /// Lists the archived WAL. Log file directories are listed concurrently.
    pub async fn wal_inventory(&self, segment_size: WalSegmentSize) -> Result<WalInventory> {
        let top = self.wal_top().await?;
        self.inventory_below(&top, segment_size).await
    }

    /// The WAL inventory from a listing of `wal/`: each log file directory
    /// is listed (16 at once), no segment is read.
    async fn inventory_below(&self, top: &WalTop, segment_size: WalSegmentSize) -> Result<WalInventory> {
        let mut inventory =
            WalInventory { segment_size: Some(segment_size), histories: top.histories.clone(), ..Default::default() };
        // Owned names: a stream of borrowed ones makes the future not `Send`
        // for every lifetime (rustc's higher-ranked limitation), and the
        // daemon reads the catalog on a spawned task.
        let dirs: Vec<String> = top.log_dirs.iter().filter(|d| d.len() == 16).cloned().collect();
        let listings: Vec<Vec<String>> = futures::stream::iter(dirs)
            .map(|d| async move { self.list_entries(&keys::log_dir_named(&d)).await.map(|l| l.objects) })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        for name in listings.into_iter().flatten() {
            let Ok(parsed) = name.parse::<WalFileName>() else { continue };
            let Some(segno) = parsed.segment_no(segment_size) else { continue };
            let tl = inventory.timelines.entry(parsed.timeline()).or_default();
            match parsed {
                WalFileName::Segment { .. } => tl.segments.push(segno),
                WalFileName::Partial { .. } => tl.partials.push(segno),
                _ => {}
            }
        }
        for tl in inventory.timelines.values_mut() {
            tl.segments.sort();
            tl.segments.dedup();
            tl.partials.sort();
        }
        Ok(inventory)
    }

    /// When each segment on the chain from `from` on was archived (its object's
    /// modification time), listing only the log-file directories involved
    /// (`restore` to a target time).
    pub async fn archive_times(
        &self,
        inv: &WalInventory,
        chain: &Chain,
        from: SegmentNo,
        size: WalSegmentSize,
    ) -> Result<BTreeMap<(TimelineId, SegmentNo), DateTime<Utc>>> {
        let Some((_, newest)) = newest_segment(inv, chain, size) else { return Ok(BTreeMap::new()) };
        let per_log = size.segments_per_log_file();
        let mut dirs = Vec::new();
        for link in &chain.0 {
            let Some(t) = inv.timelines.get(&link.tli) else { continue };
            let mut logs: Vec<u64> =
                t.segments.iter().filter(|s| **s >= from && **s <= newest).map(|s| s.0 / per_log).collect();
            logs.dedup();
            dirs.extend(logs.into_iter().map(|log| keys::log_dir_named(&keys::log_dir_name(link.tli, log))));
        }
        let listings: Vec<Vec<object_store::ObjectMeta>> = futures::stream::iter(dirs)
            .map(|d| async move { self.list_objects(&d).await })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut times = BTreeMap::new();
        for meta in listings.into_iter().flatten() {
            let Some(name) = meta.location.filename() else { continue };
            if let Ok(parsed @ WalFileName::Segment { .. }) = name.parse::<WalFileName>() {
                if let Some(seg) = parsed.segment_no(size) {
                    times.insert((parsed.timeline(), seg), meta.last_modified);
                }
            }
        }
        Ok(times)
    }

    /// The ancestors of timeline `tli` from its `.history` file (empty for
    /// timeline 1); `None` if a timeline above 1 has no history file.
    pub async fn timeline_history(&self, tli: TimelineId) -> Result<Option<Vec<HistoryEntry>>> {
        if tli.0 == 1 {
            return Ok(Some(Vec::new()));
        }
        let key = keys::wal(&WalFileName::History { tli });
        let Some(object) = self.get(&key).await? else { return Ok(None) };
        let corrupt = |reason: String| crate::error::Error::Corrupt { key: key.to_string(), reason };
        let content = super::frame::decode(&object).map_err(|e| corrupt(e.to_string()))?;
        parse_history(tli, &content).map(Some).map_err(|e| corrupt(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(segs: &[u64]) -> TimelineWal {
        TimelineWal { segments: segs.iter().map(|&s| SegmentNo(s)).collect(), partials: vec![] }
    }

    #[test]
    fn gaps_and_coverage() {
        let t = tl(&[3, 4, 5, 8, 9, 12]);
        assert_eq!(t.range(), Some((SegmentNo(3), SegmentNo(12))));
        assert_eq!(t.gaps(), vec![(SegmentNo(6), SegmentNo(7)), (SegmentNo(10), SegmentNo(11))]);
        assert!(t.has_all(SegmentNo(3), SegmentNo(5)));
        assert!(t.has_all(SegmentNo(8), SegmentNo(9)));
        assert!(!t.has_all(SegmentNo(4), SegmentNo(8)));
        assert!(!t.has_all(SegmentNo(2), SegmentNo(3)));
        assert!(!t.has_all(SegmentNo(12), SegmentNo(13)));
        assert!(t.has_all(SegmentNo(5), SegmentNo(4)), "an empty range is covered");
        assert!(tl(&[]).gaps().is_empty());
        let first_missing = |t: &TimelineWal, a: u64, b: u64| t.first_missing(SegmentNo(a), SegmentNo(b)).map(|s| s.0);
        assert_eq!(first_missing(&t, 3, 12), Some(6));
        assert_eq!(first_missing(&t, 3, 5), None);
        assert_eq!(first_missing(&t, 8, 12), Some(10));
        assert_eq!(first_missing(&t, 12, 12), None);
        assert_eq!(first_missing(&t, 12, 13), Some(13));
        assert_eq!(first_missing(&t, 2, 4), Some(2));
        assert_eq!(first_missing(&t, 6, 4), None, "an empty range misses nothing");
        assert_eq!(first_missing(&tl(&[]), 1, 1), Some(1));
    }

    /// Each backup directory and history file keeps its own outcome; the
    /// scope decides what is loaded at all.
    #[test]
    fn a_snapshot_records_each_outcome() {
        use crate::pg::Lsn;
        use crate::repo::synthetic;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let repo = Repository::in_memory();
        let size = WalSegmentSize::new(1 << 20).expect("size");
        let at = |s: i64| DateTime::from_timestamp(1_800_000_000 + s * 60, 0).expect("time");
        let (good, other, missing, corrupt, chained, newer) = rt.block_on(async {
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=3 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let e = HistoryEntry { parent: TimelineId(1), switch_point: Lsn(3 << 20) };
            synthetic::put_history(&repo, TimelineId(2), &[e]).await.expect("history");
            let bad_history = keys::wal(&WalFileName::History { tli: TimelineId(3) });
            synthetic::put(&repo, &bad_history, b"not a history\n").await.expect("put");
            let good = synthetic::put_backup(&repo, 7, TimelineId(1), Lsn(0x10_0028), Lsn(0x10_0100), at(1))
                .await
                .expect("backup");
            let m = |s| synthetic::put_backup(&repo, 7, TimelineId(1), Lsn(0x10_0028), Lsn(0x10_0100), at(s));
            let other = m(2).await.expect("backup").id;
            repo.delete(&[keys::manifest_key(&other)]).await.expect("delete");
            repo.store_json(&keys::manifest_key(&other), &good).await.expect("put");
            let missing = m(3).await.expect("backup").id;
            repo.delete(&[keys::manifest_key(&missing)]).await.expect("delete");
            let corrupt = m(4).await.expect("backup").id;
            repo.delete(&[keys::manifest_key(&corrupt)]).await.expect("delete");
            synthetic::put(&repo, &keys::manifest_key(&corrupt), b"{").await.expect("put");
            let chained = synthetic::put_chained(
                &repo,
                &good,
                crate::repo::backup::BackupType::Incr,
                Lsn(0x20_0028),
                Lsn(0x20_0100),
                at(5),
            )
            .await
            .expect("chained");
            assert_eq!(chained.format, crate::repo::backup::MANIFEST_FORMAT_CHAINED);
            let mut newer = chained.clone();
            newer.id = BackupId::new(at(6), crate::repo::backup::BackupType::Incr);
            newer.format = 3;
            repo.store_json(&keys::manifest_key(&newer.id), &newer).await.expect("put");
            (good, other, missing, corrupt, chained, newer.id)
        });
        let scope =
            Scope { backups: Backups::All, wal: WalListing::Inventory(size), histories: true, ..Scope::default() };
        let c = rt.block_on(Catalog::load(&repo, &scope)).expect("load");
        let state = |id: &BackupId| &c.backups.iter().find(|b| &b.id == id).expect("listed").state;
        assert_eq!(state(&good.id), &ManifestState::Complete(good.clone()));
        assert_eq!(state(&chained.id), &ManifestState::Complete(chained.clone()), "format 2 reads");
        assert!(
            matches!(state(&newer), ManifestState::Corrupt { reason, .. } if reason.contains("manifest format 3")),
            "{:?}",
            state(&newer)
        );
        assert!(matches!(state(&other), ManifestState::OtherBackup(m) if m.id == good.id), "{:?}", state(&other));
        assert_eq!(state(&missing), &ManifestState::Missing);
        assert!(matches!(state(&corrupt), ManifestState::Corrupt { .. }), "{:?}", state(&corrupt));
        assert!(c.complete_backups().is_err(), "list and expire refuse a corrupt manifest");
        assert!(matches!(c.histories.get(&TimelineId(2)), Some(HistoryState::Known(h)) if h.len() == 1));
        assert!(matches!(c.histories.get(&TimelineId(3)), Some(HistoryState::Corrupt { .. })));
        assert_eq!(c.known_histories().keys().copied().collect::<Vec<_>>(), vec![TimelineId(2)]);
        assert!(c.readable_histories().is_err(), "restore and the prefetcher refuse a corrupt history");
        assert_eq!(c.wal().timelines[&TimelineId(1)].segments, (1..=3).map(SegmentNo).collect::<Vec<_>>());
        assert_eq!(c.latest_timeline(), TimelineId(3));
        // A lean scope: one backup, the top of wal/ and nothing else.
        let scope = Scope { backups: Backups::Only(good.id.clone()), wal: WalListing::Top, ..Scope::default() };
        let c = rt.block_on(Catalog::load(&repo, &scope)).expect("load");
        assert_eq!(c.backups.len(), 1);
        assert!(c.inventory.is_none() && c.histories.is_empty());
        assert_eq!(c.wal_top.as_ref().map(|t| t.histories.clone()), Some(vec![TimelineId(2), TimelineId(3)]));
        assert_eq!(c.complete_backups().expect("complete").0, vec![&good]);
    }

    proptest::proptest! {
        /// Bisection finds what walking the range finds.
        #[test]
        fn first_missing_matches_a_walk(
            segs in proptest::collection::btree_set(0u64..200, 0..150),
            a in 0u64..210,
            len in 0u64..80,
        ) {
            let t = tl(&segs.iter().copied().collect::<Vec<_>>());
            let inv = WalInventory { timelines: [(TimelineId(1), t.clone())].into_iter().collect(), ..Default::default() };
            let walked = inv.missing(TimelineId(1), SegmentNo(a), SegmentNo(a + len)).next();
            proptest::prop_assert_eq!(t.first_missing(SegmentNo(a), SegmentNo(a + len)), walked);
        }
    }
}
