//! `pgwal expire`: what it keeps on a repository with two timelines (and
//! that PITR to points after every retained backup still works on real
//! PostgreSQL 15 afterwards), `--dry-run` deleting nothing, an expire killed
//! with SIGKILL at many points and run again leaving a repository that
//! verifies each time, the same on the S3 test server, bad input refused
//! with nothing deleted and no policy deleting nothing (exit 0), and, on real
//! PostgreSQL, an expire failing on a permission error having named on its
//! output exactly what it removed (and `--dry-run` counting segments and
//! `.backup` files apart).

use crate::common;
use crate::synthetic;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use synthetic::*;

fn cfg(config: &Path) -> String {
    config.to_string_lossy().into_owned()
}

fn expire(config: &Path, args: &[&str]) -> Result<RunOutput> {
    Pgwal::new(["--config", &cfg(config), "expire"]).args(args).run()
}

fn verify(config: &Path, args: &[&str]) -> Result<RunOutput> {
    Pgwal::new(["--config", &cfg(config), "verify"]).args(args).run()
}

/// A local two-timeline repository (see [`two_timelines`]); returns the
/// config, the repository root and the backup IDs A, B, C, D.
fn local_two_timelines(dir: &TestDir, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf, Vec<String>)> {
    let (config, root) = file_config(dir, name)?;
    let repo = open(&config)?;
    let ids = rt().block_on(two_timelines(&repo))?;
    give_to_run_as(&root)?;
    Ok((config, root, ids))
}

#[test]
fn keeps_what_retained_backups_need_on_every_timeline() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root, ids) = local_two_timelines(&dir, "repo")?;
    let before = files(&root)?;

    // Dry run: the report, nothing deleted.
    let dry = expire(&config, &["--retain-full", "3", "--dry-run"])?.ensure_success()?;
    ensure!(dry.stdout.contains(&format!("would remove backup {}", ids[0])), "{dry}");
    ensure!(files(&root)? == before, "--dry-run deleted something");

    // Keep B, C, D: B (timeline 1, segment 20) reaches timeline 2 too.
    let out = expire(&config, &["--retain-full", "3"])?.ensure_success()?;
    ensure!(dry.stdout.replace("would remove", "removed") == out.stdout, "dry run and run differ:\n{dry}\n{out}");
    let after = files(&root)?;
    let gone: Vec<&String> = before.difference(&after).collect();
    ensure!(!after.iter().any(|f| f.starts_with(&format!("backup/{}", ids[0]))), "A is gone");
    for id in &ids[1..] {
        ensure!(after.contains(&format!("backup/{id}/manifest")), "{id} kept");
    }
    let wal1: Vec<String> = (1..20).map(|s| format!("wal/{}/{}", &seg_name(1, s)[..16], seg_name(1, s))).collect();
    ensure!(wal1.iter().all(|k| gone.contains(&k)), "timeline 1 before B's start goes");
    ensure!(gone.len() == wal1.len() + 2, "only A (manifest, pack) and timeline 1 before segment 20 go: {gone:?}");
    verify(&config, &[])?.ensure_success()?;

    // Keep C and D only: timeline 1 from C's start (50), timeline 2 from D's start (55).
    expire(&config, &["--retain-full", "2"])?.ensure_success()?;
    let after = files(&root)?;
    let wal: Vec<&String> = after.iter().filter(|f| f.starts_with("wal/")).collect();
    let expected: Vec<String> = (50..=60)
        .map(|s| (1, s))
        .chain((55..=70).map(|s| (2, s)))
        .map(|(t, s)| format!("wal/{}/{}", &seg_name(t, s)[..16], seg_name(t, s)))
        .chain(["wal/00000002.history".to_string()])
        .collect();
    let mut expected_sorted: Vec<&String> = expected.iter().collect();
    expected_sorted.sort();
    ensure!(wal == expected_sorted, "WAL left: {wal:?}");
    verify(&config, &[])?.ensure_success()?;

    // Days: everything stopped long ago, so only the newest (D) stays, and timeline 1 (no retained
    // backup reaches it any more) goes; its history-free timeline 1 needs no history file.
    let out = expire(&config, &["--retain-days", "1"])?.ensure_success()?;
    ensure!(out.stdout.contains(&format!("kept 1 backup(s): {}", ids[3])), "{out}");
    ensure!(!files(&root)?.iter().any(|f| f.starts_with("wal/0000000100000000/")), "timeline 1 gone");
    ensure!(files(&root)?.contains("wal/00000002.history"), "history files stay");
    verify(&config, &[])?.ensure_success()?;
    let again = expire(&config, &["--retain-days", "1"])?.ensure_success()?;
    ensure!(again.stdout.contains("nothing to expire"), "{again}");
    Ok(())
}

