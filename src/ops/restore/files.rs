//! Putting a backup's files in place: where each manifest entry goes (data
//! directory or tablespace), what `--delta` keeps, removes and rewrites, and
//! the per-pack work that parallel workers run (fetch, decode, write each
//! extent at its offset, check each file's SHA-256), then the fsync of every
//! file written, all at the end. All writes go through [`crate::storage::pgdata`].
//!
//! `global/pg_control` is written under a temporary name and renamed last:
//! until then the directory cannot be started by mistake (`pg_ctl start`
//! refuses a data directory without it), whatever point a failure or a kill
//! stopped the restore at.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::chain::Sources;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::backup::{
    is_safe_relative_path, manifest_key, pack_key, BackupId, BackupType, FileEntry, Manifest, MANIFEST_FORMAT,
    MANIFEST_FORMAT_CHAINED,
};
use crate::repo::{frame, Repository};
use crate::storage::pgdata;

/// The control file, restored last.
pub const PG_CONTROL: &str = "global/pg_control";
/// Where the control file is written until everything else is in place.
pub const PG_CONTROL_TEMP: &str = "global/pg_control.pgwal-restore";
/// Present in a target directory while a restore into it is unfinished; a
/// new restore into such a directory resumes it (as with `--delta`).
pub const MARKER: &str = ".pgwal-restore-incomplete";

/// Files of the data directory's top level that a restore never takes from
/// a backup: runtime state, and what the restore itself writes.
const NOT_RESTORED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "recovery.signal",
    "standby.signal",
    "backup_label",
    "tablespace_map",
    MARKER,
];

/// Largest pack a restore accepts: a worker holds one in memory (twice).
const MAX_PACK: u64 = 1 << 30;

/// Packs downloaded beyond those being decoded, so that the next pack is
/// there when a worker is free (each read in parts: [`crate::repo::parts`]).
const DOWNLOADS_AHEAD: usize = 1;

/// Where the data directory and each tablespace go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The target data directory (absolute).
    pub data_dir: PathBuf,
    /// Tablespace OID to the directory its files go to (absolute).
    pub tablespaces: BTreeMap<u32, PathBuf>,
}

impl Layout {
    /// Where entry `rel` of tablespace `ts` (`None`: the data directory) goes.
    /// The manifest was validated, so every tablespace is known.
    pub fn path(&self, ts: Option<u32>, rel: &str) -> PathBuf {
        match ts {
            None => self.data_dir.join(rel),
            Some(oid) => self.tablespaces.get(&oid).map_or_else(|| self.data_dir.join(rel), |root| root.join(rel)),
        }
    }

    /// Where file `entry` is written (the control file under its temporary name).
    pub fn file_path(&self, entry: &FileEntry) -> PathBuf {
        if entry.tablespace.is_none() && entry.path == PG_CONTROL {
            self.data_dir.join(PG_CONTROL_TEMP)
        } else {
            self.path(entry.tablespace, &entry.path)
        }
    }
}

/// Whether a restore writes `entry` at all.
pub fn is_restored(entry: &FileEntry) -> bool {
    !(entry.tablespace.is_none() && NOT_RESTORED.contains(&entry.path.as_str()))
}

