//! The throwaway server: its whole configuration (nothing read from the
//! live cluster's postgresql.conf; everything that could reach outside the
//! scratch directory also given on the command line, which beats the
//! restored postgresql.auto.conf), its start as a child of pgwal that the
//! kernel stops if pgwal dies, and its stop by PID.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::binaries::Binaries;
use super::scratch::Scratch;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::recovery::conf_quote;

/// The port number in the socket's name (`.s.PGSQL.5432`); no TCP port is
/// opened, and the socket directory is the drill's own, so it clashes with nothing.
pub const PORT: u16 = 5432;

/// The settings of the throwaway server.
pub fn settings(s: &Scratch) -> Vec<(&'static str, String)> {
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    vec![
        // Reachable only through the scratch socket.
        ("listen_addresses", String::new()),
        ("port", PORT.to_string()),
        ("unix_socket_directories", path(s.sock())),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", path(s.file("pg_hba.conf"))),
        ("ident_file", path(s.file("pg_ident.conf"))),
        // Never into the repository, never over the live cluster's PID file.
        ("archive_mode", "off".into()),
        ("external_pid_file", String::new()),
        // No queries during recovery: the parameter checks of hot standby
        // (max_connections at least the primary's...) do not apply.
        ("hot_standby", "off".into()),
        // A log in the scratch directory, in English, for the checks to read.
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("lc_messages", "C".into()),
        ("log_line_prefix", "%m [%p] ".into()),
        ("log_timezone", "UTC".into()),
        ("cluster_name", "pgwal-drill".into()),
        // Modest resources whatever the primary had; nothing preloaded that
        // the drill host may lack; no TLS files of the primary.
        ("shared_buffers", "128MB".into()),
        ("huge_pages", "try".into()),
        ("max_connections", "20".into()),
        ("shared_preload_libraries", String::new()),
        ("ssl", "off".into()),
        // A throwaway copy: a crash of the host fails the drill anyway.
        ("fsync", "off".into()),
        ("synchronous_commit", "off".into()),
    ]
}

/// Writes the configuration files into the scratch directory.
pub fn write_config(s: &Scratch) -> Result<()> {
    let mut conf = String::from(
        "# written by pgwal drill: the whole configuration of a throwaway server\n\
         # (the same settings are given on its command line)\n",
    );
    for (k, v) in settings(s) {
        conf.push_str(&format!("{k} = {}\n", conf_quote(&v)));
    }
    let files = [
        ("postgresql.conf", conf),
        ("pg_hba.conf", "# only the drill's own socket, which only its user can reach\nlocal all all trust\n".into()),
        ("pg_ident.conf", String::new()),
    ];
    for (name, text) in files {
        let path = s.file(name);
        crate::storage::pgdata::write_file(&path, text.as_bytes(), 0o600).map_err(Error::io("cannot write", &path))?;
    }
    Ok(())
}

/// Takes libpq's variables (PGHOST, PGPORT, PGUSER, PGSERVICE...) out of a
/// child's environment: they name the live cluster. pgwal's own stay.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("PG") && !k.starts_with("PGWAL_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// A running throwaway server.
#[derive(Debug)]
pub struct Server {
    child: Child,
    exited: Option<ExitStatus>,
}

/// How waiting for the end of recovery ended.
#[derive(Debug)]
pub enum Recovery {
    /// Recovery ended and the server accepts connections.
    Ended,
    /// The server exited during recovery.
    Exited(ExitStatus),
    /// The deadline passed.
    TimedOut,
}

