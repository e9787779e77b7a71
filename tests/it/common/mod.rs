//! Shared harness for pgwal's integration tests: real PostgreSQL clusters, a
//! real S3 server (s3s-fs) and a runner for the pgwal binary.
//!
//! The integration tests are modules of one binary (tests/it/main.rs);
//! each uses it as `crate::common`.
//!
//! # Users and permissions
//! PostgreSQL refuses to run as root, and CI and the dev shell run the tests
//! as root. So when the tests run as root, every PostgreSQL binary and every
//! pgwal invocation runs as the unprivileged `postgres` OS user; otherwise
//! everything runs as the current user ([`run_as`]). Test directories live
//! under `/tmp` and belong to that user. The server itself runs pgwal from
//! `archive_command` and `restore_command`, so the pgwal binary must be
//! executable by that user: [`pgwal_bin`] uses cargo's binary when it is, and
//! otherwise (a checkout under `/root`, say) a copy of it in a world-readable
//! directory under `/tmp`.
//!
//! # Environment
//! - `PG_BINDIR`: PostgreSQL's binaries; else `pg_config --bindir`, else the
//!   newest `/usr/lib/postgresql/*/bin`.
//! - `S3S_FS_BIN`: the s3s-fs binary; else `s3s-fs` on `PATH`, else
//!   `$HOME/.cache/pgwal-tools/s3s-fs/bin/s3s-fs`, installed there with
//!   `cargo install` on first use.
//! - `PGWAL_KEEP_TEST_DIRS=1`: keep test directories (data dirs, server logs,
//!   the S3 root) after the test, for inspection.
//! - `PGWAL_TEST_TMPDIR`: where test directories go (default `/tmp`); the
//!   run-as user must be able to traverse it.
//!
//! Commands started here get a cleared environment (plus `PATH`, `HOME`,
//! `USER`, `LOGNAME`, `LC_ALL=C` and a few debugging variables), so that a
//! developer's `PGWAL_*`, `PG*` or `AWS_*` variables never leak into a test.
//!
//! # Drop order
//! A [`PgCluster`] stops its server when dropped, and a [`TestDir`] deletes
//! its tree. Declare the `TestDir` before the clusters that live in it (locals
//! drop in reverse order), so that servers stop before their files go.
#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};

/// The s3s-fs release the tests use (newer releases need a newer rustc).
pub const S3S_FS_VERSION: &str = "0.14.1";

/// Default limit for one command (psql, pg_ctl, pgwal...): generous, since
/// CI has 2 cores, but finite so that a hang fails the test instead of CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Name of the data directory inside a cluster's home directory.
pub const DATA_SUBDIR: &str = "pgdata";

/// Name of the Unix socket directory inside a cluster's home directory.
pub const SOCKET_SUBDIR: &str = "sock";

/// Name of the server log file inside a cluster's home directory.
pub const LOG_FILE: &str = "postgresql.log";

/// How many ports to try when a server finds its port taken.
const PORT_ATTEMPTS: usize = 5;

/// Ports are drawn from below Linux's default ephemeral range (32768-60999)
/// so that an outgoing connection's local port cannot take a server's port
/// between two starts (the S3 server restarts on the same port).
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// Environment variables passed through to commands despite `env_clear`:
/// debugging aids, and `TZ` so that pgwal, psql and the test agree on time.
const PASSTHROUGH_ENV: &[&str] = &["PATH", "RUST_BACKTRACE", "RUST_LOG", "LLVM_PROFILE_FILE", "TZ"];

// ---------------------------------------------------------------------------
// Who runs PostgreSQL and pgwal
// ---------------------------------------------------------------------------

/// The OS user that runs PostgreSQL binaries and pgwal in tests.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory, passed as `HOME`.
    pub home: PathBuf,
    /// True when this is not the user running the tests (tests run as root),
    /// so commands switch to it and files are chowned to it.
    pub switch: bool,
}

/// The run-as user: `postgres` when the tests run as root, else the current user.
///
/// Panics with a hint when running as root and there is no `postgres` user.
pub fn run_as() -> &'static RunAs {
    static USER: OnceLock<RunAs> = OnceLock::new();
    USER.get_or_init(|| find_run_as().unwrap_or_else(|e| panic!("{e:#}")))
}

fn find_run_as() -> Result<RunAs> {
    let (uid, gid) = current_ids()?;
    if uid == 0 {
        let user = passwd_entry("postgres")?.context(
            "the tests run as root and there is no 'postgres' OS user to run PostgreSQL as \
             (PostgreSQL refuses root)\nhint: install PostgreSQL's server package, or \
             `useradd --system --user-group --home-dir /var/lib/postgresql postgres`",
        )?;
        ensure!(user.uid != 0, "the 'postgres' OS user has uid 0; PostgreSQL refuses to run as root");
        return Ok(RunAs { switch: true, ..user });
    }
    let name = std::env::var("USER").unwrap_or_else(|_| uid.to_string());
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    Ok(RunAs { name, uid, gid, home, switch: false })
}

/// Effective uid and gid of this process, from `/proc/self/status` (std has
/// no `geteuid`, and the harness uses no libc crate).
fn current_ids() -> Result<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> Result<u32> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no '{name}' line in /proc/self/status"))?;
        // "Uid:\treal\teffective\tsaved\tfs": the effective id is the second number.
        let effective = line.split_whitespace().nth(2).with_context(|| format!("malformed line {line:?}"))?;
        effective.parse().with_context(|| format!("malformed line {line:?}"))
    };
    Ok((field("Uid:")?, field("Gid:")?))
}