#[test]
fn bad_input_is_refused_and_nothing_is_deleted() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root, _) = local_two_timelines(&dir, "repo")?;
    let before = files(&root)?;
    let cases: [(&[&str], &str); 4] = [
        (&["--retain-full", "0"], "0 would delete every backup"),
        (&["--retain-days", "-1"], "negative"),
        (&["--retain-days", "0"], "number of days from 1"),
        (&["--retain-full", "two"], "not a number"),
    ];
    for (args, text) in cases {
        let out = expire(&config, args)?;
        ensure!(out.code() == Some(2), "{args:?} must be refused with exit 2: {out}");
        ensure!(out.stderr.contains("pgwal: error:") && out.stderr.contains(text), "{args:?}: {out}");
        ensure!(out.stderr.contains("hint:"), "{args:?}: {out}");
    }
    // No policy anywhere (as pgBackRest): one warning, exit 0, nothing deleted, so that a cron
    // line 'pgwal expire && pgwal verify --quick' goes on.
    for args in [&[][..], &["--dry-run"][..]] {
        let out = expire(&config, args)?;
        ensure!(out.success(), "{args:?}: no policy is not an error: {out}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        ensure!(
            lines.len() == 1 && lines[0].starts_with("pgwal: warning: no retention policy, nothing expired"),
            "{out}"
        );
        ensure!(lines[0].contains("expire.retain_full"), "the warning says what to set: {out}");
        ensure!(out.stdout.is_empty(), "{out}");
    }
    // verify --backup with an unknown ID, or not an ID at all.
    for id in ["20991231T235959F", "last-night"] {
        let out = verify(&config, &["--backup", id])?;
        ensure!(out.code() == Some(2) && out.stderr.contains(id), "{out}");
    }
    // A repository without a complete backup.
    let (empty_config, empty_root) = file_config(&dir, "empty")?;
    rt().block_on(pgwal::repo::synthetic::init(&open(&empty_config)?, SYSID, size()))?;
    give_to_run_as(&empty_root)?;
    let empty_before = files(&empty_root)?;
    let out = expire(&empty_config, &["--retain-full", "1"])?;
    ensure!(out.code() == Some(2) && out.stderr.contains("no complete backup"), "{out}");
    ensure!(files(&empty_root)? == empty_before, "nothing deleted from the empty repository");
    // No repository at all.
    let missing = dir.join("missing.toml");
    write_private_file(&missing, &format!("repo = \"file://{}\"\n", dir.join("nowhere").display()))?;
    let out = expire(&missing, &["--retain-full", "1"])?;
    ensure!(out.code() == Some(1) && out.stderr.contains("no pgwal repository"), "{out}");
    ensure!(!dir.join("nowhere").exists(), "expire created nothing");
    ensure!(files(&root)? == before, "refusals deleted something");
    Ok(())
}

/// Kills `expire` with SIGKILL once `root` has lost `after` files (or it
/// ended), then checks that the repository verifies and that expire run
/// again reaches exactly the state an uninterrupted expire reaches.
#[test]
fn killed_expire_leaves_a_repository_that_verifies() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "pristine")?;
    let repo = open(&config)?;
    rt().block_on(async {
        pgwal::repo::synthetic::init(&repo, SYSID, size()).await?;
        segments(&repo, 1, 1..=700).await?;
        segments(&repo, 2, 400..=760).await?;
        let switch =
            pgwal::pg::history::HistoryEntry { parent: pgwal::pg::TimelineId(1), switch_point: lsn(400, 0x100) };
        pgwal::repo::synthetic::put_history(&repo, pgwal::pg::TimelineId(2), &[switch]).await?;
        for (i, start) in [10u64, 100, 200, 300, 600].iter().enumerate() {
            backup(&repo, BackupSpec { start_seg: *start, tli: 1, hours: i as i64 }).await?;
        }
        backup(&repo, BackupSpec { start_seg: 700, tli: 2, hours: 10 }).await
    })?;
    give_to_run_as(&root)?;
    let pristine = files(&root)?;

    // The uninterrupted result.
    let reference_dir = dir.join("reference");
    copy_tree(&root, &reference_dir)?;
    let ref_config = dir.join("reference.toml");
    write_private_file(&ref_config, &format!("repo = \"file://{}\"\n", reference_dir.display()))?;
    expire(&ref_config, &["--retain-full", "2"])?.ensure_success()?;
    let expected = files(&reference_dir)?;
    let to_delete = pristine.len() - expected.len();
    ensure!(to_delete > 900, "a long enough expire to interrupt: {to_delete}");

    let work = dir.join("work");
    let work_config = dir.join("work.toml");
    write_private_file(&work_config, &format!("repo = \"file://{}\"\n", work.display()))?;
    let mut interrupted = 0;
    for (round, after) in [0usize, 1, 2, 3, 7, 40, 200, 450, 700, 900].iter().enumerate() {
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        copy_tree(&root, &work)?;
        let mut child = Pgwal::new(["--config", &cfg(&work_config), "expire", "--retain-full", "2"])
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        wait_until(Duration::from_secs(60), "expire to delete enough or end", || {
            // The expire's lock object is one file more than the pristine copy had.
            Ok(child.try_wait()?.is_some() || pristine.len().saturating_sub(files(&work)?.len()) >= *after)
        })?;
        if child.try_wait()?.is_none() {
            interrupted += 1;
        }
        // SIGKILL by the child's own PID (a no-op if it has ended).
        let _ = child.kill();
        child.wait()?;
        let out = verify(&work_config, &[])?;
        ensure!(out.success(), "round {round} (killed after {after} deletions): verify fails:\n{out}");
        // The killed expire's lock (a dead PID on this host) is taken over at once.
        expire(&work_config, &["--retain-full", "2"])?.ensure_success()?;
        ensure!(files(&work)? == expected, "round {round}: a second expire must finish the job exactly");
        verify(&work_config, &[])?.ensure_success()?;
    }
    ensure!(interrupted >= 3, "only {interrupted} rounds were interrupted mid-way");
    Ok(())
}

