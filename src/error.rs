//! The crate's one error type. Variants carry the path, key or name involved,
//! say whether retrying can help, and map to exit codes in one place
//! ([`exit_code`]), because exit codes are API: PostgreSQL acts on them.

use std::path::PathBuf;

use crate::pg::WalFileName;

/// Everything that can go wrong in pgwal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
    /// Bad or missing configuration.
    #[error("{message}")]
    Config {
        /// What is wrong, naming the key or file.
        message: String,
        /// How to fix it.
        hint: Option<String>,
    },
    /// A file handed to `archive` that is not what its name says.
    #[error("'{path}' is not a valid WAL file: {reason}")]
    InvalidWalFile {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// WAL or a backup from a cluster other than the repository's.
    #[error("'{what}' belongs to cluster {found}, but the repository holds cluster {expected}")]
    WrongCluster {
        /// The file or server checked.
        what: String,
        /// The repository's system identifier.
        expected: u64,
        /// The offered system identifier.
        found: u64,
    },
    /// The repository already holds different content under this name.
    #[error("the repository already holds a different '{key}' (stored SHA-256 {stored}, offered {offered}); nothing was changed")]
    Conflict {
        /// The object key.
        key: String,
        /// Hex SHA-256 of what is stored.
        stored: String,
        /// Hex SHA-256 of what was offered.
        offered: String,
    },
    /// `fetch`: the archive has no such file. Exit status 1, and PostgreSQL's
    /// reading of it ("no more WAL") is right.
    #[error("'{0}' is not in the archive")]
    NotInArchive(WalFileName),
    /// A stored object failed its checks.
    #[error("stored object '{key}' is corrupt: {reason}")]
    Corrupt {
        /// The object key.
        key: String,
        /// What check failed.
        reason: String,
    },
    /// The repository does not exist (or was never initialised) at this URL.
    #[error("no pgwal repository at '{url}'")]
    RepositoryMissing {
        /// The repository URL.
        url: String,
    },
    /// The repository was written by a newer pgwal.
    #[error("repository '{url}' has format {found}; this pgwal reads format {supported}")]
    UnsupportedFormat {
        /// The repository URL.
        url: String,
        /// The format found.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// The object store failed.
    #[error("storage {op} of '{key}' failed: {source}")]
    Storage {
        /// get, put, head, list...
        op: &'static str,
        /// The object key.
        key: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The retry deadline passed while the store kept failing.
    #[error("gave up after {attempts} attempts in {seconds:.1}s: {last}")]
    DeadlineExceeded {
        /// How many attempts were made.
        attempts: u32,
        /// How long they took.
        seconds: f64,
        /// The last error.
        last: Box<Error>,
    },
    /// Local file I/O failed.
    #[error("{action} '{path}': {source}")]
    Io {
        /// What was being done ("cannot read", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// PostgreSQL could not be reached.
    #[error("cannot connect to PostgreSQL ({target}): {detail}")]
    DbConnect {
        /// Where pgwal tried to connect (no password).
        target: String,
        /// The client's or the server's message.
        detail: String,
    },
    /// A query on PostgreSQL failed.
    #[error("{what}: {detail}")]
    Database {
        /// What pgwal was doing.
        what: String,
        /// The server's message.
        detail: String,
    },
    /// Another backup holds the repository's backup lock.
    #[error("another backup of this repository is running ({holder})")]
    Locked {
        /// Who holds the lock: host, PID, start time.
        holder: String,
    },
    /// WAL a backup or check waited for did not reach the repository in time.
    #[error("WAL segment '{segment}' did not arrive in the repository within {seconds}s")]
    WalMissing {
        /// The segment waited for.
        segment: String,
        /// How long pgwal waited.
        seconds: u64,
        /// What the server's archiver says, if known.
        archiver: Option<String>,
    },
    /// `check` found problems (each was printed).
    #[error("{failed} of {total} checks failed")]
    ChecksFailed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
    },
    /// A request that cannot be carried out as given (unknown backup ID,
    /// non-empty target directory, a tablespace the backup does not have):
    /// bad usage, exit status 2.
    #[error("{message}")]
    BadRequest {
        /// What is wrong, naming the value.
        message: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// `verify` found errors in the repository (each was printed): exit status 3.
    #[error("verify found {errors} error(s) in the repository")]
    VerifyFailed {
        /// How many errors.
        errors: usize,
    },
    /// A recovery target that no backup plus the archived WAL can reach (a
    /// target before the oldest backup, a gap in the WAL): exit status 1.
    #[error("{message}")]
    Unreachable {
        /// Why, naming the backup, target or missing segment.
        message: String,
        /// What to do instead.
        hint: Option<String>,
    },
}

/// Any error and its causes on one line: each cause that does not already
/// appear in the text is appended after ": ".
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

/// Shorthand for results in pgwal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A configuration error with a hint.
    pub fn config(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Config { message: message.into(), hint: Some(hint.into()) }
    }

    /// Wraps an I/O error with what was being done to which path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }

    /// Whether trying the same thing again later may succeed: network and
    /// server trouble, not refusals or bad input.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { source, .. } => matches!(source, object_store::Error::Generic { .. }),
            Error::DeadlineExceeded { .. } | Error::RepositoryMissing { .. } => false,
            _ => false,
        }
    }

    /// The error and its causes on one line, for `pgwal: error:` messages.
    pub fn one_line(&self) -> String {
        one_line(self)
    }

    /// What the user can do about it, where there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config { hint, .. } => hint.clone(),
            Error::WrongCluster { .. } => Some(
                "each repository holds one cluster: give this cluster its own repository (another path or prefix)"
                    .into(),
            ),
            Error::Conflict { .. } => Some(
                "two different files were archived under one name: check that only one cluster archives into this repository"
                    .into(),
            ),
            Error::Corrupt { .. } => Some("run 'pgwal verify' and restore from another copy of the repository".into()),
            Error::RepositoryMissing { .. } => Some(
                "check --repo / PGWAL_REPO and the credentials; 'pgwal archive' creates the repository on first use"
                    .into(),
            ),
            Error::DeadlineExceeded { .. } => {
                Some("the repository is unreachable or failing; PostgreSQL will call again later".into())
            }
            Error::DbConnect { .. } => Some(
                "check --conninfo / PGWAL_CONNINFO (or PGHOST, PGPORT, PGUSER, PGPASSWORD) and that the server runs"
                    .into(),
            ),
            Error::Locked { .. } => Some(
                "wait for that backup to end; a lock left by a killed backup on this host is taken over at once, \
                 one from another host after backup.lock_stale_after"
                    .into(),
            ),
            Error::WalMissing { archiver, .. } => Some(format!(
                "is archive_command set to 'pgwal archive %p' with this repository? {}",
                archiver.as_deref().unwrap_or("see pg_stat_archiver and the PostgreSQL log")
            )),
            Error::BadRequest { hint, .. } | Error::Unreachable { hint, .. } => hint.clone(),
            Error::VerifyFailed { .. } => Some(
                "each error above names the object, segment or backup; restore missing WAL or objects from another copy, or take a new backup"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// How a process ends, as PostgreSQL and scripts see it. See `man pgwal`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A failure; for `fetch` exactly "not in the archive".
    pub const FAILURE: u8 = 1;
    /// Bad usage or configuration.
    pub const USAGE: u8 = 2;
    /// `verify`: the repository has errors (each was listed).
    pub const PROBLEMS: u8 = 3;
    /// `fetch` outside standby mode: a stored object is corrupt.
    pub const FETCH_CORRUPT: u8 = 200;
    /// `fetch` outside standby mode: the repository is unreachable or missing.
    pub const FETCH_UNREACHABLE: u8 = 201;
    /// `fetch` outside standby mode: bad usage or configuration.
    pub const FETCH_USAGE: u8 = 202;
    /// `fetch` outside standby mode: any other failure (e.g. cannot write DEST).
    pub const FETCH_OTHER: u8 = 203;
}

/// Which exit-status rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitRules {
    /// Every command but `fetch`.
    Plain,
    /// `fetch` during targeted recovery: any failure but "not in the archive"
    /// must exit above 125, or PostgreSQL ends recovery early.
    FetchRecovery,
    /// `fetch` in standby mode: PostgreSQL retries, so 1 is right.
    FetchStandby,
}

