//! What the daemon knows about the repository and its jobs, and the
//! Prometheus page made from it. Repository facts (backups, WAL, drills)
//! are read from the repository itself, the way `list` reads them, after
//! each job and every `metrics.refresh`, never per scrape (listing WAL
//! costs requests); ages are computed at scrape time from the stored
//! timestamps, so they grow between refreshes as they should. Job facts
//! (verify's last result) come from the jobs' exit statuses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::jobs::{Ended, Job};
use crate::config::daemon::HealthOptions;
use crate::local::backlog;
use crate::ops::list;
use crate::repo::catalog::{Catalog, Scope};
use crate::repo::Repository;
use crate::Result;

/// The newest complete backup of one type.
#[derive(Debug, Clone, PartialEq)]
pub struct LastBackup {
    /// Its ID.
    pub id: String,
    /// When it stopped.
    pub stop_time: DateTime<Utc>,
    /// Stop minus start time, in seconds.
    pub duration_seconds: f64,
}

/// The newest drill over all backups.
#[derive(Debug, Clone, PartialEq)]
pub struct LastDrill {
    /// The backup it restored.
    pub backup: String,
    /// When it finished.
    pub finished: DateTime<Utc>,
    /// Whether every check passed.
    pub passed: bool,
    /// The failed checks, one line each.
    pub findings: Vec<String>,
}

/// The repository as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The newest complete backup of each type (`full`, `incr`).
    pub last_backup: BTreeMap<String, LastBackup>,
    /// The newest complete backup of any type.
    pub newest_backup: Option<LastBackup>,
    /// Complete backups.
    pub backups: usize,
    /// Backup directories without a manifest (running or interrupted).
    pub incomplete: usize,
    /// Bytes in the packs of the complete backups.
    pub stored_bytes: u64,
    /// The newest archived segment and when it was stored.
    pub newest_segment: Option<(String, DateTime<Utc>)>,
    /// Gaps over all timelines.
    pub gaps: usize,
    /// The newest drill.
    pub last_drill: Option<LastDrill>,
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t).ok().map(|t| t.to_utc())
}

impl Snapshot {
    /// Reads the repository: what `list` reads, plus the newest drills.
    pub async fn read(repo: &Repository) -> Result<Snapshot> {
        let listing = list::listing(repo).await?;
        let drills = Catalog::load(repo, &Scope { drills: true, ..Scope::default() }).await?.drills;
        let mut s = Snapshot {
            backups: listing.backups.len(),
            incomplete: listing.incomplete.len(),
            stored_bytes: listing.backups.iter().map(|b| b.stored_size).sum(),
            gaps: listing.health.gaps,
            ..Default::default()
        };
        // Oldest stop time first: the last one of each type wins.
        for b in &listing.backups {
            let (Some(start), Some(stop)) = (parse_time(&b.start_time), parse_time(&b.stop_time)) else { continue };
            let last = LastBackup {
                id: b.id.clone(),
                stop_time: stop,
                duration_seconds: (stop - start).num_milliseconds() as f64 / 1000.0,
            };
            s.last_backup.insert(b.kind.as_str().to_string(), last.clone());
            s.newest_backup = Some(last);
        }
        if let (Some(name), Some(t)) = (&listing.health.newest_segment, &listing.health.newest_segment_time) {
            if let Some(t) = parse_time(t) {
                s.newest_segment = Some((name.clone(), t));
            }
        }
        s.last_drill =
            drills.values().filter_map(|d| parse_time(&d.finished).map(|t| (t, d))).max_by_key(|(t, _)| *t).map(
                |(finished, d)| LastDrill {
                    backup: d.backup.to_string(),
                    finished,
                    passed: d.passed,
                    findings: d.findings(),
                },
            );
        Ok(s)
    }
}

/// How one job last ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobOutcome {
    /// How.
    pub ended: Ended,
    /// When.
    pub at: DateTime<Utc>,
    /// How long it ran.
    pub duration: Duration,
}