/// SIGTERM (the daemon stopping, systemctl stop) while expire holds its
/// lock stops it before its next deletion: it exits 1 saying so, releases
/// the lock (the next expire need not take it over), the repository
/// verifies, and expire run again reaches exactly what an uninterrupted
/// one does.
#[test]
fn sigterm_stops_expire_between_deletions_and_releases_the_lock() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "pristine")?;
    let repo = open(&config)?;
    rt().block_on(async {
        pgwal::repo::synthetic::init(&repo, SYSID, size()).await?;
        segments(&repo, 1, 1..=900).await?;
        for (i, start) in [10u64, 300, 600, 850].iter().enumerate() {
            backup(&repo, BackupSpec { start_seg: *start, tli: 1, hours: i as i64 }).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    give_to_run_as(&root)?;
    let pristine = files(&root)?;
    let reference_dir = dir.join("reference");
    copy_tree(&root, &reference_dir)?;
    let ref_config = dir.join("reference.toml");
    write_private_file(&ref_config, &format!("repo = \"file://{}\"\n", reference_dir.display()))?;
    expire(&ref_config, &["--retain-full", "1"])?.ensure_success()?;
    let expected = files(&reference_dir)?;

    let work = dir.join("work");
    let work_config = dir.join("work.toml");
    write_private_file(&work_config, &format!("repo = \"file://{}\"\n", work.display()))?;
    let mut interrupted = 0;
    // A round whose expire ends before the signal proves nothing: try again.
    for round in 0..5 {
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        copy_tree(&root, &work)?;
        let child = Pgwal::new(["--config", &cfg(&work_config), "expire", "--retain-full", "1"])
            .command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut child = KillOnDrop(Some(child));
        let pid = child.0.as_ref().context("child")?.id();
        // Its lock exists only once its signal handlers are in place.
        wait_until(Duration::from_secs(60), "expire to take its lock or end", || {
            let c = child.0.as_mut().context("child")?;
            Ok(c.try_wait()?.is_some() || work.join("lock/backup").exists())
        })?;
        // SIGTERM to our own child, by its PID (not reaped yet, so still its own).
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        ensure!(status.success(), "kill -TERM {pid}");
        let output = child.0.take().context("child")?.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            ensure!(files(&work)? == expected, "round {round}: it ended first, and completely");
            continue;
        }
        interrupted += 1;
        ensure!(output.status.code() == Some(1), "round {round}: exit 1 after SIGTERM: {stderr}");
        ensure!(
            stderr.contains("interrupted by SIGTERM; expire stopped before its next deletion"),
            "round {round}: says so: {stderr}"
        );
        let now = files(&work)?;
        ensure!(!now.contains("lock/backup"), "round {round}: the lock is released");
        ensure!(now.len() > expected.len() && now.len() <= pristine.len(), "round {round}: stopped before the end");
        verify(&work_config, &[])?.ensure_success()?;
        let again = expire(&work_config, &["--retain-full", "1"])?.ensure_success()?;
        ensure!(!again.stderr.contains("taking over"), "no stale lock to take over: {again}");
        ensure!(files(&work)? == expected, "round {round}: a second expire finishes the job exactly");
        break;
    }
    ensure!(interrupted == 1, "no round was interrupted mid-way");
    Ok(())
}

/// The same on the S3 test server: expire, then verify finds a needed segment missing.
#[test]
fn expire_and_verify_on_s3() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://pgwal/main"))?;
    let repo = open(&config)?;
    let ids = rt().block_on(two_timelines(&repo))?;
    verify(&config, &[])?.ensure_success()?;
    let dry = expire(&config, &["--retain-full", "2", "--dry-run"])?.ensure_success()?;
    let out = expire(&config, &["--retain-full", "2"])?.ensure_success()?;
    ensure!(out.stdout.replace("removed", "would remove") == dry.stdout, "{dry}\n{out}");
    for id in &ids[..2] {
        ensure!(out.stdout.contains(&format!("removed backup {id}")), "{out}");
    }
    let listing = Pgwal::new(["--config", &cfg(&config), "list", "--json"]).run()?.ensure_success()?;
    let v: serde_json::Value = serde_json::from_str(&listing.stdout)?;
    ensure!(v["wal"][0]["first"] == seg_name(1, 50).as_str(), "{listing}");
    ensure!(v["wal"][1]["first"] == seg_name(2, 55).as_str(), "{listing}");
    verify(&config, &[])?.ensure_success()?;

    // A segment D needs disappears: verify (quick and full) names it.
    let victim = seg_name(2, 60);
    let path = s3.root().join("pgwal/main/wal").join(&victim[..16]).join(&victim);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    for args in [&[][..], &["--quick"][..]] {
        let out = verify(&config, args)?;
        ensure!(out.code() == Some(3) && out.stdout.contains(&victim), "{args:?}: {out}");
    }
    Ok(())
}

const WAIT: Duration = Duration::from_secs(120);

fn insert_batch(pg: &PgCluster, batch: u32) -> Result<()> {
    pg.sql(&format!("INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, 1000) g"))?;
    Ok(())
}

fn archive_now(pg: &PgCluster) -> Result<String> {
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    Ok(last)
}

fn take_backup(pg: &PgCluster, config: &Path) -> Result<String> {
    let out = Pgwal::new([
        "--config",
        &cfg(config),
        "backup",
        "--checkpoint",
        "fast",
        "--conninfo",
        &pg.conninfo(),
        "--pgdata",
    ])
    .arg(pg.data_dir())
    .run()?
    .ensure_success()?;
    Ok(out.stdout.trim().to_string())
}

