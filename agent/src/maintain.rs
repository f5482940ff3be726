//! The agent's side of a maintenance window (SPEC T4, C4): the fence and the
//! steps the controller orders through `Maintain`.
//!
//! The **fence** is a file, `<home>/fence`, naming the window that holds
//! it. While it is there the agent starts no operation (testdb, copy) and
//! never starts or promotes its server, except by a step of the window that
//! holds it (`serve`, `unfence_start`). It survives an agent restart; only
//! the window's `unfence_start` or `unfence` step removes it.
//!
//! Every step is idempotent (stopping a stopped server, isolating an
//! isolated one, reindexing again, re-seeding from where a crash left it),
//! so a controller that restarts in the middle of a window can ask again.
//! A step runs in its own task: the caller going away does not cut it short
//! (the tools run with `kill_on_drop`), and the same step asked again while
//! it runs waits for the same run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tandem_proto::model::Finding;
use tandem_proto::pb;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::config::AgentConfig;
use crate::engine::{Engine, EngineError};
use crate::ops::Operations;

/// Who holds the fence, and since when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fence {
    pub window: String,
    pub since: String,
}

fn fence_path(home: &Path) -> PathBuf {
    home.join("fence")
}

/// The fence on this agent, if any.
pub fn fence(home: &Path) -> Option<Fence> {
    let text = std::fs::read_to_string(fence_path(home)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or(Fence {
        window: "(unreadable fence file)".into(),
        since: String::new(),
    }))
}

