//! How a command ends: its [`Outcome`] (the exit code), the error that
//! stops it ([`CtlError`], exit 2), and the printing every command shares.
//! A leaf: the commands import it, it imports none of them.

use serde_json::Value;

use crate::output::OutputFormat;

/// How a command ended when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything is fine: exit 0.
    Ok,
    /// A verdict or a state is bad: exit 1.
    Bad,
    /// The command ran, but what it asked for could not be done (a test
    /// could not run): exit 2.
    CouldNotRun,
}

/// The command could not run: exit 2 with this message.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no {what}: pass {flag} or set {env} (for the demo: `. $TANDEM_DEMO_DIR/env`)")]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error(transparent)]
    Tls(#[from] tandem_proto::tls::TlsError),
    #[error("the controller refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
    #[error("{0}")]
    Usage(String),
}

/// The error for a call the controller refused, with its message (or its
/// code when it sent none).
pub fn refused(call: &'static str) -> impl Fn(tonic::Status) -> CtlError {
    move |s| CtlError::Refused {
        call,
        message: if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_owned()
        },
    }
}

/// Print a command's answer: `json` for scripts, `human` for people.
pub fn print(format: OutputFormat, json: Value, human: String) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("json values serialize")
        ),
        OutputFormat::Human => println!("{}", human.trim_end()),
    }
}
