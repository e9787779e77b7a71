//! The options of `pgwal daemon`, from the config file's `[schedule]`,
//! `[metrics]` and `[health]` sections. The sections are read with the rest
//! of the file (so a typo in a key fails every command, as elsewhere), but
//! their values are checked only when the daemon starts or reloads: a bad
//! cron expression must not stop `archive_command`.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::Config;
use crate::error::{Error, Result};

/// How often the daemon re-reads the repository for its metrics when no
/// job ran, by default: listing WAL costs requests, so not per scrape.
pub const DEFAULT_METRICS_REFRESH: Duration = Duration::from_secs(60);

/// `[schedule]`: a 5-field cron expression per job.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    full: Option<String>,
    diff: Option<String>,
    incr: Option<String>,
    expire: Option<String>,
    verify: Option<String>,
    drill: Option<String>,
}

/// `[metrics]`: where `/metrics` and `/health` are served.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    listen: Option<String>,
    allow_remote: Option<bool>,
    refresh: Option<String>,
}

/// `[health]`: the ages `/health` accepts.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    max_backup_age: Option<String>,
    max_archive_age: Option<String>,
    max_drill_age: Option<String>,
}

/// The three daemon sections as the file gave them.
#[derive(Debug, Default, Clone)]
pub struct DaemonSections {
    /// `[schedule]`.
    pub schedule: ScheduleSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
    /// `[health]`.
    pub health: HealthSection,
}

/// A job the daemon runs, named as its `[schedule]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    /// `pgwal backup --type full`.
    Full,
    /// A differential backup (`pgwal backup --type diff`).
    Diff,
    /// An incremental backup (`pgwal backup --type incr`).
    Incr,
    /// `pgwal expire`.
    Expire,
    /// `pgwal verify`.
    Verify,
    /// `pgwal drill`.
    Drill,
}

impl Job {
    /// Every job, in the order the daemon runs jobs due at the same minute:
    /// backups first, then expire (which may remove what the new backup
    /// replaces), then verify and drill (which then check what is kept).
    pub const ALL: [Job; 6] = [Job::Full, Job::Diff, Job::Incr, Job::Expire, Job::Verify, Job::Drill];

    /// The `[schedule]` key, also the job's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Job::Full => "full",
            Job::Diff => "diff",
            Job::Incr => "incr",
            Job::Expire => "expire",
            Job::Verify => "verify",
            Job::Drill => "drill",
        }
    }

    /// The pgwal command line the job runs.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Job::Full => &["backup", "--type", "full"],
            Job::Diff => &["backup", "--type", "diff"],
            Job::Incr => &["backup", "--type", "incr"],
            Job::Expire => &["expire"],
            Job::Verify => &["verify"],
            Job::Drill => &["drill"],
        }
    }
}

impl FromStr for Job {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Job, String> {
        Job::ALL.into_iter().find(|j| j.name() == s).ok_or_else(|| format!("unknown job '{s}'"))
    }
}

/// Where and how the metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsOptions {
    /// The address to listen on (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// How often the repository is read again when no job ran.
    pub refresh: Duration,
}

/// The ages `/health` accepts; `None`: that part is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthOptions {
    /// The newest complete backup must have stopped within this.
    pub max_backup_age: Option<Duration>,
    /// The newest archived segment must have been stored within this.
    pub max_archive_age: Option<Duration>,
    /// The newest drill must have finished within this, and passed.
    pub max_drill_age: Option<Duration>,
}

/// The validated options of `pgwal daemon`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The scheduled jobs and their cron expressions, in [`Job::ALL`] order.
    pub schedule: Vec<(Job, croner::Cron)>,
    /// `[metrics]`, when `listen` is set.
    pub metrics: Option<MetricsOptions>,
    /// `[health]`.
    pub health: HealthOptions,
    /// Jobs queued at start, before any is due: for tests only, from the
    /// undocumented `PGWAL_TEST_RUN_AT_START` (job names, comma-separated;
    /// only scheduled jobs), so that a test need not wait for a cron minute.
    pub run_at_start: Vec<Job>,
}

