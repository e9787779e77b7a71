//! `pgwal restore` of an incr backup on real PostgreSQL 15: the incr's
//! manifest is made here from a real full backup's (format 2, every extent
//! pointing into the full's packs), so the restore reads every byte through
//! the chain; the restored copy recovers and has every row, and a drill of
//! the incr passes.

use crate::common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use pgwal::repo::backup::{BackupId, BackupType, Manifest, MANIFEST_FORMAT_CHAINED};
use pgwal::repo::frame::{self, Compression};

const WAIT: Duration = Duration::from_secs(120);

/// An incr backup of `full` that stores nothing itself, one second later.
fn incr_of(repo: &Path, full: &str) -> Result<String> {
    let object = fs::read(repo.join(format!("backup/{full}/manifest")))?;
    let mut m: Manifest = serde_json::from_slice(&frame::decode(&object)?)?;
    let at = chrono::NaiveDateTime::parse_from_str(&full[..15], "%Y%m%dT%H%M%S")?.and_utc();
    let id = BackupId::new(at + chrono::Duration::seconds(1), BackupType::Incr);
    let parent: BackupId = full.parse()?;
    m.format = MANIFEST_FORMAT_CHAINED;
    m.kind = BackupType::Incr;
    m.parent = Some(parent.clone());
    m.id = id.clone();
    m.packs.clear();
    // The full's block maps stay the full's: this incr writes none of its own.
    m.maps.clear();
    for f in &mut m.files {
        f.block_map = None;
        for e in &mut f.extents {
            e.backup = Some(parent.clone());
        }
    }
    let (object, _) = frame::encode(&serde_json::to_vec(&m)?, Compression::Zstd(1))?;
    let dir = repo.join(format!("backup/{id}"));
    create_user_dir(&dir)?;
    write_user_file(&dir.join("manifest"), &object, 0o600)?;
    Ok(id.to_string())
}

