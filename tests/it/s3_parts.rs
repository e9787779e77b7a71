//! Backups and restores on S3 whose packs are read in ranged parts
//! (`repo::parts`), on real PostgreSQL 15 and s3s-fs, through the test
//! proxy: every part of every pack is asked for once (the ranged reads
//! really happen), each transient fault on a part or a pack upload is
//! retried and the restored cluster holds exactly the primary's rows, and a
//! pack that changes between two of its parts is refused with nothing
//! startable left behind.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::proxy::{Fault, HttpProxy, Request};
use common::*;
use pgwal::repo::parts::PART_SIZE;

const WAIT: Duration = Duration::from_secs(120);

struct Setup {
    dir: TestDir,
    s3: S3Server,
    proxy: HttpProxy,
    config: PathBuf,
}

impl Setup {
    fn new() -> Result<Setup> {
        let s3 = S3Server::start()?;
        s3.create_bucket("pgwal")?;
        let proxy = HttpProxy::start(s3.port())?;
        let dir = TestDir::new()?;
        let config = dir.join("pgwal.toml");
        write_private_file(
            &config,
            &format!(
                "repo = \"s3://pgwal/main\"\n\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
                 secret_access_key = {}\nallow_http = true\n",
                toml_quote(&proxy.endpoint()),
                toml_quote(s3.access_key()),
                toml_quote(s3.secret_key()),
            ),
        )?;
        Ok(Setup { dir, s3, proxy, config })
    }

    /// A primary archiving through the proxy, with table `blob`: about 48 MB
    /// of random bytes, so that its packs stay large once compressed.
    fn primary(&self) -> Result<PgCluster> {
        let mut pg = PgCluster::init(
            &self.dir.join("primary"),
            &[&archive_command_setting(&self.config), "archive_timeout = 0", "max_wal_size = 256MB"],
        )?;
        pg.start()?;
        let random: Vec<String> = (0..8).map(|i| format!("md5(g::text || '{i}')")).collect();
        pg.sql(&format!(
            "CREATE TABLE blob AS SELECT g AS n, decode({}, 'hex') AS b FROM generate_series(1, 300000) g",
            random.join(" || ")
        ))?;
        Ok(pg)
    }

    fn backup(&self, pg: &PgCluster) -> Result<String> {
        let out = Pgwal::new(["--config", &self.config.to_string_lossy(), "backup", "--checkpoint", "fast"])
            .args(["--conninfo", &pg.conninfo(), "--pgdata"])
            .arg(pg.data_dir())
            .run()?
            .ensure_success()?;
        Ok(out.stdout.trim().to_string())
    }

    fn restore(&self, home: &Path) -> Result<RunOutput> {
        Pgwal::new(["--config", &self.config.to_string_lossy(), "restore", "--target-dir"])
            .arg(home.join(DATA_SUBDIR))
            .args(["--target-immediate", "--target-action", "promote"])
            .run()
    }

    /// The stored size of each pack of backup `id`, by its number.
    fn pack_sizes(&self, id: &str) -> Result<BTreeMap<String, u64>> {
        let dir = self.s3.root().join(format!("pgwal/main/backup/{id}/pack"));
        let mut sizes = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            sizes.insert(entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len());
        }
        Ok(sizes)
    }
}

/// What a table holds, as one comparable line.
fn fingerprint(pg: &PgCluster) -> Result<String> {
    pg.sql("SELECT count(*) || ' ' || md5(string_agg(md5(b), '' ORDER BY n)) FROM blob")
}

/// The GET requests for pack `name` of backup `id`.
fn pack_gets<'a>(requests: &'a [Request], id: &str, name: &str) -> Vec<&'a Request> {
    let key = format!("/backup/{id}/pack/{name}");
    requests
        .iter()
        .filter(|r| r.method == "GET" && r.target.split('?').next().is_some_and(|t| t.ends_with(&key)))
        .collect()
}

/// Starts the restored copy without archiving, waits for its promotion.
fn start_restored(home: &Path) -> Result<PgCluster> {
    let mut pg = PgCluster::existing(home)?;
    pg.set_conf(&["archive_mode = off"])?;
    if let Err(e) = pg.start() {
        bail!("{e:#}\n{}", pg.log_tail(30));
    }
    wait_until(WAIT, "the restored copy to be promoted", || Ok(pg.sql("SELECT NOT pg_is_in_recovery()")? == "t"))
        .with_context(|| pg.log_tail(30))?;
    Ok(pg)
}

