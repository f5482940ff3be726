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
    #[error(
        "no controller answered ({tried}); is one running, and is TANDEM_CONTROLLER (or --controller) the comma-separated list of their addresses?"
    )]
    NoController { tried: String },
    #[error("the controller refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    #[error(
        "the controller did not answer {call} ({message}); is it running, and is TANDEM_CONTROLLER its address? `tandemctl watch RUN` follows a run again once it is back"
    )]
    Unanswered { call: &'static str, message: String },
    #[error(
        "the controller closed the connection for {call} ({message}): it does not accept this certificate, or it stopped. TANDEM_CERT must be signed by the fleet's CA and not expired, and TANDEM_CA must be that CA (`tandemctl certs init` makes a development set)"
    )]
    CertRefused { call: &'static str, message: String },
    #[error(
        "the address in TANDEM_CONTROLLER (or --controller) does not serve {call}: it is not a Tandem controller (an agent's address?) or one of another version"
    )]
    NotAController { call: &'static str },
    #[error(transparent)]
    Certs(#[from] crate::certs::CertsError),
    #[error("{0}")]
    Usage(String),
}

/// The error for a call the controller refused, with its message (or its
/// code when it sent none).
pub fn refused(call: &'static str) -> impl Fn(tonic::Status) -> CtlError {
    move |s| {
        let message = status_text(&s);
        // A status the controller sent has no cause under it; one made on
        // this side from a failed connection has.
        let transport = std::error::Error::source(&s).is_some();
        match s.code() {
            tonic::Code::Unimplemented => CtlError::NotAController { call },
            // tandemctl connects (TCP and TLS) before its first call, so a
            // transport failure of the call itself is the controller closing
            // the connection: it refused the client certificate (TLS 1.3
            // says so with an alert, a close, a reset or a broken pipe,
            // whichever arrives first), or it stopped just then.
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                if transport =>
            {
                CtlError::CertRefused { call, message }
            }
            _ => CtlError::Refused { call, message },
        }
    }
}

/// A status's message with the causes under it (a transport error's TLS
/// alert, say), each said once.
fn status_text(s: &tonic::Status) -> String {
    let mut text = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_owned()
    };
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        let t = e.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = e.source();
    }
    text
}

/// Print a command's answer: `json` for scripts, `human` for people. A
/// reader that went away (`tandemctl history | head`) is no error: the rest
/// is dropped, without the panic `println!` would end in.
pub fn print(format: OutputFormat, json: Value, human: String) {
    use std::io::Write;
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(&json).expect("json values serialize"),
        OutputFormat::Human => human.trim_end().to_owned(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_whether_the_controller_refused_closed_the_connection_or_is_not_one() {
        let said = |s: tonic::Status| refused("ShowSets")(s).to_string();
        assert_eq!(
            said(tonic::Status::permission_denied("needs the operator role")),
            "the controller refused ShowSets: needs the operator role"
        );
        // The controller's own "unavailable" (an agent it cannot reach) is its refusal.
        assert_eq!(
            said(tonic::Status::unavailable("cannot reach agent `db1`")),
            "the controller refused ShowSets: cannot reach agent `db1`"
        );
        // A connection closed under the call (a refused certificate shows
        // as that): said as such, with its cause.
        let closed = said(tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        ))));
        assert!(
            closed.contains("closed the connection for ShowSets"),
            "{closed}"
        );
        assert!(closed.contains("broken pipe"), "{closed}");
        assert!(
            closed.contains("does not accept this certificate, or it stopped"),
            "{closed}"
        );
        let agent = said(tonic::Status::unimplemented(""));
        assert!(agent.contains("not a Tandem controller"), "{agent}");
        assert!(!agent.contains("Unimplemented"), "{agent}");
    }
}
