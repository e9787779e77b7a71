//! The archiving helper (`archive.helper = true`) on real PostgreSQL 15 and
//! in data directories made by hand: every segment archived through it is
//! in the repository byte for byte and recovery gets exact rows (file:// and
//! S3); a helper killed with SIGKILL while it holds work, a stale socket, a
//! repository recreated at the same URL, all end in the one-process path
//! and lose nothing; a call answered for a segment stored ahead makes at
//! most one request; `archive.helper = false` starts nothing.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::proxy::{HttpProxy, Request};
use common::*;
use pgwal::pg::{SegmentNo, TimelineId, WalFileName, WalSegmentSize};

const SYSID: u64 = 7_400_000_000_000_000_001;

/// Rows and sums that any lost or reordered WAL would change.
const FINGERPRINT: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || \
    (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
    (SELECT count(*) FROM after_copy)";

/// PIDs of the archiving helpers serving `data`.
fn helpers_of(data: &Path) -> Vec<i32> {
    let data = data.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "archive-helper") && args.contains(&data) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a helper answers on `data`'s socket (connects; the helper
/// drops a connection that sends nothing).
fn helper_listening(data: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(data.join("pg_wal/pgwal/archive-helper.sock")).is_ok()
}

/// The calls the helper(s) of `data` answered "stored", from the lines they
/// logged when they stopped.
fn stored_by_helpers(data: &Path) -> usize {
    let log = std::fs::read_to_string(data.join("pg_wal/pgwal/archive-helper.log")).unwrap_or_default();
    log.lines().filter_map(|l| l.split("answered ").nth(1)?.split(" stored").next()?.trim().parse::<usize>().ok()).sum()
}

fn kill9(pids: &[i32]) {
    for &pid in pids {
        // SAFETY: plain kill(2) of a process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Every segment PostgreSQL marked `.done` that is still in pg_wal is in
/// the repository with exactly the bytes of the file (fetch checks the
/// SHA-256 on the way). Returns how many were checked.
fn check_done_segments_stored(data: &Path, config: &Path, dir: &TestDir) -> Result<usize> {
    let out_dir = dir.join("fetched");
    create_user_dir(&out_dir)?;
    let mut checked = 0;
    for entry in std::fs::read_dir(data.join("pg_wal/archive_status"))? {
        let file_name = entry?.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(".done").filter(|n| n.len() == 24) else { continue };
        let Ok(local) = std::fs::read(data.join("pg_wal").join(name)) else { continue };
        let dest = out_dir.join(name);
        Pgwal::new(["--config", &config.to_string_lossy(), "fetch", name, &dest.to_string_lossy()])
            .current_dir(&out_dir)
            .run()?
            .ensure_success()
            .with_context(|| format!("{name} is .done but cannot be fetched"))?;
        ensure!(std::fs::read(&dest)? == local, "{name}: stored content differs from the file PostgreSQL wrote");
        std::fs::remove_file(&dest)?;
        checked += 1;
    }
    Ok(checked)
}

/// A primary archiving through the helper under pgbench; `kill` SIGKILLs
/// every helper of the data directory twice while PostgreSQL is still
/// archiving. Every .done segment is stored exactly, and a copy made
/// before the traffic recovers from the repository to the primary's rows.
fn archive_through_the_helper_then_recover(dir: &TestDir, config: &Path, kill: bool) -> Result<()> {
    let mut primary = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(config), "archive_timeout = 0", "max_wal_size = 64MB", "wal_keep_size = 1GB"],
    )?;
    primary.start()?;
    primary.pgbench_init(3)?;
    let data = primary.data_dir().to_path_buf();
    let mut copy = primary.basebackup_to(&dir.join("copy"))?;
    wait_until(Duration::from_secs(60), "an archiving helper", || {
        primary.switch_wal()?;
        Ok(helper_listening(&data))
    })?;

    primary.sql("CREATE TABLE after_copy AS SELECT g AS n, md5(g::text) AS filler FROM generate_series(1, 50000) g")?;
    let mut killed = 0;
    for round in 0..4 {
        primary.pgbench(&["-c", "2", "-j", "2", "-t", "600", "--no-vacuum"])?;
        for _ in 0..3 {
            primary.switch_wal()?;
        }
        if kill && round < 2 {
            // A helper with work: wait until one runs again, then kill it.
            wait_until(Duration::from_secs(60), "a helper to kill", || Ok(!helpers_of(&data).is_empty()))?;
            let pids = helpers_of(&data);
            kill9(&pids);
            killed += pids.len();
        }
    }
    let expected = primary.sql(FINGERPRINT)?;
    let last = primary.switch_wal()?;
    primary.wait_archived(&last, Duration::from_secs(180))?;
    let stats = primary.sql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver")?;
    ensure!(stats.split(' ').nth(1) == Some("0"), "the archiver saw failures: {stats}\n{}", primary.log_tail(30));
    let checked = check_done_segments_stored(&data, config, dir)?;
    ensure!(checked >= 8, "expected many archived segments, checked {checked}");
    if kill {
        ensure!(killed >= 2, "helpers were killed: {killed}");
    }
    primary.stop()?;
    // The helper stops with its server and says how many calls it answered.
    wait_until(Duration::from_secs(30), "the helper to stop with its server", || Ok(helpers_of(&data).is_empty()))?;
    let answered = stored_by_helpers(&data);
    ensure!(answered >= 4, "calls answered by the helper: {answered}");

    copy.set_conf(&[restore_command_setting(config), "archive_mode = off".to_string()])?;
    copy.touch_in_data_dir("recovery.signal")?;
    copy.start()?;
    copy.wait_recovery_finished(Duration::from_secs(180))?;
    let recovered = copy.sql(FINGERPRINT)?;
    ensure!(recovered == expected, "recovered {recovered:?}, primary had {expected:?}");
    ensure!(copy.log_contents().contains(&format!("restored log file \"{last}\"")), "the last segment came back");
    Ok(())
}

#[test]
fn pgbench_through_the_helper_into_a_local_repository_recovers_exactly() -> Result<()> {
    let dir = TestDir::new()?;
    let config = dir.join("pgwal.toml");
    let repo = dir.join("repo");
    write_private_file(&config, &format!("repo = \"file://{}\"\n[archive]\nhelper = true\n", repo.display()))?;
    archive_through_the_helper_then_recover(&dir, &config, false)
}

#[test]
fn pgbench_through_the_helper_into_s3_recovers_exactly() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("{}\n[archive]\nhelper = true\n", s3.config_toml("s3://pgwal/h")))?;
    archive_through_the_helper_then_recover(&dir, &config, false)
}

