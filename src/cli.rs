//! The command line, as clap derive structs: raw arguments only, no I/O. The
//! man pages are generated from these definitions (see tests/man_pages.rs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{MAX_RETAIN_DAYS, MAX_RETAIN_FULL};

/// Why fetch has its own codes, for `--help` and the man page.
pub const FETCH_EXIT_NOTE: &str =
    "PostgreSQL takes any exit status from 1 to 125 of restore_command for \"no more WAL\" \
and ends recovery there. So fetch, outside standby mode (no standby.signal in the data directory), exits above 125 \
for every failure other than \"not in the archive\", which makes PostgreSQL stop recovery instead. In standby mode \
fetch exits 1 for every failure: PostgreSQL then retries.";

/// The exit-status text of `--help`, from the table in [`crate::error::exit`].
pub fn exit_status_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in crate::error::exit::TABLE {
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
(S3, GCS, Azure). Wire it in as:\n\n  archive_command = 'pgwal archive %p'\n  restore_command = 'pgwal fetch %f %p'\n\n\
Repository URLs: file:///abs/path (or the bare /abs/path, the same thing), s3://bucket/prefix, \
gs://bucket/prefix, az://container/prefix. A relative path or an unknown scheme is refused. archive and \
backup create a repository on first use: for file:// only its own directory (mode 0700), and only when \
its parent directory exists, so a typo in the path fails instead of starting a new repository elsewhere; \
on every backend the creation prints one notice, 'created a new repository at URL' (for archive it lands \
in PostgreSQL's log).\n\n\
Private by default: whatever the caller's umask, what pgwal writes into a file:// repository, the fetch \
spool, archive markers and fetched WAL is readable by its owner only (files 0600, directories 0700); \
restored files get the modes recorded in the backup (0600/0700, or 0640/0750 for a cluster initialised \
with --allow-group-access).\n\n\
Run pgwal as the user PostgreSQL runs as (usually postgres). It never changes the owner of what it \
writes, so as root it refuses, before writing anything: archive, backup and expire into a file:// \
repository (or, for a new one, its parent directory) that belongs to another user, and restore and \
standby altogether (PostgreSQL does not start on a data directory owned by root). The hint names the \
user, e.g. runuser -u postgres -- pgwal restore .... list and verify only read, and run as root \
too.\n\n\
Errors: only transient storage trouble is retried with backoff until the command's retry_deadline: \
timeouts, throttling (HTTP 429, 503 SlowDown), dropped or reset connections and other 5xx answers. \
Permission denied, bad or missing credentials (401, 403), a missing bucket or container, an endpoint \
that refuses connections or does not resolve, and TLS failures fail at once, with a hint for that \
cause. archive and fetch, whose stderr goes to PostgreSQL's log, print one 'pgwal: error:' line and a \
hint per failed call (retries are noted at --log-level debug); other commands warn about the first few \
retries.",
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
    #[arg(short = 'c', long, global = true, env = "PGWAL_CONFIG", value_name = "FILE", hide_env_values = true)]
    pub config: Option<PathBuf>,
    /// Repository: /abs/path or file:///abs/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix
    #[arg(long, global = true, env = "PGWAL_REPO", value_name = "URL", hide_env_values = true)]
    pub repo: Option<String>,
    /// PostgreSQL data directory (list refuses one that is not; archive and fetch prefer their working directory)
    #[arg(long, global = true, env = "PGDATA", value_name = "DIR", hide_env_values = true)]
    pub pgdata: Option<PathBuf>,
    /// libpq connection string (key=value); PGHOST, PGPORT, PGUSER... also apply
    #[arg(long, global = true, env = "PGWAL_CONNINFO", value_name = "STR", hide_env_values = true)]
    pub conninfo: Option<String>,
    /// Repository key file (32 random bytes as hex or base64, mode 0600): required by an encrypted repository, refused by a plaintext one
    #[arg(long, global = true, env = "PGWAL_ENCRYPTION_KEY_FILE", value_name = "FILE", hide_env_values = true)]
    pub encryption_key_file: Option<PathBuf>,
    /// How much to say on stderr: error, warn, info (default) or debug
    #[arg(long, global = true, env = "PGWAL_LOG_LEVEL", value_name = "LEVEL", hide_env_values = true)]
    pub log_level: Option<crate::log::Level>,
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
Transient storage errors (timeouts, throttling, dropped connections, 5xx) are retried quietly until \
archive.retry_deadline (default 20s); they and permanent ones (permission denied, bad credentials, a \
missing bucket, an unreachable endpoint: no retry) end in one 'pgwal: error:' line and a hint in \
PostgreSQL's log, pgwal exits non-zero and PostgreSQL retries later; the error is preceded by a line giving the archive backlog (files waiting, \
bytes, and how long the oldest has waited).\n\n\
Archiving ahead: run inside a data directory (PATH is pg_wal/NAME and pg_wal/archive_status exists), \
archive also stores up to archive.ahead (default 32) other files that PostgreSQL has finished and will \
ask for after NAME (their .ready status files; history files first, then by name), archive.parallel \
(default 4) at once, all before it exits; it exits 0 only once NAME itself is stored. For each file \
stored ahead it writes, after the object is durable, a marker pg_wal/pgwal/archive/REPO-ID/NAME.ok \
(fsynced with its directory) with the file's inode, size, modification time and SHA-256 and the \
repository instance. PostgreSQL's later call for that file exits 0 at once if the file still has that \
inode, size and time and the repository is the same instance, and removes the marker; otherwise the \
file is archived as usual (create-only with a checksum compare, so nothing is stored twice \
differently). A crash at any point costs at most a second upload. Set archive.ahead = 0 to turn this off. \
Run in a data directory after recovery ended, archive also removes a fetch spool a killed prefetcher \
left behind.\n\n\
The archiving helper (archive.helper = true; off by default): inside a data directory, archive first hands \
NAME to a long-lived helper process of that data directory (the same binary, detached in its own session, \
logging to pg_wal/pgwal/archive-helper.log, one per data directory by a lock on \
pg_wal/pgwal/archive-helper.lock) over the unix socket pg_wal/pgwal/archive-helper.sock (the directory is \
0700 and each side checks the other's uid), and exits 0 only on the helper's explicit answer that NAME is \
stored. The helper keeps its repository connections open, pushes ready files ahead as above \
(archive.parallel at once, up to archive.ahead after the last file asked for), and answers \"stored\" only \
once NAME is durably stored and the repository's format object, read by a request that started after the \
call arrived, still has the instance tag the helper verified when it started (one request serves every \
call waiting for it); stores are the same create-only, identity-checked puts. A repository recreated at \
the same URL, or a call for another repository, makes the helper stop. No helper, a stale socket, no \
answer within archive.retry_deadline (the socket is then removed), or any other answer: archive does all \
the work itself as described above, so a dead or hung helper costs time, never data. A call that found \
no helper starts one once it has archived NAME; a call that finds one just starting (its lock taken in the \
last 3s, no socket yet) waits up to 1s for it. The helper reads the format object through connections of \
its own, so that a check never waits behind an upload, and pushes ahead only within 1s of a successful \
check. The helper exits after 60s without a call, when the \
server named by postmaster.pid at its start stops, when the data directory is gone, or when its socket \
was removed.")]
    Archive(ArchiveArgs),
    /// Restore a WAL file from the repository (restore_command = 'pgwal fetch %f %p')
    #[command(long_about = "Writes the WAL file NAME from the repository to DEST, after checking every byte \
against its stored SHA-256, via a temporary file in DEST's directory and a rename. Exits 1 when NAME is not \
in the archive (PostgreSQL's probes for .history files end this way). Any other failure (corrupt object, \
unreachable repository, bad configuration) exits above 125 so that PostgreSQL stops recovery rather than \
ending it early; in standby mode (standby.signal in the data directory) it exits 1 and PostgreSQL retries.\n\n\
Prefetching: after fetch has delivered a segment in the data directory of a server in archive recovery \
(the working directory, as PostgreSQL runs restore_command, or --pgdata, holding recovery.signal or \
standby.signal), or into DEST pg_wal/RECOVERYXLOG of a data directory with global/pg_control even without \
a signal file or a running server (what pg_rewind --restore-target-wal does for a stopped cluster), it makes \
sure one background prefetcher runs for the data directory (the same binary, detached in its own session, logging to \
pg_wal/pgwal/prefetch.log, one per data directory by a lock on pg_wal/pgwal/prefetch.lock). Any other fetch \
(by hand into /tmp, even from a primary's data directory) is a plain fetch that writes nothing there. It keeps \
the next fetch.prefetch segments (default 8; 0 turns prefetching off) in the spool pg_wal/pgwal/fetch/, \
on the timeline PostgreSQL will ask for them on (the newest timeline in the repository whose history \
agrees with the segment just asked for, else that segment's timeline), with up to 4 GETs in flight at once \
on its one connection pool, the segments decoded one at a time (each on every core) while the next ones \
download. \
Each spooled segment is checked \
against its SHA-256 before it appears under its name, beside a sidecar NAME.meta naming the repository, \
the system identifier, the boot, and the file's inode, size and time, and only once it is fsynced \
(a second thread of the prefetcher fsyncs up to 4 at once while the next ones are decoded, and the \
spool directory after them), so that PostgreSQL's own fsync of every file restore_command hands it \
finds nothing left to write. fetch serves NAME from the spool \
with a rename (which keeps it on disk) only if all of these match (and global/pg_control holds that system identifier); \
anything else is deleted and NAME is fetched from the repository. A segment the prefetcher could not \
fetch or check is simply not spooled, so a corrupt object or an unreachable repository fails fetch \
exactly as without prefetching. The prefetcher removes the spool and exits when recovery ends \
(recovery.signal and standby.signal are gone), within a second of its server's exit (the process named \
by postmaster.pid is gone: a stopped standby, an immediate shutdown, a failed recovery), when its spool \
directory or lock file is removed, or after 60s without a request (10s when it was started without a \
signal file); started for a stopped cluster it serves it only while no signal file is there, and \
follows a server that starts meanwhile; names that are not segments (.history probes) never start it.")]
    Fetch(FetchArgs),
    /// Take a base backup of the running cluster
    #[command(long_about = "Takes a base backup of the running cluster through PostgreSQL's non-exclusive \
