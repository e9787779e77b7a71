//! Every failure path of `archive` and `fetch`, each with an assertion on the
//! data: the same segment twice, the same name with different bytes, a file
//! from another cluster, truncated/garbage/misnamed files, a corrupt stored
//! object (exit status with and without standby.signal, DEST never created),
//! an S3 server that stops mid-run, and `archive` killed with SIGKILL.
//! Refusals (permission denied, bad credentials, a missing bucket, an
//! endpoint nobody listens on) fail at once with one error line; only
//! transient trouble (dropped connections) is retried, quietly for the
//! commands PostgreSQL runs.
//! The segments come from real PostgreSQL 15 clusters.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::*;

/// Real segments: a cluster archives with `cp` into `<home>/wal` while we
/// switch WAL `n` times; returns the cluster (stopped) and the segment paths.
fn real_segments(home: &Path, n: usize) -> Result<(String, Vec<PathBuf>)> {
    let wal = home.join("wal");
    create_user_dir(&wal)?;
    let cmd = format!("cp %p {}/%f", shell_quote(&wal.to_string_lossy()));
    let mut pg = PgCluster::init(&home.join("pg"), &[&format!("archive_command = {}", conf_quote(&cmd))])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n, md5(g::text) AS filler FROM generate_series(1, 20000) g")?;
    let mut last = String::new();
    for _ in 0..n {
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")?;
        last = pg.switch_wal()?;
    }
    pg.wait_archived(&last, Duration::from_secs(60))?;
    let sysid = pg.system_identifier()?;
    pg.stop()?;
    let mut segments: Vec<PathBuf> =
        fs::read_dir(&wal)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    segments.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 24));
    segments.sort();
    ensure!(segments.len() >= n, "expected at least {n} segments, got {segments:?}");
    Ok((sysid, segments))
}

/// A copy of `src` in a fresh pg_wal-like dir under `dir`, named `name`.
fn staged(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf> {
    let wal = dir.join("staged");
    create_user_dir(&wal)?;
    let path = wal.join(name);
    write_user_file(&path, content, 0o600)?;
    Ok(path)
}

fn file_name(p: &Path) -> String {
    p.file_name().expect("a file name").to_string_lossy().into_owned()
}

/// Every regular file below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).expect("below base").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn archive(repo: &str, path: &Path) -> Result<RunOutput> {
    Pgwal::new(["archive".as_ref(), path.as_os_str()]).env("PGWAL_REPO", repo).run()
}

fn fetch_in(repo: &str, cwd: &Path, name: &str, dest: &Path) -> Result<RunOutput> {
    Pgwal::new(["fetch".as_ref(), name.as_ref(), dest.as_os_str()]).env("PGWAL_REPO", repo).current_dir(cwd).run()
}

/// How many `pgwal: error:` lines a run printed.
fn error_lines(out: &RunOutput) -> usize {
    out.stderr.lines().filter(|l| l.starts_with("pgwal: error:")).count()
}

/// How many `pgwal: warning:` lines a run printed.
fn warning_lines(out: &RunOutput) -> usize {
    out.stderr.lines().filter(|l| l.starts_with("pgwal: warning:")).count()
}

/// A TCP server on 127.0.0.1 that reads each request and closes the
/// connection without answering: a server dropping connections, the
/// transient trouble worth retrying. Stops when dropped.
struct DroppingServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DroppingServer {
    fn start() -> Result<DroppingServer> {
        use std::io::Read;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut conn) = conn {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf);
                }
            }
        });
        Ok(DroppingServer { port, stop, thread: Some(thread) })
    }
}

impl Drop for DroppingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// S3 settings for `endpoint` with these keys.
fn s3_env(endpoint: &str, access_key: &str, secret_key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret_key),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn stored_key(repo_dir: &Path, name: &str) -> PathBuf {
    repo_dir.join("wal").join(&name[..16]).join(name)
}

