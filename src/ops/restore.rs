//! `pgwal restore` (and the restore behind `pgwal standby`): choose the
//! backup, prove that it plus the archived WAL reaches the target, all before
//! writing anything; then put the files in place in parallel, checked and
//! fsynced, and write the recovery settings. The control file comes last, so
//! a directory is startable only once everything else is in place.
//!
//! Order of writes (a kill at any point leaves a directory PostgreSQL will
//! not start, and running the restore again resumes it):
//! 1. the marker [`files::MARKER`]; with `--delta`, removal of what the backup lacks;
//! 2. directories, tablespace links, files (each checked and fsynced);
//! 3. `backup_label`, `postgresql.auto.conf`, `recovery.signal` / `standby.signal`;
//! 4. fsync of every directory, then `global/pg_control` renamed into place;
//! 5. the marker removed.

pub mod chain;
pub mod files;
pub mod select;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use self::files::{DirState, Layout, Written};
use self::select::{BackupInfo, Request, WalNeed};
use crate::config::restore::{absolute, RestoreOptions};
use crate::error::{Error, Result};
use crate::pg::recovery::{rewrite_auto_conf, RecoveryTarget, TargetTimeline, TARGET_KEYS};
use crate::pg::timeline::{segment_before, segment_of, Chain, TimelineTree};
use crate::pg::WalSegmentSize;
use crate::repo::backup::{manifest_key, BackupId, Manifest};
use crate::repo::catalog::{Backups, Catalog, ManifestState, Scope, Unreadable, WalInventory, WalListing};
use crate::repo::Repository;
use crate::storage::{pgdata, RepoUrl};

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The backup restored.
    pub backup: BackupId,
    /// Files written from the repository.
    pub written: Written,
    /// Files kept as they were (`--delta`).
    pub kept: usize,
    /// Entries removed (`--delta`).
    pub removed: usize,
    /// Things the user should know (printed as notices).
    pub notices: Vec<String>,
    /// How many of `notices` were printed already, before any file was
    /// written (the choice of backup, how the target was read): the rest
    /// are for the caller to print after the progress bar.
    pub notices_printed: usize,
}

impl Outcome {
    /// One line saying what was restored.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "restored backup {}: {} files ({} MiB) from {} packs",
            self.backup,
            self.written.files,
            self.written.bytes >> 20,
            self.written.packs
        );
        if self.kept > 0 || self.removed > 0 {
            line.push_str(&format!(", {} files kept as they were, {} entries removed", self.kept, self.removed));
        }
        line
    }
}

/// Everything decided before the first write.
#[derive(Debug)]
pub struct Plan {
    /// The chosen backup's manifest, validated.
    pub manifest: Arc<Manifest>,
    /// The packs its extents read (its own, and for a diff/incr backup
    /// those of its chain), all checked to be stored.
    pub sources: Arc<chain::Sources>,
    /// The timelines recovery follows.
    pub chain: Chain,
    /// Where everything goes.
    pub layout: Layout,
    /// What the target directory held.
    pub state: DirState,
}

/// Restores as `opts` says. See the module documentation for the order of writes.
pub fn restore(rt: &tokio::runtime::Runtime, repo: &Repository, opts: &RestoreOptions) -> Result<Outcome> {
    let mut notices = Vec::new();
    let plan = prepare(rt, repo, opts, &mut notices)?;
    print_notices(&notices);
    let outcome = write(rt, repo, opts, &plan, notices)?;
    Ok(outcome)
}

/// Notices about the plan, printed before the progress bar starts so that
/// they are read before the work rather than after it.
pub fn print_notices(notices: &[String]) {
    for notice in notices {
        crate::log_notice!("{notice}");
    }
}

/// Every check, and the choice of backup, without writing anything.
pub fn prepare(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    opts: &RestoreOptions,
    notices: &mut Vec<String>,
) -> Result<Plan> {
    let state = files::inspect(&opts.target_dir)?;
    if state == DirState::Populated && !opts.delta {
        return Err(Error::BadRequest {
            message: format!("target directory '{}' is not empty", opts.target_dir.display()),
            hint: Some(
                "restore into a new or empty directory, or add --delta to restore over an earlier copy of this cluster"
                    .into(),
            ),
        });
    }
    if state == DirState::Interrupted && !opts.delta {
        notices.push(format!("resuming the unfinished restore in '{}'", opts.target_dir.display()));
    }
    if let Some(RecoveryTarget::Time(t)) = &opts.target {
        if !t.zone_given {
            notices.push(format!("target time has no time zone: read as UTC, {t}"));
        }
    }
    let (manifest, chain) = rt.block_on(choose_backup(repo, opts, notices))?;
    files::validate_manifest(&manifest)?;
    let sources = rt.block_on(chain::resolve(repo, &manifest, opts.jobs))?;
    if !manifest.files.iter().any(|f| f.tablespace.is_none() && f.path == files::PG_CONTROL) {
        return Err(Error::Corrupt {
            key: manifest_key(&manifest.id).to_string(),
            reason: format!("the manifest lists no {}", files::PG_CONTROL),
        });
    }
    let layout = layout(&manifest, opts)?;
    let overwrite = opts.delta || state == DirState::Interrupted;
    files::check_tablespace_targets(&manifest, &layout, overwrite)?;
    if !matches!(opts.repo, RepoUrl::File(_)) && opts.config_file.is_none() && cloud_env_in_use() {
        notices.push(
            "the repository's credentials come from the environment: the restored server runs restore_command \
             with its own environment, so give it the same variables (or use a config file)"
                .into(),
        );
    }
    Ok(Plan { manifest: Arc::new(manifest), sources: Arc::new(sources), chain, layout, state })
}