backup API (pg_backup_start / pg_backup_stop on one session held open throughout) and stores it in the \
repository: the files of the data directory and of every tablespace, read by parallel workers \
(backup.workers, default one per core) into packs of about 32 MiB, each compressed with zstd \
(backup.compress_level) and stored with its SHA-256 by a create-only put of its own (into an object \
store, up to backup.workers + 3 packs are uploaded at once while the workers go on), plus a manifest with every file's size, mode, \
modification time and SHA-256, the start and stop LSN, timeline, times, PostgreSQL version and system \
identifier. Files PostgreSQL's own base backup skips are skipped (pg_wal contents, postmaster.pid, \
pg_replslot and pg_stat_tmp contents, temporary files, unlogged relations but their init fork...).\n\n\
--type (backup.type, default full): full stores every file; incr stores only what changed since the \
newest complete backup of the cluster (of any type), diff only what changed since the newest full backup. \
Relation files (the forks and segments of tables and indexes in global/, base/ and tablespaces) are compared \
block by block: every backup stores a block map of each (a 16-byte BLAKE3 fingerprint per 8 KiB page), and \
a page whose content equals the parent's at the same place is not stored again but referenced where the \
chain holds it; other files are stored whole when their content (SHA-256 and size) changed. Content, not \
page LSNs, decides, so hint-bit-only changes (clusters without data checksums and wal_log_hints), databases \
copied with STRATEGY FILE_COPY, reused relfilenodes, truncated and re-extended files and pages torn while \
read are all stored as read; dropped files are simply not in the new backup. With no usable backup to \
build on (none yet, or the newest depends on one that is gone), a full backup is taken, a notice on stderr \
says why, and its ID ends in F. Restore, verify and expire find the chain by themselves. The lock (below) keeps \
expire out while a backup runs; as a second line of defence a diff/incr checks just before and after storing \
its manifest that every backup it builds on is still there, and fails, removing what it stored, if one was \
removed meanwhile.\n\n\
Connects with --conninfo / PGWAL_CONNINFO and the usual PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE; \
reads files from --pgdata / PGDATA, else from the server's data_directory. Refuses a server whose system \
identifier is not the repository's cluster (the first backup into an empty repository records it).\n\n\
The data directory must be the live one of the server it is connected to, or the backup is refused (exit \
2) before anything is stored: a cp -a or pg_basebackup copy, a restored clone or a standby's directory has \
the same system identifier, and backing it up would store a stale copy as the newest backup. pgwal checks \
that its global/pg_control holds the server's system identifier; that its canonical path is the server's \
data_directory (when the role may read that setting: superusers and pg_read_all_settings); that its \
postmaster.pid exists, names that directory and the server's port; and, right after pg_backup_start, that \
its pg_control holds the checkpoint that call just made (the same checkpoint and REDO location the server \
reports with pg_control_checkpoint(), at or after the backup's start LSN, on the server's timeline, last \
written when the server's was, in the state of its role: in production on a primary, in archive recovery on \
a standby). A copy's pg_control is \
older, a standby's says it is in recovery.\n\n\
--checkpoint (backup.checkpoint): fast, the default (what pgwal always did, as WAL-G does), asks for \
an immediate checkpoint: the backup starts at once, and the server writes its dirty buffers as fast as it \
can; spread (pg_basebackup's default) lets the server pace the checkpoint pg_backup_start waits for by \
checkpoint_completion_target, sparing a busy primary the burst of writes, so the backup may wait minutes \
before it reads a file (it says so once on stderr).\n\n\
After pg_backup_stop it waits (backup.wal_timeout, default 5m) until every WAL segment from the start to \
the stop LSN is in the repository (PostgreSQL's archive_command must be 'pgwal archive %p'), saying on \
stderr which segment it waits for, and stores the manifest last: a backup exists, for list and restore, \
exactly when its manifest does. Exits 0 only then, and prints the backup ID (e.g. 20261123T074000F) on \
stdout, alone; on stderr one summary line (files, size, stored size, duration, WAL range as LSNs and \
segments), which --log-level warn drops. A backup that fails after storing packs (a storage error, or WAL \
that did not arrive in time) removes them and says how many: they are not a backup.\n\n\
From a streaming standby (the server is in recovery): the files come from the standby, and \
--primary-conninfo (PGWAL_PRIMARY_CONNINFO, backup.primary_conninfo) must reach its primary, which pgwal \
checks, before the backup starts, to be a primary of the same cluster on which the role may call \
pg_switch_wal(). After pg_backup_stop pgwal connects there again and calls pg_switch_wal(), so that the primary completes the segment holding the \
backup's stop LSN and its archive_command stores it in the repository even when the primary is quiet. \
Without --primary-conninfo a backup from a standby is refused at once (exit 2): it would wait for a segment \
that a quiet primary may not finish for hours. --primary-conninfo is ignored when the server is a primary.\n\n\
Two backups of one repository never run at once, nor a backup and an expire: the lock object lock/backup \
names its holder (backup or expire, PID, host, start time), and a backup that finds it held fails at once \
with exit 4 and an error naming it ('another expire of this repository is running (...)'), storing \
nothing. A lock left by a killed backup or expire on the same host is taken over at once; one from another \
host after backup.lock_stale_after (default 6h). A backup stopped by SIGTERM or \
SIGINT (systemctl stop, the daemon stopping, Ctrl-C) ends its session (PostgreSQL aborts the backup), \
removes the packs it stored, releases the lock and exits 1 ('interrupted by SIGTERM'). A backup killed \
otherwise (SIGKILL, a crash) leaves packs without a manifest, which nothing reads and expire removes; run \
the backup again.")]
    Backup(BackupArgs),
    /// List backups and archived WAL
    #[command(long_about = "Lists the complete backups (those whose manifest is stored; a backup that is \
