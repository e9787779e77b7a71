//! The backup a diff/incr builds on: chosen from the catalog (`incr`: the
//! newest complete backup of the cluster, `diff`: the newest full), usable
//! only when every backup its restore would read is complete too; then its
//! files and block maps, loaded once, as the packer compares against them.
//!
//! No usable parent: the backup is taken full, and [`Choice::Full`] says why.

use std::collections::{BTreeSet, HashMap};

use super::blocks::ParentFile;
use crate::error::{Error, Result};
use crate::repo::backup::{manifest_key, map_key, BackupId, BackupType, Manifest};
use crate::repo::catalog::{Backups, Catalog, ManifestState, Scope, Unreadable};
use crate::repo::frame;
use crate::repo::Repository;

/// The original size of every pack of a chain, by (backup, pack number).
pub type Packs = HashMap<(BackupId, u32), u64>;

/// The packs the manifests list.
pub fn packs_of<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Packs {
    manifests
        .into_iter()
        .flat_map(|m| m.packs.iter().map(move |p| ((m.id.clone(), p.number), p.original_size)))
        .collect()
}

/// What a diff/incr request becomes.
#[derive(Debug)]
pub enum Choice {
    /// Built on this parent; `chain`: every backup its restore reads (the
    /// parent and its ancestors).
    On {
        /// The parent's manifest.
        parent: Box<Manifest>,
        /// The parent and each backup it depends on.
        chain: Vec<BackupId>,
        /// Their packs, which every reference must lie in.
        packs: Packs,
    },
    /// Taken full instead, for this reason (a notice line).
    Full(String),
}

/// Chooses the parent of a `kind` backup among the complete backups of
/// cluster `system_identifier`, server major version `major`.
pub fn choose(kind: BackupType, backups: &[(BackupId, ManifestState)], system_identifier: u64, major: u32) -> Choice {
    let complete: HashMap<&BackupId, &Manifest> = backups
        .iter()
        .filter_map(|(id, s)| match s {
            ManifestState::Complete(m) if m.system_identifier == system_identifier.to_string() => Some((id, m)),
            _ => None,
        })
        .collect();
    let mut candidates: Vec<&Manifest> = complete.values().copied().collect();
    // Newest by stop time (then stop LSN: two backups may stop in one
    // second), as retention and target selection order backups.
    candidates.sort_by(|a, b| (&a.stop_time, a.stop_lsn, &a.id).cmp(&(&b.stop_time, b.stop_lsn, &b.id)));
    let wanted = match kind {
        BackupType::Diff => "full backup",
        _ => "complete backup",
    };
    let newest = candidates.iter().rev().find(|m| kind != BackupType::Diff || m.kind == BackupType::Full);
    let Some(parent) = newest else {
        return Choice::Full(format!("no {wanted} of this cluster to build a {kind} backup on: taking a full backup"));
    };
    if parent.server_version_num / 10000 != major {
        return Choice::Full(format!(
            "the newest {wanted} '{}' is of PostgreSQL {}, the server runs {major}: taking a full backup",
            parent.id,
            parent.server_version_num / 10000
        ));
    }
    // Every backup a restore of the parent reads: its parent links and what its extents name.
    let mut chain: Vec<BackupId> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![parent.id.clone()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(m) = complete.get(&id) else {
            return Choice::Full(format!(
                "the newest {wanted} '{}' depends on backup '{id}', which is not complete in the repository: \
                 taking a full backup",
                parent.id
            ));
        };
        todo.extend(m.parent.iter().cloned());
        todo.extend(m.referenced_backups());
        chain.push(id);
    }
    let packs = packs_of(chain.iter().filter_map(|id| complete.get(id).copied()));
    Choice::On { parent: Box::new((*parent).clone()), chain, packs }
}

/// Loads every backup's manifest state (a damaged one just cannot be a parent).
pub async fn catalog(repo: &Repository) -> Result<Vec<(BackupId, ManifestState)>> {
    let scope = Scope { backups: Backups::All, unreadable_manifests: Unreadable::Record, ..Scope::default() };
    let catalog = Catalog::load(repo, &scope).await?;
    Ok(catalog.backups.into_iter().map(|b| (b.id, b.state)).collect())
}

/// The parent's files, by (tablespace, path), as a child compares against them.
#[derive(Debug, Default)]
pub struct ParentIndex {
    /// The parent's ID.
    pub id: Option<BackupId>,
    files: HashMap<(Option<u32>, String), ParentFile>,
}

impl ParentIndex {
    /// The parent's entry for a file, if it had one that holds together.
    pub fn file(&self, tablespace: Option<u32>, path: &str) -> Option<&ParentFile> {
        self.files.get(&(tablespace, path.to_string()))
    }

