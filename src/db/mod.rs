//! Talking to PostgreSQL over a normal SQL session: who the server is
//! (version, system identifier, settings), and the non-exclusive backup API,
//! whose start and stop must run on one session held open for the whole
//! backup (PostgreSQL aborts the backup when that session ends).
//!
//! Connection settings follow libpq: the `--conninfo` string (key=value or a
//! `postgresql://` URI) wins, then `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGCONNECT_TIMEOUT`, then `~/.pgpass`
//! (`PGPASSFILE`), then libpq's defaults (the Unix socket in
//! `/var/run/postgresql` or `/tmp`, port 5432, the OS user's name).
//! tokio-postgres reads none of the environment itself.

pub mod slots;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::pg::{Lsn, TimelineId};

/// The oldest server this code speaks to (`pg_walfile_name`, the
/// non-exclusive backup API with a tablespace map).
pub const MIN_SERVER_VERSION: u32 = 100000;

/// How long a connection attempt may take when nothing else says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment libpq would read, captured once so that tests can pass
/// their own.
#[derive(Debug, Clone, Default)]
pub struct PgEnv {
    /// `PGHOST`: host names or socket directories, comma-separated.
    pub host: Option<String>,
    /// `PGPORT`.
    pub port: Option<String>,
    /// `PGUSER`.
    pub user: Option<String>,
    /// `PGPASSWORD`.
    pub password: Option<String>,
    /// `PGDATABASE`.
    pub database: Option<String>,
    /// `PGCONNECT_TIMEOUT`, in seconds.
    pub connect_timeout: Option<String>,
    /// `PGPASSFILE`, else `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// The OS user's name (libpq's default user).
    pub os_user: Option<String>,
}

impl PgEnv {
    /// Reads the process environment.
    pub fn from_process() -> PgEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        PgEnv {
            host: var("PGHOST"),
            port: var("PGPORT"),
            user: var("PGUSER"),
            password: var("PGPASSWORD"),
            database: var("PGDATABASE"),
            connect_timeout: var("PGCONNECT_TIMEOUT"),
            passfile: var("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".pgpass"))),
            os_user: os_user_name().or_else(|| var("USER")),
        }
    }
}

/// The name of the effective user, from `/proc` and `/etc/passwd` (no libc).
fn os_user_name() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(2)?.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 2 && f[2] == uid).map(|f| f[0].into())
}

/// Where and how to connect: the merged libpq settings.
#[derive(Clone)]
pub struct ConnTarget {
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for ConnTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

fn conn_config_error(message: String) -> Error {
    Error::config(
        message,
        "give --conninfo / PGWAL_CONNINFO in libpq key=value form, e.g. \"host=/var/run/postgresql user=postgres\"",
    )
}

impl ConnTarget {
    /// Merges `conninfo` (if any) with the libpq environment `env`.
    pub fn new(conninfo: Option<&str>, env: &PgEnv) -> Result<ConnTarget> {
        let mut config: tokio_postgres::Config = match conninfo {
            Some(s) => s.parse().map_err(|e: tokio_postgres::Error| {
                // The client's error says only "invalid connection string";
                // the cause (which key, which byte) is its source.
                let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
                conn_config_error(format!("invalid connection string: {cause}"))
            })?,
            None => tokio_postgres::Config::new(),
        };
        if config.get_hosts().is_empty() {
            match &env.host {
                Some(hosts) => {
                    for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                        config.host(h);
                    }
                }
                None => {
                    let socket_dir =
                        ["/var/run/postgresql", "/tmp"].into_iter().find(|d| Path::new(d).is_dir()).unwrap_or("/tmp");
                    config.host_path(socket_dir);
                }
            }
        }
        if config.get_ports().is_empty() {
            if let Some(p) = &env.port {
                let port = p.trim().parse::<u16>().map_err(|_| conn_config_error(format!("invalid PGPORT '{p}'")))?;
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            match env.user.as_ref().or(env.os_user.as_ref()) {
                Some(u) => {
                    config.user(u);
                }
                None => {
                    return Err(conn_config_error("no PostgreSQL user name: set user= in --conninfo or PGUSER".into()))
                }
            }
        }
        if config.get_dbname().is_none() {
            if let Some(d) = &env.database {
                config.dbname(d);
            }
        }
        if config.get_connect_timeout().is_none() {
            let timeout = env
                .connect_timeout
                .as_deref()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|&t| t > 0)
                .map_or(DEFAULT_CONNECT_TIMEOUT, |t| Duration::from_secs(t.max(2)));
            config.connect_timeout(timeout);
        }
        if config.get_password().is_none() {
            if let Some(p) = &env.password {
                config.password(p.as_str());
            } else if let Some(file) = &env.passfile {
                if let Some(p) = pgpass_lookup(file, &config) {
                    config.password(p);
                }
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("pgwal");
        }
        Ok(ConnTarget { config })
    }

