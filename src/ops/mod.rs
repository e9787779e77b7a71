//! One module per command. Each takes explicit options and a repository,
//! never global configuration, and returns errors to `main`.

pub mod archive;
pub mod fetch;
