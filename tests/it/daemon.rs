//! `pgwal daemon` on real PostgreSQL 15 and a file:// repository: a backup
//! scheduled `* * * * *` happens, is listed and restores with the primary's
//! rows; `/metrics` shows its stop time and passes `promtool check metrics`;
//! `/health` turns from 503 (with a reason) to 200; SIGTERM during a backup
//! job stops the daemon within 30 s, leaves nothing of the backup listed, no
//! lock and no child process, and the next backup succeeds; a scheduled
//! drill passes, shows in `list --json`, `/metrics` and `/health` (503
//! without a drill, 200 after); SIGTERM during a drill job (recovery
//! stalled on S3 WAL downloads) stops the daemon within 30 s with no
//! throwaway server, no scratch directory and no drill record left; bad
//! configuration (a bad cron expression, a non-loopback listen address) is
//! refused at start with exit 2 and one error line.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A config file: the repository, then `sections` as given.
fn write_config(dir: &TestDir, sections: &str) -> Result<PathBuf> {
    let config = dir.join("pgwal.toml");
    let repo = format!("file://{}", dir.join("repo").display());
    write_private_file(&config, &format!("repo = {}\n{sections}", toml_quote(&repo)))?;
    Ok(config)
}

/// A running daemon, its stderr collected line by line; killed (by its
/// own PID) if the test ends without stopping it.
struct Daemon {
    child: Option<Child>,
    pid: u32,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path, pg: &PgCluster, env: &[(&str, &str)]) -> Result<Daemon> {
        let mut cmd = Pgwal::new(["--config", &s(config), "--conninfo", &pg.conninfo(), "--pgdata"])
            .arg(pg.data_dir())
            .arg("daemon")
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .command();
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().context("stderr")?;
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(std::result::Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
        Ok(Daemon { child: Some(child), pid, stderr })
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }

    /// The first stderr line containing `needle`, waiting for it.
    fn wait_line(&self, needle: &str, deadline: Duration) -> Result<String> {
        let mut found = None;
        wait_until(deadline, &format!("daemon line {needle:?}"), || {
            found = self.stderr.lock().expect("lines").iter().find(|l| l.contains(needle)).cloned();
            Ok(found.is_some())
        })
        .with_context(|| self.log())?;
        Ok(found.unwrap_or_default())
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill only sends a signal, to the daemon this test started.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }

    /// Sends SIGTERM and waits for the exit; returns its status and how long it took.
    fn terminate(&mut self, deadline: Duration) -> Result<(std::process::ExitStatus, Duration)> {
        let began = Instant::now();
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().context("already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok((status, began.elapsed()));
            }
            if began.elapsed() > deadline {
                bail!("the daemon did not exit within {deadline:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:port: status and body; `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Result<Option<(u16, String)>> {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return Ok(None) };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no HTTP answer: {text:?}"))?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    Ok(Some((status, body.to_string())))
}

fn list_json(config: &Path) -> Result<serde_json::Value> {
    let out = Pgwal::new(["--config", &s(config), "list", "--json"]).run()?.ensure_success()?;
    Ok(serde_json::from_str(&out.stdout)?)
}

fn backup_ids(listing: &serde_json::Value) -> Vec<String> {
    listing["backups"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(|b| b["id"].as_str().map(String::from)).collect())
}

/// The value of the sample `name` (with its labels, e.g. `x{type="full"}`) on a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `promtool check metrics` (Debian's prometheus package) judges the page.
fn promtool_accepts(page: &str) -> Result<()> {
    let mut cmd = std::process::Command::new("promtool");
    cmd.args(["check", "metrics"]);
    let out = run(&mut cmd, Some(page.as_bytes()), COMMAND_TIMEOUT)
        .context("promtool (apt-get install prometheus) must be installed")?;
    ensure!(out.success(), "promtool rejects the metrics page: {out}\n{page}");
    Ok(())
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn a_scheduled_backup_shows_in_list_metrics_and_health() -> Result<()> {
    let dir = TestDir::new()?;
    let port = free_port()?;
    let config = write_config(
        &dir,
        &format!(
            "[schedule]\nfull = \"* * * * *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"2s\"\n\
             [health]\nmax_backup_age = \"1h\"\nmax_archive_age = \"1h\"\n"
        ),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;
    let expected = pg.sql("SELECT count(*) || ' ' || sum(n) FROM t")?;
    let first = pg.switch_wal()?;
    pg.wait_archived(&first, WAIT)?;

    let mut daemon = Daemon::start(&config, &pg, &[])?;
    // Before any backup: 503, and the reason names what is missing.
    let mut before = None;
    wait_until(WAIT, "/health to answer", || {
        before = http_get(port, "/health")?;
        Ok(before.as_ref().is_some_and(|(_, body)| !body.contains("not been read yet")))
    })
    .with_context(|| daemon.log())?;
    let (status, reason) = before.unwrap_or_default();
    ensure!(status == 503 && reason.trim() == "no complete backup in the repository", "{status} {reason:?}");
    ensure!(reason.lines().count() == 1, "one line: {reason:?}");

    // The cron minute comes: the backup job runs and ends.
    daemon.wait_line("job full started: pgwal backup --type full (pid ", Duration::from_secs(90))?;
    let mut ended = String::new();
    wait_until(WAIT, "the backup job to end", || {
        let log = daemon.log();
        ended =
            log.lines().find(|l| l.contains("job full ended") || l.contains("job full failed")).unwrap_or("").into();
        Ok(!ended.is_empty())
    })?;
    ensure!(ended.contains("job full ended: exit status 0"), "the job succeeds: {}", daemon.log());
    ensure!(ended.contains(" after ") && ended.ends_with('s'), "the end line gives the duration: {ended}");
    let listing = list_json(&config)?;
    let ids = backup_ids(&listing);
    ensure!(!ids.is_empty(), "the scheduled backup is listed: {listing}");
    let b = &listing["backups"][0];
    let stop_time = chrono::DateTime::parse_from_rfc3339(b["stop_time"].as_str().unwrap_or(""))?.timestamp() as f64;

    // The metrics show it, after the refresh that follows the job.
    let mut page = String::new();
    wait_until(Duration::from_secs(60), "the backup in /metrics", || {
        page = http_get(port, "/metrics")?.map(|(_, body)| body).unwrap_or_default();
        Ok(sample(&page, "pgwal_backup_last_success_timestamp_seconds{type=\"full\"}").is_some())
    })?;
    let shown = sample(&page, "pgwal_backup_last_success_timestamp_seconds{type=\"full\"}").unwrap_or(0.0);
    ensure!((shown - stop_time).abs() <= 2.0, "metric {shown} vs the backup's stop time {stop_time}\n{page}");
    ensure!(sample(&page, "pgwal_repository_up") == Some(1.0), "{page}");
    ensure!(sample(&page, "pgwal_archive_gaps") == Some(0.0), "{page}");
    ensure!(sample(&page, "pgwal_backups").is_some_and(|n| n >= 1.0), "{page}");
    let stored = b["stored_size"].as_f64().unwrap_or(0.0);
    ensure!(sample(&page, "pgwal_repository_stored_bytes").is_some_and(|n| n >= stored && stored > 0.0), "{page}");
    ensure!(sample(&page, "pgwal_archive_newest_segment_age_seconds").is_some_and(|a| a >= 0.0), "{page}");
    ensure!(sample(&page, "pgwal_archive_backlog_files").is_some(), "PGDATA is known: {page}");
    ensure!(sample(&page, "pgwal_job_last_exit_code{job=\"full\"}") == Some(0.0), "{page}");
    promtool_accepts(&page)?;

    let (status, body) = http_get(port, "/health")?.unwrap_or_default();
    ensure!(status == 200 && body.starts_with("ok: backup "), "{status} {body:?}");
    ensure!(http_get(port, "/nothing")?.map(|(s, _)| s) == Some(404), "unknown paths are 404");

    let (status, took) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "SIGTERM on an idle daemon: exit 0, got {status}\n{}", daemon.log());
    ensure!(took < Duration::from_secs(30), "{took:?}");

    // The backup the daemon took restores with the primary's rows.
    let id = &ids[0];
    let home = dir.join("restored");
    Pgwal::new(["--config", &s(&config), "restore", "--backup", id, "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    let mut restored = PgCluster::existing(&home)?;
    restored.set_conf(&["archive_mode = off"])?;
    restored.start()?;
    restored.wait_recovery_finished(WAIT)?;
    let rows = restored.sql("SELECT count(*) || ' ' || sum(n) FROM t")?;
    ensure!(rows == expected, "restored {rows}, the primary had {expected}");
    Ok(())
}

#[test]
fn sigterm_during_a_backup_job_leaves_nothing_and_no_process() -> Result<()> {
    let dir = TestDir::new()?;
    let port = free_port()?;
    let config =
        write_config(&dir, &format!("[schedule]\nfull = \"0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))?;
    // A slow archiver: the backup job waits for its WAL, packs stored and lock held.
    let slow_archive = format!(
        "archive_command = {}",
        conf_quote(&format!("sleep 5; {}", pgwal_shell_command(&["--config", &s(&config), "archive", "%p"])))
    );
    let mut pg = PgCluster::init(&dir.join("primary"), &[&slow_archive])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;
    let repo = dir.join("repo");
    let lock = repo.join("lock/backup");

    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "full")])?;
    let started = daemon.wait_line("job full started: pgwal backup --type full (pid ", WAIT)?;
    let job_pid: u32 = started
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .with_context(|| format!("no pid in {started:?}"))?;
    let has_packs = || -> Result<bool> {
        let Ok(backups) = std::fs::read_dir(repo.join("backup")) else { return Ok(false) };
        for b in backups {
            if std::fs::read_dir(b?.path().join("pack")).is_ok_and(|mut p| p.next().is_some()) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    wait_until(WAIT, "the backup job to store a pack", has_packs).with_context(|| daemon.log())?;
    ensure!(lock.exists(), "the backup job holds the lock");
    daemon.wait_line("waiting up to", WAIT)?;

    let (status, took) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "the daemon exits 0 after SIGTERM, got {status}\n{}", daemon.log());
    ensure!(took < Duration::from_secs(30), "stopped within 30 s: {took:?}");
    ensure!(!process_exists(job_pid), "the backup job's process {job_pid} is gone");
    let log = daemon.log();
    ensure!(log.contains("SIGTERM: stopping job full"), "{log}");
    ensure!(log.contains("interrupted by SIGTERM") && log.contains("job full failed: exit status 1"), "{log}");
    ensure!(!lock.exists(), "the lock is released");
    let listing = list_json(&config)?;
    ensure!(backup_ids(&listing).is_empty(), "the interrupted backup is not listed: {listing}");
    ensure!(listing["incomplete"] == serde_json::json!([]), "nor left as an incomplete one: {listing}");
    ensure!(!has_packs()?, "its packs are gone");

    // The next backup takes the lock at once and completes.
    let out = Pgwal::new(["--config", &s(&config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?;
    ensure!(!out.stderr.contains("stale"), "no stale lock to take over: {out}");
    ensure!(backup_ids(&list_json(&config)?) == vec![out.stdout.trim().to_string()], "one complete backup");
    Ok(())
}

/// Starts the daemon with `sections` and expects exit 2 with one error line containing `needle`.
fn refused(sections: &str, needle: &str) -> Result<()> {
    let dir = TestDir::new()?;
    let config = write_config(&dir, sections)?;
    let out = Pgwal::new(["--config", &s(&config), "daemon"]).timeout(Duration::from_secs(30)).run()?;
    ensure!(out.code() == Some(2), "exit 2 for {sections:?}: {out}");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("pgwal: error:")).collect();
    ensure!(errors.len() == 1 && errors[0].contains(needle), "one error line with {needle:?}: {out}");
    ensure!(out.stderr.lines().count() <= 2, "the error and its hint only: {out}");
    Ok(())
}

#[test]
fn bad_configuration_is_refused_at_start() -> Result<()> {
    refused("[schedule]\nfull = \"0 25 * * *\"\n", "invalid schedule.full '0 25 * * *'")?;
    refused("[schedule]\nverify = \"0 0 1 * * *\"\n", "invalid schedule.verify '0 0 1 * * *'")?;
    refused("[schedule]\nincr = \"0 1 * *\"\n", "invalid schedule.incr '0 1 * *'")?;
    refused(
        "[schedule]\nfull = \"0 1 * * *\"\n[metrics]\nlisten = \"0.0.0.0:9187\"\n",
        "metrics.listen '0.0.0.0:9187'",
    )?;
    refused("[health]\nmax_backup_age = \"1h\"\n", "nothing for the daemon to do")?;
    refused("[schedule]\nfull = \"0 1 * * *\"\n[health]\nmax_drill_age = \"soon\"\n", "invalid health.max_drill_age")?;
    // The daemon's sections do not bother other commands, but their keys are checked like all keys.
    let dir = TestDir::new()?;
    let config = write_config(&dir, "[schedule]\nfull = \"0 25 * * *\"\n[metrics]\nlisten = \"0.0.0.0:1\"\n")?;
    let out = Pgwal::new(["--config", &s(&config), "list"]).run()?;
    ensure!(!out.stderr.contains("schedule"), "list does not check the schedule: {out}");
    let config = write_config(&dir, "[schedule]\nfulll = \"0 1 * * *\"\n")?;
    let out = Pgwal::new(["--config", &s(&config), "list"]).run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("fulll"), "a mistyped key is refused: {out}");
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool() -> Result<()> {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgwal-alerts.yml");
    let mut cmd = std::process::Command::new("promtool");
    cmd.args(["check", "rules"]).arg(&rules);
    let out =
        run(&mut cmd, None, COMMAND_TIMEOUT).context("promtool (apt-get install prometheus) must be installed")?;
    ensure!(out.success() && out.stdout.contains("SUCCESS"), "promtool rejects {}: {out}", rules.display());
    // Every metric the rules name is one the daemon serves (see man pgwal-daemon).
    let text = std::fs::read_to_string(&rules)?;
    let help = Pgwal::new(["daemon", "--help"]).run()?.ensure_success()?.stdout;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("pgwal_")) {
        ensure!(help.contains(word), "{word} of the alert rules is not documented by pgwal daemon --help");
    }
    Ok(())
}

#[test]
fn sighup_reloads_the_config_and_keeps_it_when_the_new_one_is_bad() -> Result<()> {
    let dir = TestDir::new()?;
    let port = free_port()?;
    let base = format!("[schedule]\nfull = \"0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = write_config(&dir, &base)?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[])?;
    pg.start()?;
    let daemon = Daemon::start(&config, &pg, &[])?;
    let health = || -> Result<Option<(u16, String)>> { http_get(port, "/health") };
    wait_until(WAIT, "/health to answer", || Ok(health()?.is_some())).with_context(|| daemon.log())?;
    let (status, body) = health()?.unwrap_or_default();
    ensure!(status == 200 && body.contains("no [health] ages configured"), "{status} {body:?}");

    write_config(&dir, &format!("{base}[health]\nmax_backup_age = \"1h\"\n"))?;
    daemon.signal(libc::SIGHUP);
    daemon.wait_line("reloaded the configuration", WAIT)?;
    wait_until(WAIT, "/health to apply the new age", || Ok(health()?.is_some_and(|(s, _)| s == 503)))?;

    write_config(&dir, &format!("{base}[health]\nmax_backup_age = \"soon\"\n"))?;
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_line("cannot reload the configuration", WAIT)?;
    ensure!(line.contains("invalid health.max_backup_age 'soon'"), "{line}");
    ensure!(health()?.is_some_and(|(s, _)| s == 503), "the configuration in use stays");
    let mut daemon = daemon;
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[test]
fn a_failed_job_is_logged_and_the_next_run_succeeds() -> Result<()> {
    let dir = TestDir::new()?;
    let port = free_port()?;
    let config = write_config(
        &dir,
        &format!("[schedule]\nverify = \"* * * * *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"2s\"\n"),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[])?;
    pg.start()?;
    // No repository yet: the first verify fails, and the daemon goes on.
    let daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "verify")])?;
    let failed = daemon.wait_line("job verify failed: exit status 1", WAIT)?;
    ensure!(failed.contains(" after "), "{failed}");
    let log = daemon.log();
    ensure!(log.contains("pgwal: error: no pgwal repository"), "the job's own error line is in the log: {log}");
    let metric = |name: &str| -> Result<Option<f64>> {
        Ok(http_get(port, "/metrics")?.and_then(|(_, page)| sample(&page, name)))
    };
    wait_until(WAIT, "verify's failure in /metrics", || Ok(metric("pgwal_verify_last_success")? == Some(0.0)))?;

    // The repository appears (the cluster archives into it); the next scheduled run succeeds.
    pg.set_conf(&[archive_command_setting(&config)])?;
    pg.restart()?;
    let segment = pg.switch_wal()?;
    pg.wait_archived(&segment, WAIT)?;
    daemon.wait_line("job verify ended: exit status 0", Duration::from_secs(150)).with_context(|| daemon.log())?;
    wait_until(WAIT, "verify's success in /metrics", || Ok(metric("pgwal_verify_last_success")? == Some(1.0)))?;
    ensure!(metric("pgwal_job_last_exit_code{job=\"verify\"}")? == Some(0.0), "the last run's status");
    let mut daemon = daemon;
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[test]
fn a_backup_stopped_by_sigint_removes_its_packs_and_lock() -> Result<()> {
    let dir = TestDir::new()?;
    let config = write_config(&dir, "")?;
    let slow_archive = format!(
        "archive_command = {}",
        conf_quote(&format!("sleep 5; {}", pgwal_shell_command(&["--config", &s(&config), "archive", "%p"])))
    );
    let mut pg = PgCluster::init(&dir.join("primary"), &[&slow_archive])?;
    pg.start()?;
    let mut cmd = Pgwal::new(["--config", &s(&config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
        .command();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let lock = dir.join("repo/lock/backup");
    let packs = || -> Result<usize> {
        let Ok(backups) = std::fs::read_dir(dir.join("repo/backup")) else { return Ok(0) };
        let mut n = 0;
        for b in backups {
            n += std::fs::read_dir(b?.path().join("pack")).map_or(0, |p| p.count());
        }
        Ok(n)
    };
    wait_until(WAIT, "the backup to store a pack", || Ok(packs()? > 0))?;
    ensure!(lock.exists(), "the backup holds the lock");
    // SAFETY: kill only sends a signal, to the backup this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(began.elapsed() < Duration::from_secs(30), "the backup did not stop within 30 s of SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().context("stderr")?.read_to_string(&mut stderr)?;
    ensure!(status.code() == Some(1), "exit 1 after SIGINT, got {status}: {stderr}");
    ensure!(stderr.contains("pgwal: error: interrupted by SIGINT"), "{stderr}");
    ensure!(packs()? == 0 && !lock.exists(), "packs and lock are gone: {stderr}");
    let listing = list_json(&config)?;
    ensure!(backup_ids(&listing).is_empty() && listing["incomplete"] == serde_json::json!([]), "{listing}");
    Ok(())
}

#[test]
fn s3_backup_jobs_show_in_metrics_and_sigterm_leaves_nothing() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket("pgwal")?;
    let port = free_port()?;
    let config = dir.join("pgwal.toml");
    write_private_file(
        &config,
        &format!(
            "{}\n[schedule]\nfull = \"0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"2s\"\n",
            s3.config_toml("s3://pgwal/main")
        ),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;

    // A backup job into S3 completes, and the metrics show it.
    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "full")])?;
    daemon.wait_line("job full ended: exit status 0", WAIT).with_context(|| daemon.log())?;
    let listing = list_json(&config)?;
    let ids = backup_ids(&listing);
    ensure!(ids.len() == 1, "{listing}");
    let stop_time =
        chrono::DateTime::parse_from_rfc3339(listing["backups"][0]["stop_time"].as_str().unwrap_or(""))?.timestamp();
    let mut page = String::new();
    wait_until(Duration::from_secs(60), "the S3 backup in /metrics", || {
        page = http_get(port, "/metrics")?.map(|(_, body)| body).unwrap_or_default();
        Ok(sample(&page, "pgwal_backup_last_success_timestamp_seconds{type=\"full\"}").is_some())
    })?;
    let shown = sample(&page, "pgwal_backup_last_success_timestamp_seconds{type=\"full\"}").unwrap_or(0.0);
    ensure!((shown - stop_time as f64).abs() <= 2.0, "{shown} vs {stop_time}\n{page}");
    promtool_accepts(&page)?;
    ensure!(daemon.terminate(Duration::from_secs(30))?.0.success(), "{}", daemon.log());

    // With a slow archiver, SIGTERM reaches the next backup job while it waits for its WAL.
    let slow_archive = format!(
        "archive_command = {}",
        conf_quote(&format!("sleep 5; {}", pgwal_shell_command(&["--config", &s(&config), "archive", "%p"])))
    );
    pg.set_conf(&[slow_archive])?;
    pg.reload()?;
    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "full")])?;
    let repo_root = bucket.join("main");
    let new_packs = || -> Result<bool> {
        let Ok(backups) = std::fs::read_dir(repo_root.join("backup")) else { return Ok(false) };
        for b in backups {
            let b = b?;
            if b.file_name().to_string_lossy() != ids[0]
                && std::fs::read_dir(b.path().join("pack")).is_ok_and(|mut p| p.next().is_some())
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    wait_until(WAIT, "the second backup job to store a pack in S3", new_packs).with_context(|| daemon.log())?;
    daemon.wait_line("waiting up to", WAIT)?;
    let (status, took) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success() && took < Duration::from_secs(30), "{status} {took:?}\n{}", daemon.log());
    let listing = list_json(&config)?;
    ensure!(backup_ids(&listing) == ids, "only the complete backup is listed: {listing}");
    ensure!(listing["incomplete"] == serde_json::json!([]), "nothing of the interrupted one: {listing}");
    ensure!(!new_packs()?, "its packs are gone from the bucket");
    ensure!(!repo_root.join("lock/backup").exists(), "the lock object is gone");
    Ok(())
}

/// Whether a PostgreSQL server runs with its data directory under `dir`
/// (a drill's throwaway server: `postgres -D DRILL_DIR/ID-TIME/data`).
fn server_under(dir: &Path) -> Option<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.contains("postgres") && cmdline.contains(" -D ") && cmdline.contains(&dir)).then_some(cmdline)
    })
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn a_scheduled_drill_shows_in_metrics_list_and_health() -> Result<()> {
    let dir = TestDir::new()?;
    let port = free_port()?;
    let drill_dir = dir.join("drill");
    let config = write_config(
        &dir,
        &format!(
            "[drill]\ndir = {}\ntimeout = \"10m\"\n[schedule]\nfull = \"0 0 1 1 *\"\ndrill = \"0 0 1 1 *\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\nrefresh = \"2s\"\n[health]\nmax_drill_age = \"1h\"\n",
            toml_quote(&s(&drill_dir))
        ),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;
    let first = pg.switch_wal()?;
    pg.wait_archived(&first, WAIT)?;

    let began = chrono::Utc::now().timestamp() as f64;
    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "full,drill")])?;
    // Before the drill: 503, naming the missing drill.
    let mut before = None;
    wait_until(WAIT, "/health to answer", || {
        before = http_get(port, "/health")?;
        Ok(before.as_ref().is_some_and(|(_, body)| !body.contains("not been read yet")))
    })
    .with_context(|| daemon.log())?;
    let (status, reason) = before.unwrap_or_default();
    ensure!(status == 503 && reason.trim() == "no drill recorded in the repository", "{status} {reason:?}");

    daemon.wait_line("job full ended: exit status 0", WAIT).with_context(|| daemon.log())?;
    daemon.wait_line("job drill started: pgwal drill (pid ", WAIT).with_context(|| daemon.log())?;
    daemon.wait_line("job drill ended: exit status 0", WAIT).with_context(|| daemon.log())?;
    let ended = chrono::Utc::now().timestamp() as f64;

    let listing = list_json(&config)?;
    let ids = backup_ids(&listing);
    ensure!(ids.len() == 1, "{listing}");
    let drills = listing["drills"].as_array().context("drills")?;
    ensure!(drills.len() == 1, "{listing}");
    let d = &drills[0];
    ensure!(d["backup"] == ids[0].as_str() && d["passed"] == true, "the drill of the scheduled backup passed: {d}");
    ensure!(d["findings"].as_array().is_some_and(|f| f.is_empty()), "{d}");
    let finished = chrono::DateTime::parse_from_rfc3339(d["finished"].as_str().unwrap_or(""))?.timestamp() as f64;

    let mut page = String::new();
    wait_until(Duration::from_secs(60), "the drill in /metrics", || {
        page = http_get(port, "/metrics")?.map(|(_, body)| body).unwrap_or_default();
        Ok(sample(&page, "pgwal_drill_last_success") == Some(1.0))
    })
    .with_context(|| page.clone())?;
    let at = sample(&page, "pgwal_drill_last_timestamp_seconds").unwrap_or(0.0);
    ensure!(at == finished, "the metric is the drill's finish {finished}: {at}\n{page}");
    ensure!(began - 1.0 <= at && at <= ended + 1.0, "the drill finished within the run ({began}..{ended}): {at}");
    ensure!(sample(&page, "pgwal_job_last_exit_code{job=\"drill\"}") == Some(0.0), "{page}");
    promtool_accepts(&page)?;

    let mut after = None;
    wait_until(Duration::from_secs(60), "/health to see the drill", || {
        after = http_get(port, "/health")?;
        Ok(after.as_ref().is_some_and(|(s, _)| *s == 200))
    })
    .with_context(|| format!("{after:?}"))?;
    let (_, body) = after.unwrap_or_default();
    ensure!(body.starts_with("ok: ") && body.contains("drill "), "{body:?}");
    ensure!(entries(&drill_dir).is_empty() && server_under(&drill_dir).is_none(), "the drill cleaned up");
    ensure!(daemon.terminate(Duration::from_secs(30))?.0.success(), "{}", daemon.log());
    Ok(())
}

