//! `pgwal daemon`: a long-running service for one repository. It runs the
//! `[schedule]` jobs one at a time from a queue, each as a child process
//! of this executable running the command of the same name (see [`jobs`]),
//! logs one line when a job starts and one when it ends, and with
//! `[metrics] listen` serves `GET /metrics` and `GET /health` (see
//! [`metrics`], [`health`], [`http`]).
//!
//! Signals: SIGTERM or SIGINT forwards SIGTERM to the running job, waits
//! for it (at most [`JOB_STOP_GRACE`], then SIGKILL) and exits 0, well
//! within systemd's default 90 s and the 30 s the daemon promises; the
//! interrupted job runs again at its next time. SIGHUP reads the config
//! file again: schedule, health ages and refresh period change at once (a
//! job that runs goes on); a changed `metrics.listen` needs a restart; a
//! config that does not load is logged and the old one kept.

mod health;
mod http;
pub mod jobs;
pub mod metrics;
mod schedule;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::daemon::DaemonOptions;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::storage::{self, Access, RetryPolicy};
use jobs::{Ended, Job, Launcher, Queue, Running};
use metrics::{JobOutcome, Snapshot, State};

/// How long a job may take to stop after SIGTERM before it is killed. A
/// backup stops in a second or two (it removes its packs and releases the
/// lock); the rest of the 30 s is the margin.
pub const JOB_STOP_GRACE: Duration = Duration::from_secs(25);

/// Reads the configuration again, for SIGHUP (the caller owns config loading).
pub type Reload<'a> = &'a dyn Fn() -> Result<(Config, DaemonOptions)>;

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(
    rt: &tokio::runtime::Runtime,
    cfg: Config,
    opts: DaemonOptions,
    launcher: Launcher,
    reload: Reload<'_>,
) -> Result<()> {
    cfg.require_repo()?;
    rt.block_on(serve(cfg, opts, launcher, reload))
}

