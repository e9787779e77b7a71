//! Synthetic repositories for verify and expire tests: valid segments (1 MiB,
//! with real first-page headers), history files and backups written through
//! pgwal's own repository code into file:// or the S3 test server, and
//! helpers to inspect a local repository's objects.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use pgwal::pg::history::HistoryEntry;
use pgwal::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use pgwal::repo::{synthetic, Repository};

/// The system identifier of synthetic clusters.
pub const SYSID: u64 = 7_300_000_000_000_000_042;

/// 1 MiB segments keep synthetic repositories small and quick to write.
pub fn size() -> WalSegmentSize {
    WalSegmentSize::new(1 << 20).expect("1 MiB is a valid segment size")
}

/// The LSN `offset` bytes into segment `seg`.
pub fn lsn(seg: u64, offset: u64) -> Lsn {
    Lsn(seg * size().bytes() + offset)
}

/// The name of segment `seg` of timeline `tli`.
pub fn seg_name(tli: u32, seg: u64) -> String {
    WalFileName::segment(TimelineId(tli), SegmentNo(seg), size()).to_string()
}

/// The repository a config file points at (file:// or s3://).
pub fn open(config: &Path) -> Result<Repository> {
    let cfg =
        pgwal::config::load(&pgwal::config::Overrides { config: Some(config.to_path_buf()), ..Default::default() })?;
    let url = cfg.require_repo()?.clone();
    let store =
        pgwal::storage::open(&url, &cfg.store, pgwal::storage::Access::CreateIfMissing, Duration::from_secs(30))?;
    Ok(Repository::new(store, url, pgwal::storage::RetryPolicy::with_deadline(Duration::from_secs(30))))
}

/// A runtime for the async repository calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A backup to create: start segment, timeline, stop time in hours after an epoch.
#[derive(Debug, Clone, Copy)]
pub struct BackupSpec {
    pub start_seg: u64,
    pub tli: u32,
    pub hours: i64,
}

/// Writes segments `segs` of `tli`, 16 at a time.
pub async fn segments(repo: &Repository, tli: u32, segs: std::ops::RangeInclusive<u64>) -> Result<()> {
    futures::stream::iter(segs)
        .map(|s| synthetic::put_segment(repo, TimelineId(tli), SegmentNo(s), SYSID, size()))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Creates a backup; returns its ID.
pub async fn backup(repo: &Repository, b: BackupSpec) -> Result<String> {
    let epoch = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")?.to_utc();
    let stop_time = epoch + chrono::Duration::hours(b.hours);
    let m = synthetic::put_backup(
        repo,
        SYSID,
        TimelineId(b.tli),
        lsn(b.start_seg, 0x28),
        lsn(b.start_seg, 0x8000),
        stop_time,
    )
    .await?;
    Ok(m.id.to_string())
}

/// The two-timeline repository most tests use:
/// - timeline 1: segments 1..=60; backups A (segment 5), B (20), C (50);
/// - timeline 2 branches off timeline 1 inside segment 40: segments 40..=70,
///   backup D (55). Timeline 1 went on after the branch (segments 41..=60).
///
/// Returns the backup IDs A, B, C, D (oldest stop time first).
pub async fn two_timelines(repo: &Repository) -> Result<Vec<String>> {
    synthetic::init(repo, SYSID, size()).await?;
    segments(repo, 1, 1..=60).await?;
    segments(repo, 2, 40..=70).await?;
    let switch = HistoryEntry { parent: TimelineId(1), switch_point: lsn(40, 0x100) };
    synthetic::put_history(repo, TimelineId(2), &[switch]).await?;
    let mut ids = Vec::new();
    for spec in [
        BackupSpec { start_seg: 5, tli: 1, hours: 1 },
        BackupSpec { start_seg: 20, tli: 1, hours: 2 },
        BackupSpec { start_seg: 50, tli: 1, hours: 4 },
        BackupSpec { start_seg: 55, tli: 2, hours: 5 },
    ] {
        ids.push(backup(repo, spec).await?);
    }
    Ok(ids)
}

/// Two chains on timeline 1 (segments 1..=40): full A (segment 5) with
/// incr A1 (10) on it, full B (20) with incr B1 (25) on it; each incr's
/// `PG_VERSION` lies in its full's pack (manifest format 2).
///
/// Returns the backup IDs A, A1, B, B1 (oldest stop time first).
pub async fn two_chains(repo: &Repository) -> Result<Vec<String>> {
    use pgwal::repo::backup::BackupType;
    synthetic::init(repo, SYSID, size()).await?;
    segments(repo, 1, 1..=40).await?;
    let epoch = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")?.to_utc();
    let mut ids = Vec::new();
    for (full_seg, incr_seg, hours) in [(5u64, 10u64, 1i64), (20, 25, 3)] {
        let at = |h: i64| epoch + chrono::Duration::hours(h);
        let full =
            synthetic::put_backup(repo, SYSID, TimelineId(1), lsn(full_seg, 0x28), lsn(full_seg, 0x8000), at(hours))
                .await?;
        let incr = synthetic::put_chained(
            repo,
            &full,
            BackupType::Incr,
            lsn(incr_seg, 0x28),
            lsn(incr_seg, 0x8000),
            at(hours + 1),
        )
        .await?;
        ids.push(full.id.to_string());
        ids.push(incr.id.to_string());
    }
    Ok(ids)
}

/// Every file below `root`, relative, sorted (a local repository's objects).
pub fn files(root: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        // A directory may vanish while expire runs: then it holds nothing.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in entries {
            let Ok(e) = e else { continue };
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(root)?.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

/// Flips one byte in the middle of a file.
pub fn flip_byte(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let at = bytes.len() / 2 + 1;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    anyhow::ensure!(status.success(), "cp -a {} {}", from.display(), to.display());
    Ok(())
}

/// Hands a tree written by the test process to the user pgwal runs as.
pub fn give_to_run_as(root: &Path) -> Result<()> {
    let user = crate::common::run_as();
    if user.switch {
        let status = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(root)
            .status()?;
        anyhow::ensure!(status.success(), "chown -R {}", root.display());
    }
    Ok(())
}

/// A config file for a local repository at `dir/repo`, and the repository's root.
pub fn file_config(dir: &crate::common::TestDir, name: &str) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    crate::common::write_private_file(&config, &format!("repo = \"file://{}\"\n", root.display()))?;
    Ok((config, root))
}
