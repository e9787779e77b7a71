//! `pgwal verify [--backup ID] [--quick] [--json]`: is every backup
//! recoverable to every point after it?
//!
//! - Each backup's manifest is read (which checks its SHA-256); every pack it
//!   names is read back, decompressed and hashed against the manifest, and
//!   every file's SHA-256 is recomputed from its extents. A diff/incr backup's
//!   extents in older backups' packs are read from those packs (a problem
//!   there names the backup reading it); a dependency that is missing or
//!   whose manifest is damaged is a `missing_dependency` naming the
//!   dependent. Block maps (`map/` objects) are read back like packs.
//! - The timeline tree is built from the `.history` files; every timeline
//!   above 1 up to the newest must have one.
//! - For each backup and each timeline descending from it, every segment
//!   from the backup's start through its stop and on to the newest segment
//!   archived on that timeline must be there (switching timelines at each
//!   history's switch point); a missing segment names every backup whose
//!   recovery crosses it. Every stored WAL file is read back and hashed;
//!   complete segments must be whole segments whose first page matches the
//!   name and the cluster.
//! - A gap no backup needs, and a backup directory without a manifest (a
//!   running or interrupted backup: `expire` cleans those up) are warnings.
//!
//! `--quick` reads no data: names and sizes from listings, the manifests
//! and the history files only. Objects are read `jobs` at a time; memory
//! stays bounded by that many objects in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ops::restore::select::{newest_segment, BackupInfo};
use crate::pg::timeline::TimelineTree;
use crate::pg::validate::validate_segment_head;
use crate::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::backup::{manifest_key, pack_key, BackupId, Manifest, PackInfo};
use crate::repo::catalog::{Backups, Catalog, HistoryState, ManifestState, Scope, WalInventory, WalListing};
use crate::repo::coverage::needed_runs;
use crate::repo::frame;
use crate::repo::{keys, ClusterIdentity, Repository};

pub use crate::config::verify::VerifyOptions;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A retained backup cannot be recovered as promised: exit non-zero.
    Error,
    /// Worth knowing, harmless to recovery.
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// A stable keyword: `corrupt_object`, `missing_object`, `size_mismatch`,
    /// `file_checksum`, `missing_wal`, `missing_history`, `wal_gap`,
    /// `incomplete_backup`, `wrong_cluster`, `missing_dependency`.
    pub kind: &'static str,
    /// The object key concerned, if one.
    pub object: Option<String>,
    /// The WAL segment (or first of a run) concerned, if one.
    pub segment: Option<String>,
    /// The backup concerned, if one (the oldest, when several are).
    pub backup: Option<String>,
    /// Every backup concerned, oldest stop time first: for `missing_wal`,
    /// each backup whose recovery to the newest archived WAL crosses the gap.
    pub backups: Vec<String>,
    /// One line for people.
    pub message: String,
}

/// What was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// Backups (with a manifest) checked.
    pub backups: usize,
    /// Packs read (full) or listed (quick).
    pub packs: usize,
    /// Files whose SHA-256 was recomputed.
    pub files: usize,
    /// WAL files (segments, partials, .backup files) read (full) or listed (quick).
    pub wal_files: usize,
    /// History files read.
    pub histories: usize,
    /// Original (uncompressed) bytes read and hashed.
    pub original_bytes: u64,
    /// Stored bytes read.
    pub stored_bytes: u64,
}

/// The outcome, also the `--json` document.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// True when there is no error (warnings allowed).
    pub ok: bool,
    /// Whether this was a quick (listing-only) run.
    pub quick: bool,
    /// Counts of what was checked.
    pub checked: Checked,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Errors first, then warnings.
    pub problems: Vec<Problem>,
}

impl Report {
    fn push(&mut self, severity: Severity, kind: &'static str, message: String) -> &mut Problem {
        self.problems.push(Problem {
            severity,
            kind,
            object: None,
            segment: None,
            backup: None,
            backups: Vec::new(),
            message,
        });
        self.problems.last_mut().expect("invariant: just pushed")
    }

    /// Adds another report's findings and counts to this one.
    fn merge(&mut self, other: Report) {
        self.problems.extend(other.problems);
        let (c, o) = (&mut self.checked, other.checked);
        c.packs += o.packs;
        c.files += o.files;
        c.wal_files += o.wal_files;
        c.histories += o.histories;
        c.original_bytes += o.original_bytes;
        c.stored_bytes += o.stored_bytes;
    }

    fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.severity == Severity::Error).count()
    }

    /// Text for people: one line per problem, then a summary.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            let label = match p.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            out.push_str(&format!("{label}: {}\n", p.message));
        }
        let c = &self.checked;
        let mode = if self.quick { "quick: names and sizes" } else { "read and hashed" };
        out.push_str(&format!(
            "checked {} backup(s), {} pack(s), {} file(s), {} WAL file(s), {} history file(s) ({mode}; {:.1} MiB in {:.1}s)\n",
            c.backups,
            c.packs,
            c.files,
            c.wal_files,
            c.histories,
            c.original_bytes as f64 / (1 << 20) as f64,
            self.seconds
        ));
        let errors = self.errors();
        let warnings = self.problems.len() - errors;
        if errors == 0 {
            out.push_str(&format!("ok: the repository is sound ({warnings} warning(s))\n"));
        } else {
            out.push_str(&format!("FAILED: {errors} error(s), {warnings} warning(s)\n"));
        }
        out
    }

    /// The documented JSON document.
    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("invariant: plain structs serialize")
    }
}

/// The manifests to check: good ones, and problems for the others.
fn manifests(catalog: &Catalog, only: Option<&BackupId>, report: &mut Report) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for entry in &catalog.backups {
        let id = &entry.id;
        let key = manifest_key(id).to_string();
        match &entry.state {
            ManifestState::Complete(m) => out.push(m.clone()),
            ManifestState::OtherBackup(m) => {
                let p = report.push(
                    Severity::Error,
                    "corrupt_object",
                    format!("manifest '{key}' describes backup '{}', not '{id}'", m.id),
                );
                p.object = Some(key);
                p.backup = Some(id.to_string());
            }
            ManifestState::Missing if only.is_some() => {
                return Err(Error::BadRequest {
                    message: format!("there is no complete backup '{id}' in the repository"),
                    hint: Some("'pgwal list' shows the backups; leave out --backup to verify them all".into()),
                })
            }
            ManifestState::Missing => {
                let p = report.push(
                    Severity::Warning,
                    "incomplete_backup",
                    format!(
                        "backup '{id}' has no manifest: it is running or was interrupted ('pgwal expire' removes it)"
                    ),
                );
                p.object = Some(format!("{}/", keys::backup_dir(id.as_str())));
                p.backup = Some(id.to_string());
            }
            ManifestState::Corrupt { reason, .. } => {
                let p = report.push(
                    Severity::Error,
                    "corrupt_object",
                    format!("manifest '{key}' of backup '{id}' is corrupt: {reason}"),
                );
                p.object = Some(key);
                p.backup = Some(id.to_string());
            }
            // Not recorded: the catalog is loaded with `Unreadable::Fail`.
            ManifestState::Unreadable(_) => {}
        }
    }
    out.sort_by(|a, b| (&a.stop_time, a.stop_lsn, &a.id).cmp(&(&b.stop_time, b.stop_lsn, &b.id)));
    Ok(out)
}

/// Which pack extents belong to which file, per (backup holding the pack, pack).
/// Each entry: (file, extent number within the file, offset, size).
type ExtentIndex = BTreeMap<(BackupId, u32), Vec<(usize, usize, u64, u64)>>;

fn extent_index(m: &Manifest) -> ExtentIndex {
    let mut index: ExtentIndex = BTreeMap::new();
    for (i, f) in m.files.iter().enumerate() {
        for (n, e) in f.extents.iter().enumerate() {
            index.entry((e.source(&m.id).clone(), e.pack)).or_default().push((i, n, e.offset, e.size));
        }
    }
    index
}

/// One object a backup reads: a pack (its own or an older backup's) or a block map.
#[derive(Debug, Clone)]
struct ToRead {
    /// The backup holding it.
    holder: BackupId,
    /// Whether it is a `map/` object (no file content).
    map: bool,
    /// What its manifest says of it.
    info: PackInfo,
}

impl ToRead {
    fn key(&self) -> Path {
        if self.map {
            keys::map_key(&self.holder, self.info.number)
        } else {
            pack_key(&self.holder, self.info.number)
        }
    }

    /// `pack 'K' of backup 'X'`, or for another backup's pack `pack 'K' of backup 'Y', which backup 'X' reads,`.
    fn subject(&self, reader: &str) -> String {
        let what = if self.map { "block map" } else { "pack" };
        if self.holder.as_str() == reader {
            format!("{what} '{}' of backup '{reader}'", self.key())
        } else {
            format!("{what} '{}' of backup '{}', which backup '{reader}' reads,", self.key(), self.holder)
        }
    }
}

