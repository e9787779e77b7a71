//! The parallel part of a backup: workers read files into packs, hashing
//! each file as it goes, compress each full pack (frame::encode), and hand it
//! to the uploader, which stores packs create-only while the workers go on.
//!
//! Memory is bounded: a pack exists from its first byte until its upload
//! ends, and at most `workers + 1` packs exist at once (a semaphore of that
//! many slots; a worker takes one before it starts a pack, the upload gives
//! it back), [`UPLOADS_AHEAD`] more on an object store. So a worker never
//! waits for a slow store with more than one spare pack ready, and the
//! store never waits for compression when one is; on an object store, where
//! one upload waits for round trips and one connection's window, several
//! compressed packs upload at once while the workers go on.
//!
//! Relation files are read block by block: each block's fingerprint goes
//! into the file's block map (`map/` objects, a few per backup), and in a
//! diff/incr backup a block equal to the parent's is taken out of the pack
//! again and referenced where the parent's bytes are (see [`super::blocks`]).
//! A file the parent holds without a block map is hashed first and
//! referenced whole when its SHA-256 and size are the parent's.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::blocks::{self, Extents, ParentFile, Run, BLOCK};
use super::parent::ParentIndex;
use super::walk::FileToCopy;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::backup::{map_key, pack_key, BackupId, Extent, FileEntry, PackBuilder, PackInfo};
use crate::repo::frame::{self, Compression, FrameHeader};
use crate::repo::Repository;

/// Largest read into a pack at once, so that an abort is noticed soon.
const READ_CHUNK: usize = 4 << 20;

/// Block-map bytes per `map/` object before a new one is started (a 1 GiB
/// relation segment's map is 2 MiB, and one file's map is never split).
const MAP_TARGET: usize = 8 << 20;

/// Packs that may wait for their upload beyond `workers + 1` when the
/// repository is on an object store (each a create-only PUT of its own).
pub const UPLOADS_AHEAD: usize = 2;

/// How the packing runs.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// zstd level.
    pub compress_level: i32,
    /// Worker threads (at least 1).
    pub workers: usize,
}

/// What the packing produced.
#[derive(Debug, Default)]
pub struct Packed {
    /// One entry per file copied (vanished files are absent), unsorted.
    pub files: Vec<FileEntry>,
    /// The packs stored, unsorted.
    pub packs: Vec<PackInfo>,
    /// The block-map objects stored, unsorted.
    pub maps: Vec<PackInfo>,
}

struct Shared {
    queue: Mutex<VecDeque<FileToCopy>>,
    next_pack: AtomicU32,
    next_map: AtomicU32,
    parent: Arc<ParentIndex>,
    abort: AtomicBool,
    slots: Arc<Semaphore>,
    level: i32,
    read_bytes: AtomicU64,
}

/// Which kind of object an [`Encoded`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pack,
    Map,
}