#[test]
fn sigterm_during_a_drill_job_stops_its_server_and_records_nothing() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket("pgwal")?;
    // WAL downloads through this proxy stall: the drill's recovery waits while SIGTERM comes.
    let proxy = common::proxy::HttpProxy::start(s3.port())?;
    let port = free_port()?;
    let drill_dir = dir.join("drill");
    let config = dir.join("pgwal.toml");
    write_private_file(
        &config,
        &format!(
            "repo = \"s3://pgwal/main\"\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
             secret_access_key = {}\nallow_http = true\n[drill]\ndir = {}\ntimeout = \"10m\"\n\
             [schedule]\ndrill = \"0 0 1 1 *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            toml_quote(&proxy.endpoint()),
            toml_quote(s3.access_key()),
            toml_quote(s3.secret_key()),
            toml_quote(&s(&drill_dir)),
        ),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;
    Pgwal::new(["--config", &s(&config), "backup", "--checkpoint", "fast", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?;
    pg.sql("INSERT INTO t SELECT g FROM generate_series(1, 5000) g")?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    proxy.inject("GET", "/wal/00000001", common::proxy::Fault::Stall(Duration::from_secs(60)), 1000);

    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "drill")])?;
    let started = daemon.wait_line("job drill started: pgwal drill (pid ", WAIT)?;
    let job_pid: u32 = started
        .rsplit("(pid ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .with_context(|| format!("no pid in {started:?}"))?;
    wait_until(WAIT, "the drill's throwaway server to run", || Ok(server_under(&drill_dir).is_some()))
        .with_context(|| daemon.log())?;
    daemon.wait_line("started the throwaway server", WAIT)?;

    let (status, took) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "the daemon exits 0 after SIGTERM, got {status}\n{}", daemon.log());
    ensure!(took < Duration::from_secs(30), "stopped within 30 s: {took:?}");
    ensure!(!process_exists(job_pid), "the drill job's process {job_pid} is gone");
    let log = daemon.log();
    ensure!(log.contains("SIGTERM: stopping job drill"), "{log}");
    ensure!(log.contains("interrupted by SIGTERM") && log.contains("job drill failed: exit status 1"), "{log}");
    ensure!(!log.contains("killing it and its process group"), "the drill stopped on SIGTERM alone: {log}");
    ensure!(server_under(&drill_dir).is_none(), "no throwaway server left: {:?}", server_under(&drill_dir));
    ensure!(entries(&drill_dir).is_empty(), "the scratch directory is gone: {:?}", entries(&drill_dir));
    let listing = list_json(&config)?;
    ensure!(listing["drills"] == serde_json::json!([]), "nothing recorded for the interrupted drill: {listing}");
    ensure!(entries(&bucket.join("main/drill")).is_empty(), "no drill object in the bucket");
    Ok(())
}