/// Looks a user up in `/etc/passwd`.
fn passwd_entry(name: &str) -> Result<Option<RunAs>> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 7 && fields[0] == name {
            let parse = |s: &str| s.parse::<u32>().with_context(|| format!("malformed /etc/passwd line {line:?}"));
            return Ok(Some(RunAs {
                name: name.to_string(),
                uid: parse(fields[2])?,
                gid: parse(fields[3])?,
                home: PathBuf::from(fields[5]),
                switch: false,
            }));
        }
    }
    Ok(None)
}

/// Gives `path` to the run-as user (no-op when not switching users).
pub fn chown_to_run_as(path: &Path) -> Result<()> {
    let user = run_as();
    if user.switch {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("chown {} to '{}'", path.display(), user.name))?;
    }
    Ok(())
}

/// Creates `path` (and missing parents) as a directory owned by the run-as
/// user with mode 0700; an existing directory is chowned and chmodded too.
pub fn create_user_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating directory {}", path.display()))?;
    chown_to_run_as(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", path.display()))
}

/// Writes `contents` to `path` (created or truncated) with the given mode,
/// owned by the run-as user.
pub fn write_user_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    // Set the mode explicitly: `mode` above only applies to new files, and the umask narrows it.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    chown_to_run_as(path)
}

/// Writes a file only the run-as user can read (mode 0600): pgwal refuses
/// config files holding secrets that group or others can read.
pub fn write_private_file(path: &Path, text: &str) -> Result<()> {
    write_user_file(path, text.as_bytes(), 0o600)
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// What a finished command did.
#[derive(Clone)]
pub struct RunOutput {
    /// The program and its arguments, for messages.
    pub command: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output (lossily decoded).
    pub stdout: String,
    /// Its standard error (lossily decoded).
    pub stderr: String,
}

impl RunOutput {
    /// The exit code, or `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` for exit code 0, else an error showing the whole output.
    pub fn ensure_success(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!("command failed: {self}"))
        }
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ended with {}", self.command, self.status)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                write!(f, "\n--- {name} ---\n{}", text.trim_end())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The program and arguments of `cmd`, without its environment (which may
/// hold test credentials that make messages unreadable).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| shell_quote(&s.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, feeding it `input` on stdin (else /dev/null),
/// and kills it after `timeout`. Any exit status is `Ok`; `Err` means the
/// command could not run or did not finish in time.
///
/// Output goes to anonymous temp files rather than pipes: a server started by
/// `pg_ctl` could keep a pipe open and make reading it wait forever.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<RunOutput> {
    let command = describe(cmd);
    let mut stdout = tempfile::tempfile().context("creating a temp file for stdout")?;
    let mut stderr = tempfile::tempfile().context("creating a temp file for stderr")?;
    cmd.stdout(stdout.try_clone().context("duplicating a file handle")?);
    cmd.stderr(stderr.try_clone().context("duplicating a file handle")?);
    match input {
        Some(input) => {
            let mut stdin = tempfile::tempfile().context("creating a temp file for stdin")?;
            stdin.write_all(input).context("writing stdin to a temp file")?;
            stdin.seek(SeekFrom::Start(0)).context("rewinding stdin")?;
            cmd.stdin(stdin);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("starting `{command}`"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for `{command}`"))? {
            break status;
        }
        if started.elapsed() > timeout {
            // Kill by the PID of the child we spawned; ignore "already exited".
            let _ = child.kill();
            let status = child.wait().with_context(|| format!("waiting for `{command}`"))?;
            let out = RunOutput { command, status, stdout: read_back(&mut stdout)?, stderr: read_back(&mut stderr)? };
            bail!("timed out after {timeout:?}, killed: {out}");
        }
        sleep(poll_interval(started.elapsed()));
    };
    Ok(RunOutput { command, status, stdout: read_back(&mut stdout)?, stderr: read_back(&mut stderr)? })
}

fn read_back(file: &mut File) -> Result<String> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).context("rewinding captured output")?;
    file.read_to_end(&mut bytes).context("reading captured output")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Short sleeps first (most commands take milliseconds), longer ones later.
fn poll_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(200) {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(25)
    }
}

/// A command that runs `program` as the run-as user with the harness's clean
/// environment (see the module doc), stdin from /dev/null and `/` as working
/// directory (the checkout may not be traversable by the run-as user).
pub fn command_as_user(program: impl AsRef<OsStr>) -> Command {
    let user = run_as();
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for key in PASSTHROUGH_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        // English messages, whatever the machine's locale: tests match on them.
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::null());
    if user.switch {
        // std also drops root's supplementary groups when it switches uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Quotes `s` for a POSIX shell when it holds anything but plain characters.
/// `%` counts as plain so that `%p` and `%f` stay visible to PostgreSQL.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=%@+,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A string literal for postgresql.conf (or SQL): single quotes, with inner
/// single quotes doubled.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A TOML basic string holding `s`.
pub fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Waiting and ports
// ---------------------------------------------------------------------------

/// Polls `f` until it returns `Ok(true)`, for at most `deadline`; `what`
/// names the awaited condition in the timeout error. An `Err` from `f` ends
/// the wait at once with that error: for conditions that are expected to
/// fail for a while (a server still starting), return `Ok(false)` instead.
pub fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    loop {
        if f().with_context(|| format!("while waiting for {what}"))? {
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        sleep(poll_interval(started.elapsed()).max(Duration::from_millis(10)));
    }
}

/// A TCP port on 127.0.0.1 that is free right now and that this process has
/// not handed out before (so parallel tests in one binary never get the
/// same port). Servers still retry on another port if they lose a race.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for _ in 0..200 {
        let offset = u16::try_from(random_u64() % span).expect("invariant: offset < port range span");
        let port = PORT_RANGE.start + offset;
        if handed_out.contains(&port) {
            continue;
        }
        // Binding proves the port free; the listener is released right away.
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("found no free TCP port in {PORT_RANGE:?} on 127.0.0.1")
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// True when process `pid` holds a TCP socket listening on `port` (IPv4):
/// the socket's inode from `/proc/net/tcp` is among the process's open fds.
pub fn process_listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // "sl local_address rem_address st tx_queue:rx_queue tr:tm retrnsmt uid timeout inode ..."
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let listening = u16::from_str_radix(local_port, 16).ok()? == port && *fields.get(3)? == LISTEN;
            let inode = fields.get(9)?;
            listening.then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().filter_map(|fd| fs::read_link(fd.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        inodes.iter().any(|inode| *inode == target)
    })
}

