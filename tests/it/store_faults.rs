//! Failure paths of archive, fetch, expire, backup and restore, driven
//! through the fault-injecting store (`pgwal::storage::faults`) rather than
//! a proxy: a transient failure is retried and leaves exactly one stored
//! object with the file's content; a refusal fails at once and stores
//! nothing; a truncated read never leaves a partial file; a failed delete
//! leaves a repository in which every backup listed as complete has all its
//! packs; a pack upload refused mid-backup leaves no trace of the backup;
//! a read refused mid-restore leaves nothing that claims to be restored.
//! Backup and restore run on real PostgreSQL 15.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use pgwal::config::restore::RestoreOptions;
use pgwal::config::{ArchiveOptions, BackupOptions, CheckpointMode};
use pgwal::db::{ConnTarget, PgEnv};
use pgwal::ops::expire::{plan::Policy, ExpireOptions};
use pgwal::pg::recovery::{RecoveryTarget, TargetTimeline};
use pgwal::pg::{Lsn, SegmentNo, TimelineId, WalFileName, WalSegmentSize};
use pgwal::repo::backup::{manifest_key, pack_key, BackupId, BackupType};
use pgwal::repo::{frame, keys, synthetic, PutOutcome, Repository};
use pgwal::storage::faults::{Fault, FaultyStore, Op, Rule};
use pgwal::storage::{RepoUrl, RetryNotes, RetryPolicy};
use pgwal::Error;

const SYSID: u64 = 7_123_456_789;
const WAIT: Duration = Duration::from_secs(120);

/// Quick retries, so that a test of retrying takes milliseconds.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        notes: RetryNotes::Debug,
    }
}

fn repo_over(store: &FaultyStore, url: RepoUrl) -> Repository {
    Repository::new(store.store(), url, quick_retry())
}