/// A primary archiving into `config`'s repository, with batch 1 in table
/// `t`, backup A of it, then batch 2 archived. Returns the server and A.
fn primary_with_backup_a(dir: &TestDir, config: &Path) -> Result<(PgCluster, String)> {
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t (batch int, filler text)")?;
    insert_batch(&pg, 1)?;
    let a = take_backup(&pg, config)?;
    insert_batch(&pg, 2)?;
    archive_now(&pg)?;
    Ok((pg, a))
}

/// The batches in table `t`, e.g. "1,2,3".
fn batches(pg: &PgCluster) -> Result<String> {
    pg.sql("SELECT string_agg(b::text, ',' ORDER BY b) || ' ' || sum(n) FROM (SELECT batch b, count(*) n FROM t GROUP BY batch) s")
}

/// Restores into `dir/name` with `args`, starts the copy without archiving,
/// waits until recovery paused or ended, and returns its batches.
fn restore_and_read(dir: &TestDir, config: &Path, name: &str, args: &[&str]) -> Result<String> {
    let home = dir.join(name);
    Pgwal::new(["--config", &cfg(config), "restore", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .args(args)
        .run()?
        .ensure_success()?;
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    wait_until(WAIT, "recovery to pause at its target or end", || {
        let state = copy.sql(
            "SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused' OR NOT pg_is_in_recovery()",
        )?;
        Ok(state == "t")
    })
    .with_context(|| copy.log_tail(30))?;
    let rows = batches(&copy).with_context(|| copy.log_tail(30))?;
    copy.stop()?;
    Ok(rows)
}

/// Real PostgreSQL: backups A and B on timeline 1, a point-in-time restore
/// after B promoted in the middle of timeline 1 (which went on to batch 4),
/// backup C on timeline 2. `expire --retain-full 2` drops A and the WAL
/// before B; then B still recovers along timeline 1 to its very end and
/// along timeline 2, C recovers to the end of timeline 2, and verify passes.
#[test]
fn retention_across_a_promotion_keeps_every_point_recoverable() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let (mut pg, a) = primary_with_backup_a(&dir, &config)?;
    let b = take_backup(&pg, &config)?;
    insert_batch(&pg, 3)?;
    let after_3 = pg.sql("SELECT pg_current_wal_lsn()")?;
    archive_now(&pg)?;
    insert_batch(&pg, 4)?;
    archive_now(&pg)?;
    pg.stop()?;

    // Promotion in the middle of timeline 1: restore B to after batch 3 and promote; the new
    // primary archives timeline 2 into the same repository.
    let home = dir.join("promoted");
    Pgwal::new(["--config", &cfg(&config), "restore", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .args(["--backup", &b, "--target-lsn", &after_3, "--target-action", "promote"])
        .run()?
        .ensure_success()?;
    let mut promoted = PgCluster::existing(&home)?;
    promoted.start()?;
    wait_until(WAIT, "the restored copy to promote", || Ok(promoted.sql("SELECT pg_is_in_recovery()")? == "f"))
        .with_context(|| promoted.log_tail(30))?;
    insert_batch(&promoted, 10)?;
    let first_tl2 = archive_now(&promoted)?;
    ensure!(first_tl2.starts_with("00000002"), "timeline 2: {first_tl2}");
    let c = take_backup(&promoted, &config)?;
    insert_batch(&promoted, 11)?;
    archive_now(&promoted)?;
    promoted.stop()?;

    let before = files(&root)?;
    let out = expire(&config, &["--retain-full", "2"])?.ensure_success()?;
    ensure!(out.stdout.contains(&format!("removed backup {a}")), "{out}");
    ensure!(out.stdout.contains(&format!("kept 2 backup(s): {b}, {c}")), "{out}");
    let after = files(&root)?;
    ensure!(!after.iter().any(|f| f.contains(&a)), "A is gone");
    let gone_wal = before.difference(&after).filter(|f| f.starts_with("wal/")).count();
    ensure!(gone_wal >= 1, "the WAL before B's start went");
    ensure!(after.contains("wal/00000002.history"), "the history file stays");
    verify(&config, &[])?.ensure_success()?;

    // Every point after each retained backup is still reachable.
    ensure!(
        restore_and_read(&dir, &config, "b_tl1", &["--backup", &b, "--target-timeline", "1"])? == "1,2,3,4 4000",
        "B along timeline 1 to its end"
    );
    ensure!(restore_and_read(&dir, &config, "b_tl2", &["--backup", &b])? == "1,2,3,10,11 5000", "B along timeline 2");
    ensure!(restore_and_read(&dir, &config, "c_latest", &[])? == "1,2,3,10,11 5000", "C to the end");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}

/// Real PostgreSQL: a backup is held after its files are stored (archiving
/// fails, so it waits for its WAL with the lock held and no manifest yet).
/// `expire` meanwhile deletes nothing at all and exits 4 naming the backup
/// that holds the lock; `--dry-run` runs and leaves the backup's packs out.
/// Once archiving works again the backup completes, restores with all its
/// rows, and expire then takes the lock and expires the older full.
#[test]
fn expire_never_touches_a_backup_being_taken() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let (mut pg, a) = primary_with_backup_a(&dir, &config)?;

    // Archiving fails from now on: the next backup stores its packs, then waits for its WAL.
    pg.sql("ALTER SYSTEM SET archive_command = 'false'")?;
    pg.reload()?;
    let child = Pgwal::new([
        "--config",
        &cfg(&config),
        "backup",
        "--checkpoint",
        "fast",
        "--conninfo",
        &pg.conninfo(),
        "--pgdata",
    ])
    .arg(pg.data_dir())
    .command()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .context("spawn pgwal backup")?;
    let in_progress = |files: &std::collections::BTreeSet<String>| -> Vec<String> {
        files
            .iter()
            .filter(|f| f.starts_with("backup/") && f.contains("/pack/") && !f.contains(&a) && !f.contains('#'))
            .cloned()
            .collect()
    };
    let mut child = KillOnDrop(Some(child));
    // Held: after pg_backup_stop the backup waits for its WAL to be archived
    // (watching pg_stat_archiver on its session), with the lock held and no manifest.
    wait_until(WAIT, "the second backup's packs to be stored", || {
        let now = files(&root)?;
        let stopping = pg.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE (query ILIKE '%pg_backup_stop%' \
             OR query ILIKE '%pg_stat_archiver%') AND pid <> pg_backend_pid()",
        )?;
        Ok(!in_progress(&now).is_empty() && now.contains("lock/backup") && stopping == "1")
    })?;
    let held: std::collections::BTreeSet<String> = in_progress(&files(&root)?).into_iter().collect();
    ensure!(!held.iter().any(|f| f.ends_with("/manifest")), "no manifest yet");

    let before = files(&root)?;
    let refused = expire(&config, &["--retain-full", "1"])?;
    ensure!(refused.code() == Some(4) && refused.stdout.is_empty(), "expire is refused with exit 4: {refused}");
    let line = refused.stderr.lines().find(|l| l.starts_with("pgwal: error:")).unwrap_or_default();
    ensure!(
        line.contains("another backup of this repository is running")
            && line.contains("'pgwal backup'")
            && line.contains(&child.0.as_ref().context("child")?.id().to_string()),
        "one line naming the backup that holds the lock: {refused}"
    );
    ensure!(files(&root)? == before, "expire deleted nothing while the backup ran: {refused}");
    let dry = expire(&config, &["--retain-full", "1", "--dry-run"])?.ensure_success()?;
    ensure!(
        !held.iter().any(|p| dry.stdout.contains(p.split('/').nth(1).unwrap_or("?"))),
        "the dry run leaves it out:\n{dry}"
    );
    ensure!(files(&root)? == before, "a dry run deletes nothing");

    // Archiving works again: the held backup completes and restores.
    pg.sql("ALTER SYSTEM RESET archive_command")?;
    pg.set_conf(&[archive_command_setting(&config)])?;
    pg.reload()?;
    let output = child.0.take().context("child")?.wait_with_output().context("wait for pgwal backup")?;
    ensure!(output.status.success(), "backup failed: {}", String::from_utf8_lossy(&output.stderr));
    let b = String::from_utf8_lossy(&output.stdout).trim().to_string();
    ensure!(files(&root)?.contains(&format!("backup/{b}/manifest")), "backup {b} completed");
    ensure!(!files(&root)?.contains("lock/backup"), "the backup released its lock");
    // Now expire takes the lock: the older full goes, the new one and all its packs stay.
    let out = expire(&config, &["--retain-full", "1"])?.ensure_success()?;
    ensure!(out.stdout.contains(&format!("removed backup {a} (")), "the older full is expired:\n{out}");
    let after = files(&root)?;
    ensure!(!after.iter().any(|f| f.starts_with(&format!("backup/{a}/"))), "nothing of {a} is left");
    for pack in &held {
        ensure!(after.contains(pack), "{pack} of the kept backup stays:\n{out}");
    }
    ensure!(!after.contains("lock/backup"), "expire released its lock");
    pg.stop()?;
    ensure!(restore_and_read(&dir, &config, "b", &["--backup", &b])? == "1,2 2000", "backup {b} restores");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}

/// Kills a spawned pgwal (by its own PID) if the test fails before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The objects a run of expire names on stdout, resolved against the files
/// `before` it: every file of a backup named as removed, the keys of a
/// backup named as partly removed, the WAL files of each named range.
fn named_objects(
    stdout: &str,
    before: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeSet<String>> {
    let mut named = std::collections::BTreeSet::new();
    for line in stdout.lines() {
        // A dry run names what would go in the same words.
        let line = line.strip_prefix("would remove ").map_or(line.to_string(), |rest| format!("removed {rest}"));
        let line = line.as_str();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["removed", "backup", id, ..] | ["removed", "incomplete", "backup", id, ..] => {
                named.extend(before.iter().filter(|f| f.starts_with(&format!("backup/{id}/"))).cloned());
            }
            ["removed", _, "of", "the", ..] => {
                let (_, keys) = line.split_once("before the error: ").context(line.to_string())?;
                named.extend(keys.split(", ").map(str::to_string));
            }
            ["removed", "WAL", "of", "timeline", _, range @ ..] => {
                let first = range.first().context(line.to_string())?;
                let last = if range.get(1) == Some(&"..") { range[2] } else { first };
                named.extend(
                    before
                        .iter()
                        .filter(|f| f.starts_with("wal/") && f.len() > 21)
                        .filter(|f| {
                            let name = &f[21..];
                            name.len() >= 24 && &name[..24] >= *first && &name[..24] <= last
                        })
                        .cloned(),
                );
            }
            ["kept", ..] | ["nothing", "to", "expire"] => {}
            _ => anyhow::bail!("unexpected line on expire's stdout: {line}"),
        }
    }
    Ok(named)
}

/// Sets the mode of a directory in the repository (the tests run as root, pgwal as postgres).
fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Real PostgreSQL, four backups: expire, run as postgres, hits a directory
/// it may not delete in. It fails at once with a few lines, and every object
/// that is gone is named on its output (SPEC §3.9), nothing more: first the
/// third backup's packs are protected (the first two backups and the third
/// one's manifest go), then the WAL (the third backup's leftover packs go).
/// With the permissions back, a third run finishes and the repository verifies.
#[test]
fn a_failing_expire_names_everything_it_removed() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let (mut pg, a) = primary_with_backup_a(&dir, &config)?;
    let mut ids = vec![a];
    for batch in 3..=5 {
        ids.push(take_backup(&pg, &config)?);
        insert_batch(&pg, batch)?;
        archive_now(&pg)?;
    }
    pg.stop()?;
    ensure!(run_as().switch, "the permission checks need pgwal to run as another user than the test");

    let run =
        |what: &str| -> Result<(RunOutput, std::collections::BTreeSet<String>, std::collections::BTreeSet<String>)> {
            let before = files(&root)?;
            // A deadline for the run, not an assertion on its time: a permanent error must not be retried.
            let out = Pgwal::new(["--config", &cfg(&config), "expire", "--retain-full", "1"])
                .timeout(Duration::from_secs(60))
                .run()
                .with_context(|| format!("expire ({what}) did not fail at once"))?;
            let after = files(&root)?;
            let gone: std::collections::BTreeSet<String> = before.difference(&after).cloned().collect();
            let named = named_objects(&out.stdout, &before)?;
            Ok((out, gone, named))
        };
    let fails_briefly = |out: &RunOutput| -> Result<()> {
        ensure!(!out.success() && out.code() == Some(1), "expire must fail with exit 1: {out}");
        ensure!(out.stderr.lines().count() <= 3, "a few lines, not one per retry: {out}");
        ensure!(
            out.stderr.starts_with("pgwal: error:") && out.stderr.to_lowercase().contains("permission denied"),
            "one error line naming the cause: {out}"
        );
        Ok(())
    };

    // The dry run names the same objects, and counts segments and .backup files apart.
    let before = files(&root)?;
    let dry = expire(&config, &["--retain-full", "1", "--dry-run"])?.ensure_success()?;
    ensure!(files(&root)? == before, "--dry-run deleted something");
    let wal: Vec<String> = named_objects(&dry.stdout, &before)?.into_iter().filter(|f| f.starts_with("wal/")).collect();
    let count = |what: &str| -> usize {
        dry.stdout
            .lines()
            .filter(|l| l.starts_with("would remove WAL"))
            .filter_map(|l| l.rsplit_once('(')?.1.strip_suffix(')').map(str::to_string))
            .flat_map(|counts| counts.split(", ").map(str::to_string).collect::<Vec<_>>())
            .filter_map(|c| {
                let (n, kind) = c.split_once(' ')?;
                (kind.trim_end_matches('s') == what).then(|| n.parse::<usize>().ok()).flatten()
            })
            .sum()
    };
    let segments = wal.iter().filter(|f| f.len() == 21 + 24).count();
    let backup_files = wal.iter().filter(|f| f.ends_with(".backup")).count();
    ensure!(backup_files >= 3, "the .backup files of backups 1-3 go: {dry}");
    ensure!(count("segment") == segments && count(".backup file") == backup_files, "counted apart: {dry}");
    ensure!(count("segment") + count(".backup file") == wal.len(), "{dry}");

    // The third backup's packs cannot be deleted.
    let packs = root.join(format!("backup/{}/pack", ids[2]));
    chmod(&packs, 0o500)?;
    let (out, gone, named) = run("protected packs")?;
    chmod(&packs, 0o700)?;
    fails_briefly(&out)?;
    ensure!(gone == named, "named on stdout and really gone differ:\nnamed {named:?}\ngone {gone:?}\n{out}");
    for id in &ids[..2] {
        ensure!(out.stdout.contains(&format!("removed backup {id} (")), "{out}");
    }
    ensure!(gone.contains(&format!("backup/{}/manifest", ids[2])), "the manifest goes first: {out}");
    ensure!(!gone.iter().any(|f| f.starts_with("wal/")), "no WAL before the backups are gone: {out}");

    // The WAL cannot be deleted: the third backup's leftover packs go, then it fails.
    let wal_dirs: Vec<std::path::PathBuf> =
        std::fs::read_dir(root.join("wal"))?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    ensure!(!wal_dirs.is_empty(), "WAL directories");
    for d in &wal_dirs {
        chmod(d, 0o500)?;
    }
    let (out, gone, named) = run("protected WAL")?;
    for d in &wal_dirs {
        chmod(d, 0o700)?;
    }
    fails_briefly(&out)?;
    ensure!(gone == named, "named on stdout and really gone differ:\nnamed {named:?}\ngone {gone:?}\n{out}");
    ensure!(out.stdout.contains(&format!("removed incomplete backup {} (", ids[2])), "{out}");

    // Permissions back: the job finishes, and what it names is what goes.
    let (out, gone, named) = run("permissions back")?;
    ensure!(out.success() && gone == named && gone.iter().any(|f| f.starts_with("wal/")), "{out}");
    ensure!(out.stdout.contains(&format!("kept 1 backup(s): {}", ids[3])), "{out}");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}