/// A pseudo-random number, different on every call: enough for ports and
/// names, not for secrets (the harness uses no rand crate).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser, to spread the bits.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A short token unique to this call, for names and test credentials.
pub fn unique_token() -> String {
    format!("{:016x}", random_u64())
}

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/// Directory of PostgreSQL's server binaries: `$PG_BINDIR`, else
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`; each
/// candidate must hold `initdb` (Debian's `pg_config` may point at a
/// client-only directory). Panics with a hint when there is none.
pub fn pg_bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| find_pg_bindir().unwrap_or_else(|e| panic!("{e:#}"))).clone()
}

/// Path of one PostgreSQL binary (`initdb`, `pg_waldump`...).
pub fn pg_bin(name: &str) -> PathBuf {
    pg_bindir().join(name)
}

fn find_pg_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        ensure!(dir.join("initdb").is_file(), "PG_BINDIR={} holds no initdb", dir.display());
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut newest: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Directory names are versions: "15", or "9.6" for old releases.
            let Ok(version) = name.split('.').map(str::parse::<u32>).collect::<Result<Vec<_>, _>>() else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("initdb").is_file() && newest.as_ref().is_none_or(|(v, _)| version > *v) {
                newest = Some((version, bin));
            }
        }
    }
    newest.map(|(_, dir)| dir).context(
        "found no PostgreSQL server binaries (looked at $PG_BINDIR, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin)\nhint: install the server package (Debian 12: \
         `apt-get install postgresql-15`) or set PG_BINDIR",
    )
}

/// The pgwal binary, at a path the run-as user can execute.
///
/// That is cargo's `CARGO_BIN_EXE_pgwal` when reachable. When the tests run
/// as root from a checkout the `postgres` user cannot traverse (a clone under
/// `/root`), it is a copy in `/tmp/pgwal-test-bin/<hash of the path>/`,
/// refreshed once per test process. Panics with a hint if neither works.
pub fn pgwal_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| reachable_pgwal_bin().unwrap_or_else(|e| panic!("{e:#}"))).clone()
}

fn reachable_pgwal_bin() -> Result<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pgwal"));
    if !run_as().switch || user_can_execute(&built)? {
        return Ok(built);
    }
    let base = test_tmp_base().join("pgwal-test-bin");
    ensure_shared_dir(&base)?;
    let dir = base.join(format!("{:016x}", fnv1a(built.as_os_str().as_bytes())));
    ensure_shared_dir(&dir)?;
    let copy = dir.join("pgwal");
    if is_fresh_copy(&built, &copy) && user_can_execute(&copy)? {
        return Ok(copy);
    }
    // Copy then rename, so that a server of another test process that runs
    // the previous copy right now never sees a half-written file.
    let partial = dir.join(format!(".pgwal.{}.{}", std::process::id(), unique_token()));
    fs::copy(&built, &partial).with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", partial.display()))?;
    fs::rename(&partial, &copy).with_context(|| format!("renaming {} to {}", partial.display(), copy.display()))?;
    ensure!(
        user_can_execute(&copy)?,
        "the '{}' user can execute neither {} nor its copy {}\nhint: the pgwal binary must be \
         executable by the user PostgreSQL runs as; make {} traversable by others, or set \
         PGWAL_TEST_TMPDIR to such a directory",
        run_as().name,
        built.display(),
        copy.display(),
        test_tmp_base().display()
    );
    Ok(copy)
}

/// True when `copy` has `original`'s size and is not older: a copy made
/// from this build by an earlier test process.
fn is_fresh_copy(original: &Path, copy: &Path) -> bool {
    match (fs::metadata(original), fs::metadata(copy)) {
        (Ok(o), Ok(c)) => o.len() == c.len() && matches!((o.modified(), c.modified()), (Ok(om), Ok(cm)) if cm >= om),
        _ => false,
    }
}

/// Asks the run-as user's own shell whether it can execute `path`: the
/// kernel's answer, ACLs and all, rather than a reading of mode bits.
fn user_can_execute(path: &Path) -> Result<bool> {
    let mut cmd = command_as_user("/bin/sh");
    cmd.args(["-c", "test -x \"$1\" && test -f \"$1\"", "sh"]).arg(path);
    Ok(run(&mut cmd, None, COMMAND_TIMEOUT)?.success())
}

/// Creates (or checks) a directory that the run-as user may read but only we
/// may write: a binary that PostgreSQL executes must not be replaceable.
fn ensure_shared_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 0755 {}", path.display()))?,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating directory {}", path.display())),
    }
    let meta = fs::symlink_metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    let (uid, _) = current_ids()?;
    ensure!(
        meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0,
        "{} is not a directory owned by uid {uid} and writable only by it; remove it and retry",
        path.display()
    );
    Ok(())
}

/// FNV-1a: a hash that is stable across processes and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Where test directories go: `$PGWAL_TEST_TMPDIR`, else `/tmp` (not
/// `$TMPDIR`, which may be private to root).
pub fn test_tmp_base() -> PathBuf {
    std::env::var_os("PGWAL_TEST_TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

// ---------------------------------------------------------------------------
// Test directories
// ---------------------------------------------------------------------------

/// A fresh directory under `/tmp`, owned by the run-as user (mode 0700) and
/// deleted on drop unless `PGWAL_KEEP_TEST_DIRS=1`.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// A new directory named `pgwal-test-XXXXXX`.
    pub fn new() -> Result<TestDir> {
        Self::with_prefix("pgwal-test-")
    }

    /// A new directory whose name starts with `prefix`.
    pub fn with_prefix(prefix: &str) -> Result<TestDir> {
        let base = test_tmp_base();
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .with_context(|| format!("creating a temp dir in {}", base.display()))?
            .keep();
        create_user_dir(&path)?;
        Ok(TestDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory (nothing is created).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates a subdirectory owned by the run-as user and returns its path.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let path = self.path.join(rel);
        create_user_dir(&path)?;
        Ok(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("PGWAL_KEEP_TEST_DIRS").is_some_and(|v| v == "1") {
            eprintln!("keeping test dir {}", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove test dir {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL cluster in its own home directory: `pgdata/` (the data
/// directory), `sock/` (its Unix socket) and `postgresql.log`, with its own
/// port. Every command runs as the run-as user. Dropping it stops the server
/// (immediate mode) if it runs.
#[derive(Debug)]
pub struct PgCluster {
    home: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    /// PID of the postmaster we started, for `kill9` when its pid file is gone.
    postmaster_pid: Option<u32>,
    /// Extra environment for the server, and so for its archive_command and
    /// restore_command.
    server_env: Vec<(OsString, OsString)>,
}

impl PgCluster {
    /// Runs initdb (data checksums, trust auth, superuser `postgres`, UTF8,
    /// C locale) in `home/pgdata` and configures the cluster for archiving:
    /// `wal_level = replica`, `archive_mode = on` (with an empty
    /// `archive_command` until the test sets one), WAL senders, its own port
    /// and socket. `extra_conf` lines come last and so win. Not started.
    ///
    /// `fsync = off` speeds tests up: crash tests kill processes, which loses
    /// nothing the OS already has, and pgwal's own fsyncs are unaffected.
    pub fn init(home: &Path, extra_conf: &[&str]) -> Result<PgCluster> {
        create_user_dir(home)?;
        let data_dir = home.join(DATA_SUBDIR);
        ensure!(!data_dir.exists(), "{} already exists", data_dir.display());
        let mut initdb = command_as_user(pg_bin("initdb"));
        initdb
            .current_dir(home)
            .args(["--data-checksums", "--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--pgdata"])
            .arg(&data_dir);
        run(&mut initdb, None, COMMAND_TIMEOUT)?.ensure_success()?;
        let pg = Self::existing(home)?;
        pg.set_conf(&[
            "wal_level = replica",
            "archive_mode = on",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "fsync = off",
            "log_line_prefix = '%m [%p] '",
        ])?;
        pg.set_conf(extra_conf)?;
        Ok(pg)
    }

    /// Wraps an existing data directory `home/pgdata` (a base backup, or a
    /// target dir written by `pgwal restore`) as a cluster with a new port
    /// and socket directory in `home`, appended to its postgresql.conf. Not
    /// started. `home` is (re)given to the run-as user, who writes the log there.
    pub fn existing(home: &Path) -> Result<PgCluster> {
        create_user_dir(home)?;
        let data_dir = home.join(DATA_SUBDIR);
        ensure!(
            data_dir.join("PG_VERSION").is_file(),
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            data_dir.display()
        );
        let socket_dir = home.join(SOCKET_SUBDIR);
        create_user_dir(&socket_dir)?;
        let pg = PgCluster {
            home: home.to_path_buf(),
            data_dir,
            socket_dir,
            log_file: home.join(LOG_FILE),
            port: free_port()?,
            postmaster_pid: None,
            server_env: Vec::new(),
        };
        pg.set_conf(&[
            "listen_addresses = '127.0.0.1'",
            &format!("port = {}", pg.port),
            &format!("unix_socket_directories = {}", conf_quote(&pg.socket_dir.to_string_lossy())),
        ])?;
        Ok(pg)
    }

    /// Home directory of the cluster.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TCP port (also names the Unix socket).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// libpq connection string for the superuser over the Unix socket, for
    /// `pgwal --conninfo`.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            conninfo_quote(&self.socket_dir.to_string_lossy()),
            self.port
        )
    }

    /// The server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The whole server log so far (empty before the first start).
    pub fn log_contents(&self) -> String {
        fs::read(&self.log_file).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Appends settings to postgresql.conf (later lines win over earlier
    /// ones). Takes effect at the next start, or `reload()` for reloadable
    /// settings.
    pub fn set_conf(&self, lines: &[impl AsRef<str>]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.data_dir.join("postgresql.conf");
        let mut text = String::from("\n# added by pgwal's test harness\n");
        for line in lines {
            text.push_str(line.as_ref());
            text.push('\n');
        }
        // Appending keeps the file's owner, so root may do it for postgres.
        let mut file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("appending to {}", path.display()))
    }

    /// Sets environment variables for the server from its next start on;
    /// they reach pgwal when the server runs it (e.g. `PGWAL_REPO` or
    /// [`S3Server::env`] instead of a config file).
    pub fn set_server_env<I, K, V>(&mut self, vars: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self.server_env.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        }
    }

    /// Creates an empty file in the data directory owned by the run-as user,
    /// e.g. `recovery.signal` or `standby.signal`.
    pub fn touch_in_data_dir(&self, name: &str) -> Result<()> {
        write_user_file(&self.data_dir.join(name), b"", 0o600)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = command_as_user(pg_bin("pg_ctl"));
        cmd.current_dir(&self.home).arg("--pgdata").arg(&self.data_dir);
        // The postmaster inherits pg_ctl's environment on start.
        cmd.envs(self.server_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`:
    /// for a server in recovery with `hot_standby`, once it is consistent).
    /// When the port turns out to be taken, retries on another one. On
    /// failure the error holds the end of the server log.
    pub fn start(&mut self) -> Result<()> {
        for attempt in 1..=PORT_ATTEMPTS {
            let log_start = fs::metadata(&self.log_file).map_or(0, |m| m.len());
            let mut cmd = self.pg_ctl();
            cmd.args(["start", "--wait", "--timeout=150", "--log"]).arg(&self.log_file);
            let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
            if out.success() {
                self.postmaster_pid = self.read_postmaster_pid();
                return Ok(());
            }
            let log = self.log_contents();
            let new_log = log.get(usize::try_from(log_start).unwrap_or(0)..).unwrap_or("");
            if attempt < PORT_ATTEMPTS && new_log.contains("Address already in use") {
                self.port = free_port()?;
                self.set_conf(&[format!("port = {}", self.port)])?;
                continue;
            }
            bail!("starting PostgreSQL in {} failed: {out}\n--- server log ---\n{new_log}", self.data_dir.display());
        }
        unreachable!("the last attempt returns")
    }

    /// Starts the server without waiting (`pg_ctl -W`), for servers expected
    /// to stop by themselves or fail (e.g. `recovery_target_action =
    /// shutdown`, or recovery that must not complete). Pair with
    /// [`PgCluster::wait_stopped`] or [`wait_until`].
    pub fn start_no_wait(&mut self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["start", "--no-wait", "--log"]).arg(&self.log_file);
        run(&mut cmd, None, COMMAND_TIMEOUT)?.ensure_success()?;
        // The postmaster may not have written its pid file yet; try briefly,
        // it only serves `kill9`.
        let mut pid = None;
        let _ = wait_until(Duration::from_secs(5), "postmaster.pid", || {
            pid = self.read_postmaster_pid();
            Ok(pid.is_some())
        });
        self.postmaster_pid = pid;
        Ok(())
    }

    /// Stops the server in fast mode and waits for it. Does nothing when no
    /// server runs.
    pub fn stop(&mut self) -> Result<()> {
        if !self.is_running() {
            self.postmaster_pid = None;
            return Ok(());
        }
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "--mode=fast", "--wait", "--timeout=150"]);
        let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
        ensure!(out.success(), "stopping PostgreSQL failed: {out}\n--- server log ---\n{}", self.log_tail(30));
        self.postmaster_pid = None;
        Ok(())
    }

    /// Stops the server in immediate mode (no shutdown checkpoint, as
    /// `pg_ctl stop -m immediate`) and waits for it.
    pub fn stop_immediate(&mut self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "--mode=immediate", "--wait", "--timeout=60"]);
        let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
        ensure!(out.success(), "stopping PostgreSQL failed: {out}\n--- server log ---\n{}", self.log_tail(30));
        self.postmaster_pid = None;
        Ok(())
    }

    /// `stop()` then `start()`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Simulates a crash: SIGKILL to the postmaster and all its descendants
    /// (backends, archiver, a running archive_command and pgwal) at once,
    /// then waits until they are gone. `start()` afterwards runs crash
    /// recovery.
    pub fn kill9(&mut self) -> Result<()> {
        let pid =
            self.read_postmaster_pid().or(self.postmaster_pid).context("no postmaster.pid: the server does not run")?;
        ensure!(is_postgres_process(pid), "process {pid} from postmaster.pid is not a running postgres");
        kill_process_tree(pid)?;
        self.postmaster_pid = None;
        // The postmaster's parent is init, which reaps it in its own time.
        // Until then its PID still "exists", and a new postmaster would
        // refuse to start over a lock file naming a live PID.
        let reaped =
            wait_until(Duration::from_secs(10), "init to reap the killed postmaster", || Ok(proc_state(pid).is_none()));
        if reaped.is_err() {
            // After a real crash that PID would be gone; so remove the lock
            // file that names it, as an operator would after checking.
            let lock = self.data_dir.join("postmaster.pid");
            fs::remove_file(&lock).with_context(|| format!("removing {}", lock.display()))?;
        }
        Ok(())
    }

    /// True when `pg_ctl status` finds a running server.
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_ctl();
        cmd.arg("status");
        run(&mut cmd, None, COMMAND_TIMEOUT).is_ok_and(|out| out.success())
    }

    /// Waits until the server has exited by itself (e.g. after recovery with
    /// `recovery_target_action = shutdown`, or a FATAL error in recovery).
    pub fn wait_stopped(&mut self, deadline: Duration) -> Result<()> {
        wait_until(deadline, "the server to exit", || Ok(!self.is_running()))
            .with_context(|| format!("server log tail:\n{}", self.log_tail(30)))?;
        self.postmaster_pid = None;
        Ok(())
    }

    /// Makes the server re-read its configuration (`pg_ctl reload`).
    pub fn reload(&self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.arg("reload");
        run(&mut cmd, None, COMMAND_TIMEOUT)?.ensure_success()?;
        Ok(())
    }

    /// Runs SQL in database `postgres` as the superuser and returns psql's
    /// unaligned, tuples-only output (`|` between columns, one row per line),
    /// trailing newline removed. Statements run in autocommit, one after the
    /// other, stopping at the first error.
    pub fn sql(&self, sql: &str) -> Result<String> {
        self.sql_db("postgres", sql)
    }

    /// As [`PgCluster::sql`], in database `db`.
    pub fn sql_db(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.pg_client("psql");
        cmd.args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet", "--set=ON_ERROR_STOP=1"])
            .args(["--dbname", db, "--file=-"]);
        let out = run(&mut cmd, Some(sql.as_bytes()), COMMAND_TIMEOUT)?;
        ensure!(out.success(), "SQL failed on the server at port {}: {sql}\n{}", self.port, out.stderr.trim_end());
        Ok(out.stdout.trim_end_matches('\n').to_string())
    }

    /// A client program (`psql`, `pgbench`, `pg_basebackup`...) set up to
    /// connect to this server as `postgres` over the Unix socket.
    pub fn pg_client(&self, program: &str) -> Command {
        let mut cmd = command_as_user(pg_bin(program));
        cmd.current_dir(&self.home)
            .arg("--host")
            .arg(&self.socket_dir)
            .arg(format!("--port={}", self.port))
            .arg("--username=postgres");
        cmd
    }

    /// `pgbench -i -s scale` into database `postgres`.
    pub fn pgbench_init(&self, scale: u32) -> Result<()> {
        let mut cmd = self.pg_client("pgbench");
        cmd.args(["--initialize", "--quiet", &format!("--scale={scale}"), "postgres"]);
        run(&mut cmd, None, Duration::from_secs(900))?.ensure_success()?;
        Ok(())
    }

    /// Runs pgbench with `args` (e.g. `["-c", "2", "-T", "5"]`) against
    /// database `postgres` and returns its stdout.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.pg_client("pgbench");
        cmd.args(args).arg("postgres");
        Ok(run(&mut cmd, None, Duration::from_secs(900))?.ensure_success()?.stdout)
    }

    /// Writes a little WAL and switches to a new segment; returns the name of
    /// the segment just completed (the one archiving must deliver next).
    pub fn switch_wal(&self) -> Result<String> {
        // Without WAL since the last switch, pg_switch_wal() would do nothing.
        self.sql("SELECT pg_logical_emit_message(false, 'pgwal-test', 'switch')")?;
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until `pg_stat_archiver.last_archived_wal` reaches `wal_name`
    /// (names compare as text, which orders segments within a timeline).
    /// A timeout error shows the archiver's counters and the log tail.
    pub fn wait_archived(&self, wal_name: &str, deadline: Duration) -> Result<()> {
        let query = format!("SELECT coalesce(last_archived_wal, '') >= {} FROM pg_stat_archiver", conf_quote(wal_name));
        wait_until(deadline, &format!("{wal_name} to be archived"), || Ok(self.sql(&query)? == "t")).with_context(|| {
            let archiver = self
                .sql("SELECT 'archived_count=' || archived_count || ' last_archived_wal=' || coalesce(last_archived_wal, '-') \
                      || ' failed_count=' || failed_count || ' last_failed_wal=' || coalesce(last_failed_wal, '-') \
                      FROM pg_stat_archiver")
                .unwrap_or_else(|e| format!("(pg_stat_archiver unreadable: {e:#})"));
            format!("archiver: {archiver}\nserver log tail:\n{}", self.log_tail(30))
        })
    }

    /// Waits until the server accepts queries and is out of recovery
    /// (`pg_is_in_recovery()` is false). Connection errors while it starts
    /// count as "not yet"; the last one is shown on timeout.
    pub fn wait_recovery_finished(&self, deadline: Duration) -> Result<()> {
        let mut last_error = String::from("none");
        let waited = wait_until(deadline, "recovery to finish", || match self.sql("SELECT pg_is_in_recovery()") {
            Ok(answer) => Ok(answer == "f"),
            Err(e) => {
                last_error = format!("{e:#}");
                Ok(false)
            }
        });
        waited.with_context(|| format!("last error: {last_error}\nserver log tail:\n{}", self.log_tail(30)))
    }

    /// The cluster's system identifier, as pg_controldata prints it.
    pub fn system_identifier(&self) -> Result<String> {
        self.sql("SELECT system_identifier FROM pg_control_system()")
    }

    /// Takes a physical copy with `pg_basebackup -X none -c fast` into
    /// `home/pgdata` and returns it as a cluster with its own port, not
    /// started. With `-X none` the copy holds no WAL (recovery must fetch it
    /// from the archive), and pg_basebackup waits until the server has
    /// archived the WAL the backup needs, so archiving must work.
    pub fn basebackup_to(&self, home: &Path) -> Result<PgCluster> {
        create_user_dir(home)?;
        let mut cmd = self.pg_client("pg_basebackup");
        cmd.args(["--wal-method=none", "--checkpoint=fast", "--no-sync", "--pgdata"]).arg(home.join(DATA_SUBDIR));
        let out = run(&mut cmd, None, COMMAND_TIMEOUT)
            .with_context(|| format!("pg_basebackup waits for archiving; server log tail:\n{}", self.log_tail(30)))?;
        out.ensure_success()?;
        PgCluster::existing(home)
    }

    fn read_postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Only a live postgres behind postmaster.pid is ours to stop: after
        // kill9 the file may name a PID that is gone, or even reused.
        let Some(pid) = self.read_postmaster_pid().filter(|pid| is_postgres_process(*pid)) else {
            return;
        };
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "--mode=immediate", "--wait", "--timeout=60"]);
        match run(&mut cmd, None, COMMAND_TIMEOUT) {
            Ok(out) if out.success() => {}
            outcome => {
                eprintln!("warning: stopping PostgreSQL in {} failed: {outcome:?}", self.data_dir.display());
                if is_postgres_process(pid) {
                    if let Err(e) = kill_process_tree(pid) {
                        eprintln!("warning: could not kill postmaster {pid}: {e:#}");
                    }
                }
            }
        }
    }
}

