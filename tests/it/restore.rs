//! `pgwal restore` and `pgwal standby` on real PostgreSQL 15: point-in-time
//! recovery to each kind of target with exact row counts, tablespaces kept
//! and relocated, `pg_checksums` and `pg_amcheck` as judges of the restored
//! data; a standby seeded from the repository that streams, fails over and
//! archives timeline 2, which a later restore follows; and every refusal
//! (unreachable targets, WAL gaps, non-empty directories, unknown backups,
//! corrupt packs) leaving no startable directory behind.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// A primary archiving into the repository of `config`, with a tablespace
/// outside its data directory and table `t` in it.
fn primary(dir: &TestDir, config: &Path) -> Result<(PgCluster, PathBuf)> {
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(config), "archive_timeout = 0", "max_wal_size = 64MB"],
    )?;
    pg.start()?;
    let ts = dir.subdir("ts_primary")?;
    pg.sql(&format!("CREATE TABLESPACE space1 LOCATION {}", conf_quote(&ts.to_string_lossy())))?;
    pg.sql("CREATE TABLE t (batch int, filler text) TABLESPACE space1")?;
    pg.sql("CREATE INDEX t_batch ON t (batch) TABLESPACE space1")?;
    pg.pgbench_init(1)?;
    Ok((pg, ts))
}

fn config_arg(config: &Path) -> String {
    config.to_string_lossy().into_owned()
}

/// `pgwal backup`; returns the backup ID.
fn backup(pg: &PgCluster, config: &Path, env: &[(String, String)]) -> Result<String> {
    let out = Pgwal::new([
        "--config",
        &config_arg(config),
        "backup",
        "--checkpoint",
        "fast",
        "--conninfo",
        &pg.conninfo(),
        "--pgdata",
    ])
    .arg(pg.data_dir())
    .envs(env.iter().cloned())
    .run()?
    .ensure_success()?;
    Ok(out.stdout.trim().to_string())
}

fn insert_batch(pg: &PgCluster, batch: u32) -> Result<()> {
    pg.sql(&format!("INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, 1000) g"))?;
    Ok(())
}

/// Switches WAL and waits until the segment is archived.
fn archive_now(pg: &PgCluster) -> Result<String> {
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    Ok(last)
}

