//! The one slot an instance has for a running operation (DESIGN rule 3).
//!
//! [`Operations`] knows orders, not actions. [`Operations::admit`] checks
//! what holds for every order (the agent is not stopping, the fence, the
//! set generation, a repeated request id, a join, the slot being free);
//! the caller then checks the action's own preconditions and hands the
//! action to [`Operations::launch`], which writes the journal record, takes
//! the slot, and runs the action on a [`steps::Run`] in a task of its own
//! (STYLE 6: long work never runs inside a gRPC handler). Shutdown cancels
//! the operation's token and [`Operations::shutdown`] waits until its undos
//! ran. At start, [`Operations::open`] marks what a crashed agent left
//! running as interrupted and runs its recorded undos before the slot
//! takes any order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tandem_proto::order::{Order, StartOrder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::events::Events;
use crate::fence;
use crate::files;
use crate::journal::{Journal, JournalError, OpKind, OpRecord, OpState};
use crate::steps::{Action, Join, Progress, Run};

/// Why the slot takes no order now (checked before anything is written).
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "operation {running} is running on this instance; one operation at a time (wait for it, or cancel it)"
    )]
    Busy { running: String },
    #[error(
        "stale order: set generation {got} is older than {seen}, already accepted; the controller's view of the set is out of date"
    )]
    Stale { got: u64, seen: u64 },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(
        "this server is fenced by maintenance window {window} since {since}: no operation starts until the window releases it"
    )]
    Fenced { window: String, since: String },
    #[error(
        "this agent is fenced by window {held} since {since}; window {asked} may not act on it (close or abort {held} first)"
    )]
    FencedByOther {
        held: String,
        since: String,
        asked: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another tandem-agent holds {path}: one agent per instance and home (field `home`)")]
    Locked { path: PathBuf },
    #[error("cannot open the lock file {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

struct Current {
    id: String,
    cancel: CancellationToken,
    /// What a copy-making operation may still take on (SPEC T9).
    join: Arc<Mutex<Join>>,
}

pub struct Operations<E> {
    /// An exclusive lock on `<home>/agent.lock` for the agent's lifetime: a
    /// second agent on the same home (so the same instance) cannot start; the
    /// kernel drops it when the process dies, so a crash never leaves it stuck.
    _home_lock: nix::fcntl::Flock<std::fs::File>,
    cfg: Arc<AgentConfig>,
    engine: Arc<E>,
    journal: Arc<Journal>,
    events: Events,
    current: Mutex<Option<Current>>,
    progress: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

fn new_id(kind: OpKind) -> String {
    let now = Timestamp::now();
    format!(
        "{}-{}-{:04x}",
        kind.as_str(),
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32 & 0xffff
    )
}

/// The journal's kind of an order.
pub fn kind_of(order: &Order) -> OpKind {
    match order {
        Order::Testdb { .. } => OpKind::Testdb,
        Order::Copy { .. } => OpKind::Copy,
        Order::Backup { .. } => OpKind::Backup,
        Order::Restore(_) => OpKind::Restore,
        Order::Maintenance(_) => OpKind::Maintenance,
    }
}

/// Whether a journal record answers a repeated order: a maintenance step
/// that did not succeed is run again (every step is idempotent, and a
/// window asks again after a failure or a crash); anything else answers
/// with the operation it started.
fn answers(rec: &OpRecord) -> bool {
    rec.kind != OpKind::Maintenance || matches!(rec.state, OpState::Running | OpState::Succeeded)
}

const RECOVERY: &str = "recovery";

impl<E: Engine> Operations<E> {
    /// Open the journal, mark what a previous run left running as
    /// interrupted, and put back what it changed (its recorded undos) in a
    /// task that holds the slot until it is done.
    pub fn open(
        cfg: Arc<AgentConfig>,
        engine: Arc<E>,
        events: Events,
        shutdown: CancellationToken,
    ) -> Result<Arc<Operations<E>>, OpenError> {
        let lock_path = cfg.home.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OpenError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        let home_lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| OpenError::Locked { path: lock_path })?;
        let journal = Journal::open(&cfg.home)?;
        let interrupted = journal.recover()?;
        let ops = Arc::new(Operations {
            _home_lock: home_lock,
            cfg,
            engine,
            journal: Arc::new(journal),
            events,
            current: Mutex::new(None),
            progress: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
        });
        if !interrupted.is_empty() {
            *ops.lock_current() = Some(Current {
                id: RECOVERY.into(),
                cancel: CancellationToken::new(),
                join: Arc::default(),
            });
            let this = ops.clone();
            ops.tasks.spawn(async move {
                for rec in interrupted {
                    this.recover(rec).await;
                }
                *this.lock_current() = None;
            });
        }
        Ok(ops)
    }

    /// Put back what an interrupted operation left changed, from its
    /// journal record, and raise its event.
    async fn recover(&self, mut rec: OpRecord) {
        warn!(operation = %rec.id, step = %rec.step, undos = rec.undo.len(), "operation was interrupted by an agent stop; putting back what it changed");
        let notes = crate::steps::undo_recorded(&self.cfg, &*self.engine, &mut rec).await;
        if rec.kind.copies() {
            if !files::unusable_marker(&self.cfg).exists() {
                files::mark_copy_unusable(
                    &self.cfg,
                    &format!("operation {} was interrupted", rec.id),
                );
            }
            files::write_state_file(&self.cfg, &rec);
        }
        if !notes.is_empty() {
            let reason = rec.reason.take().unwrap_or_default();
            rec.reason = Some(format!("{reason}; {}", notes.join("; ")));
            rec.notes.extend(notes);
        }
        if let Err(e) = self.journal.write(&rec) {
            warn!(error = %e, "cannot write the journal");
        }
        info!(operation = %rec.id, reason = ?rec.reason, "interrupted operation recovered");
        self.events.operation_finished(&rec).await;
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn config(&self) -> &Arc<AgentConfig> {
        &self.cfg
    }

    pub fn engine(&self) -> &Arc<E> {
        &self.engine
    }

    /// The id of the running operation, if any.
    pub fn running(&self) -> Option<String> {
        self.lock_current().as_ref().map(|c| c.id.clone())
    }

    /// What holds for every order. `Ok(Some(id))`: the order is answered by
    /// an operation already started (a repeated request id, or a join);
    /// `Ok(None)`: the action may check its own preconditions and launch.
    pub fn admit(&self, o: &StartOrder) -> Result<Option<String>, AdmitError> {
        if self.shutdown.is_cancelled() {
            return Err(AdmitError::ShuttingDown);
        }
        if let Some(f) = fence::fence(&self.cfg.home) {
            match &o.order {
                Order::Maintenance(m) if m.window_id == f.window => {}
                Order::Maintenance(m) => {
                    return Err(AdmitError::FencedByOther {
                        held: f.window,
                        since: f.since,
                        asked: m.window_id.clone(),
                    });
                }
                _ => {
                    return Err(AdmitError::Fenced {
                        window: f.window,
                        since: f.since,
                    });
                }
            }
        }
        let seen = self.journal.generation()?;
        if o.set_generation < seen {
            return Err(AdmitError::Stale {
                got: o.set_generation,
                seen,
            });
        }
        if !o.request_id.is_empty()
            && let Some(known) = self
                .journal
                .list()?
                .into_iter()
                .find(|r| r.request_id == o.request_id)
            && answers(&known)
        {
            info!(operation = %known.id, request = %o.request_id, "repeated request: returning the operation it started");
            return Ok(Some(known.id));
        }
        if o.join
            && let Some(id) = self.join(o)
        {
            return Ok(Some(id));
        }
        if let Some(running) = self.running() {
            return Err(AdmitError::Busy { running });
        }
        Ok(None)
    }

    /// Record the order in the journal, take the slot and run `action` in
    /// its own task; the operation's id.
    pub fn launch<A: Action<E>>(
        self: &Arc<Self>,
        o: &StartOrder,
        bytes_total: u64,
        action: A,
    ) -> Result<String, AdmitError> {
        let kind = kind_of(&o.order);
        let id = new_id(kind);
        let cancel = self.shutdown.child_token();
        let join = Arc::new(Mutex::new(Join {
            open: o.order.makes_copy(),
            ..Join::default()
        }));
        {
            let mut cur = self.lock_current();
            if let Some(c) = cur.as_ref() {
                return Err(AdmitError::Busy {
                    running: c.id.clone(),
                });
            }
            *cur = Some(Current {
                id: id.clone(),
                cancel: cancel.clone(),
                join: join.clone(),
            });
        }
        let seen = self.journal.generation();
        let recorded = seen.and_then(|seen| {
            if o.set_generation > seen {
                self.journal.set_generation(o.set_generation)?;
            }
            let mut record = OpRecord::new(id.clone(), kind, o.set_generation);
            record.request_id = o.request_id.clone();
            self.journal.write(&record)?;
            Ok(record)
        });
        let record = match recorded {
            Ok(r) => r,
            Err(e) => {
                *self.lock_current() = None;
                return Err(e.into());
            }
        };
        let (tx, rx) = watch::channel(Progress {
            record: record.clone(),
            bytes_done: 0,
            bytes_total,
            message: String::new(),
        });
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), rx);
        let span = info_span!(
            "operation",
            otel.name = %format_args!("operation {}", kind.as_str()),
            operation.id = %id,
            kind = kind.as_str(),
            set = %self.cfg.set,
            member = %self.cfg.member(),
            db.system = "postgresql",
            result = tracing::field::Empty,
            lsn = tracing::field::Empty,
            findings = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        info!(operation = %id, ?kind, "operation started");
        crate::metrics::operation_started();
        let run = Run::new(
            self.cfg.clone(),
            self.engine.clone(),
            self.journal.clone(),
            tx,
            cancel,
            self.shutdown.clone(),
            record,
            join,
        );
        let this = self.clone();
        self.tasks.spawn(
            async move {
                let rec = action.run(run).await;
                crate::metrics::operation_finished(&rec);
                this.events.operation_finished(&rec).await;
                *this.lock_current() = None;
            }
            .instrument(span),
        );
        Ok(id)
    }

    /// Join the running copy-making operation, when it can still serve this
    /// order too (SPEC T9); its id.
    fn join(&self, o: &StartOrder) -> Option<String> {
        let (test, pack) = match o.order {
            Order::Copy { .. } => (false, false),
            Order::Testdb { .. } => (true, false),
            Order::Backup { untested, .. } => (!untested, true),
            _ => return None,
        };
        let cur = self.lock_current();
        let c = cur.as_ref()?;
        let mut j = c.join.lock().unwrap_or_else(|p| p.into_inner());
        if !j.open {
            return None;
        }
        j.test |= test;
        j.pack |= pack;
        j.notes.push(format!(
            "order {} ({}{}) joined this operation: one copy serves both",
            o.request_id,
            if test { "a test" } else { "an archive copy" },
            if pack { " with its archive file" } else { "" }
        ));
        info!(operation = %c.id, request = %o.request_id, "order joined the running operation");
        Some(c.id.clone())
    }

    /// A receiver of the operation's progress, or its journal record when it
    /// finished before this agent started.
    pub fn watch(&self, id: &str) -> Result<Option<Watched>, JournalError> {
        if let Some(rx) = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(Watched::Live(rx.clone())));
        }
        Ok(self
            .journal
            .read(id)?
            .map(|r| Watched::Finished(Box::new(r))))
    }

    /// Ask the running operation `id` to stop. Returns false when it is not running.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock_current().as_ref() {
            Some(c) if c.id == id => {
                c.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Wait for running operations to finish their clean-up (the shutdown
    /// token must already be cancelled).
    pub async fn shutdown(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

pub enum Watched {
    Live(watch::Receiver<Progress>),
    Finished(Box<OpRecord>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_maintenance_step_runs_again_unless_it_runs_or_succeeded() {
        let mut rec = OpRecord::new("m".into(), OpKind::Maintenance, 1);
        for (state, answered) in [
            (OpState::Running, true),
            (OpState::Succeeded, true),
            (OpState::Failed, false),
            (OpState::Interrupted, false),
            (OpState::Cancelled, false),
        ] {
            rec.state = state;
            assert_eq!(answers(&rec), answered, "{state:?}");
        }
        let mut test = OpRecord::new("t".into(), OpKind::Testdb, 1);
        test.state = OpState::Failed;
        assert!(answers(&test), "a test asked again is the test it was");
    }
}