/// Checks that a manifest is one this pgwal restores and that it is
/// internally consistent, so that nothing later trusts a damaged one: safe
/// paths, known tablespaces, extents that add up and lie inside their packs
/// (extents in older backups of a diff/incr chain: see `chain::resolve`).
pub fn validate_manifest(m: &Manifest) -> Result<()> {
    let key = manifest_key(&m.id);
    let bad = |reason: String| Err(Error::Corrupt { key: key.to_string(), reason });
    match (m.format, m.kind, &m.parent) {
        (MANIFEST_FORMAT, BackupType::Full, _) => {}
        (MANIFEST_FORMAT_CHAINED, BackupType::Diff | BackupType::Incr, Some(_)) => {}
        (MANIFEST_FORMAT | MANIFEST_FORMAT_CHAINED, kind, parent) => {
            return bad(format!(
                "a {kind} backup with manifest format {} and {} parent",
                m.format,
                if parent.is_some() { "a" } else { "no" }
            ))
        }
        (format, ..) => {
            return bad(format!(
                "manifest format {format} is not one this pgwal reads ({MANIFEST_FORMAT} or {MANIFEST_FORMAT_CHAINED})"
            ))
        }
    }
    let mut oids = BTreeSet::new();
    for t in &m.tablespaces {
        let loc = Path::new(&t.location);
        let clean = loc.components().all(|c| !matches!(c, std::path::Component::ParentDir));
        if !loc.is_absolute() || !clean || !oids.insert(t.oid) {
            return bad(format!("tablespace {} has an invalid or duplicate location '{}'", t.oid, t.location));
        }
    }
    let packs: BTreeMap<u32, u64> = m.packs.iter().map(|p| (p.number, p.original_size)).collect();
    if packs.len() != m.packs.len() {
        return bad("two packs have the same number".into());
    }
    if let Some(p) = m.packs.iter().find(|p| p.original_size > MAX_PACK) {
        return bad(format!("pack {} claims {} bytes, more than a restore holds in memory", p.number, p.original_size));
    }
    let known = |ts: Option<u32>| ts.is_none_or(|oid| oids.contains(&oid));
    for d in &m.directories {
        if !is_safe_relative_path(&d.path) || !known(d.tablespace) {
            return bad(format!("directory entry '{}' has an unsafe path or unknown tablespace", d.path));
        }
    }
    for f in &m.files {
        if !is_safe_relative_path(&f.path) || !known(f.tablespace) {
            return bad(format!("file entry '{}' has an unsafe path or unknown tablespace", f.path));
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("file '{}' has no valid SHA-256", f.path));
        }
        let mut total: u64 = 0;
        for e in &f.extents {
            if e.source(&m.id) != &m.id {
                // In an older backup of the chain: checked against its manifest (`chain::resolve`).
                if m.format == MANIFEST_FORMAT {
                    return bad(format!("file '{}' of a full backup has an extent in another backup", f.path));
                }
                total = total.saturating_add(e.size);
                continue;
            }
            let inside =
                packs.get(&e.pack).is_some_and(|&len| e.offset.checked_add(e.size).is_some_and(|end| end <= len));
            if !inside {
                return bad(format!("file '{}' has an extent outside pack {}", f.path, e.pack));
            }
            total = total.saturating_add(e.size);
        }
        if total != f.size {
            return bad(format!("the extents of file '{}' hold {total} bytes, its size is {}", f.path, f.size));
        }
    }
    Ok(())
}

/// What a target directory holds before a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// It does not exist.
    Missing,
    /// It exists and is empty.
    Empty,
    /// An earlier restore into it did not finish.
    Interrupted,
    /// It holds something else.
    Populated,
}

/// Looks at the target directory without changing anything.
pub fn inspect(dir: &Path) -> Result<DirState> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(e) => return Err(Error::io("cannot inspect target directory", dir)(e)),
    };
    if !meta.is_dir() {
        return Err(Error::BadRequest {
            message: format!("target '{}' exists and is not a directory", dir.display()),
            hint: Some("give --target-dir a new or empty directory".into()),
        });
    }
    let mut entries = fs::read_dir(dir).map_err(Error::io("cannot read target directory", dir))?;
    if entries.next().is_none() {
        return Ok(DirState::Empty);
    }
    if dir.join("postmaster.pid").exists() {
        return Err(Error::BadRequest {
            message: format!(
                "target directory '{}' has a postmaster.pid: a server may be running there",
                dir.display()
            ),
            hint: Some(
                "stop that server first (pg_ctl stop); remove a stale postmaster.pid only if no server runs".into(),
            ),
        });
    }
    if dir.join(MARKER).exists() {
        return Ok(DirState::Interrupted);
    }
    Ok(DirState::Populated)
}

/// The first component of each entry of tablespace `oid`: what a restore
/// creates directly in the tablespace's directory (`PG_15_202209061`).
pub fn tablespace_tops(m: &Manifest, oid: u32) -> BTreeSet<String> {
    let dirs = m.directories.iter().filter(|d| d.tablespace == Some(oid)).map(|d| d.path.as_str());
    let files = m.files.iter().filter(|f| f.tablespace == Some(oid)).map(|f| f.path.as_str());
    dirs.chain(files).filter_map(|p| p.split('/').next()).map(str::to_string).collect()
}