fn cloud_env_in_use() -> bool {
    std::env::vars().any(|(k, _)| k.starts_with("AWS_") || k.starts_with("AZURE_") || k.starts_with("GOOGLE_"))
}

/// Where each tablespace goes: its original directory unless the map moves it.
fn layout(m: &Manifest, opts: &RestoreOptions) -> Result<Layout> {
    let mut tablespaces = BTreeMap::new();
    let originals: Vec<(u32, PathBuf)> =
        m.tablespaces.iter().map(|t| absolute(Path::new(&t.location)).map(|p| (t.oid, p))).collect::<Result<_>>()?;
    for (old, _) in &opts.tablespace_map {
        if !originals.iter().any(|(_, loc)| loc == old) {
            let known: Vec<String> =
                originals.iter().map(|(oid, loc)| format!("{} (OID {oid})", loc.display())).collect();
            return Err(Error::BadRequest {
                message: format!("'{}' is not a tablespace directory of backup '{}'", old.display(), m.id),
                hint: Some(if known.is_empty() {
                    "the backup has no tablespaces; leave out --tablespace-map".into()
                } else {
                    format!("its tablespaces are at {}", known.join(", "))
                }),
            });
        }
    }
    for (oid, original) in originals {
        let target =
            opts.tablespace_map.iter().find(|(old, _)| *old == original).map_or(original, |(_, new)| new.clone());
        if target.starts_with(&opts.target_dir) || opts.target_dir.starts_with(&target) {
            return Err(Error::BadRequest {
                message: format!(
                    "tablespace {oid} would go to '{}', which overlaps the target directory '{}'",
                    target.display(),
                    opts.target_dir.display()
                ),
                hint: Some("move it elsewhere with --tablespace-map OLD_DIR=NEW_DIR".into()),
            });
        }
        tablespaces.insert(oid, target);
    }
    Ok(Layout { data_dir: opts.target_dir.clone(), tablespaces })
}

/// Loads the candidate manifests, chooses the backup and checks the WAL.
async fn choose_backup(
    repo: &Repository,
    opts: &RestoreOptions,
    notices: &mut Vec<String>,
) -> Result<(Manifest, Chain)> {
    let (identity, size) = repo.recorded_cluster().await?;
    let only = opts.backup.as_ref();
    let scope = Scope {
        backups: only.cloned().map_or(Backups::All, Backups::Only),
        wal: WalListing::Inventory(size),
        histories: true,
        // One damaged old backup must not keep every other from being restored.
        unreadable_manifests: if only.is_some() { Unreadable::Fail } else { Unreadable::Record },
        ..Scope::default()
    };
    let catalog = Catalog::load(repo, &scope).await?;
    let manifests = candidates(&catalog, only, identity.system_identifier, notices)?;
    let infos: Vec<BackupInfo> = manifests.iter().map(BackupInfo::from_manifest).collect::<Result<_>>()?;
    let inv = catalog.wal();
    let histories = TimelineTree { histories: catalog.readable_histories()?, ..TimelineTree::default() };
    let latest = catalog.latest_timeline();
    let chain_for = |b: &BackupInfo| match opts.timeline {
        TargetTimeline::Latest => select::chain_of(latest.max(b.stop_timeline), &histories),
        TargetTimeline::Current => select::chain_of(b.stop_timeline, &histories),
        TargetTimeline::Id(t) => select::chain_of(t, &histories),
    };
    let req = Request { target: opts.target.as_ref(), timeline: opts.timeline, backup: opts.backup.as_ref() };
    let (chosen, chain) = select::choose(&infos, &req, chain_for)?;
    check_wal(repo, opts, chosen, &chain, inv, size, notices).await?;
    let index = infos.iter().position(|b| b.id == chosen.id).expect("invariant: chosen from these");
    let manifest = manifests.into_iter().nth(index).expect("invariant: one manifest per info");
    Ok((manifest, chain))
}

