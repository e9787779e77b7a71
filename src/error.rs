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
    /// The repository's encryption key is missing, wrong, refused (its file's
    /// mode) or given to a repository that is not encrypted. Never names the key.
    #[error("{message}")]
    Key {
        /// What is wrong, naming the key file or the repository.
        message: String,
        /// How to fix it.
        hint: Option<String>,
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
        #[source]
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
        /// The server's message (the source's text as one line, or what
        /// was wrong with the answer).
        detail: String,
        /// The client's error, when the server or the connection failed.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// Another backup or expire holds the repository's lock.
    #[error("another {running} of this repository is running ({holder})")]
    Locked {
        /// The command holding it (`backup`, `expire`, `rekey`).
        running: String,
        /// Who holds the lock: command, host, PID, start time.
        holder: String,
    },
    /// WAL a backup or check waited for did not reach the repository in time.
    #[error("WAL segment '{segment}' did not arrive in the repository within {seconds}s")]
    WalMissing {
        /// The segment waited for.
        segment: WalFileName,
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
    /// `drill` found problems (each was printed and recorded): exit status 3.
    #[error("the drill of backup '{backup}' failed: {findings}")]
    DrillFailed {
        /// The backup drilled.
        backup: String,
        /// The failed checks, joined.
        findings: String,
    },
    /// A long-running command was stopped by SIGINT or SIGTERM after cleaning up.
    #[error("interrupted by {signal}; {what}")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
        /// What was undone or left.
        what: String,
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
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    // A database error's detail already is its source, in one line.
    if matches!(e.downcast_ref::<Error>(), Some(Error::Database { .. })) {
        source = None;
    }
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

    /// Whether trying the same thing again later may succeed: timeouts,
    /// throttling, dropped connections and server errors (5xx), never
    /// refusals, missing buckets, bad endpoints or bad input.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage { source, .. } => classify_store_error(source) == StoreFault::Transient,
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
            Error::Config { hint, .. } | Error::Key { hint, .. } => hint.clone(),
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
            Error::DeadlineExceeded { .. } => Some(
                "the repository kept failing for the whole retry deadline (archive.retry_deadline, \
                 fetch.retry_deadline, backup.retry_deadline): check the storage service and the network"
                    .into(),
            ),
            Error::Storage { source: object_store::Error::Generic { store: "LocalFileSystem", .. }, .. }
                if self.is_permission_denied() =>
            {
                Some(
                    "check the owner and mode of the repository directory: run pgwal as its owner (the user \
                     PostgreSQL runs as)"
                        .into(),
                )
            }
            Error::Storage { source, .. } => classify_store_error(source).hint().map(str::to_string),
            Error::Io { source, path, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
                "check who owns '{}' and its directory: run pgwal as that user (the one PostgreSQL runs as)",
                path.display()
            )),
            Error::DbConnect { .. } => Some(
                "check --conninfo / PGWAL_CONNINFO (or PGHOST, PGPORT, PGUSER, PGPASSWORD) and that the server runs"
                    .into(),
            ),
            Error::Locked { running, .. } => Some(format!(
                "nothing was done: run it again once that {running} has ended; a lock left by a killed pgwal on \
                 this host is taken over at once, one from another host after backup.lock_stale_after"
            )),
            Error::WalMissing { archiver, .. } => Some(format!(
                "is archive_command set to 'pgwal archive %p' with this repository? {}",
                archiver.as_deref().unwrap_or("see pg_stat_archiver and the PostgreSQL log")
            )),
            Error::BadRequest { hint, .. } | Error::Unreachable { hint, .. } => hint.clone(),
            Error::DrillFailed { .. } => Some(
                "the checks above say what failed (also in 'pgwal list'); run 'pgwal verify', and 'pgwal drill --keep' \
                 to look at the copy and its postgresql.log"
                    .into(),
            ),
            Error::VerifyFailed { .. } => Some(
                "each error above names the object, segment or backup; restore missing WAL or objects from another copy, or take a new backup"
                    .into(),
            ),
            _ => None,
        }
    }

    fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Storage { source, .. } if classify_store_error(source) == StoreFault::Denied)
    }

    /// The hint as it fits `caller`: only PostgreSQL calls `archive` and
    /// `fetch` again by itself, and only where it really does.
    pub fn hint_for(&self, caller: Caller) -> Option<String> {
        let base = self.hint();
        let repository_trouble =
            matches!(self, Error::Storage { .. } | Error::DeadlineExceeded { .. } | Error::RepositoryMissing { .. });
        let tail = match caller {
            Caller::Person => return base,
            Caller::Archive => "PostgreSQL runs archive_command again later and keeps the WAL until it succeeds",
            Caller::FetchStandby => "PostgreSQL calls restore_command again later",
            Caller::FetchRecovery if repository_trouble => {
                "recovery stops here rather than end early: fix the repository, then start the server again"
            }
            Caller::FetchRecovery => return base,
        };
        Some(match base {
            Some(b) => format!("{b}; {tail}"),
            None => tail.to_string(),
        })
    }
}