/// Refuses to write into a tablespace directory that already holds what the
/// restore would create, unless it belongs to the data directory being
/// overwritten (`overwrite`, and `pg_tblspc/<oid>` there links to it): a
/// restore next to a running cluster must not touch that cluster's tablespaces.
pub fn check_tablespace_targets(m: &Manifest, layout: &Layout, overwrite: bool) -> Result<()> {
    for (oid, root) in &layout.tablespaces {
        if !root.is_absolute() {
            return Err(Error::BadRequest {
                message: format!("tablespace directory '{}' is not absolute", root.display()),
                hint: Some("give --tablespace-map OLD_DIR=NEW_DIR with absolute paths".into()),
            });
        }
        let ours = overwrite
            && fs::read_link(layout.data_dir.join(format!("pg_tblspc/{oid}"))).is_ok_and(|target| target == *root);
        for top in tablespace_tops(m, *oid) {
            let path = root.join(&top);
            if fs::symlink_metadata(&path).is_ok() && !ours {
                return Err(Error::BadRequest {
                    message: format!("tablespace {oid} would be restored into '{}', which already exists", path.display()),
                    hint: Some(format!(
                        "relocate it with --tablespace-map {}=NEW_DIR (it may belong to a running cluster), or remove it",
                        root.display()
                    )),
                });
            }
        }
    }
    Ok(())
}

/// What `--delta` must keep in a directory tree: every entry the manifest
/// restores there (and their parent directories), and the links it makes.
#[derive(Debug, Default)]
pub struct Expected {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    links: BTreeSet<PathBuf>,
}

impl Expected {
    /// Everything a restore of `m` by `layout` creates.
    pub fn of(m: &Manifest, layout: &Layout) -> Expected {
        let mut e = Expected::default();
        let add_dir = |e: &mut Expected, ts: Option<u32>, rel: &str| {
            let mut at = String::new();
            for part in rel.split('/') {
                if !at.is_empty() {
                    at.push('/');
                }
                at.push_str(part);
                e.dirs.insert(layout.path(ts, &at));
            }
        };
        for d in &m.directories {
            add_dir(&mut e, d.tablespace, &d.path);
        }
        for f in m.files.iter().filter(|f| is_restored(f)) {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                add_dir(&mut e, f.tablespace, parent);
            }
            e.files.insert(layout.path(f.tablespace, &f.path));
        }
        for oid in layout.tablespaces.keys() {
            add_dir(&mut e, None, "pg_tblspc");
            e.links.insert(layout.data_dir.join(format!("pg_tblspc/{oid}")));
        }
        e.files.insert(layout.data_dir.join(MARKER));
        e
    }
}

/// Removes from the target what the backup does not have (`--delta`): files
/// and directories not in the manifest, links other than the tablespace
/// links, and the control file (so the directory cannot start until the
/// restore ends). In tablespace directories only the entries the backup
/// creates there are cleaned. Returns how many entries were removed.
pub fn clean(m: &Manifest, layout: &Layout) -> Result<usize> {
    let expected = Expected::of(m, layout);
    let mut removed = 0;
    let control = layout.data_dir.join(PG_CONTROL);
    if fs::symlink_metadata(&control).is_ok() {
        pgdata::remove(&control).map_err(Error::io("cannot remove", &control))?;
    }
    clean_dir(&layout.data_dir, &expected, &mut removed)?;
    for (oid, root) in &layout.tablespaces {
        for top in tablespace_tops(m, *oid) {
            let path = root.join(top);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => clean_dir(&path, &expected, &mut removed)?,
                Ok(_) => {
                    pgdata::remove(&path).map_err(Error::io("cannot remove", &path))?;
                    removed += 1;
                }
                Err(_) => {}
            }
        }
    }
    Ok(removed)
}

