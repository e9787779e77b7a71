//! A progress bar for the long commands (`backup`, `restore`, `standby`) when
//! a person watches: one line on stderr redrawn in place a few times a
//! second. When stderr is not a terminal (cron, systemd, scripts, tests)
//! nothing is drawn at all, and the command's summary line is all there is.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(200);
/// Width of the bar itself, in characters.
const BAR_WIDTH: usize = 24;

/// A progress line for `total` bytes of work.
#[derive(Debug)]
pub struct Progress {
    what: String,
    total: u64,
    started: Instant,
    /// When the line was last drawn; `None` until the first draw.
    drawn: Mutex<Option<Instant>>,
    enabled: bool,
}

impl Progress {
    /// A bar labelled `what`, drawn only if stderr is a terminal.
    pub fn new(what: impl Into<String>, total: u64) -> Progress {
        Progress::with_output(what, total, std::io::stderr().is_terminal())
    }

    /// A bar that never draws.
    pub fn hidden() -> Progress {
        Progress::with_output("", 0, false)
    }

    fn with_output(what: impl Into<String>, total: u64, enabled: bool) -> Progress {
        Progress { what: what.into(), total, started: Instant::now(), drawn: Mutex::new(None), enabled }
    }

    /// Reports `done` bytes of the total, with `note` after the figures.
    /// Cheap when called often: it redraws at most every [`REDRAW`].
    pub fn update(&self, done: u64, note: &str) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if drawn.is_some_and(|at| now.duration_since(at) < REDRAW) {
            return;
        }
        *drawn = Some(now);
        let line = render(&self.what, done, self.total, now.duration_since(self.started), note);
        // Carriage return, the line, then clear what a longer line left.
        let _ = write!(std::io::stderr(), "\r{line}\x1b[K");
    }

    /// Ends the line if one was drawn, so that what follows starts afresh.
    pub fn finish(&self) {
        let drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if self.enabled && drawn.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// The text of the line: `pgwal: backup [#####-----]  52%  780/1500 MiB  130 MiB/s  note`.
fn render(what: &str, done: u64, total: u64, elapsed: Duration, note: &str) -> String {
    let done = done.min(total);
    let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { (done as f64 / secs) as u64 >> 20 } else { 0 };
    let mut line = format!(
        "pgwal: {what} [{bar}] {:>3}%  {}/{} MiB  {rate} MiB/s",
        (fraction * 100.0) as u32,
        done >> 20,
        total >> 20
    );
    if !note.is_empty() {
        line.push_str("  ");
        line.push_str(note);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fraction_figures_and_rate() {
        let line = render("backup", 512 << 20, 1024 << 20, Duration::from_secs(2), "100 MiB stored");
        assert_eq!(line, "pgwal: backup [############------------]  50%  512/1024 MiB  256 MiB/s  100 MiB stored");
    }

    #[test]
    fn never_overflows_the_bar() {
        for (done, total) in [(0, 0), (5, 0), (10, 5), (0, 10)] {
            let line = render("restore", done, total, Duration::ZERO, "");
            let bar = line.split(['[', ']']).nth(1).expect("bar");
            assert_eq!(bar.len(), BAR_WIDTH, "{line}");
        }
        assert!(render("restore", 0, 0, Duration::ZERO, "").contains("100%"));
    }

    #[test]
    fn hidden_draws_nothing() {
        let p = Progress::hidden();
        p.update(1, "x");
        p.finish();
        assert!(p.drawn.lock().expect("lock").is_none());
    }
}
