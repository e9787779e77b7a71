//! PostgreSQL's recovery settings as types: the recovery target
//! (`recovery_target_time`, `_lsn`, `_xid`, `_name`, `recovery_target =
//! 'immediate'`), the action at the target, the target timeline, and how they
//! are written into `postgresql.auto.conf` (earlier recovery settings there
//! are commented out, so that one restore's target never leaks into the next).
//! Pure: strings in, typed values and text out.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};

use super::{Lsn, TimelineId};

/// A point in time to recover to, normalised to UTC (microsecond precision, as PostgreSQL keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetTime {
    /// The instant.
    pub at: DateTime<Utc>,
    /// Whether the text named a time zone; without one it was read as UTC.
    pub zone_given: bool,
}

impl TargetTime {
    /// The value for `recovery_target_time`: UTC with an explicit `+00`, so
    /// the server's `TimeZone` setting cannot change its meaning.
    pub fn to_postgres(&self) -> String {
        if self.at.nanosecond() == 0 {
            self.at.format("%Y-%m-%d %H:%M:%S+00").to_string()
        } else {
            self.at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
        }
    }
}

impl fmt::Display for TargetTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_postgres())
    }
}

/// What to stop recovery at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// As soon as the backup is consistent (`recovery_target = 'immediate'`).
    Immediate,
    /// Just before the first commit after this time (`recovery_target_time`).
    Time(TargetTime),
    /// After the WAL record at this LSN (`recovery_target_lsn`).
    Lsn(Lsn),
    /// After this transaction commits (`recovery_target_xid`).
    Xid(u64),
    /// At this restore point (`recovery_target_name`, from `pg_create_restore_point`).
    Name(String),
}

/// The recovery target keys; exactly one may be non-empty.
pub const TARGET_KEYS: [&str; 5] =
    ["recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid"];

impl RecoveryTarget {
    /// The setting that names this target and its value.
    pub fn setting(&self) -> (&'static str, String) {
        match self {
            RecoveryTarget::Immediate => ("recovery_target", "immediate".into()),
            RecoveryTarget::Time(t) => ("recovery_target_time", t.to_postgres()),
            RecoveryTarget::Lsn(l) => ("recovery_target_lsn", l.to_string()),
            RecoveryTarget::Xid(x) => ("recovery_target_xid", x.to_string()),
            RecoveryTarget::Name(n) => ("recovery_target_name", n.clone()),
        }
    }
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Immediate => f.write_str("the end of the backup (immediate)"),
            RecoveryTarget::Time(t) => write!(f, "time {t}"),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point '{n}'"),
        }
    }
}

/// What the server does on reaching the target (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Stay in recovery, read-only, until `pg_wal_replay_resume()` (PostgreSQL's default).
    Pause,
    /// End recovery and accept writes on a new timeline.
    Promote,
    /// Shut down; starting again replays to the same target.
    Shutdown,
}

impl TargetAction {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Which timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The newest timeline in the archive (PostgreSQL's default).
    Latest,
    /// The timeline the backup was taken on.
    Current,
    /// This timeline.
    Id(TimelineId),
}

impl fmt::Display for TargetTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetTimeline::Latest => f.write_str("latest"),
            TargetTimeline::Current => f.write_str("current"),
            TargetTimeline::Id(t) => write!(f, "{t}"),
        }
    }
}

/// Why a recovery setting's text is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a timestamp in a form pgwal reads.
    #[error("invalid target time '{0}' (expected e.g. 2026-11-23 14:03:27+01 or 2026-11-23T13:03:27Z)")]
    Time(String),
    /// Not a transaction ID.
    #[error("invalid target transaction ID '{0}' (expected a number such as txid_current() returns, at least 3)")]
    Xid(String),
    /// Not a restore point name.
    #[error("invalid restore point name '{0}' (1 to 63 bytes, no control characters)")]
    Name(String),
    /// Not `pause`, `promote` or `shutdown`.
    #[error("invalid target action '{0}' (expected pause, promote or shutdown)")]
    Action(String),
    /// Not `latest`, `current` or a timeline number.
    #[error("invalid target timeline '{0}' (expected latest, current or a timeline number such as 2)")]
    Timeline(String),
}