fn clean_dir(dir: &Path, expected: &Expected, removed: &mut usize) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io("cannot read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("cannot read directory", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(Error::io("cannot inspect", &path))?;
        let keep = if kind.is_symlink() {
            expected.links.contains(&path)
        } else if kind.is_dir() {
            expected.dirs.contains(&path)
        } else {
            kind.is_file() && expected.files.contains(&path)
        };
        if !keep {
            pgdata::remove(&path).map_err(Error::io("cannot remove", &path))?;
            *removed += 1;
        } else if kind.is_dir() {
            clean_dir(&path, expected, removed)?;
        }
    }
    Ok(())
}

/// Creates the data directory's and tablespaces' directories with their
/// modes, and the `pg_tblspc/<oid>` links. Returns every directory created
/// or reused, for the final fsync.
pub fn create_dirs(m: &Manifest, layout: &Layout) -> Result<Vec<PathBuf>> {
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    made.insert(layout.data_dir.clone());
    for root in layout.tablespaces.values() {
        create_missing_parents(root, &mut made)?;
        if fs::symlink_metadata(root).is_err() {
            pgdata::create_dir(root, 0o700).map_err(Error::io("cannot create tablespace directory", root))?;
        }
        made.insert(root.clone());
    }
    let mut dirs: Vec<(PathBuf, u32)> =
        m.directories.iter().map(|d| (layout.path(d.tablespace, &d.path), pgdata::dir_mode(d.mode))).collect();
    // Parents of files the manifest lists no directory entry for.
    for f in m.files.iter().filter(|f| is_restored(f)) {
        if let Some((parent, _)) = f.path.rsplit_once('/') {
            dirs.push((layout.path(f.tablespace, parent), 0o700));
        }
    }
    if !layout.tablespaces.is_empty() {
        dirs.push((layout.data_dir.join("pg_tblspc"), 0o700));
    }
    // Parents first; an explicit entry's mode wins over a file's parent default.
    dirs.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    dirs.dedup_by(|later, first| later.0 == first.0);
    for (path, mode) in dirs {
        create_missing_parents(&path, &mut made)?;
        pgdata::create_dir(&path, mode).map_err(Error::io("cannot create directory", &path))?;
        made.insert(path);
    }
    for (oid, root) in &layout.tablespaces {
        let link = layout.data_dir.join(format!("pg_tblspc/{oid}"));
        pgdata::symlink(root, &link).map_err(Error::io("cannot create tablespace link", &link))?;
    }
    Ok(made.into_iter().collect())
}

/// Creates missing ancestors of `path` with mode 0700 (`path` itself excluded).
fn create_missing_parents(path: &Path, made: &mut BTreeSet<PathBuf>) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = path.parent();
    while let Some(p) = at {
        if p.as_os_str().is_empty() || fs::symlink_metadata(p).is_ok() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    for p in missing.into_iter().rev() {
        pgdata::create_dir(&p, 0o700).map_err(Error::io("cannot create directory", &p))?;
        made.insert(p);
    }
    Ok(())
}

/// Hex SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(frame::hex(&hasher.finalize().into()))
}

/// Whether an existing file can stay as it is (`--delta`): a regular file
/// of the manifest's size whose SHA-256 matches. Size is checked first, so
/// only files that may match are read.
pub fn can_keep(path: &Path, entry: &FileEntry) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == entry.size => {
            Ok(hash_file(path)?.eq_ignore_ascii_case(&entry.sha256))
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The files to write, by index into `m.files`: with `delta`, files whose
/// size and SHA-256 already match are kept (their mode set, fsynced) and left out.
/// The checks run on `jobs` threads.
pub fn files_to_write(m: &Manifest, layout: &Layout, delta: bool, jobs: usize) -> Result<Vec<usize>> {
    let candidates: Vec<usize> = (0..m.files.len()).filter(|&i| is_restored(&m.files[i])).collect();
    if !delta {
        return Ok(candidates);
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<usize>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut write = Vec::new();
                    while let Some(&i) = candidates.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let entry = &m.files[i];
                        let path = layout.file_path(entry);
                        let is_control = entry.tablespace.is_none() && entry.path == PG_CONTROL;
                        if !is_control && can_keep(&path, entry).map_err(Error::io("cannot read", &path))? {
                            pgdata::set_mode(&path, pgdata::file_mode(entry.mode))
                                .map_err(Error::io("cannot set the mode of", &path))?;
                            // It may come from a killed restore that never fsynced it.
                            pgdata::sync_file(&path).map_err(Error::io("cannot fsync", &path))?;
                        } else {
                            write.push(i);
                        }
                    }
                    Ok(write)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Ok(Vec::new()))).collect()
    });
    let mut write = Vec::new();
    for r in results {
        write.extend(r?);
    }
    write.sort_unstable();
    Ok(write)
}