/// A local repository of two full+incr chains (see [`two_chains`]).
fn local_two_chains(dir: &TestDir, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf, Vec<String>)> {
    let (config, root) = file_config(dir, name)?;
    let repo = open(&config)?;
    let ids = rt().block_on(two_chains(&repo))?;
    give_to_run_as(&root)?;
    Ok((config, root, ids))
}

fn wal_keys(tli: u32, segs: std::ops::RangeInclusive<u64>) -> Vec<String> {
    segs.map(|s| format!("wal/{}/{}", &seg_name(tli, s)[..16], seg_name(tli, s))).collect()
}

/// `--retain-full 1` after two full+incr chains leaves exactly the newest
/// chain and the WAL from its full's start; the old incr goes before its full.
#[test]
fn retain_full_keeps_the_newest_chain_whole() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root, ids) = local_two_chains(&dir, "repo")?;
    let before = files(&root)?;
    let out = expire(&config, &["--retain-full", "1"])?.ensure_success()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines[0].starts_with(&format!("removed backup {} (", ids[1])), "the incr first: {out}");
    ensure!(lines[1].starts_with(&format!("removed backup {} (", ids[0])), "then its full: {out}");
    ensure!(out.stdout.contains(&format!("kept 2 backup(s): {}, {}", ids[2], ids[3])), "{out}");
    let after = files(&root)?;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let mut expected: BTreeSet<String> = wal_keys(1, 1..=19).into_iter().collect();
    for id in &ids[..2] {
        expected.extend(before.iter().filter(|f| f.starts_with(&format!("backup/{id}/"))).cloned());
    }
    ensure!(gone == expected, "gone: {gone:?}\nexpected: {expected:?}");
    ensure!(after.contains(&format!("backup/{}/manifest", ids[3])), "the newest incr stays");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}

