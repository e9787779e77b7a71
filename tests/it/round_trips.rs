//! Requests on the per-call paths of `archive` and `fetch`, counted by an
//! HTTP proxy in front of the S3 test server (so that a regression shows up
//! as a number, not as a timing), and transient faults injected by the same
//! proxy (503 SlowDown, connection resets, bodies cut short), which archive,
//! fetch, backup and restore retry without losing or corrupting anything.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::proxy::{Fault, HttpProxy, Request};
use common::*;
use pgwal::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};

const SYSID: u64 = 7_300_000_000_000_000_001;

/// An S3 server, a proxy in front of it, and a config file that points pgwal
/// at the proxy.
struct Setup {
    dir: TestDir,
    _s3: S3Server,
    proxy: HttpProxy,
    config: PathBuf,
}

fn setup(extra_toml: &str) -> Result<Setup> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal-rt")?;
    let proxy = HttpProxy::start(s3.port())?;
    let config = dir.join("pgwal.toml");
    let text = format!(
        "repo = \"s3://pgwal-rt/r\"\n{extra_toml}\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\n\
         secret_access_key = {}\nallow_http = true\n",
        toml_quote(&proxy.endpoint()),
        toml_quote(s3.access_key()),
        toml_quote(s3.secret_key()),
    );
    write_private_file(&config, &text)?;
    Ok(Setup { dir, _s3: s3, proxy, config })
}

fn seg_name(seg: u64) -> WalFileName {
    WalFileName::segment(TimelineId(1), SegmentNo(seg), WalSegmentSize::DEFAULT)
}

fn segment_bytes(seg: u64) -> Vec<u8> {
    pgwal::repo::synthetic::segment_content(&seg_name(seg), SYSID, WalSegmentSize::DEFAULT)
}

/// A directory that looks like a data directory to pgwal: PG_VERSION,
/// `pg_wal/archive_status`, and the segments `segs` with `.ready` files.
fn data_dir(dir: &TestDir, segs: &[u64]) -> Result<PathBuf> {
    let data = dir.join("data");
    create_user_dir(&data)?;
    create_user_dir(&data.join("pg_wal"))?;
    create_user_dir(&data.join("pg_wal/archive_status"))?;
    write_user_file(&data.join("PG_VERSION"), b"15\n", 0o600)?;
    for &seg in segs {
        let name = seg_name(seg).to_string();
        write_user_file(&data.join("pg_wal").join(&name), &segment_bytes(seg), 0o600)?;
        write_user_file(&data.join(format!("pg_wal/archive_status/{name}.ready")), b"", 0o600)?;
    }
    Ok(data)
}

fn archive_in(s: &Setup, data: &Path, seg: u64) -> Result<RunOutput> {
    Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &format!("pg_wal/{}", seg_name(seg))])
        .current_dir(data)
        .run()
}

fn fetch_in(s: &Setup, cwd: &Path, seg: u64, dest: &Path) -> Result<RunOutput> {
    Pgwal::new(["--config", &s.config.to_string_lossy(), "fetch", &seg_name(seg).to_string(), &dest.to_string_lossy()])
        .current_dir(cwd)
        .run()
}

fn describe(requests: &[Request]) -> String {
    requests.iter().map(Request::to_string).collect::<Vec<_>>().join(", ")
}

