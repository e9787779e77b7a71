//! pgwal's messages on stderr, filtered by one process-wide level
//! (`--log-level` / `PGWAL_LOG_LEVEL`). Errors are reported by `main` alone,
//! always; these macros are for what comes before or beside them: warnings
//! (a retry, a skipped file), notices (something a cron log should record),
//! and debug detail. stdout stays the command's result, never a log.
//!
//! There is no logging framework on purpose: `archive` and `fetch` start once
//! per segment, and a plain `eprintln!` behind one atomic load costs nothing.

use std::sync::atomic::{AtomicU8, Ordering};

/// How much pgwal says on stderr, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only `pgwal: error:` lines (and their hints).
    Error = 1,
    /// Errors and warnings (retries, things left behind).
    Warn = 2,
    /// Also notices and summaries (the default).
    Info = 3,
    /// Also the detail of each step.
    Debug = 4,
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Level, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            other => Err(format!("unknown log level '{other}': use error, warn, info or debug")),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level for the rest of the process (once, in `main`).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    LEVEL.load(Ordering::Relaxed) >= level as u8
}

/// `pgwal: warning: ...` on stderr, unless the level is `error`.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            eprintln!("pgwal: warning: {}", format_args!($($arg)*));
        }
    };
}

/// `pgwal: notice: ...` on stderr, at level `info` and above.
#[macro_export]
macro_rules! log_notice {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            eprintln!("pgwal: notice: {}", format_args!($($arg)*));
        }
    };
}

/// `pgwal: ...` on stderr (a summary or progress line), at level `info` and above.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            eprintln!("pgwal: {}", format_args!($($arg)*));
        }
    };
}

/// `pgwal: debug: ...` on stderr, only at level `debug`.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            eprintln!("pgwal: debug: {}", format_args!($($arg)*));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert_eq!("debug".parse::<Level>(), Ok(Level::Debug));
        assert!("loud".parse::<Level>().unwrap_err().contains("error, warn, info or debug"));
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
    }
}
