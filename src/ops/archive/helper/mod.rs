//! The archiving helper: one long-lived process per data directory that
//! answers `archive_command` calls over a unix socket, so that a call costs
//! one round trip on a warm connection instead of a fresh process's connect,
//! TLS handshake and request (about 3 round trips each).
//!
//! `pgwal archive pg_wal/N`, run by PostgreSQL inside its data directory,
//! first connects to `pg_wal/pgwal/archive-helper.sock` (the directory is
//! 0700; each side checks the other's uid with SO_PEERCRED), hands over N
//! and the repository it means (URL and key fingerprint) and waits, within
//! `archive.retry_deadline`, for one answer line. Only an explicit "stored"
//! (or "identical") answer makes it exit 0. Anything else — no socket, a
//! stale one nobody listens on, a refused connection, another user at the
//! other end, EOF, garbage, no answer in time, an error answer — and the
//! call does all the work itself on the one-process path (`ahead`), which
//! is safe on its own: a dead or hung helper costs time, never data. A call
//! that waited in vain also removes the socket, so the calls after it do
//! not wait for that helper again.
//!
//! A call that found no helper, once it has archived its file, starts one
//! (`pgwal archive-helper`, a hidden subcommand: the same binary, detached
//! with setsid, stderr appended to `pg_wal/pgwal/archive-helper.log`, one
//! per data directory by an flock on `pg_wal/pgwal/archive-helper.lock`),
//! unless `archive.helper = false`; a call that finds a helper that took its
//! lock moments ago but does not listen yet waits up to a second for it.
//! Outside a data directory nothing is
//! started and no socket is looked for. What the helper promises before it
//! answers "stored" is described in [`serve`].

pub mod serve;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::local::{data_dir, markers};
use crate::pg::WalFileName;
use crate::repo::PutOutcome;

/// The name of the hidden subcommand that runs the helper.
pub const SUBCOMMAND: &str = "archive-helper";

/// The longest line either side reads.
const MAX_LINE: u64 = 4096;

/// How long after taking its lock a helper counts as starting: a call that
/// finds one starting waits for its socket (at most [`STARTUP_WAIT`]).
const STARTING: Duration = Duration::from_secs(3);

/// How long a call waits for a starting helper to listen.
const STARTUP_WAIT: Duration = Duration::from_secs(1);

/// Where a data directory's helper listens, locks and logs.
#[derive(Debug, Clone)]
pub struct Place {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Its `pg_wal`.
    pub wal_dir: PathBuf,
    /// `pg_wal/pgwal` (mode 0700).
    pub dir: PathBuf,
    /// The helper's unix socket.
    pub socket: PathBuf,
    /// The lock the helper holds while it runs.
    pub lock: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Place {
    /// The place of the helper of `data_dir`.
    pub fn of_data_dir(data_dir: &Path) -> Place {
        let wal_dir = data_dir.join("pg_wal");
        let dir = data_dir::pgwal_dir(&wal_dir);
        Place {
            data_dir: data_dir.to_path_buf(),
            socket: dir.join("archive-helper.sock"),
            lock: dir.join("archive-helper.lock"),
            log: dir.join("archive-helper.log"),
            wal_dir,
            dir,
        }
    }

    /// The place for a call archiving `path` in `data_dir`: only when `path`
    /// is a file of that data directory's `pg_wal` (the same directory, as
    /// PostgreSQL's `%p` is) with its `archive_status` beside it.
    pub fn for_call(path: &Path, data_dir: &Path) -> Option<Place> {
        use std::os::unix::fs::MetadataExt;
        let place = Place::of_data_dir(data_dir);
        let given = std::fs::metadata(markers::wal_dir_of(path)).ok()?;
        let own = std::fs::metadata(&place.wal_dir).ok()?;
        let same = given.dev() == own.dev() && given.ino() == own.ino();
        (same && place.wal_dir.join("archive_status").is_dir()).then_some(place)
    }

    /// Opens (creating) the lock file.
    pub fn open_lock(&self) -> io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock)
    }

    /// Whether a helper started moments ago (it writes its PID into the lock
    /// file when it takes the lock) and may not listen yet.
    pub fn helper_starting(&self) -> bool {
        let recent = std::fs::metadata(&self.lock)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < STARTING);
        recent && !self.socket.exists() && self.helper_running()
    }

    /// Whether a helper holds the lock now (or the lock cannot be opened:
    /// then none could be started either).
    pub fn helper_running(&self) -> bool {
        match self.open_lock() {
            Ok(f) => f.try_lock().is_err(),
            Err(_) => true,
        }
    }
}

/// What a call sends: the file's name (in the helper's `pg_wal`) and the
/// repository it archives into (`Repository::cache_tag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The WAL file name.
    pub name: String,
    /// URL and key fingerprint of the repository.
    pub repo: String,
}

