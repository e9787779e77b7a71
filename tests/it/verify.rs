//! `pgwal verify`: on a repository written by real PostgreSQL 15 through
//! `pgwal archive` and `pgwal backup`, a flipped byte in a WAL object, a
//! pack or a manifest, and a segment missing mid-chain each make verify exit
//! 3 and name the object or segment (and the quick mode finds what listings
//! can show); a repository with WAL but no backup is checked for what it
//! has; with four backups, a gap names every backup that cannot recover
//! past it and `list` shows the recovery windows on each side. On synthetic two-timeline repositories: a missing or corrupt
//! `.history` file, warnings that do not fail (a gap no backup needs, a
//! backup without manifest), `--backup`, and the documented JSON.

use crate::common;
use crate::synthetic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use synthetic::*;

const WAIT: Duration = Duration::from_secs(120);

fn cfg(config: &Path) -> String {
    config.to_string_lossy().into_owned()
}

fn verify(config: &Path, args: &[&str]) -> Result<RunOutput> {
    Pgwal::new(["--config", &cfg(config), "verify"]).args(args).run()
}

fn verify_json(config: &Path, args: &[&str]) -> Result<(Option<i32>, serde_json::Value)> {
    let out = Pgwal::new(["--config", &cfg(config), "verify", "--json"]).args(args).run()?;
    let v = serde_json::from_str(&out.stdout).with_context(|| format!("verify --json printed no JSON: {out}"))?;
    Ok((out.code(), v))
}

/// Switches WAL and waits until the segment is archived.
fn archive_now(pg: &PgCluster) -> Result<String> {
    let last = pg.switch_wal()?;
    pg.wait_archived(&last, WAIT)?;
    Ok(last)
}

/// A copy of the repository at `root` for one corruption case, and its config.
fn case(dir: &TestDir, root: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let (config, copy) = file_config(dir, name)?;
    copy_tree(root, &copy)?;
    Ok((config, copy))
}

