//! The checks of a drill, each ending in a [`DrillCheck`]: where recovery
//! ended against where it should have, whether the server answers queries,
//! pg_amcheck, the clean shutdown and pg_checksums. What PostgreSQL's own
//! tools say is the verdict; pgwal only runs them and reads their output.

use std::process::Command;
use std::time::{Duration, Instant};

use super::binaries::Binaries;
use super::scratch::Scratch;
use super::server::{self, PORT};
use crate::pg::recovery::RecoveryTarget;
use crate::pg::{Lsn, TimelineId};
use crate::repo::drill::{CheckOutcome, DrillCheck};

/// A check that passed, failed or was skipped.
pub fn check(name: &str, outcome: CheckOutcome, detail: impl Into<String>) -> DrillCheck {
    DrillCheck { name: name.into(), outcome, detail: one_line(&detail.into()) }
}

fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 400 {
        format!("{}...", joined.chars().take(400).collect::<String>())
    } else {
        joined
    }
}

/// Where recovery should end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The newest archived segment on the recovery's timeline chain.
    EndOfArchive {
        /// Its timeline.
        timeline: TimelineId,
        /// Its name.
        segment: String,
        /// Where it starts: recovery must have replayed into it.
        start: Lsn,
    },
    /// A target the user named.
    Target(RecoveryTarget),
}

impl Expect {
    /// The target in words, as the record keeps it.
    pub fn describe(&self) -> String {
        match self {
            Expect::EndOfArchive { timeline, segment, .. } => {
                format!("newest archived WAL on timeline {} ({segment})", timeline.0)
            }
            Expect::Target(t) => t.to_string(),
        }
    }
}

/// Where recovery ended, as the server reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    /// `pg_last_wal_replay_lsn()`: the end of the last record replayed.
    pub lsn: Option<Lsn>,
    /// The timeline that record was on (the parent in the new timeline's history file).
    pub timeline: Option<TimelineId>,
    /// `pg_last_xact_replay_timestamp()`, RFC 3339 UTC.
    pub time: Option<String>,
}

/// The `recovery_target` check.
pub fn judge_target(expect: &Expect, reached: &Reached, log: &str) -> DrillCheck {
    const NAME: &str = "recovery_target";
    let at = match (reached.lsn, reached.timeline) {
        (Some(l), Some(t)) => format!("{l} on timeline {}", t.0),
        (Some(l), None) => format!("{l}"),
        _ => "an unknown position".into(),
    };
    match expect {
        Expect::EndOfArchive { timeline, segment, start } => {
            let on_timeline = reached.timeline.is_none_or(|t| t == *timeline);
            match reached.lsn {
                Some(l) if l >= *start && on_timeline => {
                    check(NAME, CheckOutcome::Passed, format!("reached {at}, in or after the newest archived segment {segment}"))
                }
                _ => check(
                    NAME,
                    CheckOutcome::Failed,
                    format!(
                        "recovery ended at {at}, before the newest archived segment {segment} (from {start} on timeline {}): \
                         archived WAL is missing or unreadable",
                        timeline.0
                    ),
                ),
            }
        }
        Expect::Target(t) => {
            let stopped =
                log.lines().rev().find_map(|l| l.find("recovery stopping").map(|i| l[i..].trim().to_string()));
            let lsn_short = matches!((t, reached.lsn), (RecoveryTarget::Lsn(want), Some(got)) if got < *want);
            match stopped {
                Some(line) if !lsn_short => check(NAME, CheckOutcome::Passed, format!("reached {at}: {line}")),
                _ => check(
                    NAME,
                    CheckOutcome::Failed,
                    format!("recovery ended at {at} without reaching {t} (PostgreSQL logged no 'recovery stopping')"),
                ),
            }
        }
    }
}

/// A session on the throwaway server, over its socket.
pub struct Sql {
    client: tokio_postgres::Client,
    /// The role connected as.
    pub user: String,
    /// The database connected to.
    pub dbname: String,
}

/// The roles tried: the OS user (libpq's default), then `postgres`.
fn users() -> Vec<String> {
    let mut out = Vec::new();
    if let Some(me) = crate::storage::owner::user_name(crate::storage::owner::effective_uid()) {
        out.push(me);
    }
    if !out.iter().any(|u| u == "postgres") {
        out.push("postgres".into());
    }
    out
}

/// Connects as the first role and to the first database that work.
pub async fn connect(s: &Scratch) -> Result<Sql, String> {
    let mut last = String::from("no attempt");
    for user in users() {
        for dbname in ["postgres", "template1"] {
            let mut config = tokio_postgres::Config::new();
            config
                .host_path(s.sock())
                .port(PORT)
                .user(&user)
                .dbname(dbname)
                .application_name("pgwal drill")
                .connect_timeout(Duration::from_secs(10));
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    return Ok(Sql { client, user: user.clone(), dbname: dbname.into() });
                }
                Err(e) => last = crate::db::pg_error_text(&e),
            }
        }
    }
    Err(last)
}

