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
use crate::repo::frame::{self, Compression, FrameHeader, StreamError};
use crate::repo::{keys, ClusterIdentity, PutOutcome, Repository};

/// Archives the WAL file at `path` into `repo`. Segments are read, hashed and
/// compressed as a pipeline; history and backup files are small and read whole.
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

    let mut file = File::open(path).map_err(Error::io("cannot read", path))?;
    let len = file.metadata().map_err(Error::io("cannot stat", path))?.len();
    let first = frame::read_chunk(&mut file).map_err(Error::io("cannot read", path))?;
    let page = validate_segment_head(&name, &first, len).map_err(invalid)?;
    // The repository round trips overlap the read-hash-compress pipeline.
    let (encoded, known) = std::thread::scope(|s| {
        let encoder = s.spawn(|| frame::encode_stream(first, &mut file, opts.compress_level));
        let known = rt.block_on(repo.identity());
        (encoder.join(), known)
    });
    let encoded = encoded.map_err(|_| invalid("compression thread panicked".into()))?.map_err(|e| match e {
        StreamError::Read(io) => Error::io("cannot read", path)(io),
        StreamError::Frame(f) => invalid(f.to_string()),
    })?;
    if encoded.header.original_size != len {
        return Err(invalid(format!("file changed size while being read ({len} -> {})", encoded.header.original_size)));
    }
    // One contiguous body: S3 servers reject the chunked upload a multi-part
    // payload turns into (seen with s3s-fs), and the copy costs about 1 ms.
    let mut object = Vec::with_capacity(encoded.parts.iter().map(|p| p.len()).sum());
    for part in &encoded.parts {
        object.extend_from_slice(part);
    }
    drop(encoded.parts);
    store(rt, repo, &name, ValidatedWal::Segment(page), known?, object.into(), &encoded.header)
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

/// Archives `content` as WAL file `name`: the per-file work for callers that
/// already hold the bytes (benches, future parallel workers).
pub fn archive_content(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    name: &WalFileName,
    content: Vec<u8>,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let invalid = |reason: String| Error::InvalidWalFile { path: name.to_string().into(), reason };
    let validated = validate_wal_file(name, &content).map_err(invalid)?;
    let (object, header) =
        frame::encode(&content, Compression::Zstd(opts.compress_level)).map_err(|e| invalid(e.to_string()))?;
    drop(content);
    store(rt, repo, name, validated, rt.block_on(repo.identity())?, object.into(), &header)
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