    /// Builds the index from the parent's manifest, its decoded map objects
    /// and the packs of its chain. A file whose extents do not hold together
    /// or leave those packs is left out (and so stored whole): a reference
    /// must never point at bytes that are not there. Returns the index and
    /// how many files were left out that way.
    pub fn build(parent: &Manifest, maps: &HashMap<u32, Vec<u8>>, packs: &Packs) -> (ParentIndex, usize) {
        let mut left_out = 0;
        let files = parent
            .files
            .iter()
            .filter_map(|f| {
                let map = f.block_map.as_ref().and_then(|e| {
                    let data = maps.get(&e.pack)?;
                    let end = e.offset.checked_add(e.size)?;
                    data.get(e.offset as usize..usize::try_from(end).ok()?).map(<[u8]>::to_vec)
                });
                let inside = |r: &ParentFile| {
                    r.extents.iter().all(|e| {
                        let holder = e.source(&parent.id).clone();
                        packs
                            .get(&(holder, e.pack))
                            .is_some_and(|&len| e.offset.checked_add(e.size).is_some_and(|end| end <= len))
                    })
                };
                match ParentFile::resolve(&parent.id, f.size, &f.sha256, &f.extents, map).filter(inside) {
                    Some(resolved) => Some(((f.tablespace, f.path.clone()), resolved)),
                    None => {
                        left_out += 1;
                        None
                    }
                }
            })
            .collect();
        (ParentIndex { id: Some(parent.id.clone()), files }, left_out)
    }

    /// Reads the parent's block maps (each checked against its SHA-256) and
    /// builds the index. A missing or damaged map fails the backup: the
    /// parent is damaged, and building on it would hide that.
    pub async fn load(repo: &Repository, parent: &Manifest, packs: &Packs) -> Result<ParentIndex> {
        let mut maps = HashMap::new();
        for info in &parent.maps {
            let key = map_key(&parent.id, info.number);
            let corrupt = |reason: String| Error::Corrupt {
                key: key.to_string(),
                reason: format!("{reason}; it is a block map of backup '{}', the parent of this backup", parent.id),
            };
            let object = repo.get(&key).await?.ok_or_else(|| corrupt("the block map is missing".into()))?;
            let header = frame::FrameHeader::parse(&object).map_err(|e| corrupt(e.to_string()))?;
            if frame::hex(&header.sha256) != info.sha256 {
                return Err(corrupt("the block map is not the one its manifest names".into()));
            }
            let data = frame::decode(&object).map_err(|e| corrupt(e.to_string()))?;
            maps.insert(info.number, data);
        }
        let (index, left_out) = ParentIndex::build(parent, &maps, packs);
        if left_out > 0 {
            crate::log_warn!(
                "{left_out} file(s) of backup '{}' have extents outside the packs of its chain: they are stored \
                 whole (hint: run 'pgwal verify --backup {}')",
                parent.id,
                parent.id
            );
        }
        Ok(index)
    }
}

