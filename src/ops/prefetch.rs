//! Prefetching for recovery. PostgreSQL runs `restore_command` for one
//! segment at a time and replays it before asking for the next, so every
//! fetch from object storage would stall replay for a round trip and a
//! decompression. After `fetch` has served a segment it makes sure one
//! background prefetcher runs for the data directory (`pgwal prefetch-wal`, a
//! hidden subcommand: the same binary, detached with setsid, stdio to
//! `pg_wal/pgwal/prefetch.log` and /dev/null, one per data directory by an
//! flock on `pg_wal/pgwal/prefetch.lock`). The prefetcher keeps the next
//! `fetch.prefetch` segments after the last one asked for in the spool (see
//! `spool`), following the recovery timeline, with up to [`GETS_IN_FLIGHT`]
//! GETs at once on its one object-store client, each segment decoded and
//! checked on a blocking thread (one at a time, each on every core) while
//! the next ones download. It exits when
//! recovery ends (removing the spool), when its server stops (the postmaster
//! named by `postmaster.pid` is gone: an immediate shutdown or a failed
//! recovery), when its spool or lock file is removed, or when nobody asked
//! for anything for a while (60s; 10s when started without a signal file).
//!
//! Who starts one (`fetch::spool_for`): a fetch for a server in archive
//! recovery (recovery.signal or standby.signal), and a fetch into
//! `pg_wal/RECOVERYXLOG` of a data directory with `global/pg_control`
//! without either: pg_rewind `--restore-target-wal` runs restore_command so
//! for a stopped cluster. Such a prefetcher serves no server (one that
//! starts later is followed from then on) and refuses to run while a signal
//! file says a server recovers there. A fetch anywhere else is plain.
//!
//! Which timeline: PostgreSQL asks for each segment on the newest timeline of
//! its target timeline's history that had begun by then. The prefetcher
//! takes the newest timeline in the repository whose history agrees with the
//! name just asked for (that is what `recovery_target_timeline = 'latest'`,
//! the default, does) and otherwise the asked name's own timeline.
//!
//! Durable ahead: PostgreSQL's startup process, which also replays the WAL,
//! fsyncs every file restore_command hands it before it replays it
//! (`KeepFileRestoredFromArchive`). A segment is therefore fsynced by a
//! second thread of the prefetcher before it is published in the spool, up
//! to [`DURABLE_AHEAD`] waiting at once while the next ones are decoded,
//! those that queued up together fsynced at once (one flush after the
//! other, each waiting for its own, made a serial publisher slow), and
//! the spool directory after each batch: when `fetch` renames it into
//! pg_wal, PostgreSQL's fsync finds nothing left to write and replay does
//! not wait for the disk.
//!
//! A segment the prefetcher cannot fetch or check (missing, corrupt,
//! unreachable repository) simply does not appear in the spool: `fetch` then
//! reads the repository itself and fails, or reports "not in the archive",
//! exactly as without a prefetcher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
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

/// How many GETs the prefetcher keeps in flight at once, all on its one
/// (warm) object-store client: at a few ms of latency each way one 16 MiB
/// segment takes several round trips, and one GET at a time leaves the
/// link idle in between. Each segment is decoded and checked on a blocking
/// thread while the next ones download.
pub const GETS_IN_FLIGHT: usize = 4;

/// Decodings run one at a time (see [`fetch_into`]).
static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How many decoded segments may wait for their fsync at once: enough that
/// decoding never waits for the disk, few enough that the memory and the
/// dirty pages of the window stay small.
pub const DURABLE_AHEAD: usize = 4;

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

