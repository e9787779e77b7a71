//! Which backup a restore uses, and the proof that it plus the archived WAL
//! reaches the recovery target. Pure: works on manifests' summaries, the WAL
//! inventory and the timeline chains ([`crate::pg::timeline`]); the caller
//! does the listing.

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::pg::recovery::{RecoveryTarget, TargetTimeline};
use crate::pg::timeline::{segment_before, segment_of, Chain, TimelineTree};
use crate::pg::{SegmentNo, TimelineId, WalSegmentSize};
use crate::repo::backup::BackupId;
use crate::repo::catalog::WalInventory;
pub use crate::repo::catalog::{first_missing, latest_timeline, newest_segment, BackupInfo};

/// The chain of timeline `tli`, from the history files read so far; a
/// timeline above 1 without one cannot be followed.
pub fn chain_of(tli: TimelineId, tree: &TimelineTree) -> Result<Chain, Error> {
    tree.chain(tli).ok_or_else(|| Error::Unreachable {
        message: format!("timeline {tli} has no history file ({:08X}.history) in the repository", tli.0),
        hint: Some("recovery cannot follow a timeline without its history; choose --target-timeline current or another timeline".into()),
    })
}

/// What a restore asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The target; `None` recovers to the end of the archived WAL.
    pub target: Option<&'a RecoveryTarget>,
    /// Which timeline recovery follows.
    pub timeline: TargetTimeline,
    /// A backup the user named.
    pub backup: Option<&'a BackupId>,
}

/// Picks the backup: the named one, else the newest (by stop time, never by
/// name) whose timelines are on the recovery chain and that ends before the
/// target. `backups` are complete full backups; `chain_for` gives the chain
/// recovery follows from a backup (it depends on the backup only for
/// `--target-timeline current`).
pub fn choose<'b>(
    backups: &'b [BackupInfo],
    req: &Request<'_>,
    chain_for: impl Fn(&BackupInfo) -> Result<Chain, Error>,
) -> Result<(&'b BackupInfo, Chain), Error> {
    if let Some(id) = req.backup {
        let b = backups.iter().find(|b| &b.id == id).ok_or_else(|| Error::BadRequest {
            message: format!("there is no complete backup '{id}' in the repository"),
            hint: Some(
                "'pgwal list' shows the backups; leave out --backup to use the newest that reaches the target".into(),
            ),
        })?;
        let chain = chain_for(b)?;
        check_reaches(b, req, &chain)?;
        return Ok((b, chain));
    }
    let mut sorted: Vec<&BackupInfo> = backups.iter().collect();
    sorted.sort_by_key(|b| std::cmp::Reverse((b.stop_time, b.stop_lsn)));
    let Some(oldest) = sorted.last() else {
        return Err(Error::Unreachable {
            message: "the repository holds no complete backup".into(),
            hint: Some("take one with 'pgwal backup'".into()),
        });
    };
    let mut off_chain = None;
    for b in &sorted {
        let chain = chain_for(b)?;
        if !chain.admits(&b.span()) {
            off_chain.get_or_insert((b.id.clone(), chain.target()));
            continue;
        }
        if check_reaches(b, req, &chain).is_ok() {
            return Ok((b, chain));
        }
    }
    Err(match req.target {
        Some(RecoveryTarget::Time(t)) if t.at < oldest.stop_time => Error::Unreachable {
            message: format!(
                "no backup reaches target time {t}: the oldest backup, '{}', ends at {}",
                oldest.id,
                oldest.stop_time.format("%Y-%m-%d %H:%M:%S+00")
            ),
            hint: Some("a backup recovers only to points after its end; choose a later target time".into()),
        },
        Some(RecoveryTarget::Lsn(l)) if *l < oldest.stop_lsn => Error::Unreachable {
            message: format!(
                "no backup reaches target LSN {l}: the oldest backup, '{}', ends at {}",
                oldest.id, oldest.stop_lsn
            ),
            hint: Some("a backup recovers only to points after its end; choose a later target LSN".into()),
        },
        _ => match off_chain {
            Some((id, tli)) => Error::Unreachable {
                message: format!("no backup reaches the target on timeline {tli} (backup '{id}' is on another branch)"),
                hint: Some("choose --target-timeline current or the backup's timeline".into()),
            },
            None => Error::Unreachable {
                message: format!(
                    "no backup reaches {}",
                    req.target.map_or("the target".to_string(), |t| t.to_string())
                ),
                hint: Some("'pgwal list' shows the backups and the archived WAL".into()),
            },
        },
    })
}