    /// `host=... port=... user=... dbname=...` for messages (no password).
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        let mut out = format!("host={}", hosts.join(","));
        out.push_str(&format!(" port={}", if ports.is_empty() { "5432".into() } else { ports.join(",") }));
        if let Some(u) = self.config.get_user() {
            out.push_str(&format!(" user={u}"));
        }
        if let Some(d) = self.config.get_dbname() {
            out.push_str(&format!(" dbname={d}"));
        }
        out
    }

    /// Opens a session. The connection's I/O runs as a task on the current
    /// Tokio runtime, which must be running while the session is used.
    pub async fn connect(&self) -> Result<Session> {
        // The seam for TLS: a `MakeTlsConnect` from configuration goes here.
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| Error::DbConnect { target: self.describe(), detail: pg_error_text(&e) })?;
        tokio::spawn(async move {
            // Errors surface on the client's next query as "connection closed".
            let _ = connection.await;
        });
        let mut session = Session { client, version: 0 };
        session.version = session.server_version_num().await?;
        if session.version < MIN_SERVER_VERSION {
            return Err(Error::config(
                format!("PostgreSQL {} is too old", session.version),
                "pgwal supports PostgreSQL 10 and newer",
            ));
        }
        Ok(session)
    }
}

/// Finds a password in a libpq password file: `host:port:db:user:password`
/// lines, `*` matching anything, `\` escaping `:` and `\`. Like libpq, a file
/// that group or others can read is ignored.
fn pgpass_lookup(file: &Path, config: &tokio_postgres::Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        // libpq matches a socket connection against "localhost".
        Host::Unix(_) => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user()?.to_string();
    let db = config.get_dbname().map_or_else(|| user.clone(), str::to_string);
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], &host)
            && matches(&fields[1], &port)
            && matches(&fields[2], &db)
            && matches(&fields[3], &user)
        {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("invariant: never empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("invariant: never empty").push(c),
        }
    }
    fields
}

/// The text of a tokio-postgres error: the server's own message when there
/// is one, else the error and its causes.
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {}", db.severity(), db.message());
        if let Some(hint) = db.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
        return text;
    }
    crate::error::one_line(e)
}

/// Settings that archiving depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// `wal_level`: minimal, replica or logical.
    pub wal_level: String,
    /// `archive_mode`: off, on or always.
    pub archive_mode: String,
    /// `archive_command`; `None` if this role may not read it.
    pub archive_command: Option<String>,
}

/// What `pg_backup_stop` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStop {
    /// The backup's end: recovery must replay at least to here.
    pub lsn: Lsn,
    /// The `backup_label` file's content.
    pub label: String,
    /// The `tablespace_map` file's content; `None` when empty.
    pub tablespace_map: Option<String>,
}

/// The server's own reading of its `pg_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlCheckpoint {
    /// The latest checkpoint record.
    pub checkpoint: Lsn,
    /// Its REDO location.
    pub redo: Lsn,
    /// Its timeline.
    pub timeline: TimelineId,
    /// When the file was last written (Unix seconds; PostgreSQL 12 and
    /// later stamp every write).
    pub last_modified: i64,
}

/// A tablespace as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceRow {
    /// OID: the name of its link in `pg_tblspc`.
    pub oid: u32,
    /// Its directory.
    pub location: String,
}

/// The archiver's view (`pg_stat_archiver`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    /// The last WAL file archived successfully.
    pub last_archived_wal: Option<String>,
    /// The last WAL file whose archiving failed.
    pub last_failed_wal: Option<String>,
    /// When that failure happened.
    pub last_failed_time: Option<String>,
}

/// One open SQL session.
pub struct Session {
    client: Client,
    version: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session(server {})", self.version)
    }
}

