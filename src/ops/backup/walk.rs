//! Which files of a running cluster a base backup copies: PostgreSQL's own
//! base-backup rules (`basebackup.c`). Skipped: WAL (it comes from the
//! archive), runtime state that is rebuilt at start (`postmaster.pid`,
//! `pg_stat_tmp/`, `pg_notify/`...), temporary files and relations, and the
//! non-init forks of unlogged relations. Kept: the directories themselves
//! where PostgreSQL needs them to start (an empty `pg_wal/`, `pg_replslot/`).
//! Files that vanish while the walk runs are simply left out: WAL replay
//! from the backup's start recreates whatever the cluster still needs.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::repo::backup::{DirEntry, Tablespace};

/// Files skipped in every directory.
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "current_logfiles",
    "postgresql.auto.conf.tmp",
    // Recovery settings belong to whoever restores, not to the backup.
    "recovery.signal",
    "standby.signal",
];

/// Name prefixes skipped in every directory: temporary files and the
/// relation cache init file.
const EXCLUDED_PREFIXES: &[&str] = &["pgsql_tmp", "pg_internal.init"];

/// Top-level directories kept empty: their content is runtime state.
const CONTENT_EXCLUDED_DIRS: &[&str] =
    &["pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"];

/// One file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToCopy {
    /// Where it is now.
    pub abs: PathBuf,
    /// Path for the manifest (relative to the data or tablespace directory).
    pub rel: String,
    /// Tablespace OID, `None` for the data directory.
    pub tablespace: Option<u32>,
    /// Size when listed.
    pub size: u64,
    /// A relation file (a fork or segment of one, in `global/` or a
    /// database directory): stored with a block map, at block level in a
    /// diff/incr backup.
    pub relation: bool,
}

/// Everything a backup copies.
#[derive(Debug, Default)]
pub struct Walked {
    /// Regular files.
    pub files: Vec<FileToCopy>,
    /// Directories to recreate.
    pub dirs: Vec<DirEntry>,
    /// Tablespaces found in `pg_tblspc`.
    pub tablespaces: Vec<Tablespace>,
}

/// Walks `pgdata` and its tablespaces. `major` is PostgreSQL's major
/// version (for the `PG_<major>_<catversion>` directory of each tablespace).
pub fn walk(pgdata: &Path, major: u32) -> Result<Walked> {
    let mut out = Walked::default();
    walk_dir(pgdata, "", None, &mut out, 0)?;
    let tblspc = pgdata.join("pg_tblspc");
    for entry in read_dir(&tblspc)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(oid) = name.parse::<u32>() else { continue };
        let link = tblspc.join(&name);
        let Ok(meta) = fs::symlink_metadata(&link) else { continue };
        if !meta.file_type().is_symlink() {
            // In-place tablespaces (allow_in_place_tablespaces) were walked as part of the data directory.
            continue;
        }
        let location = fs::read_link(&link).map_err(Error::io("cannot read tablespace link", &link))?;
        let location = if location.is_absolute() { location } else { tblspc.join(location) };
        out.tablespaces.push(Tablespace { oid, location: location.to_string_lossy().into_owned() });
        let prefix = format!("PG_{major}_");
        for version_dir in read_dir(&location)? {
            let vname = version_dir.file_name().to_string_lossy().into_owned();
            // Other PG_* directories belong to other major versions (pg_upgrade leftovers).
            if vname.starts_with(&prefix) && version_dir.path().is_dir() {
                let mode = fs::metadata(version_dir.path()).map_or(0o700, |m| m.mode() & 0o7777);
                out.dirs.push(DirEntry { path: vname.clone(), tablespace: Some(oid), mode });
                walk_dir(&location.join(&vname), &vname, Some(oid), &mut out, 1)?;
            }
        }
    }
    // pg_control last: it then reflects the backup's checkpoint even on a
    // slow walk. The rest in path order keeps a database's files together.
    out.files.sort_by(|a, b| {
        let key =
            |f: &FileToCopy| (f.tablespace.is_none() && f.rel == "global/pg_control", f.tablespace, f.rel.clone());
        key(a).cmp(&key(b))
    });
    out.dirs.sort_by(|a, b| (a.tablespace, &a.path).cmp(&(b.tablespace, &b.path)));
    Ok(out)
}

/// `read_dir` that takes a vanished directory for an empty one.
fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut list = Vec::new();
            for e in entries {
                match e {
                    Ok(e) => list.push(e),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("cannot list", dir)(e)),
                }
            }
            Ok(list)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot list", dir)(e)),
    }
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Whether `dir` (relative) holds a database's relation files.
fn is_database_dir(rel: &str, tablespace: Option<u32>) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match tablespace {
        None => parts.len() == 2 && parts[0] == "base" && numeric(parts[1]),
        Some(_) => parts.len() == 2 && numeric(parts[1]),
    }
}

/// The relfilenode and fork of a relation file name (`16384`, `16384_fsm`,
/// `16384.1`, `16384_init`), or `None` for other names.
fn relation_file(name: &str) -> Option<(&str, &str)> {
    let base =
        name.split_once('.').map_or(name, |(b, seg)| if seg.bytes().all(|c| c.is_ascii_digit()) { b } else { "" });
    let (node, fork) = base.split_once('_').unwrap_or((base, "main"));
    let valid =
        !node.is_empty() && node.bytes().all(|b| b.is_ascii_digit()) && matches!(fork, "main" | "fsm" | "vm" | "init");
    valid.then_some((node, fork))
}