/// `config/pgwal.service` runs the daemon as postgres, restarts it on
/// failure, is hardened, lets drills write their scratch copies (its
/// private /var/tmp holds the default drill.dir), and `systemd-analyze
/// verify` accepts it (run on a copy whose ExecStart is this build, when
/// systemd-analyze is installed).
#[test]
fn the_service_unit_is_consistent() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgwal.service");
    let unit = std::fs::read_to_string(&path)?;
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in ["User=postgres", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=true"] {
        ensure!(has(line), "{} lacks {line}", path.display());
    }
    ensure!(has("ExecStart=/usr/local/bin/pgwal daemon"), "{}", path.display());
    // The default drill.dir must be writable: under /var/tmp, which PrivateTmp makes the unit's own.
    ensure!(pgwal::config::drill::DEFAULT_DRILL_DIR.starts_with("/var/tmp/") && has("PrivateTmp=true"), "drill.dir");
    ensure!(!unit.contains("MemoryDenyWriteExecute=true"), "would break PostgreSQL's JIT in a drill");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))?;
    ensure!(readme.contains("sudo cp config/pgwal.service /etc/systemd/system/"), "the README installs the unit");

    let Ok(analyze) = which("systemd-analyze") else { return Ok(()) };
    let dir = TestDir::new()?;
    let copy = dir.join("pgwal.service");
    let text: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/local/bin/pgwal", env!("CARGO_BIN_EXE_pgwal")) + "\n")
        .collect();
    std::fs::write(&copy, text)?;
    let mut cmd = std::process::Command::new(analyze);
    cmd.arg("verify").arg(&copy);
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.success() && out.stderr.trim().is_empty(), "systemd-analyze verify: {out}");
    Ok(())
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
        .with_context(|| format!("{program} is not installed"))
}

