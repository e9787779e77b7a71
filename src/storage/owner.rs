//! Who may write where. pgwal never changes the owner of what it writes:
//! run as root, it would leave root-owned repository directories (a later
//! `expire` as postgres then fails) or a root-owned data directory (which
//! PostgreSQL refuses to start on). So root is refused, before anything is
//! written, wherever the result would belong to someone else, with a hint
//! naming the user to run as.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The effective user ID of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The login name of `uid` (from the system's user database), or `None`.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, buf outlives the use of
    // pwd's string pointers below, and its length is passed.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: pw_name points to a NUL-terminated string in buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `path` itself if it exists, else its nearest existing ancestor, with its owner.
fn nearest_existing(path: &Path) -> Option<(PathBuf, u32)> {
    path.ancestors().find_map(|p| std::fs::metadata(p).ok().map(|m| (p.to_path_buf(), m.uid())))
}

/// How a user is named in hints.
fn display_user(uid: u32) -> String {
    user_name(uid).unwrap_or_else(|| format!("#{uid}"))
}

/// Refuses, when running as root, to write into `dir` (a `file://`
/// repository; or, when it does not exist yet, its parent) if that belongs
/// to another user.
pub fn refuse_root_into_foreign(dir: &Path) -> Result<()> {
    if effective_uid() != 0 {
        return Ok(());
    }
    refuse_foreign(dir, "", 0)
}

/// `command`, if not empty, names the pgwal command in the hint.
fn refuse_foreign(dir: &Path, command: &str, me: u32) -> Result<()> {
    let Some((existing, owner)) = nearest_existing(dir) else { return Ok(()) };
    if owner == me {
        return Ok(());
    }
    let name = display_user(owner);
    Err(Error::BadRequest {
        message: format!(
            "refusing to write into '{}' as root: '{}' belongs to '{name}', and what root writes there would belong to root",
            dir.display(),
            existing.display()
        ),
        hint: Some(format!(
            "run as the owner of '{}', e.g. runuser -u {name} -- pgwal {}...",
            existing.display(),
            if command.is_empty() { String::new() } else { format!("{command} ") }
        )),
    })
}

/// Refuses `restore` and `standby` as root: into a directory of another
/// user the files would belong to root, and PostgreSQL refuses to start on
/// a data directory owned by root.
pub fn refuse_root_restore(target_dir: &Path, command: &str) -> Result<()> {
    if effective_uid() != 0 {
        return Ok(());
    }
    refuse_restore_as(target_dir, command, 0)
}

fn refuse_restore_as(target_dir: &Path, command: &str, me: u32) -> Result<()> {
    refuse_foreign(target_dir, command, me)?;
    let dir = target_dir.display();
    Err(Error::BadRequest {
        message: format!(
            "refusing to {command} into '{dir}' as root: PostgreSQL does not start on a data directory owned by root"
        ),
        hint: Some(format!(
            "create '{dir}' for the user PostgreSQL runs as and run pgwal as that user, e.g. \
             install -d -o postgres -g postgres -m 0700 '{dir}' && runuser -u postgres -- pgwal {command} ..."
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_uid() -> u32 {
        effective_uid()
    }

    #[test]
    fn a_directory_of_ones_own_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = own_uid();
        assert!(refuse_foreign(dir.path(), "backup", me).is_ok());
        // Not there yet: the parent decides.
        assert!(refuse_foreign(&dir.path().join("new/deeper"), "backup", me).is_ok());
    }

    #[test]
    fn another_users_directory_is_refused_naming_the_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let someone_else = own_uid() + 1;
        let e = refuse_foreign(&dir.path().join("repo"), "archive", someone_else).expect_err("refused");
        let hint = e.hint().expect("a hint");
        assert!(hint.contains("runuser -u") && hint.contains("pgwal archive"), "{hint}");
        assert!(e.to_string().contains("refusing to write into"), "{e}");
    }

    #[test]
    fn restore_as_root_is_always_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = refuse_restore_as(&dir.path().join("pgdata"), "restore", own_uid()).expect_err("refused");
        assert!(e.to_string().contains("owned by root"), "{e}");
        assert!(e.hint().expect("a hint").contains("runuser -u postgres -- pgwal restore"));
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