fn state_of(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The data directory for the archive backlog, if the configured one is one.
fn data_dir_of(cfg: &Config) -> Option<PathBuf> {
    cfg.pgdata.clone().filter(|d| d.join("PG_VERSION").is_file())
}

/// Re-reads the repository in the background, one read at a time. A read
/// asked for while one runs (a job ended during a periodic read, which may
/// have missed its result) makes that read run once more when it is done.
struct Refresher {
    busy: Arc<AtomicBool>,
    again: Arc<AtomicBool>,
}

impl Refresher {
    fn new() -> Refresher {
        Refresher { busy: Arc::new(AtomicBool::new(false)), again: Arc::new(AtomicBool::new(false)) }
    }

    fn start(&self, cfg: &Config, state: &Arc<Mutex<State>>) {
        self.again.store(true, Ordering::SeqCst);
        if self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let (busy, again, state) = (self.busy.clone(), self.again.clone(), state.clone());
        let (url, store_opts, deadline) = (cfg.repo.clone(), cfg.store.clone(), cfg.fetch.retry_deadline);
        let key_file = cfg.encryption_key_file.clone();
        tokio::spawn(async move {
            loop {
                refresh_while_asked(&again, &url, &store_opts, key_file.as_deref(), deadline, &state).await;
                busy.store(false, Ordering::SeqCst);
                // Asked again between the last read and `busy` going down: read once more.
                if !again.load(Ordering::SeqCst) || busy.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }
}

/// Reads the repository into `state` until no read was asked for meanwhile.
async fn refresh_while_asked(
    again: &AtomicBool,
    url: &Option<crate::storage::RepoUrl>,
    store_opts: &crate::storage::StoreOptions,
    key_file: Option<&std::path::Path>,
    deadline: Duration,
    state: &Mutex<State>,
) {
    while again.swap(false, Ordering::SeqCst) {
        let read = async {
            let url = url.clone().ok_or_else(|| Error::config("no repository configured", "set repo"))?;
            let store = storage::open_as_caller(&url, store_opts, Access::MustExist, deadline)?;
            // The key file is read afresh each time: a rekey may have replaced it.
            let key = key_file.map(crate::config::encryption::load_key).transpose()?;
            let repo = Repository::new(store, url, RetryPolicy::with_deadline(deadline).quiet()).with_key(key);
            Snapshot::read(&repo).await
        };
        let result = read.await;
        let mut s = state_of(state);
        match result {
            Ok(snapshot) => {
                s.snapshot = Some((snapshot, chrono::Utc::now()));
                s.read_error = None;
            }
            Err(e) => {
                let line = e.one_line();
                if s.read_error.as_deref() != Some(line.as_str()) {
                    crate::log_warn!("cannot read the repository for the metrics: {line}");
                }
                s.read_error = Some(line);
            }
        }
    }
}

/// Aborts the HTTP server task when the daemon returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn wait(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Logs a job's end and records it.
fn job_ended(state: &Mutex<State>, job: Job, ended: Ended, took: Duration) {
    let verb = if ended.success() { "ended" } else { "failed" };
    let line = format!("job {} {verb}: {} after {:.1}s", job.name(), ended.describe(), took.as_secs_f64());
    if ended.success() {
        crate::log_info!("{line}");
    } else {
        crate::log_warn!("{line}");
    }
    let mut s = state_of(state);
    s.jobs.insert(job, JobOutcome { ended, at: chrono::Utc::now(), duration: took });
    s.running = None;
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn serve(cfg: Config, opts: DaemonOptions, launcher: Launcher, reload: Reload<'_>) -> Result<()> {
    let sig = |kind: SignalKind| signal(kind).map_err(Error::io("cannot install a signal handler", "-"));
    let (mut term, mut int, mut hup) =
        (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?, sig(SignalKind::hangup())?);
    let mut cfg = cfg;
    let state = Arc::new(Mutex::new(State { health: opts.health, pgdata: data_dir_of(&cfg), ..Default::default() }));
    let listen = opts.metrics.as_ref().map(|m| m.listen);
    let _http = match listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::config(
                    format!("cannot listen on metrics.listen {addr}: {e}"),
                    "choose a free port (is another pgwal daemon running?)",
                )
            })?;
            crate::log_info!("serving /metrics and /health on http://{addr}");
            Some(AbortOnDrop(tokio::spawn(http::serve(listener, state.clone()))))
        }
        None => None,
    };
    let refresh_period =
        |o: &DaemonOptions| o.metrics.as_ref().map_or(crate::config::daemon::DEFAULT_METRICS_REFRESH, |m| m.refresh);
    let mut refresh_every = interval(refresh_period(&opts));
    let refresher = Refresher::new();
    refresher.start(&cfg, &state);

    let mut timers = schedule::Timers::new(&opts.schedule, chrono::Local::now());
    let mut queue = Queue::default();
    for job in &opts.run_at_start {
        queue.push(*job, None);
    }
    let mut running: Option<Running> = None;
    crate::log_info!("daemon started (pid {}): {}", std::process::id(), timers.describe());
    loop {
        while running.is_none() {
            let Some(job) = queue.pop() else { break };
            match launcher.start(job) {
                Ok(r) => {
                    crate::log_info!("job {} started: pgwal {} (pid {})", job.name(), job.args().join(" "), r.pid);
                    state_of(&state).running = Some((job, r.began));
                    running = Some(r);
                }
                Err(e) => {
                    crate::log_warn!("job {} could not start: {} ({e})", job.name(), launcher.exe.display());
                    job_ended(&state, job, Ended::Lost, Duration::ZERO);
                }
            }
        }
        state_of(&state).queued = queue.len();
        // At least once a minute: the clock may have jumped.
        let nap = timers
            .next_wake()
            .map_or(Duration::from_secs(60), |w| (w - chrono::Local::now()).to_std().unwrap_or(Duration::ZERO))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {
                let now_running = running.as_ref().map(|r| r.job);
                for job in timers.due(chrono::Local::now()) {
                    if !queue.push(job, now_running) {
                        crate::log_notice!("job {} is due but has not finished its last run yet: not queued twice", job.name());
                    }
                }
            }
            status = wait(&mut running) => {
                if let Some(r) = running.take() {
                    let ended = status.map_or(Ended::Lost, Ended::from_status);
                    job_ended(&state, r.job, ended, r.began.elapsed());
                }
                refresher.start(&cfg, &state);
            }
            _ = refresh_every.tick() => refresher.start(&cfg, &state),
            _ = hup.recv() => match reload() {
                Ok((c, o)) => {
                    if o.metrics.as_ref().map(|m| m.listen) != listen {
                        crate::log_warn!("metrics.listen changed: it takes effect when the daemon starts again");
                    }
                    timers = schedule::Timers::new(&o.schedule, chrono::Local::now());
                    refresh_every = interval(refresh_period(&o));
                    {
                        let mut s = state_of(&state);
                        s.health = o.health;
                        s.pgdata = data_dir_of(&c);
                    }
                    cfg = c;
                    crate::log_info!("reloaded the configuration: {}", timers.describe());
                    refresher.start(&cfg, &state);
                }
                Err(e) => crate::log_warn!("cannot reload the configuration, keeping the one in use: {}", e.one_line()),
            },
            _ = term.recv() => return stop(running, &state, "SIGTERM").await,
            _ = int.recv() => return stop(running, &state, "SIGINT").await,
        }
    }
}

/// Stops the running job (SIGTERM, then SIGKILL after [`JOB_STOP_GRACE`]) and ends the daemon.
async fn stop(running: Option<Running>, state: &Mutex<State>, signal: &str) -> Result<()> {
    if let Some(mut r) = running {
        crate::log_info!("{signal}: stopping job {} (pid {}) with SIGTERM", r.job.name(), r.pid);
        r.signal(libc::SIGTERM);
        match tokio::time::timeout(JOB_STOP_GRACE, r.child.wait()).await {
            Ok(status) => job_ended(state, r.job, status.map_or(Ended::Lost, Ended::from_status), r.began.elapsed()),
            Err(_) => {
                crate::log_warn!(
                    "job {} (pid {}) did not stop within {}s of SIGTERM: killing it and its process group",
                    r.job.name(),
                    r.pid,
                    JOB_STOP_GRACE.as_secs()
                );
                r.signal_group(libc::SIGKILL);
                let status = tokio::time::timeout(Duration::from_secs(3), r.child.wait()).await;
                let ended = match status {
                    Ok(Ok(s)) => Ended::from_status(s),
                    _ => Ended::Lost,
                };
                job_ended(state, r.job, ended, r.began.elapsed());
            }
        }
    }
    crate::log_info!("daemon stopped ({signal})");
    Ok(())
}