impl Server {
    /// Starts `postgres` on the scratch copy. It gets its own process group
    /// (a terminal's Ctrl-C reaches pgwal, which stops it in order) and
    /// SIGQUIT, an immediate shutdown, should pgwal die.
    pub fn start(bin: &Binaries, s: &Scratch) -> Result<Server> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.log())
            .map_err(Error::io("cannot open the server log", s.log()))?;
        let log2 = log.try_clone().map_err(Error::io("cannot open the server log", s.log()))?;
        let mut cmd = Command::new(bin.program("postgres"));
        cmd.arg("-D").arg(s.data()).arg("-c").arg(format!("config_file={}", s.file("postgresql.conf").display()));
        for (k, v) in settings(s) {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        clean_env(&mut cmd);
        cmd.env("PGDATA", s.data());
        cmd.current_dir(s.data()).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // pgwal died before the prctl took effect: do not start.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("pgwal exited"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(Error::io("cannot start", bin.program("postgres")))?;
        Ok(Server { child, exited: None })
    }

    /// The postmaster's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits until recovery has ended (`ready` says so: it connects and
    /// asks), the server exits, a signal arrives or `deadline` passes.
    pub fn wait_recovery(
        &mut self,
        s: &Scratch,
        deadline: Instant,
        mut ready: impl FnMut() -> bool,
    ) -> Result<Recovery> {
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(signal) = interrupt::pending() {
                return Err(interrupted(signal));
            }
            if let Some(status) = self.exited() {
                return Ok(Recovery::Exited(status));
            }
            // Asking before the log says "ready" only fills the log with
            // "the database system is starting up".
            if read_log(s).contains("database system is ready to accept connections") && ready() {
                return Ok(Recovery::Ended);
            }
            if Instant::now() >= deadline {
                return Ok(Recovery::TimedOut);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Sends `signal` to the postmaster (by the PID of the child pgwal started).
    fn signal(&self, signal: libc::c_int) {
        if self.exited.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the PID is our child's, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Waits for the exit until `deadline`.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A fast shutdown (SIGINT), waited for until `deadline`; `None` when it
    /// did not end in time (the server still runs: see [`Server::kill`]).
    pub fn stop_fast(&mut self, deadline: Instant) -> Option<ExitStatus> {
        self.signal(libc::SIGINT);
        self.wait_until(deadline)
    }

    /// Stops the server whatever it is doing: a fast shutdown for a few
    /// seconds, then immediate, then SIGKILL.
    pub fn kill(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGINT);
        if self.wait_until(Instant::now() + Duration::from_secs(10)).is_some() {
            return;
        }
        self.signal(libc::SIGQUIT);
        if self.wait_until(Instant::now() + Duration::from_secs(10)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The error for a drill stopped by `signal` (after cleaning up).
pub fn interrupted(signal: &'static str) -> Error {
    Error::Interrupted {
        signal,
        what: "the throwaway server was stopped and the scratch directory removed; no drill was recorded".into(),
    }
}

/// The server log so far ("" when unreadable).
pub fn read_log(s: &Scratch) -> String {
    std::fs::read(s.log()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last FATAL or PANIC line of the log, without its prefix.
pub fn last_fatal(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| ["FATAL:", "PANIC:"].iter().find_map(|k| l.find(k).map(|at| l[at..].trim().to_string())))
}

/// What an external program printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// Exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// stdout then stderr.
    pub output: String,
}

/// Runs a client program (libpq variables removed, output into
/// `out_file`), killing it by its PID at `deadline` or on a signal.
pub fn run_tool(mut cmd: Command, out_file: &Path, deadline: Instant) -> Result<Ran> {
    clean_env(&mut cmd);
    let out = std::fs::File::create(out_file).map_err(Error::io("cannot create", out_file))?;
    let err = out.try_clone().map_err(Error::io("cannot create", out_file))?;
    let program = std::path::PathBuf::from(cmd.get_program());
    let mut child =
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(Error::io("cannot run", &program))?;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(Error::io("cannot wait for", &program))? {
            break Some(st);
        }
        if let Some(signal) = interrupt::pending() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(interrupted(signal));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read(out_file).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Ran { status, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reaches_outside_the_scratch_directory() {
        let s = Scratch { root: "/var/tmp/pgwal-drill/x".into() };
        let set = settings(&s);
        let get = |k: &str| set.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("external_pid_file"), Some(""));
        assert_eq!(get("unix_socket_directories"), Some("/var/tmp/pgwal-drill/x/sock"));
        assert_eq!(get("hba_file"), Some("/var/tmp/pgwal-drill/x/pg_hba.conf"));
    }

    #[test]
    fn fatal_lines() {
        let log = "2026-12-02 [7] LOG:  starting\n2026-12-02 [8] FATAL:  could not restore file \"x\"\n2026-12-02 [7] LOG:  shut down\n";
        assert_eq!(last_fatal(log).as_deref(), Some("FATAL:  could not restore file \"x\""));
        assert_eq!(last_fatal("LOG: fine"), None);
    }
}
