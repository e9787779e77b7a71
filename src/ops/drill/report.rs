//! How drill results read: the lines `pgwal drill` prints, and the summary
//! of the newest drill per backup that `pgwal list` shows (`drills` in
//! `list --json`, a stable interface: fields are only ever added).

use serde::Serialize;

use crate::repo::drill::{CheckOutcome, DrillRecord};

/// The newest drill of one backup, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrillSummary {
    /// The backup drilled.
    pub backup: String,
    /// When the drill started (RFC 3339 UTC).
    pub started: String,
    /// When it finished.
    pub finished: String,
    /// How long it took, whole seconds.
    pub duration_seconds: u64,
    /// The recovery target, in words.
    pub target: String,
    /// Where recovery ended (`X/Y`), if it got that far.
    pub reached_lsn: Option<String>,
    /// On which timeline.
    pub reached_timeline: Option<u32>,
    /// The time of the last replayed transaction, if PostgreSQL reported one.
    pub reached_time: Option<String>,
    /// Whether every check passed (or was skipped).
    pub passed: bool,
    /// The failed checks, one line each.
    pub findings: Vec<String>,
}

impl DrillSummary {
    /// The summary of `r`.
    pub fn of(r: &DrillRecord) -> DrillSummary {
        DrillSummary {
            backup: r.backup.to_string(),
            started: r.started.clone(),
            finished: r.finished.clone(),
            duration_seconds: r.duration_seconds.max(0.0).round() as u64,
            target: r.target.clone(),
            reached_lsn: r.reached_lsn.clone(),
            reached_timeline: r.reached_timeline,
            reached_time: r.reached_time.clone(),
            passed: r.passed,
            findings: r.findings(),
        }
    }

    /// One line for `list`'s text output.
    pub fn line(&self) -> String {
        let verdict = if self.passed { "passed".to_string() } else { format!("FAILED ({})", self.findings.join("; ")) };
        let reached = match (&self.reached_lsn, self.reached_timeline) {
            (Some(l), Some(t)) => format!(", reached {l} on timeline {t}"),
            (Some(l), None) => format!(", reached {l}"),
            _ => String::new(),
        };
        format!(
            "drill of {} at {}: {verdict} in {}{reached} (target: {})",
            self.backup,
            self.started.trim_end_matches('Z').replacen('T', " ", 1),
            crate::human::human_age(self.duration_seconds as i64),
            self.target
        )
    }
}

fn outcome_word(o: CheckOutcome) -> &'static str {
    match o {
        CheckOutcome::Passed => "passed",
        CheckOutcome::Failed => "FAILED",
        CheckOutcome::Skipped => "skipped",
    }
}

/// What `pgwal drill` prints: one line per check, then the verdict.
pub fn render_text(r: &DrillRecord) -> String {
    let width = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in &r.checks {
        let detail = if c.detail.is_empty() { String::new() } else { format!("  {}", c.detail) };
        out.push_str(&format!("{:<7}  {:<width$}{detail}\n", outcome_word(c.outcome), c.name));
    }
    out.push_str(&format!(
        "drill of backup {} {} in {:.0}s (target: {})\n",
        r.backup,
        if r.passed { "passed" } else { "FAILED" },
        r.duration_seconds,
        r.target
    ));
    out
}

/// The record as `--json` prints it.
pub fn render_json(r: &DrillRecord) -> String {
    serde_json::to_string_pretty(r).expect("invariant: plain structs serialize") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::drill::{DrillCheck, DRILL_FORMAT};

    #[test]
    fn text_and_summary() {
        let r = DrillRecord {
            format: DRILL_FORMAT,
            backup: "20261123T074000F".parse().expect("id"),
            started: "2026-11-24T03:00:00Z".into(),
            finished: "2026-11-24T03:00:42Z".into(),
            duration_seconds: 42.4,
            target: "newest archived WAL on timeline 1 (000000010000000000000009)".into(),
            reached_lsn: Some("0/9000060".into()),
            reached_timeline: Some(1),
            reached_time: None,
            passed: false,
            checks: vec![
                DrillCheck { name: "restore".into(), outcome: CheckOutcome::Passed, detail: String::new() },
                DrillCheck {
                    name: "pg_amcheck".into(),
                    outcome: CheckOutcome::Failed,
                    detail: "1 corrupt page".into(),
                },
            ],
        };
        let text = render_text(&r);
        assert!(text.contains("FAILED   pg_amcheck  1 corrupt page"), "{text}");
        assert!(text.ends_with("drill of backup 20261123T074000F FAILED in 42s (target: newest archived WAL on timeline 1 (000000010000000000000009))\n"), "{text}");
        let s = DrillSummary::of(&r);
        assert_eq!((s.duration_seconds, s.findings.clone()), (42, vec!["pg_amcheck: 1 corrupt page".to_string()]));
        assert_eq!(
            s.line(),
            "drill of 20261123T074000F at 2026-11-24 03:00:00: FAILED (pg_amcheck: 1 corrupt page) in 42s, reached 0/9000060 on timeline 1 (target: newest archived WAL on timeline 1 (000000010000000000000009))"
        );
    }
}
