//! Prefetching for recovery. PostgreSQL runs `restore_command` for one
//! segment at a time and replays it before asking for the next, so every
//! fetch from object storage would stall replay for a round trip and a
//! decompression. After `fetch` has served a segment it makes sure one
//! background prefetcher runs for the data directory (`pgwal prefetch-wal`, a
//! hidden subcommand: the same binary, detached with setsid, stdio to
//! `pg_wal/pgwal/prefetch.log` and /dev/null, one per data directory by an
//! flock on `pg_wal/pgwal/prefetch.lock`). The prefetcher keeps the next
//! `fetch.prefetch` segments after the last one asked for in the spool (see
//! `spool`), following the recovery timeline, and exits when recovery ends
//! (removing the spool), when its server stops (the postmaster named by
//! `postmaster.pid` is gone: an immediate shutdown or a failed recovery), or
//! when nobody asked for anything for a while (60s). Only a fetch for a
//! server in archive recovery (recovery.signal or standby.signal) starts one.
//!
//! Which timeline: PostgreSQL asks for each segment on the newest timeline of
//! its target timeline's history that had begun by then. The prefetcher
//! takes the newest timeline in the repository whose history agrees with the
//! name just asked for (that is what `recovery_target_timeline = 'latest'`,
//! the default, does) and otherwise the asked name's own timeline.
//!
//! A segment the prefetcher cannot fetch or check (missing, corrupt,
//! unreachable repository) simply does not appear in the spool: `fetch` then
//! reads the repository itself and fails, or reports "not in the archive",
//! exactly as without a prefetcher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::local::data_dir as walspool;
use crate::local::spool::Spool;
use crate::local::wal_file;
use crate::pg::history::HistoryEntry;
use crate::pg::timeline::chain_through;
use crate::pg::{SegmentNo, TimelineId, WalFileKind, WalFileName, WalSegmentSize};
use crate::repo::catalog::{Catalog, Scope, WalListing};
use crate::repo::{frame, keys, Repository};

/// How long the prefetcher waits without a new request before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// The same, for a prefetcher started outside recovery (no signal file).
pub const IDLE_EXIT_OUTSIDE_RECOVERY: Duration = Duration::from_secs(10);

/// How often the prefetcher looks for a new request when it has nothing to do.
const POLL: Duration = Duration::from_millis(10);

/// How often the prefetcher checks that its server still runs.
const SERVER_CHECK: Duration = Duration::from_millis(250);

/// How long before a segment that was not in the repository is asked for again.
const MISSING_RETRY: Duration = Duration::from_secs(1);

/// The name of the hidden subcommand that runs the prefetcher.
pub const SUBCOMMAND: &str = "prefetch-wal";

/// Timeline histories: timeline → its ancestors, oldest first.
pub type Histories = BTreeMap<TimelineId, Vec<HistoryEntry>>;

/// The segments to have ready after PostgreSQL asked for `last`: the next
/// `depth` segments, each on the timeline PostgreSQL will ask for it on.
pub fn plan(last: &WalFileName, depth: usize, histories: &Histories, size: WalSegmentSize) -> Vec<WalFileName> {
    let (WalFileKind::Segment, Some(segno)) = (last.kind(), last.segment_no(size)) else { return Vec::new() };
    let chain = chain_through(histories, last.timeline(), segno, size);
    (1..=depth as u64)
        .filter_map(|i| {
            let seg = segno.0.checked_add(i)?;
            Some(WalFileName::segment(chain.timeline_at(SegmentNo(seg), size), SegmentNo(seg), size))
        })
        .collect()
}

/// Makes sure a prefetcher runs for `spool` after PostgreSQL asked for
/// `name`: records the request and starts one if none holds the lock.
pub fn after_fetch(spool: &Spool, name: &WalFileName, repo_url: &str, config: Option<&Path>) {
    // Only for a server in archive recovery: PostgreSQL always has a signal
    // file then, and a fetch without one (run by hand in a primary's data
    // directory, pg_rewind's restore_command) must leave that directory alone.
    if name.kind() != WalFileKind::Segment || !walspool::in_recovery(spool.data_dir()) {
        return;
    }
    spool.record_last(name);
    if spool.prefetcher_running() {
        return;
    }
    if let Err(e) = spawn(spool, repo_url, config) {
        crate::log_warn!("cannot start the prefetcher: {e}");
    }
}

/// Starts `pgwal prefetch-wal` detached from PostgreSQL: its own session,
/// no terminal, stdin and stdout on /dev/null, stderr in the log file.
fn spawn(spool: &Spool, repo_url: &str, config: Option<&Path>) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    let log_path = walspool::pgwal_dir(&spool.data_dir().join("pg_wal")).join("prefetch.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--repo").arg(repo_url).arg("--pgdata").arg(spool.data_dir()).arg(SUBCOMMAND);
    cmd.current_dir(spool.data_dir()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: the child outlives this process and is reaped by init.
    cmd.spawn().map(drop)
}

