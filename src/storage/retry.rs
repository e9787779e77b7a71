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
    use std::cell::Cell;

    fn transient() -> Error {
        Error::Storage {
            op: "put",
            key: "k".into(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "Server returned non-2xx status code: 503 Service Unavailable: SlowDown".into(),
            },
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            notes: RetryNotes::Debug,
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let calls = Cell::new(0);
        let result = policy()
            .run("test", || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err(transient())
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(result.ok(), Some(4));
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let calls = Cell::new(0u32);
        let result: Result<()> = policy()
            .run("test", || {
                calls.set(calls.get() + 1);
                async { Err(transient()) }
            })
            .await;
        assert!(matches!(result, Err(Error::DeadlineExceeded { .. })), "{result:?}");
        assert!(calls.get() > 3, "retried only {} times", calls.get());
    }

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
    /// from the store is tried once.
    #[tokio::test]
    async fn does_not_retry_permanent_store_errors() {
        let calls = Cell::new(0u32);
        let result: Result<()> = policy()
            .run("test", || {
                calls.set(calls.get() + 1);
                async {
                    Err(Error::Storage {
                        op: "delete",
                        key: "k".into(),
                        source: object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
                        },
                    })
                }
            })
            .await;
        assert!(matches!(result, Err(Error::Storage { .. })), "{result:?}");
        assert_eq!(calls.get(), 1);
    }
}
