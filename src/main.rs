//! The `pgwal` binary: parse arguments, load configuration, open the
//! repository, call the command (options are assembled in `config/`, the
//! work is done in `ops/`), print what it returns, and map the outcome to an
//! exit status.

use std::process::ExitCode;

use clap::Parser;
use pgwal::cli::{Cli, Command};
use pgwal::error::{exit, exit_code, Caller, Error, ExitRules};
use pgwal::local::{backlog, data_dir};
use pgwal::ops::{
    archive, backup, check, daemon, drill, expire, fetch, list, prefetch, rekey, restore, standby, verify,
};
use pgwal::repo::Repository;
use pgwal::storage::{self, Access, RetryPolicy};
use pgwal::{config, Result};

fn main() -> ExitCode {
    // Private by default (SPEC §3.7), whatever the caller's umask: every file
    // and directory pgwal creates without an explicit mode (the repository's
    // objects and directories, the spool, archive markers, fetched WAL, the
    // recovery settings) is then 0600 / 0700. Restored data files and
    // directories get their modes explicitly (storage::pgdata).
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    if let Some(level) = cli.global.log_level {
        pgwal::log::set_level(level);
    }
    let mut rules = match cli.command {
        Command::Fetch(_) => fetch::exit_rules(std::env::current_dir().ok().as_deref(), cli.global.pgdata.as_deref()),
        _ => ExitRules::Plain,
    };
    let result = run(&cli, &mut rules);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // "Not in the archive" is routine (PostgreSQL probes for history
            // files all the time): no noise for it.
            if !matches!(e, Error::NotInArchive(_)) {
                report(&e, caller(&cli.command, rules));
            }
            ExitCode::from(exit_code(&e, rules))
        }
    }
}

