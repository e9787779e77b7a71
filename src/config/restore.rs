//! The options of `restore` and `standby`, validated from their arguments:
//! targets parsed, paths made absolute, the tablespace map checked for form.
//! Whether the target can be reached is the command's business.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::Config;
use crate::cli::{RestoreArgs, StandbyArgs, TargetDirArgs};
use crate::error::{Error, Result};
use crate::pg::recovery::{self, RecoveryTarget, TargetAction, TargetTimeline};
use crate::pg::Lsn;
use crate::repo::backup::BackupId;
use crate::storage::RepoUrl;

/// Storage retry deadline (and request timeout) of `restore`: a pack is 32 MiB.
pub const RESTORE_RETRY_DEADLINE: Duration = Duration::from_secs(120);

/// Standby settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    /// `primary_conninfo`.
    pub primary_conninfo: String,
    /// `primary_slot_name`.
    pub slot: Option<String>,
    /// Create the slot on the primary first.
    pub create_slot: bool,
}

/// Options of `restore` and `standby`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The target data directory, absolute.
    pub target_dir: PathBuf,
    /// A backup the user named.
    pub backup: Option<BackupId>,
    /// The recovery target; `None` recovers to the end of the archived WAL.
    pub target: Option<RecoveryTarget>,
    /// What the server does at the target (only with a target).
    pub action: Option<TargetAction>,
    /// Which timeline recovery follows.
    pub timeline: TargetTimeline,
    /// Original tablespace directory to new one.
    pub tablespace_map: Vec<(PathBuf, PathBuf)>,
    /// Restore over an existing copy.
    pub delta: bool,
    /// Packs processed in parallel.
    pub jobs: usize,
    /// Standby instead of point-in-time recovery.
    pub standby: Option<StandbySettings>,
    /// The repository, for `restore_command`.
    pub repo: RepoUrl,
    /// The config file in use, absolute, for `restore_command`.
    pub config_file: Option<PathBuf>,
    /// The repository key file in use, absolute, for `restore_command`
    /// (its path, never the key).
    pub encryption_key_file: Option<PathBuf>,
    /// How long storage calls are retried.
    pub retry_deadline: Duration,
}

fn bad(message: String, hint: &str) -> Error {
    Error::BadRequest { message, hint: Some(hint.to_string()) }
}

/// `path` made absolute against the working directory, `.` and `..` resolved lexically.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(Error::io("cannot read the working directory", "."))?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Parses `OLD_DIR=NEW_DIR` pairs: both absolute, each OLD_DIR once.
pub fn parse_tablespace_map(items: &[String]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for item in items {
        let hint = "give --tablespace-map OLD_DIR=NEW_DIR with absolute directories, OLD_DIR as the backup lists it";
        let Some((old, new)) = item.split_once('=') else {
            return Err(bad(format!("invalid --tablespace-map '{item}': expected OLD_DIR=NEW_DIR"), hint));
        };
        let (old, new) = (Path::new(old), Path::new(new));
        if !old.is_absolute() || !new.is_absolute() {
            return Err(bad(format!("invalid --tablespace-map '{item}': both directories must be absolute"), hint));
        }
        let (old, new) = (absolute(old)?, absolute(new)?);
        if out.iter().any(|(o, _)| *o == old) {
            return Err(bad(format!("--tablespace-map names '{}' twice", old.display()), hint));
        }
        out.push((old, new));
    }
    Ok(out)
}

fn jobs(requested: Option<usize>) -> Result<usize> {
    match requested {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(16)),
        Some(n) if (1..=64).contains(&n) => Ok(n),
        Some(n) => {
            Err(bad(format!("invalid --jobs {n}"), "choose from 1 to 64; each job holds about three packs (96 MiB)"))
        }
    }
}

