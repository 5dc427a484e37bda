//! A progress bar on stderr with an ETA, only when stderr is a terminal and not `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(what: &str, quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            None,
            if quiet || !std::io::stderr().is_terminal() {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} (ETA {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        Self(bar)
    }

    /// `done` of `total` finished.
    pub fn update(&self, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }

    pub fn is_hidden(&self) -> bool {
        self.0.is_hidden()
    }

    /// Replaces the text before the bar.
    pub fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }

    /// Prints a line above the bar (or plainly when the bar is hidden).
    pub fn println(&self, line: &str) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