/// One piece of a file inside a pack.
#[derive(Debug, Clone, Copy)]
struct Piece {
    file: usize,
    pack_offset: u64,
    file_offset: u64,
    size: u64,
}

/// What the pack workers share.
struct Shared {
    manifest: Arc<Manifest>,
    sources: Arc<Sources>,
    /// Files of a chain whose pieces come from several packs: read back and
    /// hashed once complete (their pieces may arrive in any order across
    /// the chain's backups, too far apart to hold in memory).
    read_back: BTreeSet<usize>,
    paths: BTreeMap<usize, PathBuf>,
    remaining: BTreeMap<usize, AtomicUsize>,
    /// The running SHA-256 of each file that spans several packs.
    spanning: BTreeMap<usize, Mutex<InOrderHash>>,
    /// Files complete and checked, to be fsynced once every pack is written.
    finished: Mutex<Vec<usize>>,
    /// Bytes written so far, for the progress bar.
    done: AtomicU64,
    progress: Progress,
}

/// The SHA-256 of a file whose pieces arrive from several packs, computed as
/// the pieces arrive so that the file is never read back: pieces are hashed
/// in file order, and a piece that arrives early waits here (a copy) until
/// those before it have come. Packs are handed out in order with a bounded
/// window, so at most that window's worth waits.
struct InOrderHash {
    next: u64,
    hasher: Sha256,
    early: BTreeMap<u64, Vec<u8>>,
}

impl InOrderHash {
    fn new() -> InOrderHash {
        InOrderHash { next: 0, hasher: Sha256::new(), early: BTreeMap::new() }
    }

    fn add(&mut self, offset: u64, bytes: &[u8]) {
        if offset != self.next {
            self.early.insert(offset, bytes.to_vec());
            return;
        }
        self.hasher.update(bytes);
        self.next += bytes.len() as u64;
        while let Some(piece) = self.early.remove(&self.next) {
            self.hasher.update(&piece);
            self.next += piece.len() as u64;
        }
    }

    /// The hex SHA-256 once every byte up to `size` has been added.
    fn finish(&mut self, size: u64) -> Option<String> {
        if self.next != size || !self.early.is_empty() {
            return None;
        }
        Some(frame::hex(&std::mem::take(&mut self.hasher).finalize().into()))
    }
}

/// Totals of a restore's file writing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Packs fetched.
    pub packs: usize,
}

