//! PostgreSQL's own vocabulary as types: LSNs, timelines, WAL file names, the
//! WAL page header, `pg_control` and `.history` files and the timeline chains they make. Pure: bytes and strings in, typed
//! values out; nothing here does I/O or depends on the rest of pgwal.

pub mod control;
pub mod history;
pub mod lsn;
pub mod page_header;
pub mod recovery;
pub mod timeline;
pub mod validate;
pub mod walfile;

pub use lsn::Lsn;
pub use page_header::{LongPageHeader, PageHeaderError};
pub use walfile::{SegmentNo, TimelineId, WalFileKind, WalFileName, WalFileNameError, WalSegmentSize};
