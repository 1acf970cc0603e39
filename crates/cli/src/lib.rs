//! The `detente` command line as a library: the operator commands, the API client, and the
//! real-process harness that the demo, the benchmark and the end-to-end tests share.

#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_append;
pub mod bench_compare;
pub mod bench_peers;
pub mod bench_transcript;
pub mod bench_verify;
pub mod charter;
pub mod client;
pub mod commands;
pub mod demo;
pub mod demo_charter;
pub mod demo_console;
pub mod demo_deadlines;
pub mod demo_formats;
pub mod demo_transcript;
pub mod formats_cmd;
pub mod harness;
pub mod home;
pub mod hook_sink;
pub mod progress;
pub mod report;
pub mod report_html;
pub mod screenshots;
pub mod store_cmd;
pub mod transcript;
pub mod users;
pub mod webdriver;

/// A failure to report: what, and the next step.
#[derive(Debug)]
pub struct Failure {
    pub error: String,
    pub hint: Option<String>,
    pub code: u8,
}

impl Failure {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            hint: None,
            code: 1,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn usage(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            hint: None,
            code: 2,
        }
    }
}

impl From<client::ClientError> for Failure {
    fn from(e: client::ClientError) -> Self {
        let code = if e.status == Some(400) { 2 } else { 1 };
        Self {
            error: e.error,
            hint: e.hint,
            code,
        }
    }
}

impl From<detente_node::config::ConfigError> for Failure {
    fn from(e: detente_node::config::ConfigError) -> Self {
        use detente_node::config::ConfigError;
        let hint = match &e {
            ConfigError::NoNode(dir) => Some(format!(
                "create one with: detente init --dir {} --name NAME --party \"FULL NAME\"",
                dir.display()
            )),
            ConfigError::UnknownKey(_) => Some(format!(
                "known keys: {}, peers.NAME.next_step",
                detente_node::config::CONFIG_KEYS.join(", ")
            )),
            _ => None,
        };
        Self {
            error: e.to_string(),
            hint,
            code: 1,
        }
    }
}

pub type Outcome = Result<(), Failure>;
