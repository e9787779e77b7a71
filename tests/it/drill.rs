//! `pgwal drill` on real PostgreSQL 15: a good backup with pgbench traffic
//! after it recovers to the newest archived WAL with every row committed,
//! and its record shows in `list --json`; a damaged repository (a flipped
//! byte in a WAL object or a pack, a WAL segment deleted from the recovery
//! range) and a heap page that was corrupt on disk when the backup was
//! taken are findings (exit 3, recorded), with no server and no scratch
//! directory left behind and the live cluster untouched; root, an unknown
//! backup ID are refused with one line.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::proxy::{Fault, HttpProxy};
use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// A repository, a drill directory and a config file naming both.
struct Setup {
    dir: TestDir,
    config: PathBuf,
    drill_dir: PathBuf,
}

impl Setup {
    fn new() -> Result<Setup> {
        let dir = TestDir::new()?;
        let repo = format!("repo = \"file://{}\"\n", dir.join("repo").display());
        Setup::with(dir, &repo)
    }

    /// A setup whose config starts with `repo_toml` (the repository and its store).
    fn with(dir: TestDir, repo_toml: &str) -> Result<Setup> {
        let config = dir.join("pgwal.toml");
        let drill_dir = dir.join("drill");
        write_private_file(
            &config,
            &format!("{repo_toml}\n[drill]\ndir = \"{}\"\ntimeout = \"10m\"\n", drill_dir.display()),
        )?;
        Ok(Setup { dir, config, drill_dir })
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    fn pgwal(&self, args: &[&str]) -> Pgwal {
        Pgwal::new(["--config", &self.config.to_string_lossy()]).args(args).timeout(Duration::from_secs(600))
    }

    /// A primary archiving into the repository, with data checksums (initdb's
    /// in tests/common) and a table `t` outside pgbench.
    fn primary(&self) -> Result<PgCluster> {
        let mut pg = PgCluster::init(
            &self.dir.join("primary"),
            &[&archive_command_setting(&self.config), "archive_timeout = 0", "max_wal_size = 64MB"],
        )?;
        pg.start()?;
        pg.sql("CREATE TABLE t (batch int, filler text)")?;
        Ok(pg)
    }

    fn backup(&self, pg: &PgCluster) -> Result<String> {
        let out = self
            .pgwal(&["backup", "--checkpoint", "fast", "--conninfo", &pg.conninfo(), "--pgdata"])
            .arg(pg.data_dir())
            .run()?
            .ensure_success()?;
        Ok(out.stdout.trim().to_string())
    }

    fn list_json(&self) -> Result<serde_json::Value> {
        let out = self.pgwal(&["list", "--json"]).run()?.ensure_success()?;
        serde_json::from_str(&out.stdout).with_context(|| format!("list --json: {}", out.stdout))
    }

    /// What the drill directory holds: nothing once a drill is over.
    fn drill_dir_entries(&self) -> Vec<String> {
        fs::read_dir(&self.drill_dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// `pgwal drill --json ARGS`: the exit code and the record printed.
    fn drill(&self, args: &[&str]) -> Result<(RunOutput, serde_json::Value)> {
        let out = self.pgwal(&["drill", "--json"]).args(args).run()?;
        eprintln!("{}", out.stderr);
        let record = serde_json::from_str(&out.stdout).with_context(|| format!("drill --json: {out}"))?;
        Ok((out, record))
    }
}

fn archive_now(pg: &PgCluster) -> Result<String> {
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    Ok(last)
}

/// The LSN where a segment (16 MiB) named TTTTTTTTXXXXXXXXYYYYYYYY starts.
fn segment_start(name: &str) -> Result<u64> {
    let log = u64::from_str_radix(&name[8..16], 16)?;
    let seg = u64::from_str_radix(&name[16..24], 16)?;
    Ok((log << 32) | (seg << 24))
}

fn parse_lsn(text: &str) -> Result<u64> {
    let (hi, lo) = text.split_once('/').context("an LSN has a slash")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn check_outcome<'a>(record: &'a serde_json::Value, name: &str) -> (&'a str, &'a str) {
    let c = record["checks"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name));
    match c {
        Some(c) => (c["outcome"].as_str().unwrap_or("?"), c["detail"].as_str().unwrap_or("")),
        None => ("absent", ""),
    }
}

/// No postgres process runs with its data directory under `dir`.
fn no_server_under(dir: &Path) -> Result<()> {
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        ensure!(
            !(cmdline.contains("postgres") && cmdline.contains(&*dir.to_string_lossy()) && cmdline.contains("-D")),
            "a server still runs on a scratch copy: {cmdline}"
        );
    }
    Ok(())
}

/// Starts the kept copy on its own configuration and returns a psql query runner.
fn query_kept(kept: &Path, sql: &str) -> Result<String> {
    let conf = kept.join("postgresql.conf");
    let mut start = command_as_user(pg_bin("pg_ctl"));
    start
        .arg("start")
        .arg("-w")
        .arg("-D")
        .arg(kept.join("data"))
        .arg("-l")
        .arg(kept.join("again.log"))
        .arg("-o")
        .arg(format!("-c config_file={}", conf.display()));
    run(&mut start, None, COMMAND_TIMEOUT)?.ensure_success()?;
    let mut psql = command_as_user(pg_bin("psql"));
    psql.args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet", "--port=5432", "--username=postgres"])
        .arg("--host")
        .arg(kept.join("sock"))
        .args(["--dbname=postgres", "--command", sql]);
    let out = run(&mut psql, None, COMMAND_TIMEOUT);
    let mut stop = command_as_user(pg_bin("pg_ctl"));
    stop.args(["stop", "-m", "fast", "-w", "-D"]).arg(kept.join("data"));
    run(&mut stop, None, COMMAND_TIMEOUT)?.ensure_success()?;
    Ok(out?.ensure_success()?.stdout.trim().to_string())
}

#[test]
fn a_good_backup_passes_is_recorded_and_recovers_every_committed_row() -> Result<()> {
    let s = Setup::new()?;
    let pg = s.primary()?;
    pg.pgbench_init(1)?;
    pg.sql("INSERT INTO t SELECT 1, md5(g::text) FROM generate_series(1, 1000) g")?;
    // A tablespace in use by the live cluster: the drill must put its copy elsewhere.
    let ts = s.dir.subdir("ts_live")?;
    pg.sql(&format!("CREATE TABLESPACE space1 LOCATION {}", conf_quote(&ts.to_string_lossy())))?;
    pg.sql("CREATE TABLE in_space (n int) TABLESPACE space1")?;
    pg.sql("INSERT INTO in_space SELECT generate_series(1, 500)")?;
    let ts_before = fs::read_dir(&ts)?.count();
    let id = s.backup(&pg)?;
    pg.sql("INSERT INTO in_space SELECT generate_series(501, 700)")?;
    pg.pgbench(&["--client=2", "--transactions=300", "--no-vacuum"])?;
    pg.sql("INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 1000) g")?;
    let expected = pg.sql(
        "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
         (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(n) FROM in_space)",
    )?;
    let newest = archive_now(&pg)?;
    let system_id = pg.system_identifier()?;

    let (out, record) = s.drill(&["--keep"])?;
    ensure!(out.code() == Some(0), "the drill must pass: {out}");
    ensure!(record["passed"] == true && record["backup"] == id.as_str(), "{record}");
    for name in ["restore", "recovery_target", "queries", "pg_amcheck", "shutdown", "pg_checksums"] {
        let (outcome, detail) = check_outcome(&record, name);
        ensure!(outcome == "passed", "{name}: {outcome} {detail}\n{out}");
    }
    let reached = parse_lsn(record["reached_lsn"].as_str().context("reached_lsn")?)?;
    ensure!(reached >= segment_start(&newest)?, "reached {reached:X}, before the newest segment {newest}");
    ensure!(record["reached_timeline"] == 1, "{record}");
    ensure!(record["target"].as_str().is_some_and(|t| t.contains("newest archived WAL")), "{record}");
    ensure!(out.stderr.contains("kept the scratch directory"), "{}", out.stderr);

    // The kept copy holds exactly what was committed, and is another cluster's copy of ours.
    let kept: Vec<String> = s.drill_dir_entries();
    ensure!(kept.len() == 1 && kept[0].starts_with(&id), "{kept:?}");
    let kept = s.drill_dir.join(&kept[0]);
    let rows = query_kept(
        &kept,
        "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
         (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(n) FROM in_space) || ' ' || \
         (SELECT system_identifier FROM pg_control_system())",
    )?;
    ensure!(fs::read_dir(&ts)?.count() == ts_before, "the live tablespace directory changed");
    let link = fs::read_dir(kept.join("data/pg_tblspc"))?.next().context("a tablespace link")??;
    ensure!(fs::read_link(link.path())?.starts_with(&kept), "the tablespace copy is in the scratch directory");
    ensure!(rows == format!("{expected} {system_id}"), "kept copy has {rows}, expected {expected} {system_id}");
    let pgbench_history: u64 = expected.split(' ').nth(2).context("3 numbers")?.parse()?;
    ensure!(pgbench_history == 600, "pgbench committed {pgbench_history} transactions");
    ensure!(expected.ends_with(&format!(" {}", 700 * 701 / 2)), "rows in the tablespace: {expected}");
    fs::remove_dir_all(&kept)?;

    // Without --keep nothing stays; list shows the newest drill of the backup.
    let (out, second) = s.drill(&[])?;
    ensure!(out.code() == Some(0), "{out}");
    ensure!(s.drill_dir_entries().is_empty(), "scratch left: {:?}", s.drill_dir_entries());
    no_server_under(&s.drill_dir)?;
    let list = s.list_json()?;
    let drills = list["drills"].as_array().context("drills")?;
    ensure!(drills.len() == 1, "{list}");
    let d = &drills[0];
    ensure!(d["backup"] == id.as_str() && d["passed"] == true && d["started"] == second["started"], "{d}");
    ensure!(d["reached_lsn"] == second["reached_lsn"] && d["findings"].as_array().is_some_and(|f| f.is_empty()), "{d}");
    ensure!(d["duration_seconds"].as_u64().is_some() && d["target"] == second["target"], "{d}");
    let text = s.pgwal(&["list"]).run()?.ensure_success()?.stdout;
    ensure!(text.contains(&format!("drill of {id} at ")) && text.contains(": passed in "), "{text}");

    // Both records are kept (never rewritten): one object per drill.
    let records = fs::read_dir(s.repo().join("drill").join(&id))?.count();
    ensure!(records == 2, "{records} drill records");

    // An unknown backup: one line, exit 2, nothing recorded.
    for bad in ["20200101T000000F", "latest"] {
        let out = s.pgwal(&["drill", "--backup", bad]).run()?;
        ensure!(out.code() == Some(2), "{out}");
        let first = out.stderr.lines().next().unwrap_or("");
        ensure!(first.starts_with("pgwal: error:") && out.stderr.lines().count() <= 2, "{out}");
    }
    ensure!(fs::read_dir(s.repo().join("drill"))?.count() == 1, "nothing recorded for unknown backups");
    Ok(())
}

fn flip_byte(path: &Path) -> Result<Vec<u8>> {
    let original = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = original.clone();
    let at = bytes.len() / 2 + 1;
    bytes[at] ^= 0x40;
    fs::write(path, bytes)?;
    Ok(original)
}

fn wal_object(repo: &Path, segment: &str) -> PathBuf {
    repo.join("wal").join(&segment[..16]).join(segment)
}

#[test]
fn a_damaged_repository_is_a_finding_and_leaves_nothing_behind() -> Result<()> {
    let s = Setup::new()?;
    let pg = s.primary()?;
    let id = s.backup(&pg)?;
    // Three segments after the backup: the middle one is damaged below.
    let mut segments = Vec::new();
    for batch in 1..=3 {
        pg.sql(&format!("INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, 1000) g"))?;
        segments.push(archive_now(&pg)?);
    }
    let middle = wal_object(&s.repo(), &segments[1]);
    let live_pid = fs::read_to_string(pg.data_dir().join("postmaster.pid"))?;
    let live_rows = pg.sql("SELECT count(*) FROM t")?;

    let expect_finding = |what: &str, check: &str, needle: &str| -> Result<serde_json::Value> {
        let (out, record) = s.drill(&[])?;
        ensure!(out.code() == Some(3), "{what}: exit 3 expected: {out}");
        ensure!(record["passed"] == false, "{what}: {record}");
        let (outcome, detail) = check_outcome(&record, check);
        ensure!(outcome == "failed" && detail.contains(needle), "{what}: {check} {outcome}: {detail}\n{out}");
        ensure!(out.stderr.contains("pgwal: error: the drill of backup"), "{what}: {}", out.stderr);
        ensure!(s.drill_dir_entries().is_empty(), "{what}: scratch left: {:?}", s.drill_dir_entries());
        no_server_under(&s.drill_dir)?;
        let list = s.list_json()?;
        let d = &list["drills"][0];
        ensure!(d["passed"] == false && d["started"] == record["started"], "{what}: {list}");
        ensure!(
            d["findings"].as_array().is_some_and(|f| f.iter().any(|f| f.as_str().is_some_and(|f| f.contains(needle)))),
            "{what}: {d}"
        );
        Ok(record)
    };

    // A flipped byte in a WAL object: fetch refuses it, PostgreSQL stops recovery.
    let original = flip_byte(&middle)?;
    expect_finding("flipped WAL", "recovery_target", "exited during recovery")?;
    fs::write(&middle, &original)?;

    // A WAL segment missing from the recovery range: refused before anything is restored.
    let aside = s.dir.join("aside");
    fs::rename(&middle, &aside)?;
    let record = expect_finding("missing WAL", "restore", &segments[1])?;
    ensure!(check_outcome(&record, "pg_amcheck").0 == "skipped", "{record}");
    fs::rename(&aside, &middle)?;

    // A flipped byte in a pack: the restore names the corrupt object.
    let pack = s.repo().join("backup").join(&id).join("pack").join("000000");
    let original = flip_byte(&pack)?;
    expect_finding("flipped pack", "restore", "corrupt")?;
    fs::write(&pack, &original)?;

    // Repaired, the same backup passes again.
    let (out, _) = s.drill(&[])?;
    ensure!(out.code() == Some(0), "after repair: {out}");

    // The live cluster never noticed.
    ensure!(fs::read_to_string(pg.data_dir().join("postmaster.pid"))? == live_pid, "the live server restarted");
    ensure!(pg.sql("SELECT count(*) FROM t")? == live_rows, "the live cluster changed");
    ensure!(pg.sql("SELECT pg_is_in_recovery()")? == "f", "the live server is a primary");
    Ok(())
}

#[test]
fn a_heap_page_corrupt_in_the_backup_is_found() -> Result<()> {
    let s = Setup::new()?;
    let mut pg = s.primary()?;
    pg.sql("CREATE TABLE victim (id int, filler text) WITH (autovacuum_enabled = off)")?;
    pg.sql("INSERT INTO victim SELECT g, md5(g::text) FROM generate_series(1, 2000) g")?;
    pg.sql("CHECKPOINT")?;
    let rel = pg.sql("SELECT pg_relation_filepath('victim')")?;
    // Garbage in the middle of the first page while the server is stopped:
    // its checksum no longer matches, and the backup copies it as it is.
    pg.stop()?;
    let file = pg.data_dir().join(&rel);
    let mut bytes = fs::read(&file)?;
    for b in &mut bytes[4000..4100] {
        *b ^= 0x5A;
    }
    fs::write(&file, bytes)?;
    pg.start()?;
    s.backup(&pg)?;
    archive_now(&pg)?;

    let (out, record) = s.drill(&[])?;
    ensure!(out.code() == Some(3), "exit 3 expected: {out}");
    let (amcheck, amcheck_detail) = check_outcome(&record, "pg_amcheck");
    ensure!(amcheck == "failed", "pg_amcheck: {amcheck} {amcheck_detail}\n{out}");
    let (checksums, detail) = check_outcome(&record, "pg_checksums");
    ensure!(checksums == "failed" && detail.contains("1 bad checksum"), "pg_checksums: {checksums} {detail}\n{out}");
    ensure!(check_outcome(&record, "recovery_target").0 == "passed", "{record}");
    ensure!(s.drill_dir_entries().is_empty(), "scratch left");
    Ok(())
}

#[test]
fn root_is_refused_before_anything_is_written() -> Result<()> {
    if !run_as().switch {
        eprintln!("skipped: the tests do not run as root");
        return Ok(());
    }
    let s = Setup::new()?;
    // As root itself, not as the run-as user.
    let mut cmd = std::process::Command::new(pgwal_bin());
    cmd.arg("--config").arg(&s.config).arg("drill");
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(out.stderr.contains("refusing to run a drill as root"), "{out}");
    ensure!(out.stderr.contains("sudo -u postgres pgwal drill"), "{out}");
    ensure!(!s.drill_dir.exists() && !s.repo().exists(), "nothing may be written");
    Ok(())
}

/// Over S3 (through a proxy that can stall requests): a good drill passes;
/// a recovery that cannot get its WAL is stopped at drill.timeout and
/// recorded as failed; SIGTERM during a drill stops the server, removes the
/// scratch directory and records nothing.
#[test]
fn over_s3_a_drill_passes_is_bounded_by_its_timeout_and_stops_on_sigterm() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let proxy = HttpProxy::start(s3.port())?;
    let repo_toml = format!(
        "repo = \"s3://pgwal/main\"\n\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
         secret_access_key = {}\nallow_http = true\n",
        toml_quote(&proxy.endpoint()),
        toml_quote(s3.access_key()),
        toml_quote(s3.secret_key()),
    );
    let s = Setup::with(TestDir::new()?, &repo_toml)?;
    let pg = s.primary()?;
    pg.sql("INSERT INTO t SELECT 1, md5(g::text) FROM generate_series(1, 1000) g")?;
    let id = s.backup(&pg)?;
    pg.sql("INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 1000) g")?;
    let newest = archive_now(&pg)?;

