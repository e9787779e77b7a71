//! Physical replication slots on a primary, for `pgwal standby --create-slot`.

use super::{pg_error_text, Session};
use crate::error::{Error, Result};

/// SQLSTATE `duplicate_object`: the slot exists already.
const DUPLICATE_OBJECT: &str = "42710";

impl Session {
    /// Creates physical replication slot `name`, reserving WAL from now on
    /// (so nothing the standby will need is removed before it connects).
    /// Returns `false` when a slot of that name exists already (it is left
    /// as it is).
    pub async fn create_physical_slot(&self, name: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM pg_create_physical_replication_slot($1, true)";
        match self.client.query_one(sql, &[&name]).await {
            Ok(_) => Ok(true),
            Err(e) if e.code().is_some_and(|c| c.code() == DUPLICATE_OBJECT) => Ok(false),
            Err(e) => Err(Error::Database {
                what: format!("cannot create replication slot '{name}' on the primary"),
                detail: pg_error_text(&e),
                source: Some(e),
            }),
        }
    }

    /// Drops replication slot `name` (one this run created and no longer needs).
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        self.client.query_one("SELECT 1 FROM pg_drop_replication_slot($1)", &[&name]).await.map_err(|e| {
            Error::Database {
                what: format!("cannot drop replication slot '{name}'"),
                detail: pg_error_text(&e),
                source: Some(e),
            }
        })?;
        Ok(())
    }
}
