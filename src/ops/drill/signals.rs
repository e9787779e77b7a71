//! SIGINT and SIGTERM during a drill: noted, not acted on in the handler,
//! so that the drill can stop its throwaway server and remove its scratch
//! directory before it exits.

use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    PENDING.store(signal, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the flag read by [`pending`].
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `note` only stores into an atomic, which is
        // async-signal-safe; the handler stays valid for the process's life.
        unsafe {
            libc::signal(signal, note as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// The name of the signal received, if any.
pub fn pending() -> Option<&'static str> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}
