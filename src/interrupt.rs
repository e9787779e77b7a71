//! SIGTERM and SIGINT for commands that must clean up when they are stopped
//! (a backup removes its packs and releases its lock; a drill stops its
//! throwaway server and removes its scratch directory). Two forms of the one
//! job, for the two shapes of work:
//!
//! - [`received`], a future, for async work that waits on it beside the
//!   work with `select!` (backup);
//! - [`install`] and [`pending`], a flag set by a handler that does nothing
//!   else, for loops that look at it between steps (drill; expire, between
//!   two deletions).
//!
//! A process uses one form, not both: [`install`] replaces the process's
//! handlers, the future's among them.

use std::sync::atomic::{AtomicI32, Ordering};

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

/// The signal [`install`]'s handler noted, 0 for none.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    PENDING.store(signal, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the flag read by [`pending`]: noted, not
/// acted on in the handler, so that the caller cleans up before it exits.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `note` only stores into an atomic, which is
        // async-signal-safe; the handler stays valid for the process's life.
        unsafe {
            libc::signal(signal, note as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// The name of the signal received since [`install`], if any.
pub fn pending() -> Option<&'static str> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}
