//! `pgwal backup` and `pgwal list` on real PostgreSQL 15: a backup taken
//! under pgbench write load stores every file (checked against the packs and
//! against PGDATA), recovers into a working cluster with exactly the
//! primary's rows, and shows in `list --json`; a backup of another cluster is
//! refused and stores nothing; two backups at once are refused by the lock;
//! a killed backup never shows and its stale lock is taken over; a copy of
//! the data directory or a standby's directory is refused while connected
//! to the primary; a backup from a standby on a quiet primary completes and
//! restores; checkpoints are immediate unless told spread; every backup leaves a
//! summary line on stderr; an incr killed half way never shows and the next
//! one builds on the full.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use pgwal::repo::backup::{FileEntry, Manifest};
use pgwal::repo::frame;

/// Rows and sums that any lost or reordered WAL would change.
const FINGERPRINT: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || \
    (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
    (SELECT count(*) || ':' || sum(n) FROM in_tablespace)";

fn file_repo_config(dir: &TestDir) -> Result<PathBuf> {
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", dir.join("repo").display()))?;
    Ok(config)
}

fn cfg(config: &Path) -> String {
    config.to_string_lossy().into_owned()
}

/// `pgwal backup` against `pg`, reading its data directory.
fn backup_cmd(config: &Path, pg: &PgCluster) -> Pgwal {
    Pgwal::new(["--config", &cfg(config), "backup", "--checkpoint", "fast", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
}

/// Runs a backup that must succeed and returns the ID it printed.
fn take_backup(cmd: Pgwal) -> Result<String> {
    let out = cmd.run()?.ensure_success()?;
    let id = out.stdout.trim().to_string();
    ensure!(
        id.len() == 16 && id.ends_with('F') && !id.contains('\n'),
        "backup must print its ID alone on stdout: {out}"
    );
    Ok(id)
}

fn list_json(config: &Path, extra_env: &[(String, String)]) -> Result<serde_json::Value> {
    let out =
        Pgwal::new(["--config", &cfg(config), "list", "--json"]).envs(extra_env.to_vec()).run()?.ensure_success()?;
    serde_json::from_str(&out.stdout).with_context(|| format!("list --json printed no JSON: {out}"))
}

fn backup_ids(listing: &serde_json::Value) -> Vec<String> {
    listing["backups"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(|b| b["id"].as_str().map(String::from)).collect())
}

fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s.split_once('/').context("LSN without '/'")?;
    Ok(u64::from_str_radix(hi, 16)? << 32 | u64::from_str_radix(lo, 16)?)
}

/// Reads and checks a stored object (frame header, size, SHA-256).
fn read_object(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    frame::decode(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn load_manifest(repo_root: &Path, id: &str) -> Result<Manifest> {
    let json = read_object(&repo_root.join(format!("backup/{id}/manifest")))?;
    Ok(serde_json::from_slice(&json)?)
}

/// Every pack of the backup, decoded (each checks its own SHA-256).
fn load_packs(repo_root: &Path, m: &Manifest) -> Result<HashMap<u32, Vec<u8>>> {
    let mut packs = HashMap::new();
    for p in &m.packs {
        let data = read_object(&repo_root.join(format!("backup/{}/pack/{:06}", m.id, p.number)))?;
        ensure!(data.len() as u64 == p.original_size, "pack {} size differs from the manifest", p.number);
        ensure!(frame::hex(&frame::sha256(&data)) == p.sha256, "pack {} SHA-256 differs from the manifest", p.number);
        packs.insert(p.number, data);
    }
    Ok(packs)
}

/// A file's content from the packs, checked against its manifest entry.
fn content(packs: &HashMap<u32, Vec<u8>>, f: &FileEntry) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(f.size as usize);
    for e in &f.extents {
        let pack = packs.get(&e.pack).with_context(|| format!("{}: no pack {}", f.path, e.pack))?;
        let piece = pack
            .get(e.offset as usize..(e.offset + e.size) as usize)
            .with_context(|| format!("{}: extent beyond pack", f.path))?;
        out.extend_from_slice(piece);
    }
    ensure!(out.len() as u64 == f.size, "{}: extents hold {} bytes, manifest says {}", f.path, out.len(), f.size);
    ensure!(
        frame::hex(&frame::sha256(&out)) == f.sha256,
        "{}: SHA-256 of the packed bytes differs from the manifest",
        f.path
    );
    Ok(out)
}

/// Writes the backup into `home/pgdata` by hand (what `pgwal restore` will
/// do), with tablespaces relocated per `ts_dirs`, plus backup_label and a
/// tablespace_map naming the new locations.
fn materialize(
    m: &Manifest,
    packs: &HashMap<u32, Vec<u8>>,
    home: &Path,
    ts_dirs: &HashMap<u32, PathBuf>,
) -> Result<()> {
    let data = home.join(DATA_SUBDIR);
    create_user_dir(&data)?;
    let root = |ts: Option<u32>| -> Result<PathBuf> {
        match ts {
            None => Ok(data.clone()),
            Some(oid) => ts_dirs.get(&oid).cloned().with_context(|| format!("no directory for tablespace {oid}")),
        }
    };
    for d in &m.directories {
        create_user_dir(&root(d.tablespace)?.join(&d.path))?;
    }
    for f in &m.files {
        let path = root(f.tablespace)?.join(&f.path);
        if let Some(parent) = path.parent() {
            create_user_dir(parent)?;
        }
        write_user_file(&path, &content(packs, f)?, f.mode)?;
    }
    write_user_file(&data.join("backup_label"), m.backup_label.as_bytes(), 0o600)?;
    if !m.tablespaces.is_empty() {
        let map: String = m.tablespaces.iter().map(|t| format!("{} {}\n", t.oid, ts_dirs[&t.oid].display())).collect();
        write_user_file(&data.join("tablespace_map"), map.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// Runs pgbench in short rounds until `stop` is set.
fn load_until(pg: &PgCluster, stop: &AtomicBool) -> Result<u32> {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        pg.pgbench(&["-c", "2", "-j", "2", "-T", "2", "--no-vacuum"])?;
        rounds += 1;
    }
    Ok(rounds)
}

#[test]
fn backup_under_load_recovers_exactly() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let ts_dir = dir.subdir("ts1")?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "max_wal_size = 64MB"])?;
    pg.start()?;
    pg.pgbench_init(3)?;
    pg.sql(&format!("CREATE TABLESPACE ts1 LOCATION {}", conf_quote(&ts_dir.to_string_lossy())))?;
    pg.sql("CREATE TABLE in_tablespace TABLESPACE ts1 AS SELECT g AS n FROM generate_series(1, 20000) g")?;
    pg.sql("CREATE UNLOGGED TABLE scratch AS SELECT g AS n FROM generate_series(1, 1000) g")?;

    // The backup runs while pgbench writes.
    let stop = AtomicBool::new(false);
    let (backup, rounds) = std::thread::scope(|s| {
        let load = s.spawn(|| load_until(&pg, &stop));
        std::thread::sleep(Duration::from_secs(1));
        let backup = take_backup(backup_cmd(&config, &pg));
        stop.store(true, Ordering::Relaxed);
        (backup, load.join().expect("pgbench thread"))
    });
    let id = backup?;
    ensure!(rounds? >= 1, "pgbench ran during the backup");
    pg.sql("INSERT INTO in_tablespace SELECT g FROM generate_series(20001, 20100) g")?;
    let expected = pg.sql(FINGERPRINT)?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, Duration::from_secs(120))?;

    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![id.clone()], "list shows the backup: {listing}");
    let b = &listing["backups"][0];
    let (start, stop_lsn) =
        (parse_lsn(b["start_lsn"].as_str().unwrap_or(""))?, parse_lsn(b["stop_lsn"].as_str().unwrap_or(""))?);
    ensure!(stop_lsn > start, "stop LSN after start LSN: {b}");
    ensure!(b["type"] == "full" && b["timeline"] == 1 && b["data_size"].as_u64() > Some(40 << 20), "{b}");
    ensure!(listing["wal"][0]["timeline"] == 1 && listing["wal"][0]["gaps"] == serde_json::json!([]), "{listing}");
    let text = Pgwal::new(["--config", &cfg(&config), "list"]).run()?.ensure_success()?.stdout;
    ensure!(text.contains(&id) && text.contains("WAL timeline 1:") && text.contains("no gaps"), "list text:\n{text}");

    let repo_root = dir.join("repo");
    let m = load_manifest(&repo_root, &id)?;
    ensure!(m.system_identifier == pg.system_identifier()?, "manifest names the cluster");
    ensure!(m.backup_label.contains("START WAL LOCATION") && m.tablespace_map.is_some(), "label and map: {m:?}");
    ensure!(m.stored_size < m.data_size, "packs are compressed");
    let packs = load_packs(&repo_root, &m)?;
    let by_path: HashMap<(Option<u32>, &str), &FileEntry> =
        m.files.iter().map(|f| ((f.tablespace, f.path.as_str()), f)).collect();
    for excluded in ["postmaster.pid", "postmaster.opts", "pg_wal/000000010000000000000001", "backup_label"] {
        ensure!(!by_path.contains_key(&(None, excluded)), "{excluded} must not be in the backup");
    }
    ensure!(!m.files.iter().any(|f| f.path.starts_with("pg_wal/")), "no WAL in the backup");
    let dirs: Vec<&str> = m.directories.iter().map(|d| d.path.as_str()).collect();
    ensure!(
        dirs.contains(&"pg_wal") && dirs.contains(&"pg_wal/archive_status") && dirs.contains(&"pg_replslot"),
        "{dirs:?}"
    );
    let ts_oid = pg.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'")?.parse::<u32>()?;
    ensure!(m.tablespaces.len() == 1 && m.tablespaces[0].oid == ts_oid, "{:?}", m.tablespaces);
    ensure!(
        m.files.iter().any(|f| f.tablespace == Some(ts_oid) && f.path.starts_with("PG_15_")),
        "tablespace files are in"
    );
    let scratch = pg.sql("SELECT pg_relation_filepath('scratch')")?;
    ensure!(!by_path.contains_key(&(None, scratch.as_str())), "an unlogged table's main fork is skipped");
    ensure!(by_path.contains_key(&(None, format!("{scratch}_init").as_str())), "its init fork is kept");
    // Every file's bytes re-checked against the manifest.
    for f in &m.files {
        content(&packs, f)?;
    }
    let control = content(&packs, by_path[&(None, "global/pg_control")])?;
    ensure!(control[..8] == pg.system_identifier()?.parse::<u64>()?.to_ne_bytes(), "pg_control is the cluster's");

    pg.stop()?;
    for same in ["PG_VERSION", "postgresql.conf", "pg_hba.conf", "global/pg_filenode.map"] {
        let on_disk = std::fs::read(pg.data_dir().join(same))?;
        ensure!(content(&packs, by_path[&(None, same)])? == on_disk, "{same} differs from PGDATA");
    }

    // The backup plus the archive recover to exactly the primary's rows.
    let copy_home = dir.join("copy");
    let copy_ts = dir.subdir("copy-ts1")?;
    materialize(&m, &packs, &copy_home, &HashMap::from([(ts_oid, copy_ts)]))?;
    let mut copy = PgCluster::existing(&copy_home)?;
    copy.set_conf(&[restore_command_setting(&config), "archive_mode = off".to_string()])?;
    copy.touch_in_data_dir("recovery.signal")?;
    copy.start()?;
    copy.wait_recovery_finished(Duration::from_secs(180))?;
    let recovered = copy.sql(FINGERPRINT)?;
    ensure!(recovered == expected, "recovered {recovered:?}, primary had {expected:?}");
    ensure!(copy.sql("SELECT count(*) FROM scratch")? == "0", "unlogged tables come back empty");
    let mut amcheck = copy.pg_client("pg_amcheck");
    amcheck.args(["--all", "--install-missing", "--heapallindexed"]);
    let out = run(&mut amcheck, None, COMMAND_TIMEOUT)?;
    ensure!(out.success(), "pg_amcheck finds the recovered cluster sound: {out}");
    Ok(())
}