/// `pgwal restore` into `home/pgdata` with `args`.
fn restore(config: &Path, home: &Path, args: &[&str], env: &[(String, String)]) -> Result<RunOutput> {
    Pgwal::new(["--config", &config_arg(config), "restore", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .args_from(args)
        .envs(env.iter().cloned())
        .run()
}

trait ArgsFrom {
    fn args_from(self, args: &[&str]) -> Self;
}

impl ArgsFrom for Pgwal {
    fn args_from(mut self, args: &[&str]) -> Pgwal {
        for a in args {
            self = self.arg(a);
        }
        self
    }
}

/// Starts a restored copy (no archiving: it would archive into the
/// repository once promoted) and waits until recovery paused at its target
/// or ended.
fn start_restored(home: &Path, extra_conf: &[&str]) -> Result<PgCluster> {
    let mut pg = PgCluster::existing(home)?;
    pg.set_conf(&["archive_mode = off"])?;
    pg.set_conf(extra_conf)?;
    pg.start()?;
    wait_until(WAIT, "recovery to pause at its target or end", || {
        let state = pg.sql(
            "SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused' OR NOT pg_is_in_recovery()",
        )?;
        Ok(state == "t")
    })
    .with_context(|| pg.log_tail(30))?;
    Ok(pg)
}

fn count(pg: &PgCluster) -> Result<String> {
    pg.sql("SELECT count(*) || ' ' || count(DISTINCT batch) FROM t")
}

/// After a clean shutdown, PostgreSQL's own checker agrees with every page
/// of the restored copy, tablespace included.
fn checksums_ok(pg: &mut PgCluster) -> Result<()> {
    pg.stop()?;
    let mut cmd = command_as_user(pg_bin("pg_checksums"));
    cmd.arg("--check").arg("--pgdata").arg(pg.data_dir());
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.success() && out.stdout.contains("Bad checksums:  0"), "pg_checksums: {out}");
    Ok(())
}

#[test]
fn point_in_time_recovery_to_every_kind_of_target() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    let (pg, ts) = primary(&dir, &config)?;
    let id = backup(&pg, &config, &[])?;

    insert_batch(&pg, 1)?;
    pg.sql("SELECT pg_create_restore_point('after_batch_1')")?;
    let xid = pg.sql(
        "BEGIN; INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 1000) g; SELECT txid_current(); COMMIT;",
    )?;
    insert_batch(&pg, 3)?;
    let time = pg.sql("SELECT clock_timestamp()::text")?;
    insert_batch(&pg, 4)?;
    let lsn = pg.sql("SELECT pg_current_wal_lsn()")?;
    insert_batch(&pg, 5)?;
    archive_now(&pg)?;

    // Each restore relocates the tablespace: the primary's is in use.
    let cases: [(&str, Vec<String>, &str); 6] = [
        ("immediate", vec!["--target-immediate".into()], "0 0"),
        ("name", vec!["--target-name".into(), "after_batch_1".into()], "1000 1"),
        ("xid", vec!["--target-xid".into(), xid.clone(), "--backup".into(), id.clone()], "2000 2"),
        ("time", vec!["--target-time".into(), time.clone(), "--target-action".into(), "promote".into()], "3000 3"),
        ("lsn", vec!["--target-lsn".into(), lsn.clone()], "4000 4"),
        ("latest", vec![], "5000 5"),
    ];
    for (name, args, expected) in cases {
        let home = dir.join(format!("r_{name}"));
        let new_ts = home.join("ts");
        let map = format!("--tablespace-map={}={}", ts.display(), new_ts.display());
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.push(&map);
        let out = restore(&config, &home, &all, &[])?.ensure_success()?;
        ensure!(out.stdout.trim() == id, "{name}: restored {:?}, expected backup {id}", out.stdout);
        // A target left in postgresql.conf must not apply (the restore overrides every target key).
        let mut copy = start_restored(&home, &["recovery_target_xid = '3'"])?;
        let rows = count(&copy).with_context(|| copy.log_tail(20))?;
        ensure!(rows == expected, "{name}: {rows} rows/batches, expected {expected}\n{}", copy.log_tail(20));
        ensure!(
            fs::read_link(home.join("pgdata/pg_tblspc").join(first_entry(&home.join("pgdata/pg_tblspc"))?))? == new_ts,
            "{name}: tablespace link"
        );
        let in_recovery = copy.sql("SELECT pg_is_in_recovery()")?;
        let promoted = matches!(name, "time" | "latest");
        ensure!(in_recovery == if promoted { "f" } else { "t" }, "{name}: in recovery = {in_recovery}");
        if name == "latest" {
            let mut amcheck = copy.pg_client("pg_amcheck");
            amcheck.args(["--install-missing", "--heapallindexed", "--database=postgres"]);
            let out = run(&mut amcheck, None, COMMAND_TIMEOUT)?;
            ensure!(out.success(), "pg_amcheck: {out}");
            ensure!(copy.sql("SELECT count(*) FROM pgbench_accounts")? == "100000", "pgbench data");
        }
        checksums_ok(&mut copy)?;
    }
    Ok(())
}

fn first_entry(dir: &Path) -> Result<String> {
    let entry = fs::read_dir(dir)?.next().context("empty directory")??;
    Ok(entry.file_name().to_string_lossy().into_owned())
}

#[test]
fn tablespace_returns_to_its_original_directory() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    let (mut pg, ts) = primary(&dir, &config)?;
    insert_batch(&pg, 1)?;
    backup(&pg, &config, &[])?;
    insert_batch(&pg, 2)?;
    archive_now(&pg)?;
    // The cluster is lost, tablespace and all.
    pg.stop()?;
    drop(pg);
    fs::remove_dir_all(dir.join("primary/pgdata"))?;
    fs::remove_dir_all(&ts)?;

    let home = dir.join("primary");
    // A restore killed midway leaves nothing startable; the same command then simply resumes.
    let mut cmd =
        Pgwal::new(["--config", &config_arg(&config), "restore", "--target-dir"]).arg(home.join(DATA_SUBDIR)).command();
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = cmd.spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let finished = child.try_wait()?.is_some();
    if !finished {
        child.kill()?;
    }
    child.wait()?;
    if !finished {
        ensure!(!home.join("pgdata/global/pg_control").exists(), "a killed restore must not be startable");
    }
    let rerun = restore(&config, &home, &[], &[])?;
    ensure!(rerun.success() || finished, "the rerun resumes: {rerun}");
    let mut copy = start_restored(&home, &[])?;
    ensure!(count(&copy)? == "2000 2", "rows after restore: {}", count(&copy)?);
    ensure!(fs::read_dir(&ts)?.count() == 1, "the tablespace is back in {}", ts.display());
    copy.sql("CREATE TABLE after (n int) TABLESPACE space1; INSERT INTO after VALUES (1)")?;
    checksums_ok(&mut copy)?;
    Ok(())
}