fn run(cli: &Cli, rules: &mut ExitRules) -> Result<()> {
    let overrides = config::Overrides {
        config: cli.global.config.clone(),
        repo: cli.global.repo.clone(),
        pgdata: cli.global.pgdata.clone(),
        conninfo: cli.global.conninfo.clone(),
        encryption_key_file: cli.global.encryption_key_file.clone(),
    };
    let cfg = config::load(&overrides)?;
    if let Some(key_file) = &cfg.encryption_key_file {
        // Children (the prefetcher, the daemon's jobs) use the same key file
        // however this process was given it. Its path only, never the key.
        // Set before any other thread exists.
        std::env::set_var("PGWAL_ENCRYPTION_KEY_FILE", key_file);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("cannot start the I/O runtime", "-"))?;
    match &cli.command {
        Command::Archive(args) => {
            // The helper first: a call it answers opens no store at all.
            let start = match archive::helper::before_archive(&rt, &args.path, &cfg) {
                archive::helper::Call::Answered(outcome) => {
                    archive::note_outcome(&args.path, outcome);
                    return Ok(());
                }
                archive::helper::Call::Fallback { start } => start,
            };
            let repo = open_repo(&cfg, Access::CreateIfMissing, cfg.archive.retry_deadline, true)?;
            archive::run(&rt, &repo, &args.path, &cfg, start.as_ref())
        }
        Command::ArchiveHelper => {
            cfg.require_repo()?;
            let data_dir = prefetch::data_dir_of(&cfg)?;
            let repo = open_repo(&cfg, Access::WriteExisting, cfg.archive.retry_deadline, true)?;
            let verifier = open_repo(&cfg, Access::WriteExisting, cfg.archive.retry_deadline, true)?;
            archive::helper::serve::run(&rt, &repo, &verifier, &data_dir, &cfg.archive)
        }
        Command::Fetch(args) => {
            if *rules == ExitRules::FetchRecovery {
                *rules = fetch::exit_rules(std::env::current_dir().ok().as_deref(), cfg.pgdata.as_deref());
            }
            let name = fetch::parse_name(&args.name)?;
            let spool = fetch::spool_for(&cfg, &args.dest);
            if let Some(spool) = &spool {
                let url = cfg.require_repo()?;
                let tag = pgwal::repo::cache_tag(url, cfg.repository_key()?.as_ref());
                if fetch::take_from_spool(spool, &name, &tag, &args.dest, &url.to_string(), cfg.file.as_deref()) {
                    return Ok(());
                }
            }
            let repo = open_repo(&cfg, Access::MustExist, cfg.fetch.retry_deadline, true)?;
            fetch::fetch_prefetching(&rt, &repo, &name, &args.dest, spool.as_ref(), cfg.file.as_deref())
        }
        Command::PrefetchWal => {
            cfg.require_repo()?;
            let data_dir = prefetch::data_dir_of(&cfg)?;
            let repo = open_repo(&cfg, Access::MustExist, cfg.fetch.retry_deadline, true)?;
            prefetch::run(&rt, &repo, &data_dir, cfg.fetch.prefetch)
        }
        Command::Backup(args) => {
            let request = config::backup::request(&cfg, args)?;
            let repo = open_repo(&cfg, Access::CreateIfMissing, cfg.backup.retry_deadline, false)?;
            let id = backup::backup(&rt, &repo, &request)?;
            println!("{id}");
            Ok(())
        }
        Command::List(args) => {
            data_dir::require_if_given(cfg.pgdata.as_deref())?;
            let repo = open_repo(&cfg, Access::MustExist, cfg.fetch.retry_deadline, false)?;
            let data_dir = data_dir::of_this_process(cfg.pgdata.as_deref());
            print!("{}", backlog::annotate_listing(list::list(&rt, &repo, args.json)?, args.json, data_dir.as_deref()));
            Ok(())
        }
        Command::Check(args) => {
            let url = cfg.require_repo()?;
            let open_repo = || open_repo(&cfg, Access::MustExist, cfg.archive.retry_deadline, false);
            let request = check::CheckRequest {
                config_file: cfg.file.clone(),
                repo_url: url.to_string(),
                open_repo: &open_repo,
                conn: cfg.conn_target(),
                timeout: args.timeout,
            };
            check::check(&rt, &request)
        }
        Command::Verify(args) => {
            let opts = config::verify::verify_options(args)?;
            let repo = open_repo(&cfg, Access::MustExist, cfg.fetch.retry_deadline, false)?;
            let report = rt.block_on(verify::verify(&repo, &opts))?;
            print!("{}", if args.json { report.render_json() + "\n" } else { report.render_text() });
            let errors = report.problems.iter().filter(|p| p.severity == verify::Severity::Error).count();
            if errors > 0 {
                return Err(Error::VerifyFailed { errors });
            }
            Ok(())
        }
        Command::Rekey(args) => {
            let new_key = config::encryption::load_key(&args.new_key_file)?;
            let repo = open_repo(&cfg, Access::WriteExisting, cfg.backup.retry_deadline, false)?;
            let outcome = rt.block_on(rekey::rekey(&repo, &new_key, cfg.backup.lock_stale_after))?;
            print!("{}", rekey::render(&outcome));
            Ok(())
        }
        Command::Expire(args) => {
            let opts = config::expire::expire_options(&cfg, args);
            let repo = open_repo(&cfg, Access::WriteExisting, cfg.backup.retry_deadline, false)?;
            let mut stdout = std::io::stdout().lock();
            let outcome = rt.block_on(expire::expire(&repo, &opts, chrono::Utc::now(), &mut stdout))?;
            print!("{}", outcome.render());
            Ok(())
        }
        Command::Daemon => {
            let opts = config::daemon::daemon_options(&cfg)?;
            let reload = || {
                let cfg = config::load(&overrides)?;
                let opts = config::daemon::daemon_options(&cfg)?;
                Ok((cfg, opts))
            };
            let exe =
                std::env::current_exe().map_err(Error::io("cannot find the pgwal executable", "/proc/self/exe"))?;
            let env = config::daemon::child_env(&overrides, cfg.file.as_deref(), cli.global.log_level);
            daemon::run(&rt, cfg, opts, daemon::jobs::Launcher { exe, env }, &reload)
        }
        Command::Restore(args) => {
            let opts = config::restore::restore_options(args, &cfg)?;
            storage::owner::refuse_root_restore(&opts.target_dir, "restore")?;
            let repo = open_repo(&cfg, Access::MustExist, opts.retry_deadline, false)?;
            finish_restore(&restore::restore(&rt, &repo, &opts)?)
        }
        Command::Drill(args) => {
            drill::refuse_root()?;
            let req = config::drill::drill_request(args, &cfg)?;
            drill::catch_signals();
            let deadline = config::restore::RESTORE_RETRY_DEADLINE;
            let store = storage::open_as_caller(&req.repo, &cfg.store, Access::MustExist, deadline)?;
            let repo = Repository::new(store, req.repo.clone(), RetryPolicy::with_deadline(deadline))
                .with_key(cfg.repository_key()?);
            let outcome = drill::drill(&rt, &repo, &req)?;
            if let Some(kept) = &outcome.kept {
                pgwal::log_notice!("kept the scratch directory '{}' (the server is stopped)", kept.display());
            }
            let r = &outcome.record;
            print!("{}", if args.json { drill::report::render_json(r) } else { drill::report::render_text(r) });
            if !r.passed {
                return Err(Error::DrillFailed { backup: r.backup.to_string(), findings: r.findings().join("; ") });
            }
            Ok(())
        }
        Command::Standby(args) => {
            let opts = config::restore::standby_options(args, &cfg)?;
            storage::owner::refuse_root_restore(&opts.target_dir, "standby")?;
            let repo = open_repo(&cfg, Access::MustExist, opts.retry_deadline, false)?;
            finish_restore(&standby::standby(&rt, &repo, &opts)?)
        }
    }
}

