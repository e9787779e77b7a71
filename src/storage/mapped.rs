//! Read-only memory mappings of files for the per-segment hot paths
//! (`archive` reading a segment, `fetch` reading a local object): no copy out
//! of the page cache.

use std::fs::File;
use std::os::fd::AsRawFd;

/// A file's content mapped read-only.
#[derive(Debug)]
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; sharing &[u8] views across
// threads is as safe as sharing any immutable byte slice.
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `len` bytes of `file` (its size when the caller looked).
    ///
    /// The caller must make sure nobody modifies or truncates the file while
    /// it is mapped. For WAL segments PostgreSQL guarantees that while
    /// archive_command runs; the archive path also compares the file's size
    /// and modification time before and after, and refuses a file that changed.
    pub fn map(file: &File, len: usize) -> std::io::Result<MappedFile> {
        if len == 0 {
            return Ok(MappedFile { ptr: std::ptr::null_mut(), len: 0 });
        }
        // SAFETY: a fresh private read-only mapping of a file we hold open;
        // the kernel picks the address; failure is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedFile { ptr, len })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe a live PROT_READ mapping owned by self,
        // unmapped only in Drop, so the slice cannot outlive it.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly the mapping created in `map`, once.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_what_is_in_the_file() {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let file = File::open(f.path()).expect("open");
        let mapped = MappedFile::map(&file, data.len()).expect("map");
        assert_eq!(mapped.bytes(), &data[..]);
        assert_eq!(MappedFile::map(&file, 0).expect("empty").bytes(), b"");
    }
}
