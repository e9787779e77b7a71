//! Client-side encryption on real PostgreSQL 15, file:// and S3: after
//! pgbench traffic and a backup, no stored object shows a marker string
//! inserted into a table, WAL page headers, heap page headers or the system
//! identifier (every object is scanned; the same detectors find them in the
//! server's own files); point-in-time recovery gives the exact rows. Wrong,
//! missing, loosely-protected and unwanted keys fail in one line and write
//! nothing; fetch in targeted recovery exits above 125 and the server does
//! not promote. A flipped byte is refused by fetch and restore and named by
//! verify. `rekey` survives SIGKILL after each of its steps; afterwards only
//! the new key opens the repository, and it restores.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

const WAIT: Duration = Duration::from_secs(180);

/// Rows and sums that lost or reordered WAL would change.
const FINGERPRINT: &str = "SELECT (SELECT count(*) FROM secret) || ' ' || (SELECT count(*) FROM pgbench_history) \
    || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)";

/// 32 random bytes as 64 hex digits.
fn random_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
}

pub(crate) fn write_key(path: &Path, mode: u32) -> Result<String> {
    let key = random_key()?;
    write_user_file(path, key.as_bytes(), mode)?;
    Ok(key.trim().to_string())
}

/// Every stored file below `root`, with its path below it.
fn stored_files(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
                out.push((rel, fs::read(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Names and sizes, to tell that nothing was written.
fn listing(root: &Path) -> Result<Vec<(String, usize)>> {
    Ok(stored_files(root)?.into_iter().map(|(n, b)| (n, b.len())).collect())
}

/// What must never show in an encrypted repository.
struct Detectors {
    marker: Vec<u8>,
    sysid: [u8; 8],
}

impl Detectors {
    /// The first thing found in `bytes`, if any.
    fn find(&self, bytes: &[u8]) -> Option<&'static str> {
        if bytes.windows(self.marker.len()).any(|w| w == self.marker) {
            return Some("the marker string");
        }
        if bytes.windows(8).any(|w| w == self.sysid) {
            return Some("the system identifier");
        }
        // WAL page header: magic 0xD110 (PostgreSQL 15), small info bits, timeline 1.
        if bytes.windows(8).any(|w| w[0] == 0x10 && w[1] == 0xD1 && w[2] < 8 && w[3] == 0 && w[4..8] == [1, 0, 0, 0]) {
            return Some("a WAL page header");
        }
        // Heap page header tail: pd_special 8192, pd_pagesize_version 0x2004, pd_prune_xid 0.
        if bytes.windows(8).any(|w| w == [0x00, 0x20, 0x04, 0x20, 0, 0, 0, 0]) {
            return Some("a data page header");
        }
        None
    }
}

/// Scans every object below `root`: only the format object and the keyring
/// objects are cleartext, everything else is sealed, and nothing shows.
fn nothing_shows(root: &Path, d: &Detectors) -> Result<usize> {
    let files = stored_files(root)?;
    let (mut wal, mut packs, mut manifests) = (0, 0, 0);
    for (name, bytes) in &files {
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.starts_with('.') || name.contains(".s3s") {
            continue; // the S3 server's own bookkeeping
        }
        if let Some(what) = d.find(bytes) {
            anyhow::bail!("object '{name}' shows {what}");
        }
        let cleartext = base == "format" || name.contains("keyring/");
        ensure!(cleartext || bytes.starts_with(b"PGWALENC"), "object '{name}' is not sealed");
        wal += usize::from(name.contains("wal/") && base.len() == 24);
        packs += usize::from(name.contains("/pack/"));
        manifests += usize::from(base == "manifest");
    }
    ensure!(wal >= 3 && packs >= 1 && manifests >= 1, "scanned {wal} segments, {packs} packs, {manifests} manifests");
    Ok(files.len())
}

/// The detectors do find what they look for in the server's own files.
fn detectors_work(pg: &PgCluster, d: &Detectors) -> Result<()> {
    let hit = |dir: &Path, what: &str| -> Result<bool> {
        Ok(stored_files(dir)?.iter().any(|(_, b)| d.find(b) == Some(what)))
    };
    ensure!(hit(&pg.data_dir().join("pg_wal"), "the marker string")?, "the marker is in the server's WAL");
    ensure!(hit(&pg.data_dir().join("global"), "the system identifier")?, "pg_control holds the system identifier");
    let wal_headers = stored_files(&pg.data_dir().join("pg_wal"))?
        .iter()
        .any(|(n, b)| n.len() == 24 && d.find(&b[..8192.min(b.len())]).is_some());
    ensure!(wal_headers, "the WAL page header detector finds the server's WAL pages");
    let heap = stored_files(&pg.data_dir().join("base"))?
        .iter()
        .any(|(_, b)| b.windows(8).any(|w| w == [0x00, 0x20, 0x04, 0x20, 0, 0, 0, 0]));
    ensure!(heap, "the data page detector finds the server's heap pages");
    Ok(())
}

fn backup(pg: &PgCluster, config: &Path) -> Result<String> {
    let out = Pgwal::new(["--config", &config.to_string_lossy(), "backup", "--checkpoint", "fast", "--conninfo"])
        .arg(pg.conninfo())
        .arg("--pgdata")
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?;
    Ok(out.stdout.trim().to_string())
}

fn one_line_error(out: &RunOutput, code: i32, text: &str, key: &str) -> Result<()> {
    ensure!(out.code() == Some(code), "expected exit {code}: {out}");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("pgwal: error:")).collect();
    ensure!(errors.len() == 1 && errors[0].contains(text), "one error line with '{text}': {out}");
    ensure!(!out.stderr.contains(key) && !out.stdout.contains(key), "the key shows: {out}");
    Ok(())
}

/// The recorded fingerprint, a restore point before the last rows.
struct Traffic {
    expected: String,
    sysid: u64,
}

/// A primary archiving into the encrypted repository of `config`: pgbench,
/// the marker table, a backup, more traffic, a restore point, more rows.
fn traffic(dir: &TestDir, config: &Path, marker: &str) -> Result<(PgCluster, Traffic, String)> {
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(config), "archive_timeout = 0", "max_wal_size = 64MB", "wal_keep_size = 256MB"],
    )?;
    pg.start()?;
    pg.pgbench_init(2)?;
    pg.sql("CREATE TABLE secret (s text)")?;
    let insert = format!("INSERT INTO secret SELECT '{marker}' || g FROM generate_series(1, 2000) g");
    pg.sql(&insert)?;
    pg.sql("CHECKPOINT")?;
    let id = backup(&pg, config)?;
    pg.pgbench(&["-c", "2", "-j", "2", "-t", "300", "--no-vacuum"])?;
    pg.sql(&insert)?;
    pg.sql("SELECT pg_create_restore_point('enc_point')")?;
    let expected = pg.sql(FINGERPRINT)?;
    pg.sql(&insert)?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    let stats = pg.sql("SELECT failed_count FROM pg_stat_archiver")?;
    ensure!(stats == "0", "the archiver saw failures\n{}", pg.log_tail(30));
    let sysid = pg.system_identifier()?.parse()?;
    Ok((pg, Traffic { expected, sysid }, id))
}

