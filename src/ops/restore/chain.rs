//! The backups a restore reads from: for a full backup its own packs; for a
//! diff/incr backup (manifest format 2) also the packs of its ancestors,
//! found by following `parent` links. Everything is checked before the
//! first write: every manifest of the chain loads, every extent names a
//! backup of the chain and lies inside a pack that manifest lists, and every
//! pack an extent needs is stored at the size its manifest records.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};

use super::files::validate_manifest;
use crate::error::{Error, Result};
use crate::repo::backup::{
    manifest_key, pack_key, reads_manifest_format, BackupId, Manifest, PackInfo, MANIFEST_FORMAT,
};
use crate::repo::Repository;

/// The packs a restore may read, by (backup, pack number).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The backups of the chain, the restored one first, the full last.
    pub chain: Vec<BackupId>,
    packs: BTreeMap<(BackupId, u32), PackInfo>,
}

impl Sources {
    /// The packs of a self-contained backup.
    pub fn own(m: &Manifest) -> Sources {
        let mut s = Sources::default();
        s.add(m);
        s
    }

    fn add(&mut self, m: &Manifest) {
        self.chain.push(m.id.clone());
        for p in &m.packs {
            self.packs.insert((m.id.clone(), p.number), p.clone());
        }
    }

    /// What the manifest of `backup` says about its pack `number`.
    pub fn pack(&self, backup: &BackupId, number: u32) -> Option<&PackInfo> {
        self.packs.get(&(backup.clone(), number))
    }

    fn chain_text(&self) -> String {
        self.chain.iter().map(BackupId::as_str).collect::<Vec<_>>().join(" <- ")
    }
}

/// Loads the chain of `m` (already validated by [`validate_manifest`]),
/// checks every extent against it, and checks that every pack the extents
/// need exists with its recorded stored size (`jobs` HEAD requests at a time).
/// Nothing is written.
pub async fn resolve(repo: &Repository, m: &Manifest, jobs: usize) -> Result<Sources> {
    let mut sources = Sources::own(m);
    if m.format == MANIFEST_FORMAT {
        return Ok(sources);
    }
    let mut seen: BTreeSet<BackupId> = BTreeSet::from([m.id.clone()]);
    let mut child = m.clone();
    while let Some(parent) = child.parent.clone() {
        if !seen.insert(parent.clone()) {
            return Err(Error::Corrupt {
                key: manifest_key(&child.id).to_string(),
                reason: format!("the chain of backup '{}' loops back to backup '{parent}'", m.id),
            });
        }
        let loaded = match repo.load_json::<Manifest>(&manifest_key(&parent)).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(Error::Unreachable {
                    message: format!(
                        "backup '{}' needs backup '{parent}' (its chain: {} <- {parent}), whose manifest is missing \
                         from the repository",
                        m.id,
                        sources.chain_text()
                    ),
                    hint: Some("restore another backup with --backup ('pgwal list' shows them)".into()),
                })
            }
            Err(Error::Corrupt { key, reason }) => {
                return Err(Error::Corrupt { key, reason: format!("{reason} (needed to restore backup '{}')", m.id) })
            }
            Err(e) => return Err(e),
        };
        let key = manifest_key(&parent).to_string();
        let bad = |reason: String| Error::Corrupt { key: key.clone(), reason };
        if loaded.id != parent {
            return Err(bad(format!("the manifest is that of backup '{}'", loaded.id)));
        }
        if loaded.system_identifier != m.system_identifier {
            return Err(bad(format!(
                "backup '{parent}' is of system {}, backup '{}' of system {}",
                loaded.system_identifier, m.id, m.system_identifier
            )));
        }
        if !reads_manifest_format(loaded.format) {
            return Err(bad(format!("manifest format {} is not one this pgwal reads", loaded.format)));
        }
        validate_manifest(&loaded).map_err(|e| match e {
            Error::Corrupt { key, reason } => {
                Error::Corrupt { key, reason: format!("{reason} (needed to restore backup '{}')", m.id) }
            }
            other => other,
        })?;
        sources.add(&loaded);
        child = loaded;
    }
    check_extents(m, &sources)?;
    check_packs(repo, m, &sources, jobs).await?;
    Ok(sources)
}

/// Every extent names a backup of the chain and lies inside a pack its manifest lists.
fn check_extents(m: &Manifest, sources: &Sources) -> Result<()> {
    let bad = |reason: String| Err(Error::Corrupt { key: manifest_key(&m.id).to_string(), reason });
    for f in &m.files {
        for e in &f.extents {
            let source = e.source(&m.id);
            if !sources.chain.contains(source) {
                return bad(format!(
                    "file '{}' has an extent in backup '{source}', which is not in the chain of backup '{}' ({})",
                    f.path,
                    m.id,
                    sources.chain_text()
                ));
            }
            let inside = sources
                .pack(source, e.pack)
                .is_some_and(|p| e.offset.checked_add(e.size).is_some_and(|end| end <= p.original_size));
            if !inside {
                return bad(format!("file '{}' has an extent outside pack {} of backup '{source}'", f.path, e.pack));
            }
        }
    }
    Ok(())
}

/// Every pack an extent of `m` needs is stored, at the size its manifest records.
async fn check_packs(repo: &Repository, m: &Manifest, sources: &Sources, jobs: usize) -> Result<()> {
    let needed: BTreeSet<(BackupId, u32)> =
        m.files.iter().flat_map(|f| f.extents.iter()).map(|e| (e.source(&m.id).clone(), e.pack)).collect();
    futures::stream::iter(needed)
        .map(|(backup, number)| async move {
            let key = pack_key(&backup, number);
            let recorded = sources.pack(&backup, number).map_or(0, |p| p.stored_size);
            match repo.object_size(&key).await? {
                Some(size) if size == recorded => Ok(()),
                Some(size) => Err(Error::Corrupt {
                    key: key.to_string(),
                    reason: format!(
                        "the pack holds {size} bytes, the manifest of backup '{backup}' says {recorded}; \
                         backup '{}' cannot be restored",
                        m.id
                    ),
                }),
                None => Err(Error::Corrupt {
                    key: key.to_string(),
                    reason: format!("the pack is missing from the repository; backup '{}' needs it", m.id),
                }),
            }
        })
        .buffer_unordered(jobs.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