/// Parses a target time: RFC 3339 (`2026-11-23T13:03:27Z`) or PostgreSQL's
/// timestamp syntax (`2026-11-23 14:03:27+01`, `...:27.5+01:30`, `... UTC`).
/// Seconds are optional. Text without a time zone means UTC.
pub fn parse_target_time(text: &str) -> Result<TargetTime, TargetError> {
    let err = || TargetError::Time(text.to_string());
    let s = text.trim();
    let date = s.get(..10).ok_or_else(err)?;
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| err())?;
    let rest = &s[10..];
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(err)?.trim_start();
    let time_len = rest.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_len);
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(time, "%H:%M"))
        .map_err(|_| err())?;
    let local = NaiveDateTime::new(date, time);
    let zone = zone.trim();
    let (offset, zone_given) = match zone {
        "" => (0, false),
        "Z" | "z" | "UTC" | "utc" | "GMT" | "gmt" => (0, true),
        _ => (parse_offset(zone).ok_or_else(err)?, true),
    };
    let offset = FixedOffset::east_opt(offset).ok_or_else(err)?;
    let at = offset.from_local_datetime(&local).single().ok_or_else(err)?.with_timezone(&Utc);
    // PostgreSQL keeps microseconds.
    let at = at.with_nanosecond(at.nanosecond() / 1000 * 1000).ok_or_else(err)?;
    Ok(TargetTime { at, zone_given })
}

/// `+01`, `+0130`, `+01:30`, `-05` in seconds east of UTC.
fn parse_offset(zone: &str) -> Option<i32> {
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let digits: String = match digits.split_once(':') {
        Some((h, m)) if h.len() == 2 && m.len() == 2 => format!("{h}{m}"),
        Some(_) => return None,
        None => digits.to_string(),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (digits[..2].parse::<i32>().ok()?, digits[2..].parse::<i32>().ok()?),
        _ => return None,
    };
    (h <= 15 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// Parses a target transaction ID (what `txid_current()` returns; the epoch may be included).
pub fn parse_xid(text: &str) -> Result<u64, TargetError> {
    let t = text.trim();
    match t.parse::<u64>() {
        Ok(x) if x >= 3 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(x),
        _ => Err(TargetError::Xid(text.to_string())),
    }
}

/// Checks a restore point name as `pg_create_restore_point` accepts it.
pub fn parse_restore_point(text: &str) -> Result<String, TargetError> {
    if text.is_empty() || text.len() > 63 || text.chars().any(char::is_control) {
        return Err(TargetError::Name(text.to_string()));
    }
    Ok(text.to_string())
}

/// Parses `pause`, `promote` or `shutdown`.
pub fn parse_action(text: &str) -> Result<TargetAction, TargetError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "pause" => Ok(TargetAction::Pause),
        "promote" => Ok(TargetAction::Promote),
        "shutdown" => Ok(TargetAction::Shutdown),
        _ => Err(TargetError::Action(text.to_string())),
    }
}

/// Parses `latest`, `current` or a timeline number (decimal, or hex with `0x`).
pub fn parse_timeline(text: &str) -> Result<TargetTimeline, TargetError> {
    let t = text.trim().to_ascii_lowercase();
    let n = match t.as_str() {
        "latest" => return Ok(TargetTimeline::Latest),
        "current" => return Ok(TargetTimeline::Current),
        _ => match t.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => t.parse::<u32>().ok(),
        },
    };
    match n {
        Some(n) if n >= 1 => Ok(TargetTimeline::Id(TimelineId(n))),
        _ => Err(TargetError::Timeline(text.to_string())),
    }
}

/// A string literal for postgresql.conf: single quotes, inner quotes doubled
/// and backslashes escaped (the config parser reads C-style escapes).
pub fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Keys a restore manages: earlier settings of them in `postgresql.auto.conf`
/// are commented out before the new ones are appended.
pub const MANAGED_KEYS: [&str; 13] = [
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "primary_conninfo",
    "primary_slot_name",
];

/// The key a configuration line sets, lower-cased; `None` for blank lines and comments.
fn line_key(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(t.len());
    Some(t[..end].to_ascii_lowercase())
}