/// A backup killed during its first put leaves a directory holding only
/// hidden staging files (`<name>#N`): no listing shows them, yet a policy
/// run removes them and the directory (a dry run names them, deletes
/// nothing); the retained chains are untouched.
#[test]
fn a_policy_run_sweeps_a_killed_backup_that_left_only_staging_files() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root, ids) = local_two_chains(&dir, "repo")?;
    let killed = "20991231T235959I";
    let packs = root.join("backup").join(killed).join("pack");
    std::fs::create_dir_all(&packs)?;
    for n in 1..=2 {
        std::fs::write(packs.join(format!("0000000000000000#{n}")), b"half a pack")?;
    }
    give_to_run_as(&root)?;
    let before = files(&root)?;

    let dry = expire(&config, &["--retain-full", "2", "--dry-run"])?.ensure_success()?;
    let line = format!(
        "would remove incomplete backup {killed} (0 objects, no manifest, 2 staging files of writes cut short)"
    );
    ensure!(dry.stdout.contains(&line), "{dry}");
    ensure!(files(&root)? == before, "--dry-run deleted something");

    let out = expire(&config, &["--retain-full", "2"])?.ensure_success()?;
    ensure!(out.stdout.contains(&line.replace("would remove", "removed")), "{out}");
    ensure!(!root.join("backup").join(killed).exists(), "the killed backup's directory is gone");
    let after = files(&root)?;
    let gone: BTreeSet<&String> = before.difference(&after).collect();
    // (The WAL before the older full goes too: the policy's own work.)
    let backups_gone: Vec<&&String> = gone.iter().filter(|f| f.starts_with("backup/")).collect();
    ensure!(
        backups_gone.len() == 2 && backups_gone.iter().all(|f| f.starts_with(&format!("backup/{killed}/"))),
        "of the backups, only the staging files went: {gone:?}"
    );
    ensure!(out.stdout.contains(&format!("kept 4 backup(s): {}", ids.join(", "))), "{out}");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}

