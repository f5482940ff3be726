//! Waiting for the signal that asks a daemon to stop, shared by both daemons.

use tokio::signal::unix::{SignalKind, signal};

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