    let (out, record) = s.drill(&[])?;
    ensure!(out.code() == Some(0), "over S3: {out}");
    ensure!(parse_lsn(record["reached_lsn"].as_str().context("reached_lsn")?)? >= segment_start(&newest)?, "{record}");

    // Every WAL download stalls: recovery cannot proceed, the deadline ends the drill.
    proxy.inject("GET", "/wal/00000001", Fault::Stall(Duration::from_secs(60)), 1000);
    let short = s.dir.join("short.toml");
    write_private_file(
        &short,
        &format!("{repo_toml}\n[drill]\ndir = \"{}\"\ntimeout = \"10s\"\n", s.drill_dir.display()),
    )?;
    let out = Pgwal::new(["--config", &short.to_string_lossy(), "drill", "--json"]).run()?;
    ensure!(out.code() == Some(3), "timeout: exit 3 expected: {out}");
    let timed_out: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| format!("{out}"))?;
    let failed = timed_out["checks"].as_array().context("checks")?.iter().find(|c| c["outcome"] == "failed");
    ensure!(
        failed.is_some_and(|c| c["detail"].as_str().is_some_and(|d| d.contains("drill.timeout (10s)"))),
        "timeout: {timed_out}"
    );
    ensure!(s.drill_dir_entries().is_empty(), "timeout: scratch left: {:?}", s.drill_dir_entries());
    no_server_under(&s.drill_dir)?;
    let list = s.list_json()?;
    ensure!(list["drills"][0]["started"] == timed_out["started"] && list["drills"][0]["passed"] == false, "{list}");

    // SIGTERM while the server waits for WAL: stopped, removed, nothing recorded.
    let mut child = s
        .pgwal(&["drill"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until(WAIT, "the throwaway server to start", || {
        Ok(s.drill_dir_entries().iter().any(|e| s.drill_dir.join(e).join("postgresql.log").exists()))
    })?;
    let kill = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    ensure!(kill.success(), "kill -TERM");
    wait_until(Duration::from_secs(30), "pgwal drill to exit after SIGTERM", || Ok(child.try_wait()?.is_some()))?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1) && stderr.contains("interrupted by SIGTERM"), "{:?} {stderr}", out.status);
    ensure!(s.drill_dir_entries().is_empty(), "SIGTERM: scratch left: {:?}", s.drill_dir_entries());
    no_server_under(&s.drill_dir)?;
    let after = s.list_json()?;
    ensure!(after["drills"] == list["drills"], "nothing recorded: {after}");
    ensure!(after["drills"][0]["backup"] == id.as_str(), "{after}");
    Ok(())
}