/// What happened to one segment the prefetcher tried.
enum Attempt {
    Spooled,
    Missing,
    Corrupt(String),
}

/// The data directory the prefetcher fills the spool of: the one it runs in
/// or `--pgdata`.
pub fn data_dir_of(cfg: &crate::config::Config) -> Result<std::path::PathBuf> {
    walspool::of_this_process(cfg.pgdata.as_deref())
        .ok_or_else(|| Error::config("no data directory", "run it inside the data directory or pass --pgdata"))
}

/// The prefetcher's loop (`pgwal prefetch-wal`, started by `fetch`).
pub fn run(rt: &tokio::runtime::Runtime, repo: &Repository, data_dir: &Path, depth: usize) -> Result<()> {
    let spool = Spool::new(data_dir);
    let lock = spool.open_lock().map_err(Error::io("cannot open", spool.lock_path()))?;
    if lock.try_lock().is_err() || depth == 0 {
        return Ok(()); // another prefetcher runs
    }
    std::fs::create_dir_all(&spool.dir).map_err(Error::io("cannot create", &spool.dir))?;
    let url = repo.cache_tag();
    let identity = rt.block_on(repo.identity())?.cluster;
    let Some(identity) = identity else { return Ok(()) };
    let size = WalSegmentSize::new(identity.wal_segment_size).ok_or_else(|| Error::Corrupt {
        key: keys::cluster().to_string(),
        reason: format!("segment size {}", identity.wal_segment_size),
    })?;
    let mut histories = rt.block_on(load_histories(repo))?;
    let mut last = spool.last();
    let mut last_change = Instant::now();
    let mut missing: HashMap<WalFileName, Instant> = HashMap::new();
    let mut corrupt: HashSet<WalFileName> = HashSet::new();
    let started_in_recovery = walspool::in_recovery(data_dir);
    let idle_exit = if started_in_recovery { IDLE_EXIT } else { IDLE_EXIT_OUTSIDE_RECOVERY };
    // The prefetcher serves one running server: it lives in its own session
    // (so PostgreSQL's shutdown does not signal it) and must not outlive it.
    let Some(server) = walspool::running_postmaster(data_dir) else {
        let _ = std::fs::remove_dir_all(&spool.dir);
        crate::log_info!("prefetcher: no server runs in '{}'; not prefetching", data_dir.display());
        return Ok(());
    };
    let mut server_checked = Instant::now();
    loop {
        if started_in_recovery && !walspool::in_recovery(data_dir) {
            let _ = std::fs::remove_dir_all(&spool.dir);
            crate::log_info!("prefetcher: recovery ended; spool removed");
            return Ok(());
        }
        if server_checked.elapsed() >= SERVER_CHECK {
            if walspool::running_postmaster(data_dir) != Some(server) {
                let _ = std::fs::remove_dir_all(&spool.dir);
                crate::log_info!("prefetcher: the server (PID {server}) stopped; spool removed");
                return Ok(());
            }
            server_checked = Instant::now();
        }
        let now_last = spool.last();
        if now_last != last {
            last = now_last;
            last_change = Instant::now();
        }
        if last_change.elapsed() > idle_exit {
            let _ = std::fs::remove_dir_all(&spool.dir);
            return Ok(());
        }
        let window = last.map(|l| plan(&l, depth, &histories, size)).unwrap_or_default();
        // What PostgreSQL no longer needs (replayed, or another timeline).
        for name in spool.entries() {
            if !window.contains(&name) {
                spool.discard(&name);
            }
        }
        let next = window.iter().find(|n| !corrupt.contains(n) && !spool.file(n).exists());
        let Some(&next) = next else {
            std::thread::sleep(POLL);
            continue;
        };
        if missing.get(&next).is_some_and(|t| t.elapsed() < MISSING_RETRY) {
            std::thread::sleep(POLL);
            continue;
        }
        match rt.block_on(fetch_into(repo, &spool, &next, &url, identity.system_identifier)) {
            Ok(Attempt::Spooled) => {
                missing.remove(&next);
            }
            Ok(Attempt::Missing) => {
                // Perhaps not archived yet, or a timeline switch: look again later.
                missing.insert(next, Instant::now());
                if let Ok(h) = rt.block_on(load_histories(repo)) {
                    histories = h;
                }
            }
            Ok(Attempt::Corrupt(reason)) => {
                crate::log_info!("prefetcher: not spooling '{next}': {reason}");
                corrupt.insert(next);
            }
            Err(e) => {
                crate::log_info!("prefetcher: {}", e.one_line());
                missing.insert(next, Instant::now());
            }
        }
    }
}

/// Every timeline history in the repository.
async fn load_histories(repo: &Repository) -> Result<Histories> {
    let scope = Scope { wal: WalListing::Top, histories: true, ..Scope::default() };
    Catalog::load(repo, &scope).await?.readable_histories()
}

