//! A server's `postmaster.pid`: the postmaster it names, whether it runs,
//! and ending it. Used by `PostgresEngine::kill_private`, by the undos of
//! the step runner and by the restore; it needs nothing of the engine.

use std::path::Path;

fn pid_of(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 1)
}

/// Whether the postmaster named by `dir/postmaster.pid` runs. A zombie
/// left for init to reap does not run (its lock file no longer holds).
pub fn runs(dir: &Path) -> bool {
    let Some(pid) = pid_of(dir) else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// SIGKILL the postmaster whose `postmaster.pid` is in `dir`, if any. Its
/// backends notice their postmaster's death and exit.
pub fn kill_postmaster(dir: &Path) {
    if let Some(pid) = pid_of(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        tracing::warn!(pid, dir = %dir.display(), "killed the private instance (SIGKILL)");
    }
}
