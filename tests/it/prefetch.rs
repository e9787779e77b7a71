//! Prefetching recovery on real PostgreSQL 15: a recovery of more than 64
//! segments from the S3 test server with the spool inspected mid-run (a
//! restore_command wrapper holds PostgreSQL at one segment while the test
//! looks), segments served from the spool while the repository is down,
//! the spool removed after promotion; and a corrupt object in the middle
//! that is never served and stops a targeted recovery; no prefetcher
//! outlives its server (a standby stopped in immediate mode, a recovery that
//! fails), and a fetch by hand in a primary's data directory starts none.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

const FINGERPRINT: &str = "SELECT count(*) || ' ' || sum(n) FROM t";

/// A primary archiving into `config`'s repository, a base backup of it
/// (no WAL), then `segments` more finished segments with rows in them.
/// Returns (primary, copy, names of the segments in order, fingerprint).
fn primary_and_copy(
    dir: &TestDir,
    config: &Path,
    segments: usize,
) -> Result<(PgCluster, PgCluster, Vec<String>, String)> {
    let mut primary =
        PgCluster::init(&dir.join("primary"), &[&archive_command_setting(config), "archive_timeout = 0"])?;
    primary.start()?;
    primary.sql("CREATE TABLE t (n int, filler text)")?;
    let copy = primary.basebackup_to(&dir.join("copy"))?;
    let mut names = Vec::new();
    for i in 0..segments {
        primary.sql(&format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g", 100 + i))?;
        names.push(primary.switch_wal()?);
    }
    let last = names.last().context("segments")?.clone();
    primary.wait_archived(&last, Duration::from_secs(300))?;
    let expected = primary.sql(FINGERPRINT)?;
    primary.stop()?;
    Ok((primary, copy, names, expected))
}

/// Starts archive recovery of `cluster` with a restore_command that holds
/// PostgreSQL at segment `gate_name` (before fetching it) for as long as the
/// returned gate file exists; returns once PostgreSQL is held there.
fn start_recovery_held_at(dir: &TestDir, config: &Path, cluster: &mut PgCluster, gate_name: &str) -> Result<PathBuf> {
    let (restore, gate, reached) = gated_restore_command(dir, config, gate_name)?;
    write_user_file(&gate, b"", 0o644)?;
    cluster.set_conf(&[restore, "archive_mode = off".to_string()])?;
    cluster.touch_in_data_dir("recovery.signal")?;
    cluster.start_no_wait()?;
    wait_until(Duration::from_secs(180), "recovery to reach the gate", || Ok(reached.exists()))
        .with_context(|| cluster.log_tail(30))?;
    Ok(gate)
}

/// A restore_command that, for segment `gate_name`, touches `reached` and
/// waits while `gate` exists, then runs `pgwal fetch`.
fn gated_restore_command(dir: &TestDir, config: &Path, gate_name: &str) -> Result<(String, PathBuf, PathBuf)> {
    let gate = dir.join("gate");
    let reached = dir.join("gate_reached");
    let script = dir.join("restore.sh");
    let text = format!(
        "#!/bin/sh\nif [ \"$1\" = {g} ]; then touch {r}; while [ -e {gate} ]; do sleep 0.05; done; fi\nexec {pgwal} --config {c} fetch \"$1\" \"$2\"\n",
        g = shell_quote(gate_name),
        r = shell_quote(&reached.to_string_lossy()),
        gate = shell_quote(&gate.to_string_lossy()),
        pgwal = shell_quote(&pgwal_bin().to_string_lossy()),
        c = shell_quote(&config.to_string_lossy()),
    );
    write_user_file(&script, text.as_bytes(), 0o755)?;
    let setting =
        format!("restore_command = {}", conf_quote(&format!("{} %f %p", shell_quote(&script.to_string_lossy()))));
    Ok((setting, gate, reached))
}

fn spooled(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("pg_wal/pgwal/fetch"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.len() == 24).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The stored bytes of `name`, fetched outside any data directory.
fn fetch_bytes(dir: &TestDir, config: &Path, name: &str) -> Result<Vec<u8>> {
    let out_dir = dir.join("fetched");
    create_user_dir(&out_dir)?;
    let dest = out_dir.join(name);
    Pgwal::new(["--config", &config.to_string_lossy(), "fetch", name, &dest.to_string_lossy()])
        .current_dir(&out_dir)
        .run()?
        .ensure_success()?;
    Ok(std::fs::read(&dest)?)
}

#[test]
fn recovery_from_s3_is_served_from_a_checked_spool() -> Result<()> {
    let dir = TestDir::new()?;
    let mut s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    let toml = format!("{}\n[fetch]\nprefetch = 8\nretry_deadline = \"1s\"\n", s3.config_toml("s3://pgwal/prefetch"));
    write_private_file(&config, &toml)?;
    let (_primary, mut copy, names, expected) = primary_and_copy(&dir, &config, 70)?;
    let gate_name = names[40].clone();
    let gate = start_recovery_held_at(&dir, &config, &mut copy, &gate_name)?;

    // PostgreSQL asked for names[39] last: the next eight are spooled, each
    // exactly the stored segment.
    let data = copy.data_dir().to_path_buf();
    let ahead: Vec<String> = names[40..48].to_vec();
    wait_until(Duration::from_secs(60), "eight spooled segments", || Ok(spooled(&data) == ahead))
        .with_context(|| format!("spool: {:?}", spooled(&data)))?;
    for name in &ahead {
        let spool_file = data.join("pg_wal/pgwal/fetch").join(name);
        ensure!(std::fs::read(&spool_file)? == fetch_bytes(&dir, &config, name)?, "{name}: spool differs");
        ensure!(
            spool_file.with_extension("meta").exists() || data.join(format!("pg_wal/pgwal/fetch/{name}.meta")).exists()
        );
    }

    // With the repository down, the spooled segments still replay; the one
    // after them cannot be fetched, and recovery stops instead of ending.
    s3.stop()?;
    std::fs::remove_file(&gate)?;
    copy.wait_stopped(Duration::from_secs(120))?;
    let log = copy.log_contents();
    ensure!(log.contains(&format!("restored log file \"{}\"", names[47])), "{}", copy.log_tail(30));
    ensure!(!log.contains(&format!("restored log file \"{}\"", names[48])), "{}", copy.log_tail(30));
    ensure!(log.contains("exit code 201"), "{}", copy.log_tail(30));
    ensure!(data.join("recovery.signal").exists(), "recovery did not end");

    // Back up: recovery completes with every row, and the spool goes away.
    s3.start_again()?;
    copy.start()?;
    copy.wait_recovery_finished(Duration::from_secs(180))?;
    ensure!(copy.sql(FINGERPRINT)? == expected, "recovered data differs");
    let log = copy.log_contents();
    ensure!(log.contains(&format!("restored log file \"{}\"", names[69])), "{}", copy.log_tail(30));
    wait_until(Duration::from_secs(120), "the spool to be removed after promotion", || {
        Ok(!data.join("pg_wal/pgwal/fetch").exists())
    })?;
    Ok(())
}

#[test]
fn a_corrupt_object_is_never_spooled_and_stops_targeted_recovery() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n[fetch]\nprefetch = 8\n", repo.display()))?;
    let (primary, mut copy, names, _) = primary_and_copy(&dir, &config, 24)?;
    drop(primary);
    // Corrupt one stored segment in the middle: one byte of its payload.
    let victim = &names[12];
    let object = repo.join("wal").join(&victim[..16]).join(victim);
    let mut bytes = std::fs::read(&object)?;
    let at = bytes.len() - 100;
    bytes[at] ^= 0x55;
    std::fs::write(&object, &bytes)?;
    let target = "recovery_target_name = 'never_reached'".to_string();
    copy.set_conf(&[restore_command_setting(&config), "archive_mode = off".to_string(), target])?;
    copy.touch_in_data_dir("recovery.signal")?;
    copy.start_no_wait()?;
    copy.wait_stopped(Duration::from_secs(180))?;
    let log = copy.log_contents();
    ensure!(log.contains(&format!("restored log file \"{}\"", names[11])), "{}", copy.log_tail(30));
    ensure!(!log.contains(&format!("restored log file \"{victim}\"")), "corrupt segment was used");
    ensure!(log.contains("is corrupt") && log.contains("exit code 200"), "{}", copy.log_tail(30));
    let data = copy.data_dir();
    ensure!(data.join("recovery.signal").exists(), "recovery must not end early");
    ensure!(!spooled(data).contains(victim), "the corrupt segment is never in the spool");
    let plog = std::fs::read_to_string(data.join("pg_wal/pgwal/prefetch.log")).unwrap_or_default();
    // Whether the prefetcher reached the victim before PostgreSQL asked for
    // it is a race (the unit test `a_corrupt_object_is_not_spooled` covers
    // its side deterministically); if it did, it must have refused it.
    ensure!(
        plog.contains(&format!("not spooling '{victim}'")) || !plog.contains(victim.as_str()),
        "prefetcher log: {plog}"
    );
    Ok(())
}

/// The segment `n` after `name` on timeline `tli` (no log-file rollover in tests).
fn segment_after(name: &str, tli: u32, n: u32) -> Result<String> {
    let seg = u32::from_str_radix(&name[16..24], 16)? + n;
    Ok(format!("{tli:08X}{}{seg:08X}", &name[8..16]))
}

#[test]
fn prefetch_follows_the_timeline_switch() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n[fetch]\nprefetch = 4\n", repo.display()))?;
    let mut primary =
        PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    primary.start()?;
    primary.sql("CREATE TABLE t (n int, filler text)")?;
    let mut first = primary.basebackup_to(&dir.join("first"))?;
    let mut second = primary.basebackup_to(&dir.join("second"))?;
    let mut tl1 = Vec::new();
    for i in 0..6 {
        primary.sql(&format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g", 100 + i))?;
        tl1.push(primary.switch_wal()?);
    }
    let last_tl1 = tl1.last().context("tl1")?.clone();
    primary.wait_archived(&last_tl1, Duration::from_secs(120))?;
    primary.stop()?;

    // The first copy replays all of timeline 1, ends recovery, continues on
    // timeline 2 and archives into the same repository.
    first.set_conf(&[restore_command_setting(&config)])?;
    first.touch_in_data_dir("recovery.signal")?;
    first.start()?;
    first.wait_recovery_finished(Duration::from_secs(180))?;
    let mut tl2 = Vec::new();
    for i in 0..5 {
        first.sql(&format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g", 10 + i))?;
        tl2.push(first.switch_wal()?);
    }
    first.wait_archived(tl2.last().context("tl2")?, Duration::from_secs(120))?;
    let expected = first.sql(FINGERPRINT)?;
    first.stop()?;
    ensure!(tl2[0].starts_with("00000002"), "the first copy is on timeline 2: {tl2:?}");
    // Timeline 2 begins in the segment after the last one of timeline 1.
    let switch_segment = segment_after(&last_tl1, 2, 1)?;
    ensure!(tl2[0] == switch_segment, "timeline 2 starts at {switch_segment}: {tl2:?}");

    // The second copy recovers to the latest timeline. Held at the last
    // segment of timeline 1, its spool already holds timeline 2's segments.
    let gate = start_recovery_held_at(&dir, &config, &mut second, &last_tl1)?;
    let data = second.data_dir().to_path_buf();
    let expected_spool = vec![
        last_tl1.clone(),
        segment_after(&last_tl1, 2, 1)?,
        segment_after(&last_tl1, 2, 2)?,
        segment_after(&last_tl1, 2, 3)?,
    ];
    wait_until(Duration::from_secs(60), "the spool to follow timeline 2", || Ok(spooled(&data) == expected_spool))
        .with_context(|| format!("spool: {:?}", spooled(&data)))?;
    for name in &expected_spool {
        ensure!(
            std::fs::read(data.join("pg_wal/pgwal/fetch").join(name))? == fetch_bytes(&dir, &config, name)?,
            "{name}"
        );
    }
    std::fs::remove_file(&gate)?;
    second.wait_recovery_finished(Duration::from_secs(180))?;
    ensure!(second.sql(FINGERPRINT)? == expected, "recovered data differs from timeline 2's");
    let log = second.log_contents();
    ensure!(log.contains(&format!("restored log file \"{}\"", tl2.last().context("tl2")?)), "{}", second.log_tail(30));
    Ok(())
}

/// PIDs of the prefetchers (`pgwal ... --pgdata DATA prefetch-wal`) serving `data`.
fn prefetchers_of(data: &Path) -> Vec<u32> {
    let data = data.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "prefetch-wal") && args.contains(&data) {
            pids.push(pid);
        }
    }
    pids
}

