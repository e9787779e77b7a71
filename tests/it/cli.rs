//! The command line as a newcomer meets it, without a server: a missing
//! argument is named on the one error line, `--help` shows no empty
//! environment values, and `--log-level` / `PGWAL_LOG_LEVEL` make pgwal
//! quieter or chattier on stderr while stdout keeps the result.

use crate::common;

use anyhow::{ensure, Result};
use common::*;
use pgwal::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};

#[test]
fn missing_required_arguments_are_named() -> Result<()> {
    let cases: &[(&[&str], &str, i32)] = &[
        (&["restore"], "--target-dir <DIR>", 2),
        (&["standby", "--target-dir", "/nonexistent/d"], "--primary-conninfo <STR>", 2),
        (&["archive"], "<PATH>", 2),
        // fetch keeps its exit rules: a broken restore_command must not end recovery.
        (&["fetch", "000000010000000000000001"], "<DEST>", 202),
    ];
    for (args, named, code) in cases {
        let out = Pgwal::new(*args).run()?;
        let lines: Vec<&str> = out.stderr.lines().collect();
        ensure!(out.code() == Some(*code), "{args:?} exits {code}: {out}");
        ensure!(lines.len() == 2, "one error line and one hint: {out}");
        ensure!(
            lines[0].starts_with("pgwal: error: the following required arguments were not provided: ")
                && lines[0].contains(named),
            "{args:?} names {named}: {out}"
        );
        ensure!(lines[1] == format!("hint: see 'pgwal {} --help'", args[0]), "the hint names the command: {out}");
    }
    let out = Pgwal::new(["backup", "--type", "nope"]).run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("[possible values: "), "the valid values are named: {out}");
    Ok(())
}

#[test]
fn help_shows_no_empty_environment_values() -> Result<()> {
    let out = Pgwal::new(["--help"]).env("PGWAL_CONFIG", "").env("PGWAL_REPO", "file:///secret/place").run()?;
    ensure!(out.success(), "{out}");
    ensure!(out.stdout.contains("[env: PGWAL_CONFIG]") && out.stdout.contains("[env: PGWAL_LOG_LEVEL]"), "{out}");
    ensure!(!out.stdout.contains("PGWAL_CONFIG=") && !out.stdout.contains("/secret/place"), "{out}");
    Ok(())
}

#[test]
fn log_level_filters_stderr() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = format!("file://{}", dir.join("repo").display());
    // A repository that does not exist: list fails the same way at every level.
    for level in ["error", "warn", "info", "debug"] {
        let out = Pgwal::new(["--repo", &repo, "--log-level", level, "list"]).run()?;
        ensure!(out.code() == Some(1) && out.stderr.starts_with("pgwal: error: "), "{level}: {out}");
    }
    let out = Pgwal::new(["--repo", &repo, "list"]).env("PGWAL_LOG_LEVEL", "loud").run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("error, warn, info or debug"), "{out}");

    // A notice (an identical segment archived twice) is printed at info and
    // debug, and not at warn or error; the exit status does not change.
    let size = WalSegmentSize::new(16 << 20).expect("16 MiB");
    let name = WalFileName::segment(TimelineId(1), SegmentNo(1), size);
    let wal = dir.join(name.to_string());
    std::fs::write(&wal, pgwal::repo::synthetic::segment_content(&name, 7_123_456_789, size))?;
    Pgwal::new(["--repo", &repo, "archive", &wal.to_string_lossy()]).run()?.ensure_success()?;
    for (level, noisy) in [("error", false), ("warn", false), ("info", true), ("debug", true)] {
        let out = Pgwal::new(["--repo", &repo, "archive", &wal.to_string_lossy()])
            .env("PGWAL_LOG_LEVEL", level)
            .run()?
            .ensure_success()?;
        ensure!(out.stderr.contains("already archived with identical content") == noisy, "{level}: {out}");
    }
    Ok(())
}
