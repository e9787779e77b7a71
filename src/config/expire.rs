//! What `pgwal expire` is asked to do: its flags' retention policy, or the
//! `[expire]` section's when no flag gives one. Built here, taken by
//! `ops::expire`.

use std::time::Duration;

use super::{Config, RetentionPolicy};
use crate::cli::ExpireArgs;

/// What `expire` is asked to do.
#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// The retention policy (flags over the config file).
    pub policy: RetentionPolicy,
    /// Print what would go, delete nothing.
    pub dry_run: bool,
    /// When a backup lock from another host counts as abandoned.
    pub lock_stale_after: Duration,
    /// `--backup ID`: delete this backup (instead of applying the policy).
    pub backup: Option<String>,
    /// `--with-dependents`: with `backup`, the backups depending on it too.
    pub with_dependents: bool,
}

/// `expire`'s flags over `[expire]`: either flag replaces the whole file
/// policy (a `--retain-days` alone does not keep the file's `retain_full`).
pub fn expire_options(cfg: &Config, args: &ExpireArgs) -> ExpireOptions {
    let flags = args.retain_full.is_some() || args.retain_days.is_some();
    let policy = if flags {
        RetentionPolicy { retain_full: args.retain_full, retain_days: args.retain_days }
    } else {
        RetentionPolicy { retain_full: cfg.expire.retain_full, retain_days: cfg.expire.retain_days }
    };
    ExpireOptions {
        policy,
        dry_run: args.dry_run,
        lock_stale_after: cfg.backup.lock_stale_after,
        backup: args.backup.clone(),
        with_dependents: args.with_dependents,
    }
}
