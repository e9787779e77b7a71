//! `pgwal archive PATH`: PostgreSQL's `archive_command`. Validates the file,
//! compresses and hashes it on all cores while the repository's identity is
//! read, and stores it create-only. Exit 0 means durably stored.

use std::fs::File;
use std::path::Path;

use object_store::PutPayload;

use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::pg::validate::{validate_segment_head, validate_wal_file, ValidatedWal};
use crate::pg::{WalFileKind, WalFileName};
use crate::repo::frame::{self, Compression, FrameHeader};
use crate::repo::{keys, ClusterIdentity, PutOutcome, Repository};
use crate::storage::mapped::MappedFile;

/// Archives the WAL file at `path` into `repo`. Segments are mapped, not
/// copied; history and backup files are small and read whole.
pub fn archive(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let invalid = |reason: String| Error::InvalidWalFile { path: path.into(), reason };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name: WalFileName = file_name.parse().map_err(|e: crate::pg::WalFileNameError| invalid(e.to_string()))?;
    if !matches!(name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
        let content = std::fs::read(path).map_err(Error::io("cannot read", path))?;
        let validated = validate_wal_file(&name, &content).map_err(invalid)?;
        let (object, header) =
            frame::encode(&content, Compression::Zstd(opts.compress_level)).map_err(|e| invalid(e.to_string()))?;
        return store(rt, repo, &name, validated, rt.block_on(repo.identity())?, object.into(), &header);
    }

    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let before = file.metadata().map_err(Error::io("cannot stat", path))?;
    let len = before.len();
    let head = read_head(&file, len).map_err(Error::io("cannot read", path))?;
    let page = validate_segment_head(&name, &head, len).map_err(invalid)?;
    let mapped = MappedFile::map(&file, len as usize).map_err(Error::io("cannot read", path))?;
    // The repository round trips overlap hashing and compressing on all cores.
    let (encoded, known) = std::thread::scope(|s| {
        let encoder = s.spawn(|| frame::encode(mapped.bytes(), Compression::Zstd(opts.compress_level)));
        let known = rt.block_on(repo.identity());
        (encoder.join(), known)
    });
    let (object, header) =
        encoded.map_err(|_| invalid("compression thread panicked".into()))?.map_err(|e| invalid(e.to_string()))?;
    drop(mapped);
    // PostgreSQL never changes a segment while archive_command runs; anything
    // else doing so would make what was hashed differ from what is stored.
    let after = file.metadata().map_err(Error::io("cannot stat", path))?;
    if after.len() != len || after.modified().ok() != before.modified().ok() {
        return Err(invalid("file changed while it was being archived; PostgreSQL will retry".into()));
    }
    store(rt, repo, &name, ValidatedWal::Segment(page), known?, object.into(), &header)
}

/// The first page of a segment, for validation before anything else is done.
fn read_head(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; len.min(crate::pg::page_header::LONG_PAGE_HEADER_LEN as u64) as usize];
    file.read_exact_at(&mut head, 0)?;
    Ok(head)
}

/// Checks the cluster identity (recording it on first use) and stores the object.
fn store(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    name: &WalFileName,
    validated: ValidatedWal,
    known: (bool, Option<ClusterIdentity>),
    object: PutPayload,
    header: &FrameHeader,
) -> Result<PutOutcome> {
    let (format_exists, identity) = known;
    rt.block_on(async {
        if !format_exists {
            repo.create_format().await?;
        }
        if let ValidatedWal::Segment(page) = validated {
            let offered = ClusterIdentity {
                system_identifier: page.system_identifier,
                pg_version: page.pg_major(),
                wal_segment_size: page.segment_size.bytes(),
            };
            let recorded = match identity {
                Some(id) => id,
                None => repo.create_identity(&offered).await?,
            };
            check_identity(name, &recorded, &offered)?;
        }
        repo.put_create(&keys::wal(name), object, header).await
    })
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
