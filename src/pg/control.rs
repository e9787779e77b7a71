//! The head of `global/pg_control` (`ControlFileData`): the fields that say
//! which cluster a data directory belongs to, in what state it is and where
//! its latest checkpoint is. Native byte order and alignment, as PostgreSQL
//! writes it; the layout of the head has been stable since PostgreSQL 11
//! (10 had `prevCheckPoint` before the checkpoint copy).

use crate::pg::{Lsn, TimelineId};

/// `pg_control_version` of PostgreSQL 11, which dropped `prevCheckPoint`.
const VERSION_WITHOUT_PREV_CHECKPOINT: u32 = 1100;

/// `DBState`: what the server was doing when it last wrote `pg_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    /// `DB_STARTUP`.
    Startup,
    /// `DB_SHUTDOWNED`: cleanly shut down.
    ShutDown,
    /// `DB_SHUTDOWNED_IN_RECOVERY`: a standby, cleanly shut down.
    ShutDownInRecovery,
    /// `DB_SHUTDOWNING`.
    ShuttingDown,
    /// `DB_IN_CRASH_RECOVERY`.
    InCrashRecovery,
    /// `DB_IN_ARCHIVE_RECOVERY`: a standby or a recovering copy.
    InArchiveRecovery,
    /// `DB_IN_PRODUCTION`: a running primary.
    InProduction,
    /// A value this code does not know.
    Unknown(u32),
}

impl DbState {
    fn from_raw(v: u32) -> DbState {
        match v {
            0 => DbState::Startup,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            n => DbState::Unknown(n),
        }
    }

    /// As `pg_controldata` prints it.
    pub fn describe(self) -> String {
        match self {
            DbState::Startup => "starting up".into(),
            DbState::ShutDown => "shut down".into(),
            DbState::ShutDownInRecovery => "shut down in recovery".into(),
            DbState::ShuttingDown => "shutting down".into(),
            DbState::InCrashRecovery => "in crash recovery".into(),
            DbState::InArchiveRecovery => "in archive recovery".into(),
            DbState::InProduction => "in production".into(),
            DbState::Unknown(n) => format!("unknown state {n}"),
        }
    }
}

/// The fields of `pg_control` pgwal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// `pg_control_version` (e.g. 1300 for PostgreSQL 13 to 16).
    pub version: u32,
    /// The server's state.
    pub state: DbState,
    /// When the file was last written (Unix seconds): `pg_control_last_modified`.
    pub time: i64,
    /// The latest checkpoint record.
    pub checkpoint: Lsn,
    /// That checkpoint's REDO location.
    pub redo: Lsn,
    /// That checkpoint's timeline.
    pub timeline: TimelineId,
}

impl ControlFile {
    /// Parses the head of a `pg_control` file; `None` if it is too short.
    pub fn parse(bytes: &[u8]) -> Option<ControlFile> {
        let u32_at =
            |o: usize| bytes.get(o..o + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("invariant: 4 bytes")));
        let u64_at =
            |o: usize| bytes.get(o..o + 8).map(|b| u64::from_ne_bytes(b.try_into().expect("invariant: 8 bytes")));
        let version = u32_at(8)?;
        // system_identifier 0, version 8, catalog 12, state 16, time 24,
        // checkPoint 32, [prevCheckPoint 40,] checkPointCopy.redo, its timeline.
        let copy = if version < VERSION_WITHOUT_PREV_CHECKPOINT { 48 } else { 40 };
        Some(ControlFile {
            system_identifier: u64_at(0)?,
            version,
            state: DbState::from_raw(u32_at(16)?),
            time: u64_at(24)? as i64,
            checkpoint: Lsn(u64_at(32)?),
            redo: Lsn(u64_at(copy)?),
            timeline: TimelineId(u32_at(copy + 8)?),
        })
    }
}

/// The system identifier in the head of a `pg_control` file: its first
/// eight bytes, in native byte order; `None` if there are fewer.
pub fn system_identifier(head: &[u8]) -> Option<u64> {
    head.get(0..8).map(|b| u64::from_ne_bytes(b.try_into().expect("invariant: 8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: u32, state: u32, checkpoint: u64, redo: u64, tli: u32) -> Vec<u8> {
        let mut b = vec![0u8; 296];
        b[0..8].copy_from_slice(&7_300_000_000_000_000_001u64.to_ne_bytes());
        b[8..12].copy_from_slice(&version.to_ne_bytes());
        b[16..20].copy_from_slice(&state.to_ne_bytes());
        b[24..32].copy_from_slice(&1_764_660_000i64.to_ne_bytes());
        b[32..40].copy_from_slice(&checkpoint.to_ne_bytes());
        let copy = if version < 1100 { 48 } else { 40 };
        b[copy..copy + 8].copy_from_slice(&redo.to_ne_bytes());
        b[copy + 8..copy + 12].copy_from_slice(&tli.to_ne_bytes());
        b
    }

    #[test]
    fn parses_the_head_of_each_layout() {
        let c = ControlFile::parse(&head(1300, 6, 0x3000060, 0x3000028, 2)).expect("parses");
        assert_eq!((c.system_identifier, c.time), (7_300_000_000_000_000_001, 1_764_660_000));
        assert_eq!(
            (c.state, c.checkpoint, c.redo, c.timeline),
            (DbState::InProduction, Lsn(0x3000060), Lsn(0x3000028), TimelineId(2))
        );
        let old = ControlFile::parse(&head(1002, 5, 0x100, 0x80, 1)).expect("parses");
        assert_eq!((old.state, old.redo, old.timeline), (DbState::InArchiveRecovery, Lsn(0x80), TimelineId(1)));
        assert_eq!(ControlFile::parse(&[0u8; 20]), None);
        assert_eq!(system_identifier(&head(1300, 6, 0, 0, 1)), Some(c.system_identifier));
        assert_eq!(system_identifier(&[0u8; 7]), None);
        assert_eq!(DbState::from_raw(9).describe(), "unknown state 9");
    }
}