/// Restores to `enc_point` and checks the rows. With `wrong_key_first`, the
/// key file holds another key when the server starts: fetch exits above
/// 125, the startup process stops and the server never promotes; with the
/// key put back it recovers.
fn restore_to_point(
    dir: &TestDir,
    config: &Path,
    key_file: &Path,
    key: &str,
    t: &Traffic,
    name: &str,
    wrong_key_first: bool,
) -> Result<()> {
    let home = dir.join(name);
    let out = Pgwal::new(["--config", &config.to_string_lossy(), "restore", "--target-name", "enc_point"])
        .arg("--target-dir")
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    ensure!(!out.stderr.contains(key), "restore shows the key");
    let auto = fs::read_to_string(home.join(DATA_SUBDIR).join("postgresql.auto.conf"))?;
    ensure!(!auto.contains(key), "postgresql.auto.conf holds the key");
    let mut pg = PgCluster::existing(&home)?;
    pg.set_conf(&["archive_mode = off"])?;
    if wrong_key_first {
        let right = fs::read(key_file)?;
        let other = random_key()?;
        write_user_file(key_file, other.as_bytes(), 0o600)?;
        pg.start_no_wait()?;
        pg.wait_stopped(WAIT).with_context(|| pg.log_tail(30))?;
        let log = pg.log_contents();
        ensure!(log.contains("exit code 204"), "fetch exited 204 in recovery:\n{}", pg.log_tail(30));
        ensure!(log.contains("does not open repository"), "the reason is in the log:\n{}", pg.log_tail(30));
        ensure!(!log.contains("selected new timeline") && !log.contains(other.trim()), "no promotion, no key");
        ensure!(!home.join(DATA_SUBDIR).join("pg_wal/00000002.history").exists(), "no new timeline");
        write_user_file(key_file, &right, 0o600)?;
    }
    pg.start()?;
    wait_until(WAIT, "recovery to pause at enc_point", || {
        Ok(pg.sql("SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'")? == "t")
    })
    .with_context(|| pg.log_tail(30))?;
    let rows = pg.sql(FINGERPRINT)?;
    ensure!(rows == t.expected, "{name}: recovered {rows:?}, the primary had {:?}", t.expected);
    pg.stop()?;
    Ok(())
}

