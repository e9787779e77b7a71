//! What `pgwal verify` is asked to check, from its flags. Built here, taken
//! by `ops::verify`.

use crate::cli::VerifyArgs;
use crate::error::{Error, Result};
use crate::repo::backup::{BackupId, BackupIdError};

/// Objects `verify` reads at once when `--jobs` is not given.
pub const DEFAULT_VERIFY_JOBS: usize = 4;

/// What `verify` is asked to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only this backup (and the WAL it needs).
    pub backup: Option<BackupId>,
    /// Names and sizes only, no data reads.
    pub quick: bool,
    /// Objects read in parallel.
    pub jobs: usize,
}

/// `verify`'s flags, the backup ID parsed.
pub fn verify_options(args: &VerifyArgs) -> Result<VerifyOptions> {
    let backup = args
        .backup
        .as_deref()
        .map(|b| {
            b.parse().map_err(|e: BackupIdError| Error::BadRequest {
                message: e.to_string(),
                hint: Some("'pgwal list' shows the backup IDs".into()),
            })
        })
        .transpose()?;
    Ok(VerifyOptions { backup, quick: args.quick, jobs: args.jobs.map_or(DEFAULT_VERIFY_JOBS, |j| j as usize) })
}
