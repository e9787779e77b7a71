//! The README's own setup, as written: the five-minute config (its first
//! TOML block), its `archive_command`, and the nightly cron line (backup,
//! expire, verify --quick), taken from README.md by this test so the two
//! cannot drift apart. Only the repository path and the log path are
//! replaced by temporary ones; `pgwal` is found on PATH and the config
//! through PGWAL_CONFIG (what /etc/pgwal/pgwal.toml is on a real host), and
//! the cron command runs through `/bin/sh -c` as the postgres user against a
//! real PostgreSQL 15 primary archiving into the repository. Every step must
//! run, and the documented policy must really expire old backups.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// The repository URL and the log file the README uses.
const README_REPO: &str = "file:///var/lib/pgwal/main";
const README_LOG: &str = "/var/log/postgresql/pgwal-backup.log";

fn readme() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The text of the README section whose heading is `heading`, up to the next `## `.
fn section<'a>(text: &'a str, heading: &str) -> Result<&'a str> {
    let start = text.find(&format!("\n{heading}\n")).with_context(|| format!("README has no section '{heading}'"))?;
    let body = &text[start + heading.len() + 2..];
    Ok(body.find("\n## ").map_or(body, |end| &body[..end]))
}

/// The fenced code blocks of `text` as (info string, content), with the
/// indentation of their fence removed (the README nests them in a list).
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match open.take() {
            None if trimmed.starts_with("```") => open = Some((trimmed[3..].trim().to_string(), indent, String::new())),
            None => {}
            Some((info, _, body)) if trimmed.starts_with("```") => out.push((info, body)),
            Some((info, ind, mut body)) => {
                body.push_str(line.get(ind.min(indent)..).unwrap_or(""));
                body.push('\n');
                open = Some((info, ind, body));
            }
        }
    }
    out
}

/// The command of the README's nightly cron line (after the five schedule
/// fields and the user), with the line itself.
fn nightly_cron_command(text: &str) -> Result<(String, String)> {
    let nightly = section(text, "## Take a nightly backup")?;
    for (_, body) in code_blocks(nightly) {
        for line in body.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 7 && fields[5] == "postgres" && line.contains("pgwal backup") {
                // The command is the rest of the line after the sixth field, as written.
                let mut rest = line.trim_start();
                for _ in 0..6 {
                    let f = rest.split_whitespace().next().context("field")?;
                    rest = rest[f.len()..].trim_start();
                }
                return Ok((line.to_string(), rest.to_string()));
            }
        }
    }
    bail!("no cron line running 'pgwal backup' as postgres in the README's nightly section")
}