#[test]
fn an_incr_backup_restores_through_its_chain_and_recovers() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let repo = dir.join("repo");
    let drill_dir = dir.join("drill");
    write_private_file(
        &config,
        &format!(
            "repo = \"file://{}\"\n[drill]\ndir = \"{}\"\ntimeout = \"10m\"\n",
            repo.display(),
            drill_dir.display()
        ),
    )?;
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(&config), "archive_timeout = 0", "max_wal_size = 64MB"],
    )?;
    pg.start()?;
    pg.sql("CREATE TABLE t (batch int, filler text)")?;
    pg.sql("INSERT INTO t SELECT 1, md5(g::text) FROM generate_series(1, 1000) g")?;
    pg.pgbench_init(1)?;
    let config_arg = config.to_string_lossy().into_owned();
    let full = Pgwal::new(["--config", &config_arg, "backup", "--checkpoint", "fast", "--conninfo", &pg.conninfo()])
        .arg("--pgdata")
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?
        .stdout
        .trim()
        .to_string();
    pg.sql("INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 1000) g")?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    let incr = incr_of(&repo, &full)?;

    let home = dir.join("restored");
    let out = Pgwal::new(["--config", &config_arg, "restore", "--backup", &incr, "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    ensure!(out.stdout.trim() == incr, "restored {:?}, expected {incr}", out.stdout);
    pg.stop()?;
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    wait_until(WAIT, "recovery to end", || Ok(copy.sql("SELECT pg_is_in_recovery()")? == "f"))
        .with_context(|| copy.log_tail(30))?;
    let rows = copy.sql("SELECT count(*) || ' ' || count(DISTINCT batch) FROM t")?;
    ensure!(rows == "2000 2", "{rows}\n{}", copy.log_tail(20));
    ensure!(copy.sql("SELECT count(*) FROM pgbench_accounts")? == "100000", "pgbench data");
    copy.stop()?;

    // A drill restores through the same code.
    let out = Pgwal::new(["--config", &config_arg, "drill", "--json", "--backup", &incr]).run()?;
    let record: serde_json::Value = serde_json::from_str(&out.stdout).with_context(|| format!("drill: {out}"))?;
    ensure!(out.success() && record["passed"] == true && record["backup"] == incr.as_str(), "drill of {incr}: {out}");

    // verify reads the chain the same way restore does: sound, then the full's pack gone is a finding naming the incr.
    let out = Pgwal::new(["--config", &config_arg, "verify", "--backup", &incr]).run()?;
    ensure!(out.success(), "verify of the sound chain {incr}: {out}");
    let pack = repo.join("backup").join(&full).join("pack").join("000000");
    std::fs::remove_file(&pack).with_context(|| format!("remove {}", pack.display()))?;
    let out = Pgwal::new(["--config", &config_arg, "verify", "--backup", &incr]).run()?;
    ensure!(
        out.code() == Some(3)
            && (out.stdout.contains(&format!("which backup '{incr}' reads"))
                || out.stderr.contains(&format!("which backup '{incr}' reads"))),
        "verify names {incr}: {out}"
    );
    let target = dir.join("broken");
    let out = Pgwal::new(["--config", &config_arg, "restore", "--backup", &incr, "--target-dir"]).arg(&target).run()?;
    ensure!(!out.success() && !target.exists(), "restore of the broken chain refuses before writing: {out}");
    Ok(())
}

/// What every table holds, as one line: a restored copy that lost or
/// reordered a change differs. The database `copied` (made with
/// `CREATE DATABASE ... STRATEGY FILE_COPY`) is checked by its own line.
const STATE: &str = "SELECT (SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a) || ' ' || \
    (SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history) || ' ' || \
    (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
    (SELECT count(*) || ':' || count(DISTINCT batch) FROM t) || ' ' || \
    (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE 'gone%' OR relname = 'u')";

/// Runs `pgwal backup --type KIND` against `pg`; returns its ID and stderr.
fn backup_of(config: &str, pg: &PgCluster, kind: &str) -> Result<(String, String)> {
    let out = Pgwal::new(["--config", config, "backup", "--type", kind, "--checkpoint", "fast", "--conninfo"])
        .arg(pg.conninfo())
        .arg("--pgdata")
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?;
    Ok((out.stdout.trim().to_string(), out.stderr))
}

/// Restores `id` into `home`, recovers to the backup's end and returns the copy, started.
fn restore_to_end(config: &str, id: &str, home: &Path) -> Result<PgCluster> {
    Pgwal::new(["--config", config, "restore", "--backup", id, "--target-immediate", "--target-action", "promote"])
        .arg("--target-dir")
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    let mut copy = PgCluster::existing(home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    wait_until(WAIT, "recovery to end", || Ok(copy.sql("SELECT pg_is_in_recovery()")? == "f"))
        .with_context(|| copy.log_tail(30))?;
    Ok(copy)
}

/// Real `--type incr` and `--type diff` backups (written by pgwal itself):
/// the first incr, with nothing to build on, is a full one with a notice;
/// after pgbench changes (and a dropped table, a truncated and refilled
/// table, a new database copied with FILE_COPY, an unlogged table) an incr
/// stores far less than the full, and after more changes a diff builds on
/// the full; each restores and recovers to exactly what the primary had.
#[test]
fn incr_and_diff_backups_store_only_changes_and_restore_exactly() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let repo = dir.join("repo");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", repo.display()))?;
    let cfg = config.to_string_lossy().into_owned();
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(&config), "archive_timeout = 0", "max_wal_size = 256MB"],
    )?;
    pg.start()?;
    pg.pgbench_init(4)?;
    pg.sql("CREATE TABLE t (batch int, filler text)")?;
    pg.sql("INSERT INTO t SELECT 1, md5(g::text) FROM generate_series(1, 20000) g")?;
    pg.sql("CREATE TABLE gone1 AS SELECT g FROM generate_series(1, 5000) g")?;
    pg.sql("CREATE TABLE gone2 AS SELECT g FROM generate_series(1, 5000) g")?;

    let (full, err) = backup_of(&cfg, &pg, "incr")?;
    ensure!(full.ends_with('F'), "no backup to build on: a full one, got {full}");
    ensure!(err.contains("no complete backup of this cluster") && err.contains("taking a full backup"), "{err}");
    let states = vec![(full.clone(), pg.sql(STATE)?)];

    pg.pgbench(&["-n", "-t", "300", "-c", "2"])?;
    pg.sql("DROP TABLE gone1")?;
    pg.sql("TRUNCATE t")?;
    pg.sql("INSERT INTO t SELECT 2, md5(g::text) FROM generate_series(1, 500) g")?;
    pg.sql("CREATE DATABASE copied STRATEGY FILE_COPY")?;
    pg.sql_db("copied", "CREATE TABLE c AS SELECT g FROM generate_series(1, 1000) g")?;
    pg.sql("CREATE UNLOGGED TABLE u AS SELECT g FROM generate_series(1, 1000) g")?;
    let (incr, err) = backup_of(&cfg, &pg, "incr")?;
    ensure!(incr.ends_with('I') && err.contains(&format!("on top of {full}")), "{incr}: {err}");
    let mut states = states;
    states.push((incr.clone(), pg.sql(STATE)?));

    pg.pgbench(&["-n", "-t", "300", "-c", "2"])?;
    pg.sql("DROP TABLE gone2")?;
    pg.sql("INSERT INTO t SELECT 3, md5(g::text) FROM generate_series(1, 500) g")?;
    let (diff, err) = backup_of(&cfg, &pg, "diff")?;
    ensure!(diff.ends_with('D') && err.contains(&format!("on top of {full}")), "a diff builds on the full: {err}");
    states.push((diff.clone(), pg.sql(STATE)?));

    let listing: serde_json::Value =
        serde_json::from_str(&Pgwal::new(["--config", &cfg, "list", "--json"]).run()?.ensure_success()?.stdout)?;
    let backups = listing["backups"].as_array().context("backups")?;
    let by_id = |id: &str| backups.iter().find(|b| b["id"] == id).cloned().unwrap_or_default();
    let stored = |id: &str| by_id(id)["stored_size"].as_u64().unwrap_or(u64::MAX);
    ensure!(by_id(&incr)["type"] == "incr" && by_id(&incr)["parent"] == full.as_str(), "{listing}");
    ensure!(by_id(&diff)["type"] == "diff" && by_id(&diff)["parent"] == full.as_str(), "{listing}");
    eprintln!("stored_size: full {} bytes, incr {} bytes, diff {} bytes", stored(&full), stored(&incr), stored(&diff));
    ensure!(
        stored(&incr) * 2 < stored(&full) && stored(&diff) * 2 < stored(&full),
        "an incr/diff stores much less than the full: full {}, incr {}, diff {}",
        stored(&full),
        stored(&incr),
        stored(&diff)
    );

    for (id, expected) in &states {
        let copy = restore_to_end(&cfg, id, &dir.join(format!("restored-{id}")))?;
        let got = copy.sql(STATE)?;
        ensure!(&got == expected, "backup {id} restored to\n{got}\nthe primary had\n{expected}");
        if id != &full {
            ensure!(copy.sql_db("copied", "SELECT count(*) FROM c")? == "1000", "the FILE_COPY database of {id}");
            ensure!(copy.sql("SELECT count(*) FROM u")? == "0", "an unlogged table comes back empty in {id}");
        }
        let out = Pgwal::new(["--config", &cfg, "verify", "--backup", id]).run()?;
        ensure!(out.success(), "verify of {id}: {out}");
        let mut copy = copy;
        copy.stop()?;
    }
    Ok(())
}
