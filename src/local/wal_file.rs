//! A WAL file written into the data directory from its stored object, as
//! `fetch` and the prefetcher both do: decoded piece by piece, each written
//! at its offset, its SHA-256 checked on the way.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::repo::frame::{self, FrameError, FrameHeader};
use crate::storage::pgdata;

/// Decodes a stored WAL object into `file`, checking its SHA-256. Worker
/// threads write each piece at its offset as soon as it is decompressed.
///
/// PostgreSQL fsyncs every file restore_command hands it (it keeps it in
/// pg_wal), in its startup process, between replaying one segment and the
/// next; writeback started as pieces land leaves that fsync less to wait
/// for. No fsync here: the file is not acknowledged to anyone, and waiting
/// for the disk kept the prefetcher from staying ahead (measured: no faster
/// recovery).
pub fn decode_into(object: &[u8], file: &File) -> std::result::Result<std::io::Result<FrameHeader>, FrameError> {
    frame::decode_with(object, |offset, piece| {
        file.write_all_at(piece, offset)?;
        pgdata::start_writeback(file, offset, piece.len() as u64);
        Ok(())
    })
}