/// Makes sure a prefetcher runs for `spool` once PostgreSQL asked for
/// `name` (served from the spool, or about to be fetched): records the
/// request and starts one if none holds the lock.
pub fn after_fetch(spool: &Spool, name: &WalFileName, repo_url: &str, config: Option<&Path>) {
    // `fetch::spool_for` decided already that this fetch is one to prefetch
    // for (archive recovery, or a fetch into pg_wal/RECOVERYXLOG).
    if name.kind() != WalFileKind::Segment {
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
    /// Decoded and checked into its temp file, waiting to be made durable.
    Decoded(Decoded),
    Missing,
    Corrupt(String),
}

/// A segment decoded into its temp file in the spool, its content checked
/// against the stored SHA-256, not yet durable nor published.
struct Decoded {
    name: WalFileName,
    tmp: PathBuf,
    file: File,
    sha256: String,
    /// When its GET started, how long the GET and the decoding took (for
    /// the debug log: where a segment's time goes).
    started: Instant,
    get: Duration,
    decode: Duration,
}

/// Why the prefetcher stops.
enum Stop {
    RecoveryEnded,
    ServerStopped(i32),
    Idle,
    /// A signal file but no server: a recovery that failed or was stopped.
    NoServer,
    /// The spool directory or the lock file was removed (the data directory
    /// went away, or someone cleaned up by hand).
    Removed,
}

/// How the publisher makes a segment durable (tests watch and fail it).
fn sync_all(_: &WalFileName, file: &File) -> std::io::Result<()> {
    file.sync_all()
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
    let lock_id = lock_identity(&lock);
    let stop = serve(rt, repo, &spool, depth, lock_id);
    // Only now that nothing is being published any more, and whatever ended
    // it (an unreachable repository too); but a spool whose lock file was
    // removed may be another prefetcher's by now.
    if !matches!(stop, Ok(Stop::Removed)) {
        let _ = std::fs::remove_dir_all(&spool.dir);
    }
    match stop? {
        Stop::RecoveryEnded => crate::log_info!("prefetcher: recovery ended; spool removed"),
        Stop::ServerStopped(pid) => crate::log_info!("prefetcher: the server (PID {pid}) stopped; spool removed"),
        Stop::NoServer => {
            crate::log_info!("prefetcher: no server runs in '{}'; not prefetching", data_dir.display());
        }
        Stop::Removed => crate::log_info!("prefetcher: its spool or lock file was removed; exiting"),
        Stop::Idle => {}
    }
    Ok(())
}

/// The prefetcher once it holds the lock: until something stops it.
fn serve(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    spool: &Spool,
    depth: usize,
    lock_id: Option<(u64, u64)>,
) -> Result<Stop> {
    let data_dir = spool.data_dir();
    std::fs::create_dir_all(&spool.dir).map_err(Error::io("cannot create", &spool.dir))?;
    let url = repo.cache_tag();
    let identity = rt.block_on(repo.identity())?.cluster;
    let Some(identity) = identity else { return Ok(Stop::Idle) };
    let size = WalSegmentSize::new(identity.wal_segment_size).ok_or_else(|| Error::Corrupt {
        key: keys::cluster().to_string(),
        reason: format!("segment size {}", identity.wal_segment_size),
    })?;
    // The prefetcher serves one running server: it lives in its own session
    // (so PostgreSQL's shutdown does not signal it) and must not outlive it.
    // Without a server it serves a stopped cluster's restore_command calls
    // into pg_wal/RECOVERYXLOG (pg_rewind --restore-target-wal): only while
    // no signal file says that a server recovers here (a recovery that just
    // failed leaves recovery.signal behind), and until the idle exit.
    let server = walspool::running_postmaster(data_dir);
    if server.is_none() && walspool::in_recovery(data_dir) {
        return Ok(Stop::NoServer);
    }
    let sysid = identity.system_identifier;
    std::thread::scope(|s| {
        let (jobs, queued) = mpsc::sync_channel::<Decoded>(DURABLE_AHEAD);
        let (published, done) = mpsc::channel();
        let url = url.as_str();
        s.spawn(move || publish_durably(spool, url, sysid, &queued, &published, &sync_all));
        // `jobs` is dropped when `watch` returns: the publisher then ends.
        let ctx = Watch { repo, spool, size, depth, lock_id };
        rt.block_on(watch(&ctx, server, jobs, &done))
    })
}

/// Device and inode of the prefetcher's lock file, to notice it replaced or removed.
fn lock_identity(lock: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    lock.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// What the prefetcher's loop works with.
struct Watch<'a> {
    repo: &'a Repository,
    spool: &'a Spool,
    size: WalSegmentSize,
    depth: usize,
    /// The lock file this prefetcher holds.
    lock_id: Option<(u64, u64)>,
}

impl Watch<'_> {
    /// Whether the spool directory and the very lock file held still exist.
    fn still_in_place(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let lock = std::fs::metadata(self.spool.lock_path()).ok().map(|m| (m.dev(), m.ino()));
        self.spool.dir.is_dir() && lock.is_some() && lock == self.lock_id
    }
}