/// The WAL a restore needs, by target (see `select`); gaps that only might
/// matter become notices.
async fn check_wal(
    repo: &Repository,
    opts: &RestoreOptions,
    b: &BackupInfo,
    chain: &Chain,
    inv: &WalInventory,
    size: WalSegmentSize,
    notices: &mut Vec<String>,
) -> Result<()> {
    let need = match &opts.target {
        None if opts.standby.is_none() => WalNeed::ToEnd,
        Some(RecoveryTarget::Lsn(l)) => WalNeed::Through(segment_of(*l, size)),
        Some(RecoveryTarget::Time(t)) => {
            let stop = segment_before(b.stop_lsn, size);
            let times = repo.archive_times(inv, chain, stop, size).await?;
            match select::time_target_end(chain, inv, size, b, t.at, |tli, seg| times.get(&(tli, seg)).copied()) {
                Some(seg) => WalNeed::Through(seg),
                None => {
                    notices.push(format!(
                        "target time {t} is after the newest archived WAL was archived: recovery needs WAL that is \
                         not in the repository yet, and PostgreSQL stops with an error if it never arrives"
                    ));
                    WalNeed::ToEnd
                }
            }
        }
        _ => WalNeed::BackupOnly,
    };
    select::check_wal(b, chain, inv, size, need)?;
    if need == WalNeed::BackupOnly {
        if let Err(e) = select::check_wal(b, chain, inv, size, WalNeed::ToEnd) {
            notices.push(format!("{e}; recovery cannot replay past it"));
        }
    }
    Ok(())
}

/// The complete backups' manifests, of any type (only `only`, if given), of
/// this cluster. A diff/incr backup's chain is checked once it is chosen.
fn candidates(
    catalog: &Catalog,
    only: Option<&BackupId>,
    system_identifier: u64,
    notices: &mut Vec<String>,
) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for entry in &catalog.backups {
        let id = &entry.id;
        let m = match &entry.state {
            ManifestState::Complete(m) | ManifestState::OtherBackup(m) => m,
            ManifestState::Missing if only.is_some() => {
                return Err(Error::BadRequest {
                    message: format!("there is no complete backup '{id}' in the repository"),
                    hint: Some("'pgwal list' shows the backups (one without a manifest was interrupted)".into()),
                });
            }
            ManifestState::Missing => continue,
            ManifestState::Corrupt { key, reason } => {
                let e = Error::Corrupt { key: key.clone(), reason: reason.clone() };
                if only.is_some() {
                    return Err(e);
                }
                notices.push(format!("skipping backup '{id}': {e}"));
                continue;
            }
            // Recorded only when no backup was named.
            ManifestState::Unreadable(e) => {
                notices.push(format!("skipping backup '{id}': {e}"));
                continue;
            }
        };
        let sysid = m.system_identifier.parse::<u64>().unwrap_or(0);
        if sysid != system_identifier {
            return Err(Error::WrongCluster {
                what: format!("backup '{id}'"),
                expected: system_identifier,
                found: sysid,
            });
        }
        if &m.id != id {
            return Err(Error::Corrupt {
                key: manifest_key(id).to_string(),
                reason: format!("the manifest is that of backup '{}'", m.id),
            });
        }
        out.push(m.clone());
    }
    Ok(out)
}

/// Writes the planned restore (steps 1 to 5 of the module documentation).
pub fn write(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    opts: &RestoreOptions,
    plan: &Plan,
    notices: Vec<String>,
) -> Result<Outcome> {
    let notices_printed = notices.len();
    let dir = &opts.target_dir;
    let m = plan.manifest.as_ref();
    if plan.state == DirState::Missing {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("cannot create directory", parent))?;
        }
    }
    pgdata::create_dir(dir, 0o700).map_err(Error::io("cannot create target directory", dir))?;
    let marker = dir.join(files::MARKER);
    let stamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    pgdata::write_file(&marker, format!("backup {}\nstarted {stamp}\n", m.id).as_bytes(), 0o600)
        .map_err(Error::io("cannot write into target directory", dir))?;
    let overwrite = opts.delta || plan.state == DirState::Interrupted;
    let removed = if overwrite { files::clean(m, &plan.layout)? } else { 0 };
    let dirs = files::create_dirs(m, &plan.layout)?;
    let to_write = files::files_to_write(m, &plan.layout, overwrite, opts.jobs)?;
    let restorable = m.files.iter().filter(|f| files::is_restored(f)).count();
    let written = files::write_files(rt, repo, &plan.manifest, &plan.sources, &plan.layout, &to_write, opts.jobs)?;

    write_recovery_files(opts, m, &stamp)?;
    files::sync_dirs(&dirs)?;
    let (temp, control) = (dir.join(files::PG_CONTROL_TEMP), dir.join(files::PG_CONTROL));
    pgdata::rename(&temp, &control).map_err(Error::io("cannot move into place", &control))?;
    pgdata::remove(&marker).map_err(Error::io("cannot remove", &marker))?;
    pgdata::sync_dir(dir).map_err(Error::io("cannot fsync directory", dir))?;
    if let Some(parent) = dir.parent() {
        pgdata::sync_dir(parent).map_err(Error::io("cannot fsync directory", parent))?;
    }
    Ok(Outcome { backup: m.id.clone(), written, kept: restorable - to_write.len(), removed, notices, notices_printed })
}