#[test]
fn archive_answered_from_a_marker_makes_at_most_one_request() -> Result<()> {
    // The one-process path's markers (the helper has its own test).
    let s = setup("[archive]\nhelper = false\n")?;
    let data = data_dir(&s.dir, &[1, 2, 3, 4, 5])?;
    // The first call creates the repository and stores its own segment only.
    archive_in(&s, &data, 1)?.ensure_success()?;
    s.proxy.take_requests();
    archive_in(&s, &data, 2)?.ensure_success()?;
    let batch = s.proxy.take_requests();
    let puts = batch.iter().filter(|r| r.method == "PUT" && r.target.contains("/wal/")).count();
    ensure!(puts == 4, "the call stores its segment and the 3 ready after it: {}", describe(&batch));

    for seg in 3..=5 {
        archive_in(&s, &data, seg)?.ensure_success()?;
        let requests = s.proxy.take_requests();
        ensure!(
            requests.len() <= 1,
            "segment {seg} was stored ahead: at most one request, got {}",
            describe(&requests)
        );
        ensure!(!requests.iter().any(|r| r.method == "PUT"), "nothing stored twice: {}", describe(&requests));
    }

    // A segment with nothing ready after it: the plain path.
    let name = seg_name(6).to_string();
    write_user_file(&data.join("pg_wal").join(&name), &segment_bytes(6), 0o600)?;
    archive_in(&s, &data, 6)?.ensure_success()?;
    let plain = s.proxy.take_requests();
    eprintln!("a plain archive call: {}", describe(&plain));
    ensure!(plain.len() <= 3, "a plain archive call: {}", describe(&plain));
    Ok(())
}

/// PIDs of the prefetchers serving `data`.
fn prefetchers_of(data: &Path) -> Vec<i32> {
    let data = data.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "prefetch-wal") && args.contains(&data) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn fetch_answered_from_the_spool_makes_no_request() -> Result<()> {
    let s = setup("[fetch]\nprefetch = 4\n")?;
    // Store segments 1..=5 from outside any data directory.
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    for seg in 1..=5 {
        let path = staging.join(seg_name(seg).to_string());
        write_user_file(&path, &segment_bytes(seg), 0o600)?;
        Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &path.to_string_lossy()])
            .run()?
            .ensure_success()?;
    }
    // A data directory in archive recovery, "served" by this test process
    // (postmaster.pid names it, so the prefetcher sees a live server).
    let data = data_dir(&s.dir, &[])?;
    write_user_file(&data.join("recovery.signal"), b"", 0o600)?;
    write_user_file(&data.join("postmaster.pid"), format!("{}\n", std::process::id()).as_bytes(), 0o600)?;
    // The spool is trusted only for the cluster whose pg_control this is.
    create_user_dir(&data.join("global"))?;
    let mut control = SYSID.to_le_bytes().to_vec();
    control.resize(8192, 0);
    write_user_file(&data.join("global/pg_control"), &control, 0o600)?;
    let dest = data.join("pg_wal/RECOVERYXLOG");
    fetch_in(&s, &data, 1, &dest)?.ensure_success()?;
    let spool = data.join("pg_wal/pgwal/fetch");
    wait_until(Duration::from_secs(60), "the prefetcher to spool segments 2..=5", || {
        Ok((2..=5).all(|seg| spool.join(seg_name(seg).to_string()).exists()))
    })?;
    // Stop the prefetcher (started by our fetch) and hold its lock, so that no
    // background request can be counted against the next fetch.
    for pid in prefetchers_of(&data) {
        // SAFETY: plain kill(2) of a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_until(Duration::from_secs(10), "the prefetcher to exit", || Ok(prefetchers_of(&data).is_empty()))?;
    let lock = std::fs::OpenOptions::new().write(true).open(data.join("pg_wal/pgwal/prefetch.lock"))?;
    // A dying process loses its command line before its open files.
    wait_until(Duration::from_secs(10), "the prefetch lock", || Ok(lock.try_lock().is_ok()))?;
    s.proxy.take_requests();

    for seg in 2..=5 {
        let _ = std::fs::remove_file(&dest);
        fetch_in(&s, &data, seg, &dest)?.ensure_success()?;
        ensure!(std::fs::read(&dest)? == segment_bytes(seg), "segment {seg} is byte-exact");
        let requests = s.proxy.take_requests();
        ensure!(requests.is_empty(), "segment {seg} came from the spool: no request, got {}", describe(&requests));
    }
    Ok(())
}

