//! The repository's key layout: the only place object keys are spelled.
//!
//! ```text
//! format                                      format version object
//! cluster                                     cluster identity
//! wal/00000002.history                        timeline history files
//! wal/0000000100000000/000000010000000000000001           segments
//! wal/0000000100000000/000000010000000000000001.partial   partial segments
//! wal/0000000100000000/000000010000000000000002.00000028.backup
//! ```
//!
//! WAL is grouped by timeline and log file (the first 16 hex digits of a
//! segment name), so one listing touches at most a few hundred keys and a
//! delimiter listing of `wal/` yields the timelines' log files and history
//! files without reading any segment keys.

use object_store::path::Path;

use crate::pg::WalFileName;

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
    }
}
