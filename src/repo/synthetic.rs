//! Synthetic repositories for tests and benchmarks: valid framed objects
//! (WAL segments with a real first-page header, history files, backups with a
//! manifest and a pack) written through [`Repository`], so they pass every
//! check `verify` makes; and, for scale benchmarks, tiny stand-in WAL objects
//! written straight into a local repository's directory layout without fsync.
//! Nothing in the commands uses this module.

use std::path::Path;

use object_store::path::Path as Key;

use super::backup::{manifest_key, pack_key, BackupId, BackupType, Extent, FileEntry, Manifest, PackInfo};
use super::frame::{self, Compression};
use super::{keys, ClusterIdentity, Repository};
use crate::error::{Error, Result};
use crate::pg::history::HistoryEntry;
use crate::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};

/// Bytes of a segment whose first page is a valid long page header (as
/// PostgreSQL 15 writes it) for `name`, zeros after it.
pub fn segment_content(name: &WalFileName, sysid: u64, size: WalSegmentSize) -> Vec<u8> {
    let mut b = vec![0u8; size.bytes() as usize];
    let page_addr = name.segment_no(size).map_or(0, |s| s.start_lsn(size).0);
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0007u16.to_le_bytes());
    b[4..8].copy_from_slice(&name.timeline().0.to_le_bytes());
    b[8..16].copy_from_slice(&page_addr.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&(size.bytes() as u32).to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

fn encode_err(key: &Key) -> impl FnOnce(frame::FrameError) -> Error + '_ {
    move |e| Error::Corrupt { key: key.to_string(), reason: e.to_string() }
}

/// Creates the format and cluster identity objects.
pub async fn init(repo: &Repository, sysid: u64, size: WalSegmentSize) -> Result<()> {
    repo.create_format().await?;
    let identity = ClusterIdentity { system_identifier: sysid, pg_version: 15, wal_segment_size: size.bytes() };
    repo.create_identity(&identity).await?;
    Ok(())
}

/// Stores a framed object with `content` under `key`.
pub async fn put(repo: &Repository, key: &Key, content: &[u8]) -> Result<()> {
    let (object, header) = frame::encode(content, Compression::Zstd(1)).map_err(encode_err(key))?;
    repo.put_create(key, object.into(), &header).await?;
    Ok(())
}

/// Stores segment `seg` of timeline `tli`.
pub async fn put_segment(
    repo: &Repository,
    tli: TimelineId,
    seg: SegmentNo,
    sysid: u64,
    size: WalSegmentSize,
) -> Result<()> {
    let name = WalFileName::segment(tli, seg, size);
    put(repo, &keys::wal(&name), &segment_content(&name, sysid, size)).await
}

/// Stores the history file of `tli`.
pub async fn put_history(repo: &Repository, tli: TimelineId, ancestors: &[HistoryEntry]) -> Result<()> {
    let text: String = ancestors.iter().map(|h| format!("{}\t{}\tsynthetic\n", h.parent.0, h.switch_point)).collect();
    put(repo, &keys::wal(&WalFileName::History { tli }), text.as_bytes()).await
}

/// Stores a full backup (one pack holding one file) that started at
/// `start_lsn` and stopped at `stop_lsn` on `tli` at `stop_time`.
pub async fn put_backup(
    repo: &Repository,
    sysid: u64,
    tli: TimelineId,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    stop_time: chrono::DateTime<chrono::Utc>,
) -> Result<Manifest> {
    let id = BackupId::new(stop_time - chrono::Duration::seconds(1), BackupType::Full);
    let content = format!("synthetic backup {id}\n").repeat(64);
    let key = pack_key(&id, 0);
    let (object, header) = frame::encode(content.as_bytes(), Compression::Zstd(1)).map_err(encode_err(&key))?;
    let stored_size = object.len() as u64;
    repo.put_create(&key, object.into(), &header).await?;
    let sha = frame::hex(&header.sha256);
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let manifest = Manifest {
        format: super::backup::MANIFEST_FORMAT,
        id: id.clone(),
        kind: BackupType::Full,
        parent: None,
        system_identifier: sysid.to_string(),
        server_version_num: 150000,
        timeline: tli,
        start_lsn,
        stop_lsn,
        stop_timeline: tli,
        start_time: fmt(stop_time - chrono::Duration::seconds(1)),
        stop_time: fmt(stop_time),
        backup_label: format!("START WAL LOCATION: {start_lsn}\n"),
        tablespace_map: None,
        tablespaces: vec![],
        data_size: content.len() as u64,
        stored_size,
        packs: vec![PackInfo { number: 0, original_size: content.len() as u64, stored_size, sha256: sha.clone() }],
        directories: vec![],
        files: vec![FileEntry {
            path: "PG_VERSION".into(),
            tablespace: None,
            size: content.len() as u64,
            sha256: sha,
            mode: 0o600,
            mtime: 0,
            extents: vec![Extent::own(0, 0, content.len() as u64)],
            block_map: None,
        }],
        maps: vec![],
    };
    repo.store_json(&manifest_key(&id), &manifest).await?;
    Ok(manifest)
}

