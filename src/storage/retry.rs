//! Retrying transient storage failures with exponential backoff, bounded by a
//! deadline: `archive_command` must give up in time for PostgreSQL to see the
//! failure and call again, rather than hang the archiver.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long and how often to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// No new attempt starts after this much time since the first.
    pub deadline: Duration,
    /// The first pause; doubled after each failure.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// Where notes about retries go.
    pub notes: RetryNotes,
}

/// Where a note about each retry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryNotes {
    /// The first [`WARNED_RETRIES`] retries of the process are warnings, the
    /// rest debug notes: someone runs the command and may wait for it.
    Warn,
    /// Debug notes only: `archive` and `fetch` write into PostgreSQL's log,
    /// where one `pgwal: error:` line per failed call is what belongs.
    Debug,
}

/// How many retries a process reports as warnings at most.
pub const WARNED_RETRIES: u32 = 3;

static WARNED: AtomicU32 = AtomicU32::new(0);

impl RetryPolicy {
    /// A policy with the given deadline and the usual backoff (100 ms doubling to 5 s).
    pub fn with_deadline(deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            deadline,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            notes: RetryNotes::Warn,
        }
    }

    /// The same policy with its retry notes at debug level only.
    pub fn quiet(self) -> RetryPolicy {
        RetryPolicy { notes: RetryNotes::Debug, ..self }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    /// Transient failures are noted on stderr as they happen (see [`RetryNotes`]);
    /// permanent ones end the loop at once.
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut backoff = self.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    let elapsed = start.elapsed();
                    if elapsed + backoff > self.deadline {
                        return Err(Error::DeadlineExceeded {
                            attempts,
                            seconds: elapsed.as_secs_f64(),
                            last: Box::new(e),
                        });
                    }
                    self.note(what, &e, backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RetryPolicy {
    fn note(&self, what: &str, e: &Error, backoff: Duration) {
        let warned = if self.notes == RetryNotes::Warn { WARNED.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
        if (1..=WARNED_RETRIES).contains(&warned) {
            let more = if warned == WARNED_RETRIES { " (further retries are noted at --log-level debug)" } else { "" };
            crate::log_warn!("{what}: {}; retrying in {} ms{more}", e.one_line(), backoff.as_millis());
        } else {
            crate::log_debug!("{what}: {}; retrying in {} ms", e.one_line(), backoff.as_millis());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::faults::{Fault, FaultyStore, Op, Rule};
    use object_store::path::Path;
    use object_store::ObjectStoreExt;
    use std::cell::Cell;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            notes: RetryNotes::Debug,
        }
    }

    /// One attempt: a PUT or DELETE of `key` through `store`, its failure
    /// wrapped as the repository wraps it.
    async fn put(store: &FaultyStore, key: &Path) -> Result<()> {
        let payload = object_store::PutPayload::from_static(b"segment");
        store.put(key, payload).await.map(|_| ()).map_err(|source| Error::Storage {
            op: "put",
            key: key.to_string(),
            source,
        })
    }

    async fn delete(store: &FaultyStore, key: &Path) -> Result<()> {
        store.delete(key).await.map_err(|source| Error::Storage { op: "delete", key: key.to_string(), source })
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let store = FaultyStore::in_memory();
        store.inject(Rule::on(Op::Put, Fault::Transient).times(3));
        let key = Path::from("wal/k");
        let result = policy().run("test", || put(&store, &key)).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(store.calls(Op::Put), 4);
        let stored = store.inner().get(&key).await.expect("stored").bytes().await.expect("body");
        assert_eq!(&stored[..], b"segment");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let store = FaultyStore::in_memory();
        store.inject(Rule::on(Op::Put, Fault::Io(std::io::ErrorKind::TimedOut)));
        let key = Path::from("wal/k");
        let result = policy().run("test", || put(&store, &key)).await;
        assert!(matches!(result, Err(Error::DeadlineExceeded { .. })), "{result:?}");
        assert!(store.calls(Op::Put) > 3, "retried only {} times", store.calls(Op::Put));
        assert!(store.inner().head(&key).await.is_err(), "nothing stored");
    }

    /// Not a store failure: checking what was read refused it.
    #[tokio::test]
    async fn does_not_retry_refusals() {
        let calls = Cell::new(0u32);
        let result: Result<()> = policy()
            .run("test", || {
                calls.set(calls.get() + 1);
                async { Err(Error::Corrupt { key: "k".into(), reason: "r".into() }) }
            })
            .await;
        assert!(matches!(result, Err(Error::Corrupt { .. })));
        assert_eq!(calls.get(), 1);
    }

    /// expire once retried "Permission denied" for two minutes: a refusal
    /// from the store is tried once, whether local disk (an I/O error) or
    /// an object store (403) says it.
    #[tokio::test]
    async fn does_not_retry_permanent_store_errors() {
        for fault in [Fault::Io(std::io::ErrorKind::PermissionDenied), Fault::Denied] {
            let store = FaultyStore::in_memory();
            let key = Path::from("backup/b/manifest");
            store.inner().put(&key, object_store::PutPayload::from_static(b"m")).await.expect("put");
            store.inject(Rule::on(Op::Delete, fault.clone()));
            let result = policy().run("test", || delete(&store, &key)).await;
            assert!(matches!(result, Err(Error::Storage { .. })), "{fault:?}: {result:?}");
            assert_eq!(store.calls(Op::Delete), 1, "{fault:?}");
            assert!(store.inner().head(&key).await.is_ok(), "{fault:?}: still there");
        }
    }
}
