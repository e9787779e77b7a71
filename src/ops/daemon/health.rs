//! `GET /health`: healthy when the newest backup, the newest archived
//! segment and the newest drill are younger than the `[health]` ages (and
//! that drill passed); a part without a configured age is not checked.
//! The answer for a load balancer or a simple probe: one line saying why not.

use chrono::{DateTime, Utc};

use super::metrics::State;
use crate::human::human_age;

/// `Ok(summary)` when healthy, else `Err(reason)`, each one line.
pub fn check(state: &State, now: DateTime<Utc>) -> Result<String, String> {
    let h = &state.health;
    if h.max_backup_age.is_none() && h.max_archive_age.is_none() && h.max_drill_age.is_none() {
        return Ok("ok (no [health] ages configured)".into());
    }
    let Some((s, _)) = &state.snapshot else {
        return Err(match &state.read_error {
            Some(e) => format!("cannot read the repository: {e}"),
            None => "the repository has not been read yet".into(),
        });
    };
    let age = |t: DateTime<Utc>| (now - t).num_seconds().max(0);
    let too_old = |what: &str, secs: i64, max: std::time::Duration, key: &str| {
        format!("{what} is {} old, more than health.{key} ({})", human_age(secs), humantime::format_duration(max))
    };
    let mut parts = Vec::new();
    if let Some(max) = h.max_backup_age {
        let Some(b) = &s.newest_backup else { return Err("no complete backup in the repository".into()) };
        let secs = age(b.stop_time);
        if secs as u64 > max.as_secs() {
            return Err(too_old(&format!("the newest backup {}", b.id), secs, max, "max_backup_age"));
        }
        parts.push(format!("backup {} {} old", b.id, human_age(secs)));
    }
    if let Some(max) = h.max_archive_age {
        let Some((name, t)) = &s.newest_segment else { return Err("no archived WAL segment in the repository".into()) };
        let secs = age(*t);
        if secs as u64 > max.as_secs() {
            return Err(too_old(&format!("the newest archived segment {name}"), secs, max, "max_archive_age"));
        }
        parts.push(format!("segment {name} {} old", human_age(secs)));
    }
    if let Some(max) = h.max_drill_age {
        let Some(d) = &s.last_drill else { return Err("no drill recorded in the repository".into()) };
        if !d.passed {
            return Err(format!("the newest drill (of backup {}) failed: {}", d.backup, d.findings.join("; ")));
        }
        let secs = age(d.finished);
        if secs as u64 > max.as_secs() {
            return Err(too_old(&format!("the newest drill (of backup {})", d.backup), secs, max, "max_drill_age"));
        }
        parts.push(format!("drill {} old", human_age(secs)));
    }
    Ok(format!("ok: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::daemon::HealthOptions;
    use crate::ops::daemon::metrics::{LastBackup, LastDrill, Snapshot};
    use std::time::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    #[test]
    fn each_configured_age_is_checked_with_a_reason() {
        let now = t("2026-11-24T08:00:00Z");
        let mut state = State {
            health: HealthOptions {
                max_backup_age: Some(Duration::from_secs(26 * 3600)),
                max_archive_age: Some(Duration::from_secs(600)),
                max_drill_age: None,
            },
            ..Default::default()
        };
        assert_eq!(check(&state, now).unwrap_err(), "the repository has not been read yet");
        state.snapshot = Some((Snapshot::default(), now));
        assert_eq!(check(&state, now).unwrap_err(), "no complete backup in the repository");
        let b =
            LastBackup { id: "20261123T074000F".into(), stop_time: t("2026-11-23T07:41:00Z"), duration_seconds: 60.0 };
        let mut s = Snapshot { newest_backup: Some(b), ..Default::default() };
        s.newest_segment = Some(("000000010000000000000009".into(), t("2026-11-24T07:55:00Z")));
        state.snapshot = Some((s.clone(), now));
        assert!(check(&state, now).expect("healthy").starts_with("ok: backup 20261123T074000F"));
        let later = t("2026-11-24T10:00:00Z");
        let e = check(&state, later).unwrap_err();
        assert!(e.contains("the newest backup 20261123T074000F is") && e.contains("max_backup_age (1day 2h)"), "{e}");
        state.health.max_drill_age = Some(Duration::from_secs(8 * 86400));
        assert_eq!(check(&state, now).unwrap_err(), "no drill recorded in the repository");
        s.last_drill = Some(LastDrill {
            backup: "20261123T074000F".into(),
            finished: now,
            passed: false,
            findings: vec!["pg_amcheck: 1 corrupt page".into()],
        });
        state.snapshot = Some((s, now));
        let e = check(&state, now).unwrap_err();
        assert!(e.contains("failed: pg_amcheck: 1 corrupt page"), "{e}");
    }
}
