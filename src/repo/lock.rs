//! The backup lock: one object, `lock/backup`, created create-only, that
//! keeps two backups of one repository from running at once.
//!
//! The object holds who took it (host, PID, start time, a random token). A
//! lock is stale, and is taken over, when its PID no longer runs a pgwal on
//! this host (a killed backup), or when it comes from another host and is
//! older than `backup.lock_stale_after`. Taking over is delete-then-create:
//! two processes taking over the same stale lock at the same instant could
//! both succeed (object stores have no conditional delete); release only
//! deletes a lock that still holds this process's token.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::backup::backup_lock_key;
use crate::repo::frame::{self, Compression};
use crate::repo::Repository;

/// What the lock object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
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
            "lock '{}' held by pgwal PID {} on host '{}' since {}",
            backup_lock_key(),
            self.pid,
            self.host,
            self.started
        )
    }
}

/// A held backup lock. Release it with [`BackupLock::release`]; if the
/// process dies instead, the next backup on this host takes it over.
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
            Some(format!("PID {} on this host no longer runs (a killed backup)", l.pid))
        }
        Some(l) if l.host != here && age > stale_after => {
            Some(format!("host '{}' took it {}s ago, beyond backup.lock_stale_after", l.host, age.as_secs()))
        }
        Some(_) => None,
    }
}

impl BackupLock {
    /// Takes the lock, taking over a stale one; fails with [`Error::Locked`]
    /// naming the holder if another backup runs.
    pub async fn acquire(repo: &Repository, stale_after: Duration) -> Result<BackupLock> {
        let here = host_name();
        let info = LockInfo {
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
                    crate::log_notice!("taking over the stale backup lock: {why}");
                    repo.delete_once(&key).await?;
                }
                None => {
                    let holder = found
                        .map_or_else(|| format!("lock '{}' of unknown content", backup_lock_key()), |l| l.describe());
                    return Err(Error::Locked { holder });
                }
            }
        }
        Err(Error::Locked {
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
                crate::log_warn!("the backup lock was taken over by another process; leaving it alone");
                return Ok(());
            }
        }
        repo.delete_once(&backup_lock_key()).await
    }
}

/// Who holds the backup lock, if a backup is being taken: a lock that
/// [`BackupLock::acquire`] would take over (a killed backup) does not count.
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
            let first = BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("first");
            let err = BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect_err("second");
            let text = err.to_string();
            assert!(matches!(err, Error::Locked { .. }) && text.contains(&std::process::id().to_string()), "{text}");
            first.release(&repo).await.expect("release");
            assert!(read_lock(&repo).await.expect("read").is_none());
            BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("free again");
        });
    }

    #[test]
    fn stale_locks_are_taken_over() {
        rt().block_on(async {
            let repo = memory_repo();
            // A dead PID on this host (PIDs above pid_max never run).
            let dead = LockInfo {
                host: host_name(),
                pid: u32::MAX - 1,
                started: "2020-01-01T00:00:00Z".into(),
                token: "t".into(),
            };
            plant(&repo, &dead).await;
            let lock = BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("taken over");
            assert_eq!(read_lock(&repo).await.expect("read").and_then(|l| l.0), Some(lock.info().clone()));
            lock.release(&repo).await.expect("release");

            // Another host: held while young, stale when old.
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let young = LockInfo { host: "elsewhere".into(), pid: 1, started: now, token: "t".into() };
            plant(&repo, &young).await;
            assert!(matches!(BackupLock::acquire(&repo, Duration::from_secs(3600)).await, Err(Error::Locked { .. })));
            let old = LockInfo { started: "2020-01-01T00:00:00Z".into(), ..young };
            plant(&repo, &old).await;
            BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("old lock of another host");
        });
    }

    #[test]
    fn release_leaves_a_lock_taken_over_by_another() {
        rt().block_on(async {
            let repo = memory_repo();
            let mine = BackupLock::acquire(&repo, Duration::from_secs(3600)).await.expect("acquire");
            let other = LockInfo { token: "someone-else".into(), ..mine.info().clone() };
            plant(&repo, &other).await;
            mine.release(&repo).await.expect("release");
            assert_eq!(read_lock(&repo).await.expect("read").and_then(|l| l.0), Some(other));
        });
    }
}