/// A compressed pack (holding its memory slot) or block map on its way to the store.
struct Encoded {
    kind: Kind,
    number: u32,
    object: Vec<u8>,
    header: FrameHeader,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The pack a worker is filling.
struct OpenPack {
    builder: PackBuilder,
    _slot: OwnedSemaphorePermit,
}

/// The block-map object a worker is filling.
struct OpenMap {
    number: u32,
    data: Vec<u8>,
}

/// What one worker has open.
#[derive(Default)]
struct Open {
    pack: Option<OpenPack>,
    map: Option<OpenMap>,
}

/// Copies `files` into packs of backup `id`, stored in `repo`, comparing
/// against `parent` (empty for a full backup).
pub async fn pack_files(
    repo: &Repository,
    id: &BackupId,
    files: Vec<FileToCopy>,
    parent: Arc<ParentIndex>,
    opts: &PackOptions,
    progress: &Progress,
) -> Result<Packed> {
    let workers = opts.workers.max(1);
    let slots = workers + 1 + if repo.is_local() { 0 } else { UPLOADS_AHEAD };
    let shared = Arc::new(Shared {
        queue: Mutex::new(files.into()),
        next_pack: AtomicU32::new(0),
        next_map: AtomicU32::new(0),
        parent,
        abort: AtomicBool::new(false),
        slots: Arc::new(Semaphore::new(slots)),
        level: opts.compress_level,
        read_bytes: AtomicU64::new(0),
    });
    let (tx, mut rx) = mpsc::channel::<Encoded>(slots);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (shared, tx) = (Arc::clone(&shared), tx.clone());
            tokio::task::spawn_blocking(move || {
                let result = worker(&shared, &tx);
                if result.is_err() {
                    shared.abort.store(true, Ordering::Relaxed);
                    shared.slots.close();
                }
                result
            })
        })
        .collect();
    drop(tx);

    let mut out = Packed::default();
    let mut failure: Option<Error> = None;
    let mut uploads = FuturesUnordered::new();
    let mut receiving = true;
    let mut stored_bytes = 0u64;
    while receiving || !uploads.is_empty() {
        tokio::select! {
            msg = rx.recv(), if receiving => match msg {
                Some(pack) if failure.is_none() => uploads.push(upload(repo, id, pack)),
                Some(_) => {}
                None => receiving = false,
            },
            Some(done) = uploads.next(), if !uploads.is_empty() => match done {
                Ok((Kind::Map, info)) => out.maps.push(info),
                Ok((Kind::Pack, info)) => {
                    stored_bytes += info.stored_size;
                    out.packs.push(info);
                    let read = shared.read_bytes.load(Ordering::Relaxed);
                    progress.update(read, &format!("{} MiB stored", stored_bytes >> 20));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    shared.abort.store(true, Ordering::Relaxed);
                    shared.slots.close();
                }
            },
        }
    }
    for handle in handles {
        match handle.await {
            Ok(Ok(files)) => out.files.extend(files),
            Ok(Err(e)) => {
                // A worker's own error comes first: uploads failing after it are its consequence.
                if !matches!(failure, Some(Error::Io { .. })) {
                    failure = Some(e);
                }
            }
            Err(join) => {
                failure.get_or_insert(Error::Io {
                    action: "backup worker failed",
                    path: id.to_string().into(),
                    source: std::io::Error::other(join.to_string()),
                });
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

async fn upload(repo: &Repository, id: &BackupId, pack: Encoded) -> Result<(Kind, PackInfo)> {
    let key = match pack.kind {
        Kind::Pack => pack_key(id, pack.number),
        Kind::Map => map_key(id, pack.number),
    };
    let stored_size = pack.object.len() as u64;
    repo.put_create(&key, pack.object.into(), &pack.header).await?;
    let info = PackInfo {
        number: pack.number,
        original_size: pack.header.original_size,
        stored_size,
        sha256: frame::hex(&pack.header.sha256),
    };
    Ok((pack.kind, info))
    // The slot is released here, with `pack`.
}

/// One worker: takes files off the queue until it is empty.
fn worker(shared: &Shared, tx: &mpsc::Sender<Encoded>) -> Result<Vec<FileEntry>> {
    let mut open = Open::default();
    let mut entries = Vec::new();
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            return Ok(entries);
        }
        let next = shared.queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(file) = next else { break };
        if let Some(entry) = copy_file(shared, tx, &mut open, &file)? {
            entries.push(entry);
        }
    }
    flush(shared, tx, &mut open.pack)?;
    flush_map(shared, tx, &mut open.map)?;
    Ok(entries)
}

/// What reading a file gave.
struct Content {
    extents: Vec<Extent>,
    size: u64,
    sha256: String,
    /// The block map (relation files only).
    map: Vec<u8>,
}

/// Copies one file into the open pack (and the next ones if it does not
/// fit), or references the parent's copy of what did not change. Reads at
/// most the size the file has when opened, as PostgreSQL's own base backup
/// does: what is appended later is in the WAL. `None` if the file vanished
/// (or the backup is being aborted).
fn copy_file(
    shared: &Shared,
    tx: &mpsc::Sender<Encoded>,
    open: &mut Open,
    file: &FileToCopy,
) -> Result<Option<FileEntry>> {
    let mut f = match File::open(&file.abs) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", &file.abs)(e)),
    };
    let meta = f.metadata().map_err(Error::io("cannot stat", &file.abs))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let limit = meta.len();
    let parent = shared.parent.file(file.tablespace, &file.rel);
    let mut content = None;
    // The parent holds it at this size but has no block map to compare
    // with (a non-relation file, or a parent without maps): unchanged
    // exactly when the whole content hashes the same.
    if let Some(p) = parent.filter(|p| p.size == limit && (p.map.is_none() || !file.relation)) {
        let Some(hashed) = hash_whole(shared, &mut f, limit, file.relation, &file.abs)? else { return Ok(None) };
        if hashed.size == p.size && hashed.sha256 == p.sha256 {
            shared.read_bytes.fetch_add(hashed.size, Ordering::Relaxed);
            content = Some(Content { extents: p.extents.clone(), ..hashed });
        } else {
            f.seek(SeekFrom::Start(0)).map_err(Error::io("cannot read", &file.abs))?;
        }
    }
    let content = match content {
        Some(c) => c,
        None => {
            let compare = parent.filter(|p| file.relation && p.map.is_some());
            match copy_content(shared, tx, &mut open.pack, &mut f, file, limit, compare)? {
                Some(c) => c,
                None => return Ok(None),
            }
        }
    };
    let block_map = match file.relation && !content.map.is_empty() {
        true => Some(add_map(shared, tx, &mut open.map, &content.map)?),
        false => None,
    };
    Ok(Some(FileEntry {
        path: file.rel.clone(),
        tablespace: file.tablespace,
        size: content.size,
        sha256: content.sha256,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        extents: content.extents,
        block_map,
    }))
}