/// Creates the files in `write` at their size and fills them from the packs
/// that hold them, `jobs` packs decoded at a time while as many more and
/// [`DOWNLOADS_AHEAD`] download (memory: about three packs per job).
/// Every file's SHA-256 is checked against the manifest and every file is
/// fsynced before this returns.
pub fn write_files(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    manifest: &Arc<Manifest>,
    sources: &Arc<Sources>,
    layout: &Layout,
    write: &[usize],
    jobs: usize,
) -> Result<Written> {
    let m = manifest.as_ref();
    let mut paths = BTreeMap::new();
    let mut remaining = BTreeMap::new();
    let mut spanning = BTreeMap::new();
    let mut read_back = BTreeSet::new();
    let mut by_pack: BTreeMap<(BackupId, u32), Vec<Piece>> = BTreeMap::new();
    let mut written = Written::default();
    let mut to_create = Vec::with_capacity(write.len());
    for &i in write {
        let entry = &m.files[i];
        let path = layout.file_path(entry);
        to_create.push((path.clone(), pgdata::file_mode(entry.mode), entry.size));
        if entry.extents.is_empty() {
            let empty = frame::hex(&frame::sha256(b""));
            if !entry.sha256.eq_ignore_ascii_case(&empty) {
                return Err(Error::Corrupt {
                    key: manifest_key(&m.id).to_string(),
                    reason: format!("empty file '{}' has SHA-256 {}", entry.path, entry.sha256),
                });
            }
        }
        let mut file_offset = 0;
        for e in &entry.extents {
            by_pack.entry((e.source(&m.id).clone(), e.pack)).or_default().push(Piece {
                file: i,
                pack_offset: e.offset,
                file_offset,
                size: e.size,
            });
            file_offset += e.size;
        }
        remaining.insert(i, AtomicUsize::new(entry.extents.len()));
        if entry.extents.len() > 1 && m.format != MANIFEST_FORMAT {
            read_back.insert(i);
        } else if entry.extents.len() > 1 {
            spanning.insert(i, Mutex::new(InOrderHash::new()));
        }
        paths.insert(i, path);
        written.files += 1;
        written.bytes += entry.size;
    }
    written.packs = by_pack.len();
    let progress = Progress::new(format!("restore {}", m.id), written.bytes);
    let shared = Arc::new(Shared {
        manifest: Arc::clone(manifest),
        sources: Arc::clone(sources),
        read_back,
        paths,
        remaining,
        spanning,
        finished: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        progress,
    });
    let result = rt.block_on(async {
        // The files are created while the first packs download (creating a
        // thousand files takes the kernel most of a second here): nothing
        // is written into them before every one exists.
        let creating = tokio::task::spawn_blocking(move || create_files(&to_create));
        let create_failure: Arc<Mutex<Option<Error>>> = Arc::default();
        let created = {
            let failure = Arc::clone(&create_failure);
            async move {
                let done = creating.await.unwrap_or_else(|e| {
                    Err(Error::Io {
                        action: "restore worker failed on",
                        path: PathBuf::from("the files to restore"),
                        source: io::Error::other(e.to_string()),
                    })
                });
                match done {
                    Ok(()) => true,
                    Err(e) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        false
                    }
                }
            }
            .shared()
        };
        let filled = futures::stream::iter(by_pack)
            .map(|((backup, number), pieces)| {
                // A task of its own, so that the download goes on while the
                // packs before it are decoded: the network and the cores overlap.
                let repo = repo.clone();
                let failed_on: PathBuf = pack_key(&backup, number).to_string().into();
                let download = AbortOnDrop(tokio::spawn(async move {
                    let key = pack_key(&backup, number);
                    let object = repo.get_in_parts(&key).await?.ok_or_else(|| Error::Corrupt {
                        key: key.to_string(),
                        reason: "the pack is missing from the repository".into(),
                    })?;
                    Ok::<_, Error>((backup, number, object, pieces))
                }));
                async move {
                    let mut download = download;
                    (&mut download.0).await.map_err(|e| Error::Io {
                        action: "restore download failed on",
                        path: failed_on,
                        source: io::Error::other(e.to_string()),
                    })?
                }
            })
            // In order: files spanning packs are hashed as their pieces
            // arrive, and only a bounded window of pieces may wait for those
            // before them. `jobs` packs are decoded at once while
            // `jobs + DOWNLOADS_AHEAD` more download.
            .buffered(jobs.max(1) + DOWNLOADS_AHEAD)
            .map_ok(|(backup, number, object, pieces)| {
                let shared = Arc::clone(&shared);
                let (created, create_failure) = (created.clone(), Arc::clone(&create_failure));
                async move {
                    if !created.await {
                        let failure = create_failure.lock().unwrap_or_else(|p| p.into_inner()).take();
                        return Err(failure.unwrap_or_else(|| Error::Io {
                            action: "cannot create",
                            path: PathBuf::from("the files to restore"),
                            source: io::Error::other("see the first error"),
                        }));
                    }
                    let key = pack_key(&backup, number);
                    tokio::task::spawn_blocking(move || fill_from_pack(&shared, &backup, number, &object, &pieces))
                        .await
                        .map_err(|e| Error::Io {
                            action: "restore worker failed on",
                            path: key.to_string().into(),
                            source: io::Error::other(e.to_string()),
                        })?
                }
            })
            .try_buffered(jobs.max(1))
            .try_collect::<Vec<()>>()
            .await;
        // Never return while files are still being created in the target.
        let all_created = created.await;
        match (filled, all_created) {
            (Err(e), _) => Err(e),
            (Ok(_), false) => {
                Err(create_failure.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| Error::Io {
                    action: "cannot create",
                    path: PathBuf::from("the files to restore"),
                    source: io::Error::other("a file could not be created"),
                }))
            }
            (Ok(_), true) => Ok(()),
        }
    });
    shared.progress.finish();
    result?;
    let finished = std::mem::take(&mut *shared.finished.lock().map_err(|_| Error::Io {
        action: "restore worker failed on",
        path: layout.data_dir.clone(),
        source: io::Error::other("a worker panicked"),
    })?);
    let expected = write.iter().filter(|&&i| !m.files[i].extents.is_empty()).count();
    if finished.len() != expected {
        return Err(Error::Corrupt {
            key: manifest_key(&m.id).to_string(),
            reason: format!("{} of {expected} files were not completed by their packs", expected - finished.len()),
        });
    }
    sync_files(&shared.paths, &finished)?;
    Ok(written)
}