/// Segment files of the repository at `root`, oldest first.
fn segment_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut segs: Vec<PathBuf> = files(root)?
        .into_iter()
        .filter(|f| f.starts_with("wal/") && f.len() == "wal/0000000100000000/000000010000000000000001".len())
        .map(|f| root.join(f))
        .collect();
    segs.sort();
    Ok(segs)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn corruption_and_missing_wal_are_found_and_named() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g")?;
    archive_now(&pg)?;

    // WAL but no backup yet: checked for what it has.
    let out = verify(&config, &[])?;
    ensure!(out.success() && out.stdout.contains("checked 0 backup(s)"), "{out}");

    let id = Pgwal::new([
        "--config",
        &cfg(&config),
        "backup",
        "--checkpoint",
        "fast",
        "--conninfo",
        &pg.conninfo(),
        "--pgdata",
    ])
    .arg(pg.data_dir())
    .run()?
    .ensure_success()?
    .stdout
    .trim()
    .to_string();
    for _ in 0..3 {
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")?;
        archive_now(&pg)?;
    }
    pg.stop()?;

    let (code, v) = verify_json(&config, &[])?;
    ensure!(code == Some(0) && v["ok"] == true, "a sound repository: {v}");
    ensure!(v["checked"]["backups"] == 1 && v["checked"]["packs"].as_u64() >= Some(1), "{v}");
    ensure!(v["checked"]["wal_files"].as_u64() >= Some(4), "{v}");
    ensure!(v["checked"]["original_bytes"].as_u64() > Some(4 << 24), "read back the WAL and the packs: {v}");
    verify(&config, &["--quick"])?.ensure_success()?;
    verify(&config, &["--backup", &id])?.ensure_success()?;

    let segs = segment_files(&root)?;
    let newest = segs.last().context("segments")?.clone();
    let mid = segs[segs.len() - 2].clone();

    // A flipped byte in a WAL object.
    let (c, copy) = case(&dir, &root, "flipped_wal")?;
    flip_byte(&copy.join(newest.strip_prefix(&root)?))?;
    let out = verify(&c, &[])?;
    ensure!(out.code() == Some(3), "{out}");
    ensure!(
        out.stdout.contains(&format!("WAL file 'wal/{}/{}' is corrupt", &file_name(&newest)[..16], file_name(&newest))),
        "{out}"
    );
    ensure!(out.stderr.contains("pgwal: error: verify found 1 error(s)"), "{out}");

    // A flipped byte in a pack.
    let (c, copy) = case(&dir, &root, "flipped_pack")?;
    flip_byte(&copy.join(format!("backup/{id}/pack/000000")))?;
    let out = verify(&c, &[])?;
    ensure!(
        out.code() == Some(3)
            && out.stdout.contains(&format!("pack 'backup/{id}/pack/000000' of backup '{id}' is corrupt")),
        "{out}"
    );
    let (code, v) = verify_json(&c, &[])?;
    ensure!(code == Some(3) && v["ok"] == false, "{v}");
    ensure!(v["problems"][0]["kind"] == "corrupt_object" && v["problems"][0]["backup"] == id.as_str(), "{v}");

    // A flipped byte in a manifest.
    let (c, copy) = case(&dir, &root, "flipped_manifest")?;
    flip_byte(&copy.join(format!("backup/{id}/manifest")))?;
    let out = verify(&c, &[])?;
    ensure!(
        out.code() == Some(3)
            && out.stdout.contains(&format!("manifest 'backup/{id}/manifest' of backup '{id}' is corrupt")),
        "{out}"
    );
    ensure!(verify(&c, &["--quick"])?.code() == Some(3), "quick mode reads manifests too");

    // A segment missing in the middle of the backup's chain: full and quick mode name it.
    let (c, copy) = case(&dir, &root, "missing_segment")?;
    std::fs::remove_file(copy.join(mid.strip_prefix(&root)?))?;
    for args in [&[][..], &["--quick"][..]] {
        let out = verify(&c, args)?;
        ensure!(out.code() == Some(3), "{args:?}: {out}");
        ensure!(out.stdout.contains(&format!("WAL segment '{}' is missing on timeline 1", file_name(&mid))), "{out}");
        ensure!(out.stdout.contains(&format!("backup '{id}' cannot recover past")), "{out}");
    }

    // A missing pack: found from the listing alone.
    let (c, copy) = case(&dir, &root, "missing_pack")?;
    std::fs::remove_file(copy.join(format!("backup/{id}/pack/000000")))?;
    let out = verify(&c, &["--quick"])?;
    ensure!(
        out.code() == Some(3)
            && out.stdout.contains(&format!("pack 'backup/{id}/pack/000000' of backup '{id}' is missing")),
        "{out}"
    );
    Ok(())
}

#[test]
fn timelines_histories_warnings_and_json() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let ids = rt().block_on(two_timelines(&open(&config)?))?;
    give_to_run_as(&root)?;
    let (code, v) = verify_json(&config, &[])?;
    ensure!(code == Some(0) && v["ok"] == true && v["checked"]["backups"] == 4, "{v}");
    ensure!(v["checked"]["wal_files"] == 60 + 31 && v["checked"]["histories"] == 1, "{v}");

    // A missing history file: recovery cannot follow timeline 2.
    let (c, copy) = case(&dir, &root, "missing_history")?;
    std::fs::remove_file(copy.join("wal/00000002.history"))?;
    for args in [&[][..], &["--quick"][..]] {
        let out = verify(&c, args)?;
        ensure!(out.code() == Some(3), "{args:?}: {out}");
        ensure!(out.stdout.contains("history file 'wal/00000002.history' of timeline 2 is missing"), "{out}");
    }
    // A corrupt one.
    let (c, copy) = case(&dir, &root, "corrupt_history")?;
    flip_byte(&copy.join("wal/00000002.history"))?;
    let out = verify(&c, &["--quick"])?;
    ensure!(out.code() == Some(3) && out.stdout.contains("history file 'wal/00000002.history' is corrupt"), "{out}");

    // Timeline 2's segment 60 is needed by backups A, B (through the switch) and D.
    let (c, copy) = case(&dir, &root, "missing_tl2")?;
    let victim = seg_name(2, 60);
    std::fs::remove_file(copy.join(format!("wal/{}/{victim}", &victim[..16])))?;
    let (code, v) = verify_json(&c, &[])?;
    ensure!(code == Some(3), "{v}");
    let p = &v["problems"][0];
    ensure!(p["kind"] == "missing_wal" && p["segment"] == victim.as_str() && p["severity"] == "error", "{v}");
    // Backup C (timeline 1, after the branch) does not need it.
    verify(&c, &["--backup", &ids[2]])?.ensure_success()?;
    let out = verify(&c, &["--backup", &ids[3]])?;
    ensure!(out.code() == Some(3) && out.stdout.contains(&victim), "{out}");

    // Warnings do not fail: a gap before every backup, a backup without a manifest.
    let (c, copy) = case(&dir, &root, "warnings")?;
    let early = seg_name(1, 2);
    std::fs::remove_file(copy.join(format!("wal/{}/{early}", &early[..16])))?;
    std::fs::remove_file(copy.join(format!("backup/{}/manifest", ids[0])))?;
    let (code, v) = verify_json(&c, &[])?;
    ensure!(code == Some(0) && v["ok"] == true, "{v}");
    let mut kinds: Vec<&str> =
        v["problems"].as_array().context("problems")?.iter().filter_map(|p| p["kind"].as_str()).collect();
    kinds.sort();
    ensure!(kinds == ["incomplete_backup", "wal_gap"], "{v}");
    ensure!(v["problems"].as_array().context("problems")?.iter().all(|p| p["severity"] == "warning"), "{v}");
    Ok(())
}