#[test]
fn s3_backup_and_another_cluster_is_refused() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://pgwal/main"))?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.pgbench_init(1)?;

    // libpq's environment instead of --conninfo, and the data directory from the server.
    let pg_env = [
        ("PGHOST".to_string(), pg.socket_dir().to_string_lossy().into_owned()),
        ("PGPORT".to_string(), pg.port().to_string()),
        ("PGUSER".to_string(), "postgres".to_string()),
    ];
    let id =
        take_backup(Pgwal::new(["--config", &cfg(&config), "backup", "--checkpoint", "fast"]).envs(pg_env.clone()))?;
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![id.clone()], "{listing}");
    let repo_root = bucket.join("main");
    let m = load_manifest(&repo_root, &id)?;
    let packs = load_packs(&repo_root, &m)?;
    for f in &m.files {
        content(&packs, f)?;
    }
    let version = m.files.iter().find(|f| f.path == "PG_VERSION").context("PG_VERSION is backed up")?;
    ensure!(content(&packs, version)? == std::fs::read(pg.data_dir().join("PG_VERSION"))?, "PG_VERSION");

    // Another cluster (another system identifier) into the same repository.
    let mut other = PgCluster::init(&dir.join("other"), &[])?;
    other.start()?;
    ensure!(other.system_identifier()? != pg.system_identifier()?, "initdb gives each cluster its own identifier");
    let before = list_tree(&repo_root.join("backup"))?;
    let out = backup_cmd(&config, &other).run()?;
    ensure!(out.code() == Some(1) && out.stdout.is_empty(), "a backup of another cluster fails: {out}");
    ensure!(out.stderr.contains("belongs to cluster") && out.stderr.contains(&pg.system_identifier()?), "{out}");
    ensure!(list_tree(&repo_root.join("backup"))? == before, "the refused backup stored nothing");
    ensure!(!repo_root.join("lock/backup").exists(), "and released its lock");
    ensure!(backup_ids(&list_json(&config, &[])?) == vec![id], "list is unchanged");

    // Reading commands never create a repository.
    let missing = dir.join("pgwal-missing.toml");
    write_private_file(&missing, &s3.config_toml("s3://pgwal/nothing-here"))?;
    let out = Pgwal::new(["--config", &cfg(&missing), "list"]).run()?;
    ensure!(out.code() == Some(1) && out.stderr.contains("no pgwal repository"), "{out}");
    ensure!(!bucket.join("nothing-here").exists(), "list created nothing");
    Ok(())
}