#[test]
fn helpers_killed_while_they_hold_work_lose_nothing() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    // Latency on every request: the helper always has stores in flight.
    let proxy = HttpProxy::start(s3.port())?;
    proxy.set_latency(Duration::from_millis(20));
    let config = dir.join("pgwal.toml");
    let toml = s3.config_toml("s3://pgwal/k").replace(&s3.endpoint(), &proxy.endpoint());
    write_private_file(&config, &format!("{toml}\n[archive]\nhelper = true\n"))?;
    archive_through_the_helper_then_recover(&dir, &config, true)
}

/// An S3 server, a counting proxy in front of it, a config file for it.
struct Setup {
    dir: TestDir,
    s3: S3Server,
    proxy: HttpProxy,
    config: PathBuf,
}

fn setup(archive_toml: &str) -> Result<Setup> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal-h")?;
    let proxy = HttpProxy::start(s3.port())?;
    let config = dir.join("pgwal.toml");
    let text = format!(
        "repo = \"s3://pgwal-h/r\"\n[archive]\n{archive_toml}\n[s3]\nendpoint = {}\nregion = \"us-east-1\"\n\
         access_key_id = {}\nsecret_access_key = {}\nallow_http = true\n",
        toml_quote(&proxy.endpoint()),
        toml_quote(s3.access_key()),
        toml_quote(s3.secret_key()),
    );
    write_private_file(&config, &text)?;
    Ok(Setup { dir, s3, proxy, config })
}