fn prefetching_config(dir: &TestDir) -> Result<PathBuf> {
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n[fetch]\nprefetch = 4\n", dir.join("repo").display()))?;
    Ok(config)
}

#[test]
fn no_prefetcher_outlives_its_standby() -> Result<()> {
    let dir = TestDir::new()?;
    let config = prefetching_config(&dir)?;
    let (_primary, mut standby, names, expected) = primary_and_copy(&dir, &config, 3)?;
    // A standby fed from the archive alone: it keeps asking for the next segment.
    standby.set_conf(&[restore_command_setting(&config), "archive_mode = off".to_string()])?;
    standby.touch_in_data_dir("standby.signal")?;
    standby.start()?;
    let data = standby.data_dir().to_path_buf();
    let last = names.last().context("segments")?;
    wait_until(Duration::from_secs(120), "the standby to replay the archive", || {
        Ok(standby.log_contents().contains(&format!("restored log file \"{last}\"")))
    })?;
    ensure!(standby.sql(FINGERPRINT)? == expected, "the standby replayed the archive");
    wait_until(Duration::from_secs(30), "a prefetcher for the standby", || Ok(!prefetchers_of(&data).is_empty()))?;

    standby.stop_immediate()?;
    // Its idle exit is 60 s after the last request; it must go with its server.
    wait_until(Duration::from_secs(10), "the prefetcher to exit after its standby", || {
        Ok(prefetchers_of(&data).is_empty())
    })
    .with_context(|| format!("still running: {:?}", prefetchers_of(&data)))?;
    ensure!(!data.join("pg_wal/pgwal/fetch").exists(), "the spool is removed with it");
    Ok(())
}

