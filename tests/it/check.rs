//! `pgwal check` on real PostgreSQL 15: passes on a correctly configured
//! cluster (forcing a WAL switch and seeing the segment arrive, even in a
//! repository that did not exist yet), and fails in plain words when
//! archive_command does not call pgwal or PostgreSQL is unreachable.

use crate::common;

use std::fs;
use std::path::Path;

use anyhow::{ensure, Result};
use common::*;

fn check(config: &Path, pg: &PgCluster, extra: &[&str]) -> Result<RunOutput> {
    let mut cmd = Pgwal::new(["--config", &config.to_string_lossy(), "check", "--conninfo", &pg.conninfo()]);
    for a in extra {
        cmd = cmd.arg(a);
    }
    cmd.run()
}

#[test]
fn check_passes_then_fails_in_plain_words() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;

    // The repository does not exist yet: check says so, and the first archive creates it.
    let out = check(&config, &pg, &[])?;
    ensure!(out.success(), "check passes on a good setup: {out}");
    ensure!(out.stdout.contains("not initialised yet"), "{out}");
    ensure!(out.stdout.contains("ok: archive_command = ") && out.stdout.contains("arrived in the repository"), "{out}");
    ensure!(!out.stdout.contains("error:"), "{out}");

    // Now it exists and knows the cluster.
    let out = check(&config, &pg, &[])?;
    ensure!(out.success() && out.stdout.contains("the server is the repository's cluster"), "{out}");

    // archive_command that is not pgwal: a plain error line with a hint, exit 1, and no waiting.
    pg.set_conf(&["archive_command = '/bin/true'"])?;
    pg.reload()?;
    let out = check(&config, &pg, &["--timeout", "5s"])?;
    ensure!(out.code() == Some(1), "check fails: {out}");
    ensure!(out.stdout.contains("error: archive_command = '/bin/true' does not call pgwal archive"), "{out}");
    ensure!(out.stdout.contains("hint: set archive_command = 'pgwal archive %p'"), "{out}");
    ensure!(out.stderr.contains("pgwal: error: 1 of") && out.stderr.contains("checks failed"), "{out}");

    // A pgwal archive_command into another repository: the segment never arrives.
    let elsewhere = dir.join("elsewhere.toml");
    write_private_file(&elsewhere, &format!("repo = \"file://{}\"\n", dir.join("repo2").display()))?;
    pg.set_conf(&[archive_command_setting(&elsewhere)])?;
    pg.reload()?;
    let out = check(&config, &pg, &["--timeout", "3s"])?;
    ensure!(out.code() == Some(1) && out.stdout.contains("did not arrive in the repository within 3s"), "{out}");

    // PostgreSQL unreachable.
    pg.stop()?;
    let out = check(&config, &pg, &[])?;
    ensure!(out.code() == Some(1) && out.stdout.contains("error: cannot connect to PostgreSQL"), "{out}");
    ensure!(out.stdout.contains("ok: repository"), "the repository check still ran: {out}");
    Ok(())
}

/// `check` on an encrypted repository: with the key every check passes
/// (the repository is opened, its cluster is the server's, a segment
/// arrives); with a wrong key the repository check fails in one line that
/// says so, exit 1, and the key shows nowhere.
#[test]
fn check_opens_an_encrypted_repository_and_names_a_wrong_key() -> Result<()> {
    let dir = TestDir::new()?;
    let key_file = dir.join("repo.key");
    let key = crate::encryption::write_key(&key_file, 0o600)?;
    let config = dir.join("pgwal.toml");
    write_private_file(
        &config,
        &format!(
            "repo = \"file://{}\"\n[encryption]\nkey_file = {}\n",
            dir.join("repo").display(),
            toml_quote(&key_file.to_string_lossy())
        ),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    // The first check's segment creates the encrypted repository; the second finds it.
    check(&config, &pg, &[])?.ensure_success()?;
    let out = check(&config, &pg, &[])?;
    ensure!(out.success(), "check passes with the key: {out}");
    ensure!(
        out.stdout.contains("is reachable (cluster ") && out.stdout.contains("the server is the repository's cluster"),
        "{out}"
    );
    ensure!(out.stdout.contains("arrived in the repository"), "{out}");
    ensure!(fs::read(dir.join("repo/cluster"))?.starts_with(b"PGWALENC"), "the repository is encrypted");

    let wrong = dir.join("wrong.key");
    let wrong_key = crate::encryption::write_key(&wrong, 0o600)?;
    let out = Pgwal::new(["--config", &config.to_string_lossy(), "--encryption-key-file"])
        .arg(&wrong)
        .args(["check", "--timeout", "5s", "--conninfo", &pg.conninfo()])
        .run()?;
    ensure!(out.code() == Some(1), "a wrong key fails the check: {out}");
    let repo_lines: Vec<&str> = out.stdout.lines().filter(|l| l.contains("does not open repository")).collect();
    ensure!(repo_lines.len() == 1 && repo_lines[0].starts_with("error: "), "one line for the key: {out}");
    for k in [&key, &wrong_key] {
        ensure!(!out.stdout.contains(k.as_str()) && !out.stderr.contains(k.as_str()), "the key shows: {out}");
    }
    Ok(())
}