/// A backup whose pack and manifest uploads meet a 503 and resets, then a restore whose ranged part reads
/// meet a 503, a reset, a body cut short and a stall that ends in a closed
/// connection: both succeed, every pack of more than one part is read as
/// exactly its parts (plus one read again per fault), and the restored
/// copy holds the primary's rows byte for byte.
#[test]
fn part_reads_and_pack_uploads_survive_transient_faults_and_restore_exactly() -> Result<()> {
    let s = Setup::new()?;
    let pg = s.primary()?;
    let expected = fingerprint(&pg)?;

    s.proxy.inject("PUT", "/pack/000000", Fault::SlowDown, 1);
    s.proxy.inject("PUT", "/pack/000001", Fault::Reset, 1);
    s.proxy.inject("PUT", "/manifest", Fault::Reset, 1);
    let id = s.backup(&pg)?;
    let faults = s.proxy.faults_done();
    ensure!(faults.len() == 3, "every upload fault was met: {faults:?}");
    let sizes = s.pack_sizes(&id)?;
    let large: Vec<(&String, &u64)> = sizes.iter().filter(|(_, &size)| size > 2 * PART_SIZE).collect();
    ensure!(!large.is_empty(), "a pack of more than two parts: {sizes:?}");
    let (big, _) = large[0];
    s.proxy.take_requests();

    let part = |i: u64| i * PART_SIZE;
    s.proxy.inject_range("GET", &format!("/pack/{big}"), part(1), Fault::SlowDown, 1);
    s.proxy.inject_range("GET", &format!("/pack/{big}"), part(2), Fault::Reset, 1);
    s.proxy.inject_range("GET", &format!("/pack/{big}"), part(0), Fault::Truncate, 1);
    s.proxy.inject_range("GET", &format!("/pack/{big}"), part(1), Fault::Stall(Duration::from_secs(2)), 1);
    let home = s.dir.join("restored");
    let out = s.restore(&home)?;
    ensure!(out.success(), "{out}");
    let faulted = s.proxy.faults_done().len() - faults.len();
    ensure!(faulted == 4, "every part fault was met: {:?}", s.proxy.faults_done());

    let requests = s.proxy.take_requests();
    for (name, size) in &sizes {
        let gets = pack_gets(&requests, &id, name);
        let mut starts: Vec<u64> =
            gets.iter().map(|r| r.range_start().context("a ranged read")).collect::<Result<_>>()?;
        let retried = if name == big { 4 } else { 0 };
        ensure!(gets.len() as u64 == size.div_ceil(PART_SIZE) + retried, "pack {name} of {size} bytes: {gets:?}");
        starts.sort_unstable();
        starts.dedup();
        let expected_starts: Vec<u64> = (0..size.div_ceil(PART_SIZE)).map(part).collect();
        ensure!(starts == expected_starts, "pack {name}: parts at {starts:?}");
    }

    let copy = start_restored(&home)?;
    let restored = fingerprint(&copy)?;
    ensure!(restored == expected, "the restored copy has '{restored}', the primary '{expected}'");
    Ok(())
}

/// A pack replaced by other bytes of the same size between the reads of its
/// first and second part (an overwrite straight into the S3 server, which
/// gives it a new ETag): the restore is refused naming the pack, and the
/// target directory cannot be started (no `global/pg_control`, the restore
/// marker still there).
#[test]
fn a_pack_that_changes_between_two_part_reads_is_refused() -> Result<()> {
    let s = Setup::new()?;
    let pg = s.primary()?;
    let id = s.backup(&pg)?;
    let sizes = s.pack_sizes(&id)?;
    let (big, size) = sizes.iter().find(|(_, &size)| size > PART_SIZE).context("a pack of several parts")?;
    let key = format!("main/backup/{id}/pack/{big}");
    let (endpoint, access, secret) = (s.s3.endpoint(), s.s3.access_key().to_string(), s.s3.secret_key().to_string());
    let other = vec![0x5au8; *size as usize];
    s.proxy.on_request("GET", &format!("/pack/{big}"), Some(PART_SIZE), move || {
        if let Err(e) = overwrite(&endpoint, &access, &secret, &key, other) {
            eprintln!("overwriting the pack failed: {e:#}");
        }
    });

    let home = s.dir.join("refused");
    let out = s.restore(&home)?;
    ensure!(!out.success(), "the restore must fail: {out}");
    ensure!(out.stderr.contains("changed while it was read in parts"), "{out}");
    ensure!(out.stderr.contains(&format!("pack/{big}")), "the pack is named: {out}");
    let data = home.join(DATA_SUBDIR);
    ensure!(!data.join("global/pg_control").exists(), "no pg_control: the directory cannot be started");
    ensure!(data.join(".pgwal-restore-incomplete").exists(), "the restore marker stays");
    Ok(())
}

