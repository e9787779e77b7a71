//! Configuration: the TOML file, `PGWAL_*`/libpq environment and flags,
//! merged once (flag, then environment, then file) and validated into the
//! typed options the commands take. The one place configuration is read.

pub mod backup;
pub mod daemon;
pub mod drill;
pub mod encryption;
pub mod expire;
pub mod restore;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::storage::{AzureOptions, GcsOptions, RepoUrl, S3Options, StoreOptions};

/// Where the config file is looked for when neither `--config` nor `PGWAL_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pgwal/pgwal.toml";

/// zstd level when none is configured. Measured on real WAL (pgbench traffic,
/// 84% full-page images): level 1 is 1.8x faster than level 3 and compresses
/// this data better (4.31 against 4.10), because full-page images repeat
/// whole pages that level 1's fast matcher finds as well as level 3's.
pub const DEFAULT_COMPRESS_LEVEL: i32 = 1;

/// Retry deadline for storage calls of `archive` and `fetch` when none is configured.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(20);

/// Storage retry deadline of `backup` when none is configured: a pack is
/// 32 MiB, so one request takes longer than a WAL segment's.
pub const DEFAULT_BACKUP_RETRY_DEADLINE: Duration = Duration::from_secs(120);

/// Files one `archive` call stores at once when it pushes ahead. Measured on
/// the 2-core test machine (see README): stores overlap their fsyncs or
/// round trips, and compression already uses every core per file.
pub const DEFAULT_ARCHIVE_PARALLEL: usize = 4;

/// Ready files one `archive` call may push ahead of PostgreSQL.
pub const DEFAULT_ARCHIVE_AHEAD: usize = 32;

/// Whether `archive` inside a data directory uses the long-lived archiving
/// helper by default (off until measured to beat the one-process path).
pub const DEFAULT_ARCHIVE_HELPER: bool = false;

/// Segments `fetch`'s background prefetcher keeps ready (16 MiB each).
pub const DEFAULT_PREFETCH: usize = 8;

/// How long `backup` waits for its WAL to reach the repository by default.
pub const DEFAULT_WAL_TIMEOUT: Duration = Duration::from_secs(300);

/// When a backup lock taken on another host counts as abandoned by default.
pub const DEFAULT_LOCK_STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// What the command line (and clap's environment fallbacks) supplied.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config` / `PGWAL_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--repo` / `PGWAL_REPO`.
    pub repo: Option<String>,
    /// `--pgdata` / `PGDATA`.
    pub pgdata: Option<PathBuf>,
    /// `--conninfo` / `PGWAL_CONNINFO`.
    pub conninfo: Option<String>,
    /// `--encryption-key-file` / `PGWAL_ENCRYPTION_KEY_FILE`.
    pub encryption_key_file: Option<PathBuf>,
}

/// Options of `archive`.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// zstd level, 1-19.
    pub compress_level: i32,
    /// How long to keep retrying transient storage errors.
    pub retry_deadline: Duration,
    /// Files stored at once when a call also pushes ready files ahead (at least 1).
    pub parallel: usize,
    /// How many files with a `.ready` status one call may push ahead of
    /// PostgreSQL (0: none).
    pub ahead: usize,
    /// Whether a call inside a data directory hands its file to the
    /// long-lived archiving helper (and starts one when none runs).
    pub helper: bool,
}

/// Options of `fetch`.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// How long to keep retrying transient storage errors.
    pub retry_deadline: Duration,
    /// How many segments the background prefetcher keeps ready in the spool (0: no prefetching).
    pub prefetch: usize,
}

/// Options of `backup`.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The type `backup` takes when `--type` is not given (`backup.type`).
    pub kind: crate::repo::backup::BackupType,
    /// zstd level for packs, 1-19.
    pub compress_level: i32,
    /// Files read, compressed and uploaded in parallel (at least 1).
    pub workers: usize,
    /// How long to keep retrying transient storage errors.
    pub retry_deadline: Duration,
    /// How long to wait for the backup's WAL to arrive in the repository.
    pub wal_timeout: Duration,
    /// Age after which another host's backup lock is taken over.
    pub lock_stale_after: Duration,
    /// The checkpoint `pg_backup_start` asks for.
    pub checkpoint: CheckpointMode,
    /// How to reach the primary when the backup is taken from a standby
    /// (`backup.primary_conninfo`, `PGWAL_PRIMARY_CONNINFO`, `--primary-conninfo`).
    pub primary_conninfo: Option<String>,
}