/// Stores segments `segs` from outside any data directory.
fn store_segments(s: &Setup, segs: std::ops::RangeInclusive<u64>) -> Result<()> {
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    for seg in segs {
        let path = staging.join(seg_name(seg).to_string());
        write_user_file(&path, &segment_bytes(seg), 0o600)?;
        Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &path.to_string_lossy()])
            .run()?
            .ensure_success()?;
    }
    Ok(())
}

/// The data directory of a stopped cluster (the one the segments belong to):
/// PG_VERSION, global/pg_control, pg_wal; no signal file, no postmaster.pid.
fn stopped_cluster(s: &Setup) -> Result<PathBuf> {
    let data = data_dir(&s.dir, &[])?;
    create_user_dir(&data.join("global"))?;
    let mut control = SYSID.to_le_bytes().to_vec();
    control.resize(8192, 0);
    write_user_file(&data.join("global/pg_control"), &control, 0o600)?;
    Ok(data)
}

/// pg_rewind --restore-target-wal (or a harness replaying like PostgreSQL)
/// runs restore_command into pg_wal/RECOVERYXLOG of a stopped cluster, with
/// no signal file and no server: the first fetch starts a prefetcher, the
/// next one is served from its spool without a request for that segment,
/// and after its idle exit no process and no spool are left.
#[test]
fn a_fetch_into_recoveryxlog_of_a_stopped_cluster_prefetches_then_leaves_nothing() -> Result<()> {
    let s = setup("[fetch]\nprefetch = 4\n")?;
    store_segments(&s, 1..=5)?;
    let data = stopped_cluster(&s)?;
    let dest = data.join("pg_wal/RECOVERYXLOG");
    fetch_in(&s, &data, 1, &dest)?.ensure_success()?;
    ensure!(std::fs::read(&dest)? == segment_bytes(1), "segment 1 is byte-exact");
    let spool = data.join("pg_wal/pgwal/fetch");
    wait_until(Duration::from_secs(60), "the prefetcher to spool segments 2..=5", || {
        Ok((2..=5).all(|seg| spool.join(seg_name(seg).to_string()).exists()))
    })?;
    s.proxy.take_requests();

    // As PostgreSQL passes it: relative to the data directory.
    std::fs::remove_file(&dest)?;
    fetch_in(&s, &data, 2, Path::new("pg_wal/RECOVERYXLOG"))?.ensure_success()?;
    ensure!(std::fs::read(&dest)? == segment_bytes(2), "segment 2 is byte-exact");
    let two = seg_name(2).to_string();
    let requests = s.proxy.take_requests();
    ensure!(
        !requests.iter().any(|r| r.target.contains(&two)),
        "segment 2 came from the spool: no request for it, got {}",
        describe(&requests)
    );
    ensure!(!spool.join(&two).exists(), "served files leave the spool");

    wait_until(Duration::from_secs(90), "the idle prefetcher to exit and remove its spool", || {
        Ok(prefetchers_of(&data).is_empty() && !spool.exists())
    })
    .with_context(|| format!("still running: {:?}", prefetchers_of(&data)))?;
    Ok(())
}

/// A fetch by hand from a stopped cluster's data directory to anywhere but
/// pg_wal/RECOVERYXLOG is a plain fetch: nothing is started or left there.
#[test]
fn a_fetch_elsewhere_from_a_stopped_cluster_starts_nothing() -> Result<()> {
    let s = setup("[fetch]\nprefetch = 4\n")?;
    store_segments(&s, 1..=3)?;
    let data = stopped_cluster(&s)?;
    let out_dir = s.dir.join("by_hand");
    create_user_dir(&out_dir)?;
    let elsewhere = out_dir.join("RECOVERYXLOG");
    fetch_in(&s, &data, 1, &elsewhere)?.ensure_success()?;
    ensure!(std::fs::read(&elsewhere)? == segment_bytes(1), "segment 1 is byte-exact");
    let in_pg_wal = data.join("pg_wal").join(seg_name(2).to_string());
    fetch_in(&s, &data, 2, &in_pg_wal)?.ensure_success()?;
    ensure!(std::fs::read(&in_pg_wal)? == segment_bytes(2), "segment 2 is byte-exact");
    // fetch has exited: a prefetcher it started would exist by now.
    ensure!(prefetchers_of(&data).is_empty(), "no prefetcher: {:?}", prefetchers_of(&data));
    ensure!(!data.join("pg_wal/pgwal").exists(), "nothing written into pg_wal/pgwal");
    Ok(())
}