fn list_tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                out.extend(list_tree(&p)?);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Waits for a spawned pgwal and returns its output.
fn finish(child: Child) -> Result<std::process::Output> {
    Ok(child.wait_with_output()?)
}

#[test]
fn concurrent_backups_are_locked_out_and_killed_ones_never_show() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    // A slow archiver keeps each backup waiting for its WAL for a while.
    let slow_archive = format!(
        "archive_command = {}",
        conf_quote(&format!("sleep 2; {}", pgwal_shell_command(&["--config", &cfg(&config), "archive", "%p"])))
    );
    let mut pg = PgCluster::init(&dir.join("primary"), &[&slow_archive])?;
    pg.start()?;
    let repo_root = dir.join("repo");
    let lock = repo_root.join("lock/backup");

    // Two at once: the second is refused, naming the first.
    let spawn = |cmd: Pgwal| -> Result<Child> {
        let mut c = cmd.command();
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        Ok(c.spawn()?)
    };
    let first = spawn(backup_cmd(&config, &pg))?;
    let first_pid = first.id();
    wait_until(Duration::from_secs(60), "the first backup to take the lock", || Ok(lock.exists()))?;
    let second = backup_cmd(&config, &pg).run()?;
    ensure!(second.code() == Some(1) && second.stdout.is_empty(), "the second backup fails: {second}");
    ensure!(
        second.stderr.contains("another backup of this repository is running")
            && second.stderr.contains(&first_pid.to_string()),
        "the error names the holder: {second}"
    );
    let out = finish(first)?;
    ensure!(out.status.success(), "the first backup succeeds: {}", String::from_utf8_lossy(&out.stderr));
    let first_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(!lock.exists(), "the lock is released");

    // Killed while it waits for its WAL: never listed, and its lock is taken over.
    let mut killed = spawn(backup_cmd(&config, &pg))?;
    let packs_of_new_backup = || -> Result<bool> {
        Ok(list_tree(&repo_root.join("backup"))?
            .iter()
            .any(|p| p.to_string_lossy().contains("/pack/") && !p.to_string_lossy().contains(&format!("/{first_id}/"))))
    };
    wait_until(Duration::from_secs(60), "the next backup to store a pack", packs_of_new_backup)?;
    killed.kill()?; // SIGKILL to our own child, by its PID
    let status = killed.wait()?;
    ensure!(!status.success(), "killed");
    ensure!(lock.exists(), "a killed backup leaves its lock");
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![first_id.clone()], "the killed backup is not listed: {listing}");
    ensure!(listing["incomplete"].as_array().is_some_and(|a| a.len() == 1), "but counted as incomplete: {listing}");

    let out = backup_cmd(&config, &pg).run()?.ensure_success()?;
    ensure!(out.stderr.contains("taking over the stale backup lock"), "{out}");
    let third_id = out.stdout.trim().to_string();
    ensure!(backup_ids(&list_json(&config, &[])?) == vec![first_id, third_id], "both complete backups are listed");
    ensure!(!lock.exists(), "released again");
    Ok(())
}

