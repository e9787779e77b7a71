//! The archiving helper process (`pgwal archive-helper`): holds one
//! repository handle (warm connections), pushes files that have `.ready`
//! ahead of PostgreSQL (`archive.parallel` at once, up to `archive.ahead`
//! after the last file asked for), and answers calls.
//!
//! When "stored" is true. At its start the helper reads the repository's
//! format and cluster objects once (its instance tag I and cluster C; no
//! repository yet: it exits, the calls create one). Every store it makes is
//! the one-process path's: the file read, checked against its name and C
//! (system identifier, segment size), stored create-only with a checksum
//! compare. A "verification" reads the format object again and succeeds
//! when its tag is still I; instance tags are random per creation, so a
//! repository wiped and created again at the URL never passes. The helper
//! answers "stored" for N, asked at time T, only when a verification that
//! STARTED after T succeeded and N was durably stored either before that
//! verification started (pushed ahead by the helper, or by a one-process
//! call that left a marker naming I) or after it succeeded (a store on
//! demand, as the one-process path does: identity, then put). One
//! verification serves every call that arrived before it started; with a
//! warm connection it is one round trip. A file whose inode, size or time
//! changed since it was stored is stored again. A verification that finds
//! another instance makes every waiting call fail over to the one-process
//! path (which stores the segment again, or refuses it for another
//! cluster) and the helper exits; so does a call for another repository.
//! A push ahead starts only within a second of a verification that found
//! the instance, with none failed since, so a repository wiped under an idle
//! helper gets nothing from it; under a backlog every call verifies, and a
//! wiped repository stops the pushes at the next call, as a one-process
//! call's batch would have stored its files after its one read too.
//!
//! The helper exits after [`IDLE_EXIT`] without a call, when the postmaster
//! that `postmaster.pid` named at its start is gone, when the data directory
//! is gone (no `PG_VERSION`), or when its socket was removed (a call that
//! waited for it in vain). It removes its socket first, then finishes the
//! stores it has begun.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};

use super::{euid, Answer, Place, Request, MAX_LINE};
use crate::config::ArchiveOptions;
use crate::error::{Error, Result};
use crate::local::data_dir;
use crate::local::markers::{self, Layout};
use crate::local::stamp::FileStamp;
use crate::ops::archive;
use crate::pg::{WalFileKind, WalFileName};
use crate::repo::{PutOutcome, RepoIdentity, Repository};

/// How long the helper waits without a call before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// How often the helper looks for new `.ready` files on its own.
const POLL: Duration = Duration::from_millis(100);

/// How often it checks its server, data directory and socket.
const CHECK: Duration = Duration::from_millis(250);

/// How long before a file whose push ahead failed is tried ahead again.
const FAILED_RETRY: Duration = Duration::from_secs(1);

/// How recent a successful verification must be for pushes ahead to start.
const FRESH: Duration = Duration::from_secs(1);

/// How long a connection may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// What the helper knows about one file.
#[derive(Debug, Clone)]
enum FileState {
    /// A store is under way.
    Pushing,
    /// Durably stored (by the helper, or vouched for by a marker naming the
    /// verified instance); `need` is the first verification that started
    /// after it was stored.
    Stored { stamp: FileStamp, need: u64, outcome: PutOutcome },
    /// The last push ahead failed.
    Failed { at: Instant },
}

/// Verifications of the repository instance, numbered from 1 in the order
/// they start.
#[derive(Debug, Clone, Default)]
struct Verify {
    /// The newest one started.
    started: u64,
    /// The newest one some call waits for.
    wanted: u64,
    /// The newest one that found the verified instance.
    verified: u64,
    /// The newest one that failed, and why.
    failed: Option<(u64, String)>,
    /// One found another instance (or none): the helper no longer answers.
    broken: bool,
    /// When the newest successful one ended.
    verified_at: Option<Instant>,
}