running or was interrupted has none and is only counted), oldest stop time first, with ID, type, parent, \
start and stop time (UTC), start and stop LSN, timeline, data size and stored size; then the archived WAL \
of each timeline: first and last segment and every gap between them, and the windows recovery along \
that timeline can reach ('recoverable: FROM_LSN (time, end of backup ID) .. TO_LSN (end of SEGMENT)'): \
each starts at the stop LSN and time of the oldest backup that has all its own WAL and leads onto the \
timeline (following the .history files, so a window of timeline 2 can start from a backup of timeline 1) \
and ends with the last segment archived without a gap after it; a gap splits the windows, and the backups \
before it recover only up to it. Then the archive's health: the \
newest segment and how long ago it was stored, the newest backup and how long ago it stopped. Reads only \
listings, the manifests, the .history files and one object's metadata (fast on millions of segments: WAL is listed one log-file \
directory of 256 segments at a time, 16 directories at once). A missing repository is an error, and \
nothing is created.\n\n\
With --json, prints one JSON object, a stable interface (fields may be added, never renamed or removed):\n\n\
{\"backups\": [{\"id\": \"20261123T074000F\", \"type\": \"full\" or \"incr\", \"parent\": ID or null, \
\"start_time\": \"2026-11-23T07:40:00Z\", \"stop_time\": RFC 3339 UTC, \"start_lsn\": \"0/2000028\", \
\"stop_lsn\": \"0/2000100\", \"timeline\": 1, \"stop_timeline\": 1, \"server_version_num\": 150018, \
\"data_size\": bytes, \"stored_size\": bytes, \"files\": count}, ...],\n\
 \"wal\": [{\"timeline\": 1, \"first\": segment name or null, \"last\": segment name or null, \
\"segments\": count, \"gaps\": [{\"first\": segment, \"last\": segment}, ...], \"partials\": \
[\"...partial\", ...], \"history\": whether TTTTTTTT.history is stored, \"recovery_windows\": \
[{\"backup\": ID of the oldest backup of the window, \"backups\": [IDs of every backup recovering into it, \
oldest first], \"from_lsn\": that backup's stop LSN, \"from_time\": its stop time (RFC 3339 UTC), \
\"to_segment\": the last segment without a gap before it, \"to_lsn\": the end of that segment (recovery can \
replay up to here)}, ...] (oldest first; empty when no backup leads onto the timeline)}, ...],\n\
 \"incomplete\": [IDs of backups without a manifest],\n\
 \"health\": {\"newest_segment\": segment name or null, \"newest_segment_time\": RFC 3339 UTC or null, \
\"newest_segment_age_seconds\": n or null, \"newest_backup\": ID or null, \"newest_backup_age_seconds\": n or \
null, \"gaps\": number of gaps over all timelines},\n\
 \"drills\": [{\"backup\": ID, \"started\": RFC 3339 UTC, \"finished\": RFC 3339 UTC, \"duration_seconds\": \
whole seconds, \"target\": the recovery target in words, \"reached_lsn\": \"X/Y\" or null, \"reached_timeline\": n \
or null, \"reached_time\": time of the last replayed transaction or null, \"passed\": bool, \"findings\": [one \
line per failed check]}, ...] (the newest 'pgwal drill' of each listed backup that has one, in the order of \
backups; the text output gives one line per drill, before the health line)}\n\n\
backups are sorted by stop_time, wal by timeline; LSNs are PostgreSQL's X/Y hex form, sizes are bytes.\n\n\
When the data directory is known (the working directory, --pgdata or PGDATA), list ends with the archive \
backlog from pg_wal/archive_status/*.ready, and the JSON object has \"archive_backlog\": {\"pgdata\": DIR, \
\"ready_files\": count, \"ready_bytes\": bytes, \"oldest_ready_time\": RFC 3339 or null, \"lag_seconds\": \
seconds the oldest waiting file has waited, or null} (null when the data directory is unknown).")]
    List(ListArgs),
    /// Check the setup: configuration, repository, PostgreSQL, archiving
    #[command(long_about = "Checks that this setup can archive, and says what is wrong in plain words: one \