/// Quotes a value for a libpq connection string when it needs quoting.
fn conninfo_quote(s: &str) -> String {
    if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// State letter and parent PID of a process, from `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn is_postgres_process(pid: u32) -> bool {
    let alive = proc_state(pid).is_some_and(|(state, _)| state != 'Z');
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    alive && (comm.trim() == "postgres" || comm.trim() == "postmaster")
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Sends `signal` (e.g. "STOP") to `pids` with the shell's `kill` (std has
/// no kill by PID and the harness uses no libc crate). Processes that are
/// gone by then make kill fail for them only, which is fine here.
fn signal_pids(signal: &str, pids: &[u32]) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "kill -s \"$0\" \"$@\"", signal]).args(pids.iter().map(u32::to_string));
    run(&mut cmd, None, COMMAND_TIMEOUT)?;
    Ok(())
}

/// SIGKILLs `root` and all its descendants as one crash. Each is stopped
/// (SIGSTOP) as soon as it is found, so that none can fork or be reparented
/// away while the tree is collected; then all get SIGKILL together. Every
/// PostgreSQL child leads its own process group, so a group kill would not do.
fn kill_process_tree(root: u32) -> Result<()> {
    let mut tree = vec![root];
    signal_pids("STOP", &tree)?;
    loop {
        let found: Vec<u32> = all_pids()
            .into_iter()
            .filter(|pid| !tree.contains(pid) && proc_state(*pid).is_some_and(|(_, ppid)| tree.contains(&ppid)))
            .collect();
        if found.is_empty() {
            break;
        }
        signal_pids("STOP", &found)?;
        tree.extend(found);
    }
    signal_pids("KILL", &tree)?;
    // A zombie is dead enough: our init may be slow to reap, or never reap.
    wait_until(Duration::from_secs(30), "killed processes to exit", || {
        Ok(tree.iter().all(|pid| proc_state(*pid).is_none_or(|(state, _)| state == 'Z')))
    })
}

