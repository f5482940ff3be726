//! Running engine commands (`pg_ctl`, `psql`, ...) as the database's OS user.
//!
//! PostgreSQL refuses to run as root; when the agent runs as root, every
//! command runs as the configured OS user (`postgres`), from `/` so that an
//! unreadable working directory never gets in the way. Otherwise commands run
//! as the agent's own user. Every command has a time limit and is killed when
//! its future is dropped.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use tracing::Instrument as _;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "OS user `{user}` does not exist; set postgres.os_user in agent.toml to the owner of the data directory"
    )]
    NoSuchUser { user: String },
    #[error("cannot look up OS user `{user}`")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
}

/// Who engine commands run as.
#[derive(Debug, Clone)]
pub struct Runner {
    /// uid/gid to switch to; None when the agent is not root.
    switch_to: Option<(u32, u32)>,
    home: Option<PathBuf>,
}

impl Runner {
    /// Commands run as `os_user` when this process is root, else as ourselves.
    pub fn for_os_user(os_user: &str) -> Result<Runner, RunError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Runner {
                switch_to: None,
                home: None,
            });
        }
        let user = nix::unistd::User::from_name(os_user)
            .map_err(|source| RunError::Lookup {
                user: os_user.to_owned(),
                source,
            })?
            .ok_or_else(|| RunError::NoSuchUser {
                user: os_user.to_owned(),
            })?;
        Ok(Runner {
            switch_to: Some((user.uid.as_raw(), user.gid.as_raw())),
            home: Some(user.dir),
        })
    }

    /// The uid/gid files made for the engine must belong to (None: ours).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.switch_to
    }

    /// Create `dir` (and parents) owned by the engine's user, mode 0700.
    pub fn prepare_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        self.chown(dir)
    }

    /// Create `file` if missing (for the engine's user to append to).
    pub fn prepare_file(&self, file: &Path) -> std::io::Result<()> {
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        self.chown(file)
    }

    fn chown(&self, path: &Path) -> std::io::Result<()> {
        if let Some((uid, gid)) = self.switch_to {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// A command prepared to run as the right user.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .current_dir("/");
        if let Some((uid, gid)) = self.switch_to {
            cmd.uid(uid).gid(gid);
            if let Some(home) = &self.home {
                cmd.env("HOME", home);
            }
        }
        cmd
    }

    /// Run to completion with a time limit, capturing stdout and stderr.
    ///
    /// Inside a span (an operation's step, a `Status` call) the command is a
    /// `process` span of its own with OpenTelemetry's process attributes
    /// (`process.executable.name`, `process.exit.code`); outside any span
    /// (the heartbeat's polls) it is not traced.
    pub async fn output(&self, mut cmd: Command, timeout: Duration) -> Result<Output, RunError> {
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            let name = Path::new(&program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| program.clone());
            tracing::info_span!(
                "process",
                otel.name = %name,
                process.executable.name = %name,
                process.command = %program,
                process.exit.code = tracing::field::Empty,
                process.timed_out = tracing::field::Empty,
            )
        };
        let fut = cmd.output();
        let r = tokio::time::timeout(timeout, fut)
            .instrument(span.clone())
            .await;
        match r {
            Ok(Ok(out)) => {
                if let Some(code) = out.status.code() {
                    span.record("process.exit.code", code);
                } else if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&out.status)
                {
                    // Killed by a signal: the shell's convention, 128 + signal.
                    span.record("process.exit.code", 128 + sig);
                }
                Ok(out)
            }
            Ok(Err(source)) => Err(RunError::Spawn { program, source }),
            Err(_) => {
                span.record("process.timed_out", true);
                Err(RunError::Timeout { program, timeout })
            }
        }
    }
}
