//! Writes into a data directory (and tablespace directories): the one place
//! that creates directories, files and links there, with explicit modes and
//! explicit durability. Small files are replaced atomically (temp file,
//! fsync, rename, fsync of the directory); restored data files are created at
//! their final size, filled at their offsets by parallel workers and fsynced
//! by them; directories are fsynced once everything in them is written.
//!
//! Nothing here follows a symbolic link it did not expect: callers clear the
//! tree of foreign links first, and creating a directory over a link fails.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits PostgreSQL accepts on data directory files: owner read-write,
/// group read at most (`initdb --allow-group-access`).
pub fn file_mode(stored: u32) -> u32 {
    (stored & 0o640) | 0o600
}

/// Mode bits PostgreSQL accepts on directories: owner all, group read-search at most.
pub fn dir_mode(stored: u32) -> u32 {
    (stored & 0o750) | 0o700
}

/// Creates directory `path` with `mode` (parents must exist); an existing
/// directory gets `mode`. A link or file in its place is an error.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if !fs::symlink_metadata(path)?.is_dir() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"));
            }
        }
        Err(e) => return Err(e),
    }
    // The umask narrowed the mode above.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Creates (or truncates) file `path` with `mode` and length `size` (a
/// sparse file that workers then fill at their offsets).
pub fn create_sized_file(path: &Path, mode: u32, size: u64) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path)?;
    }
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.set_len(size)
}

/// Writes `bytes` at `offset` of a file created by [`create_sized_file`] and
/// starts writing them back to disk at once. Without the early start the
/// kernel keeps a restore's data dirty in memory (up to `dirty_ratio` of RAM)
/// and the final fsyncs then wait for all of it with the CPUs idle; started
/// early, the disk works while the next pack is decompressed, and the fsync
/// that makes the file durable ([`sync_file`]) finds little left to do.
pub fn fill_at(path: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(bytes, offset)?;
    start_writeback(&file, offset, bytes.len() as u64);
    Ok(())
}

/// Asks the kernel to start writing a range back (no waiting); durability
/// still comes from fsync. Best effort: an error here changes nothing.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: a plain syscall on a descriptor this function borrows; it
    // touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Sets the mode of an existing file that is kept as it is.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Writes `contents` to `path` atomically and durably: a temp file beside it
/// with `mode`, fsync, rename over `path`, fsync of the directory.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".pgwal-{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path)
}

/// Renames `from` to `to` (same directory) and fsyncs the directory.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// Removes a file or link, or a directory with everything below it (links
/// inside are removed, never followed). A missing path is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates symbolic link `link` pointing to `target`, replacing a link that
/// points elsewhere.
pub fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    match fs::read_link(link) {
        Ok(existing) if existing == target => return Ok(()),
        Ok(_) => fs::remove_file(link)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => remove(link)?,
    }
    std::os::unix::fs::symlink(target, link)
}

/// Fsyncs a file's data and metadata.
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Fsyncs a directory, making the entries created in it durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn modes_stay_within_what_postgres_accepts() {
        assert_eq!(file_mode(0o644), 0o640);
        assert_eq!(file_mode(0o400), 0o600);
        assert_eq!(file_mode(0o4777), 0o640);
        assert_eq!(dir_mode(0o755), 0o750);
        assert_eq!(dir_mode(0o500), 0o700);
    }

    #[test]
    fn files_dirs_and_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("base");
        create_dir(&d, 0o700).expect("create");
        create_dir(&d, 0o750).expect("again");
        assert_eq!(fs::metadata(&d).expect("stat").mode() & 0o777, 0o750);
        let f = d.join("1259");
        create_sized_file(&f, 0o600, 8192).expect("sized");
        assert_eq!(fs::metadata(&f).expect("stat").len(), 8192);
        assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o777, 0o600);
        write_file(&d.join("backup_label"), b"label", 0o600).expect("write");
        write_file(&d.join("backup_label"), b"label 2", 0o600).expect("replace");
        assert_eq!(fs::read(d.join("backup_label")).expect("read"), b"label 2");
        assert_eq!(fs::read_dir(&d).expect("ls").count(), 2, "no temp file left");
        // A file where a directory should be is an error, not silently kept.
        assert!(create_dir(&f, 0o700).is_err());
        symlink(Path::new("/nonexistent/a"), &dir.path().join("link")).expect("link");
        symlink(Path::new("/nonexistent/b"), &dir.path().join("link")).expect("relink");
        assert_eq!(fs::read_link(dir.path().join("link")).expect("readlink"), Path::new("/nonexistent/b"));
        assert!(create_dir(&dir.path().join("link"), 0o700).is_err(), "never a directory through a link");
        remove(&dir.path().join("link")).expect("remove link");
        remove(&d).expect("remove tree");
        remove(&d).expect("missing is fine");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
