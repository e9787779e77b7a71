//! What `pgwal backup` is asked to do: the `[backup]` section with the
//! command's flags over it (`--checkpoint`, `--primary-conninfo`), and the
//! connections it makes. Built here, taken by `ops::backup`.

use std::path::PathBuf;

use super::{BackupOptions, CheckpointMode, Config};
use crate::cli::{BackupArgs, BackupKind, CheckpointArg};
use crate::db::{ConnTarget, PgEnv};
use crate::error::{Error, Result};
use crate::repo::backup::BackupType;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Full, differential or incremental (`--type`, else `backup.type`).
    pub kind: BackupType,
    /// The data directory; asked from the server when `None`.
    pub pgdata: Option<PathBuf>,
    /// How to reach the server.
    pub conn: ConnTarget,
    /// How to reach the primary, for a backup taken from a standby.
    pub primary: Option<ConnTarget>,
    /// `[backup]` options.
    pub opts: BackupOptions,
}

impl BackupRequest {
    /// Refuses what cannot be done before anything is opened or created
    /// (nothing, for now: every type is taken; a diff/incr without a parent
    /// becomes a full one).
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// `backup`'s flags over `[backup]`, validated ([`BackupRequest::validate`]).
pub fn request(cfg: &Config, args: &BackupArgs) -> Result<BackupRequest> {
    let mut opts = cfg.backup.clone();
    match args.checkpoint {
        Some(CheckpointArg::Fast) => opts.checkpoint = CheckpointMode::Fast,
        Some(CheckpointArg::Spread) => opts.checkpoint = CheckpointMode::Spread,
        None => {}
    }
    if let Some(p) = args.primary_conninfo.clone().filter(|p| !p.is_empty()) {
        opts.primary_conninfo = Some(p);
    }
    let request = BackupRequest {
        kind: match args.kind {
            Some(BackupKind::Full) => BackupType::Full,
            Some(BackupKind::Diff) => BackupType::Diff,
            Some(BackupKind::Incr) => BackupType::Incr,
            None => opts.kind,
        },
        pgdata: cfg.pgdata.clone(),
        conn: cfg.conn_target()?,
        primary: opts.primary_conninfo.as_deref().map(primary_target).transpose()?,
        opts,
    };
    request.validate()?;
    Ok(request)
}

/// The primary's connection (`--primary-conninfo`, `PGWAL_PRIMARY_CONNINFO`
/// or `backup.primary_conninfo`) merged with the libpq environment.
fn primary_target(conninfo: &str) -> Result<ConnTarget> {
    ConnTarget::new(Some(conninfo), &PgEnv::from_process()).map_err(|e| {
        Error::config(
            format!("--primary-conninfo / PGWAL_PRIMARY_CONNINFO: {}", e.one_line()),
            "give the primary's connection in libpq key=value form, e.g. \"host=db1 user=postgres\"",
        )
    })
}
