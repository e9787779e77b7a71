//! The read side of a repository: what is stored, listed and loaded from
//! the objects themselves every time (never an index object of its own).
//!
//! - the WAL inventory: per timeline, which segments (and `.partial`
//!   segments) are stored and where the gaps are, plus the timelines with a
//!   history file; built from delimiter listings of `wal/` and each log file
//!   directory (16 at once), so it never reads a segment, and
//!   [`TimelineWal::first_missing`] bisects;
//! - the history files ([`Repository::timeline_history`]);
//! - what a complete backup's manifest says for timeline arithmetic ([`BackupInfo`]);
//! - answers along a timeline chain: newest segment, first missing, latest timeline.
//!
//! Manifests are loaded by [`crate::repo::backup::load_manifests`] (the one
//! loader; it checks that each manifest names its own backup).

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};

use chrono::{DateTime, Utc};

use super::backup::{BackupId, Manifest};
use super::{keys, Repository};
use crate::error::{Error, Result};
use crate::pg::history::{parse_history, HistoryEntry};
use crate::pg::timeline::{Chain, Span};
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

/// Reads the manifest of backup `only`, or of every backup directory, 8 at
/// a time: each with its own outcome (`Ok(None)`: no manifest, a backup that
/// is running or was interrupted), so callers decide what one bad manifest means.
pub async fn load_manifests(
    repo: &Repository,
    only: Option<&BackupId>,
) -> Result<Vec<(BackupId, Result<Option<Manifest>>)>> {
    use futures::StreamExt;
    let ids: Vec<BackupId> = match only {
        Some(id) => vec![id.clone()],
        None => repo.list_dirs(&keys::backups_prefix()).await?.iter().filter_map(|d| d.parse().ok()).collect(),
    };
    Ok(futures::stream::iter(ids)
        .map(|id| async move {
            let m = repo.load_json::<Manifest>(&keys::manifest_key(&id)).await;
            (id, m)
        })
        .buffer_unordered(8)
        .collect()
        .await)
}

/// Every complete backup's manifest, oldest stop time first, and the IDs of
/// incomplete ones; a corrupt manifest, or one describing another backup, is
/// an error (`list`, `expire`).
pub async fn complete_backups(repo: &Repository) -> Result<(Vec<Manifest>, Vec<String>)> {
    let ids = repo.list_dirs(&keys::backups_prefix()).await?;
    let loaded: Vec<(String, Option<Manifest>)> = futures::stream::iter(ids)
        .map(|name| async move {
            // A directory that is not a backup ID is not ours: ignore it.
            let Ok(id) = name.parse::<BackupId>() else { return Ok((name, None)) };
            let manifest: Option<Manifest> = repo.load_json(&keys::manifest_key(&id)).await?;
            if let Some(m) = &manifest {
                if m.id != id {
                    return Err(Error::Corrupt {
                        key: keys::manifest_key(&id).to_string(),
                        reason: format!("it describes backup '{}'", m.id),
                    });
                }
            }
            Ok((name, manifest))
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut manifests = Vec::new();
    let mut incomplete = Vec::new();
    for (name, m) in loaded {
        match m {
            Some(m) => manifests.push(m),
            None if name.parse::<BackupId>().is_ok() => incomplete.push(name),
            None => {}
        }
    }
    // RFC 3339 UTC with whole seconds sorts as text; the ID breaks ties.
    manifests.sort_by(|a, b| (&a.stop_time, &a.id).cmp(&(&b.stop_time, &b.id)));
    incomplete.sort();
    Ok((manifests, incomplete))
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

    /// Every timeline history in the repository that is stored and readable
    /// (`Err` for the first that cannot be read).
    pub async fn timeline_histories(&self) -> Result<BTreeMap<TimelineId, Vec<HistoryEntry>>> {
        let mut out = BTreeMap::new();
        for tli in self.wal_top().await?.histories {
            if let Some(h) = self.timeline_history(tli).await? {
                out.insert(tli, h);
            }
        }
        Ok(out)
    }

    /// Lists the archived WAL. Log file directories are listed concurrently.
    pub async fn wal_inventory(&self, segment_size: WalSegmentSize) -> Result<WalInventory> {
        let top = self.wal_top().await?;
        let mut inventory =
            WalInventory { segment_size: Some(segment_size), histories: top.histories, ..Default::default() };
        let dirs: Vec<String> = top.log_dirs.into_iter().filter(|d| d.len() == 16).collect();
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