#[test]
fn same_segment_twice_is_fine_different_bytes_are_refused() -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 1)?;
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let seg = &segs[0];
    let name = file_name(seg);

    let first = archive(&repo, seg)?;
    ensure!(first.code() == Some(0), "first archive: {first}");
    let stored = fs::read(stored_key(&repo_dir, &name))?;

    let again = archive(&repo, seg)?;
    ensure!(again.code() == Some(0), "identical re-archive must succeed: {again}");
    ensure!(again.stderr.contains("identical"), "it says so: {again}");

    // Same name, valid header, different bytes.
    let mut changed = fs::read(seg)?;
    changed[100_000] ^= 0xFF;
    let impostor = staged(dir.path(), &name, &changed)?;
    let refused = archive(&repo, &impostor)?;
    ensure!(refused.code() == Some(1), "different content must be refused: {refused}");
    ensure!(refused.stderr.starts_with("pgwal: error:") && refused.stderr.contains("different"), "{refused}");
    ensure!(fs::read(stored_key(&repo_dir, &name))? == stored, "the stored object must be unchanged");

    let dest_dir = dir.subdir("dest")?;
    let dest = dest_dir.join("RECOVERYXLOG");
    fetch_in(&repo, &dest_dir, &name, &dest)?.ensure_success()?;
    ensure!(fs::read(&dest)? == fs::read(seg)?, "fetch returns the original bytes");
    Ok(())
}

#[test]
fn files_from_another_cluster_are_refused() -> Result<()> {
    let dir = TestDir::new()?;
    let (sysid_a, a) = real_segments(&dir.join("a"), 2)?;
    let (sysid_b, b) = real_segments(&dir.join("b"), 3)?;
    ensure!(sysid_a != sysid_b, "two initdb runs give two system identifiers");
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    archive(&repo, &a[0])?.ensure_success()?;

    // B's segment whose name A has not archived yet.
    let foreign = b.iter().find(|s| !a.iter().any(|x| file_name(x) == file_name(s))).context("a name only B has")?;
    let out = archive(&repo, foreign)?;
    ensure!(out.code() == Some(1), "foreign segment must be refused: {out}");
    ensure!(out.stderr.contains(&sysid_b) && out.stderr.contains(&sysid_a), "names both clusters: {out}");
    ensure!(!stored_key(&repo_dir, &file_name(foreign)).exists(), "nothing stored for the foreign segment");
    let cluster = fs::read(repo_dir.join("cluster"))?;
    ensure!(String::from_utf8_lossy(&cluster).contains(&sysid_a), "identity still A's");
    Ok(())
}

#[test]
fn bad_files_are_refused_and_nothing_is_stored() -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 2)?;
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    archive(&repo, &segs[0])?.ensure_success()?;
    let before = files_below(&repo_dir);

    let good = fs::read(&segs[1])?;
    let name = file_name(&segs[1]);
    let mut wrong_size = good.clone();
    wrong_size.extend_from_slice(&[0u8; 8192]);
    // The next segment's name on this content: its page address cannot match.
    let next_name = format!("{}{:08X}", &name[..16], u32::from_str_radix(&name[16..], 16)? + 1);
    let garbage: Vec<u8> = (0..good.len()).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("truncated", name.clone(), good[..1 << 20].to_vec()),
        ("empty", name.clone(), Vec::new()),
        ("garbage", name.clone(), garbage),
        ("too long", name.clone(), wrong_size),
        ("misnamed", next_name, good.clone()),
        ("not a WAL name", "RECOVERYXLOG".into(), good.clone()),
        ("bad history", "00000002.history".into(), b"this is not a timeline history\n".to_vec()),
    ];
    for (what, file, content) in cases {
        let case_dir = dir.subdir(what.replace(' ', "_"))?;
        let path = staged(&case_dir, &file, &content)?;
        let out = archive(&repo, &path)?;
        ensure!(out.code() == Some(1), "{what}: must be refused with exit 1: {out}");
        ensure!(out.stderr.lines().next().is_some_and(|l| l.starts_with("pgwal: error:")), "{what}: {out}");
        ensure!(!out.stderr.contains("panicked"), "{what}: {out}");
    }
    let missing = archive(&repo, &dir.join("nope/000000010000000000000009"))?;
    ensure!(missing.code() == Some(1) && missing.stderr.contains("cannot read"), "{missing}");
    ensure!(files_below(&repo_dir) == before, "refused files left traces: {:?}", files_below(&repo_dir));
    Ok(())
}