/// Reads the file into packs. A relation file goes block by block: each
/// block is fingerprinted and, when `parent` has the same block at the same
/// place, taken out of the pack again and referenced in the parent's copy.
fn copy_content(
    shared: &Shared,
    tx: &mpsc::Sender<Encoded>,
    open: &mut Option<OpenPack>,
    f: &mut File,
    file: &FileToCopy,
    limit: u64,
    parent: Option<&ParentFile>,
) -> Result<Option<Content>> {
    let relation = file.relation;
    let mut hasher = Sha256::new();
    let mut out = Extents::default();
    let mut run = Run::default();
    let mut map = Vec::with_capacity(if relation { blocks::blocks(limit) as usize * blocks::FINGERPRINT } else { 0 });
    let mut total = 0u64;
    while total < limit {
        if shared.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let left = limit - total;
        // A relation file's blocks never straddle packs: each is one piece to fingerprint.
        let need = if relation { left.min(BLOCK) } else { 1 };
        if open.as_ref().is_some_and(|p| (p.builder.room() as u64) < need) {
            flush(shared, tx, open)?;
        }
        let pack = match open {
            Some(p) => p,
            None => {
                // Wait for a memory slot; a closed semaphore means the backup is aborting.
                let Ok(slot) = futures::executor::block_on(Arc::clone(&shared.slots).acquire_owned()) else {
                    return Ok(None);
                };
                let number = shared.next_pack.fetch_add(1, Ordering::Relaxed);
                open.insert(OpenPack { builder: PackBuilder::new(number), _slot: slot })
            }
        };
        let room = pack.builder.room() as u64;
        let room = if relation && left >= BLOCK { room / BLOCK * BLOCK } else { room };
        let want = left.min(READ_CHUNK as u64).min(room);
        let extent = pack.builder.push_from(f, want as usize).map_err(Error::io("cannot read", &file.abs))?;
        if extent.size == 0 {
            // Truncated while we read: keep what was there.
            break;
        }
        shared.read_bytes.fetch_add(extent.size, Ordering::Relaxed);
        let short = extent.size < want;
        if !relation {
            hasher.update(pack.builder.bytes(&extent));
            total += extent.size;
            out.push(extent);
            continue;
        }
        let (mut read, mut write, end) = (extent.offset, extent.offset, extent.offset + extent.size);
        while read < end {
            let len = (end - read).min(BLOCK);
            let index = (total + read - extent.offset) / BLOCK;
            let bytes = pack.builder.bytes(&Extent::own(extent.pack, read, len));
            hasher.update(bytes);
            let fp = blocks::fingerprint(bytes);
            map.extend_from_slice(&fp);
            match parent {
                Some(p) if p.same_block(index, len, &fp) => run.add(p, index, len, &mut out),
                _ => {
                    if let Some(p) = parent {
                        run.close(p, &mut out);
                    }
                    if write != read {
                        pack.builder.move_down(read, write, len);
                    }
                    out.push(Extent::own(extent.pack, write, len));
                    write += len;
                }
            }
            read += len;
        }
        pack.builder.truncate(write);
        total += extent.size;
        if short {
            // Truncated while we read (a short read is the end of the file).
            break;
        }
    }
    if let Some(p) = parent {
        run.close(p, &mut out);
    }
    Ok(Some(Content { extents: out.0, size: total, sha256: frame::hex(&hasher.finalize().into()), map }))
}