/// Fetches `name` into the spool: decoded into a temp file, checked against
/// its SHA-256, then published under its name.
async fn fetch_into(repo: &Repository, spool: &Spool, name: &WalFileName, url: &str, sysid: u64) -> Result<Attempt> {
    let key = keys::wal(name);
    let Some(object) = repo.get(&key).await? else { return Ok(Attempt::Missing) };
    let tmp = spool.temp_file(name);
    let file = File::create(&tmp).map_err(Error::io("cannot create", &tmp))?;
    let result = wal_file::decode_into(&object, &file);
    drop(file);
    let outcome = match result {
        Ok(Ok(header)) => spool
            .publish(&tmp, name, url, sysid, frame::hex(&header.sha256))
            .map(|()| Attempt::Spooled)
            .map_err(Error::io("cannot publish", &tmp)),
        Ok(Err(io)) => Err(Error::io("cannot write", &tmp)(io)),
        Err(e) => Ok(Attempt::Corrupt(e.to_string())),
    };
    if !matches!(outcome, Ok(Attempt::Spooled)) {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;

    fn name(s: &str) -> WalFileName {
        s.parse().expect("name")
    }

    fn names(v: Vec<WalFileName>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;

    /// A stored object that does not match its SHA-256 is reported, and
    /// nothing of it stays in the spool; a sound one is spooled whole.
    #[test]
    fn a_corrupt_object_is_not_spooled() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let repo = Repository::in_memory();
        let data = tempfile::tempdir().expect("tempdir");
        let spool = Spool::new(data.path());
        std::fs::create_dir_all(&spool.dir).expect("mkdir");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (good, bad) = (name("000000010000000000000001"), name("000000010000000000000002"));
        let (object, header) = frame::encode(&content, frame::Compression::Zstd(1)).expect("encode");
        let mut corrupt = object.clone();
        let last = corrupt.len() - 10;
        corrupt[last] ^= 0x55;
        rt.block_on(async {
            repo.put_create(&keys::wal(&good), object.into(), &header).await.expect("put");
            repo.put_create(&keys::wal(&bad), corrupt.into(), &header).await.expect("put");
        });
        let url = repo.url().to_string();
        let attempt = rt.block_on(fetch_into(&repo, &spool, &bad, &url, 42)).expect("fetch");
        assert!(matches!(attempt, Attempt::Corrupt(_)));
        assert!(spool.entries().is_empty(), "{:?}", std::fs::read_dir(&spool.dir).map(|d| d.count()));
        assert_eq!(std::fs::read_dir(&spool.dir).expect("dir").count(), 0, "no temp file left");
        let attempt = rt.block_on(fetch_into(&repo, &spool, &good, &url, 42)).expect("fetch");
        assert!(matches!(attempt, Attempt::Spooled));
        assert_eq!(std::fs::read(spool.file(&good)).expect("spooled"), content);
    }

    #[test]
    fn plans_the_next_segments_on_one_timeline() {
        let got = plan(&name("0000000100000000000000FE"), 3, &Histories::new(), SIZE);
        assert_eq!(names(got), ["0000000100000000000000FF", "000000010000000100000000", "000000010000000100000001"]);
        assert!(plan(&name("00000002.history"), 3, &Histories::new(), SIZE).is_empty());
        assert!(plan(&name("000000010000000000000001.partial"), 3, &Histories::new(), SIZE).is_empty());
    }

    #[test]
    fn follows_the_newest_timeline_through_its_switch_point() {
        // Timeline 2 left 1 inside segment 5; timeline 3 left 2 inside segment 7.
        let mut h = Histories::new();
        let e = |p, lsn| HistoryEntry { parent: TimelineId(p), switch_point: Lsn(lsn) };
        h.insert(TimelineId(2), vec![e(1, 0x500_0100)]);
        h.insert(TimelineId(3), vec![e(1, 0x500_0100), e(2, 0x700_0000)]);
        let got = plan(&name("000000010000000000000003"), 5, &h, SIZE);
        assert_eq!(
            names(got),
            [
                "000000010000000000000004",
                "000000020000000000000005",
                "000000020000000000000006",
                "000000030000000000000007",
                "000000030000000000000008",
            ]
        );
        // A name the newest timeline's history disagrees with (PostgreSQL
        // targets timeline 2, which lives on after 3 branched off at 7):
        // follow the asked timeline.
        let got = plan(&name("000000020000000000000008"), 2, &h, SIZE);
        assert_eq!(names(got), ["000000020000000000000009", "00000002000000000000000A"]);
        // Timeline 1 after its end (recovery_target_timeline = 1 or 'current').
        let got = plan(&name("000000010000000000000006"), 1, &h, SIZE);
        assert_eq!(names(got), ["000000010000000000000007"]);
    }
}
