//! Progress of a long prune: a bar on a terminal, plain lines otherwise.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a line is printed when stderr is not a terminal (a cron log).
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Reports the running total of a prune on stderr.
#[derive(Debug)]
pub(crate) struct Progress {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Quiet,
    /// A terminal: a bar once the total is known, a spinner before.
    Bar(ProgressBar),
    /// Not a terminal: a line at most every [`LINE_EVERY`].
    Lines {
        started: Instant,
        last: Instant,
    },
}

impl Progress {
    /// Progress on stderr: a bar when it is a terminal, lines otherwise,
    /// nothing when `quiet`.
    pub(crate) fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(spinner_style());
            bar.set_message("pruning expired sessions");
            bar.enable_steady_tick(Duration::from_millis(120));
            Mode::Bar(bar)
        } else {
            let now = Instant::now();
            Mode::Lines {
                started: now,
                last: now,
            }
        };
        Self { mode }
    }

    /// True when a total would be shown (worth a count query).
    pub(crate) fn wants_total(&self) -> bool {
        matches!(self.mode, Mode::Bar(_))
    }

    /// The number of sessions to delete, once known.
    pub(crate) fn set_total(&mut self, total: u64) {
        if let Mode::Bar(bar) = &self.mode {
            bar.set_length(total);
            bar.set_style(bar_style());
        }
    }

    /// `done` sessions deleted so far.
    pub(crate) fn update(&mut self, done: u64) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                // Sessions that expired after the count make the total grow.
                if bar.length().is_some_and(|total| done > total) {
                    bar.set_length(done);
                }
                bar.set_position(done);
            }
            Mode::Lines { started, last } => {
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let mut stderr = std::io::stderr().lock();
                    // Progress is best effort: a closed stderr must not fail the prune.
                    let _ = writeln!(
                        stderr,
                        "keepsake prune: {done} expired sessions deleted so far ({}s)",
                        started.elapsed().as_secs()
                    );
                }
            }
        }
    }

    /// Removes the bar (the result line follows on stdout).
    pub(crate) fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}: {human_pos} deleted ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:40}] {human_pos}/{human_len} ({percent}%, eta {eta})")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}