impl Sql {
    /// One row of text columns.
    pub async fn row(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        let row = self.client.query_one(sql, &[]).await.map_err(|e| crate::db::pg_error_text(&e))?;
        (0..row.len()).map(|i| row.try_get::<_, Option<String>>(i).map_err(|e| e.to_string())).collect()
    }
}

/// Whether the server has left recovery.
pub async fn out_of_recovery(s: &Scratch) -> bool {
    match connect(s).await {
        Ok(sql) => {
            matches!(sql.row("SELECT pg_is_in_recovery()::text").await.as_deref(), Ok([Some(f)]) if f == "false")
        }
        Err(_) => false,
    }
}

/// Where recovery ended: the replay position and time from the server,
/// the timeline from the history file promotion wrote.
pub async fn reached(sql: &Sql, s: &Scratch) -> Result<Reached, String> {
    let row = sql
        .row(
            "SELECT pg_last_wal_replay_lsn()::text, \
             to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        )
        .await?;
    let lsn = row.first().cloned().flatten().and_then(|l| l.parse::<Lsn>().ok());
    let time = row.get(1).cloned().flatten();
    let current = row.get(2).cloned().flatten().and_then(|t| u32::from_str_radix(&t, 16).ok()).map(TimelineId);
    // The new timeline's history file ends with the timeline recovery was on.
    let timeline = current.and_then(|tli| {
        let path = s.data().join("pg_wal").join(format!("{:08X}.history", tli.0));
        let bytes = std::fs::read(path).ok()?;
        crate::pg::history::parse_history(tli, &bytes).ok()?.last().map(|e| e.parent)
    });
    Ok(Reached { lsn, timeline: timeline.or(current), time })
}

/// The `queries` check, and the superuser's name for pg_amcheck.
pub async fn queries(sql: &Sql) -> (DrillCheck, Option<String>) {
    match sql
        .row(
            "SELECT count(*)::text, string_agg(datname, ', ' ORDER BY datname), \
             (SELECT rolname FROM pg_roles WHERE oid = 10) FROM pg_database",
        )
        .await
    {
        Ok(row) => {
            let n = row.first().cloned().flatten().unwrap_or_default();
            let names = row.get(1).cloned().flatten().unwrap_or_default();
            (check("queries", CheckOutcome::Passed, format!("{n} databases: {names}")), row.get(2).cloned().flatten())
        }
        Err(e) => (check("queries", CheckOutcome::Failed, format!("SELECT from pg_database failed: {e}")), None),
    }
}

/// The `pg_amcheck` check: heap and B-tree checks of every database.
pub fn amcheck(
    bin: &Binaries,
    s: &Scratch,
    user: &str,
    maintenance_db: &str,
    deadline: Instant,
) -> crate::Result<DrillCheck> {
    const NAME: &str = "pg_amcheck";
    if !bin.has("pg_amcheck") {
        return Ok(check(
            NAME,
            CheckOutcome::Skipped,
            format!("pg_amcheck is not installed in '{}'", bin.dir.display()),
        ));
    }
    let mut cmd = Command::new(bin.program("pg_amcheck"));
    cmd.args(["--all", "--install-missing", "--no-password"])
        .arg("--host")
        .arg(s.sock())
        .arg(format!("--port={PORT}"))
        .arg(format!("--username={user}"))
        .arg(format!("--maintenance-db={maintenance_db}"));
    let ran = server::run_tool(cmd, &s.file("pg_amcheck.out"), deadline)?;
    Ok(match ran.status {
        None => check(NAME, CheckOutcome::Failed, "did not finish within drill.timeout"),
        Some(st) if st.success() => check(NAME, CheckOutcome::Passed, "no corruption found in any database"),
        Some(st) => {
            let lines: Vec<&str> = ran.output.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            // The error or the corrupt relation, rather than a WARNING leading up to it.
            let telling = |l: &str| l.contains("ERROR:") || l.starts_with("heap table") || l.starts_with("btree index");
            let first = lines.iter().copied().find(|l| telling(l)).or(lines.first().copied()).unwrap_or("(no output)");
            let code = st.code().map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
            check(NAME, CheckOutcome::Failed, format!("{code}, {} line(s) of findings; first: {first}", lines.len()))
        }
    })
}

/// What `pg_controldata` says: the cluster state and the checksum version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// "Database cluster state".
    pub state: String,
    /// "Data page checksum version" (0: no checksums).
    pub checksum_version: Option<u32>,
}

/// Parses `pg_controldata` output.
pub fn parse_controldata(text: &str) -> Control {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    Control {
        state: field("Database cluster state").unwrap_or_default(),
        checksum_version: field("Data page checksum version").and_then(|v| v.parse().ok()),
    }
}