/// Stores a chained backup (manifest format 2) of `kind` (diff or incr) on
/// `parent`, taken like [`put_backup`]: its own pack holds one new file,
/// `base/1/16384`, and its `PG_VERSION` points at the pieces `parent`'s
/// `PG_VERSION` reads (so into the pack of the chain's full backup).
pub async fn put_chained(
    repo: &Repository,
    parent: &Manifest,
    kind: BackupType,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    stop_time: chrono::DateTime<chrono::Utc>,
) -> Result<Manifest> {
    let id = BackupId::new(stop_time - chrono::Duration::seconds(1), kind);
    let content = format!("synthetic {} backup {id}\n", kind.as_str()).repeat(64);
    let key = pack_key(&id, 0);
    let (object, header) = frame::encode(content.as_bytes(), Compression::Zstd(1)).map_err(encode_err(&key))?;
    let stored_size = object.len() as u64;
    repo.put_create(&key, object.into(), &header).await?;
    let sha = frame::hex(&header.sha256);
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut pg_version = parent.files.iter().find(|f| f.path == "PG_VERSION").cloned().ok_or_else(|| {
        Error::Corrupt { key: manifest_key(&parent.id).to_string(), reason: "the parent has no PG_VERSION".into() }
    })?;
    for e in &mut pg_version.extents {
        e.backup = Some(e.source(&parent.id).clone());
    }
    let new_file = FileEntry {
        path: "base/1/16384".into(),
        tablespace: None,
        size: content.len() as u64,
        sha256: sha.clone(),
        mode: 0o600,
        mtime: 0,
        extents: vec![Extent::own(0, 0, content.len() as u64)],
        block_map: None,
    };
    let mut m = Manifest {
        format: super::backup::MANIFEST_FORMAT_CHAINED,
        id: id.clone(),
        kind,
        parent: Some(parent.id.clone()),
        system_identifier: parent.system_identifier.clone(),
        server_version_num: parent.server_version_num,
        timeline: parent.stop_timeline,
        start_lsn,
        stop_lsn,
        stop_timeline: parent.stop_timeline,
        start_time: fmt(stop_time - chrono::Duration::seconds(1)),
        stop_time: fmt(stop_time),
        backup_label: format!("START WAL LOCATION: {start_lsn}\n"),
        tablespace_map: None,
        tablespaces: vec![],
        data_size: content.len() as u64,
        stored_size,
        packs: vec![PackInfo { number: 0, original_size: content.len() as u64, stored_size, sha256: sha }],
        directories: vec![],
        files: vec![],
        maps: vec![],
    };
    m.files = vec![pg_version, new_file];
    repo.store_json(&manifest_key(&id), &m).await?;
    Ok(m)
}

/// For scale benchmarks: writes segments `segs` of timeline `tli` into the
/// local repository at `root` as tiny framed objects (8 bytes of content,
/// so they pass listings and quick checks but not a full `verify`), straight
/// into the directory layout, without fsync, on `threads` threads.
pub fn write_local_tiny_wal(
    root: &Path,
    tli: TimelineId,
    segs: std::ops::Range<u64>,
    size: WalSegmentSize,
    threads: usize,
) -> std::io::Result<u64> {
    let (object, _) = frame::encode(b"synthetc", Compression::None).map_err(std::io::Error::other)?;
    let per = size.segments_per_log_file();
    let first_log = segs.start / per;
    let last_log = segs.end.saturating_sub(1) / per;
    let logs: Vec<u64> = (first_log..=last_log).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let written = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            handles.push(s.spawn(|| -> std::io::Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&log) = logs.get(i) else { return Ok(()) };
                    let lo = (log * per).max(segs.start);
                    let hi = ((log + 1) * per).min(segs.end);
                    let dir = root.join(super::keys::log_dir_named(&super::keys::log_dir_name(tli, log)).as_ref());
                    std::fs::create_dir_all(&dir)?;
                    for seg in lo..hi {
                        let name = WalFileName::segment(tli, SegmentNo(seg), size);
                        std::fs::write(dir.join(name.to_string()), &object)?;
                        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            h.join().map_err(|_| std::io::Error::other("writer thread panicked"))??;
        }
        Ok::<(), std::io::Error>(())
    })?;
    Ok(written.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::validate::validate_segment_head;

    #[test]
    fn synthetic_segments_pass_validation() {
        let size = WalSegmentSize::new(1 << 20).expect("1 MiB");
        let name = WalFileName::segment(TimelineId(2), SegmentNo(300), size);
        let content = segment_content(&name, 42, size);
        let h = validate_segment_head(&name, &content, content.len() as u64).expect("valid");
        assert_eq!(h.system_identifier, 42);
    }
}
