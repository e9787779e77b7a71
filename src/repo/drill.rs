//! Drill results in the repository: what `pgwal drill` proved about one
//! backup, stored create-only as `drill/<backup>/<started>` (framed JSON),
//! never rewritten. `list` shows the newest of each backup; the daemon's
//! metrics read them the same way. A backup's drills go when it is expired.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::backup::BackupId;
use super::{keys, PutOutcome, Repository};
use crate::Result;

/// The drill record format this build writes and reads.
pub const DRILL_FORMAT: u32 = 1;

/// How one check of a drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Passed,
    Failed,
    /// Not run (e.g. `pg_amcheck` not installed, no data checksums); `detail` says why.
    Skipped,
}

/// One check of a drill (`restore`, `recovery_target`, `queries`,
/// `pg_amcheck`, `shutdown`, `pg_checksums`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheck {
    pub name: String,
    pub outcome: CheckOutcome,
    /// One line: what was found, or why it was skipped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The result of one drill of one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub format: u32,
    pub backup: BackupId,
    /// RFC 3339, UTC, whole seconds.
    pub started: String,
    pub finished: String,
    pub duration_seconds: f64,
    /// The recovery target asked for, as the user would write it
    /// (e.g. "newest archived WAL on timeline 1", "time 2026-11-24 03:00:00+00").
    pub target: String,
    /// Where recovery ended: LSN `X/Y`, timeline, and the time of the last
    /// replayed transaction when PostgreSQL reports one.
    pub reached_lsn: Option<String>,
    pub reached_timeline: Option<u32>,
    pub reached_time: Option<String>,
    /// True exactly when no check failed.
    pub passed: bool,
    pub checks: Vec<DrillCheck>,
}

impl DrillRecord {
    /// The failed checks, one line each.
    pub fn findings(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| c.outcome == CheckOutcome::Failed)
            .map(|c| if c.detail.is_empty() { c.name.clone() } else { format!("{}: {}", c.name, c.detail) })
            .collect()
    }

    /// The key this record is stored under.
    pub fn key(&self) -> Result<object_store::path::Path> {
        let started = chrono::DateTime::parse_from_rfc3339(&self.started).map_err(|e| crate::Error::BadRequest {
            message: format!("drill start time '{}' is not RFC 3339: {e}", self.started),
            hint: None,
        })?;
        let name = started.with_timezone(&chrono::Utc).format("%Y%m%dT%H%M%SZ").to_string();
        Ok(keys::drill_record_key(&self.backup, &name))
    }
}

impl Repository {
    /// Stores a drill result (create-only: a result is never rewritten).
    pub async fn store_drill(&self, record: &DrillRecord) -> Result<PutOutcome> {
        self.store_json(&record.key()?, record).await
    }

    /// The newest drill result of every backup that has one. A record that
    /// cannot be read is skipped with a warning: a damaged drill result
    /// must not hide the backups (verify reports damaged objects). Commands
    /// read it through the catalog ([`crate::repo::catalog::Scope::drills`]).
    pub(crate) async fn newest_drills(&self) -> Result<BTreeMap<BackupId, DrillRecord>> {
        let mut out = BTreeMap::new();
        for dir in self.list_dirs(&keys::drills_prefix()).await? {
            let Ok(id) = dir.parse::<BackupId>() else { continue };
            let mut names = self.list_entries(&keys::drills_of(&id)).await?.objects;
            names.sort();
            while let Some(name) = names.pop() {
                match self.load_json::<DrillRecord>(&keys::drill_record_key(&id, &name)).await {
                    Ok(Some(r)) if r.backup == id => {
                        out.insert(id.clone(), r);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => crate::log_warn!("skipping drill result '{name}' of backup '{id}': {e}"),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(backup: &str, started: &str, passed: bool) -> DrillRecord {
        DrillRecord {
            format: DRILL_FORMAT,
            backup: backup.parse().expect("id"),
            started: started.into(),
            finished: started.into(),
            duration_seconds: 1.5,
            target: "newest archived WAL on timeline 1".into(),
            reached_lsn: Some("0/3000060".into()),
            reached_timeline: Some(1),
            reached_time: None,
            passed,
            checks: vec![DrillCheck {
                name: "pg_amcheck".into(),
                outcome: if passed { CheckOutcome::Passed } else { CheckOutcome::Failed },
                detail: if passed { String::new() } else { "1 corrupt page".into() },
            }],
        }
    }

    #[test]
    fn newest_drill_per_backup_and_never_rewritten() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let repo = Repository::in_memory();
        rt.block_on(async {
            let old = record("20261123T074000F", "2026-11-24T03:00:00Z", false);
            let new = record("20261123T074000F", "2026-11-25T03:00:00Z", true);
            let other = record("20261124T074000F", "2026-11-25T04:00:00Z", true);
            for r in [&old, &new, &other] {
                assert_eq!(repo.store_drill(r).await.expect("store"), PutOutcome::Stored);
            }
            let changed = DrillRecord { passed: true, ..old.clone() };
            assert!(repo.store_drill(&changed).await.is_err(), "a stored result is never rewritten");
            let newest = repo.newest_drills().await.expect("read");
            assert_eq!(newest.len(), 2);
            assert_eq!(newest[&new.backup], new);
            assert_eq!(newest[&other.backup], other);
        });
        assert_eq!(record("20261123T074000F", "x", false).findings(), vec!["pg_amcheck: 1 corrupt page"]);
        assert_eq!(
            record("20261123T074000F", "2026-11-24T03:00:00+01:00", true).key().expect("key").as_ref(),
            "drill/20261123T074000F/20261124T020000Z"
        );
    }
}
