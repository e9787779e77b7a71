//! Scale measurements, not tests: ignored by default, run on demand with a
//! release build, e.g.
//!
//! ```text
//! nice -n 19 cargo test --release --test it scale::file_repository -- --ignored --nocapture
//! PGWAL_SCALE_SEGMENTS=100000 nice -n 19 cargo test --release --test it scale::s3_repository -- --ignored --nocapture
//! ```
//!
//! Each builds a synthetic repository (tiny framed WAL objects, ten backups
//! spread over the archive), then times `list`, `verify --quick` and
//! `expire` on it and prints the numbers. Nothing is asserted about time.

use crate::common;
use crate::synthetic;

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use common::*;
use futures::{StreamExt, TryStreamExt};
use pgwal::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use pgwal::repo::{keys, synthetic as syn, Repository};
use synthetic::{file_config, give_to_run_as, open, rt, SYSID};

fn segments() -> u64 {
    std::env::var("PGWAL_SCALE_SEGMENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
}

const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;

/// Ten backups, one every tenth of the archive.
async fn backups(repo: &Repository, n: u64) -> Result<()> {
    let epoch = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")?.to_utc();
    for k in 0..10u64 {
        let start = Lsn((k * (n / 10) + 50) * SIZE.bytes() + 0x28);
        let stop = Lsn(start.0 + 0x10000);
        syn::put_backup(repo, SYSID, TimelineId(1), start, stop, epoch + chrono::Duration::days(k as i64)).await?;
    }
    Ok(())
}

/// Runs pgwal with `args` and prints how long it took.
fn timed(label: &str, config: &Path, args: &[&str], env: &[(String, String)]) -> Result<RunOutput> {
    let started = Instant::now();
    let out = Pgwal::new(["--config", &config.to_string_lossy()])
        .args(args)
        .envs(env.iter().cloned())
        .timeout(std::time::Duration::from_secs(3600))
        .run()?;
    eprintln!("scale: {label:<40} {:>8.2}s  exit {:?}", started.elapsed().as_secs_f64(), out.code());
    Ok(out)
}

fn measure(config: &Path, n: u64, env: &[(String, String)]) -> Result<()> {
    let out = timed("list", config, &["list"], env)?.ensure_success()?;
    ensure!(out.stdout.contains(&format!("({n} segments)")), "{out}");
    timed("list (again)", config, &["list"], env)?.ensure_success()?;
    timed("list --json", config, &["list", "--json"], env)?.ensure_success()?;
    let out = timed("verify --quick", config, &["verify", "--quick"], env)?.ensure_success()?;
    eprintln!("scale: {}", out.stdout.lines().last().unwrap_or_default());
    timed("expire --retain-full 9 --dry-run", config, &["expire", "--retain-full", "9", "--dry-run"], env)?
        .ensure_success()?;
    let out = timed("expire --retain-full 9 (deletes a tenth)", config, &["expire", "--retain-full", "9"], env)?
        .ensure_success()?;
    eprintln!("scale: {}", out.stdout.lines().take(2).collect::<Vec<_>>().join(" / "));
    timed("expire --retain-full 9 (nothing left to do)", config, &["expire", "--retain-full", "9"], env)?
        .ensure_success()?;
    timed("list after expire", config, &["list"], env)?.ensure_success()?;
    timed("verify --quick after expire", config, &["verify", "--quick"], env)?.ensure_success()?;
    Ok(())
}

#[test]
#[ignore = "a measurement: run with --ignored and a release build"]
fn file_repository() -> Result<()> {
    let n = segments();
    let dir = TestDir::with_prefix("pgwal-scale-")?;
    let (config, root) = file_config(&dir, "repo")?;
    let repo = open(&config)?;
    let started = Instant::now();
    rt().block_on(async {
        syn::init(&repo, SYSID, SIZE).await?;
        backups(&repo, n).await
    })?;
    syn::write_local_tiny_wal(&root, TimelineId(1), 1..n + 1, SIZE, 2)?;
    give_to_run_as(&root)?;
    eprintln!("scale: generated {n} WAL objects on file:// in {:.1}s", started.elapsed().as_secs_f64());
    measure(&config, n, &[])
}

#[test]
#[ignore = "a measurement: run with --ignored and a release build"]
fn s3_repository() -> Result<()> {
    let n = segments();
    let dir = TestDir::new()?;
    let s3 = S3Server::start()?;
    s3.create_bucket("pgwal")?;
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &s3.config_toml("s3://pgwal/main"))?;
    let repo = open(&config)?;
    let started = Instant::now();
    rt().block_on(async {
        syn::init(&repo, SYSID, SIZE).await?;
        backups(&repo, n).await?;
        futures::stream::iter(1..n + 1)
            .map(|s| {
                let repo = &repo;
                async move {
                    let name = WalFileName::segment(TimelineId(1), SegmentNo(s), SIZE);
                    syn::put(repo, &keys::wal(&name), b"synthetc").await
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        Ok::<(), anyhow::Error>(())
    })?;
    eprintln!("scale: generated {n} WAL objects on s3:// in {:.1}s", started.elapsed().as_secs_f64());
    measure(&config, n, &[])
}