/// Whether `b` can reach the target along `chain`, judged by the backup alone.
fn check_reaches(b: &BackupInfo, req: &Request<'_>, chain: &Chain) -> Result<(), Error> {
    if !chain.admits(&b.span()) {
        return Err(Error::Unreachable {
            message: format!(
                "backup '{}' (timeline {}) is not on the history of target timeline {}",
                b.id,
                b.stop_timeline,
                chain.target()
            ),
            hint: Some("use --target-timeline current to recover along the backup's own timeline".into()),
        });
    }
    match req.target {
        Some(RecoveryTarget::Time(t)) if t.at < b.stop_time => Err(Error::Unreachable {
            message: format!(
                "backup '{}' ends at {}, after target time {t}",
                b.id,
                b.stop_time.format("%Y-%m-%d %H:%M:%S+00")
            ),
            hint: Some(
                "a backup recovers only to points after its end; choose an older backup or leave out --backup".into(),
            ),
        }),
        Some(RecoveryTarget::Lsn(l)) if *l < b.stop_lsn => Err(Error::Unreachable {
            message: format!("backup '{}' ends at LSN {}, after target LSN {l}", b.id, b.stop_lsn),
            hint: Some(
                "a backup recovers only to points after its end; choose an older backup or leave out --backup".into(),
            ),
        }),
        _ => Ok(()),
    }
}

/// How far the archived WAL must reach, beyond the backup's own WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalNeed {
    /// Only the backup's WAL (targets whose position the archive cannot tell: xid, name).
    BackupOnly,
    /// Through this segment (an LSN target).
    Through(SegmentNo),
    /// Through the newest archived segment on the chain (recovery to the end).
    ToEnd,
}

/// Checks that every segment recovery needs is archived: from the backup's
/// start through its stop, then as far as `need` says. The error names the
/// first missing segment.
pub fn check_wal(
    b: &BackupInfo,
    chain: &Chain,
    inv: &WalInventory,
    size: WalSegmentSize,
    need: WalNeed,
) -> Result<(), Error> {
    let start = segment_of(b.start_lsn, size);
    let stop = segment_before(b.stop_lsn, size).max(start);
    if let Some(missing) = first_missing(inv, chain, start, stop, size) {
        return Err(Error::Unreachable {
            message: format!(
                "WAL segment '{missing}' of backup '{}' (from {} to {}) is missing from the repository",
                b.id, b.start_lsn, b.stop_lsn
            ),
            hint: Some("the backup cannot become consistent without it; run 'pgwal verify', or restore an older or newer backup with --backup".into()),
        });
    }
    let (end, what) = match need {
        WalNeed::BackupOnly => return Ok(()),
        WalNeed::Through(seg) => (seg, "the target"),
        WalNeed::ToEnd => match newest_segment(inv, chain, size) {
            Some((_, newest)) => (newest, "the end of the archived WAL"),
            None => return Ok(()),
        },
    };
    if let Some(missing) = first_missing(inv, chain, stop, end, size) {
        return Err(Error::Unreachable {
            message: format!(
                "WAL segment '{missing}' is missing from the repository: recovery from backup '{}' cannot reach {what}",
                b.id
            ),
            hint: Some(
                "run 'pgwal verify'; a target before the gap (--target-time, --target-lsn) or --target-immediate is reachable"
                    .into(),
            ),
        });
    }
    Ok(())
}

