//! Archiving ahead of PostgreSQL. PostgreSQL calls `archive_command` for one
//! file at a time and waits for each; with a backlog that serialises every
//! compression, fsync and round trip. So when `pgwal archive pg_wal/N` runs
//! inside a data directory, it also stores up to `archive.ahead` other files
//! that already have `pg_wal/archive_status/NAME.ready` and come after N
//! (history files first, then by name, as PostgreSQL's archiver orders them), `archive.parallel`
//! at once, all within this call. Nothing runs after the call returns, and it
//! returns 0 only once N itself is durably stored.
//!
//! For each file stored ahead it writes a marker, `pg_wal/pgwal/archive/
//! <repo-id>/NAME.ok`, only after the object is durable, fsynced together
//! with its directory. The marker records the file's inode, size and
//! modification time, the SHA-256 of what was stored, and the repository
//! instance (a random tag in its format object). PostgreSQL's later call for
//! NAME returns 0 at once when the marker matches the file and the
//! repository; anything else (no marker, another file under that name, a
//! repository recreated at the same URL) takes the normal path, which is
//! itself safe because stores are create-only with a checksum compare. A
//! crash at any point costs at most a re-upload.

use std::path::Path;

use futures::StreamExt;

use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::local::identity::IdentityCache;
use crate::local::markers::{Layout, Marker};
use crate::ops::archive;
use crate::pg::WalFileName;
use crate::repo::{frame, PutOutcome, RepoIdentity, Repository};
use crate::storage::pgdata;

/// Archives the file at `path` as `archive::archive` does, answering from a
/// marker when the file was already stored ahead, and pushing ready files
/// ahead of PostgreSQL on the way.
pub fn archive(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    path: &Path,
    opts: &ArchiveOptions,
) -> Result<PutOutcome> {
    let name = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<WalFileName>().ok());
    let (Some(layout), Some(name)) = (Layout::for_file(path, repo.url()), name) else {
        return archive::archive(rt, repo, path, opts, None);
    };
    let cache = IdentityCache::for_wal_dir(&layout.wal_dir, repo.url());
    let url = repo.url().to_string();
    if let Some(marker) = layout.matching_marker(&name, &url) {
        let marker_path = layout.marker_path(&name);
        // A marker is used once; a leftover one after a crash is still true.
        let _ = std::fs::remove_file(&marker_path);
        if rt.block_on(repo.instance_tag())?.as_deref() == Some(marker.instance.as_str()) {
            return Ok(PutOutcome::Stored);
        }
        // Another repository now answers at this URL: store it again.
    } else {
        let _ = std::fs::remove_file(layout.marker_path(&name));
    }
    let candidates = if opts.ahead > 0 { layout.candidates(&name, &url, opts.ahead) } else { Vec::new() };
    if candidates.is_empty() {
        return archive::archive(rt, repo, path, opts, Some(&cache));
    }
    layout.sweep();
    std::fs::create_dir_all(&layout.markers).map_err(Error::io("cannot create", &layout.markers))?;
    rt.block_on(batch(repo, path, &layout, &candidates, opts, &cache))
}

/// Stores `path` and the `ahead` files, `opts.parallel` at once.
async fn batch(
    repo: &Repository,
    path: &Path,
    layout: &Layout,
    ahead: &[WalFileName],
    opts: &ArchiveOptions,
    cache: &IdentityCache,
) -> Result<PutOutcome> {
    let level = opts.compress_level;
    let own = path.to_path_buf();
    let first = tokio::task::spawn_blocking(move || archive::encode_file(&own, level));
    // One read of the format object gives both the identity and the
    // instance tag the markers name.
    let (known, instance) = match archive::identity(repo, Some(cache)).await {
        Ok(k) => k,
        Err(e) => {
            let _ = first.await;
            return Err(e);
        }
    };
    let push_own = async {
        let encoded = first.await.map_err(|_| panicked(path))??;
        archive::store_encoded(repo, &encoded, known).await
    };
    // A repository without its format object yet is created by this call's
    // own store; ahead work waits for the next call.
    let Some(instance) = instance.filter(|_| known.format_exists) else { return push_own.await };
    let known_now = known;
    let pushes = futures::stream::iter(ahead.iter().copied())
        .map(|name| push_ahead(repo, layout, name, known_now, &instance, level))
        .buffer_unordered(opts.parallel.saturating_sub(1).max(1));
    let (outcome, results) = tokio::join!(push_own, pushes.collect::<Vec<_>>());
    for (name, result) in results {
        if let Err(e) = result {
            // PostgreSQL will call for it and get the error then.
            crate::log_warn!("archiving '{name}' ahead failed: {}", e.one_line());
        }
    }
    outcome
}

fn panicked(path: &Path) -> Error {
    Error::InvalidWalFile { path: path.into(), reason: "worker thread panicked".into() }
}

/// Stores one file ahead and writes its marker once the object is durable.
async fn push_ahead(
    repo: &Repository,
    layout: &Layout,
    name: WalFileName,
    known: RepoIdentity,
    instance: &str,
    level: i32,
) -> (WalFileName, Result<()>) {
    let path = layout.wal_dir.join(name.to_string());
    let result = async {
        let file = path.clone();
        let encoded = tokio::task::spawn_blocking(move || archive::encode_file(&file, level))
            .await
            .map_err(|_| panicked(&path))??;
        archive::store_encoded(repo, &encoded, known).await?;
        let marker = Marker {
            name: name.to_string(),
            repo: repo.url().to_string(),
            instance: instance.to_string(),
            stamp: encoded.stamp,
            sha256: frame::hex(&encoded.header.sha256),
        };
        let json = serde_json::to_vec(&marker).expect("invariant: plain structs serialize");
        let marker_path = layout.marker_path(&name);
        tokio::task::spawn_blocking(move || {
            pgdata::write_file(&marker_path, &json, 0o600).map_err(Error::io("cannot write", marker_path))
        })
        .await
        .map_err(|_| panicked(&path))?
    }
    .await;
    (name, result)
}