/// Temporary relations: `t<backend>_<relfilenode>[_fork][.segment]`.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, tail)) = rest.split_once('_') else { return false };
    !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()) && relation_file(tail).is_some()
}

fn walk_dir(dir: &Path, rel: &str, tablespace: Option<u32>, out: &mut Walked, depth: usize) -> Result<()> {
    if depth > 64 {
        return Err(Error::io("cannot back up", dir)(std::io::Error::other(
            "directories nest too deep (a symlink loop?)",
        )));
    }
    let entries = read_dir(dir)?;
    let database_dir = is_database_dir(rel, tablespace);
    // Unlogged relations: only their init fork is copied (PostgreSQL resets them at start).
    let unlogged: HashSet<String> = if database_dir {
        entries
            .iter()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                relation_file(&name).filter(|(_, fork)| *fork == "init").map(|(node, _)| node.to_string())
            })
            .collect()
    } else {
        HashSet::new()
    };
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let child_rel = join_rel(rel, &name);
        if EXCLUDED_FILES.contains(&name.as_str()) || EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if database_dir {
            if is_temp_relation(&name) {
                continue;
            }
            if let Some((node, fork)) = relation_file(&name) {
                if fork != "init" && unlogged.contains(node) {
                    continue;
                }
            }
        }
        // Follows symlinks (a config file linked into PGDATA); `pg_wal` may be one.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("cannot stat", &path)(e)),
        };
        let mode = meta.mode() & 0o7777;
        let top = tablespace.is_none() && rel.is_empty();
        if meta.is_dir() {
            out.dirs.push(DirEntry { path: child_rel.clone(), tablespace, mode });
            if top && name == "pg_wal" {
                out.dirs.push(DirEntry { path: "pg_wal/archive_status".into(), tablespace, mode });
                continue;
            }
            if top && CONTENT_EXCLUDED_DIRS.contains(&name.as_str()) {
                continue;
            }
            if tablespace.is_none()
                && rel == "pg_tblspc"
                && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            {
                // A tablespace: walked from its own location, restored as a link.
                out.dirs.pop();
                continue;
            }
            walk_dir(&path, &child_rel, tablespace, out, depth + 1)?;
        } else if meta.is_file() {
            let in_global = tablespace.is_none() && rel == "global";
            let relation = (database_dir || in_global) && relation_file(&name).is_some();
            out.files.push(FileToCopy { abs: path, rel: child_rel, tablespace, size: meta.len(), relation });
        }
        // Sockets, FIFOs and devices are never part of a cluster: skipped.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        assert_eq!(relation_file("16384"), Some(("16384", "main")));
        assert_eq!(relation_file("16384.2"), Some(("16384", "main")));
        assert_eq!(relation_file("16384_fsm"), Some(("16384", "fsm")));
        assert_eq!(relation_file("16384_init.1"), Some(("16384", "init")));
        for other in ["PG_VERSION", "pg_filenode.map", "16384_x", "16384.a", "_init", "t3_16384"] {
            assert_eq!(relation_file(other), None, "{other}");
        }
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm.1"));
        assert!(!is_temp_relation("16384") && !is_temp_relation("t_1") && !is_temp_relation("tx_1"));
    }

    fn touch(path: &Path, content: &[u8]) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }

    #[test]
    fn follows_postgres_base_backup_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("data");
        for f in [
            "PG_VERSION",
            "postgresql.conf",
            "global/pg_control",
            "global/1260",
            "base/5/1259",
            "base/5/1259_fsm",
            "base/5/16400",
            "base/5/16400_init",
            "base/5/16400_fsm",
            "base/5/t3_16500",
            "base/5/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_replslot/slot/state",
            "pg_stat_tmp/global.stat",
            "pg_subtrans/0000",
            "pg_xact/0000",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "standby.signal",
            "current_logfiles",
        ] {
            touch(&d.join(f), f.as_bytes());
        }
        let ts = dir.path().join("ts");
        touch(&ts.join("PG_15_202209061/5/16600"), b"x");
        touch(&ts.join("PG_14_202107181/5/16601"), b"old");
        fs::create_dir_all(d.join("pg_tblspc")).expect("mkdir");
        std::os::unix::fs::symlink(&ts, d.join("pg_tblspc/16599")).expect("symlink");

        let w = walk(&d, 15).expect("walk");
        let files: Vec<(Option<u32>, &str)> = w.files.iter().map(|f| (f.tablespace, f.rel.as_str())).collect();
        assert_eq!(
            files,
            vec![
                (None, "PG_VERSION"),
                (None, "base/5/1259"),
                (None, "base/5/1259_fsm"),
                (None, "base/5/16400_init"),
                (None, "global/1260"),
                (None, "pg_xact/0000"),
                (None, "postgresql.conf"),
                (Some(16599), "PG_15_202209061/5/16600"),
                (None, "global/pg_control"),
            ]
        );
        let dirs: Vec<&str> = w.dirs.iter().map(|d| d.path.as_str()).collect();
        for kept in
            ["pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_subtrans", "base/5", "pg_tblspc"]
        {
            assert!(dirs.contains(&kept), "{kept} must be recreated: {dirs:?}");
        }
        for gone in ["base/pgsql_tmp", "pg_replslot/slot", "pg_tblspc/16599"] {
            assert!(!dirs.contains(&gone), "{gone} must not be: {dirs:?}");
        }
        assert!(w.dirs.iter().any(|d| d.tablespace == Some(16599) && d.path == "PG_15_202209061/5"));
        assert_eq!(w.tablespaces, vec![Tablespace { oid: 16599, location: ts.to_string_lossy().into_owned() }]);
    }
}
