//! The daemon's jobs: a queue that holds each job at most once, and the
//! child process that runs one. A job is this very executable run with the
//! job's command line (`pgwal backup --type full`, `pgwal expire`, ...), so
//! it takes the same locks and follows the same output rules as that
//! command run by hand or by cron, and its crash is only its own.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Instant;

pub use crate::config::daemon::Job;

/// Jobs waiting to run, oldest first, each at most once: a job that comes
/// due again while it waits or runs is not queued twice.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: VecDeque<Job>,
}

impl Queue {
    /// Queues `job` unless it is already waiting or is `running`; says whether it was queued.
    pub fn push(&mut self, job: Job, running: Option<Job>) -> bool {
        if running == Some(job) || self.waiting.contains(&job) {
            return false;
        }
        self.waiting.push_back(job);
        true
    }

    /// The next job to start.
    pub fn pop(&mut self) -> Option<Job> {
        self.waiting.pop_front()
    }

    /// How many jobs wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// How jobs are started: this executable, with the daemon's configuration
/// passed on in the environment (not on the command line, where a
/// connection string's password would show in `ps`).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The pgwal executable (`std::env::current_exe`).
    pub exe: PathBuf,
    /// `PGWAL_CONFIG`, `PGWAL_REPO`, `PGDATA`, `PGWAL_CONNINFO`, `PGWAL_LOG_LEVEL` as the daemon got them.
    pub env: Vec<(OsString, OsString)>,
}

/// A job's child process.
#[derive(Debug)]
pub struct Running {
    /// Which job.
    pub job: Job,
    /// The child.
    pub child: tokio::process::Child,
    /// Its process ID (the child is not reaped before `wait` ends, so the ID stays its own).
    pub pid: u32,
    /// When it started.
    pub began: Instant,
}

impl Launcher {
    /// Starts `job`. Its stdout and stderr are the daemon's (the journal);
    /// stdin is empty. It gets its own process group, so that a Ctrl-C on
    /// the daemon's terminal reaches the daemon alone, which forwards
    /// SIGTERM; and it is sent SIGTERM should the daemon die without doing so.
    pub fn start(&self, job: Job) -> std::io::Result<Running> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(job.args()).envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the new
        // process; it is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("the job's process has no ID"))?;
        Ok(Running { job, child, pid, began: Instant::now() })
    }
}

impl Running {
    /// Sends `signal` to the child, which has not been reaped yet.
    pub fn signal(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else { return };
        // SAFETY: kill only sends a signal; the PID is our unreaped child's.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Sends `signal` to the child's process group (its own, see
    /// [`Launcher::start`]): the child and any helper it started.
    pub fn signal_group(&self, signal: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.pid) else { return };
        // SAFETY: as above; the group ID is our unreaped child's PID.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// How a job ended, for the log line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
    /// It could not be started or waited for.
    Lost,
}

impl Ended {
    /// From the child's exit status.
    pub fn from_status(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Killed(signal),
            (None, None) => Ended::Lost,
        }
    }

    /// Whether the job succeeded.
    pub fn success(self) -> bool {
        self == Ended::Exited(0)
    }

    /// The exit status as the metrics show it: the code, 128 + signal for
    /// a killed job (as a shell says), -1 for one that never ran.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Killed(s) => 128 + s,
            Ended::Lost => -1,
        }
    }

    /// "exit status 0", "killed by signal 9", "not started".
    pub fn describe(self) -> String {
        match self {
            Ended::Exited(c) => format!("exit status {c}"),
            Ended::Killed(s) => format!("killed by signal {s}"),
            Ended::Lost => "lost".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_queued_once() {
        let mut q = Queue::default();
        assert!(q.push(Job::Full, None));
        assert!(!q.push(Job::Full, None), "already waiting");
        assert!(!q.push(Job::Verify, Some(Job::Verify)), "already running");
        assert!(q.push(Job::Verify, Some(Job::Full)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(Job::Full));
        assert!(q.push(Job::Full, Some(Job::Verify)), "queued again once it left the queue");
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(Job::Verify), Some(Job::Full), None));
        assert!(q.is_empty());
    }

    #[test]
    fn endings() {
        assert!(Ended::Exited(0).success() && !Ended::Exited(3).success());
        assert_eq!(Ended::Killed(15).code(), 143);
        assert_eq!(Ended::Killed(9).describe(), "killed by signal 9");
        assert_eq!(Ended::from_status(ExitStatus::from_raw(2 << 8)), Ended::Exited(2));
        assert_eq!(Ended::from_status(ExitStatus::from_raw(9)), Ended::Killed(9));
    }
}