/// Who ran the failing command, for [`Error::hint_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A person or a script: nothing calls again by itself.
    Person,
    /// PostgreSQL's `archive_command`.
    Archive,
    /// `restore_command` in standby mode (PostgreSQL retries).
    FetchStandby,
    /// `restore_command` during targeted recovery (a failure stops recovery).
    FetchRecovery,
}

/// What kind of storage failure an `object_store` error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// A timeout, throttling (429, 503 SlowDown), a dropped or reset
    /// connection, another 5xx: worth retrying.
    Transient,
    /// Permission denied, bad or missing credentials (401, 403).
    Denied,
    /// The bucket or container does not exist.
    NoBucket,
    /// The endpoint cannot be reached at all: connection refused, unknown host.
    BadEndpoint,
    /// TLS or certificate failure.
    Tls,
    /// Any other refusal (bad request, unsupported operation, local I/O).
    Permanent,
}

impl StoreFault {
    /// What a user can do about it.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            StoreFault::Transient => None,
            StoreFault::Denied => Some(
                "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT, \
                 AZURE_STORAGE_ACCOUNT_KEY or the [s3] / [gcs] / [azure] settings) and what they may do in \
                 the bucket or container",
            ),
            StoreFault::NoBucket => Some("create the bucket or container first, or fix the repository URL"),
            StoreFault::BadEndpoint => Some(
                "check the endpoint (AWS_ENDPOINT_URL, s3.endpoint, azure.endpoint) and that the storage service runs",
            ),
            StoreFault::Tls => Some("check the endpoint's TLS certificate (and https:// versus http://)"),
            StoreFault::Permanent => None,
        }
    }
}

/// Classifies a store error by its variant and its chain of causes
/// (object_store's HTTP errors, reqwest's and the OS's below them). What is
/// not recognised as transient is permanent: retrying a refusal only delays
/// the error and floods the log.
pub fn classify_store_error(e: &object_store::Error) -> StoreFault {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return StoreFault::Denied,
        E::NotFound { .. } if names_missing_bucket(e) => return StoreFault::NoBucket,
        E::Generic { .. } => {}
        _ => return StoreFault::Permanent,
    }
    let mut text = String::new();
    let mut http_kind = None;
    let mut io_kinds = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        text.push_str(&without_names(&c.to_string()).to_ascii_lowercase());
        text.push('\n');
        if let Some(h) = c.downcast_ref::<object_store::client::HttpError>() {
            http_kind.get_or_insert(h.kind());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kinds.push(io.kind());
        }
        cause = c.source();
    }
    classify_parts(&text, http_kind, &io_kinds)
}

/// A message without the URLs and absolute paths in it: a bucket, prefix
/// or directory named "tls" or "token" says nothing about the failure.
fn without_names(message: &str) -> String {
    message.split_whitespace().filter(|w| !w.contains("://") && !w.starts_with('/')).collect::<Vec<_>>().join(" ")
}

/// Whether a store's "not found" means that the object is absent (a normal
/// answer) rather than the bucket or container itself (an error).
pub fn is_missing_object(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) && !names_missing_bucket(e)
}

fn names_missing_bucket(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if ["NoSuchBucket", "ContainerNotFound", "bucket does not exist"].iter().any(|t| text.contains(t)) {
            return true;
        }
        cause = c.source();
    }
    false
}

