//! Base backups in the repository: the manifest (what a backup holds and how
//! to recover it) and the packs (large framed objects holding the files'
//! bytes back to back). A backup is complete exactly when its manifest
//! exists: packs are written first, the manifest last, all create-only, so a
//! killed backup never shows as complete and a half-written one is never read.
//!
//! ```text
//! backup/20261123T074000F/pack/000000   files' bytes, framed (SHA-256 of the pack)
//! backup/20261123T074000F/pack/000001
//! backup/20261123T074000F/map/000000    block maps (diff/incr change detection), framed
//! backup/20261123T074000F/manifest      framed JSON, see [`Manifest`]
//! ```
//!
//! A `diff` or `incr` backup (manifest format [`MANIFEST_FORMAT_CHAINED`])
//! stores only what changed since its parent; an [`Extent`] with `backup`
//! set points into a pack of an older backup of the same chain, so restore
//! reads each piece from the backup that holds it. Every file's `sha256` is
//! still the hash of the whole restored file.

use std::fmt;
use std::str::FromStr;

pub use super::keys::{backup_lock_key, backups_prefix, manifest_key, map_key, pack_key};
use serde::{Deserialize, Serialize};

use crate::pg::{Lsn, TimelineId};

/// Original bytes per pack before a new one is started. Bounded memory: a
/// backup worker holds one pack (and its compressed form) at a time.
pub const PACK_TARGET: usize = 32 << 20;

/// Identifies a backup: its start time in UTC and its type, e.g.
/// `20261123T074000F` (F full, D differential, I incremental). Names sort by start time, but
/// retention and target selection use the manifest's stop time, never names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

/// Why a string is not a backup ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a backup ID (expected e.g. 20261123T074000F)")]
pub struct BackupIdError(String);

impl BackupId {
    /// The ID of a backup of `kind` started at `at`.
    pub fn new(at: chrono::DateTime<chrono::Utc>, kind: BackupType) -> BackupId {
        let suffix = match kind {
            BackupType::Full => 'F',
            BackupType::Diff => 'D',
            BackupType::Incr => 'I',
        };
        BackupId(format!("{}{suffix}", at.format("%Y%m%dT%H%M%S")))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = BackupIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = b.len() == 16
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && matches!(b[15], b'F' | b'D' | b'I')
            && chrono::NaiveDateTime::parse_from_str(&s[..15], "%Y%m%dT%H%M%S").is_ok();
        if ok {
            Ok(BackupId(s.to_string()))
        } else {
            Err(BackupIdError(s.to_string()))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = BackupIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Full, differential or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every file.
    Full,
    /// Only what changed since the newest full backup (its parent).
    Diff,
    /// Only what changed since the newest complete backup of any type (its parent).
    Incr,
}

impl BackupType {
    /// The name used in manifests, `list` and metrics: `full`, `diff`, `incr`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

impl fmt::Display for BackupType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// LSNs in JSON as PostgreSQL prints them (`16/B374D848`).
pub mod lsn_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pg::Lsn;

    /// Serializes as `X/Y`.
    pub fn serialize<S: Serializer>(v: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Parses `X/Y`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

fn timeline_as_u32<S: serde::Serializer>(v: &TimelineId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(v.0)
}

fn timeline_from_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TimelineId, D::Error> {
    Ok(TimelineId(u32::deserialize(d)?))
}

/// One pack object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackInfo {
    /// Number of the pack: its key is [`pack_key`]`(id, number)`.
    pub number: u32,
    /// Bytes of file content it holds.
    pub original_size: u64,
    /// Bytes stored (framed, compressed).
    pub stored_size: u64,
    /// Hex SHA-256 of its original bytes (the same as in its frame header).
    pub sha256: String,
}

/// A piece of a file's content inside a pack. Most files are one extent;
/// files larger than a pack span several. In a diff/incr backup, unchanged
/// pieces point into a pack of an older backup of the chain (`backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// The backup whose pack holds the bytes; `None`: the backup of this manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupId>,
    /// Which pack.
    pub pack: u32,
    /// Where in the pack's original bytes.
    pub offset: u64,
    /// How many bytes.
    pub size: u64,
}

impl Extent {
    /// An extent in a pack of the backup that writes it.
    pub fn own(pack: u32, offset: u64, size: u64) -> Extent {
        Extent { backup: None, pack, offset, size }
    }

    /// The backup whose pack holds the bytes, `this` being the manifest's own backup.
    pub fn source<'a>(&'a self, this: &'a BackupId) -> &'a BackupId {
        self.backup.as_ref().unwrap_or(this)
    }
}

/// One file of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory, or to the tablespace's directory
    /// when `tablespace` is set. Always `/`-separated, never absolute, never `..`.
    pub path: String,
    /// OID of the tablespace the file lives in; `None` for the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<u32>,
    /// Size in bytes as read during the backup.
    pub size: u64,
    /// Hex SHA-256 of the whole content as restored (for a block-level file
    /// of a diff/incr backup: of the file assembled from the chain).
    pub sha256: String,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time as read (seconds since the epoch); `--delta` uses it.
    pub mtime: i64,
    /// Where the content is, in order.
    pub extents: Vec<Extent>,
    /// For relation files: where in `maps` this file's block map is (one
    /// 16-byte fingerprint per 8 KiB block), which the next diff/incr backup
    /// compares against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_map: Option<Extent>,
}

/// A directory to recreate (possibly empty, like `pg_wal/` or `pg_replslot/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Path as for [`FileEntry::path`].
    pub path: String,
    /// OID of the tablespace; `None` for the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<u32>,
    /// Unix permission bits.
    pub mode: u32,
}

