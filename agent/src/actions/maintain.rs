//! The agent's side of a maintenance window (SPEC T4, C4): one step per
//! operation, ordered by the controller like any other (`StartOperation`
//! with a maintenance order), journaled, followed by `Watch`.
//!
//! Every step is idempotent (stopping a stopped server, isolating an
//! isolated one, reindexing again, re-seeding from where a crash left it),
//! so a controller that restarts in the middle of a window can ask again:
//! the same request id joins the running step or returns the one that
//! succeeded; one that failed or was interrupted runs again. The fence
//! (`crate::fence`) is the only thing a step leaves behind on purpose:
//! `fence_stop` and `reseed` hold it, `unfence_start` and `unfence`
//! release it.

use std::path::PathBuf;

use tandem_proto::model::Finding;
use tandem_proto::order::{MaintenanceOrder, MaintenanceStep};
use tracing::{info, warn};

use crate::engine::{Engine, EngineError};
use crate::fence::{self, FenceError};
use crate::journal::{OpRecord, OpState, RelationSize, StepOutcome};
use crate::steps::{Ending, Run};

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
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
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("cannot run the repair command {command:?}: {message}")]
    Runner {
        command: Vec<String>,
        message: String,
    },
}

/// One maintenance step, checked by the slot (fence, generation, busy).
pub struct Maintain {
    pub order: MaintenanceOrder,
}

impl<E: Engine> crate::steps::Action<E> for Maintain {
    async fn run(self, run: Run<E>) -> OpRecord {
        let step = self.order.step;
        run.set_label("maintenance");
        let (ending, _) = run
            .steps(async {
                let outcome = run.step(step.as_str(), self.step(&run)).await?;
                run.rec().outcome = Some(outcome);
                Ok(())
            })
            .await;
        let (state, reason) = match ending {
            Ending::Done => (OpState::Succeeded, None),
            Ending::Failed(e) => (OpState::Failed, Some(e.cause.to_string())),
            Ending::Cancelled => (
                OpState::Cancelled,
                Some(format!("step `{step}` was cancelled")),
            ),
            Ending::Interrupted => (
                OpState::Interrupted,
                Some(format!("the agent was stopped during step `{step}`")),
            ),
        };
        let fenced = fence::fence(&run.cfg.home).is_some();
        let facts = run.engine.facts().await;
        if let Some(o) = run.rec().outcome.as_mut() {
            o.fenced = fenced;
            o.facts = Some(facts);
        }
        if let Some(f) = fence::fence(&run.cfg.home) {
            run.rec().notes.push(format!(
                "the fence of window {} is held since {}",
                f.window, f.since
            ));
        }
        let rec = run.finish(state, reason);
        match &rec.reason {
            None => {
                info!(message = %rec.outcome.as_ref().map(|o| o.message.as_str()).unwrap_or(""), "maintenance step done")
            }
            Some(e) => warn!(error = %e, "maintenance step failed"),
        }
        rec
    }
}