/// The configured repository, opened as the command's caller may
/// ([`storage::open_as_caller`]), its calls retried within `deadline`;
/// `quiet` for `archive` and `fetch`, whose stderr is PostgreSQL's log.
fn open_repo(cfg: &config::Config, access: Access, deadline: std::time::Duration, quiet: bool) -> Result<Repository> {
    let url = cfg.require_repo()?;
    let key = cfg.repository_key()?;
    let store = storage::open_as_caller(url, &cfg.store, access, deadline)?;
    let retry = RetryPolicy::with_deadline(deadline);
    Ok(Repository::new(store, url.clone(), if quiet { retry.quiet() } else { retry }).with_key(key))
}

/// Notices and the summary on stderr, the backup ID alone on stdout.
fn finish_restore(outcome: &restore::Outcome) -> Result<()> {
    for notice in outcome.notices.iter().skip(outcome.notices_printed) {
        pgwal::log_notice!("{notice}");
    }
    pgwal::log_info!("{}", outcome.summary());
    println!("{}", outcome.backup);
    Ok(())
}

/// Who will read the error: PostgreSQL's log for archive and fetch.
fn caller(command: &Command, rules: ExitRules) -> Caller {
    match (command, rules) {
        (Command::Archive(_), _) => Caller::Archive,
        (Command::Fetch(_), ExitRules::FetchStandby) => Caller::FetchStandby,
        (Command::Fetch(_), _) => Caller::FetchRecovery,
        _ => Caller::Person,
    }
}

/// One line `pgwal: error: ...` with the cause chain, then a hint.
fn report(e: &Error, caller: Caller) {
    eprintln!("pgwal: error: {}", e.one_line());
    if let Some(hint) = e.hint_for(caller) {
        eprintln!("hint: {hint}");
    }
}

/// clap's errors, in pgwal's one-line form. `fetch` keeps its exit rules even
/// here: a mistyped restore_command must not end recovery early.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(exit::USAGE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let first = usage_error_line(&e.to_string());
    eprintln!("pgwal: error: {first}");
    eprintln!("hint: see '{}'", help_command());
    let is_fetch = std::env::args().skip(1).any(|a| a == "fetch");
    let code = if is_fetch {
        exit_code(&Error::Usage(first), fetch::exit_rules(std::env::current_dir().ok().as_deref(), None))
    } else {
        exit::USAGE
    };
    ExitCode::from(code)
}

/// clap's message as one line: its first line, with the indented lines that
/// follow it (the missing arguments, the valid values) joined on, so that
/// "the following required arguments were not provided:" names them.
fn usage_error_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut line = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
    let items: Vec<&str> = lines.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()).map(str::trim).collect();
    if !items.is_empty() {
        line = format!("{line} {}", items.join(", "));
    }
    line
}

/// `pgwal COMMAND --help` for the command on the command line, else `pgwal --help`.
fn help_command() -> String {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let names: Vec<String> =
        cmd.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name().to_string()).collect();
    match std::env::args().skip(1).find(|a| names.contains(a)) {
        Some(name) => format!("pgwal {name} --help"),
        None => "pgwal --help".into(),
    }
}