/// Checks, just before (and after) the new manifest is stored, that every
/// backup of `chain` still has its manifest. `expire` takes the same lock,
/// so only something outside it can remove one meanwhile (a lock taken over
/// as stale from another host, an older pgwal, a hand-made deletion): kept
/// as a second line of defence.
pub async fn check_still_there(repo: &Repository, id: &BackupId, chain: &[BackupId]) -> Result<()> {
    for b in chain {
        if repo.read_header(&manifest_key(b)).await?.is_none() {
            return Err(Error::Unreachable {
                message: format!("backup '{b}', which backup '{id}' builds on, was removed while it was taken"),
                hint: Some("run the backup again: it builds on what the repository holds now".into()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::backup::{Extent, FileEntry, PackInfo};

    fn manifest(id: &str, kind: BackupType, parent: Option<&str>, stop: &str) -> Manifest {
        Manifest {
            start_time: stop.into(),
            stop_time: stop.into(),
            ..Manifest::empty_for_test(id.parse().expect("id"), kind, parent.map(|p| p.parse().expect("id")))
        }
    }

    fn states(ms: &[Manifest]) -> Vec<(BackupId, ManifestState)> {
        ms.iter().map(|m| (m.id.clone(), ManifestState::Complete(m.clone()))).collect()
    }

    fn parent_of(c: Choice) -> String {
        match c {
            Choice::On { parent, .. } => parent.id.to_string(),
            Choice::Full(why) => format!("full: {why}"),
        }
    }

    #[test]
    fn of_two_backups_stopped_in_one_second_the_later_stop_lsn_is_newer() {
        // An incr, then a full, both within one second (IDs made before
        // fresh_id kept one backup per second): by ID the incr sorts last.
        let f1 = manifest("20261101T010000F", BackupType::Full, None, "2026-11-01T01:00:00Z");
        let mut i1 = manifest("20261101T010001I", BackupType::Incr, Some("20261101T010000F"), "2026-11-01T01:00:01Z");
        let mut f2 = manifest("20261101T010001F", BackupType::Full, None, "2026-11-01T01:00:01Z");
        i1.stop_lsn = crate::pg::Lsn(0x3000100);
        f2.stop_lsn = crate::pg::Lsn(0x5000100);
        let all = states(&[f1, i1, f2]);
        assert_eq!(parent_of(choose(BackupType::Incr, &all, 7, 15)), "20261101T010001F");
    }

    #[test]
    fn incr_takes_the_newest_complete_diff_the_newest_full() {
        let f = manifest("20261101T010000F", BackupType::Full, None, "2026-11-01T01:10:00Z");
        let i = manifest("20261102T010000I", BackupType::Incr, Some("20261101T010000F"), "2026-11-02T01:10:00Z");
        let all = states(&[f, i]);
        assert_eq!(parent_of(choose(BackupType::Incr, &all, 7, 15)), "20261102T010000I");
        assert_eq!(parent_of(choose(BackupType::Diff, &all, 7, 15)), "20261101T010000F");
        match choose(BackupType::Incr, &all, 7, 15) {
            Choice::On { chain, .. } => assert_eq!(chain.len(), 2, "{chain:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_usable_parent_means_a_full_backup_and_says_why() {
        assert!(parent_of(choose(BackupType::Incr, &[], 7, 15)).starts_with("full: no complete backup"));
        let f = manifest("20261101T010000F", BackupType::Full, None, "2026-11-01T01:10:00Z");
        // Another cluster's backup, a running one and one of another major version are no parents.
        let mut running = states(std::slice::from_ref(&f));
        running[0].1 = ManifestState::Missing;
        assert!(parent_of(choose(BackupType::Diff, &running, 7, 15)).starts_with("full: no full backup"));
        assert!(parent_of(choose(BackupType::Incr, &states(std::slice::from_ref(&f)), 8, 15))
            .starts_with("full: no complete"));
        assert!(parent_of(choose(BackupType::Incr, &states(std::slice::from_ref(&f)), 7, 16)).contains("PostgreSQL 15"));
        // An incr whose full is gone (or damaged) is no parent either.
        let mut i = manifest("20261102T010000I", BackupType::Incr, Some("20261101T010000F"), "2026-11-02T01:10:00Z");
        i.files.push(FileEntry {
            path: "x".into(),
            tablespace: None,
            size: 1,
            sha256: "ab".into(),
            mode: 0o600,
            mtime: 0,
            extents: vec![Extent { backup: Some(f.id.clone()), ..Extent::own(0, 0, 1) }],
            block_map: None,
        });
        let why = parent_of(choose(BackupType::Incr, &states(&[i]), 7, 15));
        assert!(why.contains("depends on backup '20261101T010000F'"), "{why}");
    }

    #[test]
    fn the_index_holds_resolved_extents_and_maps() {
        let mut p = manifest("20261102T010000I", BackupType::Incr, Some("20261101T010000F"), "2026-11-02T01:10:00Z");
        let full: BackupId = "20261101T010000F".parse().expect("id");
        p.maps = vec![PackInfo { number: 0, original_size: 48, stored_size: 1, sha256: "ab".into() }];
        p.files.push(FileEntry {
            path: "base/5/16384".into(),
            tablespace: None,
            size: 2 * 8192,
            sha256: "ab".into(),
            mode: 0o600,
            mtime: 0,
            extents: vec![Extent { backup: Some(full.clone()), ..Extent::own(3, 0, 8192) }, Extent::own(0, 0, 8192)],
            block_map: Some(Extent::own(0, 16, 32)),
        });
        let maps = HashMap::from([(0u32, (0u8..48).collect::<Vec<u8>>())]);
        let mut packs: Packs = HashMap::from([((full.clone(), 3), 8192), ((p.id.clone(), 0), 8192)]);
        let (index, left_out) = ParentIndex::build(&p, &maps, &packs);
        assert_eq!(left_out, 0);
        let f = index.file(None, "base/5/16384").expect("indexed");
        assert_eq!(f.map.as_deref(), Some(&(16u8..48).collect::<Vec<u8>>()[..]));
        assert_eq!(f.extents[0].backup.as_ref(), Some(&full));
        assert_eq!(f.extents[1].backup.as_ref(), Some(&p.id), "own extents name the parent");
        assert!(index.file(Some(1), "base/5/16384").is_none());
        // An extent past the end of its pack (a damaged parent): the file is not referenced, but stored.
        packs.insert((full, 3), 4096);
        let (index, left_out) = ParentIndex::build(&p, &maps, &packs);
        assert_eq!(left_out, 1);
        assert!(index.file(None, "base/5/16384").is_none());
    }

    /// A parent removed while the child runs (outside the lock) fails the child.
    #[test]
    fn a_parent_removed_meanwhile_fails_the_backup() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let repo = Repository::in_memory();
        let f = manifest("20261101T010000F", BackupType::Full, None, "2026-11-01T01:10:00Z");
        let child: BackupId = "20261102T010000I".parse().expect("id");
        rt.block_on(async {
            repo.store_json(&manifest_key(&f.id), &f).await.expect("store");
            check_still_there(&repo, &child, std::slice::from_ref(&f.id)).await.expect("there");
            repo.delete(&[manifest_key(&f.id)]).await.expect("delete");
            let e = check_still_there(&repo, &child, std::slice::from_ref(&f.id)).await.expect_err("gone");
            assert!(e.to_string().contains("was removed while it was taken"), "{e}");
            assert!(matches!(e, Error::Unreachable { .. }));
        });
    }
}
