//! pgwal: WAL archiving, base backups and point-in-time recovery for
//! PostgreSQL. The binary (`main.rs`) parses arguments and maps errors to exit
//! codes; everything else lives here so tests and benches can reach it.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod human;
pub mod interrupt;
pub mod local;
pub mod log;
pub mod ops;
pub mod pg;
pub mod progress;
pub mod repo;
pub mod storage;

pub use error::{Error, Result};