/// The environment variable behind [`DaemonOptions::run_at_start`].
pub const RUN_AT_START_ENV: &str = "PGWAL_TEST_RUN_AT_START";

/// The environment the daemon's jobs get: the configuration the daemon was
/// given (`--config`, `--repo`, `--pgdata`, `--conninfo`, `--log-level`, or
/// the same variables), as variables rather than arguments, where a
/// connection string's password would show in `ps`.
pub fn child_env(
    o: &super::Overrides,
    file: Option<&Path>,
    level: Option<crate::log::Level>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = Vec::new();
    if let Some(file) = file {
        env.push(("PGWAL_CONFIG".into(), file.into()));
    }
    if let Some(repo) = &o.repo {
        env.push(("PGWAL_REPO".into(), repo.into()));
    }
    if let Some(pgdata) = &o.pgdata {
        env.push(("PGDATA".into(), pgdata.into()));
    }
    if let Some(conninfo) = &o.conninfo {
        env.push(("PGWAL_CONNINFO".into(), conninfo.into()));
    }
    if let Some(level) = level {
        env.push(("PGWAL_LOG_LEVEL".into(), format!("{level:?}").to_lowercase().into()));
    }
    env
}

/// Parses a 5-field cron expression (minute hour day-of-month month
/// day-of-week), as crontab(5) has it; croner also takes names (`MON`,
/// `JAN`), ranges, steps, lists and `@daily`-style nicknames.
pub fn parse_cron(expr: &str) -> std::result::Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if !expr.trim_start().starts_with('@') && fields != 5 {
        return Err(format!("it has {fields} fields, not 5"));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// Checks the daemon's sections of `cfg` and returns its options.
pub fn daemon_options(cfg: &Config) -> Result<DaemonOptions> {
    let shown = cfg.file.as_deref().unwrap_or(Path::new("(no config file)"));
    let s = &cfg.daemon.schedule;
    let mut schedule = Vec::new();
    for (job, expr) in [
        (Job::Full, &s.full),
        (Job::Diff, &s.diff),
        (Job::Incr, &s.incr),
        (Job::Expire, &s.expire),
        (Job::Verify, &s.verify),
        (Job::Drill, &s.drill),
    ] {
        let Some(expr) = expr else { continue };
        let cron = parse_cron(expr).map_err(|e| {
            Error::config(
                format!("invalid schedule.{} '{expr}' in '{}': {e}", job.name(), shown.display()),
                "give a 5-field cron expression (minute hour day-of-month month day-of-week, local time), \
                 e.g. \"0 1 * * *\" for 01:00 every day",
            )
        })?;
        if cron.find_next_occurrence(&chrono::Local::now(), false).is_err() {
            return Err(Error::config(
                format!("schedule.{} '{expr}' in '{}' never comes due", job.name(), shown.display()),
                "check the day of month and month (e.g. \"0 1 30 2 *\" asks for 30 February)",
            ));
        }
        schedule.push((job, cron));
    }
    let m = &cfg.daemon.metrics;
    let metrics = match &m.listen {
        None => None,
        Some(text) => {
            let listen: SocketAddr = text.parse().map_err(|e| {
                Error::config(
                    format!("invalid metrics.listen '{text}' in '{}': {e}", shown.display()),
                    "give an IP address and port, e.g. \"127.0.0.1:9187\"",
                )
            })?;
            if !listen.ip().is_loopback() && m.allow_remote != Some(true) {
                return Err(Error::config(
                    format!(
                        "metrics.listen '{text}' in '{}' is not a loopback address: the metrics and health \
                         would be served to the network",
                        shown.display()
                    ),
                    "listen on 127.0.0.1:PORT (and let a local Prometheus or proxy scrape it), or set \
                     metrics.allow_remote = true to serve other hosts",
                ));
            }
            let refresh = match &m.refresh {
                None => DEFAULT_METRICS_REFRESH,
                Some(v) => age("metrics.refresh", v, shown)?,
            };
            Some(MetricsOptions { listen, refresh })
        }
    };
    if schedule.is_empty() && metrics.is_none() {
        return Err(Error::config(
            format!("nothing for the daemon to do: '{}' has no [schedule] job and no metrics.listen", shown.display()),
            "add e.g. [schedule] full = \"0 1 * * *\" and/or [metrics] listen = \"127.0.0.1:9187\"",
        ));
    }
    let h = &cfg.daemon.health;
    let opt_age = |key: &str, v: &Option<String>| v.as_deref().map(|v| age(key, v, shown)).transpose();
    let health = HealthOptions {
        max_backup_age: opt_age("health.max_backup_age", &h.max_backup_age)?,
        max_archive_age: opt_age("health.max_archive_age", &h.max_archive_age)?,
        max_drill_age: opt_age("health.max_drill_age", &h.max_drill_age)?,
    };
    let run_at_start = std::env::var(RUN_AT_START_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|name| name.trim().parse::<Job>().ok())
        .filter(|job| schedule.iter().any(|(j, _)| j == job))
        .collect();
    Ok(DaemonOptions { schedule, metrics, health, run_at_start })
}

/// A duration such as `30m`, `26h`, `8d` or `1week` (humantime's syntax), at least a second.
fn age(key: &str, value: &str, file: &Path) -> Result<Duration> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err(Error::config(
            format!("invalid {key} '{value}' in '{}': shorter than a second", file.display()),
            "give a duration such as \"30m\", \"26h\" or \"8d\"",
        )),
        Err(e) => Err(Error::config(
            format!("invalid {key} '{value}' in '{}': {e}", file.display()),
            "give a duration such as \"30m\", \"26h\" or \"8d\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: ScheduleSection, metrics: MetricsSection, health: HealthSection) -> Config {
        let mut cfg = empty_config();
        cfg.daemon = DaemonSections { schedule, metrics, health };
        cfg
    }

    fn empty_config() -> Config {
        // An empty config file: every default.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pgwal.toml");
        std::fs::write(&path, "").expect("write");
        super::super::load(&super::super::Overrides { config: Some(path), ..Default::default() }).expect("load")
    }

    fn schedule(full: &str) -> ScheduleSection {
        ScheduleSection { full: Some(full.into()), ..Default::default() }
    }

    /// The example config's daemon sections start a daemon.
    #[test]
    fn the_example_config_schedules_and_serves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgwal.toml");
        let cfg = super::super::load(&super::super::Overrides { config: Some(path), ..Default::default() })
            .expect("example config loads");
        let opts = daemon_options(&cfg).expect("example daemon sections validate");
        let jobs: Vec<Job> = opts.schedule.iter().map(|(j, _)| *j).collect();
        assert_eq!(jobs, vec![Job::Full, Job::Expire, Job::Verify]);
        assert_eq!(opts.metrics.expect("metrics").listen, "127.0.0.1:9187".parse().expect("addr"));
        assert_eq!(opts.health.max_backup_age, Some(Duration::from_secs(26 * 3600)));
    }

    #[test]
    fn jobs_get_the_daemons_configuration_in_their_environment() {
        let o = super::super::Overrides {
            config: Some("/etc/pgwal/other.toml".into()),
            repo: Some("s3://b/p".into()),
            pgdata: None,
            conninfo: Some("host=/run password=secret".into()),
        };
        let env = child_env(&o, Some(Path::new("/etc/pgwal/other.toml")), Some(crate::log::Level::Warn));
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert_eq!(get("PGWAL_CONFIG").as_deref(), Some("/etc/pgwal/other.toml"));
        assert_eq!(get("PGWAL_REPO").as_deref(), Some("s3://b/p"));
        assert_eq!(get("PGWAL_CONNINFO").as_deref(), Some("host=/run password=secret"));
        assert_eq!(get("PGWAL_LOG_LEVEL").as_deref(), Some("warn"));
        assert_eq!(get("PGDATA"), None, "what was not given is inherited as it is");
        assert!(Job::ALL.iter().all(|j| !j.args().iter().any(|a| a.contains("secret"))));
    }

    #[test]
    fn five_field_cron_only() {
        assert!(parse_cron("0 1 * * *").is_ok());
        assert!(parse_cron("*/15 2-4 * JAN-MAR MON-FRI").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 0 1 * * *").unwrap_err().contains("6 fields"));
        assert!(parse_cron("0 1 * *").unwrap_err().contains("4 fields"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("0 */6 * * *").is_ok(), "the syntax the cron crate rejects");
    }

    #[test]
    fn bad_schedule_names_the_key() {
        let cfg = config(schedule("0 25 * * *"), MetricsSection::default(), HealthSection::default());
        let e = daemon_options(&cfg).unwrap_err();
        assert!(e.to_string().contains("invalid schedule.full '0 25 * * *'"), "{e}");
        assert!(matches!(e, Error::Config { .. }));
        let cfg = config(
            ScheduleSection { incr: Some("0 1 * * 1-6".into()), diff: Some("0 1 * * 3".into()), ..Default::default() },
            MetricsSection::default(),
            HealthSection::default(),
        );
        assert!(daemon_options(&cfg).is_ok(), "diff and incr jobs are scheduled like full ones");
        let cfg = config(
            ScheduleSection { incr: Some("0 1 * *".into()), ..Default::default() },
            MetricsSection::default(),
            HealthSection::default(),
        );
        assert!(daemon_options(&cfg).unwrap_err().to_string().contains("invalid schedule.incr"));
        let cfg = config(ScheduleSection::default(), MetricsSection::default(), HealthSection::default());
        assert!(daemon_options(&cfg).unwrap_err().to_string().contains("nothing for the daemon to do"));
    }

    #[test]
    fn metrics_stay_on_loopback_unless_allowed() {
        let m = |listen: &str, allow: Option<bool>| MetricsSection {
            listen: Some(listen.into()),
            allow_remote: allow,
            refresh: None,
        };
        let opts = daemon_options(&config(schedule("* * * * *"), m("127.0.0.1:9187", None), HealthSection::default()))
            .expect("loopback");
        assert_eq!(opts.metrics.expect("metrics").refresh, DEFAULT_METRICS_REFRESH);
        assert!(daemon_options(&config(schedule("* * * * *"), m("[::1]:9187", None), HealthSection::default())).is_ok());
        let e = daemon_options(&config(schedule("* * * * *"), m("0.0.0.0:9187", None), HealthSection::default()))
            .unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        assert!(daemon_options(&config(
            schedule("* * * * *"),
            m("0.0.0.0:9187", Some(true)),
            HealthSection::default()
        ))
        .is_ok());
        let e =
            daemon_options(&config(schedule("* * * * *"), m("localhost", None), HealthSection::default())).unwrap_err();
        assert!(e.to_string().contains("invalid metrics.listen"), "{e}");
    }

    #[test]
    fn health_ages_in_humantime_syntax() {
        let h = HealthSection {
            max_backup_age: Some("26h".into()),
            max_archive_age: Some("15m".into()),
            max_drill_age: Some("8d".into()),
        };
        let opts = daemon_options(&config(schedule("0 1 * * *"), MetricsSection::default(), h)).expect("ages");
        assert_eq!(opts.health.max_backup_age, Some(Duration::from_secs(26 * 3600)));
        assert_eq!(opts.health.max_drill_age, Some(Duration::from_secs(8 * 86400)));
        let h = HealthSection { max_backup_age: Some("a day".into()), ..Default::default() };
        let e = daemon_options(&config(schedule("0 1 * * *"), MetricsSection::default(), h)).unwrap_err();
        assert!(e.to_string().contains("invalid health.max_backup_age"), "{e}");
    }
}