/// The checkpoint a backup starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Paced by `checkpoint_completion_target`, as a scheduled checkpoint
    /// (pg_basebackup's default): no burst of writes on a busy server, but
    /// the backup may wait minutes before it reads a file.
    Spread,
    /// Immediate: the backup starts at once, the server writes all dirty
    /// buffers as fast as it can. The default: what `pgwal backup` always
    /// did (existing cron lines keep their timing) and what WAL-G does.
    #[default]
    Fast,
}

impl CheckpointMode {
    /// The value as the config file and `--checkpoint` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::Spread => "spread",
            CheckpointMode::Fast => "fast",
        }
    }
}

/// The most full backups a retention policy keeps by count.
pub const MAX_RETAIN_FULL: i64 = 10_000;

/// The most days a retention policy keeps (100 years).
pub const MAX_RETAIN_DAYS: i64 = 36_500;

/// The retention policy of `expire`: from the `[expire]` section (`None`
/// where the file says nothing) or from expire's flags. Each rule is from 1
/// to its maximum ([`MAX_RETAIN_FULL`], [`MAX_RETAIN_DAYS`]) where the
/// config file and the flags are read; the expire planner checks it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep this many newest full backups.
    pub retain_full: Option<u32>,
    /// Keep what recovers to every point of this many days.
    pub retain_days: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// The repository, if configured anywhere.
    pub repo: Option<RepoUrl>,
    /// The data directory, if configured.
    pub pgdata: Option<PathBuf>,
    /// libpq connection string, if configured.
    pub conninfo: Option<String>,
    /// `archive` options.
    pub archive: ArchiveOptions,
    /// `fetch` options.
    pub fetch: FetchOptions,
    /// `backup` options.
    pub backup: BackupOptions,
    /// `expire`'s retention policy from the file.
    pub expire: RetentionPolicy,
    /// Object store settings.
    pub store: StoreOptions,
    /// `drill`'s scratch directory and time bound (`[drill]`).
    pub drill: drill::DrillOptions,
    /// `[schedule]`, `[metrics]` and `[health]`, checked by `daemon` alone.
    pub daemon: daemon::DaemonSections,
    /// The repository key file (absolute), if configured anywhere; read
    /// only when a command opens the repository ([`Config::repository_key`]).
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    repo: Option<String>,
    pgdata: Option<PathBuf>,
    conninfo: Option<String>,
    #[serde(default)]
    archive: ArchiveSection,
    #[serde(default)]
    fetch: FetchSection,
    #[serde(default)]
    backup: BackupSection,
    #[serde(default)]
    expire: ExpireSection,
    #[serde(default)]
    s3: S3Options,
    #[serde(default)]
    gcs: GcsOptions,
    #[serde(default)]
    azure: AzureOptions,
    #[serde(default)]
    drill: drill::DrillSection,
    #[serde(default)]
    schedule: daemon::ScheduleSection,
    #[serde(default)]
    metrics: daemon::MetricsSection,
    #[serde(default)]
    health: daemon::HealthSection,
    #[serde(default)]
    encryption: encryption::EncryptionSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveSection {
    compress_level: Option<i32>,
    retry_deadline: Option<String>,
    parallel: Option<usize>,
    ahead: Option<usize>,
    helper: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchSection {
    retry_deadline: Option<String>,
    prefetch: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupSection {
    #[serde(rename = "type")]
    kind: Option<String>,
    compress_level: Option<i32>,
    workers: Option<usize>,
    retry_deadline: Option<String>,
    wal_timeout: Option<String>,
    lock_stale_after: Option<String>,
    checkpoint: Option<String>,
    primary_conninfo: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireSection {
    retain_full: Option<i64>,
    retain_days: Option<i64>,
}

impl FileConfig {
    fn has_secrets(&self) -> bool {
        self.s3.secret_access_key.is_some() || self.s3.session_token.is_some() || self.azure.access_key.is_some()
    }
}

/// Parses a duration such as `500ms`, `20s`, `2m` or `6h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

fn deadline(key: &str, value: Option<&str>, file: &Path) -> Result<Duration> {
    let Some(v) = value else { return Ok(DEFAULT_RETRY_DEADLINE) };
    match parse_duration(v) {
        Some(d) if d <= Duration::from_secs(3600) => Ok(d),
        _ => Err(Error::config(
            format!("invalid {key} '{v}' in '{}'", file.display()),
            "give a duration of at most an hour such as \"500ms\", \"20s\" or \"2m\"",
        )),
    }
}

/// A count key, within `range`.
fn bounded(
    key: &str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    file: &Path,
) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(n) if range.contains(&n) => Ok(n),
        Some(n) => Err(Error::config(
            format!("invalid {key} {n} in '{}'", file.display()),
            format!("choose from {} to {}", range.start(), range.end()),
        )),
    }
}

/// A duration key of the `[backup]` section, between one second and `max`.
fn backup_duration(key: &str, value: Option<&str>, default: Duration, max: Duration, file: &Path) -> Result<Duration> {
    let Some(v) = value else { return Ok(default) };
    match parse_duration(v) {
        Some(d) if d >= Duration::from_secs(1) && d <= max => Ok(d),
        _ => Err(Error::config(
            format!("invalid backup.{key} '{v}' in '{}'", file.display()),
            format!("give a duration from 1s to {}m such as \"30s\" or \"10m\"", max.as_secs() / 60),
        )),
    }
}

/// Turns a TOML error into one line with its line number.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
    let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
    let msg = e.message().replace('\n', " ");
    Error::config(
        format!("invalid config file '{}'{at}: {}", path.display(), msg.trim()),
        "see the annotated example config/pgwal.toml and 'man pgwal' for the valid keys",
    )
}