/// Runs `pg_controldata` on the copy.
pub fn controldata(bin: &Binaries, s: &Scratch, deadline: Instant) -> crate::Result<Option<Control>> {
    let mut cmd = Command::new(bin.program("pg_controldata"));
    cmd.arg("-D").arg(s.data());
    let ran =
        server::run_tool(cmd, &s.file("pg_controldata.out"), deadline.max(Instant::now() + Duration::from_secs(30)))?;
    Ok(ran.status.filter(|st| st.success()).map(|_| parse_controldata(&ran.output)))
}

/// The `pg_checksums` check, after a clean shutdown.
pub fn checksums(
    bin: &Binaries,
    s: &Scratch,
    control: Option<&Control>,
    deadline: Instant,
) -> crate::Result<DrillCheck> {
    const NAME: &str = "pg_checksums";
    let Some(control) = control.filter(|c| c.state == "shut down") else {
        return Ok(check(NAME, CheckOutcome::Skipped, "the server did not shut down cleanly"));
    };
    if control.checksum_version.unwrap_or(0) == 0 {
        return Ok(check(NAME, CheckOutcome::Skipped, "the cluster has no data checksums"));
    }
    let mut cmd = Command::new(bin.program("pg_checksums"));
    cmd.arg("--check").arg("-D").arg(s.data());
    let ran = server::run_tool(cmd, &s.file("pg_checksums.out"), deadline)?;
    let bad = ran.output.lines().find_map(|l| l.strip_prefix("Bad checksums:").map(|v| v.trim().to_string()));
    let blocks = ran.output.lines().find_map(|l| l.strip_prefix("Blocks scanned:").map(|v| v.trim().to_string()));
    Ok(match ran.status {
        None => check(NAME, CheckOutcome::Failed, "did not finish within drill.timeout"),
        Some(st) if st.success() => check(
            NAME,
            CheckOutcome::Passed,
            format!("{} blocks scanned, 0 bad checksums", blocks.unwrap_or_else(|| "all".into())),
        ),
        Some(_) => {
            let first = ran.output.lines().find(|l| l.contains("checksum verification failed")).unwrap_or("");
            // Relative to the data directory: the scratch path is gone by the time anyone reads this.
            let first = first.replace(&format!("{}/", s.data().display()), "");
            check(
                NAME,
                CheckOutcome::Failed,
                format!("{} bad checksum(s); {}", bad.unwrap_or_else(|| "some".into()), first.trim()),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(start: Lsn) -> Expect {
        Expect::EndOfArchive { timeline: TimelineId(1), segment: "000000010000000000000009".into(), start }
    }

    #[test]
    fn end_of_archive_is_judged_by_position_and_timeline() {
        let start = Lsn(0x900_0000);
        let at = |lsn: u64, tli: u32| Reached { lsn: Some(Lsn(lsn)), timeline: Some(TimelineId(tli)), time: None };
        assert_eq!(judge_target(&end(start), &at(0x900_0060, 1), "").outcome, CheckOutcome::Passed);
        assert_eq!(judge_target(&end(start), &at(0xA00_0000, 1), "").outcome, CheckOutcome::Passed);
        let short = judge_target(&end(start), &at(0x500_0060, 1), "");
        assert_eq!(short.outcome, CheckOutcome::Failed);
        assert!(
            short.detail.contains("before the newest archived segment 000000010000000000000009"),
            "{}",
            short.detail
        );
        assert_eq!(judge_target(&end(start), &at(0x900_0060, 2), "").outcome, CheckOutcome::Failed);
        assert_eq!(judge_target(&end(start), &Reached::default(), "").outcome, CheckOutcome::Failed);
    }

    #[test]
    fn named_targets_are_judged_by_the_log() {
        let t = Expect::Target(RecoveryTarget::Name("before".into()));
        let reached = Reached { lsn: Some(Lsn(0x300_0060)), timeline: Some(TimelineId(1)), time: None };
        let log = "2026 [1] LOG:  recovery stopping at restore point \"before\", time 2026-12-02 10:00:00+00\n";
        let c = judge_target(&t, &reached, log);
        assert_eq!(c.outcome, CheckOutcome::Passed);
        assert!(c.detail.contains("recovery stopping at restore point"), "{}", c.detail);
        assert_eq!(judge_target(&t, &reached, "LOG: redo done").outcome, CheckOutcome::Failed);
        let lsn = Expect::Target(RecoveryTarget::Lsn(Lsn(0x400_0000)));
        assert_eq!(judge_target(&lsn, &reached, log).outcome, CheckOutcome::Failed, "stopped short of the LSN");
    }

    #[test]
    fn controldata_fields() {
        let text = "pg_control version number:            1300\nDatabase cluster state:               shut down\n\
                    Data page checksum version:           1\n";
        assert_eq!(parse_controldata(text), Control { state: "shut down".into(), checksum_version: Some(1) });
        assert_eq!(parse_controldata("").checksum_version, None);
    }
}