/// A daemon with a key: its backup and verify jobs run against the
/// encrypted repository (the backup is stored sealed and lists with the
/// key); the same daemon given a wrong key logs the job's failure with the
/// one line that says the key does not open the repository, and neither
/// shows the key.
#[test]
fn jobs_run_with_a_key_and_a_wrong_key_is_reported() -> Result<()> {
    let dir = TestDir::new()?;
    let key_file = dir.join("repo.key");
    let key = crate::encryption::write_key(&key_file, 0o600)?;
    let schedule = "[schedule]\nfull = \"0 0 1 1 *\"\nverify = \"0 0 1 1 *\"\n";
    let config = write_config(
        &dir,
        &format!("{schedule}[encryption]\nkey_file = {}\n", toml_quote(&key_file.to_string_lossy())),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 5000) g")?;
    let first = pg.switch_wal()?;
    pg.wait_archived(&first, WAIT)?;

    let mut daemon = Daemon::start(&config, &pg, &[("PGWAL_TEST_RUN_AT_START", "full,verify")])?;
    daemon.wait_line("job full ended: exit status 0", WAIT).with_context(|| daemon.log())?;
    daemon.wait_line("job verify ended: exit status 0", WAIT).with_context(|| daemon.log())?;
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "{status}\n{}", daemon.log());
    ensure!(!daemon.log().contains(&key), "the daemon's log shows the key");
    let ids = backup_ids(&list_json(&config)?);
    ensure!(ids.len() == 1, "the job's backup is listed with the key: {ids:?}");
    let manifest = dir.join("repo/backup").join(&ids[0]).join("manifest");
    ensure!(std::fs::read(&manifest)?.starts_with(b"PGWALENC"), "the backup is sealed");

    let wrong_file = dir.join("wrong.key");
    let wrong = crate::encryption::write_key(&wrong_file, 0o600)?;
    let wrong_config = dir.join("wrong.toml");
    let text = std::fs::read_to_string(&config)?.replace(&*key_file.to_string_lossy(), &wrong_file.to_string_lossy());
    write_private_file(&wrong_config, &text)?;
    let mut daemon = Daemon::start(&wrong_config, &pg, &[("PGWAL_TEST_RUN_AT_START", "verify")])?;
    daemon.wait_line("job verify failed: exit status 2", WAIT).with_context(|| daemon.log())?;
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("pgwal: error:")).collect();
    ensure!(errors.len() == 1 && errors[0].contains("does not open repository"), "one line names the key: {log}");
    ensure!(!log.contains(&key) && !log.contains(&wrong), "the daemon's log shows a key");
    let (status, _) = daemon.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "the daemon goes on after a failed job and stops on SIGTERM: {status}\n{log}");
    Ok(())
}