#[test]
fn transient_faults_on_archive_and_fetch_are_retried_and_lose_nothing() -> Result<()> {
    let s = setup("")?;
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    let out_dir = s.dir.join("out");
    create_user_dir(&out_dir)?;
    let cases = [
        (1, "PUT", Fault::SlowDown),
        (2, "PUT", Fault::Reset),
        (3, "GET", Fault::SlowDown),
        (4, "GET", Fault::Reset),
        (5, "GET", Fault::Truncate),
    ];
    for (seg, method, fault) in cases {
        let name = seg_name(seg).to_string();
        let path = staging.join(&name);
        write_user_file(&path, &segment_bytes(seg), 0o600)?;
        if method == "PUT" {
            s.proxy.inject("PUT", &name, fault, 1);
        }
        let out = Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &path.to_string_lossy()]).run()?;
        ensure!(out.success(), "archive through a {fault:?} on {method}: {out}");
        if method == "GET" {
            s.proxy.inject("GET", &name, fault, 1);
        }
        let dest = out_dir.join(&name);
        let out = fetch_in(&s, &out_dir, seg, &dest)?;
        ensure!(out.success(), "fetch through a {fault:?} on {method}: {out}");
        ensure!(std::fs::read(&dest)? == segment_bytes(seg), "segment {seg} is byte-exact after a {fault:?}");
    }
    let done = s.proxy.faults_done();
    ensure!(done.len() == cases.len(), "every fault was injected: {done:?}");
    Ok(())
}

const FINGERPRINT: &str =
    "SELECT count(*) || ' ' || sum(abalance) || ' ' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts";