fn read_file(path: &Path, explicit: bool) -> Result<Option<(FileConfig, PathBuf)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
        Err(e) => {
            return Err(Error::config(
                format!("cannot read config file '{}': {e}", path.display()),
                "check the path given by --config or PGWAL_CONFIG and that this user may read it",
            ))
        }
    };
    let parsed: FileConfig = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
    if parsed.has_secrets() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(Error::io("cannot stat config file", path))?.permissions().mode();
        if mode & 0o004 != 0 {
            return Err(Error::config(
                format!(
                    "config file '{}' holds secrets but every user can read it (mode {:o})",
                    path.display(),
                    mode & 0o777
                ),
                format!("chmod 600 '{}' (or 640 with the postgres group)", path.display()),
            ));
        }
    }
    Ok(Some((parsed, path.to_path_buf())))
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Loads and validates the configuration.
pub fn load(o: &Overrides) -> Result<Config> {
    let (path, explicit) = match &o.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let (file, file_path) = match read_file(&path, explicit)? {
        Some((f, p)) => (f, Some(p)),
        None => (FileConfig::default(), None),
    };
    let shown = file_path.clone().unwrap_or_else(|| PathBuf::from("(no config file)"));

    let repo_text = non_empty(o.repo.clone()).or(non_empty(file.repo));
    let repo = repo_text
        .map(|r| {
            r.parse::<RepoUrl>().map_err(|e| {
                Error::config(
                    e.to_string(),
                    "use file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix",
                )
            })
        })
        .transpose()?;

    let level = file.archive.compress_level.unwrap_or(DEFAULT_COMPRESS_LEVEL);
    if !(1..=19).contains(&level) {
        return Err(Error::config(
            format!("invalid archive.compress_level {level} in '{}'", shown.display()),
            "choose a zstd level from 1 (fastest, the default) to 19",
        ));
    }
    let archive = ArchiveOptions {
        compress_level: level,
        retry_deadline: deadline("archive.retry_deadline", file.archive.retry_deadline.as_deref(), &shown)?,
        parallel: bounded("archive.parallel", file.archive.parallel, DEFAULT_ARCHIVE_PARALLEL, 1..=64, &shown)?,
        ahead: bounded("archive.ahead", file.archive.ahead, DEFAULT_ARCHIVE_AHEAD, 0..=1024, &shown)?,
        helper: file.archive.helper.unwrap_or(DEFAULT_ARCHIVE_HELPER),
    };
    let fetch = FetchOptions {
        retry_deadline: deadline("fetch.retry_deadline", file.fetch.retry_deadline.as_deref(), &shown)?,
        prefetch: bounded("fetch.prefetch", file.fetch.prefetch, DEFAULT_PREFETCH, 0..=1024, &shown)?,
    };
    let backup_level = file.backup.compress_level.unwrap_or(level);
    if !(1..=19).contains(&backup_level) {
        return Err(Error::config(
            format!("invalid backup.compress_level {backup_level} in '{}'", shown.display()),
            "choose a zstd level from 1 (fastest) to 19; without it backups use archive.compress_level",
        ));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match file.backup.workers {
        None | Some(0) => cores,
        Some(n) if n <= 64 => n,
        Some(n) => {
            let hint = "choose from 1 to 64, or 0 for one per core (the default); each worker holds two 32 MiB buffers";
            return Err(Error::config(format!("invalid backup.workers {n} in '{}'", shown.display()), hint));
        }
    };
    let b = &file.backup;
    let backup = BackupOptions {
        kind: match b.kind.as_deref() {
            None | Some("full") => crate::repo::backup::BackupType::Full,
            Some("diff") => crate::repo::backup::BackupType::Diff,
            Some("incr") => crate::repo::backup::BackupType::Incr,
            Some(other) => {
                return Err(Error::config(
                    format!("invalid backup.type '{other}' in '{}'", shown.display()),
                    "give \"full\" (the default), \"diff\" (changes since the newest full) or \"incr\" (changes since the newest backup)",
                ))
            }
        },
        compress_level: backup_level,
        workers,
        retry_deadline: backup_duration(
            "retry_deadline",
            b.retry_deadline.as_deref(),
            DEFAULT_BACKUP_RETRY_DEADLINE,
            Duration::from_secs(3600),
            &shown,
        )?,
        wal_timeout: backup_duration(
            "wal_timeout",
            b.wal_timeout.as_deref(),
            DEFAULT_WAL_TIMEOUT,
            Duration::from_secs(24 * 3600),
            &shown,
        )?,
        lock_stale_after: backup_duration(
            "lock_stale_after",
            b.lock_stale_after.as_deref(),
            DEFAULT_LOCK_STALE_AFTER,
            Duration::from_secs(7 * 24 * 3600),
            &shown,
        )?,
        checkpoint: match b.checkpoint.as_deref() {
            None => CheckpointMode::default(),
            Some("spread") => CheckpointMode::Spread,
            Some("fast") => CheckpointMode::Fast,
            Some(other) => {
                return Err(Error::config(
                    format!("invalid backup.checkpoint '{other}' in '{}'", shown.display()),
                    "give \"fast\" (the default: immediate) or \"spread\" (paced like a scheduled checkpoint)",
                ))
            }
        },
        primary_conninfo: non_empty(b.primary_conninfo.clone()),
    };
    let retain = |key: &str, value: Option<i64>, max: i64| -> Result<Option<u32>> {
        match value {
            None => Ok(None),
            Some(n) if (1..=max).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(Error::config(
                format!("invalid expire.{key} {n} in '{}'", shown.display()),
                format!("give a number from 1 to {max}; leave the key out to not use that rule"),
            )),
        }
    };
    let expire = RetentionPolicy {
        retain_full: retain("retain_full", file.expire.retain_full, MAX_RETAIN_FULL)?,
        retain_days: retain("retain_days", file.expire.retain_days, MAX_RETAIN_DAYS)?,
    };
    let drill = drill::drill_options(&file.drill, &shown)?;
    // The [s3], [gcs] and [azure] sections are the storage options themselves.
    let store = StoreOptions { s3: file.s3, gcs: file.gcs, azure: file.azure };
    let encryption_key_file = o
        .encryption_key_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or(file.encryption.key_file.filter(|p| !p.as_os_str().is_empty()))
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    Ok(Config {
        file: file_path,
        repo,
        pgdata: o.pgdata.clone().filter(|p| !p.as_os_str().is_empty()).or(file.pgdata),
        conninfo: non_empty(o.conninfo.clone()).or(file.conninfo),
        archive,
        fetch,
        backup,
        expire,
        store,
        drill,
        daemon: daemon::DaemonSections { schedule: file.schedule, metrics: file.metrics, health: file.health },
        encryption_key_file,
    })
}

impl Config {
    /// How to reach PostgreSQL: `conninfo` merged with the libpq environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`...).
    pub fn conn_target(&self) -> Result<crate::db::ConnTarget> {
        crate::db::ConnTarget::new(self.conninfo.as_deref(), &crate::db::PgEnv::from_process())
    }

    /// The repository key, read from its file, if one is configured.
    pub fn repository_key(&self) -> Result<Option<crate::repo::keyring::RepositoryKey>> {
        self.encryption_key_file.as_deref().map(encryption::load_key).transpose()
    }

    /// The repository, or the error that says how to configure one.
    pub fn require_repo(&self) -> Result<&RepoUrl> {
        self.repo.as_ref().ok_or_else(|| {
            Error::config(
                "no repository configured",
                format!("pass --repo file:///var/lib/pgwal/repo, set PGWAL_REPO, or set repo in {DEFAULT_CONFIG_PATH}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str, mode: u32) -> tempfile::NamedTempFile {
        use std::os::unix::fs::PermissionsExt;
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        f
    }

    fn load_file(f: &tempfile::NamedTempFile) -> Result<Config> {
        load(&Overrides { config: Some(f.path().to_path_buf()), ..Default::default() })
    }

    /// The shipped example must stay loadable.
    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgwal.toml");
        let text = std::fs::read_to_string(&path).expect("config/pgwal.toml exists");
        let parsed: FileConfig = toml::from_str(&text).expect("example config parses");
        assert!(parsed.repo.is_some(), "the example sets a repository");
        let cfg = load(&Overrides { config: Some(path), ..Default::default() }).expect("example config validates");
        assert!(matches!(cfg.repo, Some(RepoUrl::File(_))));
    }

    #[test]
    fn flags_beat_the_file() {
        let f = write("repo = \"file:///from/file\"\npgdata = \"/file/pgdata\"\n", 0o600);
        let cfg = load(&Overrides {
            config: Some(f.path().into()),
            repo: Some("s3://flag/prefix".into()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(cfg.repo, Some(RepoUrl::S3 { bucket: "flag".into(), prefix: "prefix".into() }));
        assert_eq!(cfg.pgdata, Some(PathBuf::from("/file/pgdata")));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let f = write("repo = \"file:///r\"\n\n[archive]\ncompress_levle = 3\n", 0o600);
        let err = load_file(&f).expect_err("typo must be refused").to_string();
        assert!(err.contains("compress_levle") && err.contains("line 4"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "repo = \"relative/path\"",
            "[archive]\ncompress_level = 0",
            "[archive]\ncompress_level = 23",
            "[archive]\nretry_deadline = \"soon\"",
            "[fetch]\nretry_deadline = \"2h\"",
            "[backup]\ncompress_level = 20",
            "[backup]\nworkers = 1000",
            "[backup]\nwal_timeout = \"0s\"",
            "[backup]\nlock_stale_after = \"soon\"",
            "[backup]\nthreads = 2",
            "[backup]\ncheckpoint = \"immediate\"",
            "[backup]\ntype = \"incremental\"",
            "[expire]\nretain_full = 0",
            "[expire]\nretain_days = -3",
            "[expire]\nretain_weeks = 2",
            "repo = 5",
            "this is not toml",
        ] {
            let f = write(text, 0o600);
            assert!(matches!(load_file(&f), Err(Error::Config { .. })), "{text:?} must be refused");
        }
    }

    #[test]
    fn backup_checkpoint_and_primary() {
        let cfg = load_file(&write("repo = \"file:///r\"\n", 0o600)).expect("valid");
        assert_eq!((cfg.backup.checkpoint, cfg.backup.primary_conninfo), (CheckpointMode::Fast, None));
        let text = "[backup]\ncheckpoint = \"fast\"\nprimary_conninfo = \"host=p user=u\"\n";
        let cfg = load_file(&write(text, 0o600)).expect("valid");
        assert_eq!(cfg.backup.checkpoint, CheckpointMode::Fast);
        assert_eq!(cfg.backup.primary_conninfo.as_deref(), Some("host=p user=u"));
        assert_eq!(cfg.backup.kind, crate::repo::backup::BackupType::Full, "full unless told");
        for (text, kind) in [
            ("diff", crate::repo::backup::BackupType::Diff),
            ("incr", crate::repo::backup::BackupType::Incr),
            ("full", crate::repo::backup::BackupType::Full),
        ] {
            let cfg = load_file(&write(&format!("[backup]\ntype = \"{text}\"\n"), 0o600)).expect("valid");
            assert_eq!(cfg.backup.kind, kind);
        }
    }

    #[test]
    fn world_readable_secrets_are_refused() {
        let text = "repo = \"s3://b/p\"\n[s3]\naccess_key_id = \"AKIA\"\nsecret_access_key = \"hunter2\"\n";
        let err = load_file(&write(text, 0o644)).expect_err("must refuse").to_string();
        assert!(err.contains("secrets") && !err.contains("hunter2"), "{err}");
        assert!(load_file(&write(text, 0o640)).is_ok());
        assert!(load_file(&write("repo = \"s3://b/p\"\n", 0o644)).is_ok(), "no secrets, no complaint");
    }

    #[test]
    fn missing_files() {
        let explicit = Overrides { config: Some("/nonexistent/pgwal.toml".into()), ..Default::default() };
        assert!(matches!(load(&explicit), Err(Error::Config { .. })));
        let none = load(&Overrides { repo: Some("file:///r".into()), ..Default::default() });
        if !Path::new(DEFAULT_CONFIG_PATH).exists() {
            assert!(none.is_ok(), "no config file at all must work when flags suffice");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("6h"), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("20"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