/// `expire --backup FULL` with a dependent is refused and deletes nothing;
/// with --with-dependents it deletes both (and the WAL only they needed),
/// naming each; the newest backup is refused.
#[test]
fn expire_one_backup_and_its_dependents() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root, ids) = local_two_chains(&dir, "repo")?;
    let before = files(&root)?;
    let out = expire(&config, &["--backup", &ids[0]])?;
    ensure!(out.code() == Some(2), "refused: {out}");
    ensure!(
        out.stderr.contains(&format!("backup {} cannot be expired alone: {} depend(s) on it", ids[0], ids[1])),
        "{out}"
    );
    ensure!(out.stderr.contains("--with-dependents"), "the hint names the flag: {out}");
    ensure!(files(&root)? == before, "a refused expire deleted something");
    for (args, text) in [
        (vec!["--backup", ids[3].as_str()], "is the newest backup"),
        (vec!["--backup", ids[2].as_str(), "--with-dependents"], "is the newest backup"),
        (vec!["--backup", "20000101T000000F"], "no complete backup 20000101T000000F"),
        (vec!["--backup", ids[0].as_str(), "--retain-full", "1"], "cannot be used with"),
        (vec!["--with-dependents"], "--backup"),
    ] {
        let out = expire(&config, &args)?;
        ensure!(out.code() == Some(2) && out.stderr.contains(text), "{args:?}: {out}");
    }
    ensure!(files(&root)? == before, "a refused expire deleted something");

    let args = ["--backup", ids[0].as_str(), "--with-dependents"];
    let dry = expire(&config, &[&args[..], &["--dry-run"]].concat())?.ensure_success()?;
    ensure!(files(&root)? == before, "--dry-run deleted something");
    let out = expire(&config, &args)?.ensure_success()?;
    ensure!(dry.stdout.replace("would remove", "removed") == out.stdout, "dry run and run differ:\n{dry}\n{out}");
    let after = files(&root)?;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let mut expected: BTreeSet<String> = wal_keys(1, 1..=19).into_iter().collect();
    for id in &ids[..2] {
        let objects: Vec<&String> = before.iter().filter(|f| f.starts_with(&format!("backup/{id}/"))).collect();
        ensure!(
            out.stdout.contains(&format!("removed backup {id} ({} objects)", objects.len())),
            "{id} named with its objects: {out}"
        );
        expected.extend(objects.into_iter().cloned());
    }
    ensure!(
        out.stdout.contains(&format!(
            "removed WAL of timeline 1: {} .. {} (19 segments)",
            seg_name(1, 1),
            seg_name(1, 19)
        )),
        "{out}"
    );
    ensure!(gone == expected, "gone: {gone:?}\nexpected: {expected:?}");
    // A tip goes alone.
    let out = expire(&config, &["--backup", &ids[2]])?;
    ensure!(out.code() == Some(2) && out.stderr.contains(&ids[3]), "{out}");
    Ok(())
}