#[test]
fn corrupt_or_unreachable_archives_never_look_like_end_of_wal() -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 1)?;
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let name = file_name(&segs[0]);
    archive(&repo, &segs[0])?.ensure_success()?;

    // A data directory as PostgreSQL's restore_command sees it (cwd).
    let recovering = dir.subdir("recovering")?;
    write_user_file(&recovering.join("PG_VERSION"), b"15\n", 0o600)?;
    create_user_dir(&recovering.join("pg_wal"))?;
    let dest = recovering.join("pg_wal/RECOVERYXLOG");

    // Not in the archive: exactly 1, and quiet.
    let absent = fetch_in(&repo, &recovering, "0000000100000000000000F0", &dest)?;
    ensure!(absent.code() == Some(1) && absent.stderr.is_empty(), "{absent}");
    let absent_history = fetch_in(&repo, &recovering, "00000005.history", &dest)?;
    ensure!(absent_history.code() == Some(1), "{absent_history}");

    // Flip one byte in the stored object.
    let key = stored_key(&repo_dir, &name);
    let mut object = fs::read(&key)?;
    let at = object.len() / 2;
    object[at] ^= 0x01;
    fs::write(&key, &object)?;
    let corrupt = fetch_in(&repo, &recovering, &name, &dest)?;
    ensure!(corrupt.code() == Some(200), "corrupt object during recovery must exit 200: {corrupt}");
    ensure!(corrupt.stderr.contains("corrupt"), "{corrupt}");
    ensure!(!dest.exists(), "DEST must never appear for a corrupt object");
    ensure!(fs::read_dir(recovering.join("pg_wal"))?.next().is_none(), "no temp file left behind");

    // Unreachable repository, bad config, bad name: all above 125 too.
    let gone = fetch_in(&format!("file://{}", dir.join("no-such-repo").display()), &recovering, &name, &dest)?;
    ensure!(gone.code() == Some(201), "missing repository: {gone}");
    ensure!(!dir.join("no-such-repo").exists(), "fetch must not create a repository");
    let bad_config = Pgwal::new(["fetch", &name, "pg_wal/RECOVERYXLOG"])
        .env("PGWAL_CONFIG", dir.join("missing.toml"))
        .current_dir(&recovering)
        .run()?;
    ensure!(bad_config.code() == Some(202), "bad config: {bad_config}");
    let bad_usage = Pgwal::new(["fetch", &name]).env("PGWAL_REPO", &repo).current_dir(&recovering).run()?;
    ensure!(bad_usage.code() == Some(202), "missing DEST: {bad_usage}");
    let traversal = fetch_in(&repo, &recovering, "../../etc/passwd", &dest)?;
    ensure!(traversal.code() == Some(202), "not a WAL name: {traversal}");

    // In standby mode PostgreSQL retries: 1 for all of these.
    write_user_file(&recovering.join("standby.signal"), b"", 0o600)?;
    let standby = fetch_in(&repo, &recovering, &name, &dest)?;
    ensure!(standby.code() == Some(1), "corrupt object in standby mode: {standby}");
    ensure!(!dest.exists(), "DEST must never appear for a corrupt object");
    let standby_gone = fetch_in(&format!("file://{}", dir.join("no-such-repo").display()), &recovering, &name, &dest)?;
    ensure!(standby_gone.code() == Some(1), "{standby_gone}");
    Ok(())
}

#[test]
fn s3_outage_fails_archive_then_it_succeeds_after_restart() -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 3)?;
    let mut s3 = S3Server::start()?;
    s3.create_bucket("wal")?;
    let config = dir.join("pgwal.toml");
    let text =
        s3.config_toml("s3://wal/outage") + "\n[archive]\nretry_deadline = \"2s\"\n[fetch]\nretry_deadline = \"2s\"\n";
    write_private_file(&config, &text)?;
    let run = |args: &[&std::ffi::OsStr]| Pgwal::new(args).arg("--config").arg(&config).current_dir(dir.path()).run();

    let first = run(&["archive".as_ref(), segs[0].as_os_str()])?.ensure_success()?;
    let created = first.stderr.matches("pgwal: notice: created a new repository at 's3://wal/outage'").count();
    ensure!(created == 1, "a new repository is announced once: {first}");
    s3.stop()?;
    let started = Instant::now();
    let down = run(&["archive".as_ref(), segs[1].as_os_str()])?;
    ensure!(down.code() == Some(1), "archive must fail while S3 is down: {down}");
    ensure!(started.elapsed() < Duration::from_secs(60), "gave up within the deadline, not hanging");
    // Nobody listens: a refused connection is a bad endpoint, not worth
    // retrying (PostgreSQL calls archive_command again anyway). One line in
    // PostgreSQL's log per call.
    ensure!(error_lines(&down) == 1 && !down.stderr.contains("warning"), "{down}");
    ensure!(down.stderr.contains("Connection refused") && !down.stderr.contains("gave up after"), "{down}");
    ensure!(down.stderr.contains("archive_command again"), "the hint says what PostgreSQL does: {down}");
    let dest = dir.join("fetched");
    let fetch_down = run(&["fetch".as_ref(), file_name(&segs[0]).as_ref(), dest.as_os_str()])?;
    ensure!(fetch_down.code() == Some(201), "unreachable S3 during recovery: {fetch_down}");

    s3.start_again()?;
    // As PostgreSQL would: call again until it succeeds (a server that has
    // just started, on a loaded machine, may still cut the first requests).
    for seg in &segs {
        let mut last = None;
        wait_until(Duration::from_secs(60), "archive to succeed after the restart", || {
            let out = run(&["archive".as_ref(), seg.as_os_str()])?;
            let ok = out.success();
            last = Some(out);
            Ok(ok)
        })
        .with_context(|| last.as_ref().map(|o| format!("last attempt: {o}")).unwrap_or_default())?;
    }
    for seg in &segs {
        let _ = fs::remove_file(&dest);
        run(&["fetch".as_ref(), file_name(seg).as_ref(), dest.as_os_str()])?.ensure_success()?;
        ensure!(fs::read(&dest)? == fs::read(seg)?, "{} fetched back identical", file_name(seg));
    }
    Ok(())
}