fn seg_name(seg: u64) -> WalFileName {
    WalFileName::segment(TimelineId(1), SegmentNo(seg), WalSegmentSize::DEFAULT)
}

fn segment_bytes(seg: u64, sysid: u64) -> Vec<u8> {
    pgwal::repo::synthetic::segment_content(&seg_name(seg), sysid, WalSegmentSize::DEFAULT)
}

/// A directory that looks like a running server's data directory to pgwal:
/// PG_VERSION, a postmaster.pid naming this (live) test process,
/// `pg_wal/archive_status`, and segments `segs` with `.ready` files.
fn data_dir(dir: &TestDir, segs: &[u64]) -> Result<PathBuf> {
    let data = dir.join("data");
    create_user_dir(&data)?;
    create_user_dir(&data.join("pg_wal"))?;
    create_user_dir(&data.join("pg_wal/archive_status"))?;
    write_user_file(&data.join("PG_VERSION"), b"15\n", 0o600)?;
    write_user_file(&data.join("postmaster.pid"), format!("{}\n", std::process::id()).as_bytes(), 0o600)?;
    for &seg in segs {
        add_segment(&data, seg, true)?;
    }
    Ok(data)
}

fn add_segment(data: &Path, seg: u64, ready: bool) -> Result<()> {
    let name = seg_name(seg).to_string();
    write_user_file(&data.join("pg_wal").join(&name), &segment_bytes(seg, SYSID), 0o600)?;
    if ready {
        write_user_file(&data.join(format!("pg_wal/archive_status/{name}.ready")), b"", 0o600)?;
    }
    Ok(())
}

fn archive_in(s: &Setup, data: &Path, seg: u64) -> Result<RunOutput> {
    Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &format!("pg_wal/{}", seg_name(seg))])
        .current_dir(data)
        .run()
}

fn stored_object(s: &Setup, seg: u64) -> PathBuf {
    s.s3.root().join(format!("pgwal-h/r/wal/0000000100000000/{}", seg_name(seg)))
}

fn describe(requests: &[Request]) -> String {
    requests.iter().map(Request::to_string).collect::<Vec<_>>().join(", ")
}

/// Waits for a helper of `data` that listens (started by an earlier call).
fn wait_for_helper(data: &Path) -> Result<()> {
    wait_until(Duration::from_secs(30), "the archiving helper to listen", || Ok(helper_listening(data)))
}

#[test]
fn a_call_answered_for_a_segment_stored_ahead_makes_at_most_one_request() -> Result<()> {
    let s = setup("helper = true\nahead = 8\n")?;
    let data = data_dir(&s.dir, &[1])?;
    // The first call creates the repository and starts the helper.
    archive_in(&s, &data, 1)?.ensure_success()?;
    wait_for_helper(&data)?;
    for seg in 2..=5 {
        add_segment(&data, seg, true)?;
    }
    // Answered by the helper, which then pushes 3..=5 ahead.
    archive_in(&s, &data, 2)?.ensure_success()?;
    wait_until(Duration::from_secs(30), "3..=5 stored ahead", || {
        Ok((3..=5).all(|seg| stored_object(&s, seg).exists()))
    })?;
    s.proxy.take_requests();
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
    ensure!(helpers_of(&data).len() == 1, "one helper served them all: {:?}", helpers_of(&data));
    Ok(())
}