/// An incr killed (SIGKILL) after it stored packs and block maps, while it
/// waits for its WAL: it is never listed, and the next incr succeeds, builds
/// on the full (not on the killed one) and restores to the primary's rows.
#[test]
fn a_killed_incr_never_shows_and_the_next_one_builds_on_the_full() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let slow_archive = format!(
        "archive_command = {}",
        conf_quote(&format!("sleep 2; {}", pgwal_shell_command(&["--config", &cfg(&config), "archive", "%p"])))
    );
    let mut pg = PgCluster::init(&dir.join("primary"), &[&slow_archive])?;
    pg.start()?;
    pg.pgbench_init(1)?;
    let repo_root = dir.join("repo");
    let full = take_backup(backup_cmd(&config, &pg))?;
    pg.pgbench(&["-n", "-t", "200"])?;

    let mut c = backup_cmd(&config, &pg).args(["--type", "incr"]).command();
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut killed = c.spawn()?;
    let stored_by_incr = || -> Result<Vec<PathBuf>> {
        Ok(list_tree(&repo_root.join("backup"))?
            .into_iter()
            .filter(|p| p.parent().and_then(|d| d.parent()).is_some_and(|b| b.to_string_lossy().ends_with('I')))
            .collect())
    };
    wait_until(Duration::from_secs(120), "the incr to store a pack and a block map", || {
        let objects = stored_by_incr()?;
        let has = |kind: &str| objects.iter().any(|p| p.to_string_lossy().contains(kind));
        Ok(has("/pack/") && has("/map/"))
    })?;
    killed.kill()?; // SIGKILL to our own child, by its PID
    ensure!(!killed.wait()?.success(), "killed");
    ensure!(!stored_by_incr()?.iter().any(|p| p.ends_with("manifest")), "no manifest of the killed incr");
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![full.clone()], "the killed incr is not listed: {listing}");

    let out = backup_cmd(&config, &pg).args(["--type", "incr"]).run()?.ensure_success()?;
    let incr = out.stdout.trim().to_string();
    ensure!(incr.ends_with('I') && out.stderr.contains(&format!("incr on top of {full}")), "{out}");
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![full.clone(), incr.clone()], "{listing}");
    let expected =
        pg.sql("SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)")?;

    let home = dir.join("restored");
    Pgwal::new(["--config", &cfg(&config), "restore", "--backup", &incr, "--target-immediate"])
        .args(["--target-action", "promote", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    wait_until(Duration::from_secs(120), "recovery to end", || Ok(copy.sql("SELECT pg_is_in_recovery()")? == "f"))
        .with_context(|| copy.log_tail(30))?;
    let got = copy
        .sql("SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)")?;
    ensure!(got == expected, "the incr restored to {got}, the primary had {expected}");
    copy.stop()?;
    Ok(())
}

#[test]
fn usage_errors() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let out = Pgwal::new(["--config", &cfg(&config), "backup", "--type", "weekly"]).run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("'weekly'"), "{out}");
    ensure!(!dir.join("repo").exists(), "a refused backup creates nothing");
    let bad_type = dir.join("bad-type.toml");
    write_private_file(
        &bad_type,
        &format!("repo = \"file://{}\"\n[backup]\ntype = \"weekly\"\n", dir.join("repo").display()),
    )?;
    let out = Pgwal::new(["--config", &cfg(&bad_type), "backup"]).run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("invalid backup.type 'weekly'"), "{out}");
    ensure!(out.stderr.contains("hint:") && !dir.join("repo").exists(), "{out}");
    let out = Pgwal::new(["--config", &cfg(&config), "list"]).run()?;
    ensure!(out.code() == Some(1) && out.stderr.contains("no pgwal repository"), "{out}");
    ensure!(!dir.join("repo").exists(), "list creates nothing");
    let out = Pgwal::new(["--config", &cfg(&config), "backup", "--conninfo", "host=/nonexistent port=1 user=postgres"])
        .run()?;
    ensure!(out.code() == Some(1) && out.stderr.contains("cannot connect to PostgreSQL"), "{out}");
    ensure!(out.stderr.contains("hint:"), "{out}");
    if dir.join("repo/lock/backup").exists() {
        bail!("a failed backup must release its lock");
    }
    Ok(())
}

