//! `pgwal list [--json]`: the complete backups (those whose manifest is
//! stored) sorted by stop time, and the archived WAL per timeline with its
//! gaps and the windows recovery along it can reach (from the oldest usable
//! backup's end to the last segment without a gap; see
//! [`crate::repo::coverage::recovery_windows`]). Reads only; a missing
//! repository is an error.
//!
//! The `--json` form is API (monitoring reads it): fields are only ever
//! added. Its shape is documented in the command's long help (man page).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::human::{human_age, human_size};
use crate::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::backup::{BackupId, BackupType, Manifest};
use crate::repo::catalog::{Backups, Catalog, Scope, Unreadable, WalListing};
use crate::repo::Repository;

/// One backup as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    /// Backup ID.
    pub id: String,
    /// `full` or `incr`.
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// Parent backup of an incremental one.
    pub parent: Option<String>,
    /// Start time, RFC 3339 UTC.
    pub start_time: String,
    /// Stop time, RFC 3339 UTC: the earliest point the backup recovers to.
    pub stop_time: String,
    /// Start LSN (`X/Y`).
    pub start_lsn: String,
    /// Stop LSN (`X/Y`).
    pub stop_lsn: String,
    /// Timeline at start.
    pub timeline: u32,
    /// Timeline at stop.
    pub stop_timeline: u32,
    /// `server_version_num` of the server backed up.
    pub server_version_num: u32,
    /// Bytes of file content.
    pub data_size: u64,
    /// Bytes stored in packs.
    pub stored_size: u64,
    /// Number of files.
    pub files: usize,
}

/// A run of missing segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// First missing segment.
    pub first: String,
    /// Last missing segment.
    pub last: String,
}

/// The archived WAL of one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    /// Timeline ID.
    pub timeline: u32,
    /// First stored segment (null if only `.partial` segments are stored).
    pub first: Option<String>,
    /// Last stored segment.
    pub last: Option<String>,
    /// Number of stored complete segments.
    pub segments: usize,
    /// Missing runs between first and last.
    pub gaps: Vec<Gap>,
    /// Stored `.partial` segments.
    pub partials: Vec<String>,
    /// Whether the timeline's `.history` file is stored (timeline 1 has none).
    pub history: bool,
    /// What recovery along this timeline (and its ancestors, as its history
    /// says) can reach, oldest first: one window per stretch of WAL without
    /// a gap that a backup starts. Empty when no backup with all its own WAL
    /// leads onto the timeline, or the timeline's history is unknown.
    pub recovery_windows: Vec<RecoveryWindow>,
}

/// A stretch of time a timeline can be recovered to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryWindow {
    /// The oldest backup recovering into the window: it starts at its end.
    pub backup: String,
    /// Every backup recovering into the window, oldest first.
    pub backups: Vec<String>,
    /// Where the window starts: the first backup's stop LSN (`X/Y`).
    pub from_lsn: String,
    /// When it starts: the first backup's stop time (RFC 3339 UTC).
    pub from_time: String,
    /// The last segment archived without a gap after it.
    pub to_segment: String,
    /// The end of that segment (`X/Y`): recovery can replay up to here.
    pub to_lsn: String,
}

/// How fresh the archive is: what monitoring alerts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The newest archived segment (highest timeline, highest segment).
    pub newest_segment: Option<String>,
    /// When it was stored (RFC 3339 UTC, the object's modification time).
    pub newest_segment_time: Option<String>,
    /// Seconds since then.
    pub newest_segment_age_seconds: Option<i64>,
    /// The newest complete backup (by stop time).
    pub newest_backup: Option<String>,
    /// Seconds since it stopped.
    pub newest_backup_age_seconds: Option<i64>,
    /// Number of gaps over all timelines.
    pub gaps: usize,
}

/// What `list` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Complete backups, oldest stop time first.
    pub backups: Vec<BackupSummary>,
    /// Archived WAL per timeline, lowest timeline first.
    pub wal: Vec<TimelineSummary>,
    /// IDs of backups without a manifest: running, or interrupted.
    pub incomplete: Vec<String>,
    /// Ages of the newest segment and backup, and the gap count.
    pub health: Health,
    /// The newest drill of each listed backup that has one, in backup order.
    pub drills: Vec<crate::ops::drill::report::DrillSummary>,
}

fn summarize(m: &Manifest) -> BackupSummary {
    BackupSummary {
        id: m.id.to_string(),
        kind: m.kind,
        parent: m.parent.as_ref().map(BackupId::to_string),
        start_time: m.start_time.clone(),
        stop_time: m.stop_time.clone(),
        start_lsn: m.start_lsn.to_string(),
        stop_lsn: m.stop_lsn.to_string(),
        timeline: m.timeline.0,
        stop_timeline: m.stop_timeline.0,
        server_version_num: m.server_version_num,
        data_size: m.data_size,
        stored_size: m.stored_size,
        files: m.files.len(),
    }
}