#[test]
fn standby_streams_fails_over_and_a_restore_follows_the_new_timeline() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://pgwal/main"))?;
    let (mut pg, ts) = primary(&dir, &config)?;
    insert_batch(&pg, 1)?;
    backup(&pg, &config, &[])?;
    insert_batch(&pg, 2)?;
    archive_now(&pg)?;

    let home = dir.join("standby");
    let map = format!("{}={}", ts.display(), home.join("ts").display());
    Pgwal::new(["--config", &config_arg(&config), "standby", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .args_from(&[
            "--primary-conninfo",
            &pg.conninfo(),
            "--slot",
            "standby_1",
            "--create-slot",
            "--tablespace-map",
            &map,
        ])
        .run()?
        .ensure_success()?;
    let mut standby = PgCluster::existing(&home)?;
    standby.start()?;
    wait_until(WAIT, "the standby to stream", || {
        Ok(pg.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")? == "1")
    })
    .with_context(|| standby.log_tail(30))?;
    ensure!(pg.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_1'")? == "t", "slot in use");
    insert_batch(&pg, 3)?;
    wait_until(WAIT, "the standby to serve the latest rows", || Ok(count(&standby)? == "3000 3"))?;
    ensure!(standby.log_contents().contains("restored log file"), "the standby caught up from the archive first");

    // Failover: the primary is gone, the standby takes over on timeline 2 and archives there.
    pg.stop()?;
    ensure!(standby.sql("SELECT pg_promote()")? == "t", "promotion");
    insert_batch(&standby, 4)?;
    let last = archive_now(&standby)?;
    ensure!(last.starts_with("00000002"), "the new primary archives timeline 2, got {last}");

    let home = dir.join("after_failover");
    let map = format!("--tablespace-map={}={}", ts.display(), home.join("ts").display());
    restore(&config, &home, &[&map], &[])?.ensure_success()?;
    let copy = start_restored(&home, &[])?;
    ensure!(count(&copy)? == "4000 4", "restore to latest after failover: {}", count(&copy)?);
    let log = copy.log_contents();
    ensure!(log.contains("restored log file \"00000002.history\""), "followed timeline 2:\n{}", copy.log_tail(30));
    ensure!(log.contains(&format!("restored log file \"{last}\"")), "replayed timeline 2's WAL");
    Ok(())
}

/// Runs a restore that must fail with `code`, its message containing `text`,
/// and checks that it left nothing startable behind.
fn refused(config: &Path, home: &Path, args: &[&str], code: i32, text: &str) -> Result<()> {
    let out = restore(config, home, args, &[])?;
    ensure!(out.code() == Some(code), "{args:?}: expected exit {code}: {out}");
    let first = out.stderr.lines().next().unwrap_or("");
    ensure!(first.starts_with("pgwal: error: ") && first.contains(text), "{args:?}: {out}");
    let data = home.join(DATA_SUBDIR);
    ensure!(!data.join("recovery.signal").exists() && !data.join("global/pg_control").exists(), "{args:?}");
    Ok(())
}

#[test]
fn refusals_leave_nothing_startable() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", repo.display()))?;
    let (pg, ts) = primary(&dir, &config)?;
    let before_backup = pg.sql("SELECT (clock_timestamp() - interval '1 hour')::text")?;
    let id = backup(&pg, &config, &[])?;
    insert_batch(&pg, 1)?;
    let map = |home: &Path| format!("--tablespace-map={}={}", ts.display(), home.join("ts").display());

    // Unreachable targets and unknown backups: refused before DIR exists.
    let home = dir.join("r1");
    refused(&config, &home, &["--target-time", &before_backup], 1, "no backup reaches target time")?;
    refused(&config, &home, &["--backup", "20200101T000000F"], 2, "no complete backup '20200101T000000F'")?;
    refused(&config, &home, &["--target-xid", "5", "--target-name", "x"], 2, "cannot be used with")?;
    refused(&config, &home, &["--tablespace-map=/nope=/x"], 2, "'/nope' is not a tablespace directory")?;
    ensure!(!home.exists(), "nothing was written for any refusal");
    // Without --tablespace-map the tablespace would go where the running primary has it.
    refused(&config, &home, &[], 2, "tablespace")?;
    ensure!(!home.exists(), "nothing was written for any refusal");

    // A non-empty target needs --delta; with it, a used copy is brought back to the target.
    let home = dir.join("r2");
    restore(&config, &home, &["--target-immediate", "--target-action", "promote", &map(&home)], &[])?
        .ensure_success()?;
    let mut copy = start_restored(&home, &[])?;
    copy.sql("INSERT INTO t SELECT 99, 'diverged' FROM generate_series(1, 10)")?;
    copy.stop()?;
    drop(copy);
    let out = restore(&config, &home, &["--target-immediate", &map(&home)], &[])?;
    ensure!(out.code() == Some(2) && out.stderr.contains("is not empty"), "needs --delta: {out}");
    let out = restore(&config, &home, &["--target-immediate", "--delta", &map(&home)], &[])?.ensure_success()?;
    ensure!(out.stderr.contains("files kept as they were"), "delta kept files: {out}");
    let mut copy = start_restored(&home, &[])?;
    ensure!(count(&copy)? == "0 0", "delta restore is back at the backup: {}", count(&copy)?);
    checksums_ok(&mut copy)?;

    // A gap in the archive: targets beyond it are refused, naming the segment.
    let gone = archive_now(&pg)?;
    insert_batch(&pg, 2)?;
    let after_gap = pg.sql("SELECT pg_current_wal_lsn()")?;
    archive_now(&pg)?;
    let time_after_gap = pg.sql("SELECT clock_timestamp()::text")?;
    insert_batch(&pg, 3)?;
    archive_now(&pg)?;
    let segment = repo.join("wal").join(&gone[..16]).join(&gone);
    fs::remove_file(&segment).with_context(|| segment.display().to_string())?;
    let home = dir.join("r3");
    let m = map(&home);
    refused(&config, &home, &["--target-lsn", &after_gap, &m], 1, &format!("'{gone}' is missing"))?;
    refused(&config, &home, &["--target-time", &time_after_gap, &m], 1, &format!("'{gone}' is missing"))?;
    refused(&config, &home, &[&m], 1, &format!("'{gone}' is missing"))?;
    ensure!(!home.exists(), "nothing was written for the gap refusals");

    // A corrupt pack: the restore fails naming the object, and the directory does not start.
    let pack = repo.join(format!("backup/{id}/pack/000000"));
    let mut bytes = fs::read(&pack)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    fs::write(&pack, &bytes)?;
    let home = dir.join("r4");
    let out = restore(&config, &home, &["--target-immediate", &map(&home)], &[])?;
    ensure!(out.code() == Some(1), "corrupt pack must fail: {out}");
    ensure!(out.stderr.contains(&format!("backup/{id}/pack/000000")) && out.stderr.contains("corrupt"), "{out}");
    let data = home.join(DATA_SUBDIR);
    ensure!(!data.join("recovery.signal").exists() && !data.join("global/pg_control").exists(), "not startable");
    ensure!(!data.join("backup_label").exists(), "no backup_label either");
    if data.join("PG_VERSION").exists() {
        let mut broken = PgCluster::existing(&home)?;
        if broken.start().is_ok() {
            bail!("a failed restore must not start");
        }
    }
    Ok(())
}

/// On a terminal, what restore says about its plan (here: a target time
/// without a time zone, read as UTC) comes before the progress bar, not after
/// the work is done.
#[test]
fn notices_about_the_plan_come_before_the_progress_bar() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    let (pg, ts) = primary(&dir, &config)?;
    backup(&pg, &config, &[])?;
    insert_batch(&pg, 1)?;
    let time = pg.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")?;
    insert_batch(&pg, 2)?;
    archive_now(&pg)?;

    let home = dir.join("r_tty");
    let map = format!("--tablespace-map={}={}", ts.display(), home.join("ts").display());
    let target_dir = home.join(DATA_SUBDIR).to_string_lossy().into_owned();
    let line = [
        pgwal_bin().to_string_lossy().as_ref(),
        "--config",
        &config_arg(&config),
        "restore",
        "--target-dir",
        &target_dir,
        "--target-time",
        &time,
        &map,
    ]
    .iter()
    .map(|a| shell_quote(a))
    .collect::<Vec<_>>()
    .join(" ");
    // script(1) gives pgwal a terminal and copies what it drew to stdout.
    let mut cmd = command_as_user("script");
    cmd.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.success(), "{out}");
    let notice = out.stdout.find("target time has no time zone").with_context(|| format!("no notice: {out}"))?;
    // The bar redraws its line with "erase to end of line"; nothing else does.
    let bar = out.stdout.find("\x1b[K").with_context(|| format!("no progress bar on the terminal: {out}"))?;
    ensure!(notice < bar, "the notice comes after the progress bar: {:?}", out.stdout);
    let mut copy = start_restored(&home, &[])?;
    ensure!(count(&copy)? == "1000 1", "recovered to the time between the batches\n{}", copy.log_tail(20));
    copy.stop()?;
    Ok(())
}
