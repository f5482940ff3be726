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
    pid_of(dir).is_some_and(pid_runs)
}

/// Remove the socket lock files in `socket_dir` (`.s.PGSQL.<port>.lock`,
/// and the socket beside each) whose postmaster no longer runs. PostgreSQL
/// removes a stale one itself only when its process is gone; a postmaster
/// killed a moment ago is a zombie until init reaps it, and a new server
/// on the same socket directory would refuse to start ("lock file already
/// exists"). Run before a private instance starts.
pub fn clear_stale_socket_locks(socket_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(socket_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(socket) = name
            .strip_suffix(".lock")
            .filter(|n| n.starts_with(".s.PGSQL."))
        else {
            continue;
        };
        let pid = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if pid.is_some_and(|p| p > 1 && !pid_runs(p)) {
            let _ = std::fs::remove_file(socket_dir.join(socket));
            let _ = std::fs::remove_file(e.path());
            tracing::info!(lock = %e.path().display(), pid, "removed a stale socket lock (its postmaster no longer runs)");
        }
    }
}

fn pid_runs(pid: i32) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_lock_is_removed_and_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has PID 0x3fffffff (above the kernel's pid_max).
        std::fs::write(dir.path().join(".s.PGSQL.5432.lock"), "1073741823\n/x\n").unwrap();
        std::fs::write(dir.path().join(".s.PGSQL.5432"), "").unwrap();
        let me = std::process::id();
        std::fs::write(dir.path().join(".s.PGSQL.5433.lock"), format!("{me}\n")).unwrap();
        std::fs::write(dir.path().join("other.lock"), "1073741823\n").unwrap();
        clear_stale_socket_locks(dir.path());
        assert!(!dir.path().join(".s.PGSQL.5432.lock").exists());
        assert!(!dir.path().join(".s.PGSQL.5432").exists());
        assert!(dir.path().join(".s.PGSQL.5433.lock").exists());
        assert!(dir.path().join("other.lock").exists());
    }
}
