//! One module per command. Each takes explicit options and a repository,
//! never global configuration, and returns errors to `main`.

pub mod archive;
pub mod backup;
pub mod check;
pub mod daemon;
pub mod drill;
pub mod expire;
pub mod fetch;
pub mod list;
pub mod prefetch;
pub mod restore;
pub mod standby;
pub mod verify;
