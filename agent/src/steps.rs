//! The one step runner every agent operation runs on.
//!
//! A [`Run`] holds the operation's journal record and its progress channel.
//! Each step ([`Run::step`]) is named, journaled before it starts, a span
//! (`<kind> <step>`), a timing in the record and in the metrics. What a step
//! changes that a failure must put back is recorded with [`Run::did`] *before*
//! the change is made (an [`Undo`] in the journal), and dropped with
//! [`Run::undone`] once the action itself put it back. [`Run::steps`] runs an
//! action's steps against the operation's cancellation token; when they fail
//! or are cancelled, the recorded undos run last first. An agent restarted
//! after a crash finds the same undos in the journal and runs them with
//! [`undo_recorded`], so SIGKILL leaves nothing changed that a Cancel would
//! have put back.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tandem_proto::model::{Role, ServerState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::files;
use crate::journal::{Journal, OpRecord, OpState, StepTime, Undo};

/// Progress of one operation, as `Watch` streams it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub record: OpRecord,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: String,
}

/// A piece of agent work: it declares its steps on the [`Run`] and returns
/// the final record ([`Run::finish`]). The slot (`ops`) runs any action
/// without knowing it.
pub trait Action<E: Engine>: Send + 'static {
    fn run(self, run: Run<E>) -> impl std::future::Future<Output = OpRecord> + Send;
}

/// One copy serving both purposes (SPEC T9): until a copy-making
/// operation reaches the point where its copy is packed or opened for the
/// test (`open` false from then on), an order with `join=true` for the
/// other purpose joins it instead of making a second copy: a test joins an
/// archive copy (the test runs on that copy, after its archive file is
/// written), an archive copy or file joins a test (its copy is packed
/// before the test opens it).
#[derive(Debug, Default)]
pub struct Join {
    pub open: bool,
    /// A test joined a copy-only operation.
    pub test: bool,
    /// An archive file was asked for by a joined order.
    pub pack: bool,
    /// What joined, for the operation's notes.
    pub notes: Vec<String>,
}

/// A step that failed, and why: the cause and each of its sources that
/// its message does not already say ("cannot create FILE: No space left
/// on device").
#[derive(Debug, thiserror::Error)]
pub struct StepFailed {
    pub step: &'static str,
    pub cause: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.cause.to_string();
        let mut source = self.cause.source();
        while let Some(e) = source {
            let more = e.to_string();
            if !said.contains(&more) {
                said.push_str(": ");
                said.push_str(&more);
            }
            source = e.source();
        }
        write!(f, "step `{}` failed: {said}", self.step)
    }
}

/// How an action's steps ended.
#[derive(Debug)]
pub enum Ending {
    Done,
    Failed(StepFailed),
    /// Cancelled by the controller.
    Cancelled,
    /// Stopped by the agent's shutdown.
    Interrupted,
}

/// One running operation: its record, progress and undos.
pub struct Run<E> {
    pub cfg: Arc<AgentConfig>,
    pub engine: Arc<E>,
    pub cancel: CancellationToken,
    /// Cancelled when the agent stops: tells an interruption from a Cancel.
    pub shutting_down: CancellationToken,
    journal: Arc<Journal>,
    progress: watch::Sender<Progress>,
    rec: Mutex<OpRecord>,
    /// The kind in span and metric names (`testdb`, `copy`, `restore`, ...).
    label: Mutex<&'static str>,
    /// Set once the action passed its point of no return (a restore's R9):
    /// the undos were dropped on purpose.
    no_way_back: Mutex<bool>,
    /// Orders that joined this one (SPEC T9), closed once the copy is made.
    pub join: Arc<Mutex<Join>>,
}