'ok:' or 'error:' line per check (with a 'hint:' where one helps). In order: the configuration; the \
repository (reachable; one that does not exist yet is fine, the first archive creates it); the PostgreSQL \
connection (--conninfo, PGHOST...); that the server's system identifier is the repository's cluster; \
wal_level is replica or logical; archive_mode is on or always; archive_command calls 'pgwal archive'. \
Then it forces a WAL switch (pg_switch_wal(), so it needs the primary and a role allowed to call it) and \
waits up to --timeout until that segment is in the repository. Exits 0 only if every check passed. \
Creates nothing itself.")]
    Check(CheckArgs),
    /// Restore a backup into a directory, set up to recover to a point in time
    #[command(long_about = "Restores a backup into --target-dir and writes the recovery settings, so that \
'pg_ctl start -D DIR' recovers through the archived WAL to the target and stops there.\n\n\
The backup is --backup ID, else the newest complete backup (by stop time) that can reach the target: for \
--target-time the newest that ended at or before that time, for --target-lsn the newest that ended at or \
before that LSN, otherwise the newest, always on the history of the recovery timeline. Before anything is \
written, restore refuses a target that no backup plus the archived WAL can reach: a target before the \
oldest backup's end, or a segment missing from the WAL the recovery needs (the backup's own WAL; for \
--target-lsn up to the target; for --target-time up to the newest segment archived before that time and \
the one after it; without a target, up to the newest archived segment), naming the missing segment.\n\n\
Files are fetched in packs by parallel workers (--jobs), written at their offsets, checked against the \
SHA-256 in the manifest, and fsynced; a mismatch fails the restore and names the object. From an object \
store, each pack is read in ranged parts of 8 MiB, 4 at once, and one pack more than --jobs downloads \
while the others are decoded; every part after the first must come from the same object (If-Match on its \
ETag, and the same ETag and size in the answer), so a pack that changes while it is read fails the restore \
as corrupt. Directories and \
files get their modes from the backup (0700 for the data directory). global/pg_control is written last, \
so a restore that fails or is killed leaves a directory PostgreSQL refuses to start; running the same \
restore again resumes it. Tablespaces return to their original directories, linked from pg_tblspc, \
unless --tablespace-map moves them; restore refuses to write into a tablespace directory that already \
holds this PostgreSQL version's subdirectory (it may belong to a running cluster).\n\n\
A diff or incr backup is restored from its chain: what it did not store itself is read from the packs of \
the older backups it builds on (following each manifest's parent back to the full backup), and every file \
is still checked against the SHA-256 of its whole content. Before anything is written, restore loads every \
manifest of the chain and checks that each pack it needs is stored at the size its manifest records: a \
missing manifest, a missing or truncated pack, or a piece in a backup outside the chain refuses the restore \
(exit 1). --delta and --tablespace-map work as for a full backup; a file the newer backup no longer has is \
not restored (with --delta, it is removed).\n\n\
Then it writes backup_label, recovery.signal and, in postgresql.auto.conf (earlier recovery settings there \
are commented out): restore_command calling this pgwal binary with the same --repo and --config, \
recovery_target_timeline, the target setting (the other target settings set to '' so that none left in \
postgresql.conf applies) and recovery_target_action. Archive settings stay as they were: a restored server \
that is promoted archives into the same repository on a new timeline, which never overwrites the old \
timeline's WAL; set archive_mode = off first for a throwaway copy. The backup ID is printed on stdout.\n\n\
Exits 2 for a request that cannot be carried out as given (bad or conflicting targets, an unknown backup \
ID, a --tablespace-map OLD_DIR that is not a tablespace of the backup, a non-empty target directory \
without --delta, a tablespace directory in use), 1 for every other failure (an unreachable target, missing \
WAL, a corrupt object, a directory that cannot be written). Refuses to run as root (exit 2, before \
writing anything): run it as the user PostgreSQL runs as, e.g. runuser -u postgres -- pgwal restore ....")]
    Restore(RestoreArgs),
    /// Restore the newest backup as a standby of a running primary
    #[command(long_about = "Seeds (or, with --delta, rebuilds) a standby: restores the newest backup into \
--target-dir as 'pgwal restore' does, then writes standby.signal and, in postgresql.auto.conf, \
primary_conninfo, primary_slot_name (with --slot), restore_command calling this pgwal binary with the same \
--repo and --config, and recovery_target_timeline = 'latest'. Started, the server replays the archived \
WAL, then streams from the primary. With --create-slot, the physical replication slot --slot is created \
on the primary first (an existing slot of that name is used as it is), connecting with --primary-conninfo. \
A gap in the archived WAL after the backup is reported as a warning: streaming may bridge it while the \
primary still has that WAL. Like restore, refuses to run as root.")]
    Standby(StandbyArgs),
    /// Prove that a backup restores: recover it in a throwaway PostgreSQL and check it
    #[command(long_about = "Restores a backup into a scratch directory, starts a throwaway PostgreSQL on \