/// A drill on an encrypted repository: it passes with the key, reaches the
/// newest archived WAL, and its record is stored sealed like every other
/// object; with a wrong key it fails in one line (exit 2), records nothing
/// and leaves no scratch directory.
#[test]
fn an_encrypted_repository_drills_and_a_wrong_key_is_one_line() -> Result<()> {
    let dir = TestDir::new()?;
    let key_file = dir.join("repo.key");
    let key = crate::encryption::write_key(&key_file, 0o600)?;
    let repo = format!(
        "repo = \"file://{}\"\n[encryption]\nkey_file = {}\n",
        dir.join("repo").display(),
        toml_quote(&key_file.to_string_lossy())
    );
    let s = Setup::with(dir, &repo)?;
    let pg = s.primary()?;
    pg.sql("INSERT INTO t SELECT 1, md5(g::text) FROM generate_series(1, 1000) g")?;
    let id = s.backup(&pg)?;
    pg.sql("INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 1000) g")?;
    let newest = archive_now(&pg)?;

    let (out, record) = s.drill(&[])?;
    ensure!(out.code() == Some(0), "the drill passes with the key: {out}");
    ensure!(record["passed"] == true && record["backup"] == id.as_str(), "{record}");
    let reached = parse_lsn(record["reached_lsn"].as_str().context("reached_lsn")?)?;
    ensure!(reached >= segment_start(&newest)?, "reached {reached:X}, before the newest segment {newest}");
    ensure!(!out.stderr.contains(&key) && !out.stdout.contains(&key), "the drill shows the key");
    let records: Vec<PathBuf> =
        fs::read_dir(s.repo().join("drill").join(&id))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    ensure!(records.len() == 1, "{records:?}");
    ensure!(fs::read(&records[0])?.starts_with(b"PGWALENC"), "the drill record is sealed");
    ensure!(s.list_json()?["drills"][0]["passed"] == true, "list shows the drill");
    ensure!(s.drill_dir_entries().is_empty(), "scratch left: {:?}", s.drill_dir_entries());

    let wrong = s.dir.join("wrong.key");
    crate::encryption::write_key(&wrong, 0o600)?;
    let out = s.pgwal(&["--encryption-key-file"]).arg(&wrong).arg("drill").run()?;
    ensure!(out.code() == Some(2), "a wrong key: exit 2: {out}");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("pgwal: error:")).collect();
    ensure!(errors.len() == 1 && errors[0].contains("does not open repository"), "one line: {out}");
    ensure!(fs::read_dir(s.repo().join("drill").join(&id))?.count() == 1, "nothing recorded with a wrong key");
    ensure!(s.drill_dir_entries().is_empty(), "scratch left: {:?}", s.drill_dir_entries());
    no_server_under(&s.drill_dir)?;
    Ok(())
}
