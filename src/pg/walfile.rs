//! WAL file names as PostgreSQL writes them into `pg_wal/` and hands them to
//! `archive_command` / `restore_command`: segments, `.partial` segments,
//! `.history` files and `.backup` history files.

use std::fmt;
use std::str::FromStr;

use super::Lsn;

/// A timeline ID; PostgreSQL starts at 1 and adds one at each promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A WAL segment size: a power of two from 1 MiB to 1 GiB (`initdb --wal-segsize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalSegmentSize(u32);

impl WalSegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);

    /// Accepts exactly the sizes `initdb` accepts.
    pub fn new(bytes: u64) -> Option<WalSegmentSize> {
        let valid = bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes);
        valid.then_some(WalSegmentSize(bytes as u32))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// How many segments one 4 GiB "log file" (the middle 8 hex digits) holds.
    pub fn segments_per_log_file(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

/// A segment number: the segment's start LSN divided by the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The LSN where this segment starts.
    pub fn start_lsn(self, size: WalSegmentSize) -> Lsn {
        Lsn(self.0 * size.bytes())
    }
}

/// What kind of file a WAL file name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    /// A complete segment, `000000010000000A000000FF`.
    Segment,
    /// The last, incomplete segment of a timeline left at promotion, `...FF.partial`.
    Partial,
    /// A timeline history file, `00000002.history`.
    History,
    /// A backup history file, `000000010000000A000000FF.00000028.backup`.
    Backup,
}

/// A parsed WAL file name. Segment-bearing names keep the raw log and segment
/// parts, because turning them into a [`SegmentNo`] needs the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// `TTTTTTTTLLLLLLLLSSSSSSSS`
    Segment { tli: TimelineId, log: u32, seg: u32 },
    /// `TTTTTTTTLLLLLLLLSSSSSSSS.partial`
    Partial { tli: TimelineId, log: u32, seg: u32 },
    /// `TTTTTTTT.history`
    History { tli: TimelineId },
    /// `TTTTTTTTLLLLLLLLSSSSSSSS.OOOOOOOO.backup` (O: offset of the backup start in the segment)
    Backup { tli: TimelineId, log: u32, seg: u32, offset: u32 },
}

/// Why a string is not a WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalFileNameError {
    /// Not one of PostgreSQL's four WAL file name forms.
    #[error("'{0}' is not a WAL file name (expected a segment like 000000010000000000000001, a .partial, .history or .backup file)")]
    Malformed(String),
    /// Timeline 0 does not exist.
    #[error("'{0}' names timeline 0, which PostgreSQL never uses")]
    TimelineZero(String),
}

