//! Incremental and differential backups (`pgwal backup --type incr|diff`)
//! judged on real PostgreSQL 15 through the CLI contract only (SPEC §7):
//! a chain full → incr → incr → diff taken under concurrent pgbench and
//! recovered to a point after each member (file:// and S3); every kind of
//! relation file change between backups (new databases by both strategies,
//! VACUUM FULL, TRUNCATE, DROP, a file that shrinks, a tablespace move, an
//! unlogged table) restored byte for byte; a cluster without data checksums
//! or wal_log_hints whose pages change by hint bits only; a damaged full
//! refusing restore, verify and drill of its incr; expire keeping whole
//! chains; and an incr killed by SIGKILL that leaves nothing half-made.
//!
//! The restored relation files are compared with the primary's bytes before
//! the restored server starts, so WAL replay cannot hide a block the backup
//! got wrong; rows are compared by per-table digests after recovery, and
//! `pg_amcheck` and `pg_checksums` judge the pages.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(180);

/// The pgbench tables with the key that orders their rows.
const PGBENCH_TABLES: [&str; 4] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];

/// A primary archiving into a repository (a directory, or a bucket of the S3
/// test server), and where the repository's objects lie on disk.
struct Setup {
    dir: TestDir,
    config: PathBuf,
    pg: PgCluster,
    /// The repository's root on disk: the file:// directory, or
    /// `S3_ROOT/bucket/prefix` (s3s-fs keeps an object as a file there).
    repo: PathBuf,
    _s3: Option<S3Server>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Storage {
    File,
    S3,
}

/// `initdb` options of the primary.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checksums {
    On,
    /// No data checksums and `wal_log_hints = off`: hint bits reach the
    /// pages without any WAL.
    Off,
}

fn setup(storage: Storage, checksums: Checksums, extra_conf: &[&str]) -> Result<Setup> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let drill = format!("\n[drill]\ndir = {}\ntimeout = \"10m\"\n", toml_quote(&dir.join("drill").to_string_lossy()));
    let (repo, s3) = match storage {
        Storage::File => {
            let repo = dir.join("repo");
            write_private_file(&config, &format!("repo = \"file://{}\"\n{drill}", repo.display()))?;
            (repo, None)
        }
        Storage::S3 => {
            let s3 = S3Server::start()?;
            let bucket = s3.create_bucket("pgwal")?;
            write_private_file(&config, &format!("{}{drill}", s3.config_toml("s3://pgwal/incr")))?;
            (bucket.join("incr"), Some(s3))
        }
    };
    let archive = archive_command_setting(&config);
    let mut conf = vec![archive.as_str(), "archive_timeout = 0", "max_wal_size = 256MB"];
    conf.extend_from_slice(extra_conf);
    let home = dir.join("primary");
    let mut pg = match checksums {
        Checksums::On => PgCluster::init(&home, &conf)?,
        Checksums::Off => init_without_checksums(&home, &conf)?,
    };
    pg.start()?;
    Ok(Setup { dir, config, pg, repo, _s3: s3 })
}

/// As [`PgCluster::init`] but without `--data-checksums` (and with
/// `wal_log_hints` explicitly off), which the harness always sets.
fn init_without_checksums(home: &Path, extra_conf: &[&str]) -> Result<PgCluster> {
    create_user_dir(home)?;
    let mut initdb = command_as_user(pg_bin("initdb"));
    initdb
        .current_dir(home)
        .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync", "--pgdata"])
        .arg(home.join(DATA_SUBDIR));
    run(&mut initdb, None, COMMAND_TIMEOUT)?.ensure_success()?;
    let pg = PgCluster::existing(home)?;
    pg.set_conf(&[
        "wal_level = replica",
        "archive_mode = on",
        "max_wal_senders = 10",
        "fsync = off",
        "wal_log_hints = off",
        "log_line_prefix = '%m [%p] '",
    ])?;
    pg.set_conf(extra_conf)?;
    Ok(pg)
}

impl Setup {
    fn config_arg(&self) -> String {
        self.config.to_string_lossy().into_owned()
    }

    fn pgwal(&self, args: &[&str]) -> Pgwal {
        Pgwal::new(["--config", &self.config_arg()]).args(args.iter().copied())
    }

    /// `pgwal backup --type KIND` of the primary, as a command not yet run.
    fn backup_command(&self, kind: &str) -> Pgwal {
        self.pgwal(&["backup", "--type", kind, "--checkpoint", "fast", "--conninfo", &self.pg.conninfo(), "--pgdata"])
            .arg(self.pg.data_dir())
    }

    /// `pgwal backup --type KIND`; returns the backup ID it printed.
    fn backup(&self, kind: &str) -> Result<String> {
        let out = self.backup_command(kind).run()?;
        ensure!(out.success(), "backup --type {kind}: {out}");
        let id = out.stdout.trim().to_string();
        ensure!(!id.is_empty() && !id.contains('\n'), "backup --type {kind} prints its ID alone: {out}");
        Ok(id)
    }