/// The exit status for `err` under `rules`. The single source of exit codes.
pub fn exit_code(err: &Error, rules: ExitRules) -> u8 {
    match rules {
        ExitRules::Plain => match err {
            Error::Usage(_) | Error::Config { .. } | Error::BadRequest { .. } => exit::USAGE,
            Error::VerifyFailed { .. } => exit::PROBLEMS,
            _ => exit::FAILURE,
        },
        ExitRules::FetchStandby => exit::FAILURE,
        ExitRules::FetchRecovery => match err {
            Error::NotInArchive(_) => exit::FAILURE,
            Error::Usage(_) | Error::Config { .. } => exit::FETCH_USAGE,
            Error::Corrupt { .. } | Error::UnsupportedFormat { .. } => exit::FETCH_CORRUPT,
            Error::RepositoryMissing { .. } | Error::Storage { .. } | Error::DeadlineExceeded { .. } => {
                exit::FETCH_UNREACHABLE
            }
            _ => exit::FETCH_OTHER,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Error> {
        let name: WalFileName = "000000010000000000000001".parse().expect("valid");
        let store_err = || object_store::Error::Generic { store: "S3", source: "connection refused".into() };
        vec![
            Error::Usage("x".into()),
            Error::config("x", "y"),
            Error::InvalidWalFile { path: "p".into(), reason: "r".into() },
            Error::WrongCluster { what: "w".into(), expected: 1, found: 2 },
            Error::Conflict { key: "k".into(), stored: "a".into(), offered: "b".into() },
            Error::NotInArchive(name),
            Error::Corrupt { key: "k".into(), reason: "r".into() },
            Error::RepositoryMissing { url: "u".into() },
            Error::UnsupportedFormat { url: "u".into(), found: 9, supported: 1 },
            Error::Storage { op: "get", key: "k".into(), source: store_err() },
            Error::DeadlineExceeded {
                attempts: 3,
                seconds: 1.0,
                last: Box::new(Error::Storage { op: "put", key: "k".into(), source: store_err() }),
            },
            Error::Io { action: "cannot read", path: "p".into(), source: std::io::Error::other("x") },
        ]
    }

    /// The exit-code table: the API PostgreSQL and scripts rely on.
    #[test]
    fn exit_code_table() {
        let expected_recovery = [202, 202, 203, 203, 203, 1, 200, 201, 200, 201, 201, 203];
        let expected_plain = [2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        for (i, err) in all_kinds().iter().enumerate() {
            assert_eq!(exit_code(err, ExitRules::FetchRecovery), expected_recovery[i], "recovery: {err}");
            assert_eq!(exit_code(err, ExitRules::Plain), expected_plain[i], "plain: {err}");
            assert_eq!(exit_code(err, ExitRules::FetchStandby), 1, "standby: {err}");
        }
    }

    /// PostgreSQL ends recovery early on any status from 1 to 125: only "not in
    /// the archive" may land there during targeted recovery.
    #[test]
    fn only_not_in_archive_looks_like_end_of_wal() {
        for err in all_kinds() {
            let code = exit_code(&err, ExitRules::FetchRecovery);
            assert!(matches!(err, Error::NotInArchive(_)) == (code <= 125), "{err} -> {code}");
        }
    }

    /// Restore's refusals: bad usage exits 2, an unreachable target 1.
    #[test]
    fn restore_refusals() {
        let bad = Error::BadRequest { message: "m".into(), hint: Some("h".into()) };
        let unreachable = Error::Unreachable { message: "m".into(), hint: None };
        assert_eq!(exit_code(&bad, ExitRules::Plain), 2);
        assert_eq!(exit_code(&unreachable, ExitRules::Plain), 1);
        assert_eq!(bad.hint().as_deref(), Some("h"));
        assert!(!bad.is_transient() && !unreachable.is_transient());
    }

    /// verify's finding has its own status, so scripts tell it from "could not run".
    #[test]
    fn verify_problems_exit_3() {
        let e = Error::VerifyFailed { errors: 2 };
        assert_eq!(exit_code(&e, ExitRules::Plain), 3);
        assert!(e.hint().is_some() && !e.is_transient());
    }

    /// Backup and check failures are plain failures (exit 1), never retried,
    /// and each says what to do.
    #[test]
    fn backup_and_check_failures() {
        let errors = [
            Error::DbConnect { target: "host=/s".into(), detail: "no such file".into() },
            Error::Database { what: "cannot start the backup".into(), detail: "ERROR: permission denied".into() },
            Error::Locked { holder: "PID 7".into() },
            Error::WalMissing { segment: "000000010000000000000002".into(), seconds: 300, archiver: None },
            Error::ChecksFailed { failed: 1, total: 8 },
        ];
        for (i, e) in errors.iter().enumerate() {
            assert_eq!(exit_code(e, ExitRules::Plain), 1, "{e}");
            assert!(!e.is_transient(), "{e}");
            assert_eq!(e.hint().is_some(), i != 1 && i != 4, "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn only_store_trouble_is_transient() {
        let transient: Vec<bool> = all_kinds().iter().map(Error::is_transient).collect();
        let mut expected = vec![false; transient.len()];
        expected[9] = true;
        assert_eq!(transient, expected);
    }
}