/// `backup_label`, the recovery settings in `postgresql.auto.conf`, and the signal file.
fn write_recovery_files(opts: &RestoreOptions, m: &Manifest, stamp: &str) -> Result<()> {
    let dir = &opts.target_dir;
    let label = dir.join("backup_label");
    pgdata::write_file(&label, m.backup_label.as_bytes(), 0o600).map_err(Error::io("cannot write", &label))?;
    let exe = std::env::current_exe().map_err(Error::io("cannot find the pgwal binary", "/proc/self/exe"))?;
    let settings = recovery_settings(
        opts,
        &restore_command(&exe, &opts.repo, opts.config_file.as_deref(), opts.encryption_key_file.as_deref()),
    );
    let auto = dir.join("postgresql.auto.conf");
    let existing = match std::fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n".into()
        }
        Err(e) => return Err(Error::io("cannot read", &auto)(e)),
    };
    let borrowed: Vec<(&str, String)> = settings.iter().map(|(k, v)| (*k, v.clone())).collect();
    let text = rewrite_auto_conf(&existing, &borrowed, stamp);
    pgdata::write_file(&auto, text.as_bytes(), 0o600).map_err(Error::io("cannot write", &auto))?;
    let (signal, other) = if opts.standby.is_some() {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    let other = dir.join(other);
    pgdata::remove(&other).map_err(Error::io("cannot remove", &other))?;
    let signal = dir.join(signal);
    pgdata::write_file(&signal, b"", 0o600).map_err(Error::io("cannot write", &signal))
}

/// The settings a restore writes, in order.
pub fn recovery_settings(opts: &RestoreOptions, restore_command: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![("restore_command", restore_command.to_string())];
    // Every target key is set, so that one left in postgresql.conf is ignored
    // (PostgreSQL applies only the last setting of a key). The unused ones
    // are cleared first: PostgreSQL refuses any assignment to another
    // target key, even '', once a target is set.
    let chosen = opts.target.as_ref().map(RecoveryTarget::setting);
    for key in TARGET_KEYS {
        if chosen.as_ref().is_none_or(|(k, _)| *k != key) {
            out.push((key, String::new()));
        }
    }
    if let Some((key, value)) = chosen {
        out.push((key, value));
    }
    if let Some(action) = opts.action {
        out.push(("recovery_target_action", action.as_str().to_string()));
    }
    let timeline = if opts.standby.is_some() { TargetTimeline::Latest } else { opts.timeline };
    out.push(("recovery_target_timeline", timeline.to_string()));
    if let Some(s) = &opts.standby {
        out.push(("primary_conninfo", s.primary_conninfo.clone()));
        if let Some(slot) = &s.slot {
            out.push(("primary_slot_name", slot.clone()));
        }
    }
    out
}

/// Quotes `s` for `sh` when it holds anything but plain characters.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@+,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The `restore_command` that runs this pgwal binary with the same
/// repository and config file. `%` in them is doubled: PostgreSQL reads
/// `%f`, `%p` and `%%` in the command. An encryption key is passed as the
/// path of its file, never as the key: the command line is in `ps` output
/// and `postgresql.auto.conf`.
pub fn restore_command(exe: &Path, repo: &RepoUrl, config: Option<&Path>, key_file: Option<&Path>) -> String {
    let literal = |s: &str| shell_quote(s).replace('%', "%%");
    let mut parts = vec![literal(&exe.to_string_lossy()), "--repo".into(), literal(&repo.to_string())];
    if let Some(c) = config {
        parts.push("--config".into());
        parts.push(literal(&c.to_string_lossy()));
    }
    if let Some(k) = key_file {
        parts.push("--encryption-key-file".into());
        parts.push(literal(&k.to_string_lossy()));
    }
    parts.push("fetch %f %p".into());
    parts.join(" ")
}

#[cfg(test)]
mod tests;
