//! `pgwal archive PATH`: PostgreSQL's `archive_command`. Validates the file,
//! compresses and hashes it on all cores while the repository's identity is
//! read (only the format object when the data directory remembers the
//! repository, see `local::identity`), and stores it create-only. Exit 0 means durably stored.
//!
//! The per-file work is split in two so that `ahead` can run it for
//! several files at once: [`encode_file`] (blocking: read, check, frame) and
//! [`store_encoded`] (async: identity check and create-only put).

pub mod ahead;
pub mod helper;

/// The whole command once the helper (see [`helper`]) did not store the
/// file: clears the fetch spool a finished recovery left, archives `path`
/// (and what is ready after it, see [`ahead`]), says why when it fails with
/// a backlog, in PostgreSQL's log, and once it succeeded starts a helper at
/// `start` if none runs there.
pub fn run(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    cfg: &crate::config::Config,
    start: Option<&helper::Place>,
) -> Result<()> {
    use crate::local::{backlog, data_dir, markers, spool::Spool};
    let data_dir = data_dir::of_this_process(cfg.pgdata.as_deref());
    if let Some(d) = &data_dir {
        Spool::new(d).remove_if_recovery_ended();
    }
    let outcome = ahead::archive(rt, repo, path, &cfg.archive).inspect_err(|_| {
        let wal_dir = markers::wal_dir_of(path);
        if let Some(b) = backlog::scan(data_dir.as_deref().unwrap_or(&wal_dir), &wal_dir) {
            crate::log_info!("{}", b.describe());
        }
    })?;
    if let Some(place) = start {
        helper::after_archive(place, &repo.url().to_string(), cfg.file.as_deref());
    }
    note_outcome(path, outcome);
    Ok(())
}

/// The notice for a file that was already stored with identical content.
pub fn note_outcome(path: &Path, outcome: PutOutcome) {
    if outcome == PutOutcome::AlreadyIdentical {
        crate::log_notice!("'{}' was already archived with identical content", path.display());
    }
}

use std::fs::File;
use std::path::Path;

use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::local::identity::{IdentityCache, KnownRepository};
use crate::local::stamp::FileStamp;
use crate::pg::validate::{validate_segment_head, validate_wal_file, ValidatedWal};
use crate::pg::{WalFileKind, WalFileName};
use crate::repo::frame::{self, Compression, FrameHeader};
use crate::repo::{keys, ClusterIdentity, PutOutcome, RepoIdentity, Repository};
use crate::storage::mapped::MappedFile;

/// A WAL file read, checked and framed: ready to store.
#[derive(Debug)]
pub struct Encoded {
    /// The file's name.
    pub name: WalFileName,
    validated: ValidatedWal,
    /// The framed object, in pieces (see `frame::encode_parts`).
    object: object_store::PutPayload,
    /// The frame header (SHA-256 and size of the original).
    pub header: FrameHeader,
    /// The file as it was read; it did not change while it was read.
    pub stamp: FileStamp,
}

impl Encoded {
    /// The cluster identity a segment's first page claims.
    fn offered(&self) -> Option<ClusterIdentity> {
        match self.validated {
            ValidatedWal::Segment(page) => Some(ClusterIdentity {
                system_identifier: page.system_identifier,
                pg_version: page.pg_major(),
                wal_segment_size: page.segment_size.bytes(),
            }),
            ValidatedWal::Text => None,
        }
    }
}

/// Archives the WAL file at `path` into `repo`; `cache` is the data
/// directory's memory of the repository's identity, if there is one.
pub fn archive(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    opts: &ArchiveOptions,
    cache: Option<&IdentityCache>,
) -> Result<PutOutcome> {
    // The repository round trips overlap hashing and compressing on all cores.
    let (encoded, known) = std::thread::scope(|s| {
        let encoder = s.spawn(|| encode_file(path, opts.compress_level));
        let known = rt.block_on(identity(repo, cache));
        (encoder.join(), known)
    });
    let invalid = |reason: String| Error::InvalidWalFile { path: path.into(), reason };
    let encoded = encoded.map_err(|_| invalid("compression thread panicked".into()))??;
    rt.block_on(store_encoded(repo, &encoded, known?.0))
}

