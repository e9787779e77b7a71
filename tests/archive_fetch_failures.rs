//! Every failure path of `archive` and `fetch`, each with an assertion on the
//! data: the same segment twice, the same name with different bytes, a file
//! from another cluster, truncated/garbage/misnamed files, a corrupt stored
//! object (exit status with and without standby.signal, DEST never created),
//! an S3 server that stops mid-run, and `archive` killed with SIGKILL.
//! The segments come from real PostgreSQL 15 clusters.

mod common;

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

    run(&["archive".as_ref(), segs[0].as_os_str()])?.ensure_success()?;
    s3.stop()?;
    let started = Instant::now();
    let down = run(&["archive".as_ref(), segs[1].as_os_str()])?;
    ensure!(down.code() == Some(1), "archive must fail while S3 is down: {down}");
    ensure!(started.elapsed() < Duration::from_secs(60), "gave up within the deadline, not hanging");
    ensure!(down.stderr.contains("gave up after"), "{down}");
    let dest = dir.join("fetched");
    let fetch_down = run(&["fetch".as_ref(), file_name(&segs[0]).as_ref(), dest.as_os_str()])?;
    ensure!(fetch_down.code() == Some(201), "unreachable S3 during recovery: {fetch_down}");

    s3.start_again()?;
    for seg in &segs {
        run(&["archive".as_ref(), seg.as_os_str()])?.ensure_success()?;
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
