//! Which PostgreSQL server binaries a drill runs: those of the backup's
//! major version, found where the SPEC says tests and packages put them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// A directory holding `postgres`, `pg_ctl`, `pg_controldata`... of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The directory.
    pub dir: PathBuf,
    /// What `postgres --version` printed, e.g. "postgres (PostgreSQL) 15.14".
    pub version: String,
}

impl Binaries {
    /// The program `name` in this directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether `name` is installed here (pg_amcheck ships in a separate
    /// package on some distributions).
    pub fn has(&self, name: &str) -> bool {
        self.program(name).is_file()
    }
}

/// The major version of a `server_version_num` (150018 -> 15).
pub fn major_of(server_version_num: u32) -> u32 {
    server_version_num / 10000
}

/// The major version in `postgres --version` output
/// ("postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg120+1)" -> 15).
pub fn parse_major(version_line: &str) -> Option<u32> {
    let after = version_line.split(')').nth(1)?.trim_start();
    let number: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    number.parse().ok()
}

fn version_of(dir: &Path) -> Option<String> {
    let out =
        Command::new(dir.join("postgres")).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The first of `PG_BINDIR`, `pg_config --bindir` and
/// `/usr/lib/postgresql/N/bin` whose `postgres` has major version `major`.
pub fn find(major: u32) -> Result<Binaries> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(d));
    }
    candidates.extend(pg_config_bindir());
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
    let mut seen = Vec::new();
    for dir in candidates {
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir.clone());
        match version_of(&dir) {
            Some(v) if parse_major(&v) == Some(major) => return Ok(Binaries { dir, version: v }),
            Some(v) => crate::log_debug!("'{}' holds {v}, not PostgreSQL {major}", dir.display()),
            None => crate::log_debug!("no runnable postgres in '{}'", dir.display()),
        }
    }
    let looked: Vec<String> = seen.iter().map(|d| format!("'{}'", d.display())).collect();
    Err(Error::Unreachable {
        message: format!("no PostgreSQL {major} server binaries found (looked in {})", looked.join(", ")),
        hint: Some(format!(
            "install the server package of PostgreSQL {major} (e.g. postgresql-{major}) or set PG_BINDIR to its bin directory"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(major_of(150018), 15);
        assert_eq!(major_of(100023), 10);
        assert_eq!(parse_major("postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg120+1)"), Some(15));
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("something else"), None);
    }
}