/// The steps, as the controller names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    FenceStop,
    Isolate,
    Triage,
    Reindex,
    ExecRepair,
    Check,
    Serve,
    Reseed,
    UnfenceStart,
    Unfence,
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "fence_stop" => Step::FenceStop,
            "isolate" => Step::Isolate,
            "triage" => Step::Triage,
            "reindex" => Step::Reindex,
            "exec_repair" => Step::ExecRepair,
            "check" => Step::Check,
            "serve" => Step::Serve,
            "reseed" => Step::Reseed,
            "unfence_start" => Step::UnfenceStart,
            "unfence" => Step::Unfence,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(
        "unknown maintenance step `{0}`; expected fence_stop, isolate, triage, reindex, exec_repair, check, serve, reseed, unfence_start or unfence"
    )]
    UnknownStep(String),
    #[error(
        "stale order: set generation {got} is older than {seen}, already accepted; the controller's view of the set is out of date"
    )]
    Stale { got: u64, seen: u64 },
    #[error("operation {0} is running on this instance; a maintenance step waits for it to end")]
    Busy(String),
    #[error(
        "this agent is fenced by window {held} since {since}; window {asked} may not act on it (close or abort {held} first)"
    )]
    FencedByOther {
        held: String,
        since: String,
        asked: String,
    },
    #[error(
        "no repair command is configured: set `maintenance.repair_command` in agent.toml, or repair by hand and close the window"
    )]
    NoRepairCommand,
    #[error("the repair command {command:?} {how}: {stderr}")]
    RepairFailed {
        command: Vec<String>,
        how: String,
        stderr: String,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

type Outcome = Result<pb::MaintainResponse, String>;

pub struct Maintainer<E> {
    cfg: Arc<AgentConfig>,
    engine: Arc<E>,
    ops: Arc<Operations<E>>,
    running: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
}

impl<E: Engine> Maintainer<E> {
    pub fn new(cfg: Arc<AgentConfig>, engine: Arc<E>, ops: Arc<Operations<E>>) -> Arc<Self> {
        Arc::new(Maintainer {
            cfg,
            engine,
            ops,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Run (or join) one step; the error is the message for the caller.
    pub async fn step(
        self: &Arc<Self>,
        req: pb::MaintainRequest,
    ) -> Result<pb::MaintainResponse, MaintainError> {
        let step =
            Step::parse(&req.step).ok_or_else(|| MaintainError::UnknownStep(req.step.clone()))?;
        let seen = self
            .ops
            .journal()
            .generation()
            .map_err(|e| MaintainError::Other(e.to_string()))?;
        if req.set_generation < seen {
            return Err(MaintainError::Stale {
                got: req.set_generation,
                seen,
            });
        }
        if let Some(op) = self.ops.running() {
            return Err(MaintainError::Busy(op));
        }
        if let Some(f) = fence(&self.cfg.home)
            && f.window != req.window_id
        {
            return Err(MaintainError::FencedByOther {
                held: f.window,
                since: f.since,
                asked: req.window_id,
            });
        }
        let key = format!("{}/{}", req.window_id, req.step);
        let mut rx = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&key) {
                Some(rx) if rx.borrow().is_none() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), rx.clone());
                    let this = self.clone();
                    let span = info_span!("maintain", window = %req.window_id, step = %req.step);
                    tokio::spawn(
                        async move {
                            let out = this.run(step, &req).await.map_err(|e| e.to_string());
                            match &out {
                                Ok(r) => info!(message = %r.message, "maintenance step done"),
                                Err(e) => warn!(error = %e, "maintenance step failed"),
                            }
                            tx.send_replace(Some(out));
                        }
                        .instrument(span),
                    );
                    rx
                }
            }
        };
        let out = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| MaintainError::Other("the step's task ended without a result".into()))?
            .clone()
            .expect("waited for Some");
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        out.map_err(MaintainError::Other)
    }

    async fn run(
        &self,
        step: Step,
        req: &pb::MaintainRequest,
    ) -> Result<pb::MaintainResponse, MaintainError> {
        let targets: Vec<Finding> = req.targets.iter().cloned().map(Into::into).collect();
        let out_file = self.cfg.home.join("maintenance.out");
        let mut resp = pb::MaintainResponse::default();
        match step {
            Step::FenceStop => {
                self.hold_fence(&req.window_id)?;
                self.engine.stop().await?;
                resp.message = format!("fenced by {} and stopped", req.window_id);
            }
            Step::Isolate => {
                self.engine.isolate().await?;
                resp.message =
                    "out of client service: no TCP, its socket moved to the agent's private directory"
                        .into();
            }
            Step::Triage | Step::Check => {
                let c = self.engine.check_live(&targets, &out_file).await?;
                resp.message = format!(
                    "{} relation(s) checked on the live server: {} finding(s){}",
                    c.relations.len(),
                    c.findings.len(),
                    if c.unresolved.is_empty() {
                        String::new()
                    } else {
                        format!(", {} not checkable", c.unresolved.len())
                    }
                );
                resp.findings = c.findings.into_iter().map(Into::into).collect();
                resp.relations = c
                    .relations
                    .into_iter()
                    .map(|r| pb::RelationSize {
                        database: r.database,
                        relation: r.relation,
                        is_index: r.is_index,
                        bytes: r.bytes,
                    })
                    .collect();
                resp.unresolved = c.unresolved;
            }
            Step::Reindex => {
                let mut done = Vec::new();
                for t in targets.iter().filter(|t| t.kind == "index") {
                    self.engine.reindex(&t.database, &t.relation).await?;
                    done.push(format!("{}.{}", t.database, t.relation));
                }
                resp.message = format!("REINDEX INDEX {}", done.join(", "));
            }
            Step::ExecRepair => {
                resp.message = self.exec_repair(&req.window_id, &targets).await?;
            }
            Step::Serve => {
                self.engine.serve().await?;
                resp.message = "back in client service".into();
            }
            Step::Reseed => {
                self.hold_fence(&req.window_id)?;
                self.engine.stop().await?;
                let data = self.engine.data_dir().to_owned();
                let name = data
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let aside = data.with_file_name(format!("{name}.tandem-reseed-{}", req.window_id));
                self.engine.reseed(&aside).await?;
                resp.message = format!(
                    "re-seeded from the primary; the old data directory is kept at {}",
                    aside.display()
                );
            }
            Step::UnfenceStart => {
                self.engine.start().await?;
                self.release_fence()?;
                resp.message = "fence released, server started".into();
            }
            Step::Unfence => {
                self.release_fence()?;
                resp.message = "fence released".into();
            }
        }
        resp.facts = Some(self.engine.facts().await.into());
        resp.fenced = fence(&self.cfg.home).is_some();
        Ok(resp)
    }

    fn hold_fence(&self, window: &str) -> Result<(), MaintainError> {
        if fence(&self.cfg.home).is_some() {
            return Ok(());
        }
        let path = fence_path(&self.cfg.home);
        let f = Fence {
            window: window.to_owned(),
            since: jiff::Timestamp::now().to_string(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&f).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| MaintainError::Io {
                op: "write the fence",
                path: path.clone(),
                source,
            })?;
        info!(
            window,
            "fence held: this server is not started or promoted until the window releases it"
        );
        Ok(())
    }

    fn release_fence(&self) -> Result<(), MaintainError> {
        let path = fence_path(&self.cfg.home);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                info!("fence released");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(MaintainError::Io {
                op: "remove the fence",
                path,
                source,
            }),
        }
    }

    /// Run the configured repair command as the database's OS user, with
    /// the findings in a JSON file named by `TANDEM_FINDINGS`.
    async fn exec_repair(
        &self,
        window: &str,
        targets: &[Finding],
    ) -> Result<String, MaintainError> {
        let m = &self.cfg.maintenance;
        let Some(command) = m.repair_command.clone().filter(|c| !c.is_empty()) else {
            return Err(MaintainError::NoRepairCommand);
        };
        let findings_file = self.cfg.home.join(format!("repair-{window}.json"));
        std::fs::write(
            &findings_file,
            serde_json::to_vec_pretty(targets).unwrap_or_default(),
        )
        .map_err(|source| MaintainError::Io {
            op: "write",
            path: findings_file.clone(),
            source,
        })?;
        let runner = crate::runner::Runner::for_os_user(&self.cfg.postgres.os_user)
            .map_err(|e| MaintainError::Other(e.to_string()))?;
        runner
            .prepare_file(&findings_file)
            .map_err(|source| MaintainError::Io {
                op: "chown",
                path: findings_file.clone(),
                source,
            })?;
        let pg = &self.cfg.postgres;
        let mut cmd = runner.command(&command[0]);
        cmd.args(&command[1..])
            .env("TANDEM_WINDOW", window)
            .env("TANDEM_SET", &self.cfg.set)
            .env("TANDEM_MEMBER", self.cfg.member())
            .env("TANDEM_FINDINGS", &findings_file)
            .env("PGDATA", &pg.data_dir)
            .env("PGHOST", &pg.socket_dir)
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", &pg.user);
        let o = runner
            .output(cmd, m.repair_timeout)
            .await
            .map_err(|e| MaintainError::Other(format!("the repair command {command:?}: {e}")))?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
        if !o.status.success() {
            return Err(MaintainError::RepairFailed {
                command,
                how: o
                    .status
                    .code()
                    .map_or("was killed by a signal".into(), |c| {
                        format!("exited with {c}")
                    }),
                stderr: tail,
            });
        }
        Ok(format!("repair command {command:?} succeeded"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_name_parses_and_others_do_not() {
        for s in [
            "fence_stop",
            "isolate",
            "triage",
            "reindex",
            "exec_repair",
            "check",
            "serve",
            "reseed",
            "unfence_start",
            "unfence",
        ] {
            assert!(Step::parse(s).is_some(), "{s}");
        }
        assert_eq!(Step::parse("promote"), None);
    }

    #[test]
    fn the_fence_file_names_its_window() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fence(dir.path()), None);
        let f = Fence {
            window: "w-1".into(),
            since: "2026-11-21T00:00:00Z".into(),
        };
        std::fs::write(fence_path(dir.path()), serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(fence(dir.path()), Some(f));
    }
}
