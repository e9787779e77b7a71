//! The `[drill]` section: where `pgwal drill` puts its scratch copy and how
//! long a drill may take. Kept apart from `config/mod.rs` so that the
//! command's settings live in one small place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Config;
use crate::cli::DrillArgs;
use crate::error::{Error, Result};
use crate::pg::recovery::RecoveryTarget;
use crate::repo::backup::BackupId;
use crate::storage::RepoUrl;

/// Where scratch copies go when `drill.dir` is not set: `/var/tmp` survives
/// reboots less often than it is cleaned, and is rarely a small tmpfs.
pub const DEFAULT_DRILL_DIR: &str = "/var/tmp/pgwal-drill";

/// How long one drill may take when `drill.timeout` is not set.
pub const DEFAULT_DRILL_TIMEOUT: Duration = Duration::from_secs(3600);

/// The longest `drill.timeout` accepted.
pub const MAX_DRILL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// `[drill]` as the file spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSection {
    dir: Option<PathBuf>,
    timeout: Option<String>,
}

/// Validated `[drill]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillOptions {
    /// The directory under which each drill makes its scratch directory (absolute).
    pub dir: PathBuf,
    /// The bound on the whole drill: restore, recovery and checks.
    pub timeout: Duration,
}

impl Default for DrillOptions {
    fn default() -> DrillOptions {
        DrillOptions { dir: PathBuf::from(DEFAULT_DRILL_DIR), timeout: DEFAULT_DRILL_TIMEOUT }
    }
}

/// Validates the section read from `file`.
pub fn drill_options(section: &DrillSection, file: &Path) -> Result<DrillOptions> {
    let mut out = DrillOptions::default();
    if let Some(dir) = &section.dir {
        if !dir.is_absolute() {
            return Err(Error::config(
                format!("invalid drill.dir '{}' in '{}': not an absolute path", dir.display(), file.display()),
                format!("give an absolute directory such as \"{DEFAULT_DRILL_DIR}\""),
            ));
        }
        out.dir = dir.clone();
    }
    if let Some(t) = &section.timeout {
        out.timeout = super::parse_duration(t)
            .filter(|d| *d >= Duration::from_secs(10) && *d <= MAX_DRILL_TIMEOUT)
            .ok_or_else(|| {
                Error::config(
                    format!("invalid drill.timeout '{t}' in '{}'", file.display()),
                    "give a duration from 10s to 48h such as \"30m\" or \"2h\"",
                )
            })?;
    }
    Ok(out)
}

/// What one `pgwal drill` run is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillRequest {
    /// A backup the user named; else the newest complete one.
    pub backup: Option<BackupId>,
    /// The recovery target; `None`: the newest archived WAL.
    pub target: Option<RecoveryTarget>,
    /// `[drill]` settings.
    pub options: DrillOptions,
    /// Keep the scratch directory.
    pub keep: bool,
    /// The repository, for `restore_command`.
    pub repo: RepoUrl,
    /// The config file in use, absolute, for `restore_command`.
    pub config_file: Option<PathBuf>,
    /// The repository key file in use, for `restore_command`.
    pub encryption_key_file: Option<PathBuf>,
}

/// Validated request of `drill`.
pub fn drill_request(args: &DrillArgs, cfg: &Config) -> Result<DrillRequest> {
    let backup = args.backup.as_deref().map(str::parse::<BackupId>).transpose().map_err(|e| Error::BadRequest {
        message: e.to_string(),
        hint: Some("'pgwal list' shows the backup IDs".into()),
    })?;
    let target = super::restore::recovery_target(
        args.target_time.as_deref(),
        args.target_lsn.as_deref(),
        args.target_xid.as_deref(),
        args.target_name.as_deref(),
        args.target_immediate,
    )?;
    // The scratch copy must never land in the live cluster's data directory.
    if let Some(pgdata) = cfg.pgdata.as_deref().map(super::restore::absolute).transpose()? {
        let dir = &cfg.drill.dir;
        if dir.starts_with(&pgdata) {
            return Err(Error::config(
                format!("drill.dir '{}' overlaps the data directory '{}'", dir.display(), pgdata.display()),
                format!("set drill.dir to a directory of its own, e.g. \"{DEFAULT_DRILL_DIR}\""),
            ));
        }
    }
    Ok(DrillRequest {
        backup,
        target,
        options: cfg.drill.clone(),
        keep: args.keep,
        repo: cfg.require_repo()?.clone(),
        config_file: cfg.file.as_deref().map(super::restore::absolute).transpose()?,
        encryption_key_file: cfg.encryption_key_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DrillOptions> {
        let section: DrillSection = toml::from_str(text).map_err(|e| Error::config(e.to_string(), ""))?;
        drill_options(&section, Path::new("/etc/pgwal/pgwal.toml"))
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(parse("").expect("empty"), DrillOptions::default());
        let o = parse("dir = \"/srv/drill\"\ntimeout = \"2h\"").expect("valid");
        assert_eq!((o.dir, o.timeout), (PathBuf::from("/srv/drill"), Duration::from_secs(7200)));
        for bad in
            ["dir = \"rel/dir\"", "timeout = \"soon\"", "timeout = \"1s\"", "timeout = \"100h\"", "dirs = \"/x\""]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_scratch_copy_never_goes_into_the_data_directory() {
        use clap::Parser;
        let file = std::env::temp_dir().join(format!("pgwal-drill-config-{}.toml", std::process::id()));
        std::fs::write(&file, "repo = \"file:///r\"\n[drill]\ndir = \"/srv/pg/data/drill\"\n").expect("write");
        let cli = crate::cli::Cli::try_parse_from(["pgwal", "drill", "--target-immediate", "--keep"]).expect("parse");
        let crate::cli::Command::Drill(args) = &cli.command else { panic!("drill") };
        let load = |pgdata: &str| {
            super::super::load(&super::super::Overrides {
                config: Some(file.clone()),
                pgdata: Some(pgdata.into()),
                ..Default::default()
            })
            .expect("config")
        };
        let e = drill_request(args, &load("/srv/pg/data")).expect_err("inside PGDATA");
        assert!(e.to_string().contains("overlaps the data directory"), "{e}");
        let req = drill_request(args, &load("/srv/pg/other")).expect("elsewhere");
        assert_eq!((req.target, req.keep), (Some(RecoveryTarget::Immediate), true));
        assert_eq!(req.options.dir, PathBuf::from("/srv/pg/data/drill"));
        std::fs::remove_file(&file).expect("cleanup");
    }
}