/// `conninfo` of `pg` for another role.
fn conninfo_as(pg: &PgCluster, role: &str) -> String {
    pg.conninfo().replace("user=postgres", &format!("user={role}"))
}

/// A streaming standby of `primary` (archiving must work: pg_basebackup
/// waits for it), started and streaming.
fn streaming_standby(primary: &PgCluster, home: &Path) -> Result<PgCluster> {
    let mut standby = primary.basebackup_to(home)?;
    standby.set_conf(&[format!("primary_conninfo = {}", conf_quote(&primary.conninfo()))])?;
    standby.touch_in_data_dir("standby.signal")?;
    standby.start()?;
    wait_until(Duration::from_secs(120), "the standby to stream", || {
        Ok(standby.sql("SELECT status FROM pg_stat_wal_receiver").is_ok_and(|s| s == "streaming"))
    })
    .with_context(|| standby.log_tail(30))?;
    Ok(standby)
}

/// A refused backup: exit 2, the error names the directory and the server,
/// nothing new in the repository, nothing listed, lock released.
fn ensure_refused(out: &RunOutput, dir: &Path, config: &Path, before: &[PathBuf], listed: &[String]) -> Result<()> {
    ensure!(out.code() == Some(2) && out.stdout.is_empty(), "a backup of '{}' must be refused: {out}", dir.display());
    let error = out.stderr.lines().find(|l| l.starts_with("pgwal: error:")).context("an error line")?;
    ensure!(error.contains(&dir.display().to_string()) && error.contains("port="), "names the dir and server: {out}");
    ensure!(out.stderr.contains("hint: drop --pgdata"), "with a hint: {out}");
    let root = config.parent().context("config dir")?.join("repo");
    ensure!(list_tree(&root.join("backup"))? == before, "the refused backup stored nothing: {out}");
    ensure!(!root.join("lock/backup").exists(), "and released its lock");
    let listing = list_json(config, &[])?;
    ensure!(backup_ids(&listing) == listed && listing["incomplete"] == serde_json::json!([]), "{listing}");
    Ok(())
}