/// The segment number (16 MiB segments) holding the byte just before `lsn`, and the one holding `lsn`.
fn segment_numbers(lsn: &str) -> Result<(u64, u64)> {
    let l: pgwal::pg::Lsn = lsn.parse().map_err(|e| anyhow::anyhow!("LSN {lsn}: {e}"))?;
    Ok(((l.0.saturating_sub(1)) >> 24, l.0 >> 24))
}

/// The timeline 1 segment name of segment number `n` (16 MiB segments) and its log file directory.
fn tl1_segment(n: u64) -> (String, String) {
    let name = format!("00000001{:08X}{:08X}", n >> 8, n & 0xFF);
    (name[..16].to_string(), name)
}

/// The `X/Y` LSN where segment number `n` (16 MiB segments) starts.
fn segment_start(n: u64) -> String {
    let l = n << 24;
    format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF)
}

/// Real PostgreSQL 15, four backups. A segment missing between backups 1
/// and 2: verify (full and quick) exits 3 and names backup 1 alone (the
/// later ones recover past it); list's recovery windows of timeline 1 are
/// backup 1 up to the end of the segment before the gap, and backups 2-4 up
/// to the newest segment. A segment missing after backup 4: all four are
/// named, and the one window ends before the gap.
#[test]
fn gaps_name_every_backup_that_cannot_recover_past_them() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")?;
    let mut ids = Vec::new();
    for switches in [2, 1, 1, 2] {
        let out = Pgwal::new(["--config", &cfg(&config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
            .arg(pg.data_dir())
            .run()?
            .ensure_success()?;
        ids.push(out.stdout.trim().to_string());
        for _ in 0..switches {
            pg.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")?;
            archive_now(&pg)?;
        }
    }
    pg.stop()?;
    let listing = |config: &Path| -> Result<serde_json::Value> {
        let out = Pgwal::new(["--config", &cfg(config), "list", "--json"]).run()?.ensure_success()?;
        Ok(serde_json::from_str(&out.stdout)?)
    };
    let v = listing(&config)?;
    let backups = v["backups"].as_array().context("backups")?;
    ensure!(
        backups.iter().map(|b| b["id"].as_str()).collect::<Vec<_>>()
            == ids.iter().map(|i| Some(i.as_str())).collect::<Vec<_>>(),
        "{v}"
    );
    let lsn = |i: usize, key: &str| backups[i][key].as_str().map(str::to_string).context("lsn");
    let stop_seg = |i: usize| -> Result<u64> { Ok(segment_numbers(&lsn(i, "stop_lsn")?)?.0) };
    let start_seg = |i: usize| -> Result<u64> { Ok(segment_numbers(&lsn(i, "start_lsn")?)?.1) };
    let newest: u64 = {
        let last = v["wal"][0]["last"].as_str().context("last segment")?;
        u64::from_str_radix(&last[8..16], 16)? * 256 + u64::from_str_radix(&last[16..], 16)?
    };
    ensure!(v["wal"][0]["gaps"].as_array().is_some_and(Vec::is_empty), "no gap yet: {v}");
    let whole = &v["wal"][0]["recovery_windows"];
    ensure!(whole.as_array().map(Vec::len) == Some(1), "one window: {v}");
    ensure!(whole[0]["backup"] == ids[0].as_str() && whole[0]["from_lsn"] == lsn(0, "stop_lsn")?.as_str(), "{v}");
    ensure!(whole[0]["from_time"] == backups[0]["stop_time"], "{v}");
    ensure!(whole[0]["to_segment"] == tl1_segment(newest).1.as_str(), "{v}");
    ensure!(whole[0]["to_lsn"] == segment_start(newest + 1).as_str(), "{v}");

    let named_backups = |v: &serde_json::Value| -> Vec<String> {
        v["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["kind"] == "missing_wal")
            .flat_map(|p| p["backups"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect()
    };

    // A gap between backups 1 and 2.
    let gap = stop_seg(0)? + 1;
    ensure!(gap < start_seg(1)?, "a segment between backup 1's end and backup 2's start");
    let (c, copy) = case(&dir, &root, "gap_after_1")?;
    let (log, name) = tl1_segment(gap);
    std::fs::remove_file(copy.join(format!("wal/{log}/{name}")))?;
    for args in [&[][..], &["--quick"][..]] {
        let (code, r) = verify_json(&c, args)?;
        ensure!(code == Some(3), "{args:?}: {r}");
        ensure!(named_backups(&r) == [ids[0].clone()], "{args:?}: only backup 1 cannot get past it: {r}");
        ensure!(r["problems"][0]["segment"] == name.as_str() && r["problems"][0]["backup"] == ids[0].as_str(), "{r}");
    }
    let text = verify(&c, &[])?;
    ensure!(
        text.stdout.contains(&format!(
            "WAL segment '{name}' is missing on timeline 1: backup '{}' cannot recover past",
            ids[0]
        )),
        "{text}"
    );
    for id in &ids[1..] {
        ensure!(!text.stdout.contains(id.as_str()), "backup {id} recovers past the gap and is not named: {text}");
    }
    let v = listing(&c)?;
    let w = &v["wal"][0]["recovery_windows"];
    ensure!(w.as_array().map(Vec::len) == Some(2), "two windows: {v}");
    ensure!(w[0]["backup"] == ids[0].as_str() && w[0]["backups"] == serde_json::json!([ids[0]]), "{v}");
    ensure!(w[0]["from_lsn"] == lsn(0, "stop_lsn")?.as_str(), "{v}");
    ensure!(
        w[0]["to_segment"] == tl1_segment(gap - 1).1.as_str() && w[0]["to_lsn"] == segment_start(gap).as_str(),
        "window 1 ends before the gap: {v}"
    );
    ensure!(w[1]["backup"] == ids[1].as_str() && w[1]["backups"] == serde_json::json!(ids[1..]), "{v}");
    ensure!(w[1]["from_lsn"] == lsn(1, "stop_lsn")?.as_str() && w[1]["from_time"] == backups[1]["stop_time"], "{v}");
    ensure!(
        w[1]["to_segment"] == tl1_segment(newest).1.as_str() && w[1]["to_lsn"] == segment_start(newest + 1).as_str(),
        "window 2 reaches the newest segment: {v}"
    );
    let text = Pgwal::new(["--config", &cfg(&c), "list"]).run()?.ensure_success()?;
    ensure!(
        text.stdout.contains(&format!(
            "end of backup {}) .. {} (end of {})",
            ids[0],
            segment_start(gap),
            tl1_segment(gap - 1).1
        )),
        "{text}"
    );
    ensure!(
        text.stdout.contains(&format!("end of backup {} and 2 later) .. {}", ids[1], segment_start(newest + 1))),
        "{text}"
    );

    // A gap after backup 4 (the newest segment still archived after it): all four are named.
    let gap = stop_seg(3)? + 1;
    ensure!(gap < newest, "a segment between backup 4's end and the newest one");
    let (c, copy) = case(&dir, &root, "gap_after_4")?;
    let (log, name) = tl1_segment(gap);
    std::fs::remove_file(copy.join(format!("wal/{log}/{name}")))?;
    for args in [&[][..], &["--quick"][..]] {
        let (code, r) = verify_json(&c, args)?;
        ensure!(code == Some(3), "{args:?}: {r}");
        ensure!(named_backups(&r) == ids, "{args:?}: every backup is named: {r}");
    }
    let text = verify(&c, &[])?;
    let quoted: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    ensure!(
        text.stdout.contains(&format!(
            "backups {}, {}, {} and {} cannot recover past {}",
            quoted[0],
            quoted[1],
            quoted[2],
            quoted[3],
            segment_start(gap)
        )),
        "{text}"
    );
    let v = listing(&c)?;
    let w = &v["wal"][0]["recovery_windows"];
    ensure!(w.as_array().map(Vec::len) == Some(1) && w[0]["backups"] == serde_json::json!(ids), "{v}");
    ensure!(
        w[0]["to_segment"] == tl1_segment(gap - 1).1.as_str() && w[0]["to_lsn"] == segment_start(gap).as_str(),
        "{v}"
    );
    Ok(())
}

/// Two full+incr chains (see [`two_chains`]): sound as written (each incr's
/// file in its full's pack hashes right); the full's pack deleted is a
/// finding for the full and one naming the incr that reads it; the full's
/// manifest deleted is "depends on ..., which is missing"; in quick mode and
/// with --backup too.
#[test]
fn chains_name_the_dependent_backup() -> Result<()> {
    let dir = TestDir::new()?;
    let (config, root) = file_config(&dir, "repo")?;
    let repo = open(&config)?;
    let ids = rt().block_on(two_chains(&repo))?;
    give_to_run_as(&root)?;
    let out = verify(&config, &[])?;
    ensure!(out.success(), "a chain as written verifies: {out}");
    ensure!(out.stdout.contains("checked 4 backup(s)"), "{out}");
    let (full, incr) = (&ids[0], &ids[1]);

    let (c, copy) = case(&dir, &root, "no_full_pack")?;
    let pack = format!("backup/{full}/pack/000000");
    ensure!(copy.join(&pack).exists(), "the full's pack is {pack}");
    std::fs::remove_file(copy.join(&pack))?;
    for args in [&[][..], &["--quick"][..]] {
        let out = verify(&c, args)?;
        ensure!(out.code() == Some(3), "{args:?}: {out}");
        ensure!(out.stdout.contains(&format!("pack '{pack}' of backup '{full}' is missing")), "{args:?}: {out}");
        ensure!(
            out.stdout.contains(&format!("pack '{pack}' of backup '{full}', which backup '{incr}' reads, is missing")),
            "{args:?}: the incr is named: {out}"
        );
    }
    let out = verify(&c, &["--backup", incr])?;
    ensure!(out.code() == Some(3) && out.stdout.contains(&format!("which backup '{incr}' reads")), "{out}");
    let (code, v) = verify_json(&c, &["--backup", incr])?;
    ensure!(code == Some(3), "{v}");
    let p = v["problems"].as_array().context("problems")?;
    ensure!(p.iter().any(|p| p["backup"] == incr.as_str() && p["object"] == pack.as_str()), "{v}");

    let (c, copy) = case(&dir, &root, "no_full_manifest")?;
    std::fs::remove_file(copy.join(format!("backup/{full}/manifest")))?;
    let out = verify(&c, &[])?;
    ensure!(out.code() == Some(3), "{out}");
    ensure!(out.stdout.contains(&format!("backup '{incr}' depends on backup '{full}', which is missing")), "{out}");
    let (c, copy) = case(&dir, &root, "bad_full_manifest")?;
    flip_byte(&copy.join(format!("backup/{full}/manifest")))?;
    let out = verify(&c, &["--backup", incr])?;
    ensure!(out.code() == Some(3), "{out}");
    ensure!(
        out.stdout.contains(&format!("backup '{incr}' depends on backup '{full}', whose manifest is corrupt")),
        "{out}"
    );
    Ok(())
}