impl Maintain {
    async fn step<E: Engine>(&self, run: &Run<E>) -> Result<StepOutcome, MaintainError> {
        let (cfg, engine) = (&run.cfg, &run.engine);
        let window = self.order.window_id.as_str();
        let targets = &self.order.targets;
        let out_file = cfg.home.join("maintenance.out");
        let mut out = StepOutcome::default();
        match self.order.step {
            MaintenanceStep::FenceStop => {
                fence::hold(&cfg.home, window)?;
                engine.stop().await?;
                out.message = format!("fenced by {window} and stopped");
            }
            MaintenanceStep::Isolate => {
                engine.isolate().await?;
                out.message =
                    "out of client service: no TCP, its socket moved to the agent's private directory"
                        .into();
            }
            MaintenanceStep::Triage | MaintenanceStep::Check => {
                let c = engine.check_live(targets, &out_file).await?;
                out.message = format!(
                    "{} relation(s) checked on the live server: {} finding(s){}",
                    c.relations.len(),
                    c.findings.len(),
                    if c.unresolved.is_empty() {
                        String::new()
                    } else {
                        format!(", {} not checkable", c.unresolved.len())
                    }
                );
                out.findings = c.findings;
                out.relations = c
                    .relations
                    .into_iter()
                    .map(|r| RelationSize {
                        database: r.database,
                        relation: r.relation,
                        is_index: r.is_index,
                        bytes: r.bytes,
                    })
                    .collect();
                out.unresolved = c.unresolved;
            }
            MaintenanceStep::Reindex => {
                let mut done = Vec::new();
                for t in targets.iter().filter(|t| t.kind == "index") {
                    engine.reindex(&t.database, &t.relation).await?;
                    done.push(format!("{}.{}", t.database, t.relation));
                }
                out.message = format!("REINDEX INDEX {}", done.join(", "));
            }
            MaintenanceStep::ExecRepair => {
                out.message = self.exec_repair(run, window, targets).await?;
            }
            MaintenanceStep::Serve => {
                engine.serve().await?;
                out.message = "back in client service".into();
            }
            MaintenanceStep::Reseed => {
                fence::hold(&cfg.home, window)?;
                engine.stop().await?;
                let data = engine.data_dir().to_owned();
                let name = data
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let aside = data.with_file_name(format!("{name}.tandem-reseed-{window}"));
                engine.reseed(&aside).await?;
                out.message = format!(
                    "re-seeded from the primary; the old data directory is kept at {}",
                    aside.display()
                );
            }
            MaintenanceStep::UnfenceStart => {
                engine.start().await?;
                fence::release(&cfg.home)?;
                out.message = "fence released, server started".into();
            }
            MaintenanceStep::Unfence => {
                fence::release(&cfg.home)?;
                out.message = "fence released".into();
            }
        }
        Ok(out)
    }

    /// Run the configured repair command as the database's OS user, with
    /// the findings in a JSON file named by `TANDEM_FINDINGS`.
    async fn exec_repair<E: Engine>(
        &self,
        run: &Run<E>,
        window: &str,
        targets: &[Finding],
    ) -> Result<String, MaintainError> {
        let cfg = &run.cfg;
        let m = &cfg.maintenance;
        let Some(command) = m.repair_command.clone().filter(|c| !c.is_empty()) else {
            return Err(MaintainError::NoRepairCommand);
        };
        let findings_file = cfg.home.join(format!("repair-{window}.json"));
        std::fs::write(
            &findings_file,
            serde_json::to_vec_pretty(targets).unwrap_or_default(),
        )
        .map_err(|source| MaintainError::Io {
            op: "write",
            path: findings_file.clone(),
            source,
        })?;
        let runner = crate::runner::Runner::for_os_user(cfg.os_user()).map_err(|e| {
            MaintainError::Runner {
                command: command.clone(),
                message: e.to_string(),
            }
        })?;
        runner
            .prepare_file(&findings_file)
            .map_err(|source| MaintainError::Io {
                op: "chown",
                path: findings_file.clone(),
                source,
            })?;
        let mut cmd = runner.command(&command[0]);
        cmd.args(&command[1..])
            .env("TANDEM_WINDOW", window)
            .env("TANDEM_SET", &cfg.set)
            .env("TANDEM_MEMBER", cfg.member())
            .env("TANDEM_FINDINGS", &findings_file);
        if let Some(pg) = cfg.pg() {
            cmd.env("PGDATA", &pg.data_dir)
                .env("PGHOST", &pg.socket_dir)
                .env("PGPORT", pg.port.to_string())
                .env("PGUSER", &pg.user);
        }
        let o = runner
            .output(cmd, m.repair_timeout)
            .await
            .map_err(|e| MaintainError::Runner {
                command: command.clone(),
                message: e.to_string(),
            })?;
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