fn classify_parts(
    text: &str,
    http_kind: Option<object_store::client::HttpErrorKind>,
    io_kinds: &[std::io::ErrorKind],
) -> StoreFault {
    use object_store::client::HttpErrorKind as H;
    use std::io::ErrorKind as K;
    if let Some(status) = http_status(text) {
        return match status {
            429 | 500..=599 => StoreFault::Transient,
            401 | 403 => StoreFault::Denied,
            404 if text.contains("nosuchbucket") || text.contains("containernotfound") => StoreFault::NoBucket,
            _ => StoreFault::Permanent,
        };
    }
    for code in ["slowdown", "throttl", "serverbusy", "requesttimeout", "internalerror", "serviceunavailable"] {
        if text.contains(code) {
            return StoreFault::Transient;
        }
    }
    if text.contains("nosuchbucket") || text.contains("containernotfound") || text.contains("bucket not found") {
        return StoreFault::NoBucket;
    }
    let denied = [
        "accessdenied",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "authenticationfailed",
        "authorizationfailure",
        "permission denied",
        "credential",
        "token",
    ];
    if io_kinds.contains(&K::PermissionDenied) || denied.iter().any(|d| text.contains(d)) {
        return StoreFault::Denied;
    }
    if io_kinds.contains(&K::ConnectionRefused) || text.contains("connection refused") || text.contains("dns error") {
        return StoreFault::BadEndpoint;
    }
    if ["certificate", "tls", "ssl", "handshake"].iter().any(|t| text.contains(t)) {
        return StoreFault::Tls;
    }
    if matches!(http_kind, Some(H::Timeout | H::Request | H::Interrupted | H::Connect)) {
        return StoreFault::Transient;
    }
    let transient_io =
        [K::TimedOut, K::Interrupted, K::ConnectionReset, K::ConnectionAborted, K::BrokenPipe, K::UnexpectedEof];
    if io_kinds.iter().any(|k| transient_io.contains(k)) {
        return StoreFault::Transient;
    }
    StoreFault::Permanent
}

