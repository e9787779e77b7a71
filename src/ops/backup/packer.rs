//! The parallel part of a backup: workers read files into packs, hashing
//! each file as it goes, compress each full pack (frame::encode), and hand it
//! to the uploader, which stores packs create-only while the workers go on.
//!
//! Memory is bounded: a pack exists from its first byte until its upload
//! ends, and at most `workers + 1` packs exist at once (a semaphore of that
//! many slots; a worker takes one before it starts a pack, the upload gives
//! it back). So a worker never waits for a slow store with more than one
//! spare pack ready, and the store never waits for compression when one is.

use std::collections::VecDeque;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::walk::FileToCopy;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::backup::{pack_key, BackupId, Extent, FileEntry, PackBuilder, PackInfo};
use crate::repo::frame::{self, Compression, FrameHeader};
use crate::repo::Repository;

/// Largest read into a pack at once, so that an abort is noticed soon.
const READ_CHUNK: usize = 4 << 20;

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
}

struct Shared {
    queue: Mutex<VecDeque<FileToCopy>>,
    next_pack: AtomicU32,
    abort: AtomicBool,
    slots: Arc<Semaphore>,
    level: i32,
    read_bytes: AtomicU64,
}

/// A compressed pack on its way to the store, holding its memory slot.
struct Encoded {
    number: u32,
    object: Vec<u8>,
    header: FrameHeader,
    _slot: OwnedSemaphorePermit,
}

/// The pack a worker is filling.
struct OpenPack {
    builder: PackBuilder,
    _slot: OwnedSemaphorePermit,
}

/// Copies `files` into packs of backup `id`, stored in `repo`.
pub async fn pack_files(
    repo: &Repository,
    id: &BackupId,
    files: Vec<FileToCopy>,
    opts: &PackOptions,
    progress: &Progress,
) -> Result<Packed> {
    let workers = opts.workers.max(1);
    let shared = Arc::new(Shared {
        queue: Mutex::new(files.into()),
        next_pack: AtomicU32::new(0),
        abort: AtomicBool::new(false),
        slots: Arc::new(Semaphore::new(workers + 1)),
        level: opts.compress_level,
        read_bytes: AtomicU64::new(0),
    });
    let (tx, mut rx) = mpsc::channel::<Encoded>(workers + 1);
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
                Ok(info) => {
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

async fn upload(repo: &Repository, id: &BackupId, pack: Encoded) -> Result<PackInfo> {
    let key = pack_key(id, pack.number);
    let stored_size = pack.object.len() as u64;
    repo.put_create(&key, pack.object.into(), &pack.header).await?;
    Ok(PackInfo {
        number: pack.number,
        original_size: pack.header.original_size,
        stored_size,
        sha256: frame::hex(&pack.header.sha256),
    })
    // The slot is released here, with `pack`.
}

/// One worker: takes files off the queue until it is empty.
fn worker(shared: &Shared, tx: &mpsc::Sender<Encoded>) -> Result<Vec<FileEntry>> {
    let mut open: Option<OpenPack> = None;
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
    flush(shared, tx, &mut open)?;
    Ok(entries)
}

/// Copies one file into the open pack (and the next ones if it does not
/// fit). Reads at most the size the file has when opened, as PostgreSQL's
/// own base backup does: what is appended later is in the WAL. `None` if the
/// file vanished (or the backup is being aborted).
fn copy_file(
    shared: &Shared,
    tx: &mpsc::Sender<Encoded>,
    open: &mut Option<OpenPack>,
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
    let mut hasher = Sha256::new();
    let mut extents: Vec<Extent> = Vec::new();
    let mut total = 0u64;
    while total < limit {
        if shared.abort.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if open.as_ref().is_some_and(|p| p.builder.room() == 0) {
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
        let want = (limit - total).min(READ_CHUNK as u64) as usize;
        let extent = pack.builder.push_from(&mut f, want).map_err(Error::io("cannot read", &file.abs))?;
        if extent.size == 0 {
            // Truncated while we read: keep what was there.
            break;
        }
        hasher.update(pack.builder.bytes(&extent));
        total += extent.size;
        shared.read_bytes.fetch_add(extent.size, Ordering::Relaxed);
        match extents.last_mut() {
            Some(last)
                if last.backup == extent.backup
                    && last.pack == extent.pack
                    && last.offset + last.size == extent.offset =>
            {
                last.size += extent.size
            }
            _ => extents.push(extent),
        }
    }
    Ok(Some(FileEntry {
        path: file.rel.clone(),
        tablespace: file.tablespace,
        size: total,
        sha256: frame::hex(&hasher.finalize().into()),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        extents,
        block_map: None,
    }))
}

/// Compresses the open pack and hands it to the uploader.
fn flush(shared: &Shared, tx: &mpsc::Sender<Encoded>, open: &mut Option<OpenPack>) -> Result<()> {
    let Some(OpenPack { mut builder, _slot }) = open.take() else { return Ok(()) };
    if builder.is_empty() {
        return Ok(());
    }
    let (number, data) = builder.take();
    let (object, header) = frame::encode(&data, Compression::Zstd(shared.level)).map_err(|e| Error::Io {
        action: "cannot compress pack",
        path: number.to_string().into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    drop(data);
    if tx.blocking_send(Encoded { number, object, header, _slot }).is_err() {
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
            files.push(FileToCopy { abs: path, rel: format!("f{i}"), tablespace: None, size: *size as u64 });
            contents.push(data);
        }
        files.push(FileToCopy { abs: dir.path().join("vanished"), rel: "vanished".into(), tablespace: None, size: 5 });
        let id: BackupId = "20261123T074000F".parse().expect("id");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        for workers in [1, 3] {
            // Several workers number packs in another order: a fresh repository each time.
            let repo = memory_repo();
            let opts = PackOptions { compress_level: 1, workers };
            let packed = rt.block_on(pack_files(&repo, &id, files.clone(), &opts, &Progress::hidden())).expect("pack");
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
}
