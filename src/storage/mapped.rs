//! Memory mappings for the per-segment hot paths, where page faults on fresh
//! memory cost more than the work itself: read-only mappings of files
//! (`archive` reading a segment, `fetch` reading a local object: no copy out
//! of the page cache) and huge-page buffers (`fetch` decompressing into them).

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

/// A zero-filled anonymous buffer in transparent huge pages where the kernel
/// allows them. Decompressing a 16 MiB segment into ordinary memory costs
/// 4096 page faults in a fresh process, more than the decompression itself;
/// with 2 MiB pages it costs eight.
#[derive(Debug)]
pub struct HugeBuffer {
    map: *mut libc::c_void,
    map_len: usize,
    start: usize,
    len: usize,
}

// SAFETY: an owned private mapping; &/&mut access follows Rust's borrow rules
// through `as_slice`/`as_mut_slice`.
unsafe impl Send for HugeBuffer {}
unsafe impl Sync for HugeBuffer {}

const HUGE_PAGE: usize = 2 << 20;

impl HugeBuffer {
    /// A buffer of `len` zero bytes.
    pub fn new(len: usize) -> std::io::Result<HugeBuffer> {
        if len == 0 {
            return Ok(HugeBuffer { map: std::ptr::null_mut(), map_len: 0, start: 0, len: 0 });
        }
        // The kernel backs only whole 2 MiB pages inside the advised range
        // with huge pages: advise the length rounded up to them (a 5.5 MiB
        // buffer advised as is takes its last 1.5 MiB in 384 faults of 4 KiB).
        // Over-allocate by one huge page more so the range can start on a
        // 2 MiB boundary; pages beyond `len` are never touched, so they cost
        // address space only.
        let too_large = || std::io::Error::other("buffer too large");
        let advised = len.checked_next_multiple_of(HUGE_PAGE).ok_or_else(too_large)?;
        let map_len = advised.checked_add(HUGE_PAGE).ok_or_else(too_large)?;
        // SAFETY: a fresh private anonymous mapping; failure is checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (HUGE_PAGE - (map as usize % HUGE_PAGE)) % HUGE_PAGE;
        // SAFETY: advising the kernel about a range inside our own mapping; a
        // refusal (THP disabled) only means ordinary pages, so it is ignored.
        unsafe {
            libc::madvise((map as *mut u8).add(start) as *mut libc::c_void, advised, libc::MADV_HUGEPAGE);
        }
        Ok(HugeBuffer { map, map_len, start, len })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: start..start+len lies inside the live mapping owned by self.
        unsafe { std::slice::from_raw_parts((self.map as *const u8).add(self.start), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in as_slice, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut((self.map as *mut u8).add(self.start), self.len) }
    }
}

impl AsRef<[u8]> for HugeBuffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for HugeBuffer {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: unmapping exactly the mapping created in `new`, once.
            unsafe {
                libc::munmap(self.map, self.map_len);
            }
        }
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

    #[test]
    fn huge_buffers_are_zeroed_writable_and_sized() {
        for len in [0, 1, 4096, (2 << 20) + 3, 16 << 20] {
            let mut b = HugeBuffer::new(len).expect("buffer");
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            if len > 0 {
                b.as_mut_slice()[len - 1] = 7;
                assert_eq!(b.as_slice()[len - 1], 7);
            }
        }
    }
}