fn db_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let what = what.into();
    move |e| Error::Database { what, detail: pg_error_text(&e), source: Some(e) }
}

impl Session {
    async fn text(&self, what: &str, sql: &str) -> Result<Option<String>> {
        let row = self.client.query_one(sql, &[]).await.map_err(db_err(what))?;
        row.try_get::<_, Option<String>>(0).map_err(db_err(what))
    }

    async fn text_required(&self, what: &str, sql: &str) -> Result<String> {
        self.text(what, sql).await?.ok_or_else(|| Error::Database {
            what: what.to_string(),
            detail: "the server returned NULL".into(),
            source: None,
        })
    }

    /// `server_version_num` as queried at connection time, e.g. 150018.
    pub fn version_num(&self) -> u32 {
        self.version
    }

    /// `server_version_num`, e.g. 150018.
    pub async fn server_version_num(&self) -> Result<u32> {
        let what = "cannot read server_version_num";
        let v = self.text_required(what, "SELECT current_setting('server_version_num')").await?;
        v.trim().parse().map_err(|_| not_a_number(what, &v))
    }

    /// The cluster's system identifier (`pg_control_system()`).
    pub async fn system_identifier(&self) -> Result<u64> {
        let what = "cannot read the system identifier";
        let v = self.text_required(what, "SELECT system_identifier::text FROM pg_control_system()").await?;
        // An int8 in SQL: identifiers above 2^63 come back negative.
        v.trim().parse::<i64>().map(|n| n as u64).map_err(|_| not_a_number(what, &v))
    }

    /// The data directory, if this role may read `data_directory`.
    pub async fn data_directory(&self) -> Result<Option<PathBuf>> {
        let sql = "SELECT CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER') OR \
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                   THEN current_setting('data_directory') END";
        Ok(self.text("cannot read data_directory", sql).await?.map(PathBuf::from))
    }

    /// The WAL segment size in bytes.
    pub async fn wal_segment_size(&self) -> Result<u64> {
        let what = "cannot read wal_segment_size";
        let v = self.text_required(what, "SELECT pg_size_bytes(current_setting('wal_segment_size'))::text").await?;
        v.trim().parse().map_err(|_| not_a_number(what, &v))
    }

    /// `wal_level`, `archive_mode`, `archive_command`.
    pub async fn archive_settings(&self) -> Result<ArchiveSettings> {
        let what = "cannot read the archive settings";
        let row = self
            .client
            .query_one(
                "SELECT current_setting('wal_level'), current_setting('archive_mode'), \
                 (SELECT setting FROM pg_settings WHERE name = 'archive_command')",
                &[],
            )
            .await
            .map_err(db_err(what))?;
        Ok(ArchiveSettings {
            wal_level: row.try_get(0).map_err(db_err(what))?,
            archive_mode: row.try_get(1).map_err(db_err(what))?,
            archive_command: row.try_get(2).map_err(db_err(what))?,
        })
    }

    /// `archive_library` (PostgreSQL 15+; `None` before, or when empty).
    pub async fn archive_library(&self) -> Result<Option<String>> {
        let v = self.text("cannot read archive_library", "SELECT current_setting('archive_library', true)").await?;
        Ok(v.filter(|l| !l.is_empty()))
    }

    /// Whether the server is a standby (in recovery).
    pub async fn in_recovery(&self) -> Result<bool> {
        let what = "cannot ask whether the server is in recovery";
        let row = self.client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(db_err(what))?;
        row.try_get(0).map_err(db_err(what))
    }

    /// Writes a little WAL, switches to a new segment and returns the name
    /// of the segment now complete: one archiving has yet to deliver. (With
    /// no WAL since the last switch, `pg_switch_wal` would do nothing and
    /// name the segment completed back then.)
    pub async fn switch_wal(&self) -> Result<String> {
        // A transaction with an XID writes a commit record.
        self.text("cannot write WAL before pg_switch_wal", "SELECT txid_current()::text").await?;
        self.text_required("cannot switch WAL (pg_switch_wal)", "SELECT pg_walfile_name(pg_switch_wal())").await
    }

    /// Whether this role may call `pg_switch_wal()`.
    pub async fn may_switch_wal(&self) -> Result<bool> {
        let what = "cannot check the privilege to call pg_switch_wal";
        let row = self
            .client
            .query_one("SELECT has_function_privilege('pg_switch_wal()', 'EXECUTE')", &[])
            .await
            .map_err(db_err(what))?;
        row.try_get(0).map_err(db_err(what))
    }