/// Seconds from an RFC 3339 time to `now`.
fn age_seconds(t: &str, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| (now - t.to_utc()).num_seconds())
}

/// Reads what `list` shows.
pub async fn listing(repo: &Repository) -> Result<Listing> {
    let mut out = listing_without_health(repo).await?;
    let now = chrono::Utc::now();
    if let Some(b) = out.backups.last() {
        out.health.newest_backup = Some(b.id.clone());
        out.health.newest_backup_age_seconds = age_seconds(&b.stop_time, now);
    }
    out.health.gaps = out.wal.iter().map(|t| t.gaps.len()).sum();
    let newest = out.wal.iter().rev().find_map(|t| t.last.clone());
    if let Some(name) = newest {
        if let Ok(parsed) = name.parse::<WalFileName>() {
            let key = crate::repo::keys::wal(&parsed);
            // Only the time is missing: a vanished or unreadable object leaves it out.
            if let Some(modified) = repo.modified_once(&key).await {
                out.health.newest_segment_time = Some(modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                out.health.newest_segment_age_seconds = Some((now - modified).num_seconds());
            }
        }
        out.health.newest_segment = Some(name);
    }
    Ok(out)
}

/// Backups and WAL, without the ages.
async fn listing_without_health(repo: &Repository) -> Result<Listing> {
    let crate::repo::RepoIdentity { format_exists, cluster: identity } = repo.identity().await?;
    if !format_exists {
        return Err(Error::RepositoryMissing { url: repo.url().to_string() });
    }
    // Without a recorded cluster nothing was archived yet: no segment size, no WAL.
    let size = identity.and_then(|i| WalSegmentSize::new(i.wal_segment_size));
    let scope = Scope {
        backups: Backups::All,
        wal: size.map_or(WalListing::None, WalListing::Inventory),
        histories: size.is_some(),
        // One that cannot be read leaves its timeline without windows: 'pgwal verify' names it.
        unreadable_histories: Unreadable::Record,
        drills: true,
        ..Scope::default()
    };
    let catalog = Catalog::load(repo, &scope).await?;
    let (manifests, incomplete) = catalog.complete_backups()?;
    let mut out = Listing {
        backups: manifests.into_iter().map(summarize).collect(),
        wal: Vec::new(),
        incomplete,
        health: Health::default(),
        drills: Vec::new(),
    };
    // The newest drill of each complete backup.
    out.drills = catalog
        .drills
        .values()
        .filter(|r| out.backups.iter().any(|b| b.id == r.backup.as_str()))
        .map(crate::ops::drill::report::DrillSummary::of)
        .collect();
    let Some(size) = size else { return Ok(out) };
    let inventory = catalog.wal();
    let name = |tli: TimelineId, s: SegmentNo| WalFileName::segment(tli, s, size).to_string();
    let mut timelines: Vec<TimelineId> = inventory.timelines.keys().copied().collect();
    for h in &inventory.histories {
        if !timelines.contains(h) {
            timelines.push(*h);
        }
    }
    timelines.sort();
    // The history files, for windows that cross timelines.
    let tree = catalog.timeline_tree();
    for tli in timelines {
        let windows = match tree.chain(tli) {
            Some(chain) => catalog
                .recovery_windows(&chain, size)
                .into_iter()
                .map(|w| RecoveryWindow {
                    backup: w.first().id.to_string(),
                    backups: w.backups.iter().map(|b| b.id.to_string()).collect(),
                    from_lsn: w.first().stop_lsn.to_string(),
                    from_time: w.first().stop_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    to_segment: name(w.last.0, w.last.1),
                    to_lsn: SegmentNo(w.last.1 .0 + 1).start_lsn(size).to_string(),
                })
                .collect(),
            None => Vec::new(),
        };
        let wal = inventory.timelines.get(&tli).cloned().unwrap_or_default();
        out.wal.push(TimelineSummary {
            timeline: tli.0,
            first: wal.range().map(|(f, _)| name(tli, f)),
            last: wal.range().map(|(_, l)| name(tli, l)),
            segments: wal.segments.len(),
            gaps: wal.gaps().into_iter().map(|(a, b)| Gap { first: name(tli, a), last: name(tli, b) }).collect(),
            partials: wal.partials.iter().map(|&p| format!("{}.partial", name(tli, p))).collect(),
            history: inventory.histories.contains(&tli),
            recovery_windows: windows,
        });
    }
    Ok(out)
}

/// `2026-11-23T07:40:00Z` as `2026-11-23 07:40:00`.
fn short_time(t: &str) -> String {
    t.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The listing as text for people.
pub fn render_text(l: &Listing) -> String {
    let mut out = String::new();
    if l.backups.is_empty() {
        out.push_str("no complete backups\n");
    } else {
        let header =
            ["ID", "TYPE", "PARENT", "START (UTC)", "STOP (UTC)", "START LSN", "STOP LSN", "TLI", "DATA", "STORED"];
        let rows: Vec<Vec<String>> = l
            .backups
            .iter()
            .map(|b| {
                vec![
                    b.id.clone(),
                    b.kind.as_str().to_string(),
                    b.parent.clone().unwrap_or_else(|| "-".into()),
                    short_time(&b.start_time),
                    short_time(&b.stop_time),
                    b.start_lsn.clone(),
                    b.stop_lsn.clone(),
                    b.timeline.to_string(),
                    human_size(b.data_size),
                    human_size(b.stored_size),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            format!("{}\n", padded.join("  ").trim_end())
        };
        out.push_str(&line(header.to_vec()));
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
    }
    if !l.incomplete.is_empty() {
        out.push_str(&format!(
            "({} backup(s) without a manifest not listed, running or interrupted: {})\n",
            l.incomplete.len(),
            l.incomplete.join(", ")
        ));
    }
    out.push('\n');
    if l.wal.is_empty() {
        out.push_str("no archived WAL\n");
    }
    for t in &l.wal {
        let range = match (&t.first, &t.last) {
            (Some(f), Some(last)) => format!("{f} .. {last} ({} segments)", t.segments),
            _ => "no complete segments".into(),
        };
        out.push_str(&format!("WAL timeline {}: {range}", t.timeline));
        if t.gaps.is_empty() {
            out.push_str(", no gaps");
        } else {
            let gaps: Vec<String> = t
                .gaps
                .iter()
                .map(|g| if g.first == g.last { g.first.clone() } else { format!("{} .. {}", g.first, g.last) })
                .collect();
            out.push_str(&format!(", GAPS: {}", gaps.join(", ")));
        }
        if !t.partials.is_empty() {
            out.push_str(&format!(", partial: {}", t.partials.join(", ")));
        }
        out.push('\n');
        for w in &t.recovery_windows {
            let from = if w.backups.len() == 1 {
                format!("backup {}", w.backup)
            } else {
                format!("backup {} and {} later", w.backup, w.backups.len() - 1)
            };
            out.push_str(&format!(
                "  recoverable: {} ({}, end of {from}) .. {} (end of {})\n",
                w.from_lsn,
                short_time(&w.from_time),
                w.to_lsn,
                w.to_segment
            ));
        }
        if t.recovery_windows.is_empty() && !l.backups.is_empty() && t.segments > 0 {
            out.push_str("  recoverable: nothing (no backup with all its WAL leads onto this timeline)\n");
        }
    }
    for d in &l.drills {
        out.push_str(&format!("{}\n", d.line()));
    }
    let h = &l.health;
    match (&h.newest_segment, h.newest_segment_age_seconds) {
        (Some(s), Some(age)) => out.push_str(&format!("newest WAL segment {s}, archived {} ago", human_age(age))),
        (Some(s), None) => out.push_str(&format!("newest WAL segment {s}")),
        (None, _) => out.push_str("no WAL segment archived"),
    }
    match (&h.newest_backup, h.newest_backup_age_seconds) {
        (Some(b), Some(age)) => out.push_str(&format!("; newest backup {b}, stopped {} ago\n", human_age(age))),
        _ => out.push_str("; no complete backup\n"),
    }
    out
}

/// The listing as the documented JSON object.
pub fn render_json(l: &Listing) -> String {
    serde_json::to_string_pretty(l).expect("invariant: plain structs serialize")
}

/// `pgwal list`: the text or JSON to print.
pub fn list(rt: &tokio::runtime::Runtime, repo: &Repository, json: bool) -> Result<String> {
    let l = rt.block_on(listing(repo))?;
    Ok(if json { render_json(&l) } else { render_text(&l) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Listing {
        Listing {
            backups: vec![BackupSummary {
                id: "20261123T074000F".into(),
                kind: BackupType::Full,
                parent: None,
                start_time: "2026-11-23T07:40:00Z".into(),
                stop_time: "2026-11-23T07:40:05Z".into(),
                start_lsn: "0/2000028".into(),
                stop_lsn: "0/2000100".into(),
                timeline: 1,
                stop_timeline: 1,
                server_version_num: 150018,
                data_size: 23 << 20,
                stored_size: 3 << 20,
                files: 950,
            }],
            wal: vec![TimelineSummary {
                timeline: 1,
                first: Some("000000010000000000000001".into()),
                last: Some("000000010000000000000009".into()),
                segments: 7,
                gaps: vec![Gap { first: "000000010000000000000004".into(), last: "000000010000000000000005".into() }],
                partials: vec![],
                history: false,
                recovery_windows: vec![RecoveryWindow {
                    backup: "20261123T074000F".into(),
                    backups: vec!["20261123T074000F".into()],
                    from_lsn: "0/2000100".into(),
                    from_time: "2026-11-23T07:40:05Z".into(),
                    to_segment: "000000010000000000000003".into(),
                    to_lsn: "0/4000000".into(),
                }],
            }],
            incomplete: vec!["20261124T000000F".into()],
            health: Health {
                newest_segment: Some("000000010000000000000009".into()),
                newest_segment_time: Some("2026-11-23T07:50:00Z".into()),
                newest_segment_age_seconds: Some(125),
                newest_backup: Some("20261123T074000F".into()),
                newest_backup_age_seconds: Some(7 * 3600 + 60),
                gaps: 1,
            },
            drills: Vec::new(),
        }
    }

    #[test]
    fn text_shows_backups_gaps_and_incomplete() {
        let text = render_text(&sample());
        assert!(text.contains("20261123T074000F  full  -"), "{text}");
        assert!(text.contains("23.0 MiB"), "{text}");
        assert!(text.contains("GAPS: 000000010000000000000004 .. 000000010000000000000005"), "{text}");
        assert!(text.contains("without a manifest not listed"), "{text}");
        assert!(
            text.contains(
                "  recoverable: 0/2000100 (2026-11-23 07:40:05, end of backup 20261123T074000F) .. 0/4000000 (end of 000000010000000000000003)"
            ),
            "{text}"
        );
        assert!(text.contains("newest WAL segment 000000010000000000000009, archived 2m 5s ago"), "{text}");
        assert!(text.contains("newest backup 20261123T074000F, stopped 7h 1m ago"), "{text}");
    }

    /// The documented JSON shape: changing it breaks users' monitoring.
    #[test]
    fn json_shape_is_stable() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).expect("json");
        let b = &v["backups"][0];
        for key in [
            "id",
            "type",
            "parent",
            "start_time",
            "stop_time",
            "start_lsn",
            "stop_lsn",
            "timeline",
            "stop_timeline",
            "server_version_num",
            "data_size",
            "stored_size",
            "files",
        ] {
            assert!(b.get(key).is_some(), "backups[].{key}");
        }
        assert_eq!(b["type"], "full");
        assert_eq!(b["stop_lsn"], "0/2000100");
        let w = &v["wal"][0];
        for key in ["timeline", "first", "last", "segments", "gaps", "partials", "history", "recovery_windows"] {
            assert!(w.get(key).is_some(), "wal[].{key}");
        }
        let r = &w["recovery_windows"][0];
        for key in ["backup", "backups", "from_lsn", "from_time", "to_segment", "to_lsn"] {
            assert!(r.get(key).is_some(), "wal[].recovery_windows[].{key}");
        }
        assert_eq!(r["to_lsn"], "0/4000000");
        assert_eq!(w["gaps"][0]["first"], "000000010000000000000004");
        assert_eq!(v["incomplete"][0], "20261124T000000F");
        let h = &v["health"];
        for key in [
            "newest_segment",
            "newest_segment_time",
            "newest_segment_age_seconds",
            "newest_backup",
            "newest_backup_age_seconds",
            "gaps",
        ] {
            assert!(h.get(key).is_some(), "health.{key}");
        }
    }

    /// A chained (format 2) backup lists with its type and parent, in text and JSON.
    #[test]
    fn chained_backups_list_with_type_and_parent() {
        use crate::pg::{Lsn, SegmentNo, TimelineId, WalSegmentSize};
        use crate::repo::synthetic;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let repo = Repository::in_memory();
        let size = WalSegmentSize::new(1 << 20).expect("size");
        let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
        let (full, incr) = rt.block_on(async {
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=6 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let full = synthetic::put_backup(&repo, 7, TimelineId(1), Lsn(0x20_0028), Lsn(0x20_0100), at(1))
                .await
                .expect("full");
            let incr = synthetic::put_chained(&repo, &full, BackupType::Incr, Lsn(0x40_0028), Lsn(0x40_0100), at(2))
                .await
                .expect("incr");
            (full.id.to_string(), incr.id.to_string())
        });
        let l = rt.block_on(listing(&repo)).expect("listing");
        let text = render_text(&l);
        assert!(text.contains(&format!("{full}  full  -")), "{text}");
        assert!(text.contains(&format!("{incr}  incr  {full}")), "{text}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&l)).expect("json");
        let b = v["backups"].as_array().expect("backups");
        let i = b.iter().find(|b| b["id"] == incr.as_str()).expect("the incr is listed");
        assert_eq!(i["type"], "incr");
        assert_eq!(i["parent"], full.as_str());
        let f = b.iter().find(|b| b["id"] == full.as_str()).expect("the full is listed");
        assert_eq!(f["type"], "full");
        assert!(f["parent"].is_null());
    }
}