it, lets it recover through the archived WAL, checks the result, records it in the repository and removes \
the scratch directory. Never connects to the live cluster nor writes into its data directory.\n\n\
The backup is --backup ID, else the newest complete backup (by stop time). The scratch directory is \
DRILL_DIR/ID-TIME, DRILL_DIR being drill.dir of the config file (default /var/tmp/pgwal-drill, created \
with mode 0700); drill refuses to start when the file system there has less free space than the \
backup's data size plus 256 MiB. The backup is restored as 'pgwal restore' would (every file checked \
against its SHA-256), its tablespaces moved into the scratch directory. The server binaries are those of \
the backup's major version (server_version_num in its manifest): PG_BINDIR, else 'pg_config --bindir', \
else /usr/lib/postgresql/N/bin, the first whose postgres has that major version.\n\n\
The throwaway server runs on its own configuration (the cluster's postgresql.conf is not read; settings in \
its postgresql.auto.conf that could reach outside the scratch directory are overridden on the command \
line): listen_addresses = '' (no TCP), its Unix socket in the scratch directory, archive_mode = off, no \
external PID file, hot_standby = off, logging to DIR/postgresql.log. restore_command is this pgwal binary \
fetching from this repository, exactly as 'pgwal restore' writes it, so the drill exercises the same \
path as a real recovery; nothing the throwaway server does writes into the repository. Recovery goes to \
the target given (--target-time, --target-lsn, --target-xid, --target-name, --target-immediate, as for \
restore), with recovery_target_action = promote so that the copy becomes queryable, else to the newest \
archived WAL on the backup's timeline (or the newest timeline descending from it). If pgwal dies, the \
kernel stops the throwaway server (immediate shutdown).\n\n\
Checks, in order, each passed, failed or skipped with a reason: restore (the backup restored and its \
WAL is there); recovery_target (the server ended recovery and reached the target: for the default \
target, the LSN reached is in the newest archived segment of the expected timeline or after its start; \
for a named target PostgreSQL logged where it stopped; LSN, timeline and the time of the last replayed \
transaction are recorded); queries (the server answers SELECT on pg_database); pg_amcheck (pg_amcheck \
--all --install-missing over every database, heap and B-tree checks; skipped when pg_amcheck is not \
installed); shutdown (a fast shutdown ends with exit 0 and pg_controldata says 'shut down'); \
pg_checksums (pg_checksums --check after the shutdown, when the cluster has data checksums, else \
skipped). The checks connect over the scratch socket as the OS user, else as 'postgres'; libpq's \
PG* environment variables are not passed to the server or the clients.\n\n\
The result is stored in the repository as drill/ID/TIME (create-only, never rewritten); 'pgwal list' \
shows the newest drill of each backup. On stdout: one line per check and a summary, or with --json the \
record: {\"format\": 1, \"backup\": ID, \"started\": RFC 3339, \"finished\": RFC 3339, \
\"duration_seconds\": seconds, \"target\": the target in words, \"reached_lsn\": \"X/Y\" or null, \
\"reached_timeline\": n or null, \"reached_time\": RFC 3339 or null, \"passed\": bool, \"checks\": \
[{\"name\": check, \"outcome\": \"passed\", \"failed\" or \"skipped\", \"detail\": one line (omitted \
when empty)}, ...]}.\n\n\
The scratch directory is removed at the end, unless --keep (its path is then printed on stderr; the \
server is stopped either way). The whole drill is bounded by drill.timeout (default 1h): when recovery \
or a check is still running then, the server is stopped by its PID and the drill is recorded as failed \
with the reason. SIGINT or SIGTERM stops the server, removes the scratch directory and records nothing \
(an interrupted drill proves nothing either way); pgwal then exits 1.\n\n\
Exits 0 when every check passed (or was skipped), 3 when the drill found a problem (recorded, listed on \
stdout), 2 for bad usage (an unknown --backup ID, too little free space) and when run as root, which \
PostgreSQL refuses (run it as the postgres user, e.g. sudo -u postgres pgwal drill), 1 when it could not \
run (the repository unreachable, no server binaries of the backup's version).")]
    Drill(DrillArgs),
    /// Check that every backup can be recovered to every point after it
    #[command(long_about = "Checks the repository and lists every problem with its object, WAL segment or \
backup. Reads back every backup's manifest and every pack it names, decompresses them and recomputes their \
SHA-256 and that of every file in the manifest; reads the .history files and builds the timeline tree (every \
timeline from 2 to the newest needs its history file, or recovery cannot follow it); checks that for each \
backup, and each timeline descending from it, every WAL segment from the backup's start LSN through its stop \
LSN and on to the newest segment archived on that timeline is present (switching timelines at each history \
file's switch point): a missing segment names every backup whose recovery to the newest archived WAL \
crosses it (backups after the gap are not named); and reads back every archived WAL file, checking its SHA-256, and for segments their \
size, first page (position and timeline as the name says) and cluster. Objects are read --jobs at a time, \
so memory stays bounded. A repository with WAL but no backup yet is checked for what it has (a gap in a \
timeline's WAL is then an error).\n\n\
A diff or incr backup is checked with its chain: a backup it depends on (its parent, or one whose packs its \
extents point into) that is missing or whose manifest is damaged is an error naming it ('backup X depends \
on backup Y, which is missing'), and each pack of an older backup it reads is read back and hashed as its \
own ('pack K of backup Y, which backup X reads, is missing'), so a damaged pack of a full is an error for \
the full and for each backup reading it. Block maps (map/ objects) are read back and hashed like packs.\n\n\
Warnings do not fail verify: a gap in WAL no backup needs, and a backup directory without a manifest (a \
backup that is running, or was interrupted; 'pgwal expire' removes the latter).\n\n\
--quick reads no data: manifests and history files are read, packs and WAL are checked by name and size \
from listings only. --backup ID checks one backup and only the WAL it needs.\n\n\
Exits 0 when there is no error, 3 when verify found errors (listed on stdout), 2 for bad usage (an \
unknown --backup ID), 1 when it could not run (an unreachable or missing repository).\n\n\
With --json, prints one JSON object, a stable interface (fields may be added, never renamed or removed):\n\n\
{\"ok\": true when there is no error, \"quick\": bool, \"seconds\": wall-clock seconds, \
\"checked\": {\"backups\": n, \"packs\": n, \"files\": n, \"wal_files\": n, \"histories\": n, \
\"original_bytes\": bytes read and hashed (uncompressed), \"stored_bytes\": bytes read}, \
\"problems\": [{\"severity\": \"error\" or \"warning\", \"kind\": one of corrupt_object, missing_object, \
size_mismatch, file_checksum, missing_wal, missing_history, wal_gap, incomplete_backup, wrong_cluster, \
missing_dependency, \
\"object\": object key or null, \"segment\": WAL file name (the first of a run) or null, \"backup\": \
backup ID or null (the oldest, when several are concerned), \"backups\": [every backup concerned, oldest \
first], \"message\": one line}, ...]}\n\n\
Errors come first in problems.")]
    Verify(VerifyArgs),
    /// Delete the backups beyond the retention policy and the WAL no retained backup needs
    #[command(long_about = "Applies the retention policy: --retain-full N keeps the N newest full \