fn memory_url() -> RepoUrl {
    RepoUrl::S3 { bucket: "faulty".into(), prefix: String::new() }
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Every key below `prefix` in the store, without faults.
async fn keys_below(objects: &Arc<dyn ObjectStore>, prefix: &str) -> Result<Vec<String>> {
    let listed: Vec<_> = objects.list(Some(&Key::from(prefix))).try_collect().await?;
    let mut names: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    Ok(names)
}

fn segment_file(dir: &TestDir, seg: u64) -> Result<(WalFileName, std::path::PathBuf, Vec<u8>)> {
    let size = WalSegmentSize::new(1 << 20).context("size")?;
    let name = WalFileName::segment(TimelineId(1), SegmentNo(seg), size);
    let content = synthetic::segment_content(&name, SYSID, size);
    let path = dir.join(name.to_string());
    std::fs::write(&path, &content)?;
    Ok((name, path, content))
}

fn archive_options() -> ArchiveOptions {
    ArchiveOptions { compress_level: 1, retry_deadline: Duration::from_secs(10), parallel: 1, ahead: 0, helper: false }
}

/// A PUT that fails transiently, or whose reply is lost after the object
/// was stored, is retried: one object, with the file's content.
#[test]
fn archive_retries_transient_put_failures_into_one_object() -> Result<()> {
    let rt = rt()?;
    let dir = TestDir::new()?;
    for (seg, fault) in [(1, Fault::Transient), (2, Fault::LostReply), (3, Fault::Io(std::io::ErrorKind::TimedOut))] {
        let store = FaultyStore::in_memory();
        let repo = repo_over(&store, memory_url());
        let (name, path, content) = segment_file(&dir, seg)?;
        let key = keys::wal(&name);
        store.inject(Rule::on(Op::Put, fault.clone()).matching(key.as_ref()).times(2));
        let outcome = pgwal::ops::archive::archive(&rt, &repo, &path, &archive_options(), None)
            .with_context(|| format!("{fault:?}"))?;
        // A lost reply: the retry finds its own first attempt.
        let expected =
            if matches!(fault, Fault::LostReply) { PutOutcome::AlreadyIdentical } else { PutOutcome::Stored };
        ensure!(outcome == expected, "{fault:?}: {outcome:?}");
        // Two failures, then success; after a lost reply the second attempt
        // already finds the object and stops there.
        let attempts = if matches!(fault, Fault::LostReply) { 2 } else { 3 };
        ensure!(store.calls_matching(Op::Put, key.as_ref()) == attempts, "{fault:?}: {attempts} attempts");
        let stored = rt.block_on(keys_below(store.inner(), "wal"))?;
        ensure!(stored == [key.to_string()], "{fault:?}: exactly one WAL object: {stored:?}");
        let object = rt.block_on(async { store.inner().get(&key).await?.bytes().await })?;
        ensure!(frame::decode(&object)? == content, "{fault:?}: the stored object holds the file");
    }
    Ok(())
}

/// A refused PUT (403, or a local permission error) fails at once, without
/// a retry, and stores no WAL object.
#[test]
fn archive_fails_at_once_on_a_refused_put() -> Result<()> {
    let rt = rt()?;
    let dir = TestDir::new()?;
    for fault in [Fault::Denied, Fault::Io(std::io::ErrorKind::PermissionDenied)] {
        let store = FaultyStore::in_memory();
        let repo = repo_over(&store, memory_url());
        let (name, path, _) = segment_file(&dir, 1)?;
        let key = keys::wal(&name);
        store.inject(Rule::on(Op::Put, fault.clone()).matching(key.as_ref()));
        let result = pgwal::ops::archive::archive(&rt, &repo, &path, &archive_options(), None);
        ensure!(matches!(result, Err(Error::Storage { op: "put", .. })), "{fault:?}: {result:?}");
        ensure!(store.calls_matching(Op::Put, key.as_ref()) == 1, "{fault:?}: tried once");
        ensure!(rt.block_on(keys_below(store.inner(), "wal"))?.is_empty(), "{fault:?}: nothing stored");
    }
    Ok(())
}

/// Archives segment `seg` with no faults and returns its name and content.
fn archived(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    dir: &TestDir,
    seg: u64,
) -> Result<(WalFileName, Vec<u8>)> {
    let (name, path, content) = segment_file(dir, seg)?;
    pgwal::ops::archive::archive(rt, repo, &path, &archive_options(), None)?;
    std::fs::remove_file(&path)?;
    Ok((name, content))
}

fn dir_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

/// A GET whose body is cut short is refused as corrupt and leaves no file
/// (not DEST, not a temporary one); a transient GET failure is retried and
/// the whole segment arrives.
#[test]
fn fetch_refuses_a_truncated_read_and_retries_a_transient_one() -> Result<()> {
    let rt = rt()?;
    let dir = TestDir::new()?;
    let store = FaultyStore::in_memory();
    let repo = repo_over(&store, memory_url());
    let (name, content) = archived(&rt, &repo, &dir, 1)?;
    let key = keys::wal(&name);
    let pg_wal = dir.subdir("pg_wal")?;
    let dest = pg_wal.join("RECOVERYXLOG");

    let stored = rt.block_on(async { store.inner().head(&key).await })?.size as usize;
    for keep in [0, 40, stored / 2, stored - 1] {
        store.inject(Rule::on(Op::Get, Fault::Truncate(keep)).matching(key.as_ref()).nth(1));
        let before = store.calls_matching(Op::Get, key.as_ref());
        let result = pgwal::ops::fetch::fetch(&rt, &repo, &name, &dest);
        ensure!(matches!(result, Err(Error::Corrupt { .. })), "cut at {keep}: {result:?}");
        ensure!(store.calls_matching(Op::Get, key.as_ref()) == before + 1, "cut at {keep}: not retried");
        ensure!(dir_entries(&pg_wal)?.is_empty(), "cut at {keep}: no partial file: {:?}", dir_entries(&pg_wal)?);
        store.heal();
    }

    store.inject(Rule::on(Op::Get, Fault::Transient).matching(key.as_ref()).times(2));
    let before = store.calls_matching(Op::Get, key.as_ref());
    pgwal::ops::fetch::fetch(&rt, &repo, &name, &dest)?;
    ensure!(store.calls_matching(Op::Get, key.as_ref()) == before + 3, "two failures, then success");
    ensure!(std::fs::read(&dest)? == content, "the fetched segment is the archived one");
    ensure!(dir_entries(&pg_wal)? == ["RECOVERYXLOG"], "only DEST: {:?}", dir_entries(&pg_wal)?);
    Ok(())
}

/// Backups at segments 2, 6 and 9 of a synthetic repository; returns their IDs, oldest first.
async fn three_backups(repo: &Repository) -> Result<Vec<BackupId>> {
    let size = WalSegmentSize::new(1 << 20).context("size")?;
    synthetic::init(repo, SYSID, size).await?;
    for seg in 1..=12 {
        synthetic::put_segment(repo, TimelineId(1), SegmentNo(seg), SYSID, size).await?;
    }
    let mut ids = Vec::new();
    for (seg, h) in [(2u64, 1), (6, 2), (9, 3)] {
        let start = Lsn(seg * size.bytes() + 0x28);
        ids.push(synthetic::put_backup(repo, SYSID, TimelineId(1), start, Lsn(start.0 + 0x100), at(h)).await?.id);
    }
    Ok(ids)
}

fn at(hours: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000 + hours * 3600, 0).expect("a valid time")
}

