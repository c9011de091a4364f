//! A progress bar on stderr when it is a terminal; nothing otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use d4c_host::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// Terminal progress for host operations.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bar {
    /// A bar that shows only if stderr is a terminal.
    pub fn new() -> Bar {
        Bar {
            bar: Mutex::new(None),
            enabled: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::new(total);
        let style = if total > 0 {
            "{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({eta})"
        } else {
            "{msg:>12} {spinner} {bytes}"
        };
        bar.set_style(
            ProgressStyle::with_template(style)
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_message(phase.to_string());
        *self.bar.lock().unwrap() = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().unwrap().as_ref() {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap().take() {
            b.finish_and_clear();
        }
    }
}
