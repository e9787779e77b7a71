//! `pgwal check`: is this setup able to archive? Checks, in order, the
//! configuration, the repository, the PostgreSQL connection, that the server
//! is the repository's cluster, the archiving settings, and finally the real
//! thing: it forces a WAL switch and waits until that segment is in the
//! repository. Prints one `ok:` or `error:` line per check (with a `hint:`
//! where one helps) and fails unless every check passed.
//!
//! `check` creates nothing itself: a repository that does not exist yet is
//! fine (the first `archive` creates it), and the only write it causes is
//! the one PostgreSQL's own `archive_command` makes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::db::{ArchiveSettings, ConnTarget, Session};
use crate::error::{Error, Result};
use crate::pg::WalFileName;
use crate::repo::{keys, ClusterIdentity, Repository};

/// What to check.
pub struct CheckRequest<'a> {
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// The repository URL, for messages.
    pub repo_url: String,
    /// Opens the repository (for reading: it must not create it).
    pub open_repo: &'a dyn Fn() -> Result<Repository>,
    /// How to reach PostgreSQL, or why that is not configured right.
    pub conn: Result<ConnTarget>,
    /// How long to wait for the switched segment.
    pub timeout: Duration,
}

/// Collects and prints the outcome of each check.
#[derive(Debug, Default)]
struct Report {
    total: usize,
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: impl AsRef<str>) {
        self.total += 1;
        println!("ok: {}", what.as_ref());
    }

    fn fail(&mut self, what: impl AsRef<str>, hint: Option<String>) {
        self.total += 1;
        self.failed += 1;
        println!("error: {}", what.as_ref());
        if let Some(h) = hint {
            println!("  hint: {h}");
        }
    }

    fn fail_with(&mut self, e: &Error) {
        self.fail(chain(e), e.hint());
    }
}

/// An error with its causes on one line.
fn chain(e: &Error) -> String {
    e.one_line()
}

/// Whether `archive_command` runs pgwal's archive command.
pub fn calls_pgwal_archive(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    words.iter().any(|w| w.trim_matches(|c| c == '\'' || c == '"').rsplit('/').next() == Some("pgwal"))
        && words.contains(&"archive")
}

/// Judges the archiving settings; each entry is `Ok(line)` or `Err((line, hint))`.
pub fn judge_settings(s: &ArchiveSettings, archive_library: Option<&str>) -> Vec<Result<String, (String, String)>> {
    let mut out = Vec::new();
    out.push(if matches!(s.wal_level.as_str(), "replica" | "logical") {
        Ok(format!("wal_level = {}", s.wal_level))
    } else {
        Err((
            format!("wal_level = {}: WAL archiving needs replica or logical", s.wal_level),
            "set wal_level = replica in postgresql.conf and restart PostgreSQL".into(),
        ))
    });
    out.push(if matches!(s.archive_mode.as_str(), "on" | "always") {
        Ok(format!("archive_mode = {}", s.archive_mode))
    } else {
        Err((
            format!("archive_mode = {}: PostgreSQL archives nothing", s.archive_mode),
            "set archive_mode = on in postgresql.conf and restart PostgreSQL".into(),
        ))
    });
    if let Some(lib) = archive_library.filter(|l| !l.is_empty()) {
        out.push(Err((
            format!("archive_library = '{lib}' is set, so PostgreSQL ignores archive_command"),
            "set archive_library = '' and archive_command = 'pgwal archive %p', then reload".into(),
        )));
        return out;
    }
    out.push(match &s.archive_command {
        None => Err((
            "cannot read archive_command: this role may not see it".into(),
            "connect as a superuser or a member of pg_read_all_settings".into(),
        )),
        Some(c) if calls_pgwal_archive(c) => Ok(format!("archive_command = '{c}' calls pgwal")),
        Some(c) if c.trim().is_empty() || c == "(disabled)" => Err((
            "archive_command is empty: PostgreSQL keeps WAL but archives none of it".into(),
            "set archive_command = 'pgwal archive %p' in postgresql.conf and reload".into(),
        )),
        Some(c) => Err((
            format!("archive_command = '{c}' does not call pgwal archive"),
            "set archive_command = 'pgwal archive %p' in postgresql.conf and reload".into(),
        )),
    });
    out
}

