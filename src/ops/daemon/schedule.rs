//! When each scheduled job is due next, in local time (as cron has it).
//! The daemon wakes at the earliest one, and at least every minute, so a
//! clock that jumps (a DST change, a resumed VM) is followed.

use chrono::{DateTime, Local};

use super::jobs::Job;

/// The next due time of each scheduled job.
#[derive(Debug, Clone)]
pub struct Timers {
    entries: Vec<(Job, croner::Cron, Option<DateTime<Local>>)>,
}

impl Timers {
    /// The timers of `schedule`, each first due after `now`.
    pub fn new(schedule: &[(Job, croner::Cron)], now: DateTime<Local>) -> Timers {
        let entries = schedule.iter().map(|(job, cron)| (*job, cron.clone(), next_after(cron, now))).collect();
        Timers { entries }
    }

    /// The earliest due time.
    pub fn next_wake(&self) -> Option<DateTime<Local>> {
        self.entries.iter().filter_map(|(_, _, next)| *next).min()
    }

    /// The jobs due at `now` (in schedule order), each set to its next time after `now`.
    pub fn due(&mut self, now: DateTime<Local>) -> Vec<Job> {
        let mut due = Vec::new();
        for (job, cron, next) in &mut self.entries {
            if next.is_some_and(|n| n <= now) {
                due.push(*job);
                *next = next_after(cron, now);
            }
        }
        due
    }

    /// "full at 2026-11-24 01:00, verify at ..." for the start line.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(job, cron, next)| match next {
                Some(n) => format!("{} '{}' (next {})", job.name(), cron.pattern, n.format("%Y-%m-%d %H:%M %Z")),
                None => format!("{} '{}' (never)", job.name(), cron.pattern),
            })
            .collect();
        if parts.is_empty() {
            "no jobs".into()
        } else {
            parts.join(", ")
        }
    }
}

fn next_after(cron: &croner::Cron, now: DateTime<Local>) -> Option<DateTime<Local>> {
    cron.find_next_occurrence(&now, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::daemon::parse_cron;
    use chrono::TimeZone;

    #[test]
    fn due_jobs_fire_once_and_move_on() {
        let at = |h: u32, m: u32, s: u32| Local.with_ymd_and_hms(2026, 11, 24, h, m, s).single().expect("time");
        let schedule = vec![
            (Job::Full, parse_cron("0 1 * * *").expect("cron")),
            (Job::Verify, parse_cron("*/30 * * * *").expect("cron")),
        ];
        let mut t = Timers::new(&schedule, at(0, 50, 10));
        assert_eq!(t.next_wake(), Some(at(1, 0, 0)));
        assert!(t.due(at(0, 59, 59)).is_empty());
        assert_eq!(t.due(at(1, 0, 0)), vec![Job::Full, Job::Verify]);
        assert_eq!(t.next_wake(), Some(at(1, 30, 0)));
        assert!(t.due(at(1, 0, 1)).is_empty(), "not twice for one minute");
        assert_eq!(t.due(at(2, 10, 0)), vec![Job::Verify], "a missed time fires once, late");
        assert_eq!(t.next_wake(), Some(at(2, 30, 0)));
    }
}
