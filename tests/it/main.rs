//! pgwal's integration tests as one binary (ripgrep's layout): each file
//! below was a test binary of its own, each compiling the shared harness
//! again; as modules of one crate they compile it once. Run one file's
//! tests with `cargo test --test it FILE::` (e.g. `cargo test --test it restore::`).

mod common;
mod synthetic;

mod archive_ahead;
mod archive_fetch_failures;
mod archive_helper;
mod backup;
mod check;
mod cli;
mod daemon;
mod drill;
mod e2e_archive_recovery;
mod encryption;
mod expire;
mod first_day;
mod harness_selftest;
mod incr;
mod prefetch;
mod readme_setup;
mod restore;
mod restore_chain;
mod round_trips;
mod s3_parts;
mod scale;
mod storage_conformance;
mod store_faults;
mod verify;