#[test]
fn no_prefetcher_outlives_a_failed_recovery() -> Result<()> {
    let dir = TestDir::new()?;
    let config = prefetching_config(&dir)?;
    let (_primary, mut copy, _names, _) = primary_and_copy(&dir, &config, 3)?;
    // A restore point that does not exist: PostgreSQL replays everything, then
    // exits with "recovery ended before configured recovery target was reached".
    copy.set_conf(&[
        restore_command_setting(&config),
        "archive_mode = off".to_string(),
        "recovery_target_name = 'never_created'".to_string(),
    ])?;
    copy.touch_in_data_dir("recovery.signal")?;
    copy.start_no_wait()?;
    let data = copy.data_dir().to_path_buf();
    copy.wait_stopped(Duration::from_secs(180))?;
    ensure!(
        copy.log_contents().contains("recovery ended before configured recovery target was reached"),
        "{}",
        copy.log_tail(20)
    );
    ensure!(data.join("recovery.signal").exists(), "recovery did not end: the signal file stays");
    wait_until(Duration::from_secs(10), "the prefetcher to exit after the failed recovery", || {
        Ok(prefetchers_of(&data).is_empty())
    })
    .with_context(|| format!("still running: {:?}", prefetchers_of(&data)))?;
    Ok(())
}

