//! Archiving ahead of PostgreSQL on real PostgreSQL 15: under pgbench load
//! into the S3 test server (stopped and restarted mid-run), with pgwal killed
//! mid-batch, and with markers that no longer describe their file.
//! Invariants checked on data: every segment PostgreSQL marked `.done` is in
//! the repository, and every stored object is byte for byte the segment
//! PostgreSQL wrote (fetched back and compared).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

fn segment_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    Ok(names)
}

fn status_names(pgdata: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(pgdata.join("pg_wal/archive_status"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(suffix).map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Fetches `name` from the repository (outside any data directory, so no
/// spool is involved) and returns its bytes; `None` if not archived.
fn fetch_bytes(config: &Path, dir: &TestDir, name: &str, envs: &[(String, String)]) -> Result<Option<Vec<u8>>> {
    let out_dir = dir.join("fetched");
    create_user_dir(&out_dir)?;
    let dest = out_dir.join(name);
    let out = Pgwal::new(["--config", &config.to_string_lossy(), "fetch", name, &dest.to_string_lossy()])
        .envs(envs.iter().cloned())
        .current_dir(&out_dir)
        .run()?;
    match out.code() {
        Some(0) => {
            let bytes = std::fs::read(&dest)?;
            std::fs::remove_file(&dest)?;
            Ok(Some(bytes))
        }
        Some(1) if out.stderr.is_empty() => Ok(None),
        _ => anyhow::bail!("fetch {name}: {out}"),
    }
}

/// Every segment still in pg_wal that PostgreSQL marked `.done` is in the
/// repository with exactly the bytes of the file.
fn check_done_segments_stored(pg: &PgCluster, config: &Path, dir: &TestDir) -> Result<usize> {
    let done = status_names(pg.data_dir(), ".done")?;
    let mut checked = 0;
    for name in done.iter().filter(|n| n.len() == 24) {
        let path = pg.data_dir().join("pg_wal").join(name);
        let Ok(local) = std::fs::read(&path) else { continue };
        let stored = fetch_bytes(config, dir, name, &[])?.with_context(|| format!("{name} is .done but not stored"))?;
        ensure!(stored == local, "{name}: stored content differs from the file PostgreSQL wrote");
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn parallel_push_under_load_into_s3_survives_an_outage() -> Result<()> {
    let dir = TestDir::new()?;
    let mut s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    let toml = s3.config_toml("s3://pgwal/ahead");
    // Short deadlines so that an outage fails calls quickly and visibly.
    let toml = format!("{toml}\n[archive]\nparallel = 4\nahead = 8\nretry_deadline = \"1s\"\n");
    write_private_file(&config, &toml)?;
    let mut primary = PgCluster::init(
        &dir.join("primary"),
        &[&archive_command_setting(&config), "max_wal_size = 256MB", "wal_keep_size = 2GB", "checkpoint_timeout = 30s"],
    )?;
    primary.start()?;
    primary.pgbench_init(5)?;
    primary.pgbench(&["-c", "4", "-j", "2", "-t", "1500", "--no-vacuum"])?;

    // The repository goes away under load: archiving must fail visibly.
    s3.stop()?;
    primary.pgbench(&["-c", "2", "-j", "2", "-t", "1500", "--no-vacuum"])?;
    for _ in 0..3 {
        primary.switch_wal()?;
    }
    wait_until(Duration::from_secs(120), "the archiver to report failures", || {
        Ok(primary.sql("SELECT failed_count > 0 FROM pg_stat_archiver")? == "t")
    })?;
    ensure!(!status_names(primary.data_dir(), ".ready")?.is_empty(), "a backlog builds up while S3 is down");
    s3.start_again()?;
    // Nothing acknowledged during the outage is missing.
    let checked = check_done_segments_stored(&primary, &config, &dir)?;
    ensure!(checked >= 3, "expected several archived segments, checked {checked}");

    primary.pgbench(&["-c", "4", "-j", "2", "-t", "1000", "--no-vacuum"])?;
    for _ in 0..6 {
        primary.switch_wal()?;
    }
    let last = primary.switch_wal()?;
    primary.wait_archived(&last, Duration::from_secs(300))?;
    let checked = check_done_segments_stored(&primary, &config, &dir)?;
    let segments = segment_names(&primary.data_dir().join("pg_wal"))?;
    let done: Vec<String> = status_names(primary.data_dir(), ".done")?;
    // Every complete segment up to the last switch is archived and identical.
    for name in segments.iter().filter(|n| n.as_str() <= last.as_str()) {
        ensure!(done.contains(name), "{name} was never archived");
    }
    ensure!(checked >= 10, "expected many archived segments, checked {checked}");
    // Markers are used once: none is left for a segment PostgreSQL has archived.
    let marker_dir = primary.data_dir().join("pg_wal/pgwal/archive");
    for entry in walk(&marker_dir)? {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_end_matches(".ok").to_string();
        ensure!(!done.contains(&name) || name > last, "marker left for archived {name}");
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    for e in entries {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn finished_marker(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "ok")
}

/// A stopped cluster with a backlog of `n` finished, unarchived segments.
fn cluster_with_backlog(dir: &TestDir, n: usize) -> Result<PgCluster> {
    let mut pg = PgCluster::init(&dir.join("pg"), &["archive_command = 'false'", "wal_keep_size = 2GB"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t (n int, filler text)")?;
    for i in 0..n {
        pg.sql(&format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g", 1000 + i))?;
        pg.switch_wal()?;
    }
    pg.stop()?;
    Ok(pg)
}

#[test]
fn killed_mid_batch_and_spoofed_markers() -> Result<()> {
    let dir = TestDir::new()?;
    let pg = cluster_with_backlog(&dir, 24)?;
    let data = pg.data_dir().to_path_buf();
    let repo_dir = dir.join("repo");
    let config = dir.join("pgwal.toml");
    let repo_url = format!("file://{}", repo_dir.display());
    write_private_file(
        &config,
        &format!("repo = \"{repo_url}\"\n[archive]\nparallel = 2\nahead = 32\nhelper = false\n"),
    )?;
    let cfg = config.to_string_lossy().to_string();
    let ready = status_names(&data, ".ready")?;
    let segments: Vec<&String> = ready.iter().filter(|n| n.len() == 24).collect();
    ensure!(segments.len() >= 20, "backlog: {ready:?}");
    let archive = |name: &str| Pgwal::new(["--config", &cfg, "archive", &format!("pg_wal/{name}")]).current_dir(&data);

    // The first call creates the repository; the second pushes ahead. Kill
    // it as soon as its first marker appears.
    archive(segments[0]).run()?.ensure_success()?;
    // list shows the backlog from the data directory's .ready files.
    let listed = Pgwal::new(["--config", &cfg, "list", "--json"]).current_dir(&data).run()?.ensure_success()?;
    let json: serde_json::Value = serde_json::from_str(&listed.stdout)?;
    ensure!(json["archive_backlog"]["ready_files"] == ready.len(), "{}", listed.stdout);
    ensure!(json["archive_backlog"]["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{}", listed.stdout);
    let mut child = archive(segments[1]).command().spawn()?;
    let markers = data.join("pg_wal/pgwal/archive");
    // Only a finished `.ok` counts: a killed process may leave a temp file.
    let finished =
        |dir: &Path| -> Result<Vec<PathBuf>> { Ok(walk(dir)?.into_iter().filter(|p| finished_marker(p)).collect()) };
    let found = wait_until(Duration::from_secs(60), "a first marker", || Ok(!finished(&markers)?.is_empty()));
    let _ = child.kill();
    let _ = child.wait();
    found?;
    // Every marker left behind vouches for an object that is really stored.
    let left = finished(&markers)?;
    for m in &left {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_end_matches(".ok");
        let stored =
            fetch_bytes(&config, &dir, name, &[])?.with_context(|| format!("marker without object: {name}"))?;
        ensure!(stored == std::fs::read(data.join("pg_wal").join(name))?, "{name} differs");
    }

    // PostgreSQL calls again for everything, in order: each call succeeds,
    // and every segment is stored exactly.
    for name in &segments[1..] {
        archive(name).run()?.ensure_success()?;
    }
    // Nothing half-written by the killed process is left behind.
    let leftovers: Vec<PathBuf> = walk(&markers)?.into_iter().filter(|p| !finished_marker(p)).collect();
    ensure!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
    for name in &segments {
        let stored = fetch_bytes(&config, &dir, name, &[])?.with_context(|| format!("{name} not stored"))?;
        ensure!(stored == std::fs::read(data.join("pg_wal").join(name))?, "{name} differs");
    }

    // Spoofing: push ahead again into a fresh repository, then replace a
    // marked file with other content. The marker no longer matches the file,
    // so the call takes the normal path and refuses the different content.
    let fresh = dir.join("repo2");
    write_private_file(
        &config,
        &format!("repo = \"file://{}\"\n[archive]\nparallel = 2\nahead = 32\nhelper = false\n", fresh.display()),
    )?;
    archive(segments[0]).run()?.ensure_success()?;
    archive(segments[1]).run()?.ensure_success()?;
    let victim = segments[5];
    let marker = walk(&markers)?.into_iter().find(|p| p.ends_with(format!("{victim}.ok"))).context("victim marked")?;
    let victim_path = data.join("pg_wal").join(victim);
    let original = std::fs::read(&victim_path)?;
    let mut forged = original.clone();
    let mid = forged.len() / 2;
    forged[mid] ^= 0xFF;
    write_user_file(&dir.join("forged"), &forged, 0o600)?;
    std::fs::rename(dir.join("forged"), &victim_path)?;
    let out = archive(victim).run()?;
    ensure!(out.code() == Some(1), "a changed file must not be acknowledged from its marker: {out}");
    ensure!(out.stderr.contains("different"), "{out}");
    ensure!(!marker.exists(), "the untrusted marker is dropped");
    write_user_file(&victim_path, &original, 0o600)?;

    // A repository recreated at the same URL: markers for the old one are
    // not trusted; the segment is stored again.
    let next = segments[6];
    ensure!(walk(&markers)?.iter().any(|p| p.ends_with(format!("{next}.ok"))), "{next} marked");
    std::fs::remove_dir_all(&fresh)?;
    archive(segments[0]).run()?.ensure_success()?;
    archive(next).run()?.ensure_success()?;
    let stored = fetch_bytes(&config, &dir, next, &[])?.context("stored again in the new repository")?;
    ensure!(stored == std::fs::read(data.join("pg_wal").join(next))?, "{next} differs");
    Ok(())
}