impl<E: Engine> Run<E> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<AgentConfig>,
        engine: Arc<E>,
        journal: Arc<Journal>,
        progress: watch::Sender<Progress>,
        cancel: CancellationToken,
        shutting_down: CancellationToken,
        rec: OpRecord,
        join: Arc<Mutex<Join>>,
    ) -> Run<E> {
        let label = rec.kind.as_str();
        Run {
            cfg,
            engine,
            cancel,
            shutting_down,
            journal,
            progress,
            rec: Mutex::new(rec),
            label: Mutex::new(label),
            no_way_back: Mutex::new(false),
            join,
        }
    }

    pub fn rec(&self) -> MutexGuard<'_, OpRecord> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Name spans and metrics by another kind (a backup without a test is a copy).
    pub fn set_label(&self, label: &'static str) {
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
    }

    fn label(&self) -> &'static str {
        *self.label.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the record to the journal and to the watchers.
    pub fn publish(&self, message: &str) {
        let rec = self.rec().clone();
        if let Err(e) = self.journal.write(&rec) {
            error!(error = %e, "cannot write the journal");
        }
        self.progress.send_modify(|p| {
            p.record = rec;
            p.message = message.to_owned();
        });
    }

    /// A line for the person who asked (kept in the record's notes).
    pub fn note(&self, line: String) {
        info!(note = %line, "operation note");
        self.rec().notes.push(line.clone());
        self.publish(&line);
    }

    /// A progress callback for bytes done, for blocking work.
    pub fn bytes_progress(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let tx = self.progress.clone();
        move |n| tx.send_modify(|p| p.bytes_done = n)
    }

    /// The bytes the next progress counts up to (a fetch: the file's
    /// size; an unpack: the unpacked size).
    pub fn set_bytes_total(&self, n: u64) {
        self.progress.send_modify(|p| {
            p.bytes_total = n;
            p.bytes_done = 0;
        });
    }

    /// Record `undo` before making the change it puts back.
    pub fn did(&self, undo: Undo) {
        self.rec().undo.push(undo);
        self.publish("");
    }

    /// The action put `undo`'s change back itself.
    pub fn undone(&self, undo: &Undo) {
        let mut r = self.rec();
        if let Some(i) = r.undo.iter().rposition(|u| u == undo) {
            r.undo.remove(i);
        }
        drop(r);
        self.publish("");
    }

    /// Past the point of no return: nothing is put back any more.
    pub fn no_way_back(&self) {
        self.rec().undo.clear();
        *self.no_way_back.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.publish("");
    }

    pub fn passed_no_way_back(&self) -> bool {
        *self.no_way_back.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run one named step: journal, progress, span, timing.
    pub async fn step<T, Er>(
        &self,
        name: &'static str,
        fut: impl std::future::Future<Output = Result<T, Er>>,
    ) -> Result<T, StepFailed>
    where
        Er: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.rec().step = name.to_owned();
        self.publish(&format!("step {name}"));
        let t0 = Instant::now();
        let label = self.label();
        // Step-specific fields are recorded by the step itself
        // (`Span::current().record(...)`).
        let span = info_span!(
            "step",
            otel.name = %format_args!("{label} {name}"),
            step = name,
            set = %self.cfg.set,
            member = %self.cfg.member(),
            operation.id = %self.rec().id,
            bytes = tracing::field::Empty,
            bytes_per_second = tracing::field::Empty,
            lsn = tracing::field::Empty,
            findings = tracing::field::Empty,
        );
        let r = fut.instrument(span).await;
        self.pause_point(name).await;
        self.hold_point(name).await;
        let r = match r {
            Ok(_) if fail_point(name) => {
                warn!(
                    step = name,
                    "failing the step for a test (TANDEM_TEST_FAIL_AFTER_STEP)"
                );
                Err(StepFailed {
                    step: name,
                    cause: format!(
                        "failed for a test after its work (TANDEM_TEST_FAIL_AFTER_STEP={name})"
                    )
                    .into(),
                })
            }
            r => r.map_err(|e| StepFailed {
                step: name,
                cause: e.into(),
            }),
        };
        let seconds = t0.elapsed().as_secs_f64();
        crate::metrics::step(label, name, seconds);
        self.rec().steps.push(StepTime {
            step: name.to_owned(),
            seconds,
        });
        match &r {
            Ok(_) => info!(step = name, seconds, "step done"),
            Err(_) => warn!(step = name, seconds, "step failed"),
        }
        r
    }

    /// A crash test's pause point: with `TANDEM_TEST_PAUSE_AFTER_STEP=<step>`
    /// in the agent's environment, the operation stops after that step's
    /// work, before its result is recorded, writes `<home>/paused-after-<step>`
    /// and waits to be killed (or cancelled). Only the end-to-end tests set
    /// it, to SIGKILL an agent at a chosen step; nothing else reads it.
    async fn pause_point(&self, name: &str) {
        if std::env::var("TANDEM_TEST_PAUSE_AFTER_STEP").is_ok_and(|s| s == name) {
            let marker = self.cfg.home.join(format!("paused-after-{name}"));
            if std::fs::write(&marker, b"").is_ok() {
                warn!(
                    step = name,
                    "paused for a crash test (TANDEM_TEST_PAUSE_AFTER_STEP)"
                );
                self.cancel.cancelled().await;
            }
        }
    }

    /// A test's hold point: with `TANDEM_TEST_HOLD_AFTER_STEP=<step>` in the
    /// agent's environment, the operation waits after that step's work
    /// until the test removes `<home>/held-after-<step>` (at most ten
    /// minutes), then goes on. Only the end-to-end tests set it, to act on
    /// the servers at a chosen point of an operation (force restartpoints
    /// during an online copy); nothing else reads it.
    async fn hold_point(&self, name: &str) {
        if std::env::var("TANDEM_TEST_HOLD_AFTER_STEP").is_ok_and(|s| s == name) {
            let marker = self.cfg.home.join(format!("held-after-{name}"));
            if std::fs::write(&marker, b"").is_ok() {
                warn!(step = name, "held for a test (TANDEM_TEST_HOLD_AFTER_STEP)");
                let released = async {
                    while marker.exists() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(600), released).await;
            }
        }
    }

    /// Run an action's steps against the cancellation token; on failure or
    /// cancel, the recorded undos run last first. The notes say what was
    /// put back.
    pub async fn steps(
        &self,
        steps: impl std::future::Future<Output = Result<(), StepFailed>>,
    ) -> (Ending, Vec<String>) {
        // Cancel-safe by design: dropping `steps` kills the running tool
        // (kill_on_drop); the undos put back what the steps changed.
        let ending = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => if self.shutting_down.is_cancelled() {
                Ending::Interrupted
            } else {
                Ending::Cancelled
            },
            r = steps => match r {
                Ok(()) => Ending::Done,
                Err(e) => Ending::Failed(e),
            },
        };
        if matches!(ending, Ending::Done) {
            return (ending, vec![]);
        }
        let step = self.rec().step.clone();
        let why = match &ending {
            Ending::Interrupted => format!("the agent was stopped during step `{step}`"),
            Ending::Cancelled => format!("the operation was cancelled during step `{step}`"),
            _ => format!("step `{step}` failed"),
        };
        let undos = std::mem::take(&mut self.rec().undo);
        let (notes, downtime) = run_undos(&self.cfg, &*self.engine, &undos, &why).await;
        if downtime.is_some() {
            self.rec().standby_downtime_seconds = downtime;
        }
        // The record names the step that ended it, not the clean-up.
        self.rec().step = step;
        (ending, notes)
    }

    /// End the operation: state and reason into the record, the journal, the
    /// watchers and the operation's span; the final record.
    pub fn finish(&self, state: OpState, reason: Option<String>) -> OpRecord {
        let rec = {
            let mut r = self.rec();
            r.state = state;
            r.reason = reason;
            r.finished_at = Some(Timestamp::now());
            r.undo.clear();
            r.clone()
        };
        // The operation's span (see `ops::Operations::launch`).
        let span = tracing::Span::current();
        span.record("result", crate::metrics::result_label(rec.state));
        span.record("findings", rec.findings.len() as u64);
        span.record("bytes", rec.bytes_copied);
        if let Some(lsn) = &rec.tested_lsn {
            span.record("lsn", lsn.as_str());
        }
        if let Err(e) = self.journal.write(&rec) {
            error!(error = %e, "cannot write the journal");
        }
        self.progress.send_modify(|p| {
            p.record = rec.clone();
            p.message = "finished".into();
        });
        rec
    }

    /// Wait until the standby streams again (bounded by
    /// `testdb.streaming_timeout`).
    pub async fn wait_streaming(&self) -> Result<(), NotStreaming> {
        wait_streaming(&self.cfg, &*self.engine).await
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the standby was started again but is not streaming after {0:?}; check its log and the primary"
)]
pub struct NotStreaming(pub Duration);