/// SIGKILL at spread-out moments during archive, then a re-run: no partial
/// object is ever visible under the segment's name, and fetch returns the
/// exact bytes.
fn killed_archive_leaves_no_partial_object(
    repo: &str,
    config: Option<&Path>,
    visible: impl Fn(&str) -> bool,
) -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 4)?;
    let with_config = |p: Pgwal| match config {
        Some(c) => p.arg("--config").arg(c),
        None => p,
    };
    for (i, seg) in segs.iter().enumerate() {
        let name = file_name(seg);
        // Kill after 0, 3, 6, ... ms: some before, during and after the upload.
        for attempt in 0..6u64 {
            let mut cmd =
                with_config(Pgwal::new(["archive".as_ref(), seg.as_os_str()]).env("PGWAL_REPO", repo)).command();
            let mut child = cmd.spawn().context("spawn pgwal archive")?;
            std::thread::sleep(Duration::from_millis(attempt * 3 + i as u64 * 2));
            let _ = child.kill();
            let _ = child.wait();
            if visible(&name) {
                // Whatever is visible must be complete and correct.
                let dest = dir.join(format!("check-{i}-{attempt}"));
                let out = with_config(
                    Pgwal::new(["fetch".as_ref(), name.as_ref(), dest.as_os_str()]).env("PGWAL_REPO", repo),
                )
                .run()?;
                ensure!(out.success(), "a visible object after SIGKILL must be complete: {out}");
                ensure!(fs::read(&dest)? == fs::read(seg)?, "{name}: visible object has the exact bytes");
            }
        }
        with_config(Pgwal::new(["archive".as_ref(), seg.as_os_str()]).env("PGWAL_REPO", repo))
            .run()?
            .ensure_success()?;
        let dest = dir.join(format!("final-{i}"));
        with_config(Pgwal::new(["fetch".as_ref(), name.as_ref(), dest.as_os_str()]).env("PGWAL_REPO", repo))
            .run()?
            .ensure_success()?;
        ensure!(fs::read(&dest)? == fs::read(seg)?, "{name}: fetched identical after re-run");
    }
    Ok(())
}

#[test]
fn sigkill_during_archive_to_local_disk() -> Result<()> {
    let dir = TestDir::new()?;
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    killed_archive_leaves_no_partial_object(&repo, None, |name| stored_key(&repo_dir, name).exists())?;
    let staging: Vec<String> = files_below(&repo_dir).into_iter().filter(|f| f.contains('#')).collect();
    ensure!(staging.is_empty(), "staging files of killed runs must be swept by the successful re-run: {staging:?}");
    Ok(())
}

#[test]
fn sigkill_during_archive_to_s3() -> Result<()> {
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    let bucket = s3.create_bucket("kill")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://kill/k"))?;
    killed_archive_leaves_no_partial_object("s3://kill/k", Some(&config), |name| {
        bucket.join("k/wal").join(&name[..16]).join(name).exists()
    })
}

