//! The repository's key layout: the only place object keys are spelled.
//!
//! ```text
//! format                                      format version object
//! cluster                                     cluster identity
//! wal/00000002.history                        timeline history files
//! wal/0000000100000000/000000010000000000000001           segments
//! wal/0000000100000000/000000010000000000000001.partial   partial segments
//! wal/0000000100000000/000000010000000000000002.00000028.backup
//! backup/20261123T074000F/manifest            a backup's manifest (written last)
//! backup/20261123T074000F/pack/000000         its packs
//! lock/backup                                 the backup lock
//! drill/20261123T074000F/20261124T031500Z     one drill's result (framed JSON)
//! keyring/current                             encrypted repositories: names the keyring in use
//! keyring/<tag>                               the data keys, wrapped by the repository key
//! ```
//!
//! WAL is grouped by timeline and log file (the first 16 hex digits of a
//! segment name), so one listing touches at most a few hundred keys and a
//! delimiter listing of `wal/` yields the timelines' log files and history
//! files without reading any segment keys.

use object_store::path::Path;

use super::backup::BackupId;
use crate::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};

/// The format version object.
pub fn format() -> Path {
    Path::from("format")
}

/// The cluster identity object.
pub fn cluster() -> Path {
    Path::from("cluster")
}

/// Where a WAL file is stored.
pub fn wal(name: &WalFileName) -> Path {
    match name.log_file_prefix() {
        Some(dir) => Path::from(format!("wal/{dir}/{name}")),
        None => Path::from(format!("wal/{name}")),
    }
}

/// Where the WAL lives: history files directly below, segments in one
/// directory per timeline and log file.
pub fn wal_root() -> Path {
    Path::from("wal")
}

/// The name of the log file directory of timeline `tli` and log file `log`
/// (`TTTTTTTTLLLLLLLL`, the first 16 hex digits of its segments' names).
pub fn log_dir_name(tli: TimelineId, log: u64) -> String {
    format!("{:08X}{:08X}", tli.0, log)
}

/// The log file directory holding segment `seg` of timeline `tli`.
pub fn log_dir(tli: TimelineId, seg: SegmentNo, size: WalSegmentSize) -> Path {
    log_dir_named(&log_dir_name(tli, seg.0 / size.segments_per_log_file()))
}

/// The log file directory of that name (as a listing of [`wal_root`] yields it).
pub fn log_dir_named(name: &str) -> Path {
    Path::from(format!("wal/{name}"))
}

/// The key of the WAL file `name` listed in log file directory `dir`.
pub fn in_log_dir(dir: &str, name: &str) -> Path {
    Path::from(format!("wal/{dir}/{name}"))
}

/// The timeline and log number of a log file directory name
/// (`TTTTTTTTLLLLLLLL`); `None` for anything else.
pub fn parse_log_dir(dir: &str) -> Option<(TimelineId, u64)> {
    if dir.len() != 16 || !dir.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&dir[..8], 16).ok().filter(|t| *t > 0)?;
    let log = u64::from_str_radix(&dir[8..], 16).ok()?;
    Some((TimelineId(tli), log))
}

/// Prefix under which every backup lives.
pub fn backups_prefix() -> Path {
    Path::from("backup")
}

/// Everything of backup `id` (a listed directory name, which may be one of
/// an interrupted backup).
pub fn backup_dir(id: &str) -> Path {
    Path::from(format!("backup/{id}"))
}

/// The packs of backup `id`.
pub fn packs_prefix(id: &BackupId) -> Path {
    Path::from(format!("backup/{id}/pack"))
}

/// The manifest of backup `id`.
pub fn manifest_key(id: &BackupId) -> Path {
    Path::from(format!("backup/{id}/manifest"))
}

/// Pack `number` of backup `id`.
pub fn pack_key(id: &BackupId, number: u32) -> Path {
    Path::from(format!("backup/{id}/pack/{number:06}"))
}

/// Block-map object `number` of backup `id` (the per-block fingerprints a
/// diff/incr backup compares against).
pub fn map_key(id: &BackupId, number: u32) -> Path {
    Path::from(format!("backup/{id}/map/{number:06}"))
}

/// Prefix under which every drill result lives.
pub fn drills_prefix() -> Path {
    Path::from("drill")
}