/// Reads a whole file without storing it: its size, SHA-256 and (for a
/// relation file) block map. `None` if the backup is being aborted.
fn hash_whole(
    shared: &Shared,
    f: &mut File,
    limit: u64,
    relation: bool,
    path: &std::path::Path,
) -> Result<Option<Content>> {
    let mut hasher = Sha256::new();
    let mut map = Vec::new();
    let mut buf = vec![0u8; (limit as usize).clamp(1, 1 << 20)];
    let mut total = 0u64;
    while total < limit {
        if shared.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let want = (limit - total).min(buf.len() as u64) as usize;
        let mut filled = 0;
        while filled < want {
            match f.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("cannot read", path)(e)),
            }
        }
        hasher.update(&buf[..filled]);
        if relation {
            // `buf` holds whole blocks (1 MiB or the whole file): blocks never straddle reads.
            map.extend(buf[..filled].chunks(BLOCK as usize).flat_map(blocks::fingerprint));
        }
        total += filled as u64;
        if filled < want {
            break;
        }
    }
    Ok(Some(Content { extents: vec![], size: total, sha256: frame::hex(&hasher.finalize().into()), map }))
}

/// Appends a file's block map to the open map object (starting a new one
/// when it would grow past [`MAP_TARGET`]) and returns where it is.
fn add_map(shared: &Shared, tx: &mpsc::Sender<Encoded>, open: &mut Option<OpenMap>, map: &[u8]) -> Result<Extent> {
    if open.as_ref().is_some_and(|m| !m.data.is_empty() && m.data.len() + map.len() > MAP_TARGET) {
        flush_map(shared, tx, open)?;
    }
    let m = open.get_or_insert_with(|| OpenMap {
        number: shared.next_map.fetch_add(1, Ordering::Relaxed),
        data: Vec::with_capacity(MAP_TARGET.min(map.len().max(1 << 16))),
    });
    let extent = Extent::own(m.number, m.data.len() as u64, map.len() as u64);
    m.data.extend_from_slice(map);
    Ok(extent)
}

/// Compresses the open pack and hands it to the uploader.
fn flush(shared: &Shared, tx: &mpsc::Sender<Encoded>, open: &mut Option<OpenPack>) -> Result<()> {
    let Some(OpenPack { mut builder, _slot }) = open.take() else { return Ok(()) };
    if builder.is_empty() {
        return Ok(());
    }
    let (number, data) = builder.take();
    send(shared, tx, Kind::Pack, number, data, Some(_slot))
}

/// Compresses the open block-map object and hands it to the uploader.
fn flush_map(shared: &Shared, tx: &mpsc::Sender<Encoded>, open: &mut Option<OpenMap>) -> Result<()> {
    let Some(OpenMap { number, data }) = open.take() else { return Ok(()) };
    if data.is_empty() {
        return Ok(());
    }
    send(shared, tx, Kind::Map, number, data, None)
}