fn common(dir: &TargetDirArgs, cfg: &Config) -> Result<RestoreOptions> {
    let repo = cfg.require_repo()?.clone();
    let config_file = cfg.file.as_deref().map(absolute).transpose()?;
    Ok(RestoreOptions {
        target_dir: absolute(&dir.target_dir)?,
        backup: None,
        target: None,
        action: None,
        timeline: TargetTimeline::Latest,
        tablespace_map: parse_tablespace_map(&dir.tablespace_map)?,
        delta: dir.delta,
        jobs: jobs(dir.jobs)?,
        standby: None,
        repo,
        config_file,
        encryption_key_file: cfg.encryption_key_file.clone(),
        retry_deadline: RESTORE_RETRY_DEADLINE,
    })
}

fn usage(e: impl std::fmt::Display) -> Error {
    Error::Usage(e.to_string())
}

/// The recovery target of restore's and drill's `--target-*` flags (clap
/// lets at most one be given); `None` without one.
pub fn recovery_target(
    time: Option<&str>,
    lsn: Option<&str>,
    xid: Option<&str>,
    name: Option<&str>,
    immediate: bool,
) -> Result<Option<RecoveryTarget>> {
    Ok(if let Some(t) = time {
        Some(RecoveryTarget::Time(recovery::parse_target_time(t).map_err(usage)?))
    } else if let Some(l) = lsn {
        Some(RecoveryTarget::Lsn(l.trim().parse::<Lsn>().map_err(usage)?))
    } else if let Some(x) = xid {
        Some(RecoveryTarget::Xid(recovery::parse_xid(x).map_err(usage)?))
    } else if let Some(n) = name {
        Some(RecoveryTarget::Name(recovery::parse_restore_point(n).map_err(usage)?))
    } else if immediate {
        Some(RecoveryTarget::Immediate)
    } else {
        None
    })
}

/// Validated options of `restore`.
pub fn restore_options(args: &RestoreArgs, cfg: &Config) -> Result<RestoreOptions> {
    let mut opts = common(&args.dir, cfg)?;
    opts.backup = args.backup.as_deref().map(str::parse::<BackupId>).transpose().map_err(usage)?;
    opts.target = recovery_target(
        args.target_time.as_deref(),
        args.target_lsn.as_deref(),
        args.target_xid.as_deref(),
        args.target_name.as_deref(),
        args.target_immediate,
    )?;
    let action = args.target_action.as_deref().map(recovery::parse_action).transpose().map_err(usage)?;
    // PostgreSQL's own default, said out loud in the settings.
    opts.action = opts.target.as_ref().map(|_| action.unwrap_or(TargetAction::Pause));
    opts.timeline = recovery::parse_timeline(&args.target_timeline).map_err(usage)?;
    Ok(opts)
}

