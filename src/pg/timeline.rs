//! Timeline chains and the segment arithmetic of a timeline switch, pure.
//!
//! Recovery follows one chain of timelines: the target timeline and its
//! ancestors from its `.history` file, each left at its switch point. For a
//! segment number, the WAL file PostgreSQL reads is the one of the newest
//! timeline on the chain that had begun by that segment (a child timeline's
//! first segment holds the parent's WAL up to the switch point).

use std::collections::{BTreeMap, BTreeSet};

use super::history::HistoryEntry;
use super::{Lsn, SegmentNo, TimelineId, WalSegmentSize};

/// The segment holding `lsn`.
pub fn segment_of(lsn: Lsn, size: WalSegmentSize) -> SegmentNo {
    SegmentNo(lsn.0 / size.bytes())
}

/// The segment holding the byte just before `lsn`: where WAL ending at `lsn` ends.
pub fn segment_before(lsn: Lsn, size: WalSegmentSize) -> SegmentNo {
    SegmentNo(lsn.0.saturating_sub(1) / size.bytes())
}

/// Where a stretch of WAL (a backup's) starts and stops, with the timeline
/// in effect at each end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Timeline at the start.
    pub start_timeline: TimelineId,
    /// First LSN.
    pub start_lsn: Lsn,
    /// Timeline at the stop.
    pub stop_timeline: TimelineId,
    /// Where it ends.
    pub stop_lsn: Lsn,
}

/// One timeline of a chain: in effect from `begin` until `end` (its switch point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The timeline.
    pub tli: TimelineId,
    /// Where it branched off its parent (0 for the first).
    pub begin: Lsn,
    /// Where it was left for its child; `None` for the target timeline.
    pub end: Option<Lsn>,
}

/// The timelines recovery follows, oldest first, ending with the target timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain(pub Vec<Link>);

impl Chain {
    /// The chain of `tli` from its history (`history` lists its ancestors, oldest first).
    pub fn new(tli: TimelineId, history: &[HistoryEntry]) -> Chain {
        let mut links = Vec::with_capacity(history.len() + 1);
        let mut begin = Lsn(0);
        for e in history {
            links.push(Link { tli: e.parent, begin, end: Some(e.switch_point) });
            begin = e.switch_point;
        }
        links.push(Link { tli, begin, end: None });
        Chain(links)
    }

    /// The target timeline.
    pub fn target(&self) -> TimelineId {
        self.0.last().map_or(TimelineId(1), |l| l.tli)
    }

    fn link(&self, tli: TimelineId) -> Option<&Link> {
        self.0.iter().find(|l| l.tli == tli)
    }

    /// Whether recovery along this chain can start from WAL spanning `s`
    /// (a backup): its timelines are on the chain and it stopped before its
    /// stop timeline was left.
    pub fn admits(&self, s: &Span) -> bool {
        let start_ok = self.link(s.start_timeline).is_some_and(|l| l.begin <= s.start_lsn);
        let stop_ok = self.link(s.stop_timeline).is_some_and(|l| l.end.is_none_or(|end| s.stop_lsn <= end));
        start_ok && stop_ok
    }

    /// The first segment each link's WAL files cover.
    fn begin_segments(&self, size: WalSegmentSize) -> Vec<SegmentNo> {
        self.0.iter().map(|l| segment_of(l.begin, size)).collect()
    }

    /// The timeline whose file PostgreSQL reads for segment `seg`.
    pub fn timeline_at(&self, seg: SegmentNo, size: WalSegmentSize) -> TimelineId {
        let begins = self.begin_segments(size);
        let i = begins.iter().rposition(|b| *b <= seg).unwrap_or(0);
        self.0[i].tli
    }

    /// For each link, the range of segments read from its timeline, clipped to `from..=to`.
    pub fn ranges(
        &self,
        from: SegmentNo,
        to: SegmentNo,
        size: WalSegmentSize,
    ) -> Vec<(TimelineId, SegmentNo, SegmentNo)> {
        let begins = self.begin_segments(size);
        let mut out = Vec::new();
        for (i, link) in self.0.iter().enumerate() {
            let lo = begins[i].max(from);
            let hi = match begins.get(i + 1) {
                Some(next) if next.0 == 0 => continue,
                Some(next) => SegmentNo(next.0 - 1).min(to),
                None => to,
            };
            if lo <= hi {
                out.push((link.tli, lo, hi));
            }
        }
        out
    }
}

