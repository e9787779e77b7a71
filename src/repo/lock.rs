//! The repository lock: one object, `lock/backup`, created create-only, that
//! serialises the commands that must not interleave: two backups, and a
//! backup and an expire (an expire that planned from a catalog without a
//! new incr could delete the packs that incr references; a backup that chose
//! its parent could see it deleted under it). A backup holds it from before
//! it chooses its parent until its manifest is stored, an expire from before
//! it reads the catalog until its last deletion.
//!
//! The object holds who took it (the command, host, PID, start time, a
//! random token). A lock is stale, and is taken over, when its PID no longer
//! runs a pgwal on this host (a killed backup or expire), or when it comes
//! from another host and is older than `backup.lock_stale_after`. Taking
//! over is delete-then-create: two processes taking over the same stale
//! lock at the same instant could both succeed (object stores have no
//! conditional delete); release only deletes a lock that still holds this
//! process's token.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::backup::backup_lock_key;
use crate::repo::frame::{self, Compression};
use crate::repo::Repository;

/// Which command takes the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockFor {
    /// `pgwal backup`.
    Backup,
    /// `pgwal expire` (not `--dry-run`).
    Expire,
    /// `pgwal rekey` (two rekeys must not delete each other's keyrings).
    Rekey,
}

impl LockFor {
    /// The command's name, as stored in the lock.
    pub fn as_str(self) -> &'static str {
        match self {
            LockFor::Backup => "backup",
            LockFor::Expire => "expire",
            LockFor::Rekey => "rekey",
        }
    }
}

/// Locks written before the command was recorded were all backups'.
fn backup_command() -> String {
    LockFor::Backup.as_str().into()
}

/// What the lock object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The command holding it: `backup`, `expire` or `rekey`.
    #[serde(default = "backup_command")]
    pub command: String,
    /// Host name of the holder.
    pub host: String,
    /// PID of the holder on that host.
    pub pid: u32,
    /// When it was taken (RFC 3339, UTC).
    pub started: String,
    /// Random token: release deletes only its own lock.
    pub token: String,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "lock '{}' held by 'pgwal {}', PID {} on host '{}', since {}",
            backup_lock_key(),
            self.command,
            self.pid,
            self.host,
            self.started
        )
    }
}

/// A held repository lock. Release it with [`BackupLock::release`]; if the
/// process dies instead, the next backup or expire on this host takes it over.
#[derive(Debug)]
pub struct BackupLock {
    info: LockInfo,
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether `pid` runs a program named like this one (so a PID reused by
/// another program after a crash does not keep a stale lock alive).
fn pgwal_runs_as(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok().map(|c| c.trim().to_string());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z");
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(ours)) => !zombie && theirs == ours,
        (Some(_), None) => !zombie,
        (None, _) => false,
    }
}

fn token() -> String {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{nanos}-{}-{}", std::process::id(), host_name());
    frame::hex(&Sha256::digest(seed.as_bytes()).into())[..32].to_string()
}

/// Why a found lock may be taken over, or `None` if it is held.
fn stale_reason(found: Option<&LockInfo>, age: Duration, stale_after: Duration, here: &str) -> Option<String> {
    match found {
        None if age > stale_after => Some(format!("an unreadable lock older than {}s", stale_after.as_secs())),
        None => None,
        Some(l) if l.host == here && !pgwal_runs_as(l.pid) => {
            Some(format!("PID {} on this host no longer runs (a killed {})", l.pid, l.command))
        }
        Some(l) if l.host != here && age > stale_after => {
            Some(format!("host '{}' took it {}s ago, beyond backup.lock_stale_after", l.host, age.as_secs()))
        }
        Some(_) => None,
    }
}

impl BackupLock {
    /// Takes the lock for `what`, taking over a stale one; fails at once
    /// with [`Error::Locked`] naming the holder if another backup or expire runs.
    pub async fn acquire(repo: &Repository, stale_after: Duration, what: LockFor) -> Result<BackupLock> {
        let here = host_name();
        let info = LockInfo {
            command: what.as_str().into(),
            host: here.clone(),
            pid: std::process::id(),
            started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            token: token(),
        };
        let json = serde_json::to_vec_pretty(&info).expect("invariant: plain structs serialize");
        let (object, _) = frame::encode(&json, Compression::None)
            .map_err(|e| Error::Corrupt { key: backup_lock_key().to_string(), reason: e.to_string() })?;
        let object = Bytes::from(object);
        let key = backup_lock_key();
        for _ in 0..3 {
            if repo.create_once(&key, object.clone()).await? {
                return Ok(BackupLock { info });
            }
            let Some((found, age)) = read_lock(repo).await? else { continue };
            match stale_reason(found.as_ref(), age, stale_after, &here) {
                Some(why) => {
                    crate::log_notice!("taking over the stale repository lock: {why}");
                    repo.delete_once(&key).await?;
                }
                None => {
                    let running = found.as_ref().map_or_else(|| "pgwal command".into(), |l| l.command.clone());
                    let holder = found
                        .map_or_else(|| format!("lock '{}' of unknown content", backup_lock_key()), |l| l.describe());
                    return Err(Error::Locked { running, holder });
                }
            }
        }
        Err(Error::Locked {
            running: "pgwal command".into(),
            holder: format!("lock '{}' changed hands repeatedly while pgwal tried to take it", backup_lock_key()),
        })
    }

    /// The lock's content.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Deletes the lock if it is still this process's.
    pub async fn release(self, repo: &Repository) -> Result<()> {
        match read_lock(repo).await? {
            Some((Some(l), _)) if l.token == self.info.token => {}
            _ => {
                crate::log_warn!("the repository lock was taken over by another process; leaving it alone");
                return Ok(());
            }
        }
        repo.delete_once(&backup_lock_key()).await
    }
}

