//! `pgwal archive PATH`: PostgreSQL's `archive_command`. Validates the file,
//! compresses and hashes it on all cores while the repository's identity is
//! read, and stores it create-only. Exit 0 means durably stored.

use std::path::Path;

use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::pg::validate::{validate_wal_file, ValidatedWal};
use crate::pg::WalFileName;
use crate::repo::frame::{self, Compression};
use crate::repo::{keys, ClusterIdentity, PutOutcome, Repository};

/// Archives the WAL file at `path` into `repo`.
pub fn archive(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name: WalFileName = file_name
        .parse()
        .map_err(|e: crate::pg::WalFileNameError| Error::InvalidWalFile { path: path.into(), reason: e.to_string() })?;
    let content = std::fs::read(path).map_err(Error::io("cannot read", path))?;
    archive_content(rt, repo, &name, content, opts).map_err(|e| match e {
        // Name the file PostgreSQL handed us, not just its WAL name.
        Error::InvalidWalFile { reason, .. } => Error::InvalidWalFile { path: path.into(), reason },
        other => other,
    })
}

/// Archives `content` as WAL file `name`: the per-file work, callable by
/// parallel workers. The caller reports [`PutOutcome::AlreadyIdentical`].
pub fn archive_content(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    name: &WalFileName,
    content: Vec<u8>,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let invalid = |reason: String| Error::InvalidWalFile { path: name.to_string().into(), reason };
    let validated = validate_wal_file(name, &content).map_err(invalid)?;

    // Compression is the bulk of the work; the repository round trips overlap it.
    let (encoded, known) = std::thread::scope(|s| {
        let encoder = s.spawn(|| frame::encode(&content, Compression::Zstd(opts.compress_level)));
        let known = rt.block_on(repo.identity());
        (encoder.join(), known)
    });
    let (object, header) =
        encoded.map_err(|_| invalid("compression thread panicked".into()))?.map_err(|e| invalid(e.to_string()))?;
    drop(content);
    let (format_exists, identity) = known?;

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
        repo.put_create(&keys::wal(name), object.into(), &header).await
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