/// Runs every check; `Err(ChecksFailed)` unless all passed.
pub fn check(rt: &tokio::runtime::Runtime, req: &CheckRequest<'_>) -> Result<()> {
    let mut r = Report::default();
    match &req.config_file {
        Some(f) => r.ok(format!("configuration '{}' is valid", f.display())),
        None => r.ok("no config file; configuration from flags and the environment"),
    }
    rt.block_on(run_checks(&mut r, req));
    if r.failed > 0 {
        Err(Error::ChecksFailed { failed: r.failed, total: r.total })
    } else {
        println!("all {} checks passed", r.total);
        Ok(())
    }
}

async fn run_checks(r: &mut Report, req: &CheckRequest<'_>) {
    // The repository.
    let mut identity: Option<ClusterIdentity> = None;
    let mut repo_ok = true;
    let url = &req.repo_url;
    let not_yet = || format!("repository '{url}' is not initialised yet; the first 'pgwal archive' will create it");
    match (req.open_repo)() {
        Ok(repo) => match repo.identity().await {
            Ok(crate::repo::RepoIdentity { format_exists: true, cluster: id }) => {
                identity = id;
                let who =
                    id.map_or_else(|| "no cluster recorded yet".into(), |i| format!("cluster {}", i.system_identifier));
                r.ok(format!("repository '{url}' is reachable ({who})"));
            }
            Ok(crate::repo::RepoIdentity { format_exists: false, .. }) => r.ok(not_yet()),
            Err(e) => {
                repo_ok = false;
                r.fail_with(&e);
            }
        },
        Err(Error::RepositoryMissing { .. }) => r.ok(not_yet()),
        Err(e) => {
            repo_ok = false;
            r.fail_with(&e);
        }
    }

    // PostgreSQL.
    let target = match &req.conn {
        Ok(t) => t,
        Err(e) => return r.fail_with(e),
    };
    let session = match target.connect().await {
        Ok(s) => s,
        Err(e) => return r.fail_with(&e),
    };
    r.ok(format!("PostgreSQL {} reachable ({})", version_text(session.version_num()), target.describe()));

    let mut server_ok = true;
    match session.system_identifier().await {
        Ok(sysid) => match identity {
            Some(id) if id.system_identifier != sysid => {
                server_ok = false;
                r.fail_with(&Error::WrongCluster {
                    what: "the server".into(),
                    expected: id.system_identifier,
                    found: sysid,
                });
            }
            Some(_) => r.ok(format!("the server is the repository's cluster {sysid}")),
            None => r.ok(format!("the server is cluster {sysid}; the repository will record it")),
        },
        Err(e) => {
            server_ok = false;
            r.fail_with(&e);
        }
    }
    match settings(&session).await {
        Ok((s, library)) => {
            for judged in judge_settings(&s, library.as_deref()) {
                match judged {
                    Ok(line) => r.ok(line),
                    Err((line, hint)) => {
                        server_ok = false;
                        r.fail(line, Some(hint));
                    }
                }
            }
        }
        Err(e) => {
            server_ok = false;
            r.fail_with(&e);
        }
    }
    if matches!(session.in_recovery().await, Ok(true)) {
        return r.fail(
            "the server is a standby: check forces a WAL switch, which only a primary can do",
            Some("run pgwal check against the primary".into()),
        );
    }
    if !(server_ok && repo_ok) {
        println!("(skipped the archiving test: fix the errors above first)");
        return;
    }
    switch_and_wait(r, req, &session).await;
}