#[test]
fn copies_and_a_standby_directory_are_refused() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g")?;
    let id = take_backup(backup_cmd(&config, &pg))?;
    // A role that may take backups but not read data_directory: only the
    // liveness evidence (postmaster.pid, pg_control) can tell then.
    pg.sql(
        "CREATE ROLE backup_operator LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO backup_operator",
    )?;
    let as_operator = |data: &Path| {
        Pgwal::new(["--config", &cfg(&config), "backup", "--checkpoint", "fast", "--conninfo"])
            .arg(conninfo_as(&pg, "backup_operator"))
            .arg("--pgdata")
            .arg(data)
    };
    let as_postgres = |data: &Path| {
        Pgwal::new(["--config", &cfg(&config), "backup", "--checkpoint", "fast", "--conninfo", &pg.conninfo()])
            .arg("--pgdata")
            .arg(data)
    };
    let before = list_tree(&dir.join("repo/backup"))?;
    let listed = vec![id.clone()];

    // (i) A `cp -a` of the running cluster (postmaster.pid and all), and a pg_basebackup copy.
    let cp_home = dir.subdir("cp")?;
    let cp = cp_home.join(DATA_SUBDIR);
    let out = run(std::process::Command::new("cp").arg("-a").arg(pg.data_dir()).arg(&cp), None, COMMAND_TIMEOUT)?;
    ensure!(out.success(), "cp -a: {out}");
    pg.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")?;
    let copy = pg.basebackup_to(&dir.join("basebackup"))?;
    for data in [cp.as_path(), copy.data_dir()] {
        ensure_refused(&as_postgres(data).run()?, data, &config, &before, &listed)?;
        let out = as_operator(data).run()?;
        ensure_refused(&out, data, &config, &before, &listed)?;
    }
    let out = as_operator(&cp).run()?;
    ensure!(out.stderr.contains("postmaster.pid belongs to the server of"), "{out}");
    // With a copied postmaster.pid that names this very copy, pg_control still tells.
    let pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))?;
    let canonical_cp = std::fs::canonicalize(&cp)?;
    let forged = pid.replacen(&pg.data_dir().display().to_string(), &canonical_cp.display().to_string(), 1);
    write_user_file(&cp.join("postmaster.pid"), forged.as_bytes(), 0o600)?;
    let out = as_operator(&cp).run()?;
    ensure_refused(&out, &cp, &config, &before, &listed)?;
    ensure!(out.stderr.contains("stale copy"), "pg_control's checkpoint is older than the backup's start: {out}");

    // (ii) A streaming standby's directory, while connected to the primary.
    let standby = streaming_standby(&pg, &dir.join("standby"))?;
    for out in [as_postgres(standby.data_dir()).run()?, as_operator(standby.data_dir()).run()?] {
        ensure_refused(&out, standby.data_dir(), &config, &before, &listed)?;
    }

    // The live directory itself passes every check, for both roles.
    let second = take_backup(as_operator(pg.data_dir()))?;
    let third = take_backup(as_postgres(pg.data_dir()))?;
    ensure!(backup_ids(&list_json(&config, &[])?) == vec![id, second, third], "both backups listed");
    Ok(())
}