    /// The timeline of the latest checkpoint.
    pub async fn checkpoint_timeline(&self) -> Result<TimelineId> {
        let what = "cannot read the timeline";
        let row = self
            .client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .map_err(db_err(what))?;
        let tli: i32 = row.try_get(0).map_err(db_err(what))?;
        Ok(TimelineId(tli as u32))
    }

    /// The latest checkpoint as the server reads it from its own
    /// `global/pg_control` on disk (`pg_control_checkpoint()`,
    /// `pg_control_system()`).
    pub async fn control_checkpoint(&self) -> Result<ControlCheckpoint> {
        let what = "cannot read the server's pg_control (pg_control_checkpoint)";
        let row = self
            .client
            .query_one(
                "SELECT c.checkpoint_lsn::text, c.redo_lsn::text, c.timeline_id, \
                 extract(epoch FROM s.pg_control_last_modified)::bigint \
                 FROM pg_control_checkpoint() c, pg_control_system() s",
                &[],
            )
            .await
            .map_err(db_err(what))?;
        let checkpoint: String = row.try_get(0).map_err(db_err(what))?;
        let redo: String = row.try_get(1).map_err(db_err(what))?;
        let tli: i32 = row.try_get(2).map_err(db_err(what))?;
        Ok(ControlCheckpoint {
            checkpoint: parse_lsn(what, &checkpoint)?,
            redo: parse_lsn(what, &redo)?,
            timeline: TimelineId(tli as u32),
            last_modified: row.try_get(3).map_err(db_err(what))?,
        })
    }

    /// The port the server listens on (`port`, readable by every role).
    pub async fn port(&self) -> Result<u16> {
        let what = "cannot read the server's port";
        let v = self.text_required(what, "SELECT current_setting('port')").await?;
        v.trim().parse().map_err(|_| not_a_number(what, &v))
    }

    /// The tablespaces besides `pg_default` and `pg_global`.
    pub async fn tablespaces(&self) -> Result<Vec<TablespaceRow>> {
        let what = "cannot list tablespaces";
        let rows = self
            .client
            .query(
                "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .await
            .map_err(db_err(what))?;
        rows.iter()
            .map(|r| {
                Ok(TablespaceRow {
                    oid: r.try_get(0).map_err(db_err(what))?,
                    location: r.try_get(1).map_err(db_err(what))?,
                })
            })
            .collect()
    }

    /// `pg_stat_archiver`.
    pub async fn archiver_stats(&self) -> Result<ArchiverStats> {
        let what = "cannot read pg_stat_archiver";
        let row = self
            .client
            .query_one("SELECT last_archived_wal, last_failed_wal, last_failed_time::text FROM pg_stat_archiver", &[])
            .await
            .map_err(db_err(what))?;
        Ok(ArchiverStats {
            last_archived_wal: row.try_get(0).map_err(db_err(what))?,
            last_failed_wal: row.try_get(1).map_err(db_err(what))?,
            last_failed_time: row.try_get(2).map_err(db_err(what))?,
        })
    }

    /// Starts a non-exclusive backup on this session (`fast`: an immediate
    /// checkpoint rather than a spread one) and returns its start LSN.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn> {
        let sql = if self.version >= 150000 {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        };
        let what = "cannot start the backup (pg_backup_start)";
        let row = self.client.query_one(sql, &[&label, &fast]).await.map_err(db_err(what))?;
        let lsn: String = row.try_get(0).map_err(db_err(what))?;
        parse_lsn(what, &lsn)
    }

    /// Stops the backup started on this session. Does not wait for WAL
    /// archiving: the caller waits for the WAL in the repository itself.
    pub async fn backup_stop(&self) -> Result<BackupStop> {
        let sql = if self.version >= 150000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let what = "cannot stop the backup (pg_backup_stop)";
        let row = self.client.query_one(sql, &[]).await.map_err(db_err(what))?;
        let lsn: String = row.try_get(0).map_err(db_err(what))?;
        let label: Option<String> = row.try_get(1).map_err(db_err(what))?;
        let map: Option<String> = row.try_get(2).map_err(db_err(what))?;
        Ok(BackupStop {
            lsn: parse_lsn(what, &lsn)?,
            label: label.unwrap_or_default(),
            tablespace_map: map.filter(|m| !m.is_empty()),
        })
    }
}