fn hex8(s: &str) -> Option<u32> {
    // PostgreSQL writes upper-case hex only (IsXLogFileName uses "0123456789ABCDEF").
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

fn parse_segment_part(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24 {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl FromStr for WalFileName {
    type Err = WalFileNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || WalFileNameError::Malformed(s.to_string());
        // Only ASCII can match; checking first keeps the byte slicing below safe.
        if !s.is_ascii() {
            return Err(malformed());
        }
        let name = if let Some((t, l, g)) = parse_segment_part(s) {
            WalFileName::Segment { tli: TimelineId(t), log: l, seg: g }
        } else if let Some(base) = s.strip_suffix(".partial") {
            let (t, l, g) = parse_segment_part(base).ok_or_else(malformed)?;
            WalFileName::Partial { tli: TimelineId(t), log: l, seg: g }
        } else if let Some(base) = s.strip_suffix(".history") {
            WalFileName::History { tli: TimelineId(hex8(base).ok_or_else(malformed)?) }
        } else if let Some(base) = s.strip_suffix(".backup") {
            if base.len() != 33 || base.as_bytes()[24] != b'.' {
                return Err(malformed());
            }
            let (t, l, g) = parse_segment_part(&base[..24]).ok_or_else(malformed)?;
            let offset = hex8(&base[25..]).ok_or_else(malformed)?;
            WalFileName::Backup { tli: TimelineId(t), log: l, seg: g, offset }
        } else {
            return Err(malformed());
        };
        if name.timeline().0 == 0 {
            return Err(WalFileNameError::TimelineZero(s.to_string()));
        }
        Ok(name)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WalFileName::Segment { tli, log, seg } => write!(f, "{:08X}{log:08X}{seg:08X}", tli.0),
            WalFileName::Partial { tli, log, seg } => write!(f, "{:08X}{log:08X}{seg:08X}.partial", tli.0),
            WalFileName::History { tli } => write!(f, "{:08X}.history", tli.0),
            WalFileName::Backup { tli, log, seg, offset } => {
                write!(f, "{:08X}{log:08X}{seg:08X}.{offset:08X}.backup", tli.0)
            }
        }
    }
}

impl WalFileName {
    /// The segment file name for `segno` on timeline `tli`.
    pub fn segment(tli: TimelineId, segno: SegmentNo, size: WalSegmentSize) -> WalFileName {
        let per = size.segments_per_log_file();
        WalFileName::Segment { tli, log: (segno.0 / per) as u32, seg: (segno.0 % per) as u32 }
    }

    /// Which of the four forms this is.
    pub fn kind(&self) -> WalFileKind {
        match self {
            WalFileName::Segment { .. } => WalFileKind::Segment,
            WalFileName::Partial { .. } => WalFileKind::Partial,
            WalFileName::History { .. } => WalFileKind::History,
            WalFileName::Backup { .. } => WalFileKind::Backup,
        }
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match *self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::History { tli }
            | WalFileName::Backup { tli, .. } => tli,
        }
    }

    /// The log file and segment parts, for the names that carry them.
    fn log_seg(&self) -> Option<(u32, u32)> {
        match *self {
            WalFileName::Segment { log, seg, .. }
            | WalFileName::Partial { log, seg, .. }
            | WalFileName::Backup { log, seg, .. } => Some((log, seg)),
            WalFileName::History { .. } => None,
        }
    }

    /// The first 16 hex digits (timeline and log file) of segment-bearing
    /// names; the repository groups WAL by this so listings stay small.
    pub fn log_file_prefix(&self) -> Option<String> {
        self.log_seg().map(|(log, _)| format!("{:08X}{log:08X}", self.timeline().0))
    }

    /// The segment number, if the name carries one and its segment part is
    /// valid for `size` (a 16 MiB cluster never has a segment part above 0xFF).
    pub fn segment_no(&self, size: WalSegmentSize) -> Option<SegmentNo> {
        let (log, seg) = self.log_seg()?;
        let per = size.segments_per_log_file();
        (u64::from(seg) < per).then(|| SegmentNo(u64::from(log) * per + u64::from(seg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_four_forms() {
        let n: WalFileName = "000000010000000A000000FF".parse().expect("segment");
        assert_eq!(n, WalFileName::Segment { tli: TimelineId(1), log: 0xA, seg: 0xFF });
        assert_eq!(n.log_file_prefix().as_deref(), Some("000000010000000A"));
        assert_eq!(n.segment_no(WalSegmentSize::DEFAULT), Some(SegmentNo(0xA * 256 + 0xFF)));

        let p: WalFileName = "000000020000000000000003.partial".parse().expect("partial");
        assert_eq!(p.kind(), WalFileKind::Partial);
        assert_eq!(p.timeline(), TimelineId(2));

        let h: WalFileName = "0000000A.history".parse().expect("history");
        assert_eq!(h, WalFileName::History { tli: TimelineId(10) });
        assert_eq!(h.log_file_prefix(), None);

        let b: WalFileName = "000000010000000000000002.00000028.backup".parse().expect("backup");
        assert_eq!(b, WalFileName::Backup { tli: TimelineId(1), log: 0, seg: 2, offset: 0x28 });
    }

    #[test]
    fn rejects_what_is_not_a_wal_file_name() {
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000100000000000000001",
            "000000010000000000000001.gz",
            "00000001000000000000000a",
            "../000000010000000000000001",
            "000000010000000000000001/",
            "pg_wal/000000010000000000000001",
            "0000000.history",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002_00000028.backup",
            "00000001000000000000000\u{e9}",
            "000000000000000000000001",
            "00000000.history",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn segment_numbers_depend_on_segment_size() {
        let one_gib = WalSegmentSize::new(1 << 30).expect("valid size");
        let n: WalFileName = "000000010000000100000003".parse().expect("segment");
        assert_eq!(n.segment_no(one_gib), Some(SegmentNo(4 + 3)));
        let too_far: WalFileName = "000000010000000100000004".parse().expect("segment");
        assert_eq!(too_far.segment_no(one_gib), None);
    }

    #[test]
    fn segment_sizes_are_what_initdb_accepts() {
        assert!(WalSegmentSize::new(1 << 20).is_some());
        assert!(WalSegmentSize::new(1 << 30).is_some());
        assert!(WalSegmentSize::new(1 << 19).is_none());
        assert!(WalSegmentSize::new(1 << 31).is_none());
        assert!(WalSegmentSize::new(3 << 20).is_none());
        assert!(WalSegmentSize::new(0).is_none());
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32.., segno in 0u64..(1 << 40), shift in 20u32..=30) {
            let size = WalSegmentSize::new(1 << shift).expect("valid");
            let segno = SegmentNo(segno % (0xFFFF_FFFF * size.segments_per_log_file()));
            let name = WalFileName::segment(TimelineId(tli), segno, size);
            let parsed: WalFileName = name.to_string().parse().expect("own output parses");
            prop_assert_eq!(parsed, name);
            prop_assert_eq!(parsed.segment_no(size), Some(segno));
        }

        #[test]
        fn every_form_round_trips(tli in 1u32.., log in any::<u32>(), seg in any::<u32>(), offset in any::<u32>()) {
            let tli = TimelineId(tli);
            for name in [
                WalFileName::Segment { tli, log, seg },
                WalFileName::Partial { tli, log, seg },
                WalFileName::History { tli },
                WalFileName::Backup { tli, log, seg, offset },
            ] {
                prop_assert_eq!(name.to_string().parse::<WalFileName>(), Ok(name));
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = s.parse::<WalFileName>();
        }
    }
}