/// Replaces an object straight in the S3 server (not through the proxy).
fn overwrite(endpoint: &str, access: &str, secret: &str, key: &str, bytes: Vec<u8>) -> Result<()> {
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name("pgwal")
        .with_region("us-east-1")
        .with_access_key_id(access)
        .with_secret_access_key(secret)
        .with_allow_http(true)
        .build()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(store.put(&object_store::path::Path::from(key), bytes.into()))?;
    Ok(())
}

/// A part read that stalls past the request timeout (a server that took
/// the request and went silent) is abandoned and read again, and the
/// restore completes, every file checked against its SHA-256. Run in this
/// process with a short retry deadline (6 s: 3 s per request), so that the
/// stall need not outlast the command's minute-long timeout.
#[test]
fn a_part_read_that_stalls_past_the_request_timeout_is_read_again() -> Result<()> {
    use pgwal::config::restore::RestoreOptions;
    use pgwal::pg::recovery::{RecoveryTarget, TargetTimeline};
    use pgwal::storage::{Access, RepoUrl, RetryPolicy, S3Options, StoreOptions};

    let s = Setup::new()?;
    let pg = s.primary()?;
    let id = s.backup(&pg)?;
    let sizes = s.pack_sizes(&id)?;
    let (big, _) = sizes.iter().find(|(_, &size)| size > PART_SIZE).context("a pack of several parts")?;

    let deadline = Duration::from_secs(6);
    let url = RepoUrl::S3 { bucket: "pgwal".into(), prefix: "main".into() };
    let store_opts = StoreOptions {
        s3: S3Options {
            endpoint: Some(s.proxy.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(s.s3.access_key().to_string()),
            secret_access_key: Some(s.s3.secret_key().to_string()),
            session_token: None,
            allow_http: Some(true),
        },
        ..Default::default()
    };
    let store = pgwal::storage::open(&url, &store_opts, Access::MustExist, deadline)?;
    let repo = pgwal::repo::Repository::new(store, url.clone(), RetryPolicy::with_deadline(deadline));
    let target = s.dir.join("restored").join(DATA_SUBDIR);
    let opts = RestoreOptions {
        target_dir: target.clone(),
        backup: None,
        target: Some(RecoveryTarget::Immediate),
        action: None,
        timeline: TargetTimeline::Current,
        tablespace_map: Vec::new(),
        delta: false,
        jobs: 2,
        standby: None,
        repo: url,
        config_file: Some(s.config.clone()),
        encryption_key_file: None,
        retry_deadline: deadline,
    };
    s.proxy.take_requests();
    s.proxy.inject_range("GET", &format!("/pack/{big}"), PART_SIZE, Fault::Stall(Duration::from_secs(5)), 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcome = pgwal::ops::restore::restore(&rt, &repo, &opts)?;
    ensure!(outcome.written.packs == sizes.len(), "{outcome:?}");
    ensure!(s.proxy.faults_done().iter().any(|(_, f)| matches!(f, Fault::Stall(_))), "the stall was met");
    let requests = s.proxy.take_requests();
    let again = pack_gets(&requests, &id, big).iter().filter(|r| r.range_start() == Some(PART_SIZE)).count();
    ensure!(again == 2, "the stalled part is read twice: {requests:?}");
    ensure!(target.join("global/pg_control").is_file(), "the restore completed");
    Ok(())
}