backups; --retain-days D keeps every backup that stopped in the last D days plus the newest full backup \
that stopped before them, so every point of the last D days stays recoverable. With both, a backup either \
rule keeps is kept. Without flags, expire.retain_full and expire.retain_days of the config file apply (flags \
replace the file's policy as a whole). With no policy at all (no flag, nothing in the config file), expire \
deletes nothing, prints one warning and exits 0, so that a cron line 'pgwal expire && pgwal verify --quick' \
goes on (as pgBackRest does). Backups are ranked by their stop time (then stop LSN), never by ID. \
The newest backup is always kept. A kept backup keeps everything it depends on (its parent and every \
backup its extents point into, transitively: incr, incr, full), and a diff or incr backup is kept exactly \
when everything it depends on is kept: the dependents of a kept full stay, those of an expired full go \
with it.\n\n\
--backup ID deletes that one backup instead (--retain-* do not apply), and the WAL no remaining backup \
needs; with --with-dependents also every backup depending on it, transitively. Refused (exit 2, nothing \
deleted) when other backups depend on it and --with-dependents is absent (the error names them), and when \
it would delete the newest backup (which the policy always keeps too). It leaves incomplete backups and \
stray drill results to a policy run.\n\n\
WAL: on each timeline, every segment from the first one any retained backup reads from it (for recovery \
to any point after the backup, on the backup's timeline and every timeline descending from it) is kept; \
older segments, .partial and .backup files go. The WAL of a timeline no retained backup reaches goes too, \
unless a backup is being taken or the timeline's history file is missing. .history files are never \
deleted (they are tiny, and PostgreSQL's search for the newest timeline stops at the first missing one).\n\n\
Expire never interleaves with a backup: it takes the repository lock lock/backup (as a backup does) \
before it reads the backups and holds it until its last deletion, so no backup can choose as its parent, \
or build on, a backup expire is deleting, and expire never plans from a list that lacks a backup being \
stored. While a backup (or another expire) holds the lock, expire reads and deletes nothing and fails at \
once with exit 4 and one line naming the holder ('another backup of this repository is running (lock \
'lock/backup' held by 'pgwal backup', PID ... on host ..., since ...)'); run it again once the backup has \
ended (the daemon runs its jobs one at a time, so its own backups and expires never collide; a cron line \
'pgwal backup && pgwal expire' neither). A lock left by a killed backup or expire on this host is taken \
over at once, one from another host after backup.lock_stale_after. Holding the lock, expire removes the \
packs of backup directories without a manifest (killed backups), on local disk also the hidden \
staging files ('<name>#N') a put cut short leaves, and the directories left empty; --dry-run takes no lock, runs while a \
backup does and leaves that backup's directory out. SIGTERM or SIGINT stops expire before its next \
deletion; it releases the lock and exits 1.\n\n\
Deletion order keeps the repository consistent at every step: each expired backup's manifest first \
(from then on the backup does not exist), then its packs, then its drill results (drill/ID/); dependents \
before the backups they depend on, otherwise oldest backup first; then packs of backups without a manifest, and drill results whose backup is gone; then WAL, oldest segment first on each timeline, so what is kept never gets a hole. \
An interrupted expire leaves a repository that verifies; run it again to finish. --dry-run deletes \
nothing.\n\n\
Nothing is deleted without a record: each backup ('removed backup ID (N objects, N drill results)', \
'removed incomplete backup ID ...', 'removed the drill results of backup ID, which is gone (N)') and each run of WAL files ('removed WAL of timeline T: FIRST .. LAST (N segments, N \
.partial segments, N .backup files)', at most one line per log file directory) is named on stdout, flushed, \
as soon as it is gone, before the next deletion starts; when a deletion fails, the objects of that backup or \
run that went before the failure are named ('removed K of the N objects of backup ID before the error: \
KEY, ...') and expire stops with the error (exit 1). A cron log thus shows what went even when a run fails \
half way. --dry-run prints the same lines as 'would remove ...'. Then the backups kept ('kept N backup(s): \
ID, ...'; 'nothing to expire' first when nothing goes). Refuses (exit 2, nothing deleted) --retain-full 0, \
--retain-days 0 or negative, and a repository without any complete backup.")]
    Expire(ExpireArgs),
    /// Change the key of an encrypted repository (no data object is rewritten)
    #[command(long_about = "Changes the repository key of an encrypted repository: the data keys \
that encrypt the objects are wrapped with the key of --new-key-file into a new keyring object \
(keyring/TAG, stored create-only), the pointer keyring/current is replaced to name it (the one object \
pgwal ever overwrites), then the older keyrings are deleted. No data object is read or rewritten, so \
rekey takes a moment whatever the repository's size. Afterwards the new key opens the repository and the \
old one does not: point [encryption] key_file (or PGWAL_ENCRYPTION_KEY_FILE) of every server, standby \
and restore_command at the new key file, and keep a copy of it; the old key file can then be destroyed. \
The current key is the configured one (--encryption-key-file, PGWAL_ENCRYPTION_KEY_FILE or [encryption] \
key_file).\n\n\
An interrupted rekey (killed, or the storage failed) leaves a repository that opens with the old or \
the new key: run rekey again with whichever opens it. Rekey takes the backup lock lock/backup, so it \
does not run beside a backup, an expire or another rekey.\n\n\
Rekey protects against a key file that is lost or leaked from now on; whoever read both the old key and \
the old keyring before the rekey knows the data keys, which rekey keeps (see pgwal-repository(5)).")]
    Rekey(RekeyArgs),
    /// Run backups, expire, verify and drills on a schedule, and serve Prometheus metrics
    #[command(long_about = "A long-running service for one repository (see config/pgwal.service \
