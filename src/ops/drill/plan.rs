//! What a drill will do, decided from the repository before anything is
//! written: which backup, which timeline recovery follows, and where
//! recovery must end for the drill to pass.

use super::checks::Expect;
use crate::config::drill::DrillRequest;
use crate::error::{Error, Result};
use crate::pg::recovery::TargetTimeline;
use crate::pg::timeline::{segment_before, Chain, TimelineTree};
use crate::pg::WalFileName;
use crate::repo::backup::Manifest;
use crate::repo::catalog::{BackupInfo, Backups, Catalog, ManifestState, Scope, WalListing};
use crate::repo::{keys, Repository};

/// The drill's plan.
#[derive(Debug)]
pub struct Plan {
    /// The backup to drill.
    pub manifest: Manifest,
    /// The timeline recovery follows: `latest` when the newest timeline
    /// descends from the backup, else the backup's own.
    pub timeline: TargetTimeline,
    /// Where recovery must end.
    pub expect: Expect,
}

/// Chooses the backup (the named one, else the newest complete one) and
/// works out the expected end of recovery.
pub async fn plan(repo: &Repository, req: &DrillRequest) -> Result<Plan> {
    let (_, size) = repo.recorded_cluster().await?;
    let scope = Scope {
        backups: req.backup.clone().map_or(Backups::All, Backups::Only),
        wal: WalListing::Inventory(size),
        histories: true,
        ..Scope::default()
    };
    let catalog = Catalog::load(repo, &scope).await?;
    let manifest = match &req.backup {
        Some(id) => match catalog.backups.first().map(|b| &b.state) {
            Some(ManifestState::Complete(m)) => m.clone(),
            Some(ManifestState::Corrupt { key, reason }) => {
                return Err(Error::Corrupt { key: key.clone(), reason: reason.clone() })
            }
            Some(ManifestState::OtherBackup(m)) => {
                return Err(Error::Corrupt {
                    key: keys::manifest_key(id).to_string(),
                    reason: format!("it describes backup '{}'", m.id),
                })
            }
            _ => {
                return Err(Error::BadRequest {
                    message: format!("there is no complete backup '{id}' in the repository"),
                    hint: Some("'pgwal list' shows the backups; leave out --backup to drill the newest".into()),
                })
            }
        },
        None => catalog.complete_backups()?.0.last().map(|m| (*m).clone()).ok_or_else(|| Error::Unreachable {
            message: "the repository holds no complete backup to drill".into(),
            hint: Some("take one with 'pgwal backup'".into()),
        })?,
    };
    let info = BackupInfo::from_manifest(&manifest)?;
    let tree = TimelineTree { histories: catalog.readable_histories()?, ..TimelineTree::default() };
    let latest = catalog.latest_timeline().max(info.stop_timeline);
    let (timeline, chain) = match tree.chain(latest) {
        Some(c) if c.admits(&info.span()) => (TargetTimeline::Latest, c),
        _ => (
            TargetTimeline::Current,
            tree.chain(info.stop_timeline).unwrap_or_else(|| Chain::new(info.stop_timeline, &[])),
        ),
    };
    let expect = match &req.target {
        Some(t) => Expect::Target(t.clone()),
        None => {
            let (tli, seg) = catalog
                .newest_segment(&chain, size)
                .unwrap_or((info.stop_timeline, segment_before(info.stop_lsn, size)));
            Expect::EndOfArchive {
                timeline: tli,
                segment: WalFileName::segment(tli, seg, size).to_string(),
                start: seg.start_lsn(size),
            }
        }
    };
    Ok(Plan { manifest, timeline, expect })
}
