//! What identifies one version of a file without reading it (inode, size,
//! modification time), and this boot's identity: together they say whether
//! an archive marker or a spooled segment still describes the file it names.

use std::path::Path;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub inode: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: meta.len(),
            inode: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The stamp of the file at `path` (following links, as opening it does).
    pub fn read(path: &Path) -> std::io::Result<FileStamp> {
        std::fs::metadata(path).map(|m| FileStamp::of(&m))
    }
}

/// This boot's identity (Linux), so that files written without fsync before
/// a crash are never trusted after it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_change_when_the_file_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"one").expect("write");
        let first = FileStamp::read(&f).expect("stamp");
        assert_eq!(first, FileStamp::read(&f).expect("stamp"));
        std::fs::write(dir.path().join("g"), b"two").expect("write");
        std::fs::rename(dir.path().join("g"), &f).expect("rename");
        assert_ne!(first, FileStamp::read(&f).expect("stamp"), "another inode");
    }
}