fn send(
    shared: &Shared,
    tx: &mpsc::Sender<Encoded>,
    kind: Kind,
    number: u32,
    data: Vec<u8>,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<()> {
    let (object, header) = frame::encode(&data, Compression::Zstd(shared.level)).map_err(|e| Error::Io {
        action: if kind == Kind::Pack { "cannot compress pack" } else { "cannot compress block map" },
        path: number.to_string().into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    drop(data);
    if tx.blocking_send(Encoded { kind, number, object, header, _slot: slot }).is_err() {
        // The uploader stopped: the backup is failing already.
        shared.abort.store(true, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_repo() -> Repository {
        Repository::in_memory()
    }

    /// Files of every size, including ones spanning several packs, come back
    /// byte for byte from the stored packs via their extents.
    #[test]
    fn files_round_trip_through_packs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = [0usize, 1, 8192, 5 << 20, crate::repo::backup::PACK_TARGET + 12345, 3 << 20];
        let mut files = Vec::new();
        let mut contents = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..*size).map(|j| ((j * 7 + i * 13) % 251) as u8 ^ (j >> 16) as u8).collect();
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &data).expect("write");
            files.push(FileToCopy {
                abs: path,
                rel: format!("f{i}"),
                tablespace: None,
                size: *size as u64,
                relation: false,
            });
            contents.push(data);
        }
        files.push(FileToCopy {
            abs: dir.path().join("vanished"),
            rel: "vanished".into(),
            tablespace: None,
            size: 5,
            relation: false,
        });
        let id: BackupId = "20261123T074000F".parse().expect("id");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        for workers in [1, 3] {
            // Several workers number packs in another order: a fresh repository each time.
            let repo = memory_repo();
            let opts = PackOptions { compress_level: 1, workers };
            let packed = rt
                .block_on(pack_files(&repo, &id, files.clone(), Default::default(), &opts, &Progress::hidden()))
                .expect("pack");
            assert_eq!(packed.files.len(), sizes.len(), "the vanished file is left out");
            let mut packs = std::collections::HashMap::new();
            for p in &packed.packs {
                let bytes = rt.block_on(repo.get(&pack_key(&id, p.number))).expect("get").expect("stored");
                let data = frame::decode(&bytes).expect("decode");
                assert_eq!(data.len() as u64, p.original_size);
                assert!(data.len() <= crate::repo::backup::PACK_TARGET);
                packs.insert(p.number, data);
            }
            for entry in &packed.files {
                let i: usize = entry.path[1..].parse().expect("index");
                let mut back = Vec::new();
                for e in &entry.extents {
                    back.extend_from_slice(&packs[&e.pack][e.offset as usize..(e.offset + e.size) as usize]);
                }
                assert_eq!(back, contents[i], "{} with {workers} workers", entry.path);
                assert_eq!(entry.sha256, frame::hex(&frame::sha256(&contents[i])));
                assert_eq!(entry.size, contents[i].len() as u64);
            }
        }
    }

    use crate::ops::backup::parent::packs_of;

    /// A manifest holding what `pack_files` produced, as the parent of the next backup.
    fn manifest_of(id: &BackupId, parent: Option<&BackupId>, packed: &Packed) -> crate::repo::backup::Manifest {
        use crate::repo::backup::{BackupType, Manifest};
        let kind = if parent.is_some() { BackupType::Incr } else { BackupType::Full };
        Manifest {
            packs: packed.packs.clone(),
            maps: packed.maps.clone(),
            files: packed.files.clone(),
            ..Manifest::empty_for_test(id.clone(), kind, parent.cloned())
        }
    }

    /// Reads a file back through its extents from the packs of every backup.
    fn assemble(rt: &tokio::runtime::Runtime, repo: &Repository, this: &BackupId, entry: &FileEntry) -> Vec<u8> {
        let mut back = Vec::new();
        for e in &entry.extents {
            let object = rt.block_on(repo.get(&pack_key(e.source(this), e.pack))).expect("get").expect("stored");
            let data = frame::decode(&object).expect("decode");
            back.extend_from_slice(&data[e.offset as usize..(e.offset + e.size) as usize]);
        }
        back
    }

    /// A full, then an incr after changes (hint-bit-like byte flips, growth,
    /// truncation, a changed and an unchanged other file, a dropped file),
    /// then an incr of that with no change: every file assembles to what is
    /// on disk now, only the changed blocks and files are stored, and every
    /// reference is one hop to the backup that holds the bytes.
    #[test]
    fn incr_stores_changed_blocks_only_and_assembles_exactly() {
        incr_round_trip(memory_repo());
    }

    /// The same chain in an encrypted repository: maps and packs of every
    /// backup of the chain are read back through the keyring.
    #[test]
    fn incr_assembles_exactly_in_an_encrypted_repository() {
        let key = crate::repo::keyring::RepositoryKey::new([9; 32], "/keys/test");
        let repo = memory_repo().with_key(Some(key));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(repo.create_format_for(Some(7))).expect("encrypted repository");
        incr_round_trip(repo);
    }

    fn incr_round_trip(repo: Repository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let block =
            |seed: usize| -> Vec<u8> { (0..BLOCK as usize).map(|i| ((i * 7 + seed * 13) % 251) as u8).collect() };
        let rel = |n: usize, from: usize| -> Vec<u8> { (from..from + n).flat_map(block).collect() };
        let write = |name: &str, data: &[u8]| std::fs::write(dir.path().join(name), data).expect("write");
        // 5000 blocks: 40 MiB, more than a pack, so blocks cross into a second pack.
        write("16384", &rel(5000, 0));
        write("16385", &rel(3, 9000));
        write("16386", &rel(2, 9500));
        write("PG_VERSION", b"15\n");
        write("postgresql.conf", b"shared_buffers = 128MB\n");
        let files = |names: &[&str]| -> Vec<FileToCopy> {
            names
                .iter()
                .map(|n| FileToCopy {
                    abs: dir.path().join(n),
                    rel: format!("base/5/{n}"),
                    tablespace: None,
                    size: 0,
                    relation: n.bytes().all(|b| b.is_ascii_digit()),
                })
                .collect()
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let opts = PackOptions { compress_level: 1, workers: 2 };
        let (f, i1, i2): (BackupId, BackupId, BackupId) = (
            "20261123T074000F".parse().expect("id"),
            "20261124T074000I".parse().expect("id"),
            "20261125T074000I".parse().expect("id"),
        );
        let all = ["16384", "16385", "16386", "PG_VERSION", "postgresql.conf"];
        let full = rt
            .block_on(pack_files(&repo, &f, files(&all), Default::default(), &opts, &Progress::hidden()))
            .expect("full");
        assert!(full.files.iter().all(|e| e.block_map.is_some() == e.path.ends_with(|c: char| c.is_ascii_digit())));
        let full_m = manifest_of(&f, None, &full);

        let mut changed = rel(5000, 0);
        changed[3 * BLOCK as usize + 100] ^= 1;
        changed[4097 * BLOCK as usize] ^= 0x80;
        changed.extend(rel(2, 7000));
        write("16384", &changed);
        write("16385", &rel(1, 9000));
        write("postgresql.conf", b"shared_buffers = 256MB\n");
        std::fs::remove_file(dir.path().join("16386")).expect("drop");
        let index = rt.block_on(ParentIndex::load(&repo, &full_m, &packs_of([&full_m]))).expect("index");
        let incr = rt
            .block_on(pack_files(&repo, &i1, files(&all), Arc::new(index), &opts, &Progress::hidden()))
            .expect("incr");
        assert_eq!(incr.files.len(), 4, "the dropped file is gone");
        for entry in &incr.files {
            let name = entry.path.rsplit('/').next().expect("name");
            let now = std::fs::read(dir.path().join(name)).expect("read");
            assert_eq!(assemble(&rt, &repo, &i1, entry), now, "{name} assembles to what is on disk");
            assert_eq!(entry.sha256, frame::hex(&frame::sha256(&now)), "{name}");
            assert!(entry.extents.iter().all(|e| e.backup.is_none() || e.backup.as_ref() == Some(&f)));
        }
        let own: u64 = incr.packs.iter().map(|p| p.original_size).sum();
        assert_eq!(own, 4 * BLOCK + 23, "two changed blocks, two new ones and the changed config file");
        let big = incr.files.iter().find(|e| e.path.ends_with("16384")).expect("16384");
        assert!(big.extents.len() <= 8, "unchanged runs coalesce: {:?}", big.extents);

        let incr_m = manifest_of(&i1, Some(&f), &incr);
        let index = rt.block_on(ParentIndex::load(&repo, &incr_m, &packs_of([&full_m, &incr_m]))).expect("index");
        let again = rt
            .block_on(pack_files(&repo, &i2, files(&all), Arc::new(index), &opts, &Progress::hidden()))
            .expect("incr of incr");
        assert!(again.packs.is_empty(), "nothing changed, nothing stored: {:?}", again.packs);
        for entry in &again.files {
            let name = entry.path.rsplit('/').next().expect("name");
            assert_eq!(assemble(&rt, &repo, &i2, entry), std::fs::read(dir.path().join(name)).expect("read"), "{name}");
            assert!(
                entry.extents.iter().all(|e| e.backup.as_ref() == Some(&f) || e.backup.as_ref() == Some(&i1)),
                "one hop: {:?}",
                entry.extents
            );
        }
    }
}