/// The timeline tree as far as the repository records it: the ancestors of
/// every timeline whose `.history` file was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineTree {
    /// Ancestors of each timeline above 1 whose history is known, oldest first.
    pub histories: BTreeMap<TimelineId, Vec<HistoryEntry>>,
    /// Every timeline the repository mentions (WAL, history files, backups).
    pub timelines: BTreeSet<TimelineId>,
}

impl TimelineTree {
    /// The chain of `tli`, if its history is known (timeline 1 has none to know).
    pub fn chain(&self, tli: TimelineId) -> Option<Chain> {
        if tli.0 == 1 {
            return Some(Chain::new(tli, &[]));
        }
        self.histories.get(&tli).map(|h| Chain::new(tli, h))
    }

    /// Timelines above 1 whose history is unknown: nothing can be said about them.
    pub fn unknown(&self) -> Vec<TimelineId> {
        self.timelines.iter().copied().filter(|t| t.0 > 1 && !self.histories.contains_key(t)).collect()
    }

    /// The chains of every known timeline that descends from WAL spanning `s`.
    pub fn descendants(&self, s: &Span) -> Vec<Chain> {
        let mut all: BTreeSet<TimelineId> = self.timelines.clone();
        all.insert(s.stop_timeline);
        all.iter().filter_map(|t| self.chain(*t)).filter(|c| c.admits(s)).collect()
    }
}