#[derive(Debug)]
struct State {
    /// The newest file asked for (PostgreSQL's order).
    last: Option<WalFileName>,
    last_call: Instant,
    /// Calls being answered.
    serving: usize,
    /// Pushes ahead under way.
    ahead: usize,
    files: HashMap<WalFileName, FileState>,
    /// A call named another repository.
    retire: bool,
    /// Calls answered "stored", and the others.
    stored: usize,
    not_stored: usize,
}

struct Helper {
    repo: Repository,
    /// The handle verifications read through.
    checker: Repository,
    layout: Layout,
    opts: ArchiveOptions,
    /// `Repository::cache_tag`: what calls must name.
    tag: String,
    /// The URL markers name.
    url: String,
    known: RepoIdentity,
    instance: String,
    state: Mutex<State>,
    /// A push ended (success or not).
    pushed: Notify,
    /// Something for the pusher to look at.
    wake: Notify,
    verify: watch::Sender<Verify>,
}

/// Runs the helper for `data_dir` until it has a reason to stop; returns at
/// once when another helper runs or there is no repository to serve yet.
/// `verifier` is a second handle on the same repository with its own
/// connections, used only for the format-object reads: they never wait for
/// a connection that uploads, nor open a new one while uploads are under way.
pub fn run(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    verifier: &Repository,
    data_dir: &Path,
    opts: &ArchiveOptions,
) -> Result<()> {
    let place = Place::of_data_dir(data_dir);
    std::fs::create_dir_all(&place.dir).map_err(Error::io("cannot create", &place.dir))?;
    check_private(&place.dir)?;
    let mut lock = place.open_lock().map_err(Error::io("cannot open", &place.lock))?;
    if lock.try_lock().is_err() {
        return Ok(()); // another helper runs
    }
    // Our PID, and a fresh modification time: calls see a helper starting.
    {
        use std::io::Write;
        let _ = lock.set_len(0).and_then(|()| writeln!(lock, "{}", std::process::id()));
    }
    let Some(layout) = Layout::for_file(&place.wal_dir.join("x"), repo.url()) else { return Ok(()) };
    let (known, instance) = rt.block_on(repo.identity_and_instance())?;
    let (true, Some(_), Some(instance)) = (known.format_exists, known.cluster, instance) else {
        crate::log_info!("archiving helper: the repository has no cluster recorded yet; not starting");
        return Ok(());
    };
    let helper = Arc::new(Helper {
        repo: repo.clone(),
        checker: verifier.clone(),
        layout,
        opts: opts.clone(),
        tag: repo.cache_tag(),
        url: repo.url().to_string(),
        known,
        instance,
        state: Mutex::new(State {
            last: None,
            last_call: Instant::now(),
            serving: 0,
            ahead: 0,
            files: HashMap::new(),
            retire: false,
            stored: 0,
            not_stored: 0,
        }),
        pushed: Notify::new(),
        wake: Notify::new(),
        verify: watch::Sender::new(Verify::default()),
    });
    let why = rt.block_on(serve(&helper, &place))?;
    let (stored, not_stored) = {
        let state = helper.lock();
        (state.stored, state.not_stored)
    };
    crate::log_info!(
        "archiving helper for '{}' stops: {why}; answered {stored} stored, {not_stored} not",
        data_dir.display()
    );
    drop(lock);
    Ok(())
}

/// The socket's directory must be ours and private: nobody else may reach
/// the socket or put another in its place.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(Error::io("cannot stat", dir))?;
    if !meta.is_dir() || meta.uid() != euid() || meta.mode() & 0o077 != 0 {
        return Err(Error::config(
            format!("'{}' is not a private directory of uid {} (mode 0700)", dir.display(), euid()),
            format!("chmod 0700 '{}' as its owner, the user PostgreSQL runs as", dir.display()),
        ));
    }
    Ok(())
}

