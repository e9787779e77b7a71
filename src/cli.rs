//! The command line, as clap derive structs: raw arguments only, no I/O. The
//! man pages are generated from these definitions (see tests/man_pages.rs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit statuses and their meaning: the one table behind `--help` and the man page.
pub const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "success"),
    ("1", "failure; for fetch exactly \"not in the archive\""),
    ("2", "bad usage or configuration"),
    ("200", "fetch outside standby mode: a stored object is corrupt (checksum, size or format)"),
    ("201", "fetch outside standby mode: the repository is unreachable or missing"),
    ("202", "fetch outside standby mode: bad usage or configuration"),
    ("203", "fetch outside standby mode: any other failure (e.g. DEST cannot be written)"),
];

/// Why fetch has its own codes, for `--help` and the man page.
pub const FETCH_EXIT_NOTE: &str =
    "PostgreSQL takes any exit status from 1 to 125 of restore_command for \"no more WAL\" \
and ends recovery there. So fetch, outside standby mode (no standby.signal in the data directory), exits above 125 \
for every failure other than \"not in the archive\", which makes PostgreSQL stop recovery instead. In standby mode \
fetch exits 1 for every failure: PostgreSQL then retries.";

/// The exit-status text of `--help`.
pub fn exit_status_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("  {code:<4} {meaning}\n"));
    }
    text.push('\n');
    text.push_str(FETCH_EXIT_NOTE);
    text
}

/// pgwal: WAL archiving, base backups and point-in-time recovery for PostgreSQL.
#[derive(Debug, Parser)]
#[command(
    name = "pgwal",
    version,
    about = "WAL archiving, base backups and point-in-time recovery for PostgreSQL",
    long_about = "pgwal keeps PostgreSQL clusters recoverable. It compresses (zstd) and checksums \
(SHA-256) every WAL segment and stores it in a repository on local disk or object storage \
(S3, GCS, Azure). Wire it in as:\n\n  archive_command = 'pgwal archive %p'\n  restore_command = 'pgwal fetch %f %p'",
    after_long_help = exit_status_help(),
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: /etc/pgwal/pgwal.toml, if it exists]
    #[arg(short = 'c', long, global = true, env = "PGWAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Repository: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix
    #[arg(long, global = true, env = "PGWAL_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// PostgreSQL data directory
    #[arg(long, global = true, env = "PGDATA", value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// libpq connection string (key=value); PGHOST, PGPORT, PGUSER... also apply
    #[arg(long, global = true, env = "PGWAL_CONNINFO", value_name = "STR", hide_env_values = true)]
    pub conninfo: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a WAL file in the repository (archive_command = 'pgwal archive %p')
    #[command(long_about = "Stores a WAL file (segment, .partial, .history or .backup) in the repository, \
compressed with zstd and with the SHA-256 of its content. The file is checked first: its name, its size, \
its page header and its cluster (system identifier) must match; the first segment archived records the \
cluster in the repository. Exits 0 only once the object is durable. If the same name already holds \
identical content, exits 0 with a notice; if it holds different content, refuses and changes nothing. \
Transient storage errors are retried until archive.retry_deadline (default 20s), then pgwal exits non-zero \
and PostgreSQL retries later.")]
    Archive(ArchiveArgs),
    /// Restore a WAL file from the repository (restore_command = 'pgwal fetch %f %p')
    #[command(long_about = "Writes the WAL file NAME from the repository to DEST, after checking every byte \
against its stored SHA-256, via a temporary file in DEST's directory and a rename. Exits 1 when NAME is not \
in the archive (PostgreSQL's probes for .history files end this way). Any other failure (corrupt object, \
unreachable repository, bad configuration) exits above 125 so that PostgreSQL stops recovery rather than \
ending it early; in standby mode (standby.signal in the data directory) it exits 1 and PostgreSQL retries.")]
    Fetch(FetchArgs),
}

/// Arguments of `archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The WAL file, as PostgreSQL's %p (relative to the data directory)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// Arguments of `fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The WAL file name, as PostgreSQL's %f
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where to write it, as PostgreSQL's %p
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let before =
            Cli::try_parse_from(["pgwal", "--repo", "file:///r", "fetch", "00000002.history", "x"]).expect("before");
        let after =
            Cli::try_parse_from(["pgwal", "fetch", "00000002.history", "x", "--repo", "file:///r"]).expect("after");
        assert_eq!(before.global.repo.as_deref(), Some("file:///r"));
        assert_eq!(after.global.repo.as_deref(), Some("file:///r"));
    }
}