/// The drill results of backup `id`.
pub fn drills_of(id: &BackupId) -> Path {
    Path::from(format!("drill/{id}"))
}

/// The result of the drill of backup `id` that started at `started`
/// (UTC, `YYYYMMDDTHHMMSSZ`, so names sort by time).
pub fn drill_record_key(id: &BackupId, started: &str) -> Path {
    Path::from(format!("drill/{id}/{started}"))
}

/// The lock object that keeps two backups of one repository from running at once.
pub fn backup_lock_key() -> Path {
    Path::from("lock/backup")
}

/// The pointer naming the keyring in use (encrypted repositories): the one
/// object pgwal replaces in place (`rekey`).
pub fn keyring_pointer() -> Path {
    Path::from("keyring/current")
}

/// Where the keyrings live.
pub fn keyrings_prefix() -> Path {
    Path::from("keyring")
}

/// One keyring (`tag` is random hex, see [`keyring_pointer`]).
pub fn keyring(tag: &str) -> Path {
    Path::from(format!("keyring/{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_keys_group_by_timeline_and_log_file() {
        let key = |s: &str| wal(&s.parse().expect("valid name")).to_string();
        assert_eq!(key("00000001000000A2000000FF"), "wal/00000001000000A2/00000001000000A2000000FF");
        assert_eq!(key("000000020000000000000003.partial"), "wal/0000000200000000/000000020000000000000003.partial");
        assert_eq!(
            key("000000010000000000000002.00000028.backup"),
            "wal/0000000100000000/000000010000000000000002.00000028.backup"
        );
        assert_eq!(key("00000002.history"), "wal/00000002.history");
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(log_dir(TimelineId(2), SegmentNo(0x103), size).as_ref(), "wal/0000000200000001");
        assert_eq!(parse_log_dir("0000000200000001"), Some((TimelineId(2), 1)));
        assert_eq!(parse_log_dir("00000000000000001"), None);
        assert_eq!(parse_log_dir("0000000000000001"), None, "timeline 0 does not exist");
        assert_eq!(parse_log_dir("000000010000000G"), None);
    }

    #[test]
    fn backup_keys() {
        let id: BackupId = "20261123T074000F".parse().expect("id");
        assert_eq!(manifest_key(&id).as_ref(), "backup/20261123T074000F/manifest");
        assert_eq!(pack_key(&id, 7).as_ref(), "backup/20261123T074000F/pack/000007");
        assert_eq!(packs_prefix(&id).as_ref(), "backup/20261123T074000F/pack");
        assert_eq!(backup_dir(id.as_str()).as_ref(), "backup/20261123T074000F");
        assert_eq!(backup_lock_key().as_ref(), "lock/backup");
        assert_eq!(drill_record_key(&id, "20261124T031500Z").as_ref(), "drill/20261123T074000F/20261124T031500Z");
        assert_eq!(drills_of(&id).as_ref(), "drill/20261123T074000F");
        assert_eq!(keyring_pointer().as_ref(), "keyring/current");
        assert_eq!(keyring("ab12").as_ref(), "keyring/ab12");
    }

    /// Object keys are spelled here only: no other library file (outside
    /// its tests) has a string literal that starts a repository key.
    #[test]
    fn no_key_spelled_outside_keys_rs() {
        let spellings = [
            "\"wal/",
            "\"backup/",
            "\"lock/",
            "\"drill/",
            "\"keyring/",
            "(\"keyring\")",
            "(\"drill\")",
            "(\"wal\")",
            "(\"backup\")",
            "(\"lock\")",
            "(\"format\")",
            "(\"cluster\")",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![root.clone()];
        let mut found = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if !name.ends_with(".rs") || name == "tests.rs" || path.ends_with("repo/keys.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("readable");
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                for (i, line) in code.lines().enumerate() {
                    let line = line.trim_start();
                    if line.starts_with("//") {
                        continue;
                    }
                    if let Some(s) = spellings.iter().find(|s| line.contains(*s)) {
                        found.push(format!("{}:{}: {s}", path.strip_prefix(&root).unwrap_or(&path).display(), i + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "object keys spelled outside repo/keys.rs:\n{}", found.join("\n"));
    }
}
