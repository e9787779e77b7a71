//! `pgwal rekey --new-key-file PATH`: wraps an encrypted repository's data
//! keys with a new repository key (see `repo::keyring`), under the backup
//! lock so that two rekeys cannot delete each other's keyrings.

use std::time::Duration;

use crate::error::Result;
use crate::repo::keyring::{RekeyOutcome, RekeyStep, RepositoryKey};
use crate::repo::lock::{BackupLock, LockFor};
use crate::repo::Repository;

/// Test hook: the process kills itself with SIGKILL right after this step
/// ("keyring", "pointer", "deleted"), a real crash at a known point. Only in
/// builds with the test-support feature.
pub const CRASH_AFTER_ENV: &str = "PGWAL_TEST_REKEY_CRASH_AFTER";

/// Changes the key of `repo` (opened with its current key) to `new_key`.
pub async fn rekey(repo: &Repository, new_key: &RepositoryKey, lock_stale_after: Duration) -> Result<RekeyOutcome> {
    // Opens the keyring with the current key before anything is written.
    repo.check_format().await?;
    let lock = BackupLock::acquire(repo, lock_stale_after, LockFor::Rekey).await?;
    let crash = crash_point();
    let result = repo.rekey(new_key, crash).await;
    if crash.is_some() && result.is_ok() {
        // SAFETY: kill(2) on our own PID; the test wants a real SIGKILL.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    lock.release(repo).await?;
    result
}

#[cfg(feature = "test-support")]
fn crash_point() -> Option<RekeyStep> {
    match std::env::var(CRASH_AFTER_ENV).ok()?.as_str() {
        "keyring" => Some(RekeyStep::NewKeyringStored),
        "pointer" => Some(RekeyStep::PointerReplaced),
        "deleted" => Some(RekeyStep::OldKeyringsDeleted),
        _ => None,
    }
}

#[cfg(not(feature = "test-support"))]
fn crash_point() -> Option<RekeyStep> {
    None
}

/// The summary line.
pub fn render(outcome: &RekeyOutcome) -> String {
    let generations: Vec<String> = outcome.generations.iter().map(u32::to_string).collect();
    format!(
        "rekeyed: keyring '{}' now wraps data key generation(s) {} with the new key; retired {} older keyring(s)\n",
        outcome.keyring,
        generations.join(", "),
        outcome.retired.len()
    )
}