/// The chain PostgreSQL follows to reach segment `seg` of timeline `asked`
/// when its target is the newest timeline: the newest timeline above
/// `asked` in `histories` whose chain reads `seg` from `asked`, else
/// `asked`'s own (what `recovery_target_timeline = 'latest'` does).
pub fn chain_through(
    histories: &BTreeMap<TimelineId, Vec<HistoryEntry>>,
    asked: TimelineId,
    seg: SegmentNo,
    size: WalSegmentSize,
) -> Chain {
    histories
        .iter()
        .rev()
        .filter(|(t, _)| **t > asked)
        .map(|(t, h)| Chain::new(*t, h))
        .find(|c| c.timeline_at(seg, size) == asked)
        .unwrap_or_else(|| Chain::new(asked, histories.get(&asked).map_or(&[][..], Vec::as_slice)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB16: u64 = 16 << 20;

    fn size() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn span(start_seg: u64, stop_seg: u64, tli: u32) -> Span {
        Span {
            start_timeline: TimelineId(tli),
            start_lsn: Lsn(start_seg * MB16 + 0x28),
            stop_timeline: TimelineId(tli),
            stop_lsn: Lsn(stop_seg * MB16 + 0x100),
        }
    }

    /// Timeline 2 branched from 1 in the middle of segment 5.
    fn chain2() -> Chain {
        Chain::new(TimelineId(2), &[HistoryEntry { parent: TimelineId(1), switch_point: Lsn(5 * MB16 + 0x500) }])
    }

    #[test]
    fn segments_of_lsns() {
        assert_eq!(segment_of(Lsn(5 * MB16), size()), SegmentNo(5));
        assert_eq!(segment_before(Lsn(5 * MB16), size()), SegmentNo(4), "WAL ending at a boundary");
        assert_eq!(segment_before(Lsn(5 * MB16 + 1), size()), SegmentNo(5));
        assert_eq!(segment_before(Lsn(0), size()), SegmentNo(0));
    }

    #[test]
    fn chains_and_their_segments() {
        let c = chain2();
        assert_eq!(c.target(), TimelineId(2));
        assert_eq!(c.timeline_at(SegmentNo(4), size()), TimelineId(1));
        assert_eq!(c.timeline_at(SegmentNo(5), size()), TimelineId(2), "the switch segment comes from the child");
        assert_eq!(c.timeline_at(SegmentNo(9), size()), TimelineId(2));
        assert!(c.admits(&span(2, 3, 1)), "stopped on timeline 1 before the switch");
        assert!(!c.admits(&span(6, 7, 1)), "stopped on timeline 1 after the switch");
        assert!(c.admits(&span(6, 7, 2)));
        assert!(!Chain::new(TimelineId(1), &[]).admits(&span(6, 7, 2)));
        assert_eq!(
            c.ranges(SegmentNo(2), SegmentNo(8), size()),
            vec![(TimelineId(1), SegmentNo(2), SegmentNo(4)), (TimelineId(2), SegmentNo(5), SegmentNo(8))]
        );
    }

    /// TL1 ... TL2 branches at segment 20, TL3 branches off TL1 at segment 10.
    fn tree() -> TimelineTree {
        let mut histories = BTreeMap::new();
        histories.insert(TimelineId(2), vec![HistoryEntry { parent: TimelineId(1), switch_point: Lsn(20 * MB16 + 8) }]);
        histories.insert(TimelineId(3), vec![HistoryEntry { parent: TimelineId(1), switch_point: Lsn(10 * MB16 + 8) }]);
        TimelineTree { histories, timelines: [1, 2, 3, 4].map(TimelineId).into_iter().collect() }
    }

    #[test]
    fn descendants_follow_the_branches_after_the_span() {
        let t = tree();
        let tlis = |s: Span| t.descendants(&s).iter().map(|c| c.target().0).collect::<Vec<_>>();
        assert_eq!(tlis(span(5, 6, 1)), vec![1, 2, 3], "before both branch points");
        assert_eq!(tlis(span(12, 13, 1)), vec![1, 2], "after TL3 left TL1");
        assert_eq!(tlis(span(25, 26, 1)), vec![1]);
        assert_eq!(tlis(span(25, 26, 2)), vec![2]);
        assert_eq!(t.unknown(), vec![TimelineId(4)]);
        assert_eq!(t.chain(TimelineId(4)), None);
    }

    #[test]
    fn the_newest_timeline_through_a_segment() {
        let t = tree();
        let target =
            |tli: u32, seg: u64| chain_through(&t.histories, TimelineId(tli), SegmentNo(seg), size()).target().0;
        assert_eq!(target(1, 5), 3, "the newest timeline still reads segment 5 from TL1");
        assert_eq!(target(1, 15), 2, "TL3 left TL1 at segment 10");
        assert_eq!(target(1, 25), 1, "no child reads segment 25 from TL1");
        assert_eq!(target(2, 25), 2);
        assert_eq!(target(7, 1), 7, "a timeline without history is its own chain");
    }

    /// A random chain: timelines 1..=n with increasing switch points.
    fn arb_chain() -> impl Strategy<Value = Chain> {
        proptest::collection::vec(0u64..64 * MB16, 0..5).prop_map(|mut points| {
            points.sort();
            let history: Vec<HistoryEntry> = points
                .iter()
                .enumerate()
                .map(|(i, p)| HistoryEntry { parent: TimelineId(i as u32 + 1), switch_point: Lsn(*p) })
                .collect();
            Chain::new(TimelineId(history.len() as u32 + 1), &history)
        })
    }

    proptest! {
        /// `ranges` covers `from..=to` exactly once, in order, and each
        /// segment's range names the timeline `timeline_at` names.
        #[test]
        fn ranges_partition_and_agree_with_timeline_at(c in arb_chain(), from in 0u64..70, len in 0u64..70) {
            let (from, to) = (SegmentNo(from), SegmentNo(from + len));
            let ranges = c.ranges(from, to, size());
            let mut next = from.0;
            for (tli, lo, hi) in &ranges {
                prop_assert_eq!(lo.0, next);
                prop_assert!(lo <= hi);
                for s in lo.0..=hi.0 {
                    prop_assert_eq!(c.timeline_at(SegmentNo(s), size()), *tli);
                }
                next = hi.0 + 1;
            }
            prop_assert_eq!(next, to.0 + 1);
        }

        /// WAL of a non-empty stretch ends in or after the segment it starts in.
        #[test]
        fn segment_before_is_at_most_segment_of(lsn in 1u64..u64::MAX) {
            let (of, before) = (segment_of(Lsn(lsn), size()), segment_before(Lsn(lsn), size()));
            prop_assert!(before <= of && of.0 - before.0 <= 1);
            prop_assert_eq!(before == of, lsn % MB16 != 0);
        }

        /// A chain admits a span on its target timeline that starts after the
        /// target began; `chain_through` reads the asked segment from the asked timeline.
        #[test]
        fn chains_admit_their_own_timeline(c in arb_chain(), extra in 0u64..MB16) {
            let last = *c.0.last().expect("a chain has a link");
            let s = Span { start_timeline: last.tli, start_lsn: Lsn(last.begin.0 + extra),
                           stop_timeline: last.tli, stop_lsn: Lsn(last.begin.0 + extra + 1) };
            prop_assert!(c.admits(&s));
            let history: Vec<HistoryEntry> = c.0.windows(2)
                .map(|w| HistoryEntry { parent: w[0].tli, switch_point: w[1].begin }).collect();
            let histories: BTreeMap<TimelineId, Vec<HistoryEntry>> = [(c.target(), history)].into_iter().collect();
            for link in &c.0 {
                let seg = segment_of(link.begin, size());
                if c.timeline_at(seg, size()) == link.tli {
                    prop_assert_eq!(chain_through(&histories, link.tli, seg, size()).timeline_at(seg, size()), link.tli);
                }
            }
        }
    }
}
