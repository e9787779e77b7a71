//! Checks the integration-test harness itself (tests/it/common): real
//! PostgreSQL clusters start, answer SQL, crash and recover, copy themselves
//! with pg_basebackup and recover from an archive; the S3 server stops and
//! starts again on its port; pgwal runs as the run-as user. The archive here
//! is plain `cp`, so these tests hold whatever state pgwal itself is in.

use crate::common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

#[test]
fn cluster_starts_answers_sql_survives_a_crash_and_stops() -> Result<()> {
    let dir = TestDir::new()?;
    let mut pg = PgCluster::init(&dir.join("primary"), &["shared_buffers = 16MB"])?;
    pg.start()?;
    assert_eq!(pg.sql("SELECT 1")?, "1");
    assert_eq!(pg.sql("SHOW data_checksums")?, "on");
    assert_eq!(pg.sql("SHOW archive_mode")?, "on");
    assert_eq!(pg.sql("SHOW shared_buffers")?, "16MB", "extra_conf must win");
    assert_eq!(pg.sql("SHOW port")?, pg.port().to_string());
    assert_eq!(pg.sql("SELECT 1; SELECT 2")?, "1\n2", "every statement's rows come back");
    assert!(pg.sql("SELECT no_such_column").is_err());
    assert!(pg.system_identifier()?.parse::<u64>().is_ok());

    // The server runs as the run-as user, never as root.
    let pid_file = fs::read_to_string(pg.data_dir().join("postmaster.pid"))?;
    let pid = pid_file.lines().next().context("empty postmaster.pid")?;
    assert_eq!(fs::metadata(format!("/proc/{pid}"))?.uid(), run_as().uid);

    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 10) AS n")?;
    let segment = pg.switch_wal()?;
    assert_eq!(segment.len(), 24, "a WAL segment name: {segment}");

    pg.kill9()?;
    assert!(!pg.is_running());
    pg.start()?;
    assert_eq!(pg.sql("SELECT count(*) FROM t")?, "10");
    assert!(pg.log_contents().contains("database system was interrupted"), "crash recovery ran");

    pg.stop()?;
    assert!(!pg.is_running());
    pg.stop()?; // stopping a stopped server is a no-op
    Ok(())
}

#[test]
fn basebackup_copy_recovers_from_a_cp_archive() -> Result<()> {
    let dir = TestDir::new()?;
    let archive = dir.subdir("archive")?;
    // It also records the server's environment, to check set_server_env.
    let archive_cmd = format!(
        "printenv PGWAL_SELFTEST_MARK > {0}/mark && test ! -f {0}/%f && cp %p {0}/%f",
        shell_quote(&archive.to_string_lossy())
    );
    let mut primary =
        PgCluster::init(&dir.join("primary"), &[&format!("archive_command = {}", conf_quote(&archive_cmd))])?;
    primary.set_server_env([("PGWAL_SELFTEST_MARK", "from-the-harness")]);
    primary.start()?;
    primary.sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS n")?;

    let mut copy = primary.basebackup_to(&dir.join("copy"))?;
    assert_ne!(copy.port(), primary.port());
    assert!(copy.data_dir().join("backup_label").is_file());

    primary.sql("INSERT INTO t SELECT generate_series(101, 200)")?;
    let segment = primary.switch_wal()?;
    primary.wait_archived(&segment, Duration::from_secs(60))?;
    assert!(archive.join(&segment).is_file());
    assert_eq!(fs::read_to_string(archive.join("mark"))?, "from-the-harness\n");

    let restore_cmd = format!("cp {}/%f %p", shell_quote(&archive.to_string_lossy()));
    copy.set_conf(&[format!("restore_command = {}", conf_quote(&restore_cmd)), "archive_mode = off".to_string()])?;
    copy.touch_in_data_dir("recovery.signal")?;
    // Someone else took the copy's port meanwhile: start() moves to another.
    let squatter = TcpListener::bind(("127.0.0.1", copy.port()))?;
    let taken = copy.port();
    copy.start()?;
    assert_ne!(copy.port(), taken);
    drop(squatter);
    copy.wait_recovery_finished(Duration::from_secs(60))?;
    assert_eq!(copy.sql("SELECT count(*) FROM t")?, "200");
    assert_eq!(copy.system_identifier()?, primary.system_identifier()?);
    Ok(())
}

