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
    for f in &mut m.files {
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