async fn wait_streaming<E: Engine>(cfg: &AgentConfig, engine: &E) -> Result<(), NotStreaming> {
    let limit = cfg.testdb.streaming_timeout;
    let t0 = Instant::now();
    loop {
        let f = engine.facts().await;
        if f.role == Role::Standby && f.fully_received {
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(NotStreaming(limit));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run one recorded undo; a note for the record, and the standby's
/// downtime when it started the standby again.
async fn run_undo<E: Engine>(
    cfg: &AgentConfig,
    engine: &E,
    undo: &Undo,
    why: &str,
) -> (String, Option<f64>) {
    let data_dir = engine.data_dir().to_owned();
    let note = match undo {
        Undo::StartStandby { since } | Undo::StartServer { since } => {
            let standby = matches!(undo, Undo::StartStandby { .. });
            let down = || (Timestamp::now() - *since).total(jiff::Unit::Second).ok();
            if engine.facts().await.server_state == ServerState::Running {
                let what = if standby { "the standby" } else { "the server" };
                return (format!("{what} is running"), None);
            }
            warn!("bringing the server back");
            match engine.start().await {
                Err(e) => {
                    error!(error = %e, "the server could not be started again; start it by hand");
                    format!("the server does not start again: {e}; start it by hand")
                }
                Ok(()) if !standby => "the server was started again".to_owned(),
                Ok(()) => match wait_streaming(cfg, engine).await {
                    Ok(()) => {
                        info!(downtime_seconds = down(), "standby running again");
                        return (
                            "the standby was started again and streams".to_owned(),
                            down(),
                        );
                    }
                    Err(e) => return (e.to_string(), down()),
                },
            }
        }
        Undo::EndBackup => match engine.end_backup_left_behind().await {
            Ok(note) => note,
            Err(e) => {
                error!(error = %e, "cannot end the online backup on the live database");
                format!(
                    "the online backup on the live database could not be ended: {e}; end it by hand"
                )
            }
        },
        Undo::MarkCopyUnusable => {
            files::mark_copy_unusable(cfg, why);
            "the copy is marked unusable".to_owned()
        }
        Undo::KillPrivate { copy } => {
            engine.kill_private(copy);
            // The next private instance needs the lock file free: wait
            // (bounded) until the killed postmaster is gone.
            let t0 = Instant::now();
            while crate::engine::postmaster::runs(copy) && t0.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if crate::engine::postmaster::runs(copy) {
                format!(
                    "the private instance on {} does not go away; kill it by hand",
                    copy.display()
                )
            } else {
                "no private instance runs on the copy".to_owned()
            }
        }
        Undo::RemoveFile { path } => match std::fs::remove_file(path) {
            Ok(()) => format!("{} was removed", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("cannot remove {}: {e}", path.display()),
        },
        Undo::CloseIsolated => {
            if let Err(e) = engine.close_isolated().await {
                warn!(error = %e, "cannot stop the isolated server; killing it");
                crate::engine::postmaster::kill_postmaster(&data_dir);
            }
            String::new()
        }
        Undo::MoveRestoredAside => {
            if std::fs::symlink_metadata(&data_dir).is_err() {
                String::new()
            } else {
                let failed = crate::engine::dated_beside(&data_dir, "failed-restore");
                match std::fs::rename(&data_dir, &failed) {
                    Ok(()) => format!(
                        "the restored database ({}) was moved to {}",
                        data_dir.display(),
                        failed.display()
                    ),
                    Err(e) => format!(
                        "cannot move the restored database {} aside: {e}",
                        data_dir.display()
                    ),
                }
            }
        }
        // The move aside may not have happened (it failed, or there was no
        // data directory): then there is nothing to put back.
        Undo::PutBack { saved } if std::fs::symlink_metadata(saved).is_err() => String::new(),
        Undo::PutBack { saved } => {
            let mut said = match std::fs::rename(saved, &data_dir) {
                Ok(()) => format!("the saved database {} was put back", saved.display()),
                Err(e) => format!(
                    "cannot put the saved data directory {} back: {e}; move it to {} by hand",
                    saved.display(),
                    data_dir.display()
                ),
            };
            let _ = engine.remove_recovery_settings(&data_dir);
            match engine.start().await {
                Ok(()) => said.push_str(" and started"),
                Err(e) => said.push_str(&format!(" but it does not start: {e}")),
            }
            said
        }
    };
    (note, None)
}

/// Run `undos` last first; the notes say what was put back, with the
/// standby's downtime when one started it again.
async fn run_undos<E: Engine>(
    cfg: &AgentConfig,
    engine: &E,
    undos: &[Undo],
    why: &str,
) -> (Vec<String>, Option<f64>) {
    let mut notes = Vec::new();
    let mut downtime = None;
    for u in undos.iter().rev() {
        let (note, down) = run_undo(cfg, engine, u, why).await;
        downtime = down.or(downtime);
        if !note.is_empty() {
            notes.push(note);
        }
    }
    (notes, downtime)
}

/// After a crash: run the undos an interrupted operation recorded, last
/// first; the notes say what was put back.
pub async fn undo_recorded<E: Engine>(
    cfg: &AgentConfig,
    engine: &E,
    rec: &mut OpRecord,
) -> Vec<String> {
    let why = format!(
        "the agent stopped (crash or kill) during step `{}`",
        rec.step
    );
    let undos = std::mem::take(&mut rec.undo);
    let (notes, downtime) = run_undos(cfg, engine, &undos, &why).await;
    if downtime.is_some() {
        rec.standby_downtime_seconds = downtime;
    }
    notes
}

/// An undo test's failure point: with `TANDEM_TEST_FAIL_AFTER_STEP=<step>`
/// in the agent's environment, that step fails after its work is done (as a
/// tool that failed half-way), so the runner puts back what the operation
/// recorded so far. Only the end-to-end tests set it; nothing else reads it.
fn fail_point(name: &str) -> bool {
    std::env::var("TANDEM_TEST_FAIL_AFTER_STEP").is_ok_and(|s| s == name)
}

#[cfg(test)]
mod step_failed_tests {
    use super::StepFailed;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create /a/b")]
    struct Create(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create /a/b: {0}")]
    struct Says(#[source] std::io::Error);

    fn full() -> std::io::Error {
        std::io::Error::from_raw_os_error(28)
    }

    #[test]
    fn a_failed_step_says_its_causes_once() {
        let e = StepFailed {
            step: "copy",
            cause: Box::new(Create(full())),
        };
        assert_eq!(
            e.to_string(),
            format!("step `copy` failed: cannot create /a/b: {}", full())
        );
        assert!(e.to_string().contains("No space left on device"));
        let e = StepFailed {
            step: "copy",
            cause: Box::new(Says(full())),
        };
        assert_eq!(
            e.to_string(),
            format!("step `copy` failed: cannot create /a/b: {}", full())
        );
    }
}