#[test]
fn s3_server_stops_and_starts_again_on_the_same_port() -> Result<()> {
    let mut s3 = S3Server::start()?;
    let port = s3.port();
    assert!(port_is_open(port));
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{port}"));
    let bucket = s3.create_bucket("wal")?;
    assert!(bucket.is_dir());
    put_with_curl(&s3, "wal/probe/hello.txt", "hello")?;

    s3.stop()?;
    assert!(!s3.is_running());
    assert!(!port_is_open(port), "port {port} still open after stop");

    // A port taken by someone else while stopped is an error, not a server
    // that looks up but is not ours.
    let squatter = TcpListener::bind(("127.0.0.1", port))?;
    let err = s3.start_again().expect_err("started on a taken port");
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
    drop(squatter);

    s3.start_again()?;
    assert_eq!(s3.port(), port);
    assert!(port_is_open(port));
    put_with_curl(&s3, "wal/probe/again.txt", "again")?;

    let config = s3.config_toml("s3://wal/cluster-a");
    assert!(config.starts_with("repo = \"s3://wal/cluster-a\"\n"));
    assert!(config.contains(&format!("endpoint = \"{}\"", s3.endpoint())));
    assert!(config.contains(s3.secret_key()));
    let env = s3.env();
    assert!(env.iter().any(|(k, v)| k == "AWS_ENDPOINT_URL" && *v == s3.endpoint()));
    Ok(())
}

/// Stores an object with a SigV4-signed PUT (curl's own signer) and checks
/// that it lands in the bucket directory: proves the credentials and the
/// "bucket = subdirectory" layout. Skipped where curl is missing.
fn put_with_curl(s3: &S3Server, key: &str, body: &str) -> Result<()> {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not found: skipping the signed PUT check");
        return Ok(());
    }
    // s3s insists on x-amz-content-sha256, which curl 7.88 does not send by itself.
    let put = |secret: &str, key: &str, body: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--fail", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{}:{secret}", s3.access_key()))
            .args(["--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--request", "PUT", "--data-binary"])
            .arg(body)
            .arg(format!("{}/{key}", s3.endpoint()));
        run(&mut cmd, None, Duration::from_secs(30))
    };
    put(s3.secret_key(), key, body)?.ensure_success()?;
    let stored = fs::read_to_string(s3.root().join(key)).with_context(|| format!("object {key} not in the root"))?;
    ensure!(stored == body, "object {key} holds {stored:?}, not {body:?}");

    // A wrong secret must be refused: the server really checks signatures.
    let refused = put("wrong-secret", &format!("{key}.bad"), "x")?;
    ensure!(!refused.success() && refused.stderr.contains("403"), "a bad signature was not refused: {refused}");
    Ok(())
}

#[test]
fn pgwal_runs_as_the_run_as_user_from_owned_dirs() -> Result<()> {
    let dir = TestDir::new()?;
    let meta = fs::metadata(dir.path())?;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (run_as().uid, 0o700));

    let config = dir.join("pgwal.toml");
    write_private_file(&config, "repo = \"file:///nowhere\"\n")?;
    let meta = fs::metadata(&config)?;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (run_as().uid, 0o600));

    // Whatever pgwal answers to --help today, it must have run (exit code,
    // not a signal or an exec failure) as the run-as user.
    let out = Pgwal::new(["--help"]).current_dir(dir.path()).run()?;
    assert!(out.code().is_some(), "{out}");
    let mut test_x = command_as_user("/bin/sh");
    test_x.args(["-c", "test -x \"$1\"", "sh"]).arg(pgwal_bin());
    assert!(run(&mut test_x, None, COMMAND_TIMEOUT)?.success(), "{} not executable", pgwal_bin().display());

    let setting = archive_command_setting(&config);
    assert!(setting.starts_with("archive_command = '"), "{setting}");
    assert!(setting.ends_with(" archive %p'"), "{setting}");
    Ok(())
}

#[test]
fn quoting_and_waiting_helpers() {
    assert_eq!(shell_quote("/tmp/a-b/%f"), "/tmp/a-b/%f");
    assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
    assert_eq!(conf_quote("cp 'a' b"), "'cp ''a'' b'");
    assert_eq!(toml_quote("a\"b\\c"), r#""a\"b\\c""#);

    let err = wait_until(Duration::from_millis(50), "never", || Ok(false)).unwrap_err();
    assert!(err.to_string().contains("waiting for never"), "{err}");
    let mut calls = 0;
    wait_until(Duration::from_secs(5), "third call", || {
        calls += 1;
        Ok(calls == 3)
    })
    .expect("the condition holds on the third call");
    assert!(wait_until(Duration::from_secs(5), "failing", || anyhow::bail!("boom")).is_err());
}