/// For a time target: how far the WAL must reach, judged by when segments
/// were archived (`archived_at`; a segment archived at T holds only records
/// from before T). Every segment up to the newest one archived before the
/// target, plus the one after it (the target may lie there), must be present.
/// Returns the segment to check through, or `None` when the archive's newest
/// segment was archived before the target (recovery needs WAL not archived yet).
pub fn time_target_end(
    chain: &Chain,
    inv: &WalInventory,
    size: WalSegmentSize,
    b: &BackupInfo,
    target: DateTime<Utc>,
    archived_at: impl Fn(TimelineId, SegmentNo) -> Option<DateTime<Utc>>,
) -> Option<SegmentNo> {
    let stop = segment_before(b.stop_lsn, size);
    let (_, newest) = newest_segment(inv, chain, size)?;
    let mut last_before = stop;
    for (tli, lo, hi) in chain.ranges(stop, newest, size) {
        let Some(t) = inv.timelines.get(&tli) else { continue };
        for seg in t.segments.iter().filter(|s| **s >= lo && **s <= hi) {
            if archived_at(tli, *seg).is_some_and(|at| at <= target) {
                last_before = last_before.max(*seg);
            }
        }
    }
    if last_before >= newest {
        None
    } else {
        Some(SegmentNo(last_before.0 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::HistoryEntry;
    use crate::pg::recovery::TargetTime;
    use crate::pg::Lsn;
    use crate::repo::catalog::TimelineWal;

    const MB16: u64 = 16 << 20;

    fn size() -> WalSegmentSize {
        WalSegmentSize::DEFAULT
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    fn backup(id: &str, stop_time: &str, start_seg: u64, stop_seg: u64, tli: u32) -> BackupInfo {
        BackupInfo {
            id: id.parse().expect("id"),
            stop_time: t(stop_time),
            start_lsn: Lsn(start_seg * MB16 + 0x28),
            stop_lsn: Lsn(stop_seg * MB16 + 0x100),
            timeline: TimelineId(tli),
            stop_timeline: TimelineId(tli),
        }
    }

    fn inventory(tls: &[(u32, &[u64])]) -> WalInventory {
        let mut inv = WalInventory { segment_size: Some(size()), ..Default::default() };
        for (tli, segs) in tls {
            inv.timelines.insert(
                TimelineId(*tli),
                TimelineWal { segments: segs.iter().map(|s| SegmentNo(*s)).collect(), partials: vec![] },
            );
            if *tli > 1 {
                inv.histories.push(TimelineId(*tli));
            }
        }
        inv
    }

    fn time_target(s: &str) -> RecoveryTarget {
        RecoveryTarget::Time(TargetTime { at: t(s), zone_given: true })
    }

    fn chain1() -> Chain {
        Chain::new(TimelineId(1), &[])
    }

    /// Timeline 2 branched from 1 in the middle of segment 5.
    fn chain2() -> Chain {
        Chain::new(TimelineId(2), &[HistoryEntry { parent: TimelineId(1), switch_point: Lsn(5 * MB16 + 0x500) }])
    }

    fn backups() -> Vec<BackupInfo> {
        // Names sort the other way round from stop times on purpose.
        vec![
            backup("20261123T100000F", "2026-11-23T10:05:00Z", 2, 3, 1),
            backup("20261123T090000F", "2026-11-23T11:05:00Z", 6, 7, 1),
        ]
    }

    #[test]
    fn newest_backup_by_stop_time_before_the_target() {
        let bs = backups();
        let chain = |_: &BackupInfo| Ok(chain1());
        let req = |target| Request { target, timeline: TargetTimeline::Latest, backup: None };
        let (b, _) = choose(&bs, &req(None), chain).expect("newest");
        assert_eq!(b.id.as_str(), "20261123T090000F", "by stop time, not by name");
        let at_10_30 = time_target("2026-11-23T10:30:00Z");
        assert_eq!(choose(&bs, &req(Some(&at_10_30)), chain).expect("older").0.id.as_str(), "20261123T100000F");
        let exactly = time_target("2026-11-23T11:05:00Z");
        assert_eq!(choose(&bs, &req(Some(&exactly)), chain).expect("at stop").0.id.as_str(), "20261123T090000F");
        let lsn = RecoveryTarget::Lsn(Lsn(5 * MB16));
        assert_eq!(choose(&bs, &req(Some(&lsn)), chain).expect("by lsn").0.id.as_str(), "20261123T100000F");
    }

    #[test]
    fn targets_before_every_backup_are_refused() {
        let bs = backups();
        let chain = |_: &BackupInfo| Ok(chain1());
        let early = time_target("2026-11-23T10:00:00Z");
        let req = Request { target: Some(&early), timeline: TargetTimeline::Latest, backup: None };
        let err = choose(&bs, &req, chain).expect_err("before the oldest").to_string();
        assert!(err.contains("oldest backup, '20261123T100000F', ends at 2026-11-23 10:05:00+00"), "{err}");
        let lsn = RecoveryTarget::Lsn(Lsn(MB16));
        let req = Request { target: Some(&lsn), timeline: TargetTimeline::Latest, backup: None };
        assert!(matches!(choose(&bs, &req, chain), Err(Error::Unreachable { .. })));
        let none: Vec<BackupInfo> = vec![];
        let req = Request { target: None, timeline: TargetTimeline::Latest, backup: None };
        assert!(choose(&none, &req, chain).expect_err("no backups").to_string().contains("no complete backup"));
    }

    #[test]
    fn named_backups() {
        let bs = backups();
        let chain = |_: &BackupInfo| Ok(chain1());
        let id: BackupId = "20261123T090000F".parse().expect("id");
        let early = time_target("2026-11-23T10:30:00Z");
        let req = Request { target: Some(&early), timeline: TargetTimeline::Latest, backup: Some(&id) };
        let err = choose(&bs, &req, chain).expect_err("ends after the target").to_string();
        assert!(err.contains("ends at 2026-11-23 11:05:00+00, after target time"), "{err}");
        let unknown: BackupId = "20200101T000000F".parse().expect("id");
        let req = Request { target: None, timeline: TargetTimeline::Latest, backup: Some(&unknown) };
        assert!(matches!(choose(&bs, &req, chain), Err(Error::BadRequest { .. })));
    }

    #[test]
    fn chains_and_their_segments() {
        let c = chain2();
        assert_eq!(c.target(), TimelineId(2));
        assert_eq!(c.timeline_at(SegmentNo(4), size()), TimelineId(1));
        assert_eq!(c.timeline_at(SegmentNo(5), size()), TimelineId(2), "the switch segment comes from the child");
        assert_eq!(c.timeline_at(SegmentNo(9), size()), TimelineId(2));
        // A backup on timeline 1 that stopped before the switch is on the chain; one after is not.
        assert!(c.admits(&backup("20261123T100000F", "2026-11-23T10:05:00Z", 2, 3, 1).span()));
        assert!(!c.admits(&backup("20261123T100000F", "2026-11-23T10:05:00Z", 6, 7, 1).span()));
        assert!(c.admits(&backup("20261123T100000F", "2026-11-23T10:05:00Z", 6, 7, 2).span()));
        assert!(!chain1().admits(&backup("20261123T100000F", "2026-11-23T10:05:00Z", 6, 7, 2).span()));
    }

    #[test]
    fn wal_along_a_chain() {
        let inv = inventory(&[(1, &[2, 3, 4, 7]), (2, &[5, 6, 7, 8])]);
        let c = chain2();
        assert_eq!(first_missing(&inv, &c, SegmentNo(2), SegmentNo(8), size()), None, "1: 2-4, 2: 5-8");
        assert_eq!(newest_segment(&inv, &c, size()), Some((TimelineId(2), SegmentNo(8))));
        let gap = inventory(&[(1, &[2, 3, 4]), (2, &[5, 7, 8])]);
        assert_eq!(
            first_missing(&gap, &c, SegmentNo(2), SegmentNo(8), size()).map(|n| n.to_string()),
            Some("000000020000000000000006".into())
        );
        assert_eq!(first_missing(&gap, &c, SegmentNo(2), SegmentNo(5), size()), None);
        // On timeline 1 alone, segment 5 is needed from timeline 1.
        assert_eq!(
            first_missing(&gap, &chain1(), SegmentNo(2), SegmentNo(5), size()).map(|n| n.to_string()),
            Some("000000010000000000000005".into())
        );
        assert_eq!(latest_timeline(&gap), TimelineId(2));
    }

    #[test]
    fn wal_checks_name_the_missing_segment() {
        let b = backup("20261123T100000F", "2026-11-23T10:05:00Z", 2, 3, 1);
        let inv = inventory(&[(1, &[2, 4, 5, 6])]);
        let err = check_wal(&b, &chain1(), &inv, size(), WalNeed::BackupOnly).expect_err("gap in the backup");
        assert!(err.to_string().contains("'000000010000000000000003' of backup"), "{err}");
        let inv = inventory(&[(1, &[2, 3, 5, 6])]);
        check_wal(&b, &chain1(), &inv, size(), WalNeed::BackupOnly).expect("backup WAL is complete");
        check_wal(&b, &chain1(), &inv, size(), WalNeed::Through(SegmentNo(3))).expect("target before the gap");
        let err = check_wal(&b, &chain1(), &inv, size(), WalNeed::Through(SegmentNo(5))).expect_err("target after");
        assert!(err.to_string().contains("'000000010000000000000004'"), "{err}");
        assert!(check_wal(&b, &chain1(), &inv, size(), WalNeed::ToEnd).is_err(), "the end lies beyond the gap");
        let beyond = check_wal(&b, &chain1(), &inv, size(), WalNeed::Through(SegmentNo(9))).expect_err("not archived");
        assert!(beyond.to_string().contains("'000000010000000000000004'"), "{beyond}");
    }

    #[test]
    fn time_targets_use_archive_times() {
        let b = backup("20261123T100000F", "2026-11-23T10:05:00Z", 2, 3, 1);
        let inv = inventory(&[(1, &[2, 3, 4, 6, 7])]);
        let archived =
            |_: TimelineId, s: SegmentNo| Some(t("2026-11-23T10:00:00Z") + chrono::Duration::minutes(s.0 as i64 * 10));
        // Segment 4 archived at 10:40, 6 at 11:00, 7 at 11:10.
        let end = |at| time_target_end(&chain1(), &inv, size(), &b, t(at), archived);
        assert_eq!(end("2026-11-23T10:35:00Z"), Some(SegmentNo(4)), "the target lies in segment 4 at the latest");
        assert_eq!(end("2026-11-23T10:45:00Z"), Some(SegmentNo(5)), "the target may lie in missing segment 5");
        assert_eq!(end("2026-11-23T11:05:00Z"), Some(SegmentNo(7)));
        assert_eq!(end("2026-11-23T11:30:00Z"), None, "after the newest archived segment");
    }
}
