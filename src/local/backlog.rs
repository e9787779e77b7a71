//! How far archiving is behind, from the data directory: the files
//! PostgreSQL has finished but not yet archived (`pg_wal/archive_status/
//! *.ready`), their bytes, and the age of the oldest `.ready` status (its
//! modification time is when the file was complete). `archive` logs it when
//! it fails; `list` shows it when the data directory is known.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::local::markers::ready_names;

/// The archive backlog of one data directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backlog {
    /// The data directory.
    pub pgdata: PathBuf,
    /// Files waiting to be archived.
    pub ready_files: usize,
    /// Their total size in bytes.
    pub ready_bytes: u64,
    /// When the oldest of them was complete (RFC 3339 UTC), if any waits.
    pub oldest_ready_time: Option<String>,
    /// How long the oldest has been waiting, in seconds: the archive lag.
    pub lag_seconds: Option<f64>,
}

/// The backlog of the WAL directory `wal_dir` of data directory `pgdata`;
/// `None` if it has no `archive_status` directory.
pub fn scan(pgdata: &Path, wal_dir: &Path) -> Option<Backlog> {
    let status_dir = wal_dir.join("archive_status");
    if !status_dir.is_dir() {
        return None;
    }
    let mut backlog = Backlog {
        pgdata: pgdata.to_path_buf(),
        ready_files: 0,
        ready_bytes: 0,
        oldest_ready_time: None,
        lag_seconds: None,
    };
    let mut oldest: Option<SystemTime> = None;
    for name in ready_names(&status_dir) {
        let name = name.to_string();
        let Ok(status) = std::fs::metadata(status_dir.join(format!("{name}.ready"))) else { continue };
        backlog.ready_files += 1;
        backlog.ready_bytes += std::fs::metadata(wal_dir.join(&name)).map_or(0, |m| m.len());
        if let Ok(t) = status.modified() {
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
    }
    if let Some(t) = oldest {
        backlog.oldest_ready_time =
            Some(chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        backlog.lag_seconds = Some(SystemTime::now().duration_since(t).map_or(0.0, |d| d.as_secs_f64()));
    }
    Some(backlog)
}

impl Backlog {
    /// One line for people and logs.
    pub fn describe(&self) -> String {
        match self.lag_seconds {
            None => format!("archive backlog of '{}': none (no .ready files)", self.pgdata.display()),
            Some(lag) => format!(
                "archive backlog of '{}': {} file(s), {} waiting; the oldest complete since {} ({lag:.0}s behind)",
                self.pgdata.display(),
                self.ready_files,
                mib(self.ready_bytes),
                self.oldest_ready_time.as_deref().unwrap_or("?"),
            ),
        }
    }
}

/// Bytes as MiB with one decimal (list's own formatter may change shape).
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Adds the backlog of `data_dir` to `list`'s output: a last line of text,
/// or the `archive_backlog` member of the JSON object (null when the data
/// directory is unknown).
pub fn annotate_listing(output: String, json: bool, data_dir: Option<&Path>) -> String {
    let backlog = data_dir.and_then(|d| scan(d, &d.join("pg_wal")));
    if json {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&output) else { return output };
        if let Some(map) = value.as_object_mut() {
            map.insert("archive_backlog".into(), serde_json::to_value(&backlog).unwrap_or(serde_json::Value::Null));
        }
        let mut text = serde_json::to_string_pretty(&value).expect("invariant: JSON values serialize");
        if output.ends_with('\n') {
            text.push('\n');
        }
        return text;
    }
    match backlog {
        Some(b) => format!("{output}\n{}\n", b.describe()),
        None => output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ready_files_bytes_and_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = dir.path().join("pg_wal");
        assert_eq!(scan(dir.path(), &wal), None, "no archive_status: not a data directory");
        std::fs::create_dir_all(wal.join("archive_status")).expect("mkdir");
        let empty = scan(dir.path(), &wal).expect("backlog");
        assert_eq!((empty.ready_files, empty.ready_bytes, empty.lag_seconds), (0, 0, None));
        assert!(empty.describe().contains("none"));
        for (n, len) in [("000000010000000000000001", 1000), ("00000002.history", 42)] {
            std::fs::write(wal.join(n), vec![0u8; len]).expect("write");
            std::fs::write(wal.join("archive_status").join(format!("{n}.ready")), "").expect("ready");
        }
        std::fs::write(wal.join("archive_status/000000010000000000000000.done"), "").expect("done");
        let b = scan(dir.path(), &wal).expect("backlog");
        assert_eq!((b.ready_files, b.ready_bytes), (2, 1042));
        assert!(b.lag_seconds.is_some_and(|s| (0.0..60.0).contains(&s)));
        assert!(b.describe().contains("2 file(s)"), "{}", b.describe());

        let json = annotate_listing("{\n  \"backups\": []\n}\n".into(), true, Some(dir.path()));
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["archive_backlog"]["ready_files"], 2);
        assert_eq!(v["archive_backlog"]["ready_bytes"], 1042);
        assert!(v["backups"].is_array());
        let unknown = annotate_listing("{}".into(), true, None);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&unknown).expect("json")["archive_backlog"],
            serde_json::Value::Null
        );
        assert!(annotate_listing("WAL\n".into(), false, Some(dir.path())).ends_with("behind)\n"));
    }
}