// ---------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------

/// The s3s-fs binary: `$S3S_FS_BIN`, else `s3s-fs` on `PATH`, else
/// `$HOME/.cache/pgwal-tools/s3s-fs/bin/s3s-fs`, which is installed with
/// `cargo install` when missing (once per machine: a file lock keeps
/// concurrent test processes from installing it twice).
pub fn s3s_fs_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_install_s3s_fs().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn find_or_install_s3s_fs() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("S3S_FS_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "S3S_FS_BIN={} does not exist", bin.display());
        return Ok(bin);
    }
    if let Some(bin) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file())
    {
        return Ok(bin);
    }
    let home = std::env::var_os("HOME").context("HOME is not set, so there is no place to install s3s-fs")?;
    let tools = PathBuf::from(home).join(".cache/pgwal-tools");
    let root = tools.join("s3s-fs");
    let bin = root.join("bin/s3s-fs");
    if bin.is_file() {
        return Ok(bin);
    }
    fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let lock_path = tools.join("s3s-fs.install.lock");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    // Another process may have installed it while we waited for the lock.
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("installing s3s-fs {S3S_FS_VERSION} into {} (first use, takes minutes)", root.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.args(["install", "s3s-fs", "--version", S3S_FS_VERSION, "--locked", "--features", "binary", "--root"])
        .arg(&root);
    run(&mut cmd, None, Duration::from_secs(40 * 60))?.ensure_success()?;
    ensure!(bin.is_file(), "cargo install succeeded but {} is missing", bin.display());
    Ok(bin)
}

