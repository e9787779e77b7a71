//! The drill's scratch directory: made private under `drill.dir`, checked
//! for room before anything is restored, and removed so that no half of a
//! copy stays behind. Layout:
//!
//! ```text
//! DRILL_DIR/ID-TIME/
//!   data/               the restored data directory
//!   tablespaces/OID/    the backup's tablespaces, moved here
//!   sock/               the throwaway server's Unix socket
//!   postgresql.conf, pg_hba.conf, pg_ident.conf   its whole configuration
//!   postgresql.log      its log
//!   pg_amcheck.out ...  what the checks printed
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::repo::backup::BackupId;

/// Room needed besides the backup's data: the WAL recovery keeps in
/// `pg_wal` between restartpoints, and the prefetch spool.
pub const WAL_HEADROOM: u64 = 256 << 20;

/// The paths of one scratch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// The scratch directory itself.
    pub root: PathBuf,
}

impl Scratch {
    /// The restored data directory.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// Where tablespace `oid` goes.
    pub fn tablespace(&self, oid: u32) -> PathBuf {
        self.root.join("tablespaces").join(oid.to_string())
    }
    /// The socket directory.
    pub fn sock(&self) -> PathBuf {
        self.root.join("sock")
    }
    /// The server log.
    pub fn log(&self) -> PathBuf {
        self.root.join("postgresql.log")
    }
    /// A file directly in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Bytes free for this user on the file system holding `dir` (or its
/// nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: an all-zero statvfs is a valid value for statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuses to start when `base` lacks room for `data_size` plus headroom.
pub fn check_room(base: &Path, data_size: u64, backup: &BackupId) -> Result<()> {
    let free = free_bytes(base).map_err(Error::io("cannot read the free space of", base))?;
    let need = data_size.saturating_add(WAL_HEADROOM);
    if free < need {
        return Err(Error::BadRequest {
            message: format!(
                "not enough free space in '{}' for a drill of backup '{backup}': it needs {} ({} of data plus {} for WAL), {} are free",
                base.display(),
                crate::human::human_size(need),
                crate::human::human_size(data_size),
                crate::human::human_size(WAL_HEADROOM),
                crate::human::human_size(free)
            ),
            hint: Some("set drill.dir in the config file to a file system with more room".into()),
        });
    }
    Ok(())
}

/// Creates `base` (mode 0700 where it is new) and in it a new scratch
/// directory for `backup`, named after the drill's start.
pub fn create(base: &Path, backup: &BackupId, stamp: &str) -> Result<Scratch> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(Error::io("cannot create the drill directory", base))?;
    let root = base.join(format!("{backup}-{stamp}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&root)
        .map_err(Error::io("cannot create the scratch directory", &root))?;
    let s = Scratch { root };
    for d in [s.sock(), s.root.join("tablespaces")] {
        std::fs::DirBuilder::new().mode(0o700).create(&d).map_err(Error::io("cannot create", &d))?;
    }
    Ok(s)
}

/// Removes the scratch directory. It is renamed first, so that a restore
/// worker still running (after a signal) fails to write rather than
/// recreate files under the old name.
pub fn remove(s: &Scratch) -> std::io::Result<()> {
    let mut doomed = s.root.clone().into_os_string();
    doomed.push(".removing");
    let doomed = PathBuf::from(doomed);
    match std::fs::rename(&s.root, &doomed) {
        Ok(()) => std::fs::remove_dir_all(&doomed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => std::fs::remove_dir_all(&s.root),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_check_and_remove() {
        let base = std::env::temp_dir().join(format!("pgwal-drill-unit-{}", std::process::id()));
        let id: BackupId = "20261123T074000F".parse().expect("id");
        let s = create(&base.join("deeper"), &id, "20261124T030000Z").expect("create");
        assert!(s.root.ends_with("20261123T074000F-20261124T030000Z") && s.sock().is_dir());
        assert!(create(&base.join("deeper"), &id, "20261124T030000Z").is_err(), "never reuses a directory");
        assert!(check_room(&base, 0, &id).is_ok());
        let e = check_room(&base, u64::MAX / 2, &id).expect_err("no room");
        assert!(e.to_string().contains("not enough free space") && !e.to_string().contains('\n'), "{e}");
        std::fs::write(s.data().with_extension("x"), b"x").expect("write");
        remove(&s).expect("remove");
        assert!(!s.root.exists());
        remove(&s).expect("gone already is fine");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