/// Who holds the lock, if a backup or expire runs: a lock that
/// [`BackupLock::acquire`] would take over (a killed one) does not count.
pub async fn live_holder(repo: &Repository, stale_after: Duration) -> Result<Option<String>> {
    let Some((found, age)) = read_lock(repo).await? else { return Ok(None) };
    if stale_reason(found.as_ref(), age, stale_after, &host_name()).is_some() {
        return Ok(None);
    }
    Ok(Some(found.map_or_else(|| format!("lock '{}' of unknown content", backup_lock_key()), |l| l.describe())))
}

/// The current lock and its age; `Ok(None)` if there is none. Content that
/// does not parse comes back as `Some((None, age))`.
pub async fn read_lock(repo: &Repository) -> Result<Option<(Option<LockInfo>, Duration)>> {
    let key = backup_lock_key();
    let Some((bytes, modified)) = repo.get_once(&key).await? else { return Ok(None) };
    let info: Option<LockInfo> = frame::decode(&bytes).ok().and_then(|json| serde_json::from_slice(&json).ok());
    let started = info
        .as_ref()
        .and_then(|l| chrono::DateTime::parse_from_rfc3339(&l.started).ok())
        .map_or(modified, |t| t.to_utc());
    let age = (chrono::Utc::now() - started).to_std().unwrap_or(Duration::ZERO);
    Ok(Some((info, age)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_repo() -> Repository {
        Repository::in_memory()
    }

    async fn plant(repo: &Repository, info: &LockInfo) {
        let json = serde_json::to_vec(info).expect("json");
        let (object, _) = frame::encode(&json, Compression::None).expect("encode");
        repo.delete_once(&backup_lock_key()).await.expect("delete");
        assert!(repo.create_once(&backup_lock_key(), Bytes::from(object)).await.expect("put"));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn second_taker_is_refused_then_lock_is_released() {
        rt().block_on(async {
            let repo = memory_repo();
            let first = BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect("first");
            let err = BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect_err("second");
            let text = err.to_string();
            assert!(matches!(err, Error::Locked { .. }) && text.contains(&std::process::id().to_string()), "{text}");
            first.release(&repo).await.expect("release");
            assert!(read_lock(&repo).await.expect("read").is_none());
            BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect("free again");
        });
    }

    #[test]
    fn stale_locks_are_taken_over() {
        rt().block_on(async {
            let repo = memory_repo();
            // A dead PID on this host (PIDs above pid_max never run).
            let dead = LockInfo {
                command: "backup".into(),
                host: host_name(),
                pid: u32::MAX - 1,
                started: "2020-01-01T00:00:00Z".into(),
                token: "t".into(),
            };
            plant(&repo, &dead).await;
            let lock =
                BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect("taken over");
            assert_eq!(read_lock(&repo).await.expect("read").and_then(|l| l.0), Some(lock.info().clone()));
            lock.release(&repo).await.expect("release");

            // Another host: held while young, stale when old.
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let young = LockInfo {
                command: "backup".into(),
                host: "elsewhere".into(),
                pid: 1,
                started: now,
                token: "t".into(),
            };
            plant(&repo, &young).await;
            assert!(matches!(
                BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await,
                Err(Error::Locked { .. })
            ));
            let old = LockInfo { started: "2020-01-01T00:00:00Z".into(), ..young };
            plant(&repo, &old).await;
            BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup)
                .await
                .expect("old lock of another host");
        });
    }

    /// A backup and an expire exclude each other, and whoever is refused is
    /// told which command holds the lock.
    #[test]
    fn backup_and_expire_exclude_each_other() {
        rt().block_on(async {
            let repo = memory_repo();
            let stale = Duration::from_secs(3600);
            let expire = BackupLock::acquire(&repo, stale, LockFor::Expire).await.expect("expire takes it");
            let err = BackupLock::acquire(&repo, stale, LockFor::Backup).await.expect_err("backup refused");
            let text = err.to_string();
            assert!(matches!(&err, Error::Locked { running, .. } if running == "expire"), "{text}");
            assert!(text.contains("another expire of this repository is running"), "{text}");
            assert!(text.contains("'pgwal expire', PID"), "{text}");
            assert!(err.hint().is_some_and(|h| h.contains("expire")), "{:?}", err.hint());
            expire.release(&repo).await.expect("release");
            let backup = BackupLock::acquire(&repo, stale, LockFor::Backup).await.expect("backup takes it");
            let err = BackupLock::acquire(&repo, stale, LockFor::Expire).await.expect_err("expire refused");
            assert!(err.to_string().contains("another backup of this repository is running"), "{err}");
            assert_eq!(crate::error::exit_code(&err, crate::error::ExitRules::Plain), crate::error::exit::LOCKED);
            backup.release(&repo).await.expect("release");
        });
    }

    /// A lock written before the command was recorded is a backup's.
    #[test]
    fn a_lock_without_a_command_is_a_backups() {
        let old = r#"{"host":"h","pid":7,"started":"2020-01-01T00:00:00Z","token":"t"}"#;
        let info: LockInfo = serde_json::from_str(old).expect("parse");
        assert_eq!(info.command, "backup");
    }

    #[test]
    fn release_leaves_a_lock_taken_over_by_another() {
        rt().block_on(async {
            let repo = memory_repo();
            let mine = BackupLock::acquire(&repo, Duration::from_secs(3600), LockFor::Backup).await.expect("acquire");
            let other = LockInfo { token: "someone-else".into(), ..mine.info().clone() };
            plant(&repo, &other).await;
            mine.release(&repo).await.expect("release");
            assert_eq!(read_lock(&repo).await.expect("read").and_then(|l| l.0), Some(other));
        });
    }
}