/// A real S3 server: s3s-fs on 127.0.0.1 with a fresh root directory (a
/// bucket is a subdirectory of it) and per-server credentials. It runs as the
/// test user (not the run-as user) and is killed on drop.
pub struct S3Server {
    bin: PathBuf,
    root: PathBuf,
    log_file: PathBuf,
    port: u16,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
    // Removed only after `Drop::drop` has killed the child.
    dir: TestDir,
}

impl S3Server {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Result<S3Server> {
        let bin = s3s_fs_bin()?;
        let dir = TestDir::with_prefix("pgwal-s3-")?;
        let root = dir.subdir("root")?;
        let token = unique_token();
        let mut server = S3Server {
            bin,
            root,
            log_file: dir.join("s3s-fs.log"),
            port: 0,
            access_key: format!("PGWALTEST{}", token.to_uppercase()),
            // Distinctive, so tests can grep logs and `ps` output for leaks.
            secret_key: format!("pgwal-test-secret-{token}"),
            child: None,
            dir,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if attempt < PORT_ATTEMPTS => eprintln!("s3s-fs failed to start, trying another port: {e:#}"),
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("opening {}", self.log_file.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key, "--secret-key", &self.secret_key])
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating a file handle")?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        let child = self.child.insert(child);
        let port = self.port;
        let pid = child.id();
        let ready = wait_until(Duration::from_secs(30), &format!("s3s-fs to listen on port {port}"), || {
            if let Some(status) = child.try_wait().context("checking on s3s-fs")? {
                bail!("s3s-fs exited with {status}");
            }
            // Not just "the port is open": another process (say a second
            // test run) may have taken the port while this server was stopped.
            Ok(process_listens_on(pid, port))
        });
        if let Err(e) = ready {
            let _ = self.stop();
            let log = fs::read_to_string(&self.log_file).unwrap_or_default();
            return Err(e.context(format!("s3s-fs log:\n{}", log.trim_end())));
        }
        Ok(())
    }

