//! The long page header at the start of every WAL segment
//! (`XLogLongPageHeaderData` in PostgreSQL's `xlog_internal.h`). It carries
//! what pgwal needs to accept a segment: the WAL format magic (which PostgreSQL
//! major version wrote it), the cluster's system identifier, the segment size
//! and the address and timeline of the first page.

use super::{Lsn, TimelineId, WalSegmentSize};

/// Size of `XLogLongPageHeaderData` on every platform PostgreSQL supports.
pub const LONG_PAGE_HEADER_LEN: usize = 40;

/// `XLP_LONG_HEADER`: set in `xlp_info` of a segment's first page.
const XLP_LONG_HEADER: u16 = 0x0002;

/// The parsed long page header of a segment's first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: the WAL format version.
    pub magic: u16,
    /// `xlp_tli`: timeline of the first page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: LSN of the first page, i.e. where the segment starts.
    pub page_addr: Lsn,
    /// `xlp_sysid`: the cluster's system identifier.
    pub system_identifier: u64,
    /// `xlp_seg_size`.
    pub segment_size: WalSegmentSize,
    /// `xlp_xlog_blcksz`: the WAL block size.
    pub block_size: u32,
}

/// Why the first bytes of a file are not a WAL segment's long page header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageHeaderError {
    /// Fewer bytes than a long page header.
    #[error("file is {0} bytes, too short for a WAL page header")]
    TooShort(usize),
    /// The magic number of no PostgreSQL release pgwal knows.
    #[error("unknown WAL page magic 0x{0:04X} (not a WAL segment, or a PostgreSQL release pgwal does not support)")]
    UnknownMagic(u16),
    /// The first page lacks `XLP_LONG_HEADER`.
    #[error("first page has no long header (xlp_info 0x{0:04X}): not the start of a WAL segment")]
    NotLongHeader(u16),
    /// `xlp_seg_size` is not a valid segment size.
    #[error("page header gives an invalid segment size of {0} bytes")]
    BadSegmentSize(u32),
    /// `xlp_xlog_blcksz` is not a valid block size.
    #[error("page header gives an invalid WAL block size of {0} bytes")]
    BadBlockSize(u32),
}

/// The PostgreSQL major version whose WAL carries `magic` (`XLOG_PAGE_MAGIC`).
pub fn pg_major_for_magic(magic: u16) -> Option<u32> {
    Some(match magic {
        0xD097 => 10,
        0xD098 => 11,
        0xD101 => 12,
        0xD106 => 13,
        0xD10D => 14,
        0xD110 => 15,
        0xD113 => 16,
        0xD116 => 17,
        0xD118 => 18,
        _ => return None,
    })
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl LongPageHeader {
    /// Parses the first bytes of a segment. Little-endian: PostgreSQL writes WAL
    /// in host byte order and every platform pgwal runs on is little-endian.
    pub fn parse(bytes: &[u8]) -> Result<LongPageHeader, PageHeaderError> {
        if bytes.len() < LONG_PAGE_HEADER_LEN {
            return Err(PageHeaderError::TooShort(bytes.len()));
        }
        let magic = le_u16(bytes, 0);
        pg_major_for_magic(magic).ok_or(PageHeaderError::UnknownMagic(magic))?;
        let info = le_u16(bytes, 2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(PageHeaderError::NotLongHeader(info));
        }
        let seg_size = le_u32(bytes, 32);
        let segment_size = WalSegmentSize::new(u64::from(seg_size)).ok_or(PageHeaderError::BadSegmentSize(seg_size))?;
        let block_size = le_u32(bytes, 36);
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(PageHeaderError::BadBlockSize(block_size));
        }
        Ok(LongPageHeader {
            magic,
            timeline: TimelineId(le_u32(bytes, 4)),
            page_addr: Lsn(le_u64(bytes, 8)),
            system_identifier: le_u64(bytes, 24),
            segment_size,
            block_size,
        })
    }

    /// The PostgreSQL major version that wrote this WAL.
    pub fn pg_major(&self) -> u32 {
        pg_major_for_magic(self.magic).expect("invariant: parse accepts only known magics")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A first page as PostgreSQL 15 writes it (fields from a real segment).
    pub(crate) fn header_bytes(tli: u32, page_addr: u64, sysid: u64, seg_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; LONG_PAGE_HEADER_LEN];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0007u16.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&page_addr.to_le_bytes());
        b[16..20].copy_from_slice(&0x757u32.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_a_postgres_15_header() {
        let h = LongPageHeader::parse(&header_bytes(1, 0x6B00_0000, 0x6B03_E450_2FF9_CFC2, 16 << 20)).expect("valid");
        assert_eq!(h.pg_major(), 15);
        assert_eq!(h.timeline, TimelineId(1));
        assert_eq!(h.page_addr, Lsn(0x6B00_0000));
        assert_eq!(h.system_identifier, 0x6B03_E450_2FF9_CFC2);
        assert_eq!(h.segment_size, WalSegmentSize::DEFAULT);
        assert_eq!(h.block_size, 8192);
    }

    #[test]
    fn rejects_what_is_not_a_segment_start() {
        let good = header_bytes(1, 0, 1, 16 << 20);
        assert_eq!(LongPageHeader::parse(&good[..39]), Err(PageHeaderError::TooShort(39)));
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(LongPageHeader::parse(&bad), Err(PageHeaderError::UnknownMagic(_))));
        let mut bad = good.clone();
        bad[2] = 0x01;
        assert!(matches!(LongPageHeader::parse(&bad), Err(PageHeaderError::NotLongHeader(_))));
        let mut bad = good.clone();
        bad[32..36].copy_from_slice(&12345u32.to_le_bytes());
        assert_eq!(LongPageHeader::parse(&bad), Err(PageHeaderError::BadSegmentSize(12345)));
        let mut bad = good;
        bad[36..40].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(LongPageHeader::parse(&bad), Err(PageHeaderError::BadBlockSize(1000)));
        assert!(LongPageHeader::parse(&[0u8; 8192]).is_err());
    }
}
