//! Timeline history files (`00000002.history`): one line per ancestor
//! timeline, `parent_tli<TAB>switch_lsn<TAB>reason`, as PostgreSQL's
//! `writeTimeLineHistory` writes them. Comment and blank lines are allowed.

use super::{Lsn, TimelineId};

/// One ancestor: timeline `parent` ended at `switch_point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: TimelineId,
    /// The LSN where the ancestor timeline was left.
    pub switch_point: Lsn,
}

/// Why a file is not a valid history file for its timeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// Not UTF-8 text.
    #[error("history file is not text")]
    NotText,
    /// A line that is neither blank, a comment, nor `tli<TAB>lsn<TAB>reason`.
    #[error("history file line {0} is not 'timeline<TAB>LSN<TAB>reason'")]
    BadLine(usize),
    /// Ancestors must be older (lower) timelines, in increasing order.
    #[error("history file line {0}: timeline {1} is not older than the next one")]
    NotIncreasing(usize, u32),
}

/// Parses a history file for timeline `tli`; the entries are its ancestors, oldest first.
pub fn parse_history(tli: TimelineId, content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryError> {
    let text = std::str::from_utf8(content).map_err(|_| HistoryError::NotText)?;
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields.next().and_then(|f| f.parse::<u32>().ok()).ok_or(HistoryError::BadLine(line_no))?;
        let switch_point = fields.next().and_then(|f| f.parse::<Lsn>().ok()).ok_or(HistoryError::BadLine(line_no))?;
        let older_than_previous = entries.last().is_some_and(|e| e.parent.0 >= parent);
        if parent == 0 || parent >= tli.0 || older_than_previous {
            return Err(HistoryError::NotIncreasing(line_no, parent));
        }
        entries.push(HistoryEntry { parent: TimelineId(parent), switch_point });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgres_writes() {
        let text = b"1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-23 10:00:00+00\n";
        let h = parse_history(TimelineId(3), text).expect("valid");
        assert_eq!(
            h,
            vec![
                HistoryEntry { parent: TimelineId(1), switch_point: Lsn(0x300_0148) },
                HistoryEntry { parent: TimelineId(2), switch_point: Lsn(0x500_0000) },
            ]
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(parse_history(TimelineId(2), b"\xff\xfe"), Err(HistoryError::NotText));
        assert_eq!(parse_history(TimelineId(2), b"hello world\n"), Err(HistoryError::BadLine(1)));
        assert_eq!(parse_history(TimelineId(2), b"2\t0/1\tx\n"), Err(HistoryError::NotIncreasing(1, 2)));
        assert_eq!(parse_history(TimelineId(2), b"1\tzz\tx\n"), Err(HistoryError::BadLine(1)));
    }
}