    /// Kills the server (by the PID of the child we spawned) and reaps it;
    /// the port closes. Objects stay in the root directory.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Err means it had exited already; wait() below reaps it either way.
            let _ = child.kill();
            child.wait().context("waiting for s3s-fs to exit")?;
        }
        Ok(())
    }

    /// Starts the server again after `stop()`, on the same port with the
    /// same root and credentials.
    pub fn start_again(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "s3s-fs is still running");
        self.spawn()
    }

    /// True while the server process lives.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key id.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret access key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The server's root directory: `root/BUCKET/KEY` holds an object, so a
    /// test can inspect or corrupt objects directly.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates bucket `name` (a subdirectory of the root) and returns its path.
    pub fn create_bucket(&self, name: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        fs::create_dir(&path).with_context(|| format!("creating bucket directory {}", path.display()))?;
        Ok(path)
    }

    /// The standard AWS environment that points a client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A pgwal config file for repository `repo_url` (e.g.
    /// `s3://bucket/prefix`) on this server. It holds the secret: write it
    /// with [`write_private_file`].
    pub fn config_toml(&self, repo_url: &str) -> String {
        format!(
            "repo = {}\n\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
             secret_access_key = {}\nallow_http = true\n",
            toml_quote(repo_url),
            toml_quote(&self.endpoint()),
            toml_quote(&self.access_key),
            toml_quote(&self.secret_key),
        )
    }

    /// Everything s3s-fs has logged so far.
    pub fn log_contents(&self) -> String {
        fs::read(&self.log_file).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping s3s-fs: {e:#}");
        }
    }
}