/// A tablespace: `pg_tblspc/<oid>` links to `location` in the original cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// The tablespace OID (the link's name in `pg_tblspc`).
    pub oid: u32,
    /// The original absolute directory.
    pub location: String,
}

/// Everything about one backup. Stored last, as `backup/<id>/manifest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version: [`MANIFEST_FORMAT`] for a self-contained
    /// backup, [`MANIFEST_FORMAT_CHAINED`] for one with extents in other backups.
    pub format: u32,
    /// The backup ID.
    pub id: BackupId,
    /// Full or incremental.
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// The backup an incremental one builds on.
    #[serde(default)]
    pub parent: Option<BackupId>,
    /// The cluster's system identifier (a string: it exceeds 2^53).
    pub system_identifier: String,
    /// `server_version_num`, e.g. 150018.
    pub server_version_num: u32,
    /// Timeline the backup started on.
    #[serde(serialize_with = "timeline_as_u32", deserialize_with = "timeline_from_u32")]
    pub timeline: TimelineId,
    /// Where recovery from this backup starts (the backup's redo point).
    #[serde(with = "lsn_string")]
    pub start_lsn: Lsn,
    /// Recovery must replay at least to here to be consistent.
    #[serde(with = "lsn_string")]
    pub stop_lsn: Lsn,
    /// Timeline at stop (differs from `timeline` if a promotion happened during the backup).
    #[serde(serialize_with = "timeline_as_u32", deserialize_with = "timeline_from_u32")]
    pub stop_timeline: TimelineId,
    /// When the backup started (RFC 3339, UTC).
    pub start_time: String,
    /// When the backup stopped (RFC 3339, UTC): the earliest time it can recover to.
    pub stop_time: String,
    /// The `backup_label` content `pg_backup_stop` returned.
    pub backup_label: String,
    /// The `tablespace_map` content, if there are tablespaces.
    #[serde(default)]
    pub tablespace_map: Option<String>,
    /// Tablespaces at backup time.
    #[serde(default)]
    pub tablespaces: Vec<Tablespace>,
    /// Bytes of file content.
    pub data_size: u64,
    /// Bytes stored in packs.
    pub stored_size: u64,
    /// The packs.
    pub packs: Vec<PackInfo>,
    /// The block-map objects ([`map_key`]); empty for backups without maps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<PackInfo>,
    /// Directories to recreate.
    pub directories: Vec<DirEntry>,
    /// The files.
    pub files: Vec<FileEntry>,
}

/// The manifest format of a self-contained backup (every extent in its own packs).
pub const MANIFEST_FORMAT: u32 = 1;

/// The manifest format of a diff/incr backup: extents may name an older
/// backup (`Extent::backup`). A pgwal that reads only format 1 refuses it.
pub const MANIFEST_FORMAT_CHAINED: u32 = 2;

/// Whether this build reads manifests of `format`.
pub fn reads_manifest_format(format: u32) -> bool {
    format == MANIFEST_FORMAT || format == MANIFEST_FORMAT_CHAINED
}

