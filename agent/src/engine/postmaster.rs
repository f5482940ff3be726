//! A server's `postmaster.pid`: the postmaster it names, and ending it.
//! Used by `PostgresEngine::kill_private` and by the restore's undo (as
//! `engine::private::kill_postmaster`); it needs nothing of the engine.

use std::path::Path;

/// SIGKILL the postmaster whose `postmaster.pid` is in `dir`, if any. Its
/// backends notice their postmaster's death and exit.
pub fn kill_postmaster(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
        return;
    };
    if let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        && pid > 1
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        tracing::warn!(pid, dir = %dir.display(), "killed the private instance (SIGKILL)");
    }
}