/// Keeps the window after the last request fetched (up to [`GETS_IN_FLIGHT`]
/// GETs at once, each decoded and checked on a blocking thread, then handed
/// to the publisher) until recovery ends, the server stops, the spool is
/// removed or nobody asks for a while. `server` is the postmaster this
/// prefetcher serves (`None`: a stopped cluster; one that starts later is
/// then served, and followed, from then on).
async fn watch(
    w: &Watch<'_>,
    mut server: Option<i32>,
    jobs: mpsc::SyncSender<Decoded>,
    done: &mpsc::Receiver<(WalFileName, std::io::Result<()>)>,
) -> Result<Stop> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let (repo, spool) = (w.repo, w.spool);
    let data_dir = spool.data_dir();
    let mut histories = load_histories(repo).await?;
    let mut last = spool.last();
    let mut last_change = Instant::now();
    let mut missing: HashMap<WalFileName, Instant> = HashMap::new();
    let mut corrupt: HashSet<WalFileName> = HashSet::new();
    // Being fetched, or decoded and handed to the publisher, not yet published.
    let mut busy: HashSet<WalFileName> = HashSet::new();
    // Decoded, waiting for room in the publisher's queue.
    let mut decoded: std::collections::VecDeque<Decoded> = std::collections::VecDeque::new();
    let mut gets = FuturesUnordered::new();
    let mut recovering = walspool::in_recovery(data_dir);
    let idle_exit = if recovering { IDLE_EXIT } else { IDLE_EXIT_OUTSIDE_RECOVERY };
    let mut server_checked = Instant::now();
    loop {
        while let Ok((name, result)) = done.try_recv() {
            busy.remove(&name);
            if let Err(e) = result {
                crate::log_info!("prefetcher: cannot make '{name}' durable: {e}");
                missing.insert(name, Instant::now());
            }
        }
        let in_recovery = walspool::in_recovery(data_dir);
        if recovering && !in_recovery {
            return Ok(Stop::RecoveryEnded);
        }
        recovering |= in_recovery;
        if server_checked.elapsed() >= SERVER_CHECK {
            let now = walspool::running_postmaster(data_dir);
            match server {
                Some(pid) if now != Some(pid) => return Ok(Stop::ServerStopped(pid)),
                None => server = now,
                Some(_) => {}
            }
            if !w.still_in_place() {
                return Ok(Stop::Removed);
            }
            server_checked = Instant::now();
        }
        let now_last = spool.last();
        if now_last != last {
            last = now_last;
            last_change = Instant::now();
        }
        if last_change.elapsed() > idle_exit {
            return Ok(Stop::Idle);
        }
        while let Some(d) = decoded.pop_front() {
            match jobs.try_send(d) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(d)) => {
                    decoded.push_front(d);
                    break;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    return Err(Error::io("cannot publish into", &spool.dir)(std::io::Error::other(
                        "the publishing thread ended",
                    )));
                }
            }
        }
        let window = last.map(|l| plan(&l, w.depth, &histories, w.size)).unwrap_or_default();
        // What PostgreSQL no longer needs (replayed, or another timeline);
        // not the one it asked for last, which `fetch` may be taking now.
        for name in spool.entries() {
            if !window.contains(&name) && Some(name) != last {
                spool.discard(&name);
            }
        }
        // In window order: the segment PostgreSQL asks for next goes first.
        for &next in &window {
            if gets.len() >= GETS_IN_FLIGHT {
                break;
            }
            if corrupt.contains(&next)
                || busy.contains(&next)
                || missing.get(&next).is_some_and(|t| t.elapsed() < MISSING_RETRY)
                || spool.file(&next).exists()
            {
                continue;
            }
            busy.insert(next);
            gets.push(async move { (next, fetch_into(repo, spool, &next).await) });
        }
        let finished = if gets.is_empty() {
            tokio::time::sleep(POLL).await;
            None
        } else {
            tokio::select! {
                f = gets.next() => f,
                () = tokio::time::sleep(POLL) => None,
            }
        };
        let Some((name, attempt)) = finished else { continue };
        match attempt {
            Ok(Attempt::Decoded(d)) => {
                missing.remove(&name);
                decoded.push_back(d);
            }
            Ok(Attempt::Missing) => {
                busy.remove(&name);
                // Perhaps not archived yet, or a timeline switch: look again later.
                missing.insert(name, Instant::now());
                if let Ok(h) = load_histories(repo).await {
                    histories = h;
                }
            }
            Ok(Attempt::Corrupt(reason)) => {
                busy.remove(&name);
                crate::log_info!("prefetcher: not spooling '{name}': {reason}");
                corrupt.insert(name);
            }
            Err(e) => {
                busy.remove(&name);
                crate::log_info!("prefetcher: {}", e.one_line());
                missing.insert(name, Instant::now());
            }
        }
    }
}