async fn settings(session: &Session) -> Result<(ArchiveSettings, Option<String>)> {
    let s = session.archive_settings().await?;
    let library = if session.version_num() >= 150000 { session.archive_library().await? } else { None };
    Ok((s, library))
}

fn version_text(num: u32) -> String {
    if num >= 100000 {
        format!("{}.{}", num / 10000, num % 10000)
    } else {
        num.to_string()
    }
}

async fn switch_and_wait(r: &mut Report, req: &CheckRequest<'_>, session: &Session) {
    let name = match session.switch_wal().await {
        Ok(n) => n,
        Err(e) => return r.fail_with(&e),
    };
    let Ok(wal) = name.parse::<WalFileName>() else {
        return r.fail(format!("pg_switch_wal named '{name}', which is not a WAL segment"), None);
    };
    let began = Instant::now();
    let mut last_error: Option<Error> = None;
    loop {
        // Reopened each time: the first archive may be creating the repository right now.
        match (req.open_repo)() {
            Ok(repo) => match repo.read_header(&keys::wal(&wal)).await {
                Ok(Some(_)) => {
                    return r.ok(format!(
                        "WAL segment {name} arrived in the repository {:.1}s after pg_switch_wal()",
                        began.elapsed().as_secs_f64()
                    ))
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            },
            Err(Error::RepositoryMissing { .. }) => {}
            Err(e) => last_error = Some(e),
        }
        if began.elapsed() >= req.timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let archiver = match session.archiver_stats().await {
        Ok(s) if s.last_failed_wal.as_deref() == Some(name.as_str()) => format!(
            "PostgreSQL failed to archive it{} (see the PostgreSQL log for pgwal's message)",
            s.last_failed_time.map(|t| format!(" at {t}")).unwrap_or_default()
        ),
        Ok(s) => format!("the archiver last archived '{}'", s.last_archived_wal.unwrap_or_else(|| "nothing".into())),
        Err(_) => "pg_stat_archiver is unreadable".into(),
    };
    let storage = last_error.map(|e| format!("; reading the repository failed: {}", chain(&e))).unwrap_or_default();
    r.fail(
        format!(
            "WAL segment {name} did not arrive in the repository within {}s: {archiver}{storage}",
            req.timeout.as_secs()
        ),
        Some("check that archive_command uses the same repository and configuration as this check".into()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(level: &str, mode: &str, command: Option<&str>) -> ArchiveSettings {
        ArchiveSettings {
            wal_level: level.into(),
            archive_mode: mode.into(),
            archive_command: command.map(str::to_string),
        }
    }

    #[test]
    fn recognises_pgwal_archive_commands() {
        for ok in [
            "pgwal archive %p",
            "/usr/local/bin/pgwal --config /etc/pgwal/x.toml archive %p",
            "'/tmp/pgwal-test-bin/abc/pgwal' --config '/tmp/x y/pgwal.toml' archive %p",
        ] {
            assert!(calls_pgwal_archive(ok), "{ok}");
        }
        for bad in ["cp %p /archive/%f", "pgwal fetch %f %p", "/bin/true", "", "notpgwal archive %p"] {
            assert!(!calls_pgwal_archive(bad), "{bad}");
        }
    }

    #[test]
    fn judges_settings_in_plain_words() {
        let good = judge_settings(&settings("replica", "on", Some("pgwal archive %p")), None);
        assert!(good.iter().all(Result::is_ok), "{good:?}");
        let bad = judge_settings(&settings("minimal", "off", Some("cp %p /x")), None);
        let errors: Vec<String> = bad.into_iter().filter_map(Result::err).map(|e| e.0).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[2].contains("does not call pgwal"), "{errors:?}");
        let lib = judge_settings(&settings("replica", "on", Some("pgwal archive %p")), Some("basic_archive"));
        assert!(lib.last().is_some_and(|l| l.as_ref().is_err_and(|e| e.0.contains("archive_library"))));
    }
}