/// Creates every file to restore at its size (sparse), with its mode.
fn create_files(files: &[(PathBuf, u32, u64)]) -> Result<()> {
    for (path, mode, size) in files {
        pgdata::create_sized_file(path, *mode, *size).map_err(Error::io("cannot create", path))?;
    }
    Ok(())
}

/// A download task that stops when the restore no longer waits for it (a
/// failure elsewhere ends the restore: the packs after it are not needed).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many fsyncs run at once at the end of a restore: they wait for the
/// disk, not the CPU, and concurrent ones share the file system's journal
/// commits.
const SYNC_THREADS: usize = 8;

/// Fsyncs the files written, all at the end rather than each as it is
/// complete: a worker fsyncing a small file waited for a journal commit
/// (milliseconds, more on a busy disk) instead of decoding the next pack,
/// and writeback started as the pieces were written leaves these fsyncs
/// little data to wait for.
fn sync_files(paths: &BTreeMap<usize, PathBuf>, files: &[usize]) -> Result<()> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..SYNC_THREADS.min(files.len()))
            .map(|_| {
                s.spawn(|| {
                    while let Some(i) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let path = &paths[i];
                        if let Err(e) = pgdata::sync_file(path) {
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            return Err(Error::io("cannot fsync", path)(e));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::Io {
                        action: "cannot fsync",
                        path: PathBuf::new(),
                        source: io::Error::other("a restore thread panicked"),
                    })
                })
            })
            .collect()
    });
    results.into_iter().collect()
}

/// A worker's job: decode one pack, write its pieces (each checked against
/// its file's SHA-256), and finish every file whose last piece this was.
fn fill_from_pack(shared: &Shared, backup: &BackupId, number: u32, object: &[u8], pieces: &[Piece]) -> Result<()> {
    let key = pack_key(backup, number).to_string();
    let corrupt = |reason: String| Error::Corrupt { key: key.clone(), reason };
    // The frame header names the content's SHA-256, and decoding checks the
    // content against it; the manifest must name the same.
    let header = frame::FrameHeader::parse(object).map_err(|e| corrupt(e.to_string()))?;
    let listed = shared.sources.pack(backup, number);
    if listed.is_none_or(|p| !p.sha256.eq_ignore_ascii_case(&frame::hex(&header.sha256))) {
        return Err(corrupt(format!("the pack is not the one the manifest of backup '{backup}' lists")));
    }
    PACK_BUFFER.with_borrow_mut(|data| {
        // The pack's own SHA-256 is not computed: every byte restored from it
        // is checked against its file's SHA-256 in the manifest below (before
        // it is written, or when the last piece of a file spanning packs is
        // in place), so hashing the pack as well would hash everything twice.
        frame::decode_unhashed_into(object, data).map_err(|e| corrupt(e.to_string()))?;
        if listed.is_some_and(|p| p.original_size != data.len() as u64) {
            return Err(corrupt(format!("the pack holds {} bytes, the manifest says otherwise", data.len())));
        }
        write_pieces(shared, data, pieces, &key)
    })
}