/// The repository's identity and instance tag. With a `cache` that
/// remembers this repository, one request (the format object, whose
/// instance tag must still be the remembered one) instead of two; what was
/// read is remembered for the next call.
pub async fn identity(repo: &Repository, cache: Option<&IdentityCache>) -> Result<(RepoIdentity, Option<String>)> {
    let tag = repo.cache_tag();
    let known = match cache.and_then(|c| c.load(&tag)) {
        Some(k) => repo.identity_if_instance(&k.instance, k.cluster).await?,
        None => repo.identity_and_instance().await?,
    };
    if let (Some(cache), (RepoIdentity { cluster: Some(cluster), .. }, Some(instance))) = (cache, &known) {
        cache.store(&KnownRepository { repo: tag, instance: instance.clone(), cluster: *cluster });
    }
    Ok(known)
}

/// Reads, checks and frames the WAL file at `path`. Segments are mapped, not
/// copied; history and backup files are small and read whole. Blocking.
pub fn encode_file(path: &Path, compress_level: i32) -> Result<Encoded> {
    let invalid = |reason: String| Error::InvalidWalFile { path: path.into(), reason };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name: WalFileName = file_name.parse().map_err(|e: crate::pg::WalFileNameError| invalid(e.to_string()))?;
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let before = FileStamp::of(&file.metadata().map_err(Error::io("cannot stat", path))?);
    let len = before.size;
    let (validated, (object, header)) = if matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
        let head = read_head(&file, len).map_err(Error::io("cannot read", path))?;
        let page = validate_segment_head(&name, &head, len).map_err(invalid)?;
        let mapped = MappedFile::map(&file, len as usize).map_err(Error::io("cannot read", path))?;
        let framed = frame::encode_parts(mapped.bytes(), Compression::Zstd(compress_level));
        (ValidatedWal::Segment(page), framed.map_err(|e| invalid(e.to_string()))?)
    } else {
        let content = std::fs::read(path).map_err(Error::io("cannot read", path))?;
        let validated = validate_wal_file(&name, &content).map_err(invalid)?;
        let framed = frame::encode_parts(&content, Compression::Zstd(compress_level));
        (validated, framed.map_err(|e| invalid(e.to_string()))?)
    };
    // PostgreSQL never changes a file while archive_command runs; anything
    // else doing so would make what was hashed differ from what is stored.
    let after = FileStamp::of(&file.metadata().map_err(Error::io("cannot stat", path))?);
    if after != before || header.original_size != len {
        return Err(invalid("file changed while it was being archived; PostgreSQL will retry".into()));
    }
    Ok(Encoded { name, validated, object: object.into_iter().collect(), header, stamp: before })
}

/// The first page of a segment, for validation before anything else is done.
fn read_head(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; len.min(crate::pg::page_header::LONG_PAGE_HEADER_LEN as u64) as usize];
    file.read_exact_at(&mut head, 0)?;
    Ok(head)
}

/// Checks the cluster identity (recording it, and the format, on first use)
/// and stores the object create-only.
pub async fn store_encoded(repo: &Repository, encoded: &Encoded, known: RepoIdentity) -> Result<PutOutcome> {
    let RepoIdentity { format_exists, cluster: identity } = known;
    if !format_exists {
        repo.create_format_for(encoded.offered().map(|o| o.system_identifier)).await?;
    }
    if let Some(offered) = encoded.offered() {
        let recorded = match identity {
            Some(id) => id,
            None => repo.create_identity(&offered).await?,
        };
        check_identity(&encoded.name, &recorded, &offered)?;
    }
    // The payload shares the pieces: no copy of the object.
    repo.put_create(&keys::wal(&encoded.name), encoded.object.clone(), &encoded.header).await
}

fn check_identity(name: &WalFileName, recorded: &ClusterIdentity, offered: &ClusterIdentity) -> Result<()> {
    if recorded.system_identifier != offered.system_identifier {
        return Err(Error::WrongCluster {
            what: name.to_string(),
            expected: recorded.system_identifier,
            found: offered.system_identifier,
        });
    }
    if recorded.wal_segment_size != offered.wal_segment_size {
        return Err(Error::InvalidWalFile {
            path: name.to_string().into(),
            reason: format!(
                "segment size {} differs from the repository's {}",
                offered.wal_segment_size, recorded.wal_segment_size
            ),
        });
    }
    Ok(())
}
