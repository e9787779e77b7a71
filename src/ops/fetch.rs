//! `pgwal fetch NAME DEST`: PostgreSQL's `restore_command`. Checks every byte
//! against the stored SHA-256 before DEST appears, and tells "not in the
//! archive" apart from everything else (see `error::exit_code`).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, ExitRules, Result};
use crate::local::data_dir;
use crate::local::spool::Spool;
use crate::local::wal_file;
use crate::ops::prefetch;
use crate::pg::WalFileName;
use crate::repo::{keys, Repository};

/// Which exit-status rules apply to a fetch run from `cwd` (PostgreSQL runs
/// `restore_command` in the data directory) or for the configured `pgdata`.
pub fn exit_rules(cwd: Option<&Path>, pgdata: Option<&Path>) -> ExitRules {
    match data_dir::of_command(cwd, pgdata) {
        Some(d) if data_dir::in_standby_mode(&d) => ExitRules::FetchStandby,
        _ => ExitRules::FetchRecovery,
    }
}

/// The spool to fill ahead of a recovery (`fetch.prefetch` segments): in
/// archive recovery (a signal file), or for a fetch into
/// `<data dir>/pg_wal/RECOVERYXLOG` (PostgreSQL's startup process, pg_rewind
/// `--restore-target-wal` or a harness replaying like it, without a signal
/// file). Otherwise (a fetch by hand into /tmp, even from a primary's data
/// directory) nothing is spooled or written into pg_wal/pgwal.
pub fn spool_for(cfg: &crate::config::Config, dest: &Path) -> Option<Spool> {
    data_dir::of_this_process(cfg.pgdata.as_deref())
        .filter(|d| cfg.fetch.prefetch > 0 && (data_dir::in_recovery(d) || data_dir::is_recovery_xlog(d, dest)))
        .map(|d| Spool::new(&d))
}

/// Parses a NAME argument: only WAL file names, so no path can sneak in.
pub fn parse_name(name: &str) -> Result<WalFileName> {
    name.parse().map_err(|e: crate::pg::WalFileNameError| Error::Usage(e.to_string()))
}

/// How long `fetch` waits for a prefetcher that is fetching the very segment
/// asked for before it fetches it itself (a segment takes tens of ms).
const PREFETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves the segment `name` into `dest` from the prefetcher's spool when it
/// holds a trusted copy from the repository tagged `tag` (see
/// `Repository::cache_tag`), waiting a little while the prefetcher is
/// fetching it; then keeps a prefetcher going. Needs no storage client: a
/// spooled segment is a rename, and building a client (its TLS trust store
/// alone) would cost more. `false`: fetch it from the repository
/// ([`fetch_prefetching`]).
pub fn take_from_spool(
    spool: &Spool,
    name: &WalFileName,
    tag: &str,
    dest: &Path,
    repo_url: &str,
    config: Option<&Path>,
) -> bool {
    if name.kind() != crate::pg::WalFileKind::Segment {
        return false;
    }
    // Recorded before the take: once the file has left the spool, the
    // prefetcher must already know it was asked for, or it fetches it again.
    spool.record_last(name);
    let taken =
        spool.take(name, tag, dest) || (spool.wait_while_fetching(name, PREFETCH_WAIT) && spool.take(name, tag, dest));
    if taken {
        prefetch::after_fetch(spool, name, repo_url, config);
    }
    taken
}

/// Fetches `name` into `dest` from the repository (the spool did not serve
/// it: [`take_from_spool`]); for a segment with a spool, makes sure a
/// prefetcher runs first. `spool` is `None` when prefetching is off, the data
/// directory is unknown or the fetch is not one to prefetch for (see
/// [`spool_for`]).
pub fn fetch_prefetching(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    name: &WalFileName,
    dest: &Path,
    spool: Option<&Spool>,
    config: Option<&Path>,
) -> Result<()> {
    if let Some(spool) = spool.filter(|_| name.kind() == crate::pg::WalFileKind::Segment) {
        // Before this call's own GET: a prefetcher that has to start (exec, a
        // connection, the repository's identity and histories) does so while
        // this segment downloads, and fetches the next ones beside it.
        prefetch::after_fetch(spool, name, &repo.url().to_string(), config);
    }
    fetch(rt, repo, name, dest)
}

/// Fetches `name` from `repo` into `dest`.
pub fn fetch(rt: &tokio::runtime::Runtime, repo: &Repository, name: &WalFileName, dest: &Path) -> Result<()> {
    let key = keys::wal(name);
    let object = rt.block_on(async {
        match repo.get(&key).await? {
            Some(o) => Ok(o),
            None => {
                // Only a repository that exists can say "not here".
                repo.require_exists().await?;
                Err(Error::NotInArchive(*name))
            }
        }
    })?;

    let tmp = temp_path(dest);
    let file = File::create(&tmp).map_err(Error::io("cannot create", &tmp))?;
    let result = wal_file::decode_into(&object, &file);
    drop(object);
    let outcome = match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(io)) => Err(Error::io("cannot write", &tmp)(io)),
        Err(e) => Err(Error::Corrupt { key: key.to_string(), reason: e.to_string() }),
    };
    if let Err(e) = outcome {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // No fsync: after a crash PostgreSQL simply asks again.
    drop(file);
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot rename into place", dest)(e)
    })
}

/// A temporary name beside DEST, so the final rename is atomic.
fn temp_path(dest: &Path) -> PathBuf {
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{file_name}.pgwal-{}.tmp", std::process::id()))
}