thread_local! {
    /// Each restore worker thread decodes pack after pack into one buffer:
    /// a fresh one per pack cost the kernel zeroing every page of it (a
    /// fifth of restore's CPU time, measured with perf).
    static PACK_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the pieces of one decoded pack, each checked first (single-pack
/// files) or hashed in file order (files spanning packs).
fn write_pieces(shared: &Shared, data: &[u8], pieces: &[Piece], key: &str) -> Result<()> {
    let m = shared.manifest.as_ref();
    let corrupt = |reason: String| Error::Corrupt { key: key.to_string(), reason };
    for piece in pieces {
        let entry = &m.files[piece.file];
        let path = &shared.paths[&piece.file];
        let start = piece.pack_offset as usize;
        let bytes = data.get(start..start + piece.size as usize).ok_or_else(|| corrupt("too short".into()))?;
        if shared.read_back.contains(&piece.file) {
            // Checked once complete (finish_file).
        } else if let Some(hash) = shared.spanning.get(&piece.file) {
            hash.lock().map_err(|_| corrupt("a restore worker failed".into()))?.add(piece.file_offset, bytes);
        } else if !frame::hex(&frame::sha256(bytes)).eq_ignore_ascii_case(&entry.sha256) {
            return Err(corrupt(format!(
                "file '{}' has SHA-256 {} in the pack, the manifest says {}",
                entry.path,
                frame::hex(&frame::sha256(bytes)),
                entry.sha256
            )));
        }
        pgdata::fill_at(path, bytes, piece.file_offset).map_err(Error::io("cannot write", path))?;
        if shared.remaining[&piece.file].fetch_sub(1, Ordering::AcqRel) == 1 {
            finish_file(shared, piece.file, key)?;
        }
        let done = shared.done.fetch_add(piece.size, Ordering::Relaxed) + piece.size;
        shared.progress.update(done, "");
    }
    Ok(())
}

/// The last piece of a file is in place: check the SHA-256 of a file that
/// spans several packs (single-pack files were checked before writing),
/// then record it for the final fsync ([`sync_files`]).
fn finish_file(shared: &Shared, file: usize, key: &str) -> Result<()> {
    let entry = &shared.manifest.files[file];
    let path = &shared.paths[&file];
    if shared.read_back.contains(&file) {
        let actual = hash_file(path).map_err(Error::io("cannot read back", path))?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(Error::Corrupt {
                key: manifest_key(&shared.manifest.id).to_string(),
                reason: format!(
                    "restored file '{}' has SHA-256 {actual}, the manifest says {}",
                    entry.path, entry.sha256
                ),
            });
        }
    } else if let Some(hash) = shared.spanning.get(&file) {
        let actual = hash.lock().ok().and_then(|mut h| h.finish(entry.size));
        let Some(actual) = actual else {
            return Err(Error::Corrupt {
                key: key.to_string(),
                reason: format!("the pieces of file '{}' do not add up to its size", entry.path),
            });
        };
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(Error::Corrupt {
                key: key.to_string(),
                reason: format!(
                    "restored file '{}' has SHA-256 {actual}, the manifest says {}",
                    entry.path, entry.sha256
                ),
            });
        }
    }
    shared
        .finished
        .lock()
        .map_err(|_| Error::Corrupt { key: key.to_string(), reason: "a restore worker failed".into() })?
        .push(file);
    Ok(())
}

/// Makes every directory entry durable.
pub fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        pgdata::sync_dir(d).map_err(Error::io("cannot fsync directory", d))?;
    }
    Ok(())
}

#[cfg(test)]
mod in_order_hash_tests {
    use super::*;

    #[test]
    fn pieces_in_any_order_hash_like_the_whole_file() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = frame::hex(&frame::sha256(&data));
        let cuts = [(3000u64, 7000u64), (0, 1000), (7000, 10_000), (1000, 3000)];
        let mut h = InOrderHash::new();
        for (i, (a, b)) in cuts.iter().enumerate() {
            assert_eq!(h.finish(10_000), None, "not complete after {i} pieces");
            h.add(*a, &data[*a as usize..*b as usize]);
        }
        assert_eq!(h.finish(10_000).as_deref(), Some(expected.as_str()));
    }

    #[test]
    fn a_missing_piece_never_finishes() {
        let mut h = InOrderHash::new();
        h.add(0, b"abc");
        h.add(6, b"ghi");
        assert_eq!(h.finish(9), None);
    }
}
