//! Which archived WAL a backup needs so that it recovers to every point after
//! it, on every timeline that descends from it. Pure: works on backup
//! summaries, the timelines' `.history` contents and segment numbers; shared
//! by `verify` (is it all there?) and `expire` (what may go?).
//!
//! A timeline descends from a backup when the backup's timelines lie on the
//! timeline's history and the backup stopped before that history left the
//! backup's stop timeline (see [`Chain::admits`]). Recovery along such a
//! timeline reads, for each segment number from the backup's start segment
//! on, the file of the newest timeline on its history that had begun by then.

use std::collections::BTreeMap;

use crate::pg::timeline::{segment_before, segment_of, Chain, TimelineTree};
use crate::pg::{SegmentNo, TimelineId, WalSegmentSize};
use crate::repo::catalog::WalInventory;
use crate::repo::catalog::{newest_segment, BackupInfo};

/// For each timeline, the first segment a backup needs from it: everything
/// from there on (on that timeline) is read by some recovery from the backup.
pub fn needed_from(b: &BackupInfo, tree: &TimelineTree, size: WalSegmentSize) -> BTreeMap<TimelineId, SegmentNo> {
    let mut out: BTreeMap<TimelineId, SegmentNo> = BTreeMap::new();
    let start = segment_of(b.start_lsn, size);
    for chain in tree.descendants(&b.span()) {
        for (tli, lo, _) in chain.ranges(start, SegmentNo(u64::MAX), size) {
            let e = out.entry(tli).or_insert(lo);
            *e = (*e).min(lo);
        }
    }
    out
}

/// The segments recovery from `b` along `chain` reads, as `(timeline, first,
/// last)` runs: from the backup's start through its stop and on to `newest`
/// (the newest segment archived on the chain, if later).
pub fn needed_runs(
    b: &BackupInfo,
    chain: &Chain,
    newest: Option<SegmentNo>,
    size: WalSegmentSize,
) -> Vec<(TimelineId, SegmentNo, SegmentNo)> {
    let start = segment_of(b.start_lsn, size);
    let stop = segment_before(b.stop_lsn, size).max(start);
    let end = newest.map_or(stop, |n| n.max(stop));
    chain.ranges(start, end, size)
}

/// A stretch of a timeline that can be recovered to: from the end (stop
/// LSN) of its oldest backup to the end of the last segment archived without
/// a gap after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The backups recovering into this window, oldest stop LSN first; the
    /// first one's stop LSN is where the window starts.
    pub backups: Vec<BackupInfo>,
    /// The last segment recovery reads without a gap, and its timeline.
    pub last: (TimelineId, SegmentNo),
}

impl Window {
    /// The window's first backup.
    pub fn first(&self) -> &BackupInfo {
        &self.backups[0]
    }
}