#[test]
fn a_stale_socket_falls_back_without_a_hang_and_a_new_helper_takes_over() -> Result<()> {
    let s = setup("helper = true\n")?;
    let data = data_dir(&s.dir, &[1, 2, 3])?;
    archive_in(&s, &data, 1)?.ensure_success()?;
    wait_for_helper(&data)?;
    kill9(&helpers_of(&data));
    // A dying process loses its command line before its open files.
    wait_until(Duration::from_secs(10), "the helper to die", || {
        Ok(helpers_of(&data).is_empty() && !helper_listening(&data))
    })?;
    let socket = data.join("pg_wal/pgwal/archive-helper.sock");
    ensure!(
        socket.exists() && !helper_listening(&data),
        "a socket file nobody listens on: exists {}, listening {}, helpers {:?}",
        socket.exists(),
        helper_listening(&data),
        helpers_of(&data)
    );
    // The run has its own timeout: a hang fails the test.
    let out = archive_in(&s, &data, 2)?.ensure_success()?;
    ensure!(!out.stderr.contains("error"), "{out}");
    ensure!(stored_object(&s, 2).exists(), "segment 2 stored by the call itself");
    // That call started a new helper, which answers the next one.
    wait_for_helper(&data)?;
    archive_in(&s, &data, 3)?.ensure_success()?;
    ensure!(stored_object(&s, 3).exists(), "segment 3 stored");
    Ok(())
}

#[test]
fn a_repository_recreated_while_the_helper_runs_is_detected() -> Result<()> {
    let s = setup("helper = true\n")?;
    let data = data_dir(&s.dir, &[1, 2])?;
    archive_in(&s, &data, 1)?.ensure_success()?;
    wait_for_helper(&data)?;
    archive_in(&s, &data, 2)?.ensure_success()?;
    let repo_dir = s.s3.root().join("pgwal-h/r");

    // Wiped: the segment is stored again, into the new repository.
    std::fs::remove_dir_all(&repo_dir)?;
    add_segment(&data, 3, true)?;
    archive_in(&s, &data, 3)?.ensure_success()?;
    ensure!(stored_object(&s, 3).exists(), "segment 3 stored into the new repository");
    ensure!(repo_dir.join("format").exists() || std::fs::read_dir(&repo_dir)?.count() > 1, "a new repository");
    // A helper for the new instance takes over.
    wait_until(Duration::from_secs(30), "a helper of the new instance", || {
        add_segment(&data, 4, true)?;
        archive_in(&s, &data, 4)?.ensure_success()?;
        Ok(helper_listening(&data) && helpers_of(&data).len() == 1)
    })?;

    // Wiped and created again by another cluster: segment 5 is refused.
    std::fs::remove_dir_all(&repo_dir)?;
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    let other_sysid = SYSID + 1;
    let other = staging.join(seg_name(9).to_string());
    write_user_file(&other, &segment_bytes(9, other_sysid), 0o600)?;
    Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &other.to_string_lossy()])
        .run()?
        .ensure_success()?;
    add_segment(&data, 5, true)?;
    let out = archive_in(&s, &data, 5)?;
    ensure!(!out.success(), "a segment of cluster {SYSID} refused by the repository of {other_sysid}: {out}");
    ensure!(out.stderr.contains(&other_sysid.to_string()), "the error names the repository's cluster: {out}");
    ensure!(!stored_object(&s, 5).exists(), "nothing stored for segment 5");
    Ok(())
}

#[test]
fn helper_off_starts_nothing() -> Result<()> {
    let s = setup("helper = false\n")?;
    let data = data_dir(&s.dir, &[1, 2, 3])?;
    for seg in 1..=3 {
        archive_in(&s, &data, seg)?.ensure_success()?;
    }
    let pgwal_dir = data.join("pg_wal/pgwal");
    for f in ["archive-helper.sock", "archive-helper.lock", "archive-helper.log"] {
        ensure!(!pgwal_dir.join(f).exists(), "{f} exists with the helper off");
    }
    ensure!(helpers_of(&data).is_empty(), "no helper process");
    // Outside a data directory nothing is started either, helper on or off.
    let s = setup("helper = true\n")?;
    let staging = s.dir.join("staging");
    create_user_dir(&staging)?;
    create_user_dir(&staging.join("archive_status"))?;
    let path = staging.join(seg_name(1).to_string());
    write_user_file(&path, &segment_bytes(1, SYSID), 0o600)?;
    Pgwal::new(["--config", &s.config.to_string_lossy(), "archive", &path.to_string_lossy()])
        .current_dir(&staging)
        .run()?
        .ensure_success()?;
    ensure!(!staging.join("pgwal/archive-helper.lock").exists(), "nothing started outside a data directory");
    Ok(())
}
