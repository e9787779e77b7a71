//! Checks that a file's content is what its WAL file name says it is, before
//! it goes into the repository: a wrong, truncated or foreign file archived
//! under a segment's name would only be discovered at restore time.

use super::history::parse_history;
use super::{LongPageHeader, WalFileName};

/// What a validated file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatedWal {
    /// A segment or `.partial` segment, with its first page's header.
    Segment(LongPageHeader),
    /// A `.history` or `.backup` file (text; no cluster identity inside).
    Text,
}

/// Checks `content` against `name`. The error says what does not match.
pub fn validate_wal_file(name: &WalFileName, content: &[u8]) -> Result<ValidatedWal, String> {
    match name {
        WalFileName::Segment { .. } | WalFileName::Partial { .. } => validate_segment(name, content),
        WalFileName::History { tli } => {
            if content.is_empty() {
                return Err("history file is empty".into());
            }
            parse_history(*tli, content).map_err(|e| e.to_string())?;
            Ok(ValidatedWal::Text)
        }
        WalFileName::Backup { tli, log, seg, .. } => {
            let text = std::str::from_utf8(content).map_err(|_| "backup history file is not text".to_string())?;
            let expected = format!("(file {:08X}{log:08X}{seg:08X})", tli.0);
            let first = text.lines().next().unwrap_or("");
            if !first.starts_with("START WAL LOCATION: ") || !first.contains(&expected) {
                return Err(format!("backup history file does not start with 'START WAL LOCATION: ... {expected}'"));
            }
            Ok(ValidatedWal::Text)
        }
    }
}

fn validate_segment(name: &WalFileName, content: &[u8]) -> Result<ValidatedWal, String> {
    validate_segment_head(name, content, content.len() as u64).map(ValidatedWal::Segment)
}

/// Checks a segment (or `.partial`) from its first bytes and its length, so a
/// caller can validate before it has read the whole file.
pub fn validate_segment_head(name: &WalFileName, head: &[u8], len: u64) -> Result<LongPageHeader, String> {
    let header = LongPageHeader::parse(head).map_err(|e| e.to_string())?;
    let size = header.segment_size;
    if len != size.bytes() {
        return Err(format!("file is {len} bytes but its header says segments are {} bytes", size.bytes()));
    }
    let segno = name
        .segment_no(size)
        .ok_or_else(|| format!("segment number in the name is out of range for {} MiB segments", size.bytes() >> 20))?;
    let expected = segno.start_lsn(size);
    if header.page_addr != expected {
        return Err(format!(
            "first page is at {} but the name says the segment starts at {expected}",
            header.page_addr
        ));
    }
    // The first segment of a new timeline starts with pages copied from its
    // parent, which carry the parent's (lower) timeline ID; a higher one is wrong.
    if header.timeline.0 == 0 || header.timeline > name.timeline() {
        return Err(format!(
            "first page is on timeline {} but the name says timeline {}",
            header.timeline,
            name.timeline()
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::page_header::tests::header_bytes;

    const SEG: usize = 16 << 20;

    fn segment(tli: u32, addr: u64, sysid: u64) -> Vec<u8> {
        let mut s = header_bytes(tli, addr, sysid, SEG as u32);
        s.resize(SEG, 0);
        s
    }

    fn name(s: &str) -> WalFileName {
        s.parse().expect("valid name")
    }

    #[test]
    fn accepts_matching_segments() {
        let v = validate_wal_file(&name("000000010000000000000003"), &segment(1, 3 * SEG as u64, 42)).expect("valid");
        assert!(matches!(v, ValidatedWal::Segment(h) if h.system_identifier == 42));
        // First segment of timeline 2, starting with pages of timeline 1.
        assert!(validate_wal_file(&name("000000020000000000000003"), &segment(1, 3 * SEG as u64, 42)).is_ok());
        assert!(validate_wal_file(&name("000000020000000000000003.partial"), &segment(2, 3 * SEG as u64, 42)).is_ok());
    }

    #[test]
    fn refuses_mismatches() {
        let n = name("000000010000000000000003");
        assert!(validate_wal_file(&n, &segment(1, 4 * SEG as u64, 42)).is_err(), "wrong address");
        assert!(validate_wal_file(&n, &segment(2, 3 * SEG as u64, 42)).is_err(), "future timeline");
        assert!(validate_wal_file(&n, &segment(1, 3 * SEG as u64, 42)[..SEG - 1]).is_err(), "truncated");
        assert!(validate_wal_file(&n, &[0u8; SEG]).is_err(), "zeros");
        assert!(validate_wal_file(&n, b"").is_err(), "empty");
        let mut longer = segment(1, 3 * SEG as u64, 42);
        longer.push(0);
        assert!(validate_wal_file(&n, &longer).is_err(), "too long");
        assert!(validate_wal_file(&name("000000010000000000000100"), &segment(1, 0x100 * SEG as u64, 42)).is_err());
    }

    #[test]
    fn text_files() {
        assert!(validate_wal_file(&name("00000002.history"), b"1\t0/3000148\tno recovery target specified\n").is_ok());
        assert!(validate_wal_file(&name("00000002.history"), b"").is_err());
        assert!(validate_wal_file(&name("00000002.history"), &[0u8; 100]).is_err());
        let backup = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n";
        assert!(validate_wal_file(&name("000000010000000000000002.00000028.backup"), backup).is_ok());
        assert!(validate_wal_file(&name("000000010000000000000003.00000028.backup"), backup).is_err());
    }
}
