//! SIGTERM and SIGINT as a future, for commands that must clean up when
//! they are stopped (a backup removes its packs and releases its lock; the
//! daemon stops its job first). Waited on beside the work with `select!`.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves with the signal's name once SIGTERM or SIGINT arrives.
///
/// From the first call on, the process no longer dies of these signals by
/// default: the caller ends itself once it has cleaned up. Where the
/// handlers cannot be installed the future never resolves, and the default
/// action (termination) stays.
pub async fn received() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