/// Writes the lock object a live `pgwal expire` on another host holds
/// (young, so it is not stale), as that process would.
fn plant_expire_lock(config: &Path, root: &Path) -> Result<()> {
    let info = pgwal::repo::lock::LockInfo {
        command: "expire".into(),
        host: "other-host".into(),
        pid: 4242,
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        token: "theirs".into(),
    };
    let (object, _) = pgwal::repo::frame::encode(&serde_json::to_vec(&info)?, pgwal::repo::frame::Compression::None)?;
    let repo = open(config)?;
    let key = pgwal::repo::backup::backup_lock_key();
    ensure!(rt().block_on(repo.create_once(&key, bytes::Bytes::from(object)))?, "no lock before");
    give_to_run_as(root)
}

/// Real PostgreSQL: while an expire (of another host) holds the repository
/// lock, an incr backup stores nothing and exits 4 naming that expire, and
/// a second expire deletes nothing and exits 4 too. Once the lock is gone,
/// expire removes the older full and the incr builds on the kept one,
/// restoring to the primary's rows.
#[test]
fn backup_and_expire_are_refused_while_an_expire_holds_the_lock() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let (mut pg, a) = primary_with_backup_a(&dir, &config)?;
    let b = take_backup(&pg, &config)?;
    insert_batch(&pg, 3)?;
    archive_now(&pg)?;
    plant_expire_lock(&config, &root)?;
    let before = files(&root)?;

    let incr = |pg: &PgCluster| {
        Pgwal::new(["--config", &cfg(&config), "backup", "--type", "incr", "--checkpoint", "fast", "--conninfo"])
            .arg(pg.conninfo())
            .arg("--pgdata")
            .arg(pg.data_dir())
            .run()
    };
    let refused = incr(&pg)?;
    ensure!(refused.code() == Some(4) && refused.stdout.is_empty(), "the backup is refused with exit 4: {refused}");
    let line = refused.stderr.lines().find(|l| l.starts_with("pgwal: error:")).unwrap_or_default();
    ensure!(
        line.contains("another expire of this repository is running")
            && line.contains("'pgwal expire', PID 4242 on host 'other-host'"),
        "one line naming the expire: {refused}"
    );
    ensure!(files(&root)? == before, "the refused backup stored nothing");

    let refused = expire(&config, &["--retain-full", "1"])?;
    ensure!(refused.code() == Some(4) && refused.stdout.is_empty(), "expire is refused with exit 4: {refused}");
    ensure!(refused.stderr.contains("another expire of this repository is running"), "{refused}");
    ensure!(files(&root)? == before, "the refused expire deleted nothing");

    // The other expire ended: its lock is gone.
    std::fs::remove_file(root.join("lock/backup"))?;
    let out = expire(&config, &["--retain-full", "1"])?.ensure_success()?;
    ensure!(out.stdout.contains(&format!("removed backup {a} (")), "{out}");
    ensure!(out.stdout.contains(&format!("kept 1 backup(s): {b}")), "{out}");
    let c = incr(&pg)?.ensure_success()?.stdout.trim().to_string();
    ensure!(c.ends_with('I'), "an incr: {c}");
    let listing: serde_json::Value = serde_json::from_str(
        &Pgwal::new(["--config", &cfg(&config), "list", "--json"]).run()?.ensure_success()?.stdout,
    )?;
    let parent = listing["backups"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == c.as_str()))
        .map(|x| x["parent"].clone());
    ensure!(parent == Some(serde_json::Value::String(b.clone())), "the incr builds on {b}: {listing}");
    ensure!(!files(&root)?.contains("lock/backup"), "every lock released");
    pg.stop()?;
    ensure!(restore_and_read(&dir, &config, "c", &["--backup", &c])? == "1,2,3 3000", "the incr restores");
    verify(&config, &[])?.ensure_success()?;
    Ok(())
}