/// The publisher thread: makes each decoded segment durable (`sync`) and
/// only then publishes it, so that every segment `fetch` can take from the
/// spool is already on disk; takes whatever has queued up as one batch and
/// fsyncs the spool directory once per batch. A segment that cannot be made
/// durable or published is removed and reported on `done`, as is each one
/// published; returns when `queued` is closed and drained.
fn publish_durably(
    spool: &Spool,
    url: &str,
    sysid: u64,
    queued: &mpsc::Receiver<Decoded>,
    done: &mpsc::Sender<(WalFileName, std::io::Result<()>)>,
    sync: &(dyn Fn(&WalFileName, &File) -> std::io::Result<()> + Sync),
) {
    while let Ok(first) = queued.recv() {
        let mut batch = vec![first];
        batch.extend(queued.try_iter().take(DURABLE_AHEAD - 1));
        // The fsyncs of a batch at once: the disk commits concurrent ones
        // together, where one after the other each waits for its own flush.
        let sync_started = Instant::now();
        let synced: Vec<(std::io::Result<()>, Duration)> = if batch.len() == 1 {
            vec![(sync(&batch[0].name, &batch[0].file), sync_started.elapsed())]
        } else {
            std::thread::scope(|s| {
                let running: Vec<_> =
                    batch.iter().map(|d| s.spawn(move || (sync(&d.name, &d.file), sync_started.elapsed()))).collect();
                running
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .unwrap_or_else(|_| (Err(std::io::Error::other("the fsync thread failed")), Duration::ZERO))
                    })
                    .collect()
            })
        };
        for (d, (synced, took)) in batch.into_iter().zip(synced) {
            let result = synced.and_then(|()| spool.publish(&d.tmp, &d.name, url, sysid, d.sha256));
            drop(d.file);
            if result.is_err() {
                let _ = std::fs::remove_file(&d.tmp);
            }
            crate::log_debug!(
                "prefetcher: '{}' published after {} ms: GET {} ms, decode {} ms, queued {} ms, fsync {} ms",
                d.name,
                d.started.elapsed().as_millis(),
                d.get.as_millis(),
                d.decode.as_millis(),
                sync_started.saturating_duration_since(d.started + d.get + d.decode).as_millis(),
                took.as_millis(),
            );
            let _ = done.send((d.name, result));
        }
        // The renames above: what PostgreSQL's fsync of pg_wal would
        // otherwise commit along with its own rename. Best effort.
        let _ = crate::storage::pgdata::sync_dir(&spool.dir);
    }
}

/// Every timeline history in the repository.
async fn load_histories(repo: &Repository) -> Result<Histories> {
    let scope = Scope { wal: WalListing::Top, histories: true, ..Scope::default() };
    Catalog::load(repo, &scope).await?.readable_histories()
}