#[test]
fn the_readme_setup_runs_as_written() -> Result<()> {
    let text = readme()?;
    let setup = section(&text, "## Five-minute setup")?;
    let blocks = code_blocks(setup);
    let (_, toml) = blocks.iter().find(|(info, _)| info == "toml").context("no toml block in the five-minute setup")?;
    ensure!(toml.contains(README_REPO), "the five-minute config no longer uses {README_REPO}:\n{toml}");
    let (_, conf) = blocks
        .iter()
        .find(|(_, body)| body.contains("archive_command ="))
        .context("no postgresql.conf block with archive_command in the five-minute setup")?;
    let (cron_line, cron_command) = nightly_cron_command(&text)?;
    ensure!(cron_command.contains(README_LOG), "the cron line no longer logs to {README_LOG}: {cron_line}");
    let cron_file = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgwal.cron"))?;
    ensure!(cron_file.lines().any(|l| l == cron_line), "config/pgwal.cron holds the README's line:\n{cron_line}");

    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let logs = dir.subdir("log")?;
    let log = logs.join("pgwal-backup.log");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &toml.replace(README_REPO, &format!("file://{}", repo.display())))?;
    let command = cron_command.replace(README_LOG, &log.to_string_lossy());

    // `pgwal` on PATH as on a real host, the config where /etc/pgwal/pgwal.toml would be.
    let bindir: PathBuf = pgwal_bin().parent().context("pgwal's directory")?.to_path_buf();
    let path = format!("{}:/usr/bin:/bin", bindir.display());
    let env = [("PATH", path.clone()), ("PGWAL_CONFIG", config.to_string_lossy().into_owned())];
    let conf_lines: Vec<&str> = conf.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut pg = PgCluster::init(&dir.join("primary"), &conf_lines)?;
    pg.set_server_env(env.clone());
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")?;

    let run_nightly = |pg: &PgCluster| -> Result<RunOutput> {
        let mut sh = command_as_user("/bin/sh");
        sh.arg("-c").arg(&command).envs(env.clone());
        sh.env("PGHOST", pg.socket_dir()).env("PGPORT", pg.port().to_string());
        run(&mut sh, None, Duration::from_secs(300))
    };
    let mut ids = Vec::new();
    for night in 1..=3 {
        pg.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")?;
        let last = pg.switch_wal()?;
        pg.wait_archived(&last, Duration::from_secs(120))?;
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        let out = run_nightly(&pg)?;
        let logged = std::fs::read_to_string(&log).context("the log file")?;
        let new = logged.strip_prefix(&before).context("the log is appended to")?.to_string();
        ensure!(out.success(), "night {night}: the cron command fails as written: {out}\nlog:\n{new}");
        let lines: Vec<&str> = new.lines().collect();
        // 1. backup: its ID on a line of its own.
        let id = lines
            .iter()
            .find(|l| l.len() == 16 && l.ends_with('F') && l.as_bytes()[8] == b'T')
            .with_context(|| format!("night {night}: no backup ID in the log:\n{new}"))?
            .to_string();
        ids.push(id.clone());
        // 2. expire with the README's policy (two full backups).
        let kept = ids[ids.len().saturating_sub(2)..].join(", ");
        ensure!(
            new.contains(&format!("kept {} backup(s): {kept}", ids.len().min(2))),
            "night {night}: expire ran with the README's policy:\n{new}"
        );
        let removed = new.contains(&format!("removed backup {} (", ids[0]));
        ensure!(removed == (night == 3), "night {night}: the first backup goes on night 3, not before:\n{new}");
        // 3. verify --quick, last.
        ensure!(
            lines.last().is_some_and(|l| l.starts_with("ok: the repository is sound")),
            "night {night}: verify --quick ran last and passed:\n{new}"
        );
        ensure!(!new.contains("pgwal: error"), "night {night}:\n{new}");
    }
    let listing = Pgwal::new(["--config", &config.to_string_lossy(), "list", "--json"]).run()?.ensure_success()?;
    let v: serde_json::Value = serde_json::from_str(&listing.stdout)?;
    let listed: Vec<&str> =
        v["backups"].as_array().context("backups")?.iter().filter_map(|b| b["id"].as_str()).collect();
    ensure!(listed == [ids[1].as_str(), ids[2].as_str()], "the two newest backups stay: {listing}");
    pg.stop()?;
    Ok(())
}

/// The same cron command with a config that has no retention policy: expire
/// warns and deletes nothing, and verify --quick still runs.
#[test]
fn without_a_policy_the_cron_line_still_verifies() -> Result<()> {
    let text = readme()?;
    let (_, cron_command) = nightly_cron_command(&text)?;
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let logs = dir.subdir("log")?;
    let log = logs.join("pgwal-backup.log");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", repo.display()))?;
    let command = cron_command.replace(README_LOG, &log.to_string_lossy());
    let bindir: PathBuf = pgwal_bin().parent().context("pgwal's directory")?.to_path_buf();
    let env = [
        ("PATH", format!("{}:/usr/bin:/bin", bindir.display())),
        ("PGWAL_CONFIG", config.to_string_lossy().into_owned()),
    ];
    let mut pg = PgCluster::init(&dir.join("primary"), &["archive_command = 'pgwal archive %p'"])?;
    pg.set_server_env(env.clone());
    pg.start()?;
    for _ in 0..2 {
        let mut sh = command_as_user("/bin/sh");
        sh.arg("-c").arg(&command).envs(env.clone());
        sh.env("PGHOST", pg.socket_dir()).env("PGPORT", pg.port().to_string());
        let out = run(&mut sh, None, Duration::from_secs(300))?;
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(out.success(), "{out}\nlog:\n{logged}");
    }
    let logged = std::fs::read_to_string(&log)?;
    ensure!(logged.matches("pgwal: warning: no retention policy, nothing expired").count() == 2, "{logged}");
    ensure!(logged.matches("ok: the repository is sound").count() == 2, "verify ran both nights:\n{logged}");
    ensure!(!logged.contains("removed"), "{logged}");
    let listing = Pgwal::new(["--config", &config.to_string_lossy(), "list", "--json"]).run()?.ensure_success()?;
    let v: serde_json::Value = serde_json::from_str(&listing.stdout)?;
    ensure!(v["backups"].as_array().map(Vec::len) == Some(2), "both backups stay: {listing}");
    pg.stop()?;
    Ok(())
}
