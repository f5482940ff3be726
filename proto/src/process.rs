//! What every Tandem `main` does before its own work: install the one rustls
//! crypto provider (ring; two providers in one build make tonic's server TLS
//! panic) and build the tokio runtime; and, for the daemons, wait for the
//! signal that asks them to stop.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

/// Install the crypto provider and build the runtime. On failure, print
/// `program: ...` and return the exit code (2) to end with.
pub fn start(program: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("{program}: cannot start the async runtime: {e}");
        ExitCode::from(2)
    })
}

/// Resolve on the first SIGTERM or SIGINT, with the signal's name. If the
/// handlers cannot be installed, never resolves (the process is then stopped
/// the default way, by the signal itself).
pub async fn shutdown_signal() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    // Cancel-safe: recv() only waits for a signal.
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