/// What the helper answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// "stored", "identical" or "error".
    pub result: String,
    /// Why, for "error".
    #[serde(default)]
    pub message: String,
}

impl Answer {
    /// The answer for a file durably stored in the verified repository.
    pub fn stored(outcome: PutOutcome) -> Answer {
        let result = match outcome {
            PutOutcome::Stored => "stored",
            PutOutcome::AlreadyIdentical => "identical",
        };
        Answer { result: result.into(), message: String::new() }
    }

    /// The answer that sends the call down the one-process path.
    pub fn error(message: impl Into<String>) -> Answer {
        Answer { result: "error".into(), message: message.into() }
    }

    /// The outcome, only for an explicit "stored" or "identical".
    pub fn outcome(&self) -> Option<PutOutcome> {
        match self.result.as_str() {
            "stored" => Some(PutOutcome::Stored),
            "identical" => Some(PutOutcome::AlreadyIdentical),
            _ => None,
        }
    }
}

/// What asking the helper came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The helper says the file is durably stored.
    Stored(PutOutcome),
    /// Nobody listens (no socket, or a stale one).
    NoHelper,
    /// Something answered, but not "stored": do the work.
    Failed(String),
}

/// What `archive` does after asking.
#[derive(Debug)]
pub enum Call {
    /// The helper stored the file.
    Answered(PutOutcome),
    /// Do the work; then start a helper at `start` if none runs.
    Fallback {
        /// Where a helper may be started (a call inside a data directory
        /// with the helper on).
        start: Option<Place>,
    },
}

/// The whole client side of one call, before the repository is opened: asks
/// the data directory's helper when the call runs inside a data directory
/// and the helper is on. Never an error: whatever goes wrong is a fallback.
pub fn before_archive(rt: &tokio::runtime::Runtime, path: &Path, cfg: &crate::config::Config) -> Call {
    let none = Call::Fallback { start: None };
    if !cfg.archive.helper {
        return none;
    }
    let Some(data_dir) = data_dir::of_this_process(cfg.pgdata.as_deref()) else { return none };
    let Some(place) = Place::for_call(path, &data_dir) else { return none };
    let name = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<WalFileName>().ok());
    let (Some(name), Some(url)) = (name, cfg.repo.as_ref()) else { return none };
    // A key that does not load fails the one-process path with its own error.
    let Ok(key) = cfg.repository_key() else { return none };
    let request = Request { name: name.to_string(), repo: crate::repo::cache_tag(url, key.as_ref()) };
    if !place.socket.exists() && place.helper_starting() {
        // Started by the call before this one: worth a short wait.
        let deadline = std::time::Instant::now() + STARTUP_WAIT;
        while !place.socket.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    match ask(rt, &place.socket, &request, cfg.archive.retry_deadline) {
        Asked::Stored(outcome) => Call::Answered(outcome),
        Asked::NoHelper => Call::Fallback { start: Some(place) },
        Asked::Failed(reason) => {
            crate::log_debug!("the archiving helper did not store '{name}' ({reason}); archiving it directly");
            Call::Fallback { start: Some(place) }
        }
    }
}

/// After a call archived its file itself: starts a helper at `place` when
/// none runs. A helper that cannot be started is only a warning.
pub fn after_archive(place: &Place, repo_url: &str, config: Option<&Path>) {
    if place.helper_running() {
        return;
    }
    if let Err(e) = spawn(place, repo_url, config) {
        crate::log_warn!("cannot start the archiving helper: {e}");
    }
}

/// Asks the helper listening on `socket` to store `request`, waiting at
/// most `wait` for its answer. On a timeout the socket is removed: the
/// calls after this one do not wait for that helper again.
pub fn ask(rt: &tokio::runtime::Runtime, socket: &Path, request: &Request, wait: Duration) -> Asked {
    if !socket.exists() {
        return Asked::NoHelper;
    }
    match rt.block_on(async { tokio::time::timeout(wait, exchange(socket, request)).await }) {
        Ok(asked) => asked,
        Err(_) => {
            let _ = std::fs::remove_file(socket);
            Asked::Failed(format!("no answer within {}s; its socket is removed", wait.as_secs_f32()))
        }
    }
}