/// The HTTP status in object_store's "status code: 503 Service Unavailable".
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
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
    /// `backup`, `expire`: another backup or expire holds the repository lock; nothing was done.
    pub const LOCKED: u8 = 4;
    /// `fetch` outside standby mode: a stored object is corrupt.
    pub const FETCH_CORRUPT: u8 = 200;
    /// `fetch` outside standby mode: the repository is unreachable or missing.
    pub const FETCH_UNREACHABLE: u8 = 201;
    /// `fetch` outside standby mode: bad usage or configuration.
    pub const FETCH_USAGE: u8 = 202;
    /// `fetch` outside standby mode: any other failure (e.g. cannot write DEST).
    pub const FETCH_OTHER: u8 = 203;
    /// `fetch` outside standby mode: the encryption key is missing or wrong.
    pub const FETCH_KEY: u8 = 204;

    /// Every exit status and its meaning: the one table behind `--help`'s
    /// "Exit status" and the man pages' EXIT STATUS (tests/man_pages.rs).
    pub const TABLE: &[(u8, &str)] = &[
        (OK, "success"),
        (FAILURE, "failure; for fetch exactly \"not in the archive\""),
        (USAGE, "bad usage or configuration"),
        (PROBLEMS, "verify: the repository has errors (each is listed); drill: a check failed (recorded and listed)"),
        (
            LOCKED,
            "backup, expire: another backup or expire of the repository is running; nothing was done, run it again later",
        ),
        (FETCH_CORRUPT, "fetch outside standby mode: a stored object is corrupt (checksum, size or format)"),
        (FETCH_UNREACHABLE, "fetch outside standby mode: the repository is unreachable or missing"),
        (FETCH_USAGE, "fetch outside standby mode: bad usage or configuration"),
        (FETCH_OTHER, "fetch outside standby mode: any other failure (e.g. DEST cannot be written)"),
        (FETCH_KEY, "fetch outside standby mode: the encryption key is missing, wrong or refused"),
    ];
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
            Error::Usage(_) | Error::Config { .. } | Error::BadRequest { .. } | Error::Key { .. } => exit::USAGE,
            Error::VerifyFailed { .. } | Error::DrillFailed { .. } => exit::PROBLEMS,
            Error::Locked { .. } => exit::LOCKED,
            _ => exit::FAILURE,
        },
        ExitRules::FetchStandby => exit::FAILURE,
        ExitRules::FetchRecovery => match err {
            Error::NotInArchive(_) => exit::FAILURE,
            Error::Key { .. } => exit::FETCH_KEY,
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

    fn timeout() -> object_store::client::HttpError {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "operation timed out");
        object_store::client::HttpError::new(object_store::client::HttpErrorKind::Timeout, io)
    }

    fn generic(source: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: Box::new(source) }
    }

    fn text(s: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: s.into() }
    }

    fn all_kinds() -> Vec<Error> {
        let name: WalFileName = "000000010000000000000001".parse().expect("valid");
        let store_err = || object_store::Error::Generic { store: "S3", source: Box::new(timeout()) };
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
            Error::Key { message: "m".into(), hint: None },
        ]
    }

    /// The exit-code table: the API PostgreSQL and scripts rely on.
    #[test]
    fn exit_code_table() {
        let expected_recovery = [202, 202, 203, 203, 203, 1, 200, 201, 200, 201, 201, 203, 204];
        let expected_plain = [2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2];
        for (i, err) in all_kinds().iter().enumerate() {
            assert_eq!(exit_code(err, ExitRules::FetchRecovery), expected_recovery[i], "recovery: {err}");
            assert_eq!(exit_code(err, ExitRules::Plain), expected_plain[i], "plain: {err}");
            assert_eq!(exit_code(err, ExitRules::FetchStandby), 1, "standby: {err}");
        }
    }

    /// Every error of every kind, under every rule, exits with a status of
    /// the table (and every failure status of the table is used), so that
    /// `--help` and the man pages list exactly what pgwal can return.
    #[test]
    fn every_exit_code_is_in_the_table() {
        let mut errors = all_kinds();
        errors.extend([
            Error::DbConnect { target: "t".into(), detail: "d".into() },
            Error::Database { what: "w".into(), detail: "d".into(), source: None },
            Error::Locked { running: "backup".into(), holder: "h".into() },
            Error::WalMissing {
                segment: "000000010000000000000002".parse().expect("name"),
                seconds: 1,
                archiver: None,
            },
            Error::ChecksFailed { failed: 1, total: 2 },
            Error::BadRequest { message: "m".into(), hint: None },
            Error::VerifyFailed { errors: 1 },
            Error::Unreachable { message: "m".into(), hint: None },
        ]);
        let table: Vec<u8> = exit::TABLE.iter().map(|(code, _)| *code).collect();
        let mut used = std::collections::BTreeSet::from([exit::OK]);
        for err in &errors {
            for rules in [ExitRules::Plain, ExitRules::FetchRecovery, ExitRules::FetchStandby] {
                let code = exit_code(err, rules);
                assert!(table.contains(&code), "{err} under {rules:?} exits {code}, which the table lacks");
                used.insert(code);
            }
        }
        assert_eq!(used.into_iter().collect::<Vec<_>>(), table, "every status of the table is returned by something");
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

    /// verify's and drill's findings have their own status, so scripts tell them from "could not run".
    #[test]
    fn verify_problems_exit_3() {
        let e = Error::VerifyFailed { errors: 2 };
        assert_eq!(exit_code(&e, ExitRules::Plain), 3);
        assert!(e.hint().is_some() && !e.is_transient());
        let d = Error::DrillFailed { backup: "20261123T074000F".into(), findings: "pg_amcheck: 1 corrupt page".into() };
        assert_eq!(exit_code(&d, ExitRules::Plain), 3);
        assert!(d.hint().is_some() && !d.to_string().contains('\n'));
        let i = Error::Interrupted { signal: "SIGTERM", what: "the throwaway server was stopped".into() };
        assert_eq!(exit_code(&i, ExitRules::Plain), 1);
    }

    /// Backup and check failures are plain failures (exit 1; a held lock 4), never retried,
    /// and each says what to do.
    #[test]
    fn backup_and_check_failures() {
        let errors = [
            Error::DbConnect { target: "host=/s".into(), detail: "no such file".into() },
            Error::Database {
                what: "cannot start the backup".into(),
                detail: "ERROR: permission denied".into(),
                source: None,
            },
            Error::Locked { running: "backup".into(), holder: "PID 7".into() },
            Error::WalMissing {
                segment: "000000010000000000000002".parse().expect("name"),
                seconds: 300,
                archiver: None,
            },
            Error::ChecksFailed { failed: 1, total: 8 },
        ];
        for (i, e) in errors.iter().enumerate() {
            let code = if matches!(e, Error::Locked { .. }) { exit::LOCKED } else { exit::FAILURE };
            assert_eq!(exit_code(e, ExitRules::Plain), code, "{e}");
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

    /// Only timeouts, throttling, dropped connections and 5xx are retried;
    /// refusals, missing buckets and unreachable endpoints fail at once.
    #[test]
    fn store_errors_are_classified_by_variant_and_cause() {
        use object_store::client::{HttpError, HttpErrorKind};
        use std::io::{Error as IoError, ErrorKind};
        let http = |kind, io_kind, msg: &str| generic(HttpError::new(kind, IoError::new(io_kind, msg.to_string())));
        let cases: Vec<(object_store::Error, StoreFault)> = vec![
            (generic(timeout()), StoreFault::Transient),
            (http(HttpErrorKind::Interrupted, ErrorKind::ConnectionReset, "connection reset by peer"), StoreFault::Transient),
            (http(HttpErrorKind::Request, ErrorKind::Other, "connection closed before message completed"), StoreFault::Transient),
            (text("Error performing PUT in 1ms - Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>"), StoreFault::Transient),
            (text("Server returned non-2xx status code: 429 Too Many Requests: "), StoreFault::Transient),
            (text("Server returned non-2xx status code: 500 Internal Server Error: "), StoreFault::Transient),
            (text("Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch</Code>"), StoreFault::Denied),
            (text("Server returned non-2xx status code: 401 Unauthorized: "), StoreFault::Denied),
            (text("Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>"), StoreFault::NoBucket),
            (text("Server returned non-2xx status code: 400 Bad Request: "), StoreFault::Permanent),
            (
                object_store::Error::PermissionDenied { path: "p".into(), source: "403".into() },
                StoreFault::Denied,
            ),
            (
                object_store::Error::Unauthenticated { path: "p".into(), source: "401".into() },
                StoreFault::Denied,
            ),
            (object_store::Error::NotFound { path: "p".into(), source: "404".into() }, StoreFault::Permanent),
            (
                object_store::Error::NotFound {
                    path: "p".into(),
                    source: "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>".into(),
                },
                StoreFault::NoBucket,
            ),
            (
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(IoError::new(ErrorKind::PermissionDenied, "Permission denied (os error 13)")),
                },
                StoreFault::Denied,
            ),
            (
                http(HttpErrorKind::Connect, ErrorKind::ConnectionRefused, "tcp connect error: Connection refused"),
                StoreFault::BadEndpoint,
            ),
            (http(HttpErrorKind::Connect, ErrorKind::Other, "dns error: failed to lookup address"), StoreFault::BadEndpoint),
            (http(HttpErrorKind::Connect, ErrorKind::Other, "invalid peer certificate: UnknownIssuer"), StoreFault::Tls),
            (text("Generic GCS error: Error getting token response: no credentials found"), StoreFault::Denied),
            (text("something nobody expected"), StoreFault::Permanent),
            // Names in URLs and paths do not count.
            (
                generic(HttpError::new(
                    HttpErrorKind::Timeout,
                    IoError::new(ErrorKind::TimedOut, "GET https://tls-token.example/ssl/credential timed out"),
                )),
                StoreFault::Transient,
            ),
            (
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(IoError::new(ErrorKind::TimedOut, "cannot write /srv/tls/token: timed out")),
                },
                StoreFault::Transient,
            ),
        ];
        for (e, expected) in cases {
            assert_eq!(classify_store_error(&e), expected, "{e}");
            if matches!(e, object_store::Error::NotFound { .. }) {
                assert_eq!(is_missing_object(&e), expected != StoreFault::NoBucket, "{e}");
            }
            let err = Error::Storage { op: "list", key: "k".into(), source: e };
            assert_eq!(err.is_transient(), expected == StoreFault::Transient, "{err}");
        }
    }

    /// Only archive and fetch say that PostgreSQL calls again, and fetch only
    /// where it does (standby mode).
    #[test]
    fn hints_fit_the_caller() {
        let gone = || Error::DeadlineExceeded {
            attempts: 3,
            seconds: 1.0,
            last: Box::new(Error::Storage { op: "put", key: "k".into(), source: generic(timeout()) }),
        };
        let person = gone().hint_for(Caller::Person).expect("a hint");
        assert!(!person.contains("PostgreSQL"), "{person}");
        assert!(gone().hint_for(Caller::Archive).expect("a hint").contains("archive_command again"));
        assert!(gone().hint_for(Caller::FetchStandby).expect("a hint").contains("again later"));
        let recovery = gone().hint_for(Caller::FetchRecovery).expect("a hint");
        assert!(recovery.contains("recovery stops") && !recovery.contains("again later"), "{recovery}");
        let denied = Error::Storage {
            op: "list",
            key: "k".into(),
            source: object_store::Error::PermissionDenied { path: "p".into(), source: "403".into() },
        };
        assert!(denied.hint_for(Caller::Person).expect("a hint").contains("credentials"));
    }
}