/// Rewrites `postgresql.auto.conf`: every line setting one of
/// [`MANAGED_KEYS`] is commented out (kept visible, marked with `stamp`), then
/// `settings` are appended as one block. Other lines stay as they were.
pub fn rewrite_auto_conf(existing: &str, settings: &[(&str, String)], stamp: &str) -> String {
    let mut out = String::with_capacity(existing.len() + 512);
    for line in existing.lines() {
        match line_key(line) {
            Some(k) if MANAGED_KEYS.contains(&k.as_str()) => {
                out.push_str(&format!("# removed by pgwal restore ({stamp}): {line}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str(&format!("# recovery settings written by pgwal restore ({stamp})\n"));
    for (key, value) in settings {
        out.push_str(&format!("{key} = {}\n", conf_quote(value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("valid").with_timezone(&Utc)
    }

    #[test]
    fn target_times_in_both_syntaxes() {
        let cases = [
            ("2026-11-23T13:03:27Z", "2026-11-23T13:03:27Z", true),
            ("2026-11-23T14:03:27+01:00", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 14:03:27+01", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 14:03:27 +01", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 14:33:27+0130", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 08:03:27-05", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 13:03:27 UTC", "2026-11-23T13:03:27Z", true),
            ("2026-11-23 13:03:27", "2026-11-23T13:03:27Z", false),
            ("2026-11-23 13:03", "2026-11-23T13:03:00Z", false),
            ("2026-11-23 13:03:27.123456789+00", "2026-11-23T13:03:27.123456Z", true),
            (" 2026-11-23t13:03:27.5z ", "2026-11-23T13:03:27.5Z", true),
        ];
        for (text, want, zone) in cases {
            let t = parse_target_time(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.at, utc(want), "{text}");
            assert_eq!(t.zone_given, zone, "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-11-23",
            "2026-13-23 10:00:00",
            "2026-11-23 25:00:00",
            "2026-11-23 10:00:00+2500",
            "2026-11-23 10:00:00 CET",
            "2026-11-23 10:00:00+1:30",
            "2026-11-23X10:00:00",
            "1700000000",
        ] {
            assert!(parse_target_time(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn target_time_is_written_in_utc_for_postgres() {
        let t = parse_target_time("2026-11-23 14:03:27+01").expect("valid");
        assert_eq!(t.to_postgres(), "2026-11-23 13:03:27+00");
        let t = parse_target_time("2026-11-23 14:03:27.25+01").expect("valid");
        assert_eq!(t.to_postgres(), "2026-11-23 13:03:27.250000+00");
        // What pgwal writes, it reads back as the same instant.
        assert_eq!(parse_target_time(&t.to_postgres()).expect("round trip").at, t.at);
    }

    #[test]
    fn other_targets() {
        assert_eq!(parse_xid("754"), Ok(754));
        assert_eq!(parse_xid("4294967996"), Ok(4_294_967_996));
        for bad in ["", "0", "2", "-5", "12a", "+7", "1e3"] {
            assert!(parse_xid(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_restore_point("before-upgrade"), Ok("before-upgrade".into()));
        assert!(parse_restore_point("").is_err());
        assert!(parse_restore_point(&"x".repeat(64)).is_err());
        assert!(parse_restore_point("a\nb").is_err());
        assert_eq!(parse_action("Promote"), Ok(TargetAction::Promote));
        assert!(parse_action("resume").is_err());
        assert_eq!(parse_timeline("latest"), Ok(TargetTimeline::Latest));
        assert_eq!(parse_timeline("current"), Ok(TargetTimeline::Current));
        assert_eq!(parse_timeline("2"), Ok(TargetTimeline::Id(TimelineId(2))));
        assert_eq!(parse_timeline("0x1A"), Ok(TargetTimeline::Id(TimelineId(26))));
        for bad in ["0", "-1", "newest", ""] {
            assert!(parse_timeline(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_of_each_target() {
        let lsn: Lsn = "0/3000060".parse().expect("lsn");
        assert_eq!(RecoveryTarget::Lsn(lsn).setting(), ("recovery_target_lsn", "0/3000060".into()));
        assert_eq!(RecoveryTarget::Immediate.setting(), ("recovery_target", "immediate".into()));
        assert_eq!(RecoveryTarget::Xid(9).setting(), ("recovery_target_xid", "9".into()));
        assert_eq!(RecoveryTarget::Name("a'b".into()).setting().1, "a'b");
    }

    #[test]
    fn quoting() {
        assert_eq!(conf_quote("plain"), "'plain'");
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote(r"C:\x"), r"'C:\\x'");
    }

    #[test]
    fn auto_conf_rewrite_comments_out_earlier_recovery_settings() {
        let existing = "# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'cp /x/%f %p'\n\
                        Recovery_Target_Time='2020-01-01'\nprimary_conninfo 'host=a'\n#recovery_target_xid = '5'\n";
        let out = rewrite_auto_conf(
            existing,
            &[("restore_command", "pgwal fetch %f %p".into()), ("recovery_target_name", "x".into())],
            "2026-11-23T00:00:00Z",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# Do not edit this file manually!");
        assert_eq!(lines[1], "work_mem = '8MB'");
        assert!(
            lines[2].starts_with("# removed by pgwal restore") && lines[2].ends_with("restore_command = 'cp /x/%f %p'")
        );
        assert!(lines[3].starts_with("# removed by pgwal restore"));
        assert!(lines[4].starts_with("# removed by pgwal restore"));
        assert_eq!(lines[5], "#recovery_target_xid = '5'");
        assert!(lines[6].starts_with("# recovery settings written by pgwal restore"));
        assert_eq!(lines[7], "restore_command = 'pgwal fetch %f %p'");
        assert_eq!(lines[8], "recovery_target_name = 'x'");
        // A second restore comments out the first one's settings.
        let again = rewrite_auto_conf(&out, &[("restore_command", "y".into())], "later");
        let active: Vec<&str> = again.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(active, ["work_mem = '8MB'", "restore_command = 'y'"]);
        // A file without a final newline still gets whole lines.
        assert!(rewrite_auto_conf("a = 1", &[], "s").starts_with("a = 1\n#"));
    }
}
