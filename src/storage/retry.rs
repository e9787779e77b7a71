//! Retrying transient storage failures with exponential backoff, bounded by a
//! deadline: `archive_command` must give up in time for PostgreSQL to see the
//! failure and call again, rather than hang the archiver.

use std::future::Future;
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
}

impl RetryPolicy {
    /// A policy with the given deadline and the usual backoff (100 ms doubling to 5 s).
    pub fn with_deadline(deadline: Duration) -> RetryPolicy {
        RetryPolicy { deadline, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    /// Transient failures are reported on stderr as they happen.
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
                    crate::log_warn!("{what}: {e}; retrying in {} ms", backoff.as_millis());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(e) => return Err(e),
            }
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
            source: object_store::Error::Generic { store: "S3", source: "503".into() },
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
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
}