impl Manifest {
    /// A manifest of backup `id` of type `kind` on `parent`, holding no
    /// files, of cluster 7 on PostgreSQL 15: the base that unit tests fill in.
    #[cfg(test)]
    pub fn empty_for_test(id: BackupId, kind: BackupType, parent: Option<BackupId>) -> Manifest {
        Manifest {
            format: if kind == BackupType::Full { MANIFEST_FORMAT } else { MANIFEST_FORMAT_CHAINED },
            id,
            kind,
            parent,
            system_identifier: "7".into(),
            server_version_num: 150010,
            timeline: TimelineId(1),
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            stop_timeline: TimelineId(1),
            start_time: String::new(),
            stop_time: String::new(),
            backup_label: String::new(),
            tablespace_map: None,
            tablespaces: vec![],
            data_size: 0,
            stored_size: 0,
            packs: vec![],
            maps: vec![],
            directories: vec![],
            files: vec![],
        }
    }

    /// Every other backup whose packs this manifest's extents point into,
    /// sorted and without duplicates (empty for a full backup).
    pub fn referenced_backups(&self) -> Vec<BackupId> {
        let mut ids: Vec<BackupId> = self
            .files
            .iter()
            .flat_map(|f| f.extents.iter())
            .filter_map(|e| e.backup.clone())
            .filter(|b| *b != self.id)
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Accumulates file content into packs of about [`PACK_TARGET`] bytes.
#[derive(Debug, Default)]
pub struct PackBuilder {
    number: u32,
    data: Vec<u8>,
}

impl PackBuilder {
    /// A builder whose first pack gets `number`.
    pub fn new(number: u32) -> PackBuilder {
        PackBuilder { number, data: Vec::with_capacity(PACK_TARGET) }
    }

    /// Appends `bytes` (at most the room left; see [`PackBuilder::room`]) and
    /// returns its extent.
    pub fn push(&mut self, bytes: &[u8]) -> Extent {
        let offset = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        Extent::own(self.number, offset, bytes.len() as u64)
    }

    /// Reads up to `max` bytes (at most the room left) from `reader` straight
    /// into the pack, stopping early at end of file, and returns their
    /// extent (empty at end of file). See [`PackBuilder::bytes`] to hash them.
    pub fn push_from(&mut self, reader: &mut impl std::io::Read, max: usize) -> std::io::Result<Extent> {
        let offset = self.data.len();
        let want = max.min(self.room());
        self.data.resize(offset + want, 0);
        let mut filled = 0;
        while filled < want {
            match reader.read(&mut self.data[offset + filled..offset + want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.data.truncate(offset);
                    return Err(e);
                }
            }
        }
        self.data.truncate(offset + filled);
        Ok(Extent::own(self.number, offset as u64, filled as u64))
    }

    /// The bytes of `extent`, which must come from the current pack.
    pub fn bytes(&self, extent: &Extent) -> &[u8] {
        &self.data[extent.offset as usize..(extent.offset + extent.size) as usize]
    }

    /// Moves `len` bytes of the current pack from `src` down to `dst`
    /// (`dst <= src`): a diff/incr backup closes the gap a block it does not
    /// store leaves.
    pub fn move_down(&mut self, src: u64, dst: u64, len: u64) {
        debug_assert!(dst <= src);
        let (src, dst, len) = (src as usize, dst as usize, len as usize);
        self.data.copy_within(src..src + len, dst);
    }

    /// Drops the current pack's bytes from `len` on.
    pub fn truncate(&mut self, len: u64) {
        self.data.truncate(len as usize);
    }

    /// Number of the current pack.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Bytes that still fit before the pack is full.
    pub fn room(&self) -> usize {
        PACK_TARGET.saturating_sub(self.data.len())
    }

    /// Whether nothing has been pushed into the current pack.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Takes the current pack's number and bytes and starts the next pack.
    pub fn take(&mut self) -> (u32, Vec<u8>) {
        let number = self.number;
        self.number += 1;
        (number, std::mem::replace(&mut self.data, Vec::with_capacity(PACK_TARGET)))
    }
}

/// Checks a manifest path: relative, `/`-separated, no `.`/`..` components,
/// so a damaged or hostile manifest cannot make restore write outside DIR.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && !path.contains('\\')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-23T07:40:00Z").expect("time").to_utc();
        let id = BackupId::new(at, BackupType::Full);
        assert_eq!(id.as_str(), "20261123T074000F");
        assert_eq!("20261123T074000F".parse::<BackupId>(), Ok(id));
        let d = BackupId::new(at, BackupType::Diff);
        assert_eq!(d.as_str(), "20261123T074000D");
        assert_eq!(
            "20261123T074000I".parse::<BackupId>().map(|i| i.as_str().to_string()),
            Ok("20261123T074000I".into())
        );
        for bad in ["", "20261123T074000", "20261123T074000X", "20261323T074000F", "2026112T3074000F", "../x"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn safe_paths() {
        for ok in ["PG_VERSION", "base/1/1259", "pg_wal", "PG_15_202209061/16384/16385"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "base/../../x", "a//b", "./a", "a/", "a\\b", "a\0b"] {
            assert!(!is_safe_relative_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn packs_fill_and_roll_over() {
        let mut b = PackBuilder::new(0);
        let e1 = b.push(b"hello");
        assert_eq!(e1, Extent::own(0, 0, 5));
        assert_eq!(b.room(), PACK_TARGET - 5);
        let (n, data) = b.take();
        assert_eq!((n, data.as_slice()), (0, &b"hello"[..]));
        assert_eq!(b.push(b"x"), Extent::own(1, 0, 1));
    }

    #[test]
    fn packs_read_straight_from_files() {
        let mut b = PackBuilder::new(7);
        b.push(b"ab");
        let mut src = &b"hello world"[..];
        let e = b.push_from(&mut src, 5).expect("read");
        assert_eq!(e, Extent::own(7, 2, 5));
        assert_eq!(b.bytes(&e), b"hello");
        let rest = b.push_from(&mut src, 100).expect("read");
        assert_eq!(b.bytes(&rest), b" world", "stops at end of file");
        assert_eq!(b.push_from(&mut src, 100).expect("read").size, 0);
        assert_eq!(b.room(), PACK_TARGET - 13);
    }

    #[test]
    fn manifest_json_round_trips() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            id: "20261123T074000F".parse().expect("id"),
            kind: BackupType::Full,
            parent: None,
            system_identifier: "7312345678901234567".into(),
            server_version_num: 150018,
            timeline: TimelineId(1),
            start_lsn: Lsn(0x200_0028),
            stop_lsn: Lsn(0x200_0100),
            stop_timeline: TimelineId(1),
            start_time: "2026-11-23T07:40:00Z".into(),
            stop_time: "2026-11-23T07:40:05Z".into(),
            backup_label: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".into(),
            tablespace_map: None,
            tablespaces: vec![],
            data_size: 5,
            stored_size: 80,
            packs: vec![PackInfo { number: 0, original_size: 5, stored_size: 80, sha256: "ab".into() }],
            directories: vec![DirEntry { path: "pg_wal".into(), tablespace: None, mode: 0o700 }],
            files: vec![FileEntry {
                path: "PG_VERSION".into(),
                tablespace: None,
                size: 3,
                sha256: "cd".into(),
                mode: 0o600,
                mtime: 1,
                extents: vec![Extent::own(0, 0, 3)],
                block_map: None,
            }],
            maps: vec![],
        };
        let json = serde_json::to_string_pretty(&m).expect("serialize");
        assert!(json.contains("\"start_lsn\": \"0/2000028\"") && json.contains("\"type\": \"full\""), "{json}");
        assert!(!json.contains("block_map") && !json.contains("\"maps\"") && !json.contains("\"backup\""), "{json}");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn chained_manifests_name_the_backups_they_read() {
        let parent: BackupId = "20261123T074000F".parse().expect("id");
        let e = Extent { backup: Some(parent.clone()), ..Extent::own(3, 8192, 8192) };
        let json = serde_json::to_string(&e).expect("serialize");
        assert!(json.contains("\"backup\":\"20261123T074000F\""), "{json}");
        assert_eq!(serde_json::from_str::<Extent>(&json).expect("parse"), e);
        let this: BackupId = "20261124T074000I".parse().expect("id");
        assert_eq!(e.source(&this), &parent);
        assert_eq!(Extent::own(0, 0, 1).source(&this), &this);
        assert!(reads_manifest_format(MANIFEST_FORMAT) && reads_manifest_format(MANIFEST_FORMAT_CHAINED));
        assert!(!reads_manifest_format(3));
    }
}
