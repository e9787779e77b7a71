//! `pgwal standby`: the restore of the newest backup (the same code as
//! `pgwal restore`), written as a standby: `standby.signal`,
//! `primary_conninfo`, `primary_slot_name`, `restore_command` and
//! `recovery_target_timeline = 'latest'`. With `--create-slot`, the physical
//! slot is created on the primary before any file is written (a bad
//! connection string fails fast), and dropped again if the restore fails.

use super::restore::{self, Outcome};
use crate::config::restore::RestoreOptions;
use crate::db::{ConnTarget, PgEnv};
use crate::error::{Error, Result};
use crate::repo::Repository;

/// Seeds a standby in `opts.target_dir`.
pub fn standby(rt: &tokio::runtime::Runtime, repo: &Repository, opts: &RestoreOptions) -> Result<Outcome> {
    let Some(settings) = &opts.standby else {
        return Err(Error::Usage("standby needs --primary-conninfo".into()));
    };
    let mut notices = Vec::new();
    let plan = restore::prepare(rt, repo, opts, &mut notices)?;
    let mut created = None;
    if let (true, Some(slot)) = (settings.create_slot, settings.slot.as_deref()) {
        let target = ConnTarget::new(Some(&with_default_dbname(&settings.primary_conninfo)), &PgEnv::from_process())?;
        let session = rt.block_on(target.connect())?;
        if rt.block_on(session.create_physical_slot(slot))? {
            created = Some((session, slot));
        } else {
            notices.push(format!("replication slot '{slot}' exists on the primary already; using it"));
        }
    }
    restore::print_notices(&notices);
    let result = restore::write(rt, repo, opts, &plan, notices);
    if let (Err(_), Some((session, slot))) = (&result, created) {
        // Best effort: a slot nobody uses keeps WAL on the primary forever.
        if let Err(e) = rt.block_on(session.drop_slot(slot)) {
            crate::log_warn!("{e}; drop the slot by hand");
        }
    }
    result
}

/// Slot functions run in any database: without a `dbname`, libpq would try
/// one named after the user, which a replication role rarely has.
fn with_default_dbname(conninfo: &str) -> String {
    let t = conninfo.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") || t.contains("dbname") {
        t.to_string()
    } else {
        format!("{t} dbname=postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sessions_get_a_database() {
        assert_eq!(with_default_dbname("host=p user=r"), "host=p user=r dbname=postgres");
        assert_eq!(with_default_dbname("host=p dbname=x"), "host=p dbname=x");
        assert_eq!(with_default_dbname("postgresql://p/x"), "postgresql://p/x");
    }
}