fn not_a_number(what: &str, value: &str) -> Error {
    Error::Database { what: what.to_string(), detail: format!("'{value}' is not a number"), source: None }
}

fn parse_lsn(what: &str, text: &str) -> Result<Lsn> {
    text.parse().map_err(|e: crate::pg::lsn::LsnParseError| Error::Database {
        what: what.to_string(),
        detail: e.to_string(),
        source: None,
    })
}

/// The `START TIMELINE:` of a `backup_label`.
pub fn label_timeline(label: &str) -> Option<TimelineId> {
    label.lines().find_map(|l| l.strip_prefix("START TIMELINE:")).and_then(|v| v.trim().parse().ok()).map(TimelineId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> PgEnv {
        PgEnv { os_user: Some("osuser".into()), ..Default::default() }
    }

    #[test]
    fn conninfo_beats_the_environment() {
        let e = PgEnv {
            host: Some("envhost".into()),
            port: Some("6000".into()),
            user: Some("envuser".into()),
            database: Some("envdb".into()),
            ..env()
        };
        let t = ConnTarget::new(Some("host=/run/pg port=5433 user=alice"), &e).expect("valid");
        assert_eq!(t.describe(), "host=/run/pg port=5433 user=alice dbname=envdb");
        let t = ConnTarget::new(None, &e).expect("valid");
        assert_eq!(t.describe(), "host=envhost port=6000 user=envuser dbname=envdb");
    }

    #[test]
    fn pghost_socket_directories_and_defaults() {
        let e = PgEnv { host: Some("/tmp/sock,db.example".into()), ..env() };
        let t = ConnTarget::new(None, &e).expect("valid");
        assert!(
            matches!(t.config.get_hosts(), [Host::Unix(p), Host::Tcp(h)] if p == Path::new("/tmp/sock") && h == "db.example")
        );
        assert_eq!(t.config.get_user(), Some("osuser"));
        assert_eq!(t.config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
    }

    /// The message names the cause once, not "invalid connection string" twice.
    #[test]
    fn a_bad_conninfo_says_what_is_wrong() {
        for (bad, cause) in [("host", "unexpected EOF"), ("port=abc", "port"), ("nosuchkey=1", "nosuchkey")] {
            let e = ConnTarget::new(Some(bad), &env()).expect_err("refused").to_string();
            assert_eq!(e.matches("invalid connection string").count(), 1, "{e}");
            assert!(e.contains(cause), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        assert!(matches!(ConnTarget::new(Some("host"), &env()), Err(Error::Config { .. })));
        let e = PgEnv { port: Some("five".into()), ..env() };
        assert!(matches!(ConnTarget::new(None, &e), Err(Error::Config { .. })));
        let nobody = PgEnv::default();
        assert!(matches!(ConnTarget::new(None, &nobody), Err(Error::Config { .. })));
    }

    #[test]
    fn passwords_never_show() {
        let t = ConnTarget::new(Some("host=h user=u password=hunter2"), &env()).expect("valid");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert!(!t.describe().contains("hunter2"));
    }

    #[test]
    fn pgpass_files() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        writeln!(f, "# comment\nother:5432:*:u:no\nlocalhost:5433:*:u:pa\\:ss:word\n*:*:*:*:fallback").expect("write");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = PgEnv { passfile: Some(f.path().into()), ..env() };
        let t = ConnTarget::new(Some("host=/sock port=5433 user=u"), &e).expect("valid");
        assert_eq!(t.config.get_password(), Some(&b"pa:ss:word"[..]));
        let t = ConnTarget::new(Some("host=x port=1 user=v"), &e).expect("valid");
        assert_eq!(t.config.get_password(), Some(&b"fallback"[..]));
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let t = ConnTarget::new(Some("host=x port=1 user=v"), &e).expect("valid");
        assert_eq!(t.config.get_password(), None, "a readable pgpass is ignored, as libpq does");
    }

    #[test]
    fn backup_label_timeline() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n\
                     BACKUP METHOD: streamed\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(TimelineId(3)));
        assert_eq!(label_timeline("nothing"), None);
    }
}