/// Checks one backup's packs (and the packs of older backups its extents
/// point into, named as read by it), block maps and files. `sources` holds
/// the manifests of the backups it depends on that could be read.
async fn check_packs(
    repo: &Repository,
    m: &Manifest,
    sources: &BTreeMap<BackupId, Manifest>,
    opts: &VerifyOptions,
    report: &mut Report,
) -> Result<()> {
    let id = m.id.to_string();
    let mut index = extent_index(m);
    let mut failed_files: BTreeSet<usize> = BTreeSet::new();
    let mut reads: Vec<ToRead> =
        m.packs.iter().map(|p| ToRead { holder: m.id.clone(), map: false, info: p.clone() }).collect();
    reads.extend(m.maps.iter().map(|p| ToRead { holder: m.id.clone(), map: true, info: p.clone() }));
    let mut unlisted: Vec<(BackupId, u32)> = Vec::new();
    for (holder, pack) in index.keys() {
        let listed = if *holder == m.id {
            m.packs.iter().any(|p| p.number == *pack)
        } else if let Some(src) = sources.get(holder) {
            match src.packs.iter().find(|p| p.number == *pack) {
                Some(info) => {
                    reads.push(ToRead { holder: holder.clone(), map: false, info: info.clone() });
                    true
                }
                None => false,
            }
        } else {
            // A missing or damaged dependency: reported by `check_dependencies`.
            unlisted.push((holder.clone(), *pack));
            continue;
        };
        if !listed {
            unlisted.push((holder.clone(), *pack));
            let f = index.get(&(holder.clone(), *pack)).and_then(|v| v.first()).map_or(0, |e| e.0);
            let whose = if *holder == m.id {
                "it does not list".to_string()
            } else {
                format!("backup '{holder}' does not list")
            };
            let p = report.push(
                Severity::Error,
                "corrupt_object",
                format!("manifest of backup '{id}': file '{}' points into pack {pack} {whose}", m.files[f].path),
            );
            p.object = Some(manifest_key(&m.id).to_string());
            p.backup = Some(id.clone());
        }
    }
    for k in unlisted {
        for (file, _, _, _) in index.remove(&k).unwrap_or_default() {
            failed_files.insert(file);
        }
    }
    let problem = |report: &mut Report, r: &ToRead, kind: &'static str, message: String| {
        let p = report.push(Severity::Error, kind, message);
        p.object = Some(r.key().to_string());
        p.backup = Some(id.clone());
        if r.holder != m.id {
            p.backups = vec![r.holder.to_string(), id.clone()];
        }
    };
    if opts.quick {
        let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
        let holders: BTreeSet<&BackupId> = reads.iter().map(|r| &r.holder).collect();
        for h in holders {
            let listed = repo.list_objects(&keys::backup_dir(h.as_str())).await?;
            sizes.extend(listed.into_iter().map(|o| (o.location.to_string(), o.size)));
        }
        for r in &reads {
            report.checked.packs += 1;
            match sizes.get(&r.key().to_string()) {
                None => problem(report, r, "missing_object", format!("{} is missing", r.subject(&id))),
                Some(&size) if size != r.info.stored_size => problem(
                    report,
                    r,
                    "size_mismatch",
                    format!("{} is {size} bytes, the manifest says {}", r.subject(&id), r.info.stored_size),
                ),
                Some(_) => {}
            }
        }
        return Ok(());
    }
    let index = Arc::new(index);
    let mut hashers: BTreeMap<usize, (Sha256, u64)> = BTreeMap::new();
    // Files with an extent in another backup's pack are not read in extent
    // order: their pieces are kept by extent number and hashed at the end.
    let mixed: BTreeSet<usize> = m
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.extents.iter().any(|e| e.source(&m.id) != &m.id))
        .map(|(i, _)| i)
        .collect();
    let mut pieces: BTreeMap<usize, BTreeMap<usize, Vec<u8>>> = BTreeMap::new();
    // Own packs in pack order (a file may span packs), `jobs` objects in flight.
    let mut stream = futures::stream::iter(reads.iter().cloned())
        .map(|r| {
            let key = r.key();
            async move {
                let object = match repo.get(&key).await {
                    Ok(object) => object,
                    // An encrypted object that does not open is a finding, like one that does not decode.
                    Err(Error::Corrupt { reason, .. }) => {
                        return Ok((r, Some((0, Err(frame::FrameError::Sealed(reason))))))
                    }
                    Err(e) => return Err(e),
                };
                let Some(object) = object else { return Ok::<_, Error>((r, None)) };
                let stored = object.len() as u64;
                // decode checks the content against the header's SHA-256, so
                // the header's digest is the content's: no second pass over it.
                let decoded = tokio::task::spawn_blocking(move || {
                    let header = frame::FrameHeader::parse(&object)?;
                    frame::decode(&object).map(|data| (header.sha256, data))
                })
                .await
                .map_err(|e| Error::Corrupt { key: key.to_string(), reason: format!("decoder failed: {e}") })?;
                Ok((r, Some((stored, decoded))))
            }
        })
        .buffered(opts.jobs.max(1));
    while let Some(item) = stream.try_next().await? {
        let (r, found) = item;
        report.checked.packs += 1;
        let extents: &[(usize, usize, u64, u64)] =
            if r.map { &[] } else { index.get(&(r.holder.clone(), r.info.number)).map_or(&[][..], Vec::as_slice) };
        let failure = match found {
            None => Some(("missing_object", format!("{} is missing", r.subject(&id)))),
            Some((_, Err(e))) => Some(("corrupt_object", format!("{} is corrupt: {e}", r.subject(&id)))),
            Some((stored, Ok((digest, data)))) => {
                report.checked.stored_bytes += stored;
                report.checked.original_bytes += data.len() as u64;
                let sha = frame::hex(&digest);
                if sha != r.info.sha256 || data.len() as u64 != r.info.original_size {
                    Some((
                        "corrupt_object",
                        format!(
                            "{} is not the one the manifest names (SHA-256 {sha}, manifest {})",
                            r.subject(&id),
                            r.info.sha256
                        ),
                    ))
                } else {
                    for &(file, n, offset, size) in extents {
                        let Some(bytes) = data.get(offset as usize..(offset + size) as usize) else {
                            failed_files.insert(file);
                            continue;
                        };
                        if mixed.contains(&file) {
                            pieces.entry(file).or_default().insert(n, bytes.to_vec());
                        } else {
                            let (h, done) = hashers.entry(file).or_insert_with(|| (Sha256::new(), 0));
                            h.update(bytes);
                            *done += size;
                        }
                    }
                    None
                }
            }
        };
        if let Some((kind, message)) = failure {
            problem(report, &r, kind, message);
            for &(file, _, _, _) in extents {
                failed_files.insert(file);
            }
        }
    }
    drop(stream);
    for (file, parts) in pieces {
        let (h, done) = hashers.entry(file).or_insert_with(|| (Sha256::new(), 0));
        for bytes in parts.values() {
            h.update(bytes);
            *done += bytes.len() as u64;
        }
    }
    for (i, f) in m.files.iter().enumerate() {
        report.checked.files += 1;
        if failed_files.contains(&i) {
            continue; // its pack was already reported
        }
        let (sha, size) = match hashers.remove(&i) {
            Some((h, size)) => (frame::hex(&h.finalize().into()), size),
            None => (frame::hex(&frame::sha256(&[])), 0),
        };
        if sha != f.sha256 || size != f.size {
            let p = report.push(
                Severity::Error,
                "file_checksum",
                format!(
                    "file '{}' of backup '{id}' does not match its manifest entry (SHA-256 {sha}, manifest {})",
                    f.path, f.sha256
                ),
            );
            p.object = Some(manifest_key(&m.id).to_string());
            p.backup = Some(id.clone());
        }
    }
    Ok(())
}