// ---------------------------------------------------------------------------
// pgwal
// ---------------------------------------------------------------------------

/// One invocation of the pgwal binary as the run-as user, built up like a
/// `Command`: `Pgwal::new(["list", "--json"]).envs(s3.env()).run()?`.
#[derive(Debug, Clone)]
pub struct Pgwal {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Pgwal {
    /// pgwal with these arguments, the harness's clean environment, `/` as
    /// working directory and [`COMMAND_TIMEOUT`].
    pub fn new<I, S>(args: I) -> Pgwal
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Pgwal {
            args: args.into_iter().map(|a| a.as_ref().to_os_string()).collect(),
            envs: Vec::new(),
            cwd: PathBuf::from("/"),
            stdin: None,
            timeout: COMMAND_TIMEOUT,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Pgwal {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Pgwal
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Pgwal {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Sets several environment variables (e.g. [`S3Server::env`]).
    pub fn envs<I, K, V>(mut self, vars: I) -> Pgwal
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    /// Sets the working directory (must be reachable by the run-as user).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Pgwal {
        self.cwd = dir.as_ref().to_path_buf();
        self
    }

    /// Feeds `input` on stdin (default: /dev/null).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Pgwal {
        self.stdin = Some(input.into());
        self
    }

    /// Kills pgwal if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Pgwal {
        self.timeout = timeout;
        self
    }

    /// The configured command, for tests that spawn pgwal themselves (to
    /// kill it mid-run, say). Kill such a child by its own PID.
    pub fn command(&self) -> Command {
        let mut cmd = command_as_user(pgwal_bin());
        cmd.args(&self.args).current_dir(&self.cwd);
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs pgwal to completion. Any exit status is `Ok`: check
    /// [`RunOutput::code`]. `Err` means it could not run or timed out.
    pub fn run(&self) -> Result<RunOutput> {
        run(&mut self.command(), self.stdin.as_deref(), self.timeout)
    }
}

/// Runs pgwal with `args` and nothing else set: [`Pgwal::new`]`(args).run()`.
pub fn pgwal<I, S>(args: I) -> Result<RunOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Pgwal::new(args).run()
}

/// A shell command line running pgwal with `args`, for `archive_command`
/// and `restore_command` (PostgreSQL runs them with `sh -c`).
pub fn pgwal_shell_command(args: &[&str]) -> String {
    std::iter::once(pgwal_bin().to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The postgresql.conf line `archive_command = 'pgwal --config FILE archive %p'`.
pub fn archive_command_setting(config_file: &Path) -> String {
    let command = pgwal_shell_command(&["--config", &config_file.to_string_lossy(), "archive", "%p"]);
    format!("archive_command = {}", conf_quote(&command))
}

/// The postgresql.conf line `restore_command = 'pgwal --config FILE fetch %f %p'`.
pub fn restore_command_setting(config_file: &Path) -> String {
    let command = pgwal_shell_command(&["--config", &config_file.to_string_lossy(), "fetch", "%f", "%p"]);
    format!("restore_command = {}", conf_quote(&command))
}
