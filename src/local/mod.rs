//! The data-directory side: what pgwal reads from and keeps inside PGDATA
//! (the fetch spool, archive markers, the remembered repository identity,
//! file stamps, the archive backlog) and
//! how it tells a data directory, its postmaster and its recovery state
//! apart. In one place, so that `ops/` holds commands only.

pub mod backlog;
pub mod data_dir;
pub mod identity;
pub mod markers;
pub mod spool;
pub mod stamp;
pub mod wal_file;