for a systemd unit). It runs the jobs of the config file's [schedule] section: full, diff, incr, expire, \
verify and drill, each a 5-field cron expression in local time (minute hour day-of-month month day-of-week, \
e.g. \"0 1 * * *\"; names, ranges, steps and @daily work too); a weekly full with daily incrementals is \
full = \"30 1 * * 0\" and incr = \"30 1 * * 1-6\". A bad expression stops the daemon at start (exit 2) with one line naming the key.\n\n\
Jobs run one at a time from a queue, jobs due in the same minute in the order full, diff, incr, expire, verify, \
drill; a job that comes due while it still waits or runs is not queued twice. Each job is this pgwal \
executable run as 'pgwal backup --type full|diff|incr', 'pgwal expire', 'pgwal verify' or 'pgwal drill', with the daemon's \
--config, --repo, --pgdata, --conninfo and --log-level passed in the environment: it takes the same locks \
and follows the same output rules as that command run by hand, its stdout and stderr go where the \
daemon's go (the journal), and its failure or crash is logged and never stops the daemon. One line on \
stderr when a job starts ('job full started: pgwal backup --type full (pid N)') and one when it ends \
('job full ended: exit status 0 after 12.3s', or a warning 'job full failed: exit status 1 after 3.0s').\n\n\
With [metrics] listen = \"127.0.0.1:PORT\" it serves GET /metrics (OpenMetrics text, which Prometheus \
scrapes) and GET /health. The address must be a loopback one unless metrics.allow_remote = true. Metrics: \
pgwal_backup_last_success_timestamp_seconds{type} and pgwal_backup_last_duration_seconds{type} (stop time \
and start-to-stop time of the newest complete backup of each type), pgwal_backups, \
pgwal_backups_incomplete, pgwal_repository_stored_bytes (the packs of the complete backups; archived WAL \
not included), pgwal_archive_newest_segment_timestamp_seconds and pgwal_archive_newest_segment_age_seconds, \
pgwal_archive_gaps, pgwal_archive_backlog_files, _bytes and _lag_seconds (when --pgdata / PGDATA is a data \
directory), pgwal_drill_last_success and pgwal_drill_last_timestamp_seconds (the newest drill result in \
the repository), pgwal_verify_last_success and pgwal_verify_last_timestamp_seconds (the daemon's last \
verify job), pgwal_job_last_exit_code{job}, pgwal_job_last_end_timestamp_seconds{job}, \
pgwal_job_last_duration_seconds{job}, pgwal_job_running{job}, pgwal_jobs_queued, pgwal_repository_up and \
pgwal_repository_read_timestamp_seconds. A value not known yet (no backup, no verify run) is left out. The \
repository is read as list reads it, at start, after each job and every metrics.refresh (default 1m), \
never per scrape; ages are computed at each scrape.\n\n\
GET /health answers 200 and one line when the newest complete backup stopped within \
health.max_backup_age, the newest archived segment was stored within health.max_archive_age, and the \
newest drill finished within health.max_drill_age and passed (durations such as \"26h\", \"15m\", \
\"8d\"); otherwise 503 and one line saying why. A part without an age is not checked.\n\n\
SIGTERM or SIGINT: the running job gets SIGTERM (a backup then removes its packs and releases the lock, so \
nothing of it is listed), the daemon waits for it up to 25s (then SIGKILL) and exits 0; the interrupted \
job runs again at its next time. SIGHUP reads the config file again: the schedule, health ages and refresh \
period change at once, the running job goes on; a changed metrics.listen takes effect at the next start; a \
file that does not load is logged and the old configuration kept.")]
    Daemon,
    /// Internal: the background prefetcher that `fetch` starts during recovery
    #[command(name = "prefetch-wal", hide = true)]
    PrefetchWal,
    /// Internal: the long-lived archiving helper that `archive` starts in a data directory
    #[command(name = "archive-helper", hide = true)]
    ArchiveHelper,
}

/// Arguments of `drill`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").multiple(false).args([
    "target_time", "target_lsn", "target_xid", "target_name", "target_immediate"
])))]
pub struct DrillArgs {
    /// Backup to drill [default: the newest complete backup]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover to this time (as for restore) [default: the newest archived WAL]
    #[arg(long, value_name = "TS")]
    pub target_time: Option<String>,
    /// Recover to this WAL position
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover until this transaction has committed
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover to this restore point
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Recover only until the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// Print the drill's record as JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Keep the scratch directory (the server is stopped all the same)
    #[arg(long)]
    pub keep: bool,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Check only this backup and the WAL it needs
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Names and sizes only: read no pack or WAL data
    #[arg(long)]
    pub quick: bool,
    /// Print the documented JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Objects read in parallel [default: 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
}

/// Arguments of `rekey`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// The new repository key file (32 random bytes as hex or base64, mode 0600)
    #[arg(long, value_name = "FILE")]
    pub new_key_file: PathBuf,
}

/// Arguments of `expire`.
#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// Keep the N newest full backups (at least 1)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = parse_retain_full)]
    pub retain_full: Option<u32>,
    /// Keep what recovers to every point of the last D days (at least 1)
    #[arg(long, value_name = "D", allow_negative_numbers = true, value_parser = parse_retain_days)]
    pub retain_days: Option<u32>,
    /// Print what would be deleted; delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Delete this one backup (and the WAL no other backup needs) instead of applying the policy
    #[arg(long, value_name = "ID", conflicts_with_all = ["retain_full", "retain_days"])]
    pub backup: Option<String>,
    /// With --backup: also delete every backup depending on it (its diff/incr backups)
    #[arg(long, requires = "backup")]
    pub with_dependents: bool,
}