/// Everything `/metrics` and `/health` answer from.
#[derive(Debug, Default)]
pub struct State {
    /// The last successful read of the repository, and when it was made.
    pub snapshot: Option<(Snapshot, DateTime<Utc>)>,
    /// Why the last read failed, if it did.
    pub read_error: Option<String>,
    /// The last outcome of each job.
    pub jobs: BTreeMap<Job, JobOutcome>,
    /// The job running now, since when.
    pub running: Option<(Job, Instant)>,
    /// Jobs waiting.
    pub queued: usize,
    /// The ages `/health` accepts.
    pub health: HealthOptions,
    /// The data directory, for the archive backlog.
    pub pgdata: Option<PathBuf>,
}

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn family(registry: &mut Registry, name: &str, help: &str, values: &[(Labels, f64)]) {
    let f: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
    for (labels, v) in values {
        f.get_or_create(labels).set(*v);
    }
    registry.register(name, help, f);
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_string(), value.to_string())]
}

/// The metrics page (OpenMetrics text, which Prometheus reads), at `now`.
/// A metric whose value is unknown (no backup yet, no verify run yet) is
/// left out rather than given a made-up value.
pub fn render(state: &State, now: DateTime<Utc>) -> String {
    let mut r = Registry::default();
    gauge(
        &mut r,
        "pgwal_repository_up",
        "Whether the last read of the repository succeeded",
        f64::from(u8::from(state.read_error.is_none() && state.snapshot.is_some())),
    );
    if let Some((s, read_at)) = &state.snapshot {
        gauge(
            &mut r,
            "pgwal_repository_read_timestamp_seconds",
            "When the repository was last read successfully",
            seconds(*read_at),
        );
        let per_type: Vec<(Labels, f64)> =
            s.last_backup.iter().map(|(t, b)| (label("type", t), seconds(b.stop_time))).collect();
        family(
            &mut r,
            "pgwal_backup_last_success_timestamp_seconds",
            "Stop time of the newest complete backup of each type",
            &per_type,
        );
        let durations: Vec<(Labels, f64)> =
            s.last_backup.iter().map(|(t, b)| (label("type", t), b.duration_seconds)).collect();
        family(
            &mut r,
            "pgwal_backup_last_duration_seconds",
            "Start to stop time of the newest complete backup of each type",
            &durations,
        );
        gauge(&mut r, "pgwal_backups", "Complete backups in the repository", s.backups as f64);
        gauge(
            &mut r,
            "pgwal_backups_incomplete",
            "Backup directories without a manifest (running or interrupted)",
            s.incomplete as f64,
        );
        gauge(
            &mut r,
            "pgwal_repository_stored_bytes",
            "Bytes stored in the packs of the complete backups (archived WAL not included)",
            s.stored_bytes as f64,
        );
        if let Some((_, t)) = &s.newest_segment {
            gauge(
                &mut r,
                "pgwal_archive_newest_segment_timestamp_seconds",
                "When the newest archived WAL segment was stored",
                seconds(*t),
            );
            gauge(
                &mut r,
                "pgwal_archive_newest_segment_age_seconds",
                "Seconds since the newest archived WAL segment was stored",
                (now - *t).num_milliseconds().max(0) as f64 / 1000.0,
            );
        }
        gauge(&mut r, "pgwal_archive_gaps", "Runs of missing WAL segments over all timelines", s.gaps as f64);
        if let Some(d) = &s.last_drill {
            gauge(
                &mut r,
                "pgwal_drill_last_success",
                "Whether the newest drill passed every check (1) or not (0)",
                f64::from(u8::from(d.passed)),
            );
            gauge(&mut r, "pgwal_drill_last_timestamp_seconds", "When the newest drill finished", seconds(d.finished));
        }
    }
    if let Some(pgdata) = &state.pgdata {
        if let Some(b) = backlog::scan(pgdata, &pgdata.join("pg_wal")) {
            gauge(
                &mut r,
                "pgwal_archive_backlog_files",
                "WAL files PostgreSQL has finished but not yet archived (.ready)",
                b.ready_files as f64,
            );
            gauge(&mut r, "pgwal_archive_backlog_bytes", "Bytes of those files", b.ready_bytes as f64);
            gauge(
                &mut r,
                "pgwal_archive_backlog_lag_seconds",
                "How long the oldest of them has waited",
                b.lag_seconds.unwrap_or(0.0),
            );
        }
    }
    if let Some(v) = state.jobs.get(&Job::Verify) {
        gauge(
            &mut r,
            "pgwal_verify_last_success",
            "Whether the last verify job of this daemon found no error (1) or not (0)",
            f64::from(u8::from(v.ended.success())),
        );
        gauge(
            &mut r,
            "pgwal_verify_last_timestamp_seconds",
            "When the last verify job of this daemon ended",
            seconds(v.at),
        );
    }
    let ends = |f: &dyn Fn(&JobOutcome) -> f64| -> Vec<(Labels, f64)> {
        state.jobs.iter().map(|(j, o)| (label("job", j.name()), f(o))).collect()
    };
    family(
        &mut r,
        "pgwal_job_last_exit_code",
        "Exit status of each job's last run (128 + signal when killed)",
        &ends(&|o| f64::from(o.ended.code())),
    );
    family(&mut r, "pgwal_job_last_end_timestamp_seconds", "When each job's last run ended", &ends(&|o| seconds(o.at)));
    family(
        &mut r,
        "pgwal_job_last_duration_seconds",
        "How long each job's last run took",
        &ends(&|o| o.duration.as_secs_f64()),
    );
    let running: Vec<(Labels, f64)> = state.running.iter().map(|(j, _)| (label("job", j.name()), 1.0)).collect();
    family(&mut r, "pgwal_job_running", "1 for the job running now", &running);
    gauge(&mut r, "pgwal_jobs_queued", "Jobs waiting for the running one", state.queued as f64);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s).expect("time")
    }

    #[test]
    fn page_names_what_is_known_and_ages_at_scrape_time() {
        let mut state = State::default();
        let empty = render(&state, Utc::now());
        assert!(empty.contains("pgwal_repository_up 0"), "{empty}");
        assert!(!empty.contains("pgwal_backup_last_success_timestamp_seconds{"), "{empty}");
        assert!(empty.trim_end().ends_with("# EOF"), "{empty}");

        let backup =
            LastBackup { id: "20261123T074000F".into(), stop_time: t("2026-11-23T07:41:00Z"), duration_seconds: 60.0 };
        let snapshot = Snapshot {
            last_backup: BTreeMap::from([("full".to_string(), backup.clone())]),
            newest_backup: Some(backup),
            backups: 1,
            stored_bytes: 12345,
            newest_segment: Some(("000000010000000000000009".into(), t("2026-11-23T08:00:00Z"))),
            gaps: 2,
            last_drill: Some(LastDrill {
                backup: "20261123T074000F".into(),
                finished: t("2026-11-23T09:00:00Z"),
                passed: false,
                findings: vec!["pg_amcheck: 1 corrupt page".into()],
            }),
            ..Default::default()
        };
        state.snapshot = Some((snapshot, t("2026-11-23T09:00:00Z")));
        state.jobs.insert(
            Job::Verify,
            JobOutcome { ended: Ended::Exited(3), at: t("2026-11-23T09:30:00Z"), duration: Duration::from_secs(5) },
        );
        let page = render(&state, t("2026-11-23T08:01:30Z"));
        for line in [
            "pgwal_repository_up 1",
            "pgwal_backup_last_success_timestamp_seconds{type=\"full\"} 1795419660",
            "pgwal_backup_last_duration_seconds{type=\"full\"} 60",
            "pgwal_archive_newest_segment_age_seconds 90",
            "pgwal_archive_gaps 2",
            "pgwal_repository_stored_bytes 12345",
            "pgwal_verify_last_success 0",
            "pgwal_drill_last_success 0",
            "pgwal_job_last_exit_code{job=\"verify\"} 3",
        ] {
            assert!(page.lines().any(|l| l.starts_with(line)), "{line} in:\n{page}");
        }
    }
}
