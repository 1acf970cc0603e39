//! Progress on long commands (export, verify, report, bench, and the store's migrations when
//! `serve` or an offline command such as `user add` opens it): an indicatif spinner or bar on
//! stderr,
//! drawn only when stderr is a terminal. Scripts, pipes and logs see nothing of it, so the
//! command line's outputs (`--json` on stdout, `error:` lines on stderr) stay as documented.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a command says while the node's store opens (applying its pending migrations).
pub const OPENING_STORE: &str = "opening the store and applying its migrations";

/// Open the node's store as `serve` does, with its spinner on a terminal: every command
/// that opens the store offline (`user`, `store migrate`, `store backup`, `store restore
/// --mark-only`) says so the same way, and says nothing in a pipe.
pub async fn open_store(
    node: &detente_node::config::NodeDir,
    config: &detente_node::config::NodeConfig,
) -> Result<detente_node::NodeStore, detente_node::StartError> {
    let _opening = Progress::spinner(OPENING_STORE);
    detente_node::open_store(node, config).await
}

/// How often a spinner redraws by itself while the work gives no news.
const TICK: Duration = Duration::from_millis(120);

/// A spinner or a bar, or nothing when stderr is not a terminal.
pub struct Progress(ProgressBar);

impl Progress {
    /// A spinner with a message and the time elapsed, for work of unknown length.
    pub fn spinner(message: impl Into<String>) -> Self {
        Self::spinner_on(std::io::stderr().is_terminal(), message)
    }

    /// A bar of `len` steps with a message, the count and the time left.
    pub fn bar(len: u64, message: impl Into<String>) -> Self {
        Self::bar_on(std::io::stderr().is_terminal(), len, message)
    }

    fn spinner_on(terminal: bool, message: impl Into<String>) -> Self {
        let bar = ProgressBar::with_draw_target(None, target(terminal));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        bar.set_message(message.into());
        if terminal {
            bar.enable_steady_tick(TICK);
        }
        Self(bar)
    }

    fn bar_on(terminal: bool, len: u64, message: impl Into<String>) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len), target(terminal));
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(message.into());
        Self(bar)
    }

    pub fn set_message(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }

    pub fn inc(&self, steps: u64) {
        self.0.inc(steps);
    }

    /// Whether anything is drawn.
    pub fn is_hidden(&self) -> bool {
        self.0.is_hidden()
    }
}

impl Drop for Progress {
    /// The bar leaves no line behind: what the command prints afterwards is what stays.
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn target(terminal: bool) -> ProgressDrawTarget {
    if terminal {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_drawn_off_a_terminal() {
        let spinner = Progress::spinner_on(false, "verifying");
        spinner.set_message("still verifying");
        assert!(spinner.is_hidden());
        let bar = Progress::bar_on(false, 3, "runs");
        bar.inc(1);
        assert!(bar.is_hidden());
    }
}