#[test]
fn transient_faults_during_backup_and_restore_are_retried_and_lose_nothing() -> Result<()> {
    let s = setup("")?;
    let config = s.config.to_string_lossy().into_owned();
    let mut pg =
        PgCluster::init(&s.dir.join("primary"), &[&archive_command_setting(&s.config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.pgbench_init(2)?;
    pg.pgbench(&["-t", "100"])?;

    // Backup: two throttled pack uploads, then one reset connection.
    s.proxy.take_requests();
    s.proxy.inject("PUT", "/backup/", Fault::SlowDown, 2);
    s.proxy.inject("PUT", "/backup/", Fault::Reset, 1);
    let out = Pgwal::new(["--config", &config, "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?;
    let id = out.stdout.trim().to_string();
    let puts = s.proxy.faults_done().iter().filter(|(r, _)| r.method == "PUT").count();
    ensure!(puts == 3, "three uploads were faulted: {:?}", s.proxy.faults_done());

    pg.pgbench(&["-t", "200"])?;
    let expected = pg.sql(FINGERPRINT)?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, Duration::from_secs(120))?;
    pg.stop()?;

    // Restore: a pack body cut short, a reset, and a throttled WAL fetch during recovery.
    s.proxy.inject("GET", "/backup/", Fault::Truncate, 1);
    s.proxy.inject("GET", "/backup/", Fault::Reset, 1);
    s.proxy.inject("GET", "/wal/", Fault::SlowDown, 1);
    let home = s.dir.join("restored");
    let out = Pgwal::new(["--config", &config, "restore", "--target-dir"])
        .arg(home.join(DATA_SUBDIR))
        .run()?
        .ensure_success()?;
    ensure!(out.stdout.trim() == id, "restored the backup: {out}");
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    copy.start()?;
    copy.wait_recovery_finished(Duration::from_secs(120))?;
    ensure!(copy.sql(FINGERPRINT)? == expected, "the restored copy has every row\n{}", copy.log_tail(20));
    let gets = s.proxy.faults_done().iter().filter(|(r, _)| r.method == "GET").count();
    ensure!(gets == 3, "three downloads were faulted: {:?}", s.proxy.faults_done());
    copy.stop()?;
    Ok(())
}

#[test]
fn a_request_that_stalls_is_abandoned_and_retried_within_the_deadline() -> Result<()> {
    // Each request may take half the deadline: one that stalls for longer than
    // the whole deadline is abandoned in time to be sent again.
    let s = setup("[archive]\nretry_deadline = \"8s\"\n[fetch]\nretry_deadline = \"8s\"\n")?;
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    let name = seg_name(1).to_string();
    let path = staging.join(&name);
    write_user_file(&path, &segment_bytes(1), 0o600)?;
    s.proxy.inject("PUT", &name, Fault::Stall(Duration::from_secs(12)), 1);
    let out = Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &path.to_string_lossy()]).run()?;
    ensure!(out.success(), "archive past a stalled PUT: {out}");
    s.proxy.inject("GET", &name, Fault::Stall(Duration::from_secs(12)), 1);
    let dest = staging.join("fetched");
    let out = fetch_in(&s, &staging, 1, &dest)?;
    ensure!(out.success(), "fetch past a stalled GET: {out}");
    ensure!(std::fs::read(&dest)? == segment_bytes(1), "byte-exact");
    ensure!(s.proxy.faults_done().len() == 2, "both requests stalled: {:?}", s.proxy.faults_done());
    Ok(())
}

#[test]
fn a_remembered_identity_saves_the_cluster_read_and_a_recreated_repository_is_detected() -> Result<()> {
    let s = setup("[archive]\nahead = 0\nhelper = false\n")?;
    let data = data_dir(&s.dir, &[1, 2, 3, 4])?;
    // The first call creates the repository; the second reads its identity
    // and remembers it.
    archive_in(&s, &data, 1)?.ensure_success()?;
    archive_in(&s, &data, 2)?.ensure_success()?;
    let remembered = data.join("pg_wal/pgwal/identity");
    ensure!(std::fs::read_dir(&remembered)?.count() == 1, "one repository remembered in {remembered:?}");
    s.proxy.take_requests();
    archive_in(&s, &data, 3)?.ensure_success()?;
    let second = s.proxy.take_requests();
    ensure!(
        !second.iter().any(|r| r.target.ends_with("/r/cluster")),
        "the cluster object is not read again: {}",
        describe(&second)
    );
    ensure!(second.len() == 2, "the format object and the PUT: {}", describe(&second));

    // The repository is wiped and created again at the same URL by another
    // cluster: the remembered identity must not let segment 4 in.
    let repo_dir = s._s3.root().join("pgwal-rt/r");
    std::fs::remove_dir_all(&repo_dir)?;
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    let other = staging.join(seg_name(7).to_string());
    let other_sysid = SYSID + 1;
    write_user_file(
        &other,
        &pgwal::repo::synthetic::segment_content(&seg_name(7), other_sysid, WalSegmentSize::DEFAULT),
        0o600,
    )?;
    Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &other.to_string_lossy()])
        .run()?
        .ensure_success()?;
    let out = archive_in(&s, &data, 4)?;
    ensure!(!out.success(), "a segment of cluster {SYSID} refused by the repository of {other_sysid}: {out}");
    ensure!(out.stderr.contains(&other_sysid.to_string()), "the error names the repository's cluster: {out}");
    let stored = repo_dir.join(format!("wal/0000000100000000/{}", seg_name(4)));
    ensure!(!stored.exists(), "nothing stored for segment 4 at {stored:?}");
    Ok(())
}