/// The windows that recovery along `chain` can reach from `backups`: each
/// usable backup (all its own WAL archived) reaches from its stop LSN to the
/// segment before the first missing one on the way to the newest archived
/// segment of the chain; overlapping reaches are merged.
pub fn recovery_windows(
    backups: &[BackupInfo],
    chain: &Chain,
    inv: &WalInventory,
    size: WalSegmentSize,
) -> Vec<Window> {
    let newest = newest_segment(inv, chain, size).map(|(_, s)| s);
    let mut usable: Vec<(&BackupInfo, SegmentNo)> = Vec::new();
    for b in backups.iter().filter(|b| chain.admits(&b.span())) {
        let start = segment_of(b.start_lsn, size);
        let stop = segment_before(b.stop_lsn, size).max(start);
        let runs = needed_runs(b, chain, newest, size);
        let end = runs.last().map_or(stop, |r| r.2);
        let gap = runs.iter().find_map(|(tli, lo, hi)| inv.first_missing(*tli, *lo, *hi));
        let reach = match gap {
            Some(g) if g <= stop => continue, // its own WAL is incomplete
            Some(g) => SegmentNo(g.0 - 1),
            None => end,
        };
        usable.push((b, reach));
    }
    usable.sort_by_key(|(b, _)| (b.stop_lsn, b.stop_time));
    let mut out: Vec<Window> = Vec::new();
    for (b, reach) in usable {
        match out.last_mut() {
            // The backup ends inside what the window already reaches.
            Some(w) if b.stop_lsn <= SegmentNo(w.last.1 .0 + 1).start_lsn(size) => {
                w.backups.push(b.clone());
                if reach > w.last.1 {
                    w.last = (chain.timeline_at(reach, size), reach);
                }
            }
            _ => out.push(Window { backups: vec![b.clone()], last: (chain.timeline_at(reach, size), reach) }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::HistoryEntry;
    use crate::pg::Lsn;
    use crate::repo::backup::{BackupId, BackupType};

    const SEG: u64 = 16 << 20;

    fn backup(start_seg: u64, stop_seg: u64, tli: u32) -> BackupInfo {
        BackupInfo {
            id: "20261123T074000F".parse().expect("id"),
            stop_time: chrono::DateTime::from_timestamp(0, 0).expect("time"),
            start_lsn: Lsn(start_seg * SEG + 0x28),
            stop_lsn: Lsn(stop_seg * SEG + 0x100),
            timeline: TimelineId(tli),
            stop_timeline: TimelineId(tli),
        }
    }

    /// TL1 ... TL2 branches at segment 20, TL3 branches off TL1 at segment 10.
    fn tree() -> TimelineTree {
        let mut histories = BTreeMap::new();
        histories.insert(TimelineId(2), vec![HistoryEntry { parent: TimelineId(1), switch_point: Lsn(20 * SEG + 8) }]);
        histories.insert(TimelineId(3), vec![HistoryEntry { parent: TimelineId(1), switch_point: Lsn(10 * SEG + 8) }]);
        TimelineTree { histories, timelines: [1, 2, 3, 4].map(TimelineId).into_iter().collect() }
    }

    #[test]
    fn descendants_follow_the_branches_after_the_backup() {
        let t = tree();
        let tlis = |b: &BackupInfo| t.descendants(&b.span()).iter().map(|c| c.target().0).collect::<Vec<_>>();
        assert_eq!(tlis(&backup(5, 6, 1)), vec![1, 2, 3], "before both branch points");
        assert_eq!(tlis(&backup(12, 13, 1)), vec![1, 2], "after TL3 left TL1");
        assert_eq!(tlis(&backup(25, 26, 1)), vec![1]);
        assert_eq!(tlis(&backup(25, 26, 2)), vec![2]);
        assert_eq!(t.unknown(), vec![TimelineId(4)]);
    }

    fn inventory(tl1: &[u64], tl2: &[u64]) -> WalInventory {
        let mut inv = WalInventory::default();
        for (tli, segs) in [(1, tl1), (2, tl2)] {
            let t = inv.timelines.entry(TimelineId(tli)).or_default();
            t.segments = segs.iter().map(|s| SegmentNo(*s)).collect();
        }
        inv
    }

    /// A gap splits the windows; a backup whose own WAL is missing starts none.
    #[test]
    fn windows_stop_at_gaps() {
        let size = WalSegmentSize::DEFAULT;
        let t = tree();
        let chain1 = t.chain(TimelineId(1)).expect("tl1");
        let mut backups = vec![backup(3, 3, 1), backup(8, 9, 1), backup(12, 12, 1), backup(16, 16, 1)];
        for (i, b) in backups.iter_mut().enumerate() {
            b.id = BackupId::new(chrono::DateTime::from_timestamp(i as i64 * 60, 0).expect("t"), BackupType::Full);
        }
        // Segment 6 missing (between backups 1 and 2), 15 missing too (before backup 4's start).
        let segs: Vec<u64> = (3..=25).filter(|s| *s != 6 && *s != 15).collect();
        let w = recovery_windows(&backups, &chain1, &inventory(&segs, &[]), size);
        let summary: Vec<(Vec<usize>, u64)> = w
            .iter()
            .map(|w| {
                (w.backups.iter().map(|b| backups.iter().position(|x| x.id == b.id).expect("b")).collect(), w.last.1 .0)
            })
            .collect();
        assert_eq!(summary, vec![(vec![0], 5), (vec![1, 2], 14), (vec![3], 25)]);
        // Backup 2's own WAL (segments 8-9) incomplete: it starts no window.
        let segs: Vec<u64> = (3..=25).filter(|s| *s != 9).collect();
        let w = recovery_windows(&backups, &chain1, &inventory(&segs, &[]), size);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].backups.len(), 2, "backups 3 and 4");
        // Along timeline 2 (branching at segment 20): TL1 up to 19, TL2 from 20.
        let chain2 = t.chain(TimelineId(2)).expect("tl2");
        let w = recovery_windows(&backups, &chain2, &inventory(&(3..=19).collect::<Vec<_>>(), &[20, 21, 22]), size);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].last, (TimelineId(2), SegmentNo(22)));
        assert_eq!(w[0].backups.len(), 4);
    }

    #[test]
    fn needs_start_at_the_backup_and_switch_at_branch_points() {
        let t = tree();
        let size = WalSegmentSize::DEFAULT;
        let need = needed_from(&backup(5, 6, 1), &t, size);
        assert_eq!(need.get(&TimelineId(1)), Some(&SegmentNo(5)));
        assert_eq!(need.get(&TimelineId(2)), Some(&SegmentNo(20)), "the switch segment comes from the child");
        assert_eq!(need.get(&TimelineId(3)), Some(&SegmentNo(10)));
        let chain = t.chain(TimelineId(2)).expect("known");
        assert_eq!(
            needed_runs(&backup(5, 6, 1), &chain, Some(SegmentNo(30)), size),
            vec![(TimelineId(1), SegmentNo(5), SegmentNo(19)), (TimelineId(2), SegmentNo(20), SegmentNo(30))]
        );
        assert_eq!(
            needed_runs(&backup(5, 7, 1), &t.chain(TimelineId(1)).expect("tl1"), None, size),
            vec![(TimelineId(1), SegmentNo(5), SegmentNo(7))],
            "at least the backup's own WAL"
        );
    }
}