    /// `pgwal list --json`.
    fn list(&self) -> Result<Value> {
        let out = self.pgwal(&["list", "--json"]).run()?.ensure_success()?;
        serde_json::from_str(&out.stdout).with_context(|| format!("list --json: {out}"))
    }

    /// `(id, type, parent)` of every complete backup, as `list --json` gives them.
    fn chain(&self) -> Result<Vec<(String, String, Option<String>)>> {
        let list = self.list()?;
        let backups = list["backups"].as_array().with_context(|| format!("no backups array: {list}"))?;
        backups
            .iter()
            .map(|b| {
                let id = b["id"].as_str().with_context(|| format!("backup without id: {b}"))?;
                let kind = b["type"].as_str().with_context(|| format!("backup without type: {b}"))?;
                let parent = match &b["parent"] {
                    Value::Null => None,
                    Value::String(p) => Some(p.clone()),
                    other => bail!("parent of {id} is neither null nor an ID: {other}"),
                };
                Ok((id.to_string(), kind.to_string(), parent))
            })
            .collect()
    }

    /// The `stored_size` that `list --json` gives backup `id`.
    fn stored_size(&self, id: &str) -> Result<u64> {
        let list = self.list()?;
        let backup = list["backups"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["id"] == id))
            .with_context(|| format!("{id} not listed: {list}"))?;
        backup["stored_size"].as_u64().with_context(|| format!("no stored_size: {backup}"))
    }

    /// `pgwal restore --target-dir HOME/pgdata ARGS`.
    fn restore(&self, home: &Path, args: &[&str]) -> Result<RunOutput> {
        self.pgwal(&["restore"]).args(args.iter().copied()).arg("--target-dir").arg(home.join(DATA_SUBDIR)).run()
    }

    /// Switches WAL on the primary and waits until the segment is archived,
    /// so that recovery to any point before can find its WAL.
    fn archive_now(&self) -> Result<()> {
        let last = self.pg.switch_wal()?;
        self.pg.wait_archived(&last, WAIT)
    }

    /// The backup directories in the repository (`backup/ID`), complete or not.
    fn backup_dirs(&self) -> Result<BTreeSet<String>> {
        let root = self.repo.join("backup");
        let mut ids = BTreeSet::new();
        if root.is_dir() {
            for entry in fs::read_dir(&root)? {
                ids.insert(entry?.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(ids)
    }

    /// Every object of the repository (relative path and size).
    fn objects(&self) -> Result<BTreeMap<String, u64>> {
        let mut all = BTreeMap::new();
        walk(&self.repo, &self.repo, &mut all)?;
        Ok(all)
    }
}

fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<String, u64>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &entry.path(), into)?;
        } else {
            let rel = entry.path().strip_prefix(root)?.to_string_lossy().into_owned();
            into.insert(rel, meta.len());
        }
    }
    Ok(())
}

/// A child process (pgbench, or pgwal to be killed) killed by its own PID
/// and reaped when the guard goes.
struct Background {
    child: Child,
    what: String,
}