/// What a reader may rely on: every backup listed as complete has every
/// pack its manifest names, and `verify` finds no error.
async fn assert_consistent(repo: &Repository, store: &FaultyStore) -> Result<Vec<String>> {
    let listing = pgwal::ops::list::listing(repo).await?;
    for b in &listing.backups {
        let id: BackupId = b.id.parse().context("listed id")?;
        let manifest =
            repo.load_json::<pgwal::repo::backup::Manifest>(&manifest_key(&id)).await?.context("manifest")?;
        for pack in &manifest.packs {
            let key = pack_key(&id, pack.number);
            ensure!(store.inner().head(&key).await.is_ok(), "listed backup {id} misses its pack {key}");
        }
    }
    let opts = pgwal::ops::verify::VerifyOptions { backup: None, quick: false, jobs: 2 };
    let report = pgwal::ops::verify::verify(repo, &opts).await?;
    ensure!(report.ok, "verify finds errors: {}", report.render_text());
    Ok(listing.backups.iter().map(|b| b.id.clone()).collect())
}

/// A DELETE refused mid-expire: expire reports the error and what it had
/// removed, and the repository stays consistent; a later expire finishes.
#[test]
fn expire_reports_a_refused_delete_and_leaves_the_repository_consistent() -> Result<()> {
    let rt = rt()?;
    rt.block_on(async {
        let opts = ExpireOptions {
            policy: Policy { retain_full: Some(1), retain_days: None },
            dry_run: false,
            lock_stale_after: Duration::from_secs(3600),
            backup: None,
            with_dependents: false,
        };
        // The oldest backup's manifest goes first: refusing it keeps the
        // backup whole; refusing its pack leaves a backup without a
        // manifest, which is never listed as complete.
        for refuse_manifest in [true, false] {
            let store = FaultyStore::in_memory();
            let repo = repo_over(&store, memory_url());
            let ids = three_backups(&repo).await?;
            let victim = if refuse_manifest { manifest_key(&ids[0]) } else { pack_key(&ids[0], 0) };
            store.inject(Rule::on(Op::Delete, Fault::Denied).matching(victim.as_ref()));
            let mut out = Vec::new();
            let result = pgwal::ops::expire::expire(&repo, &opts, at(10), &mut out).await;
            let out = String::from_utf8(out)?;
            ensure!(matches!(result, Err(Error::Storage { op: "delete", .. })), "{victim}: {result:?}");
            ensure!(store.calls_matching(Op::Delete, victim.as_ref()) == 1, "{victim}: a refusal is not retried");
            ensure!(store.inner().head(&victim).await.is_ok(), "{victim} is still there");
            let listed = assert_consistent(&repo, &store).await?;
            if refuse_manifest {
                ensure!(out.is_empty(), "nothing of the oldest backup went: {out}");
                ensure!(listed == [&ids[0], &ids[1], &ids[2]].map(ToString::to_string), "all three stay: {listed:?}");
            } else {
                ensure!(out.contains(&format!("{}", ids[0])), "the manifest's removal is reported: {out}");
                ensure!(listed == [&ids[1], &ids[2]].map(ToString::to_string), "{listed:?}");
            }

            store.heal();
            pgwal::ops::expire::expire(&repo, &opts, at(10), &mut Vec::new()).await?;
            let listed = assert_consistent(&repo, &store).await?;
            ensure!(listed == [ids[2].to_string()], "the second run finishes: {listed:?}");
            for id in &ids[..2] {
                let left = keys_below(store.inner(), keys::backup_dir(id.as_str()).as_ref()).await?;
                ensure!(left.is_empty(), "{id} is gone entirely: {left:?}");
            }
        }
        Ok(())
    })
}

/// Gives a directory tree to the run-as user, so PostgreSQL can start on
/// what the test process (root) restored.
fn chown_tree(path: &Path) -> Result<()> {
    chown_to_run_as(path)?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path())?;
        }
    }
    Ok(())
}

fn backup_request(pg: &PgCluster) -> Result<pgwal::ops::backup::BackupRequest> {
    Ok(pgwal::ops::backup::BackupRequest {
        kind: BackupType::Full,
        pgdata: Some(pg.data_dir().to_path_buf()),
        conn: ConnTarget::new(Some(&pg.conninfo()), &PgEnv::from_process())?,
        primary: None,
        opts: BackupOptions {
            kind: BackupType::Full,
            compress_level: 1,
            workers: 2,
            retry_deadline: Duration::from_secs(10),
            wal_timeout: WAIT,
            lock_stale_after: Duration::from_secs(3600),
            checkpoint: CheckpointMode::Fast,
            primary_conninfo: None,
        },
    })
}

fn restore_options(target_dir: &Path, url: &RepoUrl, config: &Path) -> RestoreOptions {
    RestoreOptions {
        target_dir: target_dir.to_path_buf(),
        backup: None,
        target: Some(RecoveryTarget::Immediate),
        action: None,
        timeline: TargetTimeline::Current,
        tablespace_map: Vec::new(),
        delta: false,
        jobs: 2,
        standby: None,
        repo: url.clone(),
        config_file: Some(config.to_path_buf()),
        encryption_key_file: None,
        retry_deadline: Duration::from_secs(10),
    }
}