fn parse_retain_full(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_RETAIN_FULL).contains(&n) => Ok(n as u32),
        Ok(0) => Err("0 would delete every backup; give at least 1".into()),
        _ => Err(format!("'{s}' is not a number of backups from 1 to {MAX_RETAIN_FULL}")),
    }
}

fn parse_retain_days(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_RETAIN_DAYS).contains(&n) => Ok(n as u32),
        Ok(n) if n < 0 => Err(format!("{n} days is negative; give a number of days from 1 to {MAX_RETAIN_DAYS}")),
        _ => Err(format!("'{s}' is not a number of days from 1 to {MAX_RETAIN_DAYS}")),
    }
}

/// `--type` of `backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackupKind {
    /// Every file
    Full,
    /// Only what changed since the newest full backup (a full one if there is none)
    Diff,
    /// Only what changed since the newest complete backup of any type (a full one if there is none)
    Incr,
}

/// `--checkpoint` of `backup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointArg {
    /// Immediate: start at once, write all dirty buffers as fast as possible
    Fast,
    /// Paced by checkpoint_completion_target like a scheduled checkpoint (the default)
    Spread,
}

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Full, differential or incremental [default: backup.type, else full]
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub kind: Option<BackupKind>,
    /// The checkpoint the backup starts with [default: backup.checkpoint, else fast]
    #[arg(long, value_enum, value_name = "MODE")]
    pub checkpoint: Option<CheckpointArg>,
    /// Backing up a standby: how to reach its primary (libpq key=value), to switch WAL there
    #[arg(long, value_name = "STR", env = "PGWAL_PRIMARY_CONNINFO", hide_env_values = true)]
    pub primary_conninfo: Option<String>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the documented JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// How long to wait for the switched WAL segment to arrive (e.g. 30s, 2m)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
        .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
        .ok_or_else(|| format!("invalid duration '{s}' (expected e.g. 30s or 2m, at most 1h)"))
}

/// Arguments of `archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// The WAL file, as PostgreSQL's %p (relative to the data directory)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
}

/// Where and how a restore writes: shared by `restore` and `standby`.
#[derive(Debug, Args)]
pub struct TargetDirArgs {
    /// Directory to restore into: new, empty, or with --delta an earlier copy of this cluster
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// Move the tablespace at OLD_DIR (its original directory) to NEW_DIR; repeatable
    #[arg(long = "tablespace-map", value_name = "OLD_DIR=NEW_DIR")]
    pub tablespace_map: Vec<String>,
    /// Restore over an existing copy: keep files whose size and SHA-256 match, rewrite the others, remove
    /// files the backup does not have
    #[arg(long)]
    pub delta: bool,
    /// Packs fetched and written in parallel [default: one per core]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// Arguments of `restore`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").multiple(false).args([
    "target_time", "target_lsn", "target_xid", "target_name", "target_immediate"
])))]
pub struct RestoreArgs {
    /// Target directory and write options
    #[command(flatten)]
    pub dir: TargetDirArgs,
    /// Backup to restore [default: the newest that can reach the target]
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover to this time: RFC 3339 (2026-11-23T13:03:27Z) or PostgreSQL syntax (2026-11-23 14:03:27+01);
    /// without a time zone, UTC
    #[arg(long, value_name = "TS")]
    pub target_time: Option<String>,
    /// Recover to this WAL position (as pg_current_wal_lsn() prints it, e.g. 0/3000148)
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover until this transaction (as txid_current() prints it) has committed
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (made with pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Recover only until the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// What the server does at the target: pause (read-only until pg_wal_replay_resume()), promote or
    /// shutdown [default: pause]
    #[arg(long, value_name = "ACTION", requires = "target")]
    pub target_action: Option<String>,
    /// Timeline to recover along: latest, current (the backup's) or a number
    #[arg(long, value_name = "TIMELINE", default_value = "latest")]
    pub target_timeline: String,
}

/// Arguments of `standby`.
#[derive(Debug, Args)]
pub struct StandbyArgs {
    /// Target directory and write options
    #[command(flatten)]
    pub dir: TargetDirArgs,
    /// How the standby connects to the primary (libpq key=value), written as primary_conninfo
    #[arg(long, value_name = "STR", env = "PGWAL_PRIMARY_CONNINFO", hide_env_values = true)]
    pub primary_conninfo: String,
    /// Physical replication slot on the primary, written as primary_slot_name
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,
    /// Create the slot on the primary (an existing one is used as it is)
    #[arg(long, requires = "slot")]
    pub create_slot: bool,
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

    #[test]
    fn backup_list_and_check_arguments() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        match parse(&["pgwal", "backup"]).expect("backup").command {
            Command::Backup(a) => assert_eq!(a.kind, None, "backup.type decides"),
            other => panic!("{other:?}"),
        }
        match parse(&["pgwal", "backup", "--type", "incr", "--conninfo", "host=/s"]).expect("incr").command {
            Command::Backup(a) => assert_eq!(a.kind, Some(BackupKind::Incr)),
            other => panic!("{other:?}"),
        }
        match parse(&["pgwal", "backup", "--checkpoint", "fast", "--primary-conninfo", "host=p"]).expect("fast").command
        {
            Command::Backup(a) => {
                assert_eq!(a.checkpoint, Some(CheckpointArg::Fast));
                assert_eq!(a.primary_conninfo.as_deref(), Some("host=p"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["pgwal", "backup", "--checkpoint", "immediate"]).is_err());
        match parse(&["pgwal", "backup", "--type", "diff"]).expect("diff").command {
            Command::Backup(a) => assert_eq!(a.kind, Some(BackupKind::Diff)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["pgwal", "backup", "--type", "delta"]).is_err());
        assert!(matches!(
            parse(&["pgwal", "list", "--json"]).expect("list").command,
            Command::List(ListArgs { json: true })
        ));
        match parse(&["pgwal", "check", "--timeout", "2m"]).expect("check").command {
            Command::Check(a) => assert_eq!(a.timeout, std::time::Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
        match parse(&["pgwal", "check"]).expect("check").command {
            Command::Check(a) => assert_eq!(a.timeout, std::time::Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
        for bad in ["0s", "soon", "2h"] {
            assert!(parse(&["pgwal", "check", "--timeout", bad]).is_err(), "{bad}");
        }
    }
}