#[test]
fn a_fetch_by_hand_in_a_primary_starts_no_prefetcher() -> Result<()> {
    let dir = TestDir::new()?;
    let config = prefetching_config(&dir)?;
    let (mut primary, _copy, names, _) = primary_and_copy(&dir, &config, 2)?;
    primary.start()?;
    let data = primary.data_dir().to_path_buf();
    let out_dir = dir.join("by_hand");
    create_user_dir(&out_dir)?;
    let dest = out_dir.join("segment");
    command_in(&data, &config, &names[0], &dest)?;
    ensure!(std::fs::read(&dest)? == fetch_bytes(&dir, &config, &names[0])?, "the segment was fetched");
    // fetch has exited: a prefetcher it started would exist by now.
    ensure!(prefetchers_of(&data).is_empty(), "no prefetcher for a primary: {:?}", prefetchers_of(&data));
    ensure!(!data.join("pg_wal/pgwal/fetch").exists(), "nothing written into the primary's pg_wal/pgwal/fetch");
    Ok(())
}

/// `pgwal fetch NAME DEST` run by hand with `data` as the working directory.
fn command_in(data: &Path, config: &Path, name: &str, dest: &Path) -> Result<()> {
    Pgwal::new(["--config", &config.to_string_lossy(), "fetch", name, &dest.to_string_lossy()])
        .current_dir(data)
        .run()?
        .ensure_success()?;
    Ok(())
}