/// On real PostgreSQL: the second pack's upload refused mid-backup fails
/// the backup, removes its packs, writes no manifest and lists nothing; the
/// server is left able to take the next backup. A pack read refused
/// mid-restore fails the restore and leaves nothing startable; healed, the
/// same restore recovers the rows.
#[test]
fn backup_and_restore_fail_cleanly_when_the_store_refuses() -> Result<()> {
    let rt = rt()?;
    let dir = TestDir::new()?;
    let root = dir.join("repo");
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = \"file://{}\"\n", root.display()))?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    // About 60 MB of table: more than one pack (32 MiB each).
    pg.sql("CREATE TABLE big AS SELECT g AS n, md5(g::text) || md5((g + 1)::text) AS filler FROM generate_series(1, 600000) g")?;
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;

    let url = RepoUrl::File(root.clone());
    let local = pgwal::storage::open(&url, &Default::default(), pgwal::storage::Access::WriteExisting, WAIT)?;
    let store = FaultyStore::new(local.objects.clone());
    // As a local repository is: deletes prune the directories they empty.
    // Its reads would be mapped from disk past the wrapper, so the restore
    // below reads through a handle that does not know it is local.
    let local_store = pgwal::storage::Store { objects: Arc::new(store.clone()), local_root: Some(root.clone()) };
    let repo = Repository::new(local_store, url.clone(), quick_retry());
    let request = backup_request(&pg)?;

    store.inject(Rule::on(Op::Put, Fault::Denied).matching("/pack/000001"));
    let result = pgwal::ops::backup::backup(&rt, &repo, &request);
    ensure!(matches!(result, Err(Error::Storage { op: "put", .. })), "{result:?}");
    ensure!(store.calls_matching(Op::Put, "/pack/000001") == 1, "the refusal is not retried");
    let left = rt.block_on(keys_below(store.inner(), "backup"))?;
    ensure!(left.is_empty(), "the failed backup leaves no pack and no manifest: {left:?}");
    let listing = rt.block_on(pgwal::ops::list::listing(&repo))?;
    ensure!(
        listing.backups.is_empty() && listing.incomplete.is_empty(),
        "nothing listed: {:?} {:?}",
        listing.backups,
        listing.incomplete
    );

    store.heal();
    let id = pgwal::ops::backup::backup(&rt, &repo, &request).context("the next backup")?;
    let manifest = rt
        .block_on(repo.load_json::<pgwal::repo::backup::Manifest>(&manifest_key(&id)))?
        .context("the next backup's manifest")?;
    ensure!(manifest.packs.len() >= 2, "the table needs several packs: {}", manifest.packs.len());
    let rows = pg.sql("SELECT count(*) || ' ' || sum(n) FROM big")?;

    let repo = repo_over(&store, url.clone());
    let failed = dir.join("failed");
    let failed_data = failed.join(DATA_SUBDIR);
    store.inject(Rule::on(Op::Get, Fault::Denied).matching(&format!("{id}/pack/000001")));
    let result = pgwal::ops::restore::restore(&rt, &repo, &restore_options(&failed_data, &url, &config));
    ensure!(matches!(result, Err(Error::Storage { op: "get", .. })), "{result:?}");
    for claim in ["recovery.signal", "standby.signal", "backup_label", "global/pg_control"] {
        ensure!(!failed_data.join(claim).exists(), "a failed restore leaves no {claim}");
    }

    store.heal();
    let home = dir.join("restored");
    let data = home.join(DATA_SUBDIR);
    pgwal::ops::restore::restore(&rt, &repo, &restore_options(&data, &url, &config))?;
    // The restore ran in this process, so its restore_command names this
    // test binary: point it at pgwal.
    let auto = data.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto)?;
    ensure!(text.contains("restore_command"), "the restore sets restore_command: {text}");
    let text: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("restore_command") { restore_command_setting(&config) } else { l.to_string() })
        .collect();
    std::fs::write(&auto, text.join("\n") + "\n")?;
    chown_tree(&home)?;
    let mut copy = PgCluster::existing(&home)?;
    copy.set_conf(&["archive_mode = off"])?;
    if let Err(e) = copy.start() {
        bail!("{e:#}\n{}", copy.log_tail(30));
    }
    wait_until(WAIT, "recovery to reach the backup's end", || {
        Ok(copy.sql("SELECT NOT pg_is_in_recovery() OR pg_get_wal_replay_pause_state() = 'paused'")? == "t")
    })
    .with_context(|| copy.log_tail(30))?;
    let restored = copy.sql("SELECT count(*) || ' ' || sum(n) FROM big")?;
    if restored != rows {
        bail!("the restored copy has '{restored}', the primary '{rows}'");
    }
    Ok(())
}