/// The manifests of every backup `backups` depend on (their parents and the
/// backups their extents point into), read where not among `backups`; a
/// dependency that is missing or whose manifest is damaged is an error
/// naming the backup that depends on it.
async fn check_dependencies(
    repo: &Repository,
    backups: &[Manifest],
    report: &mut Report,
) -> Result<BTreeMap<BackupId, Manifest>> {
    let mut sources: BTreeMap<BackupId, Manifest> = backups.iter().map(|m| (m.id.clone(), m.clone())).collect();
    let mut bad: BTreeMap<BackupId, String> = BTreeMap::new();
    for m in backups {
        let deps: BTreeSet<BackupId> = m.parent.iter().cloned().chain(m.referenced_backups()).collect();
        for dep in deps {
            if !sources.contains_key(&dep) && !bad.contains_key(&dep) {
                match repo.load_json::<Manifest>(&manifest_key(&dep)).await {
                    Ok(Some(d)) if d.id == dep => {
                        sources.insert(dep.clone(), d);
                    }
                    Ok(Some(d)) => {
                        bad.insert(dep.clone(), format!("whose manifest describes backup '{}'", d.id));
                    }
                    Ok(None) => {
                        bad.insert(dep.clone(), "which is missing".into());
                    }
                    Err(Error::Corrupt { reason, .. }) => {
                        bad.insert(dep.clone(), format!("whose manifest is corrupt: {reason}"));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(why) = bad.get(&dep) {
                let p = report.push(
                    Severity::Error,
                    "missing_dependency",
                    format!("backup '{}' depends on backup '{dep}', {why}", m.id),
                );
                p.object = Some(manifest_key(&dep).to_string());
                p.backup = Some(m.id.to_string());
                p.backups = vec![dep.to_string(), m.id.to_string()];
            }
        }
    }
    Ok(sources)
}

fn backup_info(m: &Manifest) -> BackupInfo {
    BackupInfo {
        id: m.id.clone(),
        stop_time: chrono::DateTime::parse_from_rfc3339(&m.stop_time)
            .map(|t| t.to_utc())
            .unwrap_or(chrono::DateTime::UNIX_EPOCH),
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        timeline: m.timeline,
        stop_timeline: m.stop_timeline,
    }
}

/// The history files in the tree, reporting missing and corrupt ones.
fn timeline_tree(catalog: &Catalog, backups: &[Manifest], report: &mut Report) -> TimelineTree {
    let inv = catalog.wal();
    let mut tree = TimelineTree::default();
    tree.timelines.extend(inv.timelines.keys().copied());
    tree.timelines.extend(inv.histories.iter().copied());
    for m in backups {
        tree.timelines.insert(m.timeline);
        tree.timelines.insert(m.stop_timeline);
    }
    for (&tli, state) in &catalog.histories {
        report.checked.histories += 1;
        match state {
            HistoryState::Known(h) => {
                tree.histories.insert(tli, h.clone());
            }
            HistoryState::Corrupt { key, reason } => {
                let p = report.push(
                    Severity::Error,
                    "corrupt_object",
                    format!("history file '{key}' is corrupt: {reason}"),
                );
                p.object = Some(key.clone());
            }
            // Unreadable ones are not recorded: the catalog is loaded with `Unreadable::Fail`.
            HistoryState::Vanished | HistoryState::Unreadable(_) => {}
        }
    }
    // PostgreSQL looks for the newest timeline by probing history files in
    // sequence: every timeline from 2 to the newest needs one.
    let newest = tree.timelines.iter().max().copied().unwrap_or(TimelineId(1));
    for t in 2..=newest.0 {
        let tli = TimelineId(t);
        if !inv.histories.contains(&tli) {
            let key = keys::wal(&WalFileName::History { tli }).to_string();
            let p = report.push(
                Severity::Error,
                "missing_history",
                format!("history file '{key}' of timeline {tli} is missing: recovery cannot follow timeline {tli} or later ones"),
            );
            p.object = Some(key);
        }
    }
    tree
}

/// Records the missing segments of `tli` from `lo` to `hi` as needed by
/// `backup` (every backup that needs one is named, oldest first).
fn missing_in(
    inv: &WalInventory,
    tli: TimelineId,
    lo: SegmentNo,
    hi: SegmentNo,
    backup: &BackupId,
    out: &mut BTreeMap<(TimelineId, SegmentNo), Vec<BackupId>>,
) {
    for seg in inv.missing(tli, lo, hi) {
        let who = out.entry((tli, seg)).or_default();
        if !who.contains(backup) {
            who.push(backup.clone());
        }
    }
}

/// Groups segment numbers into runs of consecutive ones per timeline with
/// the same value.
fn runs<V: Clone + PartialEq>(
    items: &BTreeMap<(TimelineId, SegmentNo), V>,
) -> Vec<(TimelineId, SegmentNo, SegmentNo, V)> {
    let mut out: Vec<(TimelineId, SegmentNo, SegmentNo, V)> = Vec::new();
    for (&(tli, seg), v) in items {
        match out.last_mut() {
            Some(r) if r.0 == tli && r.2 .0 + 1 == seg.0 && r.3 == *v => r.2 = seg,
            _ => out.push((tli, seg, seg, v.clone())),
        }
    }
    out
}

/// Checks the WAL chains of `backups` (all complete backups, or the one asked
/// for) and reports gaps nobody needs as warnings (as errors when the
/// repository has no backup at all). Returns the segments needed.
fn check_chains(
    inv: &WalInventory,
    tree: &TimelineTree,
    backups: &[Manifest],
    only_one: bool,
    size: WalSegmentSize,
    report: &mut Report,
) -> BTreeSet<(TimelineId, SegmentNo)> {
    let mut missing: BTreeMap<(TimelineId, SegmentNo), Vec<BackupId>> = BTreeMap::new();
    let mut needed: BTreeSet<(TimelineId, SegmentNo)> = BTreeSet::new();
    for m in backups {
        let b = backup_info(m);
        for chain in tree.descendants(&b.span()) {
            let newest = newest_segment(inv, &chain, size).map(|(_, s)| s);
            for (tli, lo, hi) in needed_runs(&b, &chain, newest, size) {
                missing_in(inv, tli, lo, hi, &b.id, &mut missing);
                if let Some(t) = inv.timelines.get(&tli) {
                    let from = t.segments.partition_point(|s| *s < lo);
                    needed.extend(t.segments[from..].iter().take_while(|s| **s <= hi).map(|s| (tli, *s)));
                }
            }
        }
    }
    for (tli, first, last, who) in runs(&missing) {
        let a = WalFileName::segment(tli, first, size);
        let range = if first == last {
            format!("'{a}' is")
        } else {
            format!("'{a}' .. '{}' ({} segments) are", WalFileName::segment(tli, last, size), last.0 - first.0 + 1)
        };
        let names: Vec<String> = who.iter().map(|b| format!("'{b}'")).collect();
        let subject = match names.as_slice() {
            [one] => format!("backup {one}"),
            [rest @ .., last] => format!("backups {} and {last}", rest.join(", ")),
            [] => "no backup".into(),
        };
        let p = report.push(
            Severity::Error,
            "missing_wal",
            format!(
                "WAL segment {range} missing on timeline {tli}: {subject} cannot recover past {}",
                first.start_lsn(size)
            ),
        );
        p.segment = Some(a.to_string());
        p.object = Some(keys::wal(&a).to_string());
        p.backup = who.first().map(BackupId::to_string);
        p.backups = who.iter().map(BackupId::to_string).collect();
    }
    if !only_one {
        let severity = if backups.is_empty() { Severity::Error } else { Severity::Warning };
        for (&tli, t) in &inv.timelines {
            for (first, last) in t.gaps() {
                if missing.contains_key(&(tli, first)) {
                    continue;
                }
                let a = WalFileName::segment(tli, first, size);
                let b = WalFileName::segment(tli, last, size);
                let why = if backups.is_empty() { "" } else { " (no backup needs it)" };
                let p = report.push(
                    severity,
                    "wal_gap",
                    format!("gap in the archived WAL of timeline {tli}: '{a}' .. '{b}'{why}"),
                );
                p.segment = Some(a.to_string());
            }
        }
    }
    needed
}

/// A WAL file read back: stored and original size and the verdict, `None` if it vanished.
type WalCheck = (WalFileName, Option<(u64, u64, Result<(), String>)>);

/// Reads every WAL file in `names` back and checks it.
async fn read_wal(
    repo: &Repository,
    names: Vec<WalFileName>,
    identity: &ClusterIdentity,
    size: WalSegmentSize,
    jobs: usize,
    report: &mut Report,
) -> Result<()> {
    let sysid = identity.system_identifier;
    let results: Vec<WalCheck> = futures::stream::iter(names)
        .map(|name| async move {
            let key = keys::wal(&name);
            let object = match repo.get(&key).await {
                Ok(object) => object,
                Err(Error::Corrupt { reason, .. }) => return Ok((name, Some((0, 0, Err(reason))))),
                Err(e) => return Err(e),
            };
            let Some(object) = object else { return Ok::<_, Error>((name, None)) };
            let stored = object.len() as u64;
            let checked = tokio::task::spawn_blocking(move || check_wal_object(&name, &object, sysid, size))
                .await
                .map_err(|e| Error::Corrupt { key: key.to_string(), reason: format!("decoder failed: {e}") })?;
            Ok((name, Some((stored, checked.0, checked.1))))
        })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    for (name, r) in results {
        report.checked.wal_files += 1;
        let key = keys::wal(&name).to_string();
        let (kind, message) = match r {
            None => ("missing_object", format!("WAL file '{key}' vanished while verify ran")),
            Some((stored, original, Ok(()))) => {
                report.checked.stored_bytes += stored;
                report.checked.original_bytes += original;
                continue;
            }
            Some((_, _, Err(reason))) => ("corrupt_object", format!("WAL file '{key}' is corrupt: {reason}")),
        };
        let p = report.push(Severity::Error, kind, message);
        p.object = Some(key);
        p.segment = Some(name.to_string());
    }
    Ok(())
}

/// Decodes one WAL object, checking its SHA-256, and for segments their size,
/// first page and cluster. Returns the original size.
fn check_wal_object(name: &WalFileName, object: &[u8], sysid: u64, size: WalSegmentSize) -> (u64, Result<(), String>) {
    let head = std::sync::Mutex::new(Vec::new());
    let decoded = frame::decode_with(object, |offset, piece| {
        if offset == 0 {
            let mut h = head.lock().unwrap_or_else(|p| p.into_inner());
            h.extend_from_slice(&piece[..piece.len().min(64)]);
        }
        Ok(())
    });
    let header = match decoded {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return (0, Err(e.to_string())),
        Err(e) => return (0, Err(e.to_string())),
    };
    if !matches!(name, WalFileName::Segment { .. } | WalFileName::Partial { .. }) {
        return (header.original_size, Ok(()));
    }
    let head = head.into_inner().unwrap_or_else(|p| p.into_inner());
    let checked = match name {
        WalFileName::Segment { .. } => {
            validate_segment_head(name, &head, header.original_size).map(|h| h.system_identifier)
        }
        // A partial segment is as long as a segment, zero-filled at the end.
        _ => validate_segment_head(name, &head, size.bytes()).map(|h| h.system_identifier),
    };
    let result = match checked {
        Ok(found) if found != sysid => {
            Err(format!("it belongs to cluster {found}, the repository holds cluster {sysid}"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    (header.original_size, result)
}

/// Runs the checks.
pub async fn verify(repo: &Repository, opts: &VerifyOptions) -> Result<Report> {
    let started = Instant::now();
    let crate::repo::RepoIdentity { format_exists: format, cluster: identity } = repo.identity().await?;
    if !format {
        return Err(Error::RepositoryMissing { url: repo.url().to_string() });
    }
    let mut report = Report { quick: opts.quick, ..Default::default() };
    // The WAL and the histories only with a valid segment size; an invalid
    // one is reported below, after the backups' checks.
    let size = identity.as_ref().and_then(|i| WalSegmentSize::new(i.wal_segment_size));
    let scope = Scope {
        backups: opts.backup.clone().map_or(Backups::All, Backups::Only),
        wal: size.map_or(WalListing::None, WalListing::Inventory),
        histories: size.is_some(),
        ..Scope::default()
    };
    let catalog = Catalog::load(repo, &scope).await?;
    let backups = manifests(&catalog, opts.backup.as_ref(), &mut report)?;
    for m in &backups {
        report.checked.backups += 1;
        if let Some(i) = &identity {
            if m.system_identifier != i.system_identifier.to_string() {
                let p = report.push(
                    Severity::Error,
                    "wrong_cluster",
                    format!(
                        "backup '{}' is of cluster {}, the repository holds cluster {}",
                        m.id, m.system_identifier, i.system_identifier
                    ),
                );
                p.backup = Some(m.id.to_string());
            }
        }
    }
    // Packs and WAL are read at the same time: both phases alternate between
    // I/O and hashing, so overlapping them keeps every core busy.
    let sources = check_dependencies(repo, &backups, &mut report).await?;
    let mut packs_report = Report::default();
    let packs = async {
        for m in &backups {
            check_packs(repo, m, &sources, opts, &mut packs_report).await?;
        }
        Ok::<(), Error>(())
    };
    let Some(identity) = identity else {
        packs.await?;
        report.merge(packs_report);
        if !backups.is_empty() {
            report.push(
                Severity::Error,
                "missing_wal",
                "the repository records no cluster and holds no WAL, but has backups".into(),
            );
        }
        return Ok(finish(report, started));
    };
    let size = WalSegmentSize::new(identity.wal_segment_size).ok_or_else(|| Error::Corrupt {
        key: keys::cluster().to_string(),
        reason: format!("invalid WAL segment size {}", identity.wal_segment_size),
    })?;
    let inv = catalog.wal();
    let tree = timeline_tree(&catalog, &backups, &mut report);
    let needed = check_chains(inv, &tree, &backups, opts.backup.is_some(), size, &mut report);
    let mut names: Vec<WalFileName> = Vec::new();
    for (&tli, t) in &inv.timelines {
        let wanted = |s: &SegmentNo| opts.backup.is_none() || needed.contains(&(tli, *s));
        names.extend(t.segments.iter().filter(|s| wanted(s)).map(|s| WalFileName::segment(tli, *s, size)));
        names.extend(t.partials.iter().filter(|s| wanted(s)).map(|s| match WalFileName::segment(tli, *s, size) {
            WalFileName::Segment { tli, log, seg } => WalFileName::Partial { tli, log, seg },
            other => other,
        }));
    }
    let mut wal_report = Report::default();
    if opts.quick {
        report.checked.wal_files += names.len();
        packs.await?;
    } else {
        let wal = read_wal(repo, names, &identity, size, opts.jobs, &mut wal_report);
        let (p, w) = tokio::join!(packs, wal);
        p?;
        w?;
    }
    report.merge(packs_report);
    report.merge(wal_report);
    Ok(finish(report, started))
}

fn finish(mut report: Report, started: Instant) -> Report {
    for p in &mut report.problems {
        if p.backups.is_empty() {
            p.backups.extend(p.backup.iter().cloned());
        }
    }
    report.problems.sort_by(|a, b| (a.severity, &a.object, &a.message).cmp(&(b.severity, &b.object, &b.message)));
    report.ok = report.errors() == 0;
    report.seconds = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chained backup's block map is read back and hashed like a pack:
    /// sound as stored, a finding when missing or different.
    #[test]
    fn block_maps_are_verified() {
        use crate::pg::Lsn;
        use crate::repo::backup::BackupType;
        use crate::repo::synthetic;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let at = |h: i64| chrono::DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("time");
        rt.block_on(async {
            let repo = Repository::in_memory();
            let size = WalSegmentSize::new(1 << 20).expect("size");
            synthetic::init(&repo, 7, size).await.expect("init");
            for seg in 1..=6 {
                synthetic::put_segment(&repo, TimelineId(1), SegmentNo(seg), 7, size).await.expect("segment");
            }
            let full = synthetic::put_backup(&repo, 7, TimelineId(1), Lsn(0x20_0028), Lsn(0x20_0100), at(1))
                .await
                .expect("full");
            let mut incr =
                synthetic::put_chained(&repo, &full, BackupType::Incr, Lsn(0x40_0028), Lsn(0x40_0100), at(2))
                    .await
                    .expect("incr");
            let content = b"block map of the incr".repeat(10);
            let key = keys::map_key(&incr.id, 0);
            synthetic::put(&repo, &key, &content).await.expect("map");
            let stored = repo.get(&key).await.expect("get").expect("stored").len() as u64;
            let sha = frame::hex(&frame::sha256(&content));
            let map = PackInfo { number: 0, original_size: content.len() as u64, stored_size: stored, sha256: sha };
            incr.maps = vec![map];
            repo.delete(&[manifest_key(&incr.id)]).await.expect("delete");
            repo.store_json(&manifest_key(&incr.id), &incr).await.expect("manifest");
            let opts = VerifyOptions { backup: None, quick: false, jobs: 2 };
            let report = verify(&repo, &opts).await.expect("verify");
            assert!(report.ok, "{}", report.render_text());
            assert_eq!(report.checked.packs, 4, "full's pack, the incr's pack, its map, the full's pack it reads");
            incr.maps[0].sha256 = frame::hex(&frame::sha256(b"other"));
            repo.delete(&[manifest_key(&incr.id)]).await.expect("delete");
            repo.store_json(&manifest_key(&incr.id), &incr).await.expect("manifest");
            let text = verify(&repo, &opts).await.expect("verify").render_text();
            assert!(text.contains(&format!("block map '{key}' of backup '{}' is not the one", incr.id)), "{text}");
            repo.delete(std::slice::from_ref(&key)).await.expect("delete");
            for quick in [false, true] {
                let opts = VerifyOptions { backup: None, quick, jobs: 2 };
                let text = verify(&repo, &opts).await.expect("verify").render_text();
                assert!(text.contains(&format!("block map '{key}' of backup '{}' is missing", incr.id)), "{text}");
            }
        });
    }

    #[test]
    fn runs_group_consecutive_segments() {
        let mut m = BTreeMap::new();
        for s in [3u64, 4, 5, 9] {
            m.insert((TimelineId(1), SegmentNo(s)), ());
        }
        m.insert((TimelineId(2), SegmentNo(10)), ());
        let r: Vec<(u32, u64, u64)> = runs(&m).into_iter().map(|(t, a, b, _)| (t.0, a.0, b.0)).collect();
        assert_eq!(r, vec![(1, 3, 5), (1, 9, 9), (2, 10, 10)]);
    }

    /// The documented JSON shape: scripts read it.
    #[test]
    fn json_shape_is_stable() {
        let mut r = Report { quick: true, ..Default::default() };
        let p = r.push(Severity::Error, "missing_wal", "m".into());
        p.segment = Some("000000010000000000000003".into());
        let r = finish(r, Instant::now());
        let v: serde_json::Value = serde_json::from_str(&r.render_json()).expect("json");
        assert_eq!(v["ok"], false);
        assert_eq!(v["quick"], true);
        for key in ["backups", "packs", "files", "wal_files", "histories", "original_bytes", "stored_bytes"] {
            assert!(v["checked"].get(key).is_some(), "checked.{key}");
        }
        let p = &v["problems"][0];
        assert_eq!(p["severity"], "error");
        assert_eq!(p["kind"], "missing_wal");
        for key in ["object", "segment", "backup", "backups", "message"] {
            assert!(p.get(key).is_some(), "problems[].{key}");
        }
    }
}
