//! The paths a new user walks on the first day, on real PostgreSQL 15:
//! under umask 022 nothing pgwal writes (repository, spool, restored data
//! directory) is readable by group or others (SPEC §3.7); root is refused
//! wherever what it wrote would belong to root instead of postgres; a
//! mistyped repository path never starts a new repository, and a new one
//! is announced; bad URLs, data directories and connection strings are
//! refused naming their cause.

use crate::common;
use crate::synthetic;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// `pgwal` as configured in `p`, run by `sh` after `umask 022`.
fn under_umask_022(p: &Pgwal) -> Command {
    let inner = p.command();
    let mut cmd = command_as_user("/bin/sh");
    cmd.arg("-c").arg("umask 022 && exec \"$0\" \"$@\"").arg(inner.get_program()).args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    if let Some(d) = inner.get_current_dir() {
        cmd.current_dir(d);
    }
    cmd
}

/// Everything below `root` (not following links) that group or others may
/// read, write or enter, with its mode.
fn not_private(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // PostgreSQL or the prefetcher removed it while we walked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", p.display())),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.mode() & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), meta.mode() & 0o7777));
        }
        if meta.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(out)
}

/// Files (not directories) below `root`.
fn file_count(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// Every path below `root`, relative, sorted, with its owner.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = e.path();
            let uid = fs::symlink_metadata(&path).map_or(u32::MAX, |m| m.uid());
            out.push(format!("{} {uid}", path.strip_prefix(root).unwrap_or(&path).display()));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn config_for(dir: &TestDir, repo: &Path) -> Result<PathBuf> {
    let config = dir.join("pgwal.toml");
    write_private_file(&config, &format!("repo = {}\n", toml_quote(&format!("file://{}", repo.display()))))?;
    Ok(config)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Under umask 022 (for the pgwal commands run by hand, and inside
/// archive_command and restore_command: the postmaster sets its own umask,
/// 077, which its commands would inherit, so the test sets 022 in both
/// explicitly, the worst a wrapper script could do), after archiving, a
/// backup, a restore and a recovery that spools: the repository, the spool
/// and the restored data directory hold nothing group or others can read.
/// The primary was initialised without group access, so the backup's
/// manifest records 0600/0700 and the restore keeps them.
#[test]
fn private_whatever_the_umask() -> Result<()> {
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let config = config_for(&dir, &repo)?;
    let archive = format!("umask 022 && {}", pgwal_shell_command(&["--config", &s(&config), "archive", "%p"]));
    let mut pg = PgCluster::init(
        &dir.join("primary"),
        &[&format!("archive_command = {}", conf_quote(&archive)), "archive_timeout = 0"],
    )?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n, md5(g::text) AS filler FROM generate_series(1, 20000) g")?;
    let first = pg.switch_wal()?;
    pg.wait_archived(&first, WAIT)?;

    // The first archive created the repository and said so, once, in
    // PostgreSQL's log.
    let notice = format!(
        "pgwal: notice: created a new repository at 'file://{}' for cluster {}",
        repo.display(),
        pg.system_identifier()?
    );
    ensure!(pg.log_contents().matches(&notice).count() == 1, "{notice:?} once in:\n{}", pg.log_tail(30));

    let backup =
        Pgwal::new(["--config", &s(&config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"]).arg(pg.data_dir());
    let id = run(&mut under_umask_022(&backup), None, COMMAND_TIMEOUT)?.ensure_success()?.stdout.trim().to_string();
    ensure!(!id.is_empty(), "a backup ID");
    let mut last = String::new();
    for _ in 0..4 {
        pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")?;
        last = pg.switch_wal()?;
    }
    pg.wait_archived(&last, WAIT)?;
    pg.stop()?;
    ensure!(file_count(&repo.join("backup")) > 1, "the backup is in the repository");

    let home = dir.join("restored");
    create_user_dir(&home)?;
    let data = home.join(DATA_SUBDIR);
    let restore = Pgwal::new(["--config", &s(&config), "restore", "--target-dir", &s(&data)]);
    run(&mut under_umask_022(&restore), None, COMMAND_TIMEOUT)?.ensure_success()?;
    ensure!(data.join("recovery.signal").is_file(), "restored for recovery");

    // Recovery held before the last segment, with a restore_command under
    // umask 022: the prefetcher spools the segments ahead meanwhile.
    let gate = dir.join("gate");
    let reached = dir.join("gate_reached");
    let script = dir.join("restore.sh");
    let text = format!(
        "#!/bin/sh\numask 022\nif [ \"$1\" = {last} ]; then touch {r}; while [ -e {g} ]; do sleep 0.05; done; fi\n\
         exec {pgwal} --config {c} fetch \"$1\" \"$2\"\n",
        last = shell_quote(&last),
        r = shell_quote(&s(&reached)),
        g = shell_quote(&s(&gate)),
        pgwal = shell_quote(&s(&pgwal_bin())),
        c = shell_quote(&s(&config)),
    );
    write_user_file(&script, text.as_bytes(), 0o755)?;
    write_user_file(&gate, b"", 0o600)?;
    let mut restored = PgCluster::existing(&home)?;
    // After the settings restore wrote: the last one wins.
    let mut auto = fs::OpenOptions::new().append(true).open(data.join("postgresql.auto.conf"))?;
    std::io::Write::write_all(
        &mut auto,
        format!(
            "restore_command = {}\narchive_mode = off\n",
            conf_quote(&format!("{} %f %p", shell_quote(&s(&script))))
        )
        .as_bytes(),
    )?;
    drop(auto);
    restored.start_no_wait()?;
    wait_until(WAIT, "recovery to reach the last segment", || Ok(reached.exists()))
        .with_context(|| restored.log_tail(30))?;
    let spool = data.join("pg_wal/pgwal/fetch");
    wait_until(WAIT, "the prefetcher to spool a segment", || Ok(file_count(&spool) > 0))
        .with_context(|| restored.log_tail(30))?;

    let exposed_spool = not_private(&spool)?;
    let exposed_repo = not_private(&repo)?;
    let exposed_data = not_private(&data)?;
    fs::remove_file(&gate)?;
    restored.wait_recovery_finished(WAIT).with_context(|| restored.log_tail(30))?;
    ensure!(exposed_spool.is_empty(), "spool readable by others: {exposed_spool:#?}");
    ensure!(exposed_repo.is_empty(), "repository readable by others: {exposed_repo:#?}");
    ensure!(exposed_data.is_empty(), "restored data directory readable by others: {exposed_data:#?}");
    let rows = restored.sql("SELECT count(*) FROM t")?;
    ensure!(rows == "100000", "recovered every row: {rows}");
    let after = not_private(&repo)?;
    ensure!(after.is_empty(), "repository after recovery: {after:#?}");
    Ok(())
}

/// pgwal run by root itself (not through the harness's switch to postgres).
fn as_root(args: &[&str]) -> Result<RunOutput> {
    let mut cmd = Command::new(pgwal_bin());
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("LC_ALL", "C").env("HOME", "/root").current_dir("/");
    cmd.args(args);
    run(&mut cmd, None, COMMAND_TIMEOUT)
}

/// Root is refused, before anything is written, wherever the result would
/// belong to root rather than postgres: archive, backup and expire into a
/// repository of postgres, restore and standby anywhere (PostgreSQL does not
/// start on a root-owned data directory). Reading is fine, and so is
/// writing into a repository root owns.
#[test]
fn root_is_refused_where_it_would_leave_root_owned_files() -> Result<()> {
    if !run_as().switch {
        eprintln!("skipped: the tests do not run as root");
        return Ok(());
    }
    let dir = TestDir::new()?;
    let repo = dir.join("repo");
    let config = config_for(&dir, &repo)?;
    let mut pg = PgCluster::init(&dir.join("primary"), &[&archive_command_setting(&config), "archive_timeout = 0"])?;
    pg.start()?;
    pg.sql("CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 10000) g")?;
    let segment = pg.switch_wal()?;
    pg.wait_archived(&segment, WAIT)?;
    // Copied before the backup's checkpoint may recycle it.
    let segment_path = s(&dir.join(&segment));
    write_user_file(Path::new(&segment_path), &fs::read(pg.data_dir().join("pg_wal").join(&segment))?, 0o600)?;
    let id = Pgwal::new(["--config", &s(&config), "backup", "--conninfo", &pg.conninfo(), "--pgdata"])
        .arg(pg.data_dir())
        .run()?
        .ensure_success()?
        .stdout
        .trim()
        .to_string();
    let before = tree(&repo);
    // The harness passes no config to root's runs: the repository by flag.
    let url = format!("file://{}", repo.display());
    let pgdata = s(pg.data_dir());
    let conninfo = pg.conninfo();

    let refusals = [
        as_root(&["--repo", &url, "archive", &segment_path])?,
        as_root(&["--repo", &url, "backup", "--conninfo", &conninfo, "--pgdata", &pgdata])?,
        as_root(&["--repo", &url, "expire", "--retain-full", "1"])?,
    ];
    for out in &refusals {
        ensure!(out.code() == Some(2), "refused as bad usage: {out}");
        ensure!(out.stderr.contains("refusing to write into") && out.stderr.contains("as root"), "{out}");
        ensure!(out.stderr.contains("runuser -u postgres -- pgwal"), "the hint names the owner: {out}");
    }
    ensure!(tree(&repo) == before, "nothing written or re-owned in the repository");

    // A new repository in a directory of postgres: not even its directory.
    let new_repo = dir.join("new-repo");
    let fresh = as_root(&["--repo", &format!("file://{}", new_repo.display()), "archive", &segment_path])?;
    ensure!(fresh.code() == Some(2) && fresh.stderr.contains("runuser -u postgres"), "{fresh}");
    ensure!(!new_repo.exists(), "no repository directory created");

    // Restore and standby as root: refused into a directory of postgres...
    let target = dir.join("restored-by-root");
    let restore = as_root(&["--repo", &url, "restore", "--target-dir", &s(&target)])?;
    ensure!(restore.code() == Some(2) && restore.stderr.contains("runuser -u postgres -- pgwal restore"), "{restore}");
    let standby = as_root(&["--repo", &url, "standby", "--target-dir", &s(&target), "--primary-conninfo", &conninfo])?;
    ensure!(standby.code() == Some(2) && standby.stderr.contains("runuser -u postgres -- pgwal standby"), "{standby}");
    ensure!(!target.exists(), "nothing restored");
    // ...and into a directory of root (PostgreSQL would not start on it).
    let root_dir = tempfile::Builder::new().prefix("pgwal-root-").tempdir_in(test_tmp_base())?;
    let root_target = root_dir.path().join("pgdata");
    let into_root = as_root(&["--repo", &url, "restore", "--target-dir", &s(&root_target)])?;
    ensure!(into_root.code() == Some(2) && into_root.stderr.contains("owned by root"), "{into_root}");
    ensure!(into_root.stderr.contains("runuser -u postgres -- pgwal restore"), "{into_root}");
    ensure!(!root_target.exists(), "nothing restored");

    // Reading as root is fine.
    let list = as_root(&["--repo", &url, "list"])?.ensure_success()?;
    ensure!(list.stdout.contains(&id), "{list}");
    as_root(&["--repo", &url, "verify"])?.ensure_success()?;
    ensure!(tree(&repo) == before, "reading changed nothing");

    // A repository root owns: root may read and write it.
    let copy = root_dir.path().join("repo");
    let status = Command::new("cp").arg("-a").arg(&repo).arg(&copy).status()?;
    ensure!(status.success(), "cp -a");
    let status = Command::new("chown").args(["-R", "root:root"]).arg(&copy).status()?;
    ensure!(status.success(), "chown -R root");
    let copy_url = format!("file://{}", copy.display());
    as_root(&["--repo", &copy_url, "list"])?.ensure_success()?;
    as_root(&["--repo", &copy_url, "verify"])?.ensure_success()?;
    let again = as_root(&["--repo", &copy_url, "archive", &segment_path])?.ensure_success()?;
    ensure!(again.stderr.contains("already archived"), "{again}");
    Ok(())
}

/// `--repo file:///srv/pgwal/mian` (a typo in a parent): nothing is
/// created and the error names the missing parent. The first archive into a
/// new repository (a bare absolute path works as file://) announces it, the
/// next one does not.
#[test]
fn a_typo_never_starts_a_repository() -> Result<()> {
    let dir = TestDir::new()?;
    let mut pg = PgCluster::init(&dir.join("primary"), &["archive_mode = off"])?;
    pg.start()?;
    let first = pg.switch_wal()?;
    // Copied while the server runs: a checkpoint may recycle it.
    let segment = dir.subdir("staged")?.join(&first);
    write_user_file(&segment, &fs::read(pg.data_dir().join("pg_wal").join(&first))?, 0o600)?;
    pg.stop()?;
    let archive = |repo: &str| Pgwal::new(["--repo", repo, "archive", &s(&segment)]).run();

    let typo = dir.join("mian/repo");
    let out = archive(&format!("file://{}", typo.display()))?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(out.stderr.contains(&format!("'{}' does not exist", dir.join("mian").display())), "{out}");
    ensure!(out.stderr.contains("typo"), "{out}");
    ensure!(!dir.join("mian").exists(), "no parent directory created");

    let repo = dir.join("repo");
    let created = archive(&s(&repo))?.ensure_success()?;
    let notice = format!("pgwal: notice: created a new repository at 'file://{}' for cluster", repo.display());
    ensure!(created.stderr.matches(&notice).count() == 1, "{created}");
    ensure!(fs::metadata(&repo)?.mode() & 0o777 == 0o700, "a private repository directory");
    let again = archive(&s(&repo))?.ensure_success()?;
    ensure!(!again.stderr.contains("created a new repository"), "{again}");
    Ok(())
}

/// Bad values name their cause: an unknown scheme, a relative path, a
/// --pgdata that does not exist (list refuses it; fetch ignores it, never
/// writes there, and keeps its exit rules), a bad --conninfo.
#[test]
fn bad_values_say_what_is_wrong() -> Result<()> {
    let dir = TestDir::new()?;
    let typo = pgwal(["--repo", "fille:///x", "list"])?;
    ensure!(typo.code() == Some(2), "{typo}");
    ensure!(typo.stderr.contains("unknown scheme 'fille'") && typo.stderr.contains("s3://"), "{typo}");
    ensure!(!typo.stderr.contains("name is missing"), "{typo}");
    let relative = pgwal(["--repo", "srv/pgwal", "list"])?;
    ensure!(relative.code() == Some(2) && relative.stderr.contains("relative path"), "{relative}");
    let bare = pgwal(["--repo", &s(&dir.join("nothing-here")), "list"])?;
    ensure!(bare.code() == Some(1), "{bare}");
    ensure!(bare.stderr.contains(&format!("no pgwal repository at 'file://{}'", dir.join("nothing-here").display())));

    let missing = dir.join("no-such-pgdata");
    let list = pgwal(["--repo", &s(&dir.join("repo")), "list", "--pgdata", &s(&missing)])?;
    ensure!(list.code() == Some(2), "{list}");
    ensure!(list.stderr.contains("is not a PostgreSQL data directory: it does not exist"), "{list}");
    let from_env = Pgwal::new(["--repo", &s(&dir.join("repo")), "list"]).env("PGDATA", &missing).run()?;
    ensure!(from_env.code() == Some(2), "{from_env}");

    let dest = dir.join("RECOVERYXLOG");
    let fetch = Pgwal::new(["--repo", &s(&dir.join("repo")), "fetch", "000000010000000000000001", &s(&dest)])
        .env("PGDATA", &missing)
        .run()?;
    ensure!(fetch.code() == Some(201), "unreachable repository, recovery rules: {fetch}");
    ensure!(!missing.exists() && !dest.exists(), "nothing written");

    let conninfo = pgwal(["--repo", &s(&dir.join("repo")), "backup", "--conninfo", "port=abc"])?;
    ensure!(conninfo.code() == Some(2), "{conninfo}");
    ensure!(conninfo.stderr.matches("invalid connection string").count() == 1, "{conninfo}");
    ensure!(conninfo.stderr.contains("port"), "{conninfo}");
    ensure!(!dir.join("repo").exists(), "nothing created");
    Ok(())
}

/// `expire` hitting "Permission denied" fails at once (it once retried for
/// two minutes, printing a warning per retry): one error line, no retry.
#[test]
fn expire_permission_denied_fails_at_once() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new()?;
    let (config, root) = synthetic::file_config(&dir, "repo")?;
    let repo = synthetic::open(&config)?;
    let ids = synthetic::rt().block_on(synthetic::two_timelines(&repo))?;
    synthetic::give_to_run_as(&root)?;
    let oldest = root.join("backup").join(&ids[0]);
    fs::set_permissions(&oldest, fs::Permissions::from_mode(0o500))?;
    let out = Pgwal::new(["--config", &s(&config), "expire", "--retain-full", "3"]).run()?;
    fs::set_permissions(&oldest, fs::Permissions::from_mode(0o700))?;
    ensure!(out.code() == Some(1), "{out}");
    ensure!(out.stderr.contains("Permission denied") && !out.stderr.contains("gave up after"), "{out}");
    let errors = out.stderr.lines().filter(|l| l.starts_with("pgwal: error:")).count();
    let warnings = out.stderr.lines().filter(|l| l.starts_with("pgwal: warning:")).count();
    ensure!(errors == 1 && warnings == 0, "one error line, no retries: {out}");
    ensure!(out.stderr.contains("run pgwal as its owner"), "{out}");
    Ok(())
}
