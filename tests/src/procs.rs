//! Real processes for end-to-end tests: where the workspace binaries are
//! ([`bin_path`]) and a child process that logs to a file and dies with its
//! owner ([`Proc`]).
//!
//! Note: `cargo test -p tandem-tests` does not build `tandem-agent`,
//! `tandem-controller` or `tandemctl`; run `cargo build --workspace` first.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::wait::wait_for;

/// Path of a workspace binary built by cargo (`tandem-agent`,
/// `tandem-controller`, `tandemctl`).
///
/// Looks at env `CARGO_BIN_EXE_<name>` first; otherwise the first existing
/// `<dir>/<name>` among: `$CARGO_TARGET_DIR/debug`, the profile directory of
/// the running test binary (`target/<profile>/deps/..`), and
/// `<workspace root>/target/debug`.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let var = format!("CARGO_BIN_EXE_{name}");
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "{var} points at {}, which does not exist; run `cargo build --workspace` first",
            p.display()
        );
        return Ok(p);
    }
    let tried: Vec<PathBuf> = bin_dirs().into_iter().map(|d| d.join(name)).collect();
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "binary `{name}` not found (looked at {}); run `cargo build --workspace` first",
        tried.join(", ")
    )
}

/// The workspace root: the nearest ancestor of this crate whose `Cargo.toml`
/// has a `[workspace]` table (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or_else(|| manifest_dir.parent().unwrap_or(manifest_dir))
        .to_path_buf()
}

/// Candidate directories holding the built binaries, best first.
fn bin_dirs() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(root.join(t).join("debug"));
    }
    // A test binary lives in target/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        dirs.push(profile.to_path_buf());
    }
    dirs.push(root.join("target").join("debug"));
    dirs.dedup();
    dirs
}

/// A child process whose stdout+stderr go to a log file; killed (SIGKILL) and
/// reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Spawn `cmd` with stdin from /dev/null and stdout+stderr appended to
    /// `log` (created with its parent directories).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create log directory {}", parent.display()))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open log file {} for {name}", log.display()))?;
        let err = out.try_clone().context("duplicate log file handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `sig` to the process.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid does not fit in i32")?;
        signal::kill(Pid::from_raw(pid), sig)
            .with_context(|| format!("send {sig} to {} (pid {pid})", self.name))
    }

    /// SIGKILL the process (if still running) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `timeout` for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.name, self.pid());
        let child = &mut self.child;
        wait_for(&what, timeout, Duration::from_millis(20), || {
            let r = child.try_wait().map_err(anyhow::Error::from);
            async move { r }
        })
        .await
        .with_context(|| format!("log: {}", self.log.display()))
    }

    /// Everything the process wrote so far (lossy UTF-8; empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proc_logs_and_exits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let mut p = Proc::spawn("sh", cmd, &log).unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        let text = p.log_text();
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }

    #[tokio::test]
    async fn proc_signal_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut p = Proc::spawn("sleep", cmd, &dir.path().join("sleep.log")).unwrap();
        p.signal(Signal::SIGTERM).unwrap();
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(!status.success());
    }

    #[test]
    fn missing_binary_says_what_to_do() {
        let err = bin_path("no-such-tandem-binary").unwrap_err();
        assert!(
            format!("{err}").contains("cargo build --workspace"),
            "{err}"
        );
    }
}