/// Refusals are permanent: an endpoint nobody listens on, a wrong secret
/// key, a missing bucket, GCS without credentials. Each fails at once with
/// one error line and a hint about that cause, never a retry.
#[test]
fn refusals_fail_at_once_with_one_line() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("wal")?;
    let list = |url: &str, env: Vec<(String, String)>| Pgwal::new(["list", "--repo", url]).envs(env).run();

    let closed = free_port()?;
    let refused = list("s3://wal/x", s3_env(&format!("http://127.0.0.1:{closed}"), s3.access_key(), "k"))?;
    ensure!(refused.code() == Some(1), "{refused}");
    ensure!(refused.stderr.contains("Connection refused") && refused.stderr.contains("AWS_ENDPOINT_URL"), "{refused}");

    let wrong_secret = list("s3://wal/x", s3_env(&s3.endpoint(), s3.access_key(), "not-the-secret"))?;
    ensure!(wrong_secret.code() == Some(1), "{wrong_secret}");
    ensure!(wrong_secret.stderr.contains("check the credentials"), "{wrong_secret}");

    let no_bucket = list("s3://no-such-bucket/x", s3.env())?;
    ensure!(no_bucket.code() == Some(1), "{no_bucket}");
    ensure!(
        no_bucket.stderr.contains("create the bucket"),
        "a missing bucket is not a missing repository: {no_bucket}"
    );

    let no_credentials = list("gs://bucket/x", Vec::new())?;
    ensure!(no_credentials.code() == Some(1), "{no_credentials}");

    for out in [&refused, &wrong_secret, &no_bucket, &no_credentials] {
        ensure!(error_lines(out) == 1 && warning_lines(out) == 0, "one line, no retries: {out}");
        ensure!(!out.stderr.contains("gave up after") && !out.stderr.contains("PostgreSQL"), "{out}");
    }
    Ok(())
}

/// Dropped connections are transient: retried up to the deadline. For
/// `fetch` (PostgreSQL's log) the retries are debug notes and the failure is
/// one error line; a command run by hand warns a few times at most.
#[test]
fn dropped_connections_are_retried_quietly_for_postgres() -> Result<()> {
    let dir = TestDir::new()?;
    let server = DroppingServer::start()?;
    let env = s3_env(&format!("http://127.0.0.1:{}", server.port), "AKIDPGWAL", "secret");
    let config = dir.join("pgwal.toml");
    write_private_file(
        &config,
        "repo = \"s3://wal/dropped\"\n[fetch]\nretry_deadline = \"3s\"\n[archive]\nretry_deadline = \"3s\"\n",
    )?;
    let dest = dir.join("RECOVERYXLOG");
    let fetch =
        Pgwal::new(["--config".as_ref(), config.as_os_str(), "fetch".as_ref(), "000000010000000000000001".as_ref()])
            .arg(&dest)
            .envs(env.clone())
            .run()?;
    ensure!(fetch.code() == Some(201), "unreachable during recovery stops it: {fetch}");
    ensure!(fetch.stderr.contains("gave up after"), "retried until the deadline: {fetch}");
    ensure!(error_lines(&fetch) == 1 && warning_lines(&fetch) == 0, "one line in PostgreSQL's log: {fetch}");
    ensure!(fetch.stderr.lines().count() == 2, "the error and its hint, nothing else: {fetch}");
    ensure!(fetch.stderr.contains("recovery stops"), "{fetch}");

    let list = Pgwal::new(["--config".as_ref(), config.as_os_str(), "list".as_ref()]).envs(env).run()?;
    ensure!(list.code() == Some(1) && list.stderr.contains("gave up after"), "{list}");
    let warned = warning_lines(&list);
    ensure!((1..=3).contains(&warned), "a few warnings, not one per retry: {list}");
    ensure!(error_lines(&list) == 1 && !list.stderr.contains("PostgreSQL"), "{list}");
    Ok(())
}

/// A repository directory pgwal may not write into: `archive` fails at once
/// (it once retried "Permission denied" until its deadline), with one line.
#[test]
fn permission_denied_is_not_retried() -> Result<()> {
    let dir = TestDir::new()?;
    let (_, segs) = real_segments(&dir.join("a"), 2)?;
    let repo_dir = dir.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    archive(&repo, &segs[0])?.ensure_success()?;
    let log_dir = stored_key(&repo_dir, &file_name(&segs[1]));
    let log_dir = log_dir.parent().context("a log file directory")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(log_dir, fs::Permissions::from_mode(0o500))?;
    let denied = Pgwal::new(["archive".as_ref(), segs[1].as_os_str()]).env("PGWAL_REPO", &repo).run()?;
    fs::set_permissions(log_dir, fs::Permissions::from_mode(0o700))?;
    ensure!(denied.code() == Some(1), "{denied}");
    ensure!(denied.stderr.contains("Permission denied") && !denied.stderr.contains("gave up after"), "{denied}");
    ensure!(error_lines(&denied) == 1 && warning_lines(&denied) == 0, "{denied}");
    ensure!(denied.stderr.contains("run pgwal as its owner"), "the hint fits a local repository: {denied}");
    ensure!(!stored_key(&repo_dir, &file_name(&segs[1])).exists(), "nothing stored");
    archive(&repo, &segs[1])?.ensure_success()?;
    Ok(())
}