fn setup_keyed_config(dir: &TestDir, repo_toml: &str) -> Result<(PathBuf, PathBuf, String)> {
    let key_file = dir.join("repo.key");
    let key = write_key(&key_file, 0o600)?;
    let config = dir.join("pgwal.toml");
    write_private_file(
        &config,
        &format!("{repo_toml}\n[encryption]\nkey_file = {}\n", toml_quote(&key_file.to_string_lossy())),
    )?;
    Ok((config, key_file, key))
}

#[test]
fn s3_repository_hides_everything_and_recovers() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket("pgwal-enc")?;
    let (config, key_file, key) = setup_keyed_config(&dir, &s3.config_toml("s3://pgwal-enc/cluster"))?;
    let marker = format!("pgwal-secret-marker-{}-", unique_token());
    let (pg, t, _) = traffic(&dir, &config, &marker)?;
    let d = Detectors { marker: marker.clone().into_bytes(), sysid: t.sysid.to_le_bytes() };
    detectors_work(&pg, &d)?;
    let n = nothing_shows(&bucket, &d)?;
    eprintln!("scanned {n} files of the S3 bucket");
    restore_to_point(&dir, &config, &key_file, &key, &t, "r_s3", true)
}

#[test]
fn local_repository_hides_everything_refuses_bad_keys_and_rekeys() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let (config, key_file, key) = setup_keyed_config(&dir, &format!("repo = \"file://{}\"", repo.display()))?;
    let marker = format!("pgwal-secret-marker-{}-", unique_token());
    let (mut pg, t, backup_id) = traffic(&dir, &config, &marker)?;
    let d = Detectors { marker: marker.clone().into_bytes(), sysid: t.sysid.to_le_bytes() };
    detectors_work(&pg, &d)?;
    nothing_shows(&repo, &d)?;
    restore_to_point(&dir, &config, &key_file, &key, &t, "r_file", false)?;

    // A finished segment to offer archive, outside any data directory.
    let loose = dir.subdir("loose")?;
    let segment = stored_files(&pg.data_dir().join("pg_wal"))?
        .into_iter()
        .find(|(n, b)| n.len() == 24 && b.len() == 16 << 20)
        .context("a segment in pg_wal")?;
    let seg_path = loose.join(&segment.0);
    write_user_file(&seg_path, &segment.1, 0o600)?;
    pg.stop()?;
    let cfg = config.to_string_lossy().into_owned();

    // Bad keys: one line each, exit 2 (fetch 204), nothing written.
    let before = listing(&repo)?;
    let wrong = dir.join("wrong.key");
    let wrong_key = write_key(&wrong, 0o600)?;
    let loose_key = dir.join("loose.key");
    write_key(&loose_key, 0o644)?;
    let plain_config = dir.join("plain.toml");
    write_private_file(&plain_config, &format!("repo = \"file://{}\"\n", repo.display()))?;
    let dest = loose.join("fetched");
    let seg_arg = seg_path.to_string_lossy().into_owned();
    for (label, mut run, code, text, secret) in [
        (
            "wrong list",
            Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(&wrong).arg("list"),
            2,
            "does not open repository",
            &wrong_key,
        ),
        (
            "wrong archive",
            Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(&wrong).args(["archive", &seg_arg]),
            2,
            "does not open repository",
            &wrong_key,
        ),
        (
            "wrong fetch",
            Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(&wrong).args(["fetch", &segment.0]).arg(&dest),
            204,
            "does not open repository",
            &wrong_key,
        ),
        (
            "missing verify",
            Pgwal::new(["--config", &plain_config.to_string_lossy(), "verify"]),
            2,
            "no encryption key is configured",
            &key,
        ),
        (
            "missing fetch",
            Pgwal::new(["--config", &plain_config.to_string_lossy(), "fetch", &segment.0]).arg(&dest),
            204,
            "no encryption key is configured",
            &key,
        ),
        (
            "0644",
            Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(&loose_key).arg("list"),
            2,
            "readable by other users (mode 644)",
            &key,
        ),
    ] {
        run = run.current_dir(&loose);
        one_line_error(&run.run()?, code, text, secret).with_context(|| label)?;
        ensure!(!dest.exists(), "{label}: fetch wrote DEST");
    }
    ensure!(listing(&repo)? == before, "nothing was written by the refused commands");

    // A key given to a plaintext repository: refused, nothing written.
    let plain_repo = dir.join("plain_repo");
    let plain_cfg = dir.join("plain_repo.toml");
    write_private_file(&plain_cfg, &format!("repo = \"file://{}\"\n", plain_repo.display()))?;
    Pgwal::new(["--config", &plain_cfg.to_string_lossy(), "archive", &seg_arg]).run()?.ensure_success()?;
    let plain_before = listing(&plain_repo)?;
    let out = Pgwal::new(["--config", &plain_cfg.to_string_lossy(), "--encryption-key-file"])
        .arg(&key_file)
        .args(["list"])
        .run()?;
    one_line_error(&out, 2, "is not encrypted, but an encryption key is configured", &key)?;
    ensure!(listing(&plain_repo)? == plain_before, "nothing written into the plaintext repository");

    // A flipped byte, in a copy of the repository: fetch and restore
    // refuse it, verify names it.
    let bad = dir.join("bad_repo");
    let cp = run(std::process::Command::new("cp").arg("-a").arg(&repo).arg(&bad), None, COMMAND_TIMEOUT)?;
    ensure!(cp.success(), "cp: {cp}");
    let bad_cfg = dir.join("bad.toml");
    write_private_file(
        &bad_cfg,
        &format!(
            "repo = \"file://{}\"\n[encryption]\nkey_file = {}\n",
            bad.display(),
            toml_quote(&key_file.to_string_lossy())
        ),
    )?;
    let seg_key = format!("wal/{}/{}", &segment.0[..16], segment.0);
    let flip = |rel: &str| -> Result<()> {
        let path = bad.join(rel);
        let mut bytes = fs::read(&path)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        fs::write(&path, bytes)?;
        Ok(())
    };
    flip(&seg_key)?;
    let pack = format!("backup/{backup_id}/pack/000000");
    flip(&pack)?;
    let bad_arg = bad_cfg.to_string_lossy().into_owned();
    let out = Pgwal::new(["--config", &bad_arg, "fetch", &segment.0]).arg(&dest).current_dir(&loose).run()?;
    ensure!(
        out.code() == Some(200) && out.stderr.contains("fails authentication"),
        "fetch of the flipped segment: {out}"
    );
    ensure!(!dest.exists(), "no DEST from a damaged object");
    let out = Pgwal::new(["--config", &bad_arg, "verify"]).run()?;
    ensure!(out.code() == Some(3), "verify finds the damage: {out}");
    ensure!(out.stdout.contains(&seg_key) && out.stdout.contains(&pack), "verify names both objects: {out}");
    let out =
        Pgwal::new(["--config", &bad_arg, "restore", "--target-dir"]).arg(dir.join("r_bad").join(DATA_SUBDIR)).run()?;
    ensure!(!out.success() && out.stderr.contains("corrupt"), "restore refuses the flipped pack: {out}");

    // rekey, killed after each step, then run again: every state opens
    // with one of the keys; at the end only the newest key opens it.
    let list_with = |k: &Path| Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(k).arg("list").run();
    let key2 = dir.join("key2");
    let key2_text = write_key(&key2, 0o600)?;
    let data_objects = |r: &Path| -> Result<Vec<(String, Vec<u8>)>> {
        Ok(stored_files(r)?
            .into_iter()
            .filter(|(n, _)| !n.starts_with("keyring/") && !n.starts_with("lock/"))
            .collect())
    };
    let data_before = data_objects(&repo)?;
    for (step, with) in [("keyring", &key_file), ("pointer", &key_file), ("deleted", &key_file)] {
        let out = Pgwal::new(["--config", &cfg, "--encryption-key-file"])
            .arg(with)
            .args(["rekey", "--new-key-file"])
            .arg(&key2)
            .env("PGWAL_TEST_REKEY_CRASH_AFTER", step)
            .run()?;
        ensure!(out.code().is_none(), "rekey was killed after '{step}': {out}");
        let opens = [list_with(&key_file)?.success(), list_with(&key2)?.success()];
        ensure!(opens.contains(&true), "after a kill at '{step}' some key opens the repository");
        if step != "deleted" {
            ensure!(opens == [true, true], "after a kill at '{step}' both keys open it: {opens:?}");
        }
    }
    one_line_error(&list_with(&key_file)?, 2, "does not open repository", &key)?;
    let key3 = dir.join("key3");
    let key3_text = write_key(&key3, 0o600)?;
    let out = Pgwal::new(["--config", &cfg, "--encryption-key-file"])
        .arg(&key2)
        .args(["rekey", "--new-key-file"])
        .arg(&key3)
        .run()?
        .ensure_success()?;
    ensure!(!out.stdout.contains(&key3_text) && !out.stderr.contains(&key2_text), "rekey shows a key");
    for old in [&key_file, &key2] {
        one_line_error(&list_with(old)?, 2, "does not open repository", &key2_text)?;
    }
    ensure!(data_objects(&repo)? == data_before, "rekey rewrote no data object");
    let keyrings: Vec<_> = stored_files(&repo)?.into_iter().filter(|(n, _)| n.starts_with("keyring/")).collect();
    ensure!(
        keyrings.len() == 2,
        "one keyring and the pointer are left: {:?}",
        keyrings.iter().map(|k| &k.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &keyrings {
        for k in [&key, &key2_text, &key3_text] {
            ensure!(!String::from_utf8_lossy(bytes).contains(k.as_str()), "{name} holds a key");
        }
    }
    // The new key restores (its file named in restore_command).
    let home = dir.join("r_rekeyed");
    Pgwal::new(["--config", &cfg, "--encryption-key-file"])
        .arg(&key3)
        .args(["restore", "--target-name", "enc_point", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    let auto = fs::read_to_string(home.join(DATA_SUBDIR).join("postgresql.auto.conf"))?;
    ensure!(
        auto.contains(&*key3.to_string_lossy()) && !auto.contains(&key3_text),
        "restore_command names the key file"
    );
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    wait_until(WAIT, "recovery to pause at enc_point", || {
        Ok(copy.sql("SELECT pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'")? == "t")
    })
    .with_context(|| copy.log_tail(30))?;
    ensure!(copy.sql(FINGERPRINT)? == t.expected, "the rekeyed repository restores the exact rows");
    copy.stop()?;
    // list, verify and expire work on the rekeyed repository.
    let with3 = |args: &[&str]| Pgwal::new(["--config", &cfg, "--encryption-key-file"]).arg(&key3).args(args).run();
    let listed = with3(&["list"])?.ensure_success()?;
    ensure!(listed.stdout.contains(&backup_id), "list shows the backup: {listed}");
    with3(&["verify"])?.ensure_success()?;
    with3(&["expire", "--retain-full", "1"])?.ensure_success()?;
    Ok(())
}

/// Every process's command line (what `ps` shows), as one string per process.
fn command_lines() -> Vec<String> {
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    procs
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .collect()
}

/// `pgwal standby` from an encrypted S3 repository, the key given only as
/// `--encryption-key-file` (no config file): the standby is seeded from the
/// backup, replays segments archived after it through its restore_command
/// (which names the key FILE, never the key) and then streams; the key is
/// in no process's command line, nor in postgresql.auto.conf or the logs.
#[test]
fn standby_seeds_and_follows_from_an_encrypted_repository() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal-enc")?;
    let (config, key_file, key) = setup_keyed_config(&dir, &s3.config_toml("s3://pgwal-enc/standby"))?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t (batch int, filler text)")?;
    let insert = |pg: &PgCluster, batch: u32| {
        pg.sql(&format!("INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, 1000) g"))
    };
    let count = |pg: &PgCluster| pg.sql("SELECT count(*) || ' ' || count(DISTINCT batch) FROM t");
    insert(&pg, 1)?;
    backup(&pg, &config)?;
    // Archived after the backup: the standby must fetch and open these.
    insert(&pg, 2)?;
    let after_backup = pg.switch_wal()?;
    pg.wait_archived(&after_backup, WAIT)?;

    // The S3 settings without the key: the key file comes on the command line only.
    let s3_only = dir.join("s3_only.toml");
    write_private_file(&s3_only, &s3.config_toml("s3://pgwal-enc/standby"))?;
    let home = dir.join("standby");
    let out = Pgwal::new(["--config", &s3_only.to_string_lossy(), "--encryption-key-file"])
        .arg(&key_file)
        .args(["standby", "--primary-conninfo", &pg.conninfo(), "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    ensure!(!out.stderr.contains(&key) && !out.stdout.contains(&key), "standby shows the key: {out}");
    let auto = fs::read_to_string(home.join(DATA_SUBDIR).join("postgresql.auto.conf"))?;
    let restore_line = auto.lines().find(|l| l.starts_with("restore_command")).context("restore_command")?;
    ensure!(restore_line.contains(&*key_file.to_string_lossy()), "restore_command names the key file: {restore_line}");
    ensure!(!auto.contains(&key), "postgresql.auto.conf holds the key");

    let mut standby = PgCluster::existing(&home)?;
    standby.set_conf(&["archive_mode = off"])?;
    standby.start()?;
    wait_until(WAIT, "the standby to replay the archived segments", || Ok(count(&standby)? == "2000 2"))
        .with_context(|| standby.log_tail(30))?;
    let log = standby.log_contents();
    ensure!(log.contains(&format!("restored log file \"{after_backup}\"")), "fetched from the archive:\n{log}");
    wait_until(WAIT, "the standby to stream", || {
        Ok(pg.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")? == "1")
    })
    .with_context(|| standby.log_tail(30))?;
    insert(&pg, 3)?;
    wait_until(WAIT, "the standby to serve the newest rows", || Ok(count(&standby)? == "3000 3"))?;
    ensure!(standby.sql("SELECT pg_is_in_recovery()")? == "t", "still a standby");
    // `ps`: pgwal's processes (fetch, the prefetcher) name the key file at most.
    let lines = command_lines();
    ensure!(lines.iter().any(|l| l.contains("postgres")), "the process table is readable");
    ensure!(!lines.iter().any(|l| l.contains(&key)), "a command line shows the key");
    ensure!(!standby.log_contents().contains(&key) && !pg.log_contents().contains(&key), "a log shows the key");
    standby.stop()?;
    Ok(())
}