/// Fetches `name` into the spool's temp file for it, decoded and checked
/// against its SHA-256 (not yet durable nor published: see [`publish_durably`]).
/// The temp file exists from before the GET, so that a `fetch` for the same
/// segment waits for it rather than download it a second time beside it
/// (`Spool::wait_while_fetching`); it is removed unless decoded whole. The
/// decoding runs on a blocking thread, so that other GETs go on meanwhile.
async fn fetch_into(repo: &Repository, spool: &Spool, name: &WalFileName) -> Result<Attempt> {
    let key = keys::wal(name);
    let tmp = spool.temp_file(name);
    let file = File::create(&tmp).map_err(Error::io("cannot create", &tmp))?;
    let started = Instant::now();
    let object = match repo.get(&key).await {
        Ok(Some(object)) => object,
        other => {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return other.map(|_| Attempt::Missing);
        }
    };
    let name = *name;
    let get = started.elapsed();
    let decode = move || {
        let decoding = Instant::now();
        let outcome = match wal_file::decode_into(&object, &file) {
            Ok(Ok(header)) => {
                let sha256 = frame::hex(&header.sha256);
                let decode = decoding.elapsed();
                return Ok(Attempt::Decoded(Decoded { name, tmp, file, sha256, started, get, decode }));
            }
            Ok(Err(io)) => Err(Error::io("cannot write", &tmp)(io)),
            Err(e) => Ok(Attempt::Corrupt(e.to_string())),
        };
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        outcome
    };
    // One decoding at a time, in the order the GETs finished (about the
    // window's): each uses every core (`frame::decode_with`), and the segment
    // PostgreSQL asks for next is ready sooner than if all shared the cores.
    let _turn = DECODING.acquire().await;
    tokio::task::spawn_blocking(decode).await.unwrap_or_else(|e| {
        Err(Error::io("cannot decode", spool.temp_file(&name))(std::io::Error::other(format!(
            "the decoding thread failed: {e}"
        ))))
    })
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
    /// nothing of it stays in the spool; a sound one is decoded whole.
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
        let attempt = rt.block_on(fetch_into(&repo, &spool, &bad)).expect("fetch");
        assert!(matches!(attempt, Attempt::Corrupt(_)));
        assert!(spool.entries().is_empty(), "{:?}", std::fs::read_dir(&spool.dir).map(|d| d.count()));
        assert_eq!(std::fs::read_dir(&spool.dir).expect("dir").count(), 0, "no temp file left");
        let Attempt::Decoded(decoded) = rt.block_on(fetch_into(&repo, &spool, &good)).expect("fetch") else {
            panic!("a sound object is decoded")
        };
        assert_eq!(std::fs::read(&decoded.tmp).expect("decoded"), content);
        assert!(spool.entries().is_empty(), "not offered before it is durable");
    }

    /// Every segment the spool offers was fsynced before it was published
    /// (the sync sees it unpublished and not takeable, and every published
    /// one was synced); one whose fsync fails is never offered and leaves no
    /// temp file, and the others still are.
    #[test]
    fn segments_are_durable_before_they_are_offered() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let repo = Repository::in_memory();
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(data.path().join("global")).expect("mkdir");
        let mut control = 42u64.to_le_bytes().to_vec();
        control.resize(8192, 0);
        std::fs::write(data.path().join("global/pg_control"), control).expect("control");
        let spool = Spool::new(data.path());
        std::fs::create_dir_all(&spool.dir).expect("mkdir");
        let url = repo.url().to_string();
        let segments: Vec<(WalFileName, Vec<u8>)> = (1..=5u32)
            .map(|i| (name(&format!("0000000100000000000000{i:02X}")), vec![i as u8; 1_000_000 + i as usize]))
            .collect();
        let (jobs, queued) = mpsc::sync_channel(DURABLE_AHEAD);
        for (n, content) in &segments {
            let (object, header) = frame::encode(content, frame::Compression::Zstd(1)).expect("encode");
            rt.block_on(repo.put_create(&keys::wal(n), object.into(), &header)).expect("put");
            let Attempt::Decoded(d) = rt.block_on(fetch_into(&repo, &spool, n)).expect("fetch") else {
                panic!("decoded")
            };
            if jobs.try_send(d).is_err() {
                break; // the rest go through the thread below
            }
        }
        let failing = segments[2].0;
        let synced = std::sync::Mutex::new(Vec::new());
        let sync = |n: &WalFileName, f: &File| {
            assert!(!spool.file(n).exists(), "{n} published before its fsync");
            assert!(!spool.entries().contains(n));
            synced.lock().expect("lock").push(*n);
            if *n == failing {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            f.sync_all()
        };
        let (published, done) = mpsc::channel();
        std::thread::scope(|s| {
            let (spool, url, sync) = (&spool, url.as_str(), &sync);
            s.spawn(move || publish_durably(spool, url, 42, &queued, &published, sync));
            // Whatever did not fit in the queue goes in while the publisher runs.
            for (n, _) in segments.iter().skip(DURABLE_AHEAD) {
                let Attempt::Decoded(d) = rt.block_on(fetch_into(&repo, spool, n)).expect("fetch") else {
                    panic!("decoded")
                };
                jobs.send(d).expect("send");
            }
            drop(jobs);
        });
        let results: Vec<(WalFileName, bool)> = done.try_iter().map(|(n, r)| (n, r.is_ok())).collect();
        let expected: Vec<(WalFileName, bool)> = segments.iter().map(|(n, _)| (*n, *n != failing)).collect();
        assert_eq!(results, expected, "each reported once, in order");
        let synced = synced.into_inner().expect("lock");
        // The fsyncs of one batch run at once: in any order among themselves.
        let mut synced = synced;
        synced.sort_by_key(|n| n.to_string());
        assert_eq!(synced, segments.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "every segment fsynced once");
        let mut offered: Vec<String> = spool.entries().iter().map(|n| n.to_string()).collect();
        offered.sort();
        assert_eq!(offered, expected.iter().filter(|e| e.1).map(|e| e.0.to_string()).collect::<Vec<_>>());
        assert!(!spool.temp_file(&failing).exists(), "no temp file of the failed one");
        let dest = data.path().join("RECOVERYXLOG");
        for (n, content) in &segments {
            assert_eq!(spool.take(n, &url, &dest), *n != failing, "{n}");
            if *n != failing {
                assert_eq!(&std::fs::read(&dest).expect("read"), content, "{n}");
            }
        }
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