/// Validated options of `standby`.
pub fn standby_options(args: &StandbyArgs, cfg: &Config) -> Result<RestoreOptions> {
    let mut opts = common(&args.dir, cfg)?;
    if args.primary_conninfo.trim().is_empty() {
        return Err(bad(
            "--primary-conninfo is empty".into(),
            "give how the standby reaches the primary, e.g. 'host=primary.example user=replicator'",
        ));
    }
    if let Some(slot) = &args.slot {
        let valid = !slot.is_empty()
            && slot.len() <= 63
            && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(bad(
                format!("invalid replication slot name '{slot}'"),
                "slot names are 1 to 63 lower-case letters, digits and underscores",
            ));
        }
    }
    opts.standby = Some(StandbySettings {
        primary_conninfo: args.primary_conninfo.clone(),
        slot: args.slot.clone(),
        create_slot: args.create_slot,
    });
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn cfg() -> Config {
        super::super::load(&super::super::Overrides {
            repo: Some("file:///r".into()),
            config: Some(PathBuf::from("/dev/null")),
            ..Default::default()
        })
        .expect("config")
    }

    fn parse(args: &[&str]) -> Result<RestoreOptions> {
        let cli = Cli::try_parse_from(args).map_err(|e| Error::Usage(e.to_string()))?;
        match &cli.command {
            Command::Restore(a) => restore_options(a, &cfg()),
            Command::Standby(a) => standby_options(a, &cfg()),
            _ => panic!("not restore or standby"),
        }
    }

    #[test]
    fn restore_targets() {
        let o =
            parse(&["pgwal", "restore", "--target-dir", "/d", "--target-time", "2026-11-23 14:03:27+01"]).expect("ok");
        assert!(matches!(o.target, Some(RecoveryTarget::Time(_))));
        assert_eq!(o.action, Some(TargetAction::Pause), "pause by default, as PostgreSQL");
        assert_eq!(o.timeline, TargetTimeline::Latest);
        assert_eq!(o.config_file.as_deref(), Some(Path::new("/dev/null")));
        let o = parse(&["pgwal", "restore", "--target-dir", "/d"]).expect("ok");
        assert_eq!((o.target, o.action), (None, None));
        let o = parse(&[
            "pgwal",
            "restore",
            "--target-dir",
            "/d",
            "--target-lsn",
            "0/3000060",
            "--target-action",
            "promote",
        ])
        .expect("ok");
        assert_eq!(o.target, Some(RecoveryTarget::Lsn(Lsn(0x300_0060))));
        assert_eq!(o.action, Some(TargetAction::Promote));
        let o =
            parse(&["pgwal", "restore", "--target-dir", "/d", "--target-immediate", "--target-timeline", "current"])
                .expect("ok");
        assert_eq!((o.target, o.timeline), (Some(RecoveryTarget::Immediate), TargetTimeline::Current));
    }

    #[test]
    fn restore_refusals_are_usage_errors() {
        for args in [
            &["pgwal", "restore", "--target-dir", "/d", "--target-time", "soon"][..],
            &["pgwal", "restore", "--target-dir", "/d", "--target-lsn", "3000060"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-xid", "x"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-name", ""],
            &["pgwal", "restore", "--target-dir", "/d", "--target-xid", "5", "--target-name", "a"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-immediate", "--target-lsn", "0/1"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-action", "promote"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-immediate", "--target-action", "resume"],
            &["pgwal", "restore", "--target-dir", "/d", "--target-timeline", "0"],
            &["pgwal", "restore", "--target-dir", "/d", "--backup", "latest"],
            &["pgwal", "restore", "--target-dir", "/d", "--tablespace-map", "/a"],
            &["pgwal", "restore", "--target-dir", "/d", "--tablespace-map", "a=/b"],
            &["pgwal", "restore", "--target-dir", "/d", "--tablespace-map", "/a=/b", "--tablespace-map", "/a/=/c"],
            &["pgwal", "restore", "--target-dir", "/d", "--jobs", "0"],
            &["pgwal", "restore"],
            &["pgwal", "standby", "--target-dir", "/d", "--primary-conninfo", "host=x", "--slot", "Bad-Name"],
            &["pgwal", "standby", "--target-dir", "/d", "--primary-conninfo", "host=x", "--create-slot"],
            &["pgwal", "standby", "--target-dir", "/d", "--primary-conninfo", " "],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(crate::error::exit_code(&err, crate::error::ExitRules::Plain), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn standby_settings() {
        let o = parse(&[
            "pgwal",
            "standby",
            "--target-dir",
            "/d/./x/../s",
            "--primary-conninfo",
            "host=p user=r",
            "--slot",
            "standby_1",
            "--create-slot",
            "--tablespace-map",
            "/ts/old=/ts/new",
        ])
        .expect("ok");
        assert_eq!(o.target_dir, PathBuf::from("/d/s"));
        assert_eq!(o.tablespace_map, vec![(PathBuf::from("/ts/old"), PathBuf::from("/ts/new"))]);
        let s = o.standby.expect("standby");
        assert_eq!(
            (s.primary_conninfo.as_str(), s.slot.as_deref(), s.create_slot),
            ("host=p user=r", Some("standby_1"), true)
        );
        assert_eq!(o.target, None);
    }
}