async fn serve(helper: &Arc<Helper>, place: &Place) -> Result<String> {
    let _ = std::fs::remove_file(&place.socket); // stale: we hold the lock
    let listener = UnixListener::bind(&place.socket).map_err(Error::io("cannot listen on", &place.socket))?;
    let socket_id = socket_id(&place.socket);
    let server = data_dir::running_postmaster(&place.data_dir);
    let verifier = tokio::spawn(helper.clone().verifier());
    let pusher = tokio::spawn(helper.clone().pusher());
    let mut check = tokio::time::interval(CHECK);
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let h = helper.clone();
                    tokio::spawn(async move { h.connection(stream).await });
                }
            }
            _ = check.tick() => {
                if let Some(why) = helper.reason_to_stop(place, server, socket_id) {
                    break why;
                }
            }
        }
    };
    // Removed first: from now on calls do the work themselves.
    if socket_id.is_some() && socket_id == self::socket_id(&place.socket) {
        let _ = std::fs::remove_file(&place.socket);
    }
    drop(listener);
    helper.verify.send_modify(|v| v.broken = true);
    helper.wake.notify_one();
    let _ = pusher.await; // finishes the stores it began
    verifier.abort();
    Ok(why)
}

fn socket_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Helper {
    fn reason_to_stop(&self, place: &Place, server: Option<i32>, socket: Option<(u64, u64)>) -> Option<String> {
        if self.verify.borrow().broken {
            return Some(format!("the repository at '{}' is not the instance it verified", self.url));
        }
        let state = self.state.lock().expect("invariant: no panic while locked");
        if state.retire {
            return Some("a call named another repository".into());
        }
        if state.serving == 0 && state.ahead == 0 && state.last_call.elapsed() > IDLE_EXIT {
            return Some(format!("no call for {}s", IDLE_EXIT.as_secs()));
        }
        drop(state);
        if !data_dir::is_data_dir(&place.data_dir) {
            return Some("the data directory is gone".into());
        }
        if let Some(pid) = server {
            if data_dir::running_postmaster(&place.data_dir) != Some(pid) {
                return Some(format!("the server (PID {pid}) stopped"));
            }
        }
        if socket.is_none() || socket_id(&place.socket) != socket {
            return Some("its socket was removed".into());
        }
        None
    }

    /// One connection: one request, one answer.
    async fn connection(self: Arc<Self>, stream: UnixStream) {
        match stream.peer_cred() {
            Ok(c) if c.uid() == euid() => {}
            _ => return, // not ours: no answer at all
        }
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(read).take(MAX_LINE);
        match tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) if line.ends_with('\n') => {}
            _ => return,
        }
        let answer = match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Answer::error(format!("a request that does not parse: {e}")),
            Ok(req) if req.repo != self.tag => {
                self.state.lock().expect("invariant: no panic while locked").retire = true;
                Answer::error(format!("this helper serves '{}', not '{}'", self.tag, req.repo))
            }
            Ok(req) => match req.name.parse::<WalFileName>() {
                Err(e) => Answer::error(e.to_string()),
                Ok(name) => self.answer(name).await,
            },
        };
        let mut out = serde_json::to_vec(&answer).expect("invariant: plain structs serialize");
        out.push(b'\n');
        let _ = write.write_all(&out).await;
        let _ = write.shutdown().await;
    }

    async fn answer(&self, name: WalFileName) -> Answer {
        // Asked now: only a verification that starts from here on counts.
        let need = self.want_verification();
        {
            let mut state = self.lock();
            state.serving += 1;
            state.last_call = Instant::now();
            if name.kind() != WalFileKind::History && state.last.is_none_or(|l| l.to_string() < name.to_string()) {
                state.last = Some(name);
            }
        }
        self.wake.notify_one();
        let result = self.settle(name, need).await;
        {
            let mut state = self.lock();
            state.serving -= 1;
            state.last_call = Instant::now();
            match result {
                Ok(_) => state.stored += 1,
                Err(_) => state.not_stored += 1,
            }
        }
        match result {
            Ok(outcome) => Answer::stored(outcome),
            Err(message) => Answer::error(message),
        }
    }

    /// Makes sure `name` is stored and the instance verified after `need`.
    async fn settle(&self, name: WalFileName, need: u64) -> std::result::Result<PutOutcome, String> {
        let path = self.layout.wal_dir.join(name.to_string());
        loop {
            let pushed = self.pushed.notified();
            let known = self.lock().files.get(&name).cloned();
            match known {
                Some(FileState::Pushing) => {
                    pushed.await;
                    continue;
                }
                Some(FileState::Stored { stamp, need: after_store, outcome }) => {
                    if FileStamp::read(&path).ok() == Some(stamp) {
                        self.verified(need.max(after_store)).await?;
                        self.lock().files.remove(&name);
                        let _ = std::fs::remove_file(self.layout.marker_path(&name));
                        return Ok(outcome);
                    }
                    // Another file under that name now: store it.
                    self.lock().files.remove(&name);
                }
                Some(FileState::Failed { .. }) | None => {}
            }
            if let Some(marker) = self.layout.matching_marker(&name, &self.url) {
                if marker.instance == self.instance {
                    // Its store ended before the marker was read: a check
                    // that starts from now on vouches for it.
                    let after_read = self.verify.borrow().started + 1;
                    self.verified(need.max(after_read)).await?;
                    let _ = std::fs::remove_file(self.layout.marker_path(&name));
                    return Ok(PutOutcome::Stored);
                }
            }
            if self.claim(name) {
                return self.store_now(name, &path, need).await;
            }
        }
    }

    /// Marks `name` as being pushed, unless it already is or is stored.
    fn claim(&self, name: WalFileName) -> bool {
        let mut state = self.lock();
        match state.files.get(&name) {
            Some(FileState::Pushing | FileState::Stored { .. }) => false,
            _ => {
                state.files.insert(name, FileState::Pushing);
                true
            }
        }
    }

    /// Stores `name` on demand: read and framed while the instance is
    /// verified (after `need`), stored only once it is.
    async fn store_now(&self, name: WalFileName, path: &Path, need: u64) -> std::result::Result<PutOutcome, String> {
        let level = self.opts.compress_level;
        let file = path.to_path_buf();
        let encoder = tokio::task::spawn_blocking(move || archive::encode_file(&file, level));
        let verified = self.verified(need).await;
        let encoded = encoder.await;
        let result = match (verified, encoded) {
            (Err(m), _) => Err(m),
            (Ok(()), Err(_)) => Err("the compression thread panicked".into()),
            (Ok(()), Ok(Err(e))) => Err(e.one_line()),
            (Ok(()), Ok(Ok(encoded))) => {
                archive::store_encoded(&self.repo, &encoded, self.known).await.map_err(|e| e.one_line())
            }
        };
        {
            let mut state = self.lock();
            match &result {
                Ok(_) => state.files.remove(&name),
                Err(_) => state.files.insert(name, FileState::Failed { at: Instant::now() }),
            };
        }
        self.pushed.notify_waiters();
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("invariant: no panic while locked")
    }

    /// The verification a call arriving now needs (the next to start), and
    /// asks for it.
    fn want_verification(&self) -> u64 {
        let mut need = 0;
        self.verify.send_modify(|v| {
            need = v.started + 1;
            v.wanted = v.wanted.max(need);
        });
        need
    }

    /// Waits until verification `need` (or a later one) found the instance.
    async fn verified(&self, need: u64) -> std::result::Result<(), String> {
        self.verify.send_if_modified(|v| {
            let more = v.wanted < need;
            v.wanted = v.wanted.max(need);
            more
        });
        let mut rx = self.verify.subscribe();
        let seen = rx
            .wait_for(|v| v.verified >= need || v.broken || v.failed.as_ref().is_some_and(|(s, _)| *s >= need))
            .await
            .map_err(|_| "the helper is stopping".to_string())?
            .clone();
        if seen.verified >= need {
            Ok(())
        } else if seen.broken {
            Err(format!("the helper stopped, or the repository at '{}' is not the instance it verified", self.url))
        } else {
            Err(seen.failed.map(|(_, m)| m).unwrap_or_default())
        }
    }

    /// Reads the format object whenever a call waits for a verification
    /// that has not started; one at a time, each serving every call that
    /// arrived before it started.
    async fn verifier(self: Arc<Self>) {
        let mut rx = self.verify.subscribe();
        loop {
            let ready = rx.wait_for(|v| v.wanted > v.started || v.broken).await.map(|v| v.broken);
            match ready {
                Ok(false) => {}
                _ => return,
            }
            let mut seq = 0;
            self.verify.send_modify(|v| {
                v.started += 1;
                seq = v.started;
            });
            let found = self.checker.instance_tag().await;
            self.verify.send_modify(|v| match found {
                Ok(Some(i)) if i == self.instance => {
                    v.verified = v.verified.max(seq);
                    v.verified_at = Some(Instant::now());
                }
                Ok(_) => v.broken = true,
                Err(e) => v.failed = Some((seq, e.one_line())),
            });
            self.wake.notify_one();
        }
    }

    /// Pushes ready files ahead of PostgreSQL until the helper stops.
    async fn pusher(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
            if self.verify.borrow().broken {
                break;
            }
            let room = self.opts.parallel.saturating_sub(tasks.len());
            for name in self.ahead_candidates(room) {
                let h = self.clone();
                tasks.spawn(async move { h.push_ahead(name).await });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Up to `room` files to push now: of the next `archive.ahead` files
    /// PostgreSQL will ask for after the last call (history files first,
    /// then by name), those not stored, being stored or recently failed;
    /// each is claimed. Files a marker already vouches for are noted as stored.
    fn ahead_candidates(&self, room: usize) -> Vec<WalFileName> {
        let Some(last) = self.lock().last else { return Vec::new() };
        if room == 0 || self.opts.ahead == 0 {
            return Vec::new();
        }
        // Only into an instance verified moments ago, with no failed or
        // foreign verification since (a repository wiped under an idle
        // helper gets nothing from it); otherwise ask for a verification.
        let fresh = {
            let v = self.verify.borrow();
            let failed_since = v.failed.as_ref().is_some_and(|(s, _)| *s > v.verified);
            !v.broken && !failed_since && v.verified_at.is_some_and(|t| t.elapsed() < FRESH)
        };
        let last_text = last.to_string();
        let mut ready = markers::ready_names(&self.layout.wal_dir.join("archive_status"));
        ready.retain(|n| *n != last && (n.kind() == WalFileKind::History || n.to_string() > last_text));
        ready.sort_by_key(|n| (n.kind() != WalFileKind::History, n.to_string()));
        ready.truncate(self.opts.ahead);
        let mut out = Vec::new();
        let mut state = self.lock();
        // What PostgreSQL has recycled, or moved past, is forgotten.
        state.files.retain(|n, s| {
            matches!(s, FileState::Pushing) || ready.contains(n) || self.layout.wal_dir.join(n.to_string()).exists()
        });
        for name in ready {
            if out.len() >= room {
                break;
            }
            match state.files.get(&name) {
                Some(FileState::Pushing | FileState::Stored { .. }) => continue,
                Some(FileState::Failed { at }) if at.elapsed() < FAILED_RETRY => continue,
                _ => {}
            }
            if !self.layout.wal_dir.join(name.to_string()).is_file() {
                continue;
            }
            if let Some(marker) = self.layout.matching_marker(&name, &self.url) {
                if marker.instance == self.instance {
                    let need = self.verify.borrow().started + 1;
                    state
                        .files
                        .insert(name, FileState::Stored { stamp: marker.stamp, need, outcome: PutOutcome::Stored });
                    continue;
                }
            }
            if !fresh {
                drop(state);
                self.want_verification();
                return Vec::new();
            }
            state.files.insert(name, FileState::Pushing);
            state.ahead += 1;
            out.push(name);
        }
        out
    }

    async fn push_ahead(&self, name: WalFileName) {
        let path = self.layout.wal_dir.join(name.to_string());
        let level = self.opts.compress_level;
        let file = path.clone();
        let result = match tokio::task::spawn_blocking(move || archive::encode_file(&file, level)).await {
            Err(_) => Err("the compression thread panicked".to_string()),
            Ok(Err(e)) => Err(e.one_line()),
            Ok(Ok(encoded)) => archive::store_encoded(&self.repo, &encoded, self.known)
                .await
                .map(|outcome| (encoded.stamp, outcome))
                .map_err(|e| e.one_line()),
        };
        // Stored before the next verification to start: that one counts.
        let need = self.verify.borrow().started + 1;
        {
            let mut state = self.lock();
            state.ahead -= 1;
            let now = match &result {
                Ok((stamp, outcome)) => FileState::Stored { stamp: *stamp, need, outcome: *outcome },
                Err(_) => FileState::Failed { at: Instant::now() },
            };
            state.files.insert(name, now);
        }
        if let Err(m) = result {
            // PostgreSQL's call for it stores it on demand and reports then.
            crate::log_info!("archiving helper: storing '{name}' ahead failed: {m}");
        }
        self.pushed.notify_waiters();
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::archive::helper::{ask, Asked};
    use crate::pg::WalSegmentSize;
    use crate::repo::{keys, synthetic};
    use crate::storage::{self, Access, RepoUrl, RetryPolicy, StoreOptions};

    const SYSID: u64 = 7_000_000_000_000_000_001;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    fn name(i: u32) -> WalFileName {
        format!("0000000100000000000000{i:02X}").parse().expect("name")
    }

    fn open(dir: &Path) -> Repository {
        let url: RepoUrl = format!("file://{}", dir.display()).parse().expect("url");
        let deadline = Duration::from_secs(2);
        let store = storage::open(&url, &StoreOptions::default(), Access::CreateIfMissing, deadline).expect("open");
        Repository::new(store, url, RetryPolicy::with_deadline(deadline).quiet())
    }

    /// Runs a helper for `data` on a thread of its own, once it listens.
    fn start_listening(repo: &Repository, data: &Path) -> (Place, std::thread::JoinHandle<Result<()>>) {
        let place = Place::of_data_dir(data);
        let helper = {
            let (repo, data) = (repo.clone(), data.to_path_buf());
            std::thread::spawn(move || run(&runtime(), &repo, &repo, &data, &opts()))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !place.socket.exists() {
            assert!(Instant::now() < deadline && !helper.is_finished(), "the helper listens");
            std::thread::sleep(Duration::from_millis(10));
        }
        (place, helper)
    }

    fn opts() -> ArchiveOptions {
        ArchiveOptions {
            compress_level: 1,
            retry_deadline: Duration::from_secs(2),
            parallel: 2,
            ahead: 4,
            helper: true,
        }
    }

    /// A data directory with segments 1..=n, each with a `.ready`.
    fn data_dir(root: &Path, n: u32, sysid: u64) -> std::path::PathBuf {
        let data = root.join("data");
        std::fs::create_dir_all(data.join("pg_wal/archive_status")).expect("mkdir");
        std::fs::write(data.join("PG_VERSION"), "15\n").expect("write");
        for i in 1..=n {
            let content = synthetic::segment_content(&name(i), sysid, WalSegmentSize::DEFAULT);
            std::fs::write(data.join("pg_wal").join(name(i).to_string()), content).expect("write");
            std::fs::write(data.join(format!("pg_wal/archive_status/{}.ready", name(i))), "").expect("write");
        }
        // As every pgwal process makes it (umask 077).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(data.join("pg_wal/pgwal")).expect("mkdir");
        data
    }

    fn stored(repo: &Repository, rt: &tokio::runtime::Runtime, i: u32) -> Option<FrameHeaderSha> {
        rt.block_on(repo.read_header(&keys::wal(&name(i)))).expect("read").map(|h| h.sha256)
    }

    type FrameHeaderSha = [u8; 32];

    /// Through the helper: every file answered "stored" is in the
    /// repository with its SHA-256; a call naming another repository, and a
    /// repository recreated at the same URL by another cluster, get no
    /// "stored" (the call falls back), nothing is stored into the new
    /// repository, and the helper exits.
    #[test]
    fn answers_only_for_the_verified_instance() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = data_dir(tmp.path(), 6, SYSID);
        let repo_dir = tmp.path().join("repo");
        let repo = open(&repo_dir);
        let rt = runtime();
        // The first call creates the repository (one-process path).
        let first = data.join("pg_wal").join(name(1).to_string());
        archive::archive(&rt, &repo, &first, &opts(), None).expect("first archive");
        let (place, helper) = start_listening(&repo, &data);
        let wait = Duration::from_secs(10);
        let request = |i: u32, repo: &str| Request { name: name(i).to_string(), repo: repo.to_string() };
        for i in 2..=4 {
            assert_eq!(
                ask(&rt, &place.socket, &request(i, &repo.cache_tag()), wait),
                Asked::Stored(PutOutcome::Stored)
            );
            let content = std::fs::read(data.join("pg_wal").join(name(i).to_string())).expect("read");
            assert_eq!(stored(&repo, &rt, i), Some(crate::repo::frame::sha256(&content)), "{i} stored exactly");
        }
        // Pushed ahead (ahead = 4 after segment 4): 5 and 6 get stored
        // without a call.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stored(&repo, &rt, 6).is_none() {
            assert!(Instant::now() < deadline, "pushed ahead");
            std::thread::sleep(Duration::from_millis(10));
        }

        // The repository is wiped and created again by another cluster.
        std::fs::remove_dir_all(&repo_dir).expect("wipe");
        let other = open(&repo_dir);
        let staging = tmp.path().join("staging");
        std::fs::create_dir_all(&staging).expect("mkdir");
        let foreign = staging.join(name(9).to_string());
        std::fs::write(&foreign, synthetic::segment_content(&name(9), SYSID + 1, WalSegmentSize::DEFAULT)).expect("w");
        archive::archive(&rt, &other, &foreign, &opts(), None).expect("other cluster");
        let asked = ask(&rt, &place.socket, &request(5, &repo.cache_tag()), wait);
        assert!(matches!(asked, Asked::Failed(_)), "stored ahead into the old instance: {asked:?}");
        assert_eq!(stored(&other, &rt, 5), None, "nothing of ours in the other cluster's repository");
        helper.join().expect("helper thread").expect("helper ends cleanly");
        assert!(!place.socket.exists(), "the helper removed its socket");
    }

    #[test]
    fn refuses_a_directory_others_can_enter() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = data_dir(tmp.path(), 1, SYSID);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("pg_wal/pgwal"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let repo = open(&tmp.path().join("repo"));
        let err = run(&runtime(), &repo, &repo, &data, &opts()).expect_err("refused");
        assert!(err.to_string().contains("private"), "{err}");
        assert!(!Place::of_data_dir(&data).socket.exists());
    }

    #[test]
    fn a_call_for_another_repository_is_refused_and_retires_the_helper() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = data_dir(tmp.path(), 2, SYSID);
        let repo = open(&tmp.path().join("repo"));
        let rt = runtime();
        archive::archive(&rt, &repo, &data.join("pg_wal").join(name(1).to_string()), &opts(), None).expect("first");
        let (place, helper) = start_listening(&repo, &data);
        let req = Request { name: name(2).to_string(), repo: "file:///elsewhere".into() };
        let asked = ask(&rt, &place.socket, &req, Duration::from_secs(10));
        assert!(matches!(asked, Asked::Failed(_)), "{asked:?}");
        assert_eq!(stored(&repo, &rt, 2), None);
        helper.join().expect("helper thread").expect("helper ends cleanly");
        assert_eq!(ask(&rt, &place.socket, &req, Duration::from_secs(10)), Asked::NoHelper);
    }
}
