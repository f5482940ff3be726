//! What every Tandem `main` does before its own work: install the one rustls
//! crypto provider (ring; two providers in one build make tonic's server TLS
//! panic), raise the open files limit, and build the tokio runtime; and, for
//! the daemons, wait for the signal that asks them to stop.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

/// Install the crypto provider and build the runtime. On failure, print
/// `program: ...` and return the exit code (2) to end with.
pub fn start(program: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    raise_open_files_limit();
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("{program}: cannot start the async runtime: {e}");
        ExitCode::from(2)
    })
}

/// Raise the soft limit of open files to the hard limit. A controller holds
/// a connection from every agent and, during a run, one to every agent it
/// tests: 1,000 agents need about 1,500 descriptors, past the usual soft
/// limit of 1,024 (the fleet_sim benchmark). Best effort: the limit stays
/// as it was when it cannot be changed.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
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