async fn exchange(socket: &Path, request: &Request) -> Asked {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            return Asked::NoHelper
        }
        Err(e) => return Asked::Failed(format!("cannot connect to '{}': {e}", socket.display())),
    };
    match stream.peer_cred() {
        Ok(c) if c.uid() == euid() => {}
        Ok(c) => return Asked::Failed(format!("'{}' is served by uid {}, not ours", socket.display(), c.uid())),
        Err(e) => return Asked::Failed(format!("cannot check who serves '{}': {e}", socket.display())),
    }
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("invariant: plain structs serialize");
    line.push(b'\n');
    if let Err(e) = write.write_all(&line).await {
        return Asked::Failed(format!("cannot send the request: {e}"));
    }
    let mut answer = String::new();
    match tokio::io::BufReader::new(read).take(MAX_LINE).read_line(&mut answer).await {
        Ok(_) if answer.ends_with('\n') => {}
        Ok(_) => return Asked::Failed("the helper closed the connection without an answer".into()),
        Err(e) => return Asked::Failed(format!("cannot read the answer: {e}")),
    }
    match serde_json::from_str::<Answer>(answer.trim_end()) {
        Ok(a) => match a.outcome() {
            Some(outcome) => Asked::Stored(outcome),
            None => Asked::Failed(format!("the helper answered {}: {}", a.result, a.message)),
        },
        Err(e) => Asked::Failed(format!("an answer that does not parse: {e}")),
    }
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Starts `pgwal archive-helper` detached from PostgreSQL: its own session,
/// no terminal, stdin and stdout on /dev/null, stderr appended to the log.
fn spawn(place: &Place, repo_url: &str, config: Option<&Path>) -> io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(&place.dir)?;
    let log = OpenOptions::new().create(true).append(true).open(&place.log)?;
    let mut cmd = Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("--repo").arg(repo_url).arg("--pgdata").arg(&place.data_dir).arg(SUBCOMMAND);
    cmd.current_dir(&place.data_dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: the child outlives this process and is reaped by init.
    cmd.spawn().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    fn request() -> Request {
        Request { name: "000000010000000000000001".into(), repo: "file:///r".into() }
    }

    /// Serves one connection on `socket` with `reply` (raw bytes), after
    /// checking the request; returns what it received.
    fn serve_once(socket: &Path, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind");
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            std::io::BufReader::new(&stream).read_line(&mut line).expect("read");
            (&stream).write_all(reply).expect("write");
            line
        })
    }

    #[test]
    fn only_an_explicit_stored_answer_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let wait = Duration::from_secs(5);
        let cases: [(&'static [u8], Option<PutOutcome>); 8] = [
            (b"{\"result\":\"stored\"}\n", Some(PutOutcome::Stored)),
            (b"{\"result\":\"identical\",\"message\":\"\"}\n", Some(PutOutcome::AlreadyIdentical)),
            (b"{\"result\":\"error\",\"message\":\"boom\"}\n", None),
            (b"{\"result\":\"stored\"}", None), // no end of line: cut short
            (b"{\"result\":\"Stored\"}\n", None),
            (b"stored\n", None),
            (b"", None),
            (b"{\"result\":\"storedx\"}\n", None),
        ];
        for (i, (reply, expected)) in cases.into_iter().enumerate() {
            let socket = dir.path().join(format!("s{i}"));
            let server = serve_once(&socket, reply);
            let asked = ask(&rt, &socket, &request(), wait);
            let sent = server.join().expect("server");
            let got: Request = serde_json::from_str(sent.trim_end()).expect("request parses");
            assert_eq!(got, request());
            match expected {
                Some(o) => assert_eq!(asked, Asked::Stored(o), "{}", String::from_utf8_lossy(reply)),
                None => assert!(matches!(asked, Asked::Failed(_)), "{}: {asked:?}", String::from_utf8_lossy(reply)),
            }
        }
    }

    #[test]
    fn no_socket_or_a_stale_one_is_no_helper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let socket = dir.path().join("sock");
        assert_eq!(ask(&rt, &socket, &request(), Duration::from_secs(5)), Asked::NoHelper);
        // Bound once, then its listener is gone: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
        assert!(socket.exists());
        assert_eq!(ask(&rt, &socket, &request(), Duration::from_secs(5)), Asked::NoHelper);
    }

    #[test]
    fn a_helper_that_never_answers_is_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let socket = dir.path().join("sock");
        // Listening but never accepting nor answering.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let asked = ask(&rt, &socket, &request(), Duration::from_millis(300));
        assert!(matches!(asked, Asked::Failed(_)), "{asked:?}");
        assert!(!socket.exists(), "the socket of a hung helper is removed");
        assert_eq!(ask(&rt, &socket, &request(), Duration::from_secs(5)), Asked::NoHelper);
    }

    #[test]
    fn a_call_is_for_the_data_directory_s_own_pg_wal_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("pg_wal/archive_status")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("elsewhere/archive_status")).expect("mkdir");
        let place = Place::for_call(&data.join("pg_wal/000000010000000000000001"), &data).expect("own pg_wal");
        assert_eq!(place.socket, data.join("pg_wal/pgwal/archive-helper.sock"));
        assert!(Place::for_call(&dir.path().join("elsewhere/000000010000000000000001"), &data).is_none());
        std::fs::remove_dir(data.join("pg_wal/archive_status")).expect("rmdir");
        assert!(Place::for_call(&data.join("pg_wal/000000010000000000000001"), &data).is_none());
    }
}
