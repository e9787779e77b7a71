//! End to end on real PostgreSQL 15: a primary archives through
//! `archive_command = 'pgwal archive %p'` into a `file://` and an `s3://`
//! repository under pgbench traffic, every segment arrives with no archiver
//! failure, and a copy made with `pg_basebackup -X none` recovers through
//! `restore_command = 'pgwal fetch %f %p'` to exactly the primary's rows.

use crate::common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use common::*;

/// Rows and sums that any lost or reordered WAL would change.
const FINGERPRINT: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || \
    (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
    (SELECT count(*) FROM after_copy)";

fn archive_then_recover(dir: &TestDir, config: &Path) -> Result<()> {
    let mut primary = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(config), "archive_timeout = 0", "max_wal_size = 64MB", "checkpoint_timeout = 30s"],
    )?;
    primary.start()?;
    primary.pgbench_init(5)?;

    // The copy has no WAL of its own: recovery must fetch all of it.
    let mut copy = primary.basebackup_to(&dir.join("copy"))?;

    primary.sql("CREATE TABLE after_copy AS SELECT g AS n, md5(g::text) AS filler FROM generate_series(1, 50000) g")?;
    primary.pgbench(&["-c", "2", "-j", "2", "-t", "1500", "--no-vacuum"])?;
    let expected = primary.sql(FINGERPRINT)?;
    let last = primary.switch_wal()?;
    primary.wait_archived(&last, Duration::from_secs(120))?;
    let stats = primary.sql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver")?;
    let (archived, failed) = stats.split_once(' ').unwrap_or(("0", "?"));
    ensure!(failed == "0", "the archiver saw failures: {stats}\n{}", primary.log_tail(30));
    ensure!(archived.parse::<u32>()? >= 5, "expected several segments archived, got {stats}");
    primary.stop()?;

    copy.set_conf(&[restore_command_setting(config), "archive_mode = off".to_string()])?;
    copy.touch_in_data_dir("recovery.signal")?;
    copy.start()?;
    copy.wait_recovery_finished(Duration::from_secs(180))?;
    let recovered = copy.sql(FINGERPRINT)?;
    ensure!(recovered == expected, "recovered {recovered:?}, primary had {expected:?}");
    let log = copy.log_contents();
    ensure!(log.contains("restored log file"), "recovery used restore_command:\n{}", copy.log_tail(30));
    ensure!(log.contains(&format!("restored log file \"{last}\"")), "the last segment came from the archive");
    Ok(())
}

#[test]
fn local_disk_repository() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    archive_then_recover(&dir, &config)
}

#[test]
fn s3_repository() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://pgwal/cluster1"))?;
    archive_then_recover(&dir, &config)
}