#[test]
fn a_backup_from_a_standby_on_a_quiet_primary_completes_and_restores() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let repo = dir.join("repo");
    write_private_file(
        &config,
        &format!("repo = \"file://{}\"\n\n[backup]\nwal_timeout = \"60s\"\ncheckpoint = \"fast\"\n", repo.display()),
    )?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    let standby = streaming_standby(&pg, &dir.join("standby"))?;
    // Written after the standby's base backup, so the segment that holds it
    // stays incomplete on the primary until something switches WAL there.
    pg.sql(
        "CREATE ROLE backup_operator LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO backup_operator",
    )?;
    pg.sql("CREATE TABLE t AS SELECT g AS n, md5(g::text) AS filler FROM generate_series(1, 3000) g")?;
    wait_until(Duration::from_secs(120), "the standby to replay the table", || {
        Ok(standby.sql("SELECT count(*) FROM t").is_ok_and(|n| n == "3000"))
    })?;
    let from_standby = || {
        Pgwal::new(["--config", &cfg(&config), "backup", "--conninfo", &standby.conninfo(), "--pgdata"])
            .arg(standby.data_dir())
    };

    // Without the primary's connection: refused at once, nothing stored.
    let before = list_tree(&repo.join("backup"))?;
    let out = from_standby().run()?;
    ensure!(out.code() == Some(2) && out.stdout.is_empty(), "{out}");
    ensure!(out.stderr.contains("is a standby") && out.stderr.contains("--primary-conninfo"), "{out}");
    ensure!(list_tree(&repo.join("backup"))? == before && !repo.join("lock/backup").exists(), "nothing stored");

    // A primary role that may not switch WAL: refused before the backup starts.
    let out = from_standby().args(["--primary-conninfo", &conninfo_as(&pg, "backup_operator")]).run()?;
    ensure!(out.code() == Some(2) && out.stderr.contains("may not call pg_switch_wal()"), "{out}");
    ensure!(list_tree(&repo.join("backup"))? == before && !repo.join("lock/backup").exists(), "nothing stored");

    // With it, on a primary without any traffic from here on: pgwal switches WAL there.
    let current = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")?;
    let archived = pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")?;
    ensure!(archived < current, "the primary's current segment {current} is not archived yet ({archived})");
    let out = from_standby().args(["--primary-conninfo", &pg.conninfo()]).run()?.ensure_success()?;
    let id = out.stdout.trim().to_string();
    ensure!(out.stderr.contains("switched WAL on the primary"), "says why it waits: {out}");
    ensure!(out.stderr.contains(&format!("..{current})")), "the backup ends in that segment: {out}");
    ensure!(out.stderr.contains(&format!("backup {id} complete")), "{out}");
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing) == vec![id.clone()] && listing["incomplete"] == serde_json::json!([]), "{listing}");

    let before = list_tree(&repo.join("backup"))?;
    // Another standby's directory (its base backup made the primary busy: so
    // only after the backup above), while connected to this one: refused, as
    // superuser (by its path) and as a role that cannot read data_directory.
    let other = streaming_standby(&pg, &dir.join("other-standby"))?;
    wait_until(Duration::from_secs(120), "the other standby to replay the table", || {
        Ok(other.sql("SELECT count(*) FROM t").is_ok_and(|n| n == "3000"))
    })?;
    for conninfo in [standby.conninfo(), conninfo_as(&standby, "backup_operator")] {
        let out = Pgwal::new(["--config", &cfg(&config), "backup", "--conninfo", &conninfo])
            .args(["--primary-conninfo", &pg.conninfo(), "--pgdata"])
            .arg(other.data_dir())
            .run()?;
        ensure_refused(&out, other.data_dir(), &config, &before, std::slice::from_ref(&id))?;
    }
    drop(other);

    // The backup restores with exactly the rows written before it.
    let home = dir.join("restored");
    Pgwal::new(["--config", &cfg(&config), "restore", "--backup", &id, "--target-immediate"])
        .args(["--target-action", "promote", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    let mut restored = PgCluster::existing(&home)?;
    restored.set_conf(&["archive_mode = off", "primary_conninfo = ''"])?;
    restored.start()?;
    restored.wait_recovery_finished(Duration::from_secs(120))?;
    let rows = restored.sql("SELECT count(*) || ' ' || sum(n) FROM t")?;
    ensure!(rows == "3000 4501500", "restored {rows}\n{}", restored.log_tail(20));
    Ok(())
}

/// The `checkpoint starting:` lines the server logged since `from` bytes.
fn checkpoints_since(pg: &PgCluster, from: usize) -> Vec<String> {
    let log = pg.log_contents();
    log.get(from..).unwrap_or("").lines().filter(|l| l.contains("checkpoint starting:")).map(String::from).collect()
}

#[test]
fn backups_start_with_a_fast_checkpoint_unless_told_spread() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let spread_config = dir.join("spread.toml");
    write_private_file(
        &spread_config,
        &format!("repo = \"file://{}\"\n\n[backup]\ncheckpoint = \"spread\"\n", dir.join("repo").display()),
    )?;
    // A short checkpoint_timeout bounds a spread checkpoint if a buffer is dirty.
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(&config), "log_checkpoints = on", "checkpoint_timeout = 30s"],
    )?;
    pg.start()?;
    let run_backup = |config: &Path, extra: &[&str]| -> Result<(RunOutput, Vec<String>)> {
        // Nothing dirty: the spread checkpoint has nothing to pace.
        pg.sql("CHECKPOINT")?;
        let from = pg.log_contents().len();
        let out = Pgwal::new(["--config", &cfg(config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
            .arg(pg.data_dir())
            .args(extra)
            .run()?
            .ensure_success()?;
        Ok((out, checkpoints_since(&pg, from)))
    };
    let spread = |lines: &[String]| lines.iter().any(|l| l.contains("starting: force wait"));
    let immediate = |lines: &[String]| lines.iter().any(|l| l.contains("starting: immediate force wait"));

    let (out, lines) = run_backup(&config, &[])?;
    ensure!(immediate(&lines) && !spread(&lines), "the default is an immediate checkpoint: {lines:?}");
    ensure!(!out.stderr.contains("spread checkpoint"), "{out}");
    let (out, lines) = run_backup(&config, &["--checkpoint", "spread"])?;
    ensure!(spread(&lines) && !immediate(&lines), "--checkpoint spread is paced: {lines:?}");
    ensure!(out.stderr.contains("waiting for a spread checkpoint; --checkpoint fast to hurry"), "{out}");
    let (_, lines) = run_backup(&spread_config, &[])?;
    ensure!(spread(&lines) && !immediate(&lines), "backup.checkpoint = \"spread\" is paced: {lines:?}");
    let (_, lines) = run_backup(&spread_config, &["--checkpoint", "fast"])?;
    ensure!(immediate(&lines) && !spread(&lines), "the flag beats the file: {lines:?}");
    Ok(())
}

#[test]
fn a_backup_leaves_one_summary_line_in_a_cron_log() -> Result<()> {
    let dir = TestDir::new()?;
    let config = file_repo_config(&dir)?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config)])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g")?;

    // stderr is a pipe here, as in cron.
    let out = backup_cmd(&config, &pg).run()?.ensure_success()?;
    let id = out.stdout.trim().to_string();
    ensure!(out.stdout == format!("{id}\n"), "stdout is the ID alone: {out}");
    let listing = list_json(&config, &[])?;
    let b = &listing["backups"][0];
    ensure!(b["id"] == id.as_str(), "{listing}");
    let summary = out.stderr.lines().filter(|l| l.contains(&format!("backup {id} complete:"))).collect::<Vec<_>>();
    ensure!(summary.len() == 1, "one summary line: {out}");
    let line = summary[0];
    let files = b["files"].as_u64().context("files")?;
    ensure!(line.contains(&format!(": {files} files, ")) && line.contains(" stored, "), "{line}");
    let (start, stop) = (b["start_lsn"].as_str().unwrap_or("?"), b["stop_lsn"].as_str().unwrap_or("?"));
    ensure!(line.contains(&format!("WAL {start}..{stop} (")) && line.contains("s, WAL"), "{line}");

    let out = backup_cmd(&config, &pg).args(["--log-level", "warn"]).run()?.ensure_success()?;
    ensure!(!out.stderr.contains("complete:"), "--log-level warn drops the summary: {out}");
    let second = out.stdout.trim();
    ensure!(second.len() == 16 && out.stdout == format!("{second}\n"), "stdout still holds the ID: {out}");
    Ok(())
}

#[test]
fn a_backup_whose_wal_never_arrives_removes_its_packs() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let repo = dir.join("repo");
    write_private_file(
        &config,
        &format!("repo = \"file://{}\"\n\n[backup]\nwal_timeout = \"3s\"\ncheckpoint = \"fast\"\n", repo.display()),
    )?;
    // Archiving fails: the backup's WAL never reaches the repository.
    let mut pg = PgCluster::init(&dir.join("primary"), &["archive_command = 'false'"])?;
    pg.start()?;
    let out = backup_cmd(&config, &pg).run()?;
    ensure!(out.code() == Some(1) && out.stdout.is_empty(), "{out}");
    ensure!(out.stderr.contains("did not arrive in the repository within 3s"), "{out}");
    ensure!(out.stderr.contains("pack(s) the failed backup") && out.stderr.contains("it is not a backup"), "{out}");
    let left: Vec<PathBuf> = list_tree(&repo.join("backup"))?;
    ensure!(left.is_empty(), "no pack left behind: {left:?}");
    let listing = list_json(&config, &[])?;
    ensure!(backup_ids(&listing).is_empty() && listing["incomplete"] == serde_json::json!([]), "{listing}");
    Ok(())
}