impl Background {
    fn spawn(mut cmd: std::process::Command, what: &str, log: &Path) -> Result<Background> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Background { child, what: what.to_string() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID (std's `Child::kill`), then reap.
    fn kill(mut self) -> Result<()> {
        let _ = self.child.kill();
        self.child.wait().with_context(|| format!("reaping {}", self.what))?;
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pgbench in the background (2 clients, no vacuum), once it has committed
/// a few transactions, so that what follows runs under load.
fn pgbench_running(s: &Setup, name: &str) -> Result<Background> {
    let before: u64 = s.pg.sql("SELECT count(*) FROM pgbench_history")?.parse()?;
    let mut cmd = s.pg.pg_client("pgbench");
    cmd.args(["--no-vacuum", "--client=2", "--time=900", "postgres"]);
    let bench = Background::spawn(cmd, "pgbench", &s.dir.join(format!("pgbench-{name}.log")))?;
    wait_until(WAIT, "pgbench to commit transactions", || {
        let now: u64 = s.pg.sql("SELECT count(*) FROM pgbench_history")?.parse()?;
        Ok(now >= before + 50)
    })?;
    Ok(bench)
}

/// Stops pgbench and waits until none of its sessions is left, so that no
/// commit lands after the caller records the data.
fn stop_pgbench(s: &Setup, bench: Background) -> Result<()> {
    bench.kill()?;
    wait_until(WAIT, "pgbench's sessions to end", || {
        Ok(s.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")? == "0")
    })
}

/// Row count and an md5 over every row of `table` in database `db`.
fn digest(pg: &PgCluster, db: &str, table: &str) -> Result<String> {
    pg.sql_db(
        db,
        &format!("SELECT count(*) || ' rows, md5 ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {table} t"),
    )
}

fn pgbench_digests(pg: &PgCluster) -> Result<Vec<String>> {
    PGBENCH_TABLES.iter().map(|t| digest(pg, "postgres", t)).collect()
}

/// Starts a restored copy (archiving off: once promoted it would archive
/// into the repository; autovacuum off: the files stay as restored) and
/// waits until recovery has ended.
fn start_restored(home: &Path) -> Result<PgCluster> {
    let mut copy = PgCluster::existing(home)?;
    copy.set_conf(&["archive_mode = off", "autovacuum = off"])?;
    copy.start()?;
    copy.wait_recovery_finished(WAIT)?;
    Ok(copy)
}

/// `pg_amcheck` over every database of a running copy, heap and B-tree,
/// with every index entry checked against its heap.
fn amcheck(copy: &PgCluster) -> Result<()> {
    let mut cmd = copy.pg_client("pg_amcheck");
    cmd.args(["--all", "--install-missing", "--heapallindexed"]);
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.success() && out.stdout.trim().is_empty(), "pg_amcheck on the restored copy: {out}");
    Ok(())
}

/// After a clean shutdown, `pg_checksums --check` finds no bad page.
fn checksums_clean(copy: &mut PgCluster) -> Result<()> {
    copy.stop()?;
    let mut cmd = command_as_user(pg_bin("pg_checksums"));
    cmd.arg("--check").arg("--pgdata").arg(copy.data_dir());
    let out = run(&mut cmd, None, COMMAND_TIMEOUT)?;
    ensure!(out.success() && out.stdout.contains("Bad checksums:  0"), "pg_checksums: {out}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. A chain under concurrent pgbench, recovered to a point after each member
// ---------------------------------------------------------------------------

/// Takes backups of `kinds` in order, each while pgbench runs; after each,
/// stops pgbench, records the pgbench tables' digests and a restore point.
/// Then checks the chain `list --json` shows and recovers each member to its
/// restore point: rows equal the primary's at that point, `pg_amcheck` and
/// `pg_checksums` are clean.
fn chain_under_pgbench(storage: Storage, scale: u32, kinds: &[&str]) -> Result<()> {
    let s = setup(storage, Checksums::On, &[])?;
    s.pg.pgbench_init(scale)?;
    let mut members = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let bench = pgbench_running(&s, &format!("{i}"))?;
        let id = s.backup(kind)?;
        // pgbench ran through the whole backup: it still commits.
        let history = s.pg.sql("SELECT count(*) FROM pgbench_history")?;
        wait_until(WAIT, "pgbench to go on after the backup", || {
            Ok(s.pg.sql("SELECT count(*) FROM pgbench_history")? != history)
        })?;
        stop_pgbench(&s, bench)?;
        let digests = pgbench_digests(&s.pg)?;
        let point = format!("after_{i}_{kind}");
        s.pg.sql(&format!("SELECT pg_create_restore_point('{point}')"))?;
        members.push((id, kind.to_string(), point, digests));
    }
    // WAL written after the last restore point, so that recovery stops at
    // the point, not at the end of the WAL.
    s.pg.pgbench(&["--no-vacuum", "--client=1", "--transactions=50"])?;
    s.archive_now()?;

    // The chain as list shows it: each incr on the one before it, each diff
    // on the newest full.
    let listed = s.chain()?;
    ensure!(listed.len() == kinds.len(), "list shows {} backups, took {}: {listed:?}", listed.len(), kinds.len());
    let mut newest_full: Option<String> = None;
    for (i, ((id, kind, _, _), (listed_id, listed_kind, parent))) in members.iter().zip(&listed).enumerate() {
        ensure!(
            listed_id == id && listed_kind == kind,
            "backup {i}: listed {listed_id} {listed_kind}, took {id} {kind}"
        );
        let expected_parent = match kind.as_str() {
            "full" => None,
            "incr" => Some(members[i - 1].0.clone()),
            _ => newest_full.clone(),
        };
        ensure!(*parent == expected_parent, "{kind} {id}: parent {parent:?}, expected {expected_parent:?}");
        if kind == "full" {
            newest_full = Some(id.clone());
        }
    }

    for (id, kind, point, digests) in &members {
        let home = s.dir.join(format!("r_{point}"));
        let out = s.restore(&home, &["--backup", id, "--target-name", point, "--target-action", "promote"])?;
        ensure!(out.success() && out.stdout.trim() == id, "restore of {kind} {id} to {point}: {out}");
        let mut copy = start_restored(&home)?;
        let got = pgbench_digests(&copy).with_context(|| copy.log_tail(30))?;
        for ((table, want), have) in PGBENCH_TABLES.iter().zip(digests).zip(&got) {
            ensure!(want == have, "{kind} {id} recovered to {point}: {table} has {have}, the primary had {want}");
        }
        amcheck(&copy)?;
        checksums_clean(&mut copy)?;
    }
    Ok(())
}

#[test]
fn a_chain_taken_under_pgbench_recovers_to_a_point_after_each_member() -> Result<()> {
    chain_under_pgbench(Storage::File, 3, &["full", "incr", "incr", "diff"])
}

#[test]
fn a_chain_on_s3_recovers_to_a_point_after_each_member() -> Result<()> {
    chain_under_pgbench(Storage::S3, 2, &["full", "incr", "diff"])
}

// ---------------------------------------------------------------------------
// Exactness of relation files at a quiet moment
// ---------------------------------------------------------------------------

/// The primary at a quiet moment right before a backup: row digests of the
/// tables, the relation files of every database directory (the backup must
/// bring back exactly these) and the bytes of the tables' files.
struct Quiet {
    digests: Vec<((String, String), String)>,
    files: BTreeSet<String>,
    contents: BTreeMap<String, Vec<u8>>,
}

/// Records [`Quiet`]: digests first (reading sets hint bits), then the
/// file paths, then a checkpoint writes every page, and only then the files
/// are read; nothing touches the tables until the backup has run.
/// Unlogged relations' main forks are left out of the expected files:
/// backups skip them (their init fork stays).
fn quiet(pg: &PgCluster, tables: &[(&str, &str)]) -> Result<Quiet> {
    let mut digests = Vec::new();
    let mut paths = Vec::new();
    for (db, table) in tables {
        digests.push(((db.to_string(), table.to_string()), digest(pg, db, table)?));
        paths.push(pg.sql_db(db, &format!("SELECT pg_relation_filepath('{table}')"))?);
    }
    // Unlogged relations (their TOAST tables and indexes too) keep only their init fork.
    let mut skipped = BTreeSet::new();
    for db in pg.sql("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")?.lines() {
        let unlogged = pg.sql_db(
            db,
            "SELECT pg_relation_filepath(oid) FROM pg_class WHERE relpersistence = 'u' AND relkind IN ('r', 'i', 't', 'S', 'm')",
        )?;
        for path in unlogged.lines() {
            for fork in ["", "_fsm", "_vm"] {
                skipped.insert(format!("{path}{fork}"));
            }
        }
    }
    pg.sql("CHECKPOINT")?;
    let files: BTreeSet<String> = relation_files(pg.data_dir())?.into_iter().filter(|f| !skipped.contains(f)).collect();
    let mut contents = BTreeMap::new();
    for path in paths {
        for fork in ["", "_fsm", "_vm"] {
            let file = format!("{path}{fork}");
            if let Ok(bytes) = fs::read(pg.data_dir().join(&file)) {
                contents.insert(file, bytes);
            }
        }
    }
    Ok(Quiet { digests, files, contents })
}

/// Every file in the database directories of `base/` and of each
/// tablespace (`pg_tblspc/OID/PG_15_*/DBOID/`), as paths relative to the
/// data directory; `pg_internal.init` (never backed up) and temporary
/// relations are left out.
fn relation_files(data: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut db_dirs: Vec<(String, PathBuf)> = Vec::new();
    for db in fs::read_dir(data.join("base"))? {
        let db = db?;
        db_dirs.push((format!("base/{}", db.file_name().to_string_lossy()), db.path()));
    }
    for ts in fs::read_dir(data.join("pg_tblspc"))? {
        let ts = ts?;
        for version in fs::read_dir(ts.path())? {
            let version = version?;
            for db in fs::read_dir(version.path())? {
                let db = db?;
                let rel = format!(
                    "pg_tblspc/{}/{}/{}",
                    ts.file_name().to_string_lossy(),
                    version.file_name().to_string_lossy(),
                    db.file_name().to_string_lossy()
                );
                db_dirs.push((rel, db.path()));
            }
        }
    }
    for (rel, dir) in db_dirs {
        for file in fs::read_dir(&dir)? {
            let name = file?.file_name().to_string_lossy().into_owned();
            if name == "pg_internal.init" || name.starts_with('t') {
                continue;
            }
            out.insert(format!("{rel}/{name}"));
        }
    }
    Ok(out)
}

/// Before the restored copy starts: exactly the expected relation files,
/// and the tables' files byte for byte as the primary had them.
fn same_files(quiet: &Quiet, restored: &Path, what: &str) -> Result<()> {
    let got = relation_files(restored)?;
    let missing: Vec<_> = quiet.files.difference(&got).collect();
    let extra: Vec<_> = got.difference(&quiet.files).collect();
    ensure!(missing.is_empty() && extra.is_empty(), "{what}: relation files missing {missing:?}, extra {extra:?}");
    for (file, want) in &quiet.contents {
        let have = fs::read(restored.join(file)).with_context(|| format!("{what}: reading restored {file}"))?;
        if have != *want {
            let block = have.chunks(8192).zip(want.chunks(8192)).position(|(a, b)| a != b);
            bail!(
                "{what}: {file} differs from the primary's: {} bytes restored, {} on the primary, first differing 8 KiB block {block:?}",
                have.len(),
                want.len()
            );
        }
    }
    Ok(())
}

/// After recovery: every table's rows as the primary had them.
fn same_rows(quiet: &Quiet, copy: &PgCluster, what: &str) -> Result<()> {
    for ((db, table), want) in &quiet.digests {
        let have = digest(copy, db, table).with_context(|| format!("{what}: {db}.{table}\n{}", copy.log_tail(20)))?;
        ensure!(have == *want, "{what}: {db}.{table} has {have}, the primary had {want}");
    }
    Ok(())
}

fn fill(pg: &PgCluster, db: &str, table: &str, rows: u32) -> Result<()> {
    pg.sql_db(db, &format!("CREATE TABLE {table} (id int PRIMARY KEY, v text)"))?;
    pg.sql_db(db, &format!("INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Every kind of relation change between backups
// ---------------------------------------------------------------------------

#[test]
fn every_kind_of_relation_change_between_backups_restores_exactly() -> Result<()> {
    let s = setup(Storage::File, Checksums::On, &["autovacuum = off"])?;
    let pg = &s.pg;
    let ts = s.dir.subdir("ts_primary")?;
    pg.sql(&format!("CREATE TABLESPACE space1 LOCATION {}", conf_quote(&ts.to_string_lossy())))?;
    // Databases created later copy template1, and this table with it.
    fill(pg, "template1", "from_template", 2000)?;
    fill(pg, "postgres", "untouched", 5000)?;
    fill(pg, "postgres", "rewritten", 20000)?;
    fill(pg, "postgres", "truncated", 5000)?;
    fill(pg, "postgres", "dropped", 5000)?;
    fill(pg, "postgres", "shrunk", 20000)?;
    fill(pg, "postgres", "moved", 5000)?;
    fill(pg, "postgres", "updated", 5000)?;
    pg.sql("CREATE UNLOGGED TABLE scratch (id int, v text)")?;
    pg.sql("INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 1000) g")?;
    let full = s.backup("full")?;

    pg.sql("CREATE DATABASE copied STRATEGY FILE_COPY")?;
    pg.sql("CREATE DATABASE logged STRATEGY WAL_LOG")?;
    pg.sql_db("copied", "INSERT INTO from_template SELECT g, 'copied' FROM generate_series(2001, 3000) g")?;
    pg.sql_db("logged", "DELETE FROM from_template WHERE id % 3 = 0")?;
    fill(pg, "logged", "born_in_logged", 3000)?;
    let rewritten_before = pg.sql("SELECT pg_relation_filepath('rewritten')")?;
    pg.sql("DELETE FROM rewritten WHERE id % 2 = 0")?;
    pg.sql("VACUUM FULL rewritten")?;
    pg.sql("TRUNCATE truncated")?;
    pg.sql("INSERT INTO truncated SELECT g, 'after truncate' FROM generate_series(1, 100) g")?;
    let dropped_path = pg.sql("SELECT pg_relation_filepath('dropped')")?;
    pg.sql("DROP TABLE dropped")?;
    // Extended past its size at the full, then cut below it by VACUUM's truncation.
    let shrunk_at_full: u64 = pg.sql("SELECT pg_relation_size('shrunk')")?.parse()?;
    pg.sql("INSERT INTO shrunk SELECT g, md5(g::text) FROM generate_series(20001, 40000) g")?;
    pg.sql("DELETE FROM shrunk WHERE id > 3000")?;
    pg.sql("VACUUM shrunk")?;
    let shrunk_now: u64 = pg.sql("SELECT pg_relation_size('shrunk')")?.parse()?;
    ensure!(shrunk_now < shrunk_at_full / 2, "VACUUM truncated shrunk: {shrunk_at_full} -> {shrunk_now} bytes");
    let moved_before = pg.sql("SELECT pg_relation_filepath('moved')")?;
    pg.sql("ALTER TABLE moved SET TABLESPACE space1")?;
    pg.sql("UPDATE updated SET v = 'changed' WHERE id BETWEEN 1000 AND 1100")?;
    pg.sql("INSERT INTO scratch SELECT g, 'more' FROM generate_series(1, 1000) g")?;

    let tables = [
        ("postgres", "untouched"),
        ("postgres", "rewritten"),
        ("postgres", "truncated"),
        ("postgres", "shrunk"),
        ("postgres", "moved"),
        ("postgres", "updated"),
        ("copied", "from_template"),
        ("logged", "from_template"),
        ("logged", "born_in_logged"),
        ("template1", "from_template"),
    ];
    let quiet = quiet(pg, &tables)?;
    for gone in [&dropped_path, &rewritten_before, &moved_before] {
        ensure!(!pg.data_dir().join(gone).exists(), "{gone} is gone on the primary after the checkpoint");
    }
    let incr = s.backup("incr")?;
    let chain = s.chain()?;
    let expected =
        vec![(full.clone(), "full".to_string(), None), (incr.clone(), "incr".to_string(), Some(full.clone()))];
    ensure!(chain == expected, "list: {chain:?}");

    let home = s.dir.join("restored");
    let map = format!("--tablespace-map={}={}", ts.display(), home.join("ts").display());
    let out = s.restore(&home, &["--backup", &incr, "--target-immediate", "--target-action", "promote", &map])?;
    ensure!(out.success() && out.stdout.trim() == incr, "restore of {incr}: {out}");
    let data = home.join(DATA_SUBDIR);
    same_files(&quiet, &data, "incr")?;
    for gone in [&dropped_path, &rewritten_before, &moved_before] {
        ensure!(!data.join(gone).exists(), "{gone} came back in the restored data directory");
    }
    let mut copy = start_restored(&home)?;
    same_rows(&quiet, &copy, "incr")?;
    ensure!(copy.sql("SELECT to_regclass('dropped') IS NULL")? == "t", "the dropped table came back");
    let moved_to = copy.sql("SELECT pg_relation_filepath('moved')")?;
    ensure!(moved_to.starts_with("pg_tblspc/"), "moved is in its tablespace: {moved_to}");
    // An unlogged table comes back empty (PostgreSQL resets it from its init fork) and usable.
    ensure!(copy.sql("SELECT count(*) FROM scratch")? == "0", "unlogged table is empty after recovery");
    copy.sql("INSERT INTO scratch VALUES (1, 'usable')")?;
    let dbs = copy.sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")?;
    ensure!(dbs == "copied,logged,postgres,template0,template1", "databases: {dbs}");
    amcheck(&copy)?;
    checksums_clean(&mut copy)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. No data checksums, no wal_log_hints: pages that change without WAL
// ---------------------------------------------------------------------------

#[test]
fn without_checksums_pages_changed_by_hint_bits_only_restore_exactly() -> Result<()> {
    let s = setup(Storage::File, Checksums::Off, &["autovacuum = off"])?;
    let pg = &s.pg;
    ensure!(pg.sql("SHOW data_checksums")? == "off" && pg.sql("SHOW wal_log_hints")? == "off", "cluster settings");
    // Rows nobody has read yet: their pages carry no hint bits.
    pg.sql("CREATE TABLE hinted (id int, v text)")?;
    pg.sql("INSERT INTO hinted SELECT g, md5(g::text) FROM generate_series(1, 20000) g")?;
    pg.sql("CREATE TABLE frozen (id int, v text)")?;
    pg.sql("INSERT INTO frozen SELECT g, md5(g::text) FROM generate_series(1, 20000) g")?;
    fill(pg, "postgres", "changed", 5000)?;
    pg.sql("CHECKPOINT")?;
    let hinted_path = pg.sql("SELECT pg_relation_filepath('hinted')")?;
    let hinted_at_full = fs::read(pg.data_dir().join(&hinted_path))?;
    let full = s.backup("full")?;

    // A read sets the hint bits of every page of `hinted`: without checksums
    // or wal_log_hints no WAL is written for that, and no page LSN moves.
    ensure!(pg.sql("SELECT count(*) FROM hinted")? == "20000", "rows of hinted");
    // VACUUM FREEZE changes every page of `frozen` without changing a row.
    pg.sql("VACUUM FREEZE frozen")?;
    pg.sql("UPDATE changed SET v = 'new' WHERE id % 50 = 0")?;
    let quiet = quiet(pg, &[("postgres", "hinted"), ("postgres", "frozen"), ("postgres", "changed")])?;
    let hinted_now = &quiet.contents[&hinted_path];
    ensure!(
        hinted_now.len() == hinted_at_full.len() && *hinted_now != hinted_at_full,
        "the read changed hinted's pages"
    );
    let incr = s.backup("incr")?;
    let chain = s.chain()?;
    ensure!(chain.len() == 2 && chain[1] == (incr.clone(), "incr".into(), Some(full.clone())), "list: {chain:?}");

    let home = s.dir.join("restored");
    let out = s.restore(&home, &["--backup", &incr, "--target-immediate", "--target-action", "promote"])?;
    ensure!(out.success() && out.stdout.trim() == incr, "restore of {incr}: {out}");
    same_files(&quiet, &home.join(DATA_SUBDIR), "incr without checksums")?;
    let mut copy = start_restored(&home)?;
    same_rows(&quiet, &copy, "incr without checksums")?;
    amcheck(&copy)?;
    copy.stop()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. A damaged full: its incr neither restores, verifies nor drills
// ---------------------------------------------------------------------------

/// Packs of backup `id` in the repository.
fn packs_of(s: &Setup, id: &str) -> Result<Vec<PathBuf>> {
    let dir = s.repo.join("backup").join(id).join("pack");
    let mut packs: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    packs.sort();
    ensure!(!packs.is_empty(), "backup {id} has packs");
    Ok(packs)
}

/// Restore, verify and drill of `incr` all fail, and the restore wrote
/// nothing that starts. `strict`: the target directory is not even created
/// (a missing object is found before anything is written).
fn incr_refused(s: &Setup, incr: &str, what: &str, strict: bool) -> Result<()> {
    let home = s.dir.join(format!("refused_{}", what.replace(' ', "_")));
    let out = s.restore(&home, &["--backup", incr])?;
    ensure!(!out.success(), "{what}: restore of {incr} must fail: {out}");
    let first = out.stderr.lines().find(|l| l.starts_with("pgwal: error: "));
    ensure!(first.is_some() && !out.stderr.contains("panicked"), "{what}: one error line: {out}");
    let data = home.join(DATA_SUBDIR);
    if strict {
        ensure!(!data.exists(), "{what}: restore refused before writing, yet {} exists", data.display());
    }
    ensure!(
        !data.join("global/pg_control").exists() && !data.join("recovery.signal").exists(),
        "{what}: the failed restore left a startable directory"
    );

    let out = s.pgwal(&["verify", "--backup", incr]).run()?;
    ensure!(out.code() == Some(3), "{what}: verify --backup {incr} exits 3: {out}");
    ensure!(out.stdout.contains(incr) || out.stderr.contains(incr), "{what}: verify names {incr}: {out}");
    let out = s.pgwal(&["verify"]).run()?;
    ensure!(out.code() == Some(3) && out.stdout.contains(incr), "{what}: verify of the repository names {incr}: {out}");

    let out = s.pgwal(&["drill", "--json", "--backup", incr]).run()?;
    ensure!(!out.success(), "{what}: drill of {incr} must fail: {out}");
    if out.code() == Some(3) {
        let record: Value = serde_json::from_str(&out.stdout).with_context(|| format!("drill --json: {out}"))?;
        ensure!(record["passed"] == false && record["backup"] == incr, "{what}: drill record: {record}");
    }
    Ok(())
}

#[test]
fn a_damaged_full_stops_restore_verify_and_drill_of_its_incr() -> Result<()> {
    let s = setup(Storage::File, Checksums::On, &[])?;
    s.pg.pgbench_init(1)?;
    let full = s.backup("full")?;
    s.pg.pgbench(&["--no-vacuum", "--client=1", "--transactions=200"])?;
    let incr = s.backup("incr")?;
    s.archive_now()?;
    let out = s.pgwal(&["verify", "--backup", &incr]).run()?;
    ensure!(out.success(), "the sound chain verifies: {out}");
    let packs = packs_of(&s, &full)?;
    let originals: Vec<Vec<u8>> = packs.iter().map(fs::read).collect::<Result<_, _>>()?;

    // One byte flipped in the middle of every pack of the full: sizes stay.
    for (pack, bytes) in packs.iter().zip(&originals) {
        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x55;
        fs::write(pack, &bad)?;
    }
    incr_refused(&s, &incr, "corrupt pack", false)?;

    // Back to sound, then the full's first pack deleted.
    for (pack, bytes) in packs.iter().zip(&originals) {
        fs::write(pack, bytes)?;
    }
    s.pgwal(&["verify", "--backup", &incr]).run()?.ensure_success()?;
    // The full's packs deleted: the incr reads most of its blocks from them.
    for pack in &packs {
        fs::remove_file(pack)?;
    }
    incr_refused(&s, &incr, "deleted packs", true)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Expire keeps whole chains
// ---------------------------------------------------------------------------

#[test]
fn expire_keeps_the_newest_chain_whole_and_refuses_to_orphan_an_incr() -> Result<()> {
    let s = setup(Storage::File, Checksums::On, &[])?;
    let pg = &s.pg;
    pg.pgbench_init(1)?;
    pg.sql("CREATE TABLE t (batch int, filler text)")?;
    let insert = |batch: u32| -> Result<()> {
        pg.sql(&format!("INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, 1000) g"))?;
        Ok(())
    };
    let full1 = s.backup("full")?;
    insert(1)?;
    let incr1 = s.backup("incr")?;
    insert(2)?;
    let full2 = s.backup("full")?;
    insert(3)?;
    pg.sql("SELECT pg_create_restore_point('between')")?;
    let between = digest(pg, "postgres", "t")?;
    insert(4)?;
    let incr2 = s.backup("incr")?;
    ensure!(
        s.stored_size(&incr2)? * 4 < s.stored_size(&full2)?,
        "an incr of 1000 new rows stores far less than a full: {} vs {} bytes",
        s.stored_size(&incr2)?,
        s.stored_size(&full2)?
    );
    insert(5)?;
    pg.pgbench(&["--no-vacuum", "--client=1", "--transactions=100"])?;
    s.archive_now()?;
    let at_end = digest(pg, "postgres", "t")?;
    let accounts_at_end = digest(pg, "postgres", "pgbench_accounts")?;
    let chain = s.chain()?;
    ensure!(chain.len() == 4, "four backups: {chain:?}");
    ensure!(chain[1] == (incr1.clone(), "incr".into(), Some(full1.clone())), "{chain:?}");

    let out = s.pgwal(&["expire", "--retain-full", "1"]).run()?.ensure_success()?;
    for gone in [&full1, &incr1] {
        ensure!(out.stdout.contains(gone.as_str()), "expire names {gone}: {out}");
    }
    let kept =
        vec![(full2.clone(), "full".to_string(), None), (incr2.clone(), "incr".to_string(), Some(full2.clone()))];
    ensure!(s.chain()? == kept, "after --retain-full 1: {:?}", s.chain()?);
    let left: Vec<String> = s
        .objects()?
        .into_keys()
        .filter(|k| k.starts_with(&format!("backup/{full1}/")) || k.starts_with(&format!("backup/{incr1}/")))
        .collect();
    ensure!(left.is_empty(), "expired backups' objects are gone: {left:?}");

    // Every point after the kept full recovers: one between full2 and incr2, and the end.
    let home = s.dir.join("r_between");
    // A restore point is found only by replaying WAL, so restore's default for
    // --target-name is the newest backup (man pgwal-restore): name the full.
    let out = s.restore(&home, &["--backup", &full2, "--target-name", "between", "--target-action", "promote"])?;
    ensure!(out.success() && out.stdout.trim() == full2, "restore to 'between' uses {full2}: {out}");
    let copy = start_restored(&home)?;
    ensure!(digest(&copy, "postgres", "t")? == between, "rows at 'between'");
    drop(copy);
    let home = s.dir.join("r_end");
    let out = s.restore(&home, &["--backup", &incr2])?;
    ensure!(out.success() && out.stdout.trim() == incr2, "restore of {incr2}: {out}");
    let mut copy = start_restored(&home)?;
    ensure!(digest(&copy, "postgres", "t")? == at_end, "rows at the end of the archive");
    ensure!(digest(&copy, "postgres", "pgbench_accounts")? == accounts_at_end, "pgbench_accounts at the end");
    checksums_clean(&mut copy)?;

    // The full its incr depends on cannot go alone: exit 2, nothing deleted.
    let before = s.objects()?;
    let out = s.pgwal(&["expire", "--backup", &full2]).run()?;
    ensure!(out.code() == Some(2), "expire --backup {full2} with {incr2} on it: {out}");
    ensure!(out.stderr.contains(&incr2), "the refusal names the dependent {incr2}: {out}");
    let after = s.objects()?;
    let lost: Vec<_> = before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).map(|(k, _)| k).collect();
    ensure!(lost.is_empty(), "a refused expire deleted or changed nothing: {lost:?}");
    ensure!(s.chain()? == kept, "a refused expire kept both backups");
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. SIGKILL during an incr
// ---------------------------------------------------------------------------

#[test]
fn an_incr_killed_after_storing_packs_leaves_nothing_half_made() -> Result<()> {
    let mut s = setup(Storage::File, Checksums::On, &[])?;
    s.pg.pgbench_init(2)?;
    let full = s.backup("full")?;
    s.pg.pgbench(&["--no-vacuum", "--client=2", "--transactions=300"])?;

    // With archiving held back the incr stores its packs and then waits for
    // its WAL: it is killed there, by PID, with packs stored and no manifest.
    s.pg.set_conf(&["archive_command = 'false'"])?;
    s.pg.reload()?;
    let before = s.backup_dirs()?;
    let killed = Background::spawn(s.backup_command("incr").command(), "pgwal backup", &s.dir.join("killed.log"))?;
    let pid = killed.pid();
    let mut new_dir = None;
    wait_until(WAIT, "the incr to store a pack", || {
        for id in s.backup_dirs()?.difference(&before) {
            let packs = s.repo.join("backup").join(id).join("pack");
            if fs::read_dir(&packs).map(|mut d| d.next().is_some()).unwrap_or(false) {
                new_dir = Some(id.clone());
                return Ok(true);
            }
        }
        Ok(false)
    })
    .with_context(|| fs::read_to_string(s.dir.join("killed.log")).unwrap_or_default())?;
    let killed_id = new_dir.context("invariant: found above")?;
    ensure!(fs::metadata(format!("/proc/{pid}")).is_ok(), "the incr still runs when it is killed");
    killed.kill()?;

    s.pg.set_conf(&[archive_command_setting(&s.config)])?;
    s.pg.reload()?;
    s.archive_now()?;
    let chain = s.chain()?;
    ensure!(chain == [(full.clone(), "full".to_string(), None)], "the killed incr is not listed: {chain:?}");

    s.pg.pgbench(&["--no-vacuum", "--client=2", "--transactions=100"])?;
    let incr = s.backup("incr")?;
    ensure!(incr != killed_id, "a new backup, not the killed one");
    let chain = s.chain()?;
    ensure!(
        chain == [(full.clone(), "full".to_string(), None), (incr.clone(), "incr".to_string(), Some(full.clone()))],
        "the new incr builds on the full: {chain:?}"
    );
    // A policy run clears what the killed backup left.
    s.pgwal(&["expire", "--retain-full", "1"]).run()?.ensure_success()?;
    let left: Vec<String> =
        s.objects()?.into_keys().filter(|k| k.starts_with(&format!("backup/{killed_id}/"))).collect();
    ensure!(left.is_empty(), "expire removed the killed incr's objects: {left:?}");
    s.archive_now()?;
    let digests = pgbench_digests(&s.pg)?;
    let home = s.dir.join("restored");
    let out = s.restore(&home, &["--backup", &incr])?;
    ensure!(out.success() && out.stdout.trim() == incr, "restore of {incr}: {out}");
    s.pg.stop()?;
    let mut copy = start_restored(&home)?;
    ensure!(pgbench_digests(&copy)? == digests, "the new incr restores every row");
    amcheck(&copy)?;
    checksums_clean(&mut copy)?;
    Ok(())
}

#[test]
fn an_incr_without_any_full_takes_a_full_and_says_so() -> Result<()> {
    let s = setup(Storage::File, Checksums::On, &[])?;
    let out = s.backup_command("incr").run()?;
    ensure!(out.success(), "incr with no full to build on: {out}");
    let id = out.stdout.trim().to_string();
    ensure!(out.stderr.to_lowercase().contains("full"), "a notice says a full backup was taken: {out}");
    ensure!(s.chain()? == [(id, "full".to_string(), None)], "listed as a full: {:?}", s.chain()?);
    Ok(())
}
