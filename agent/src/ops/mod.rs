//! Long operations on the agent: start, watch, cancel, and what survives.
//!
//! [`Operations`] owns the one slot an instance has for a running operation
//! (DESIGN rule 3), the on-disk [`journal::Journal`], and a `watch` channel
//! per operation through which progress reaches `Watch` streams. `start`
//! checks the order (set generation, preconditions), writes the journal
//! record, spawns the action on a [`TaskTracker`] with its own cancellation
//! token and returns the id at once (STYLE 6). Agent shutdown cancels the
//! token and [`Operations::shutdown`] waits until the action has cleaned up
//! (standby restarted, journal written, event hook run).

pub mod journal;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::actions::restore::{self, RestoreError};
use crate::actions::testdb::{self, Preconditions, TestdbError};
use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::events::Events;
use journal::{Journal, JournalError, OpKind, OpRecord};

/// Progress of one operation, as `Watch` streams it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub record: OpRecord,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "operation {running} is running on this instance; one operation at a time (wait for it, or cancel it)"
    )]
    Busy { running: String },
    #[error(
        "stale order: set generation {got} is older than {seen}, already accepted; the controller's view of the set is out of date"
    )]
    Stale { got: u64, seen: u64 },
    #[error(transparent)]
    Refused(#[from] TestdbError),
    #[error(transparent)]
    RestoreRefused(#[from] RestoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(
        "this server is fenced by maintenance window {window} since {since}: no operation starts until the window releases it"
    )]
    Fenced { window: String, since: String },
    #[error(
        "this agent has no [backup] section in its agent.toml: add one with `dir` (see deploy/agent.example.toml)"
    )]
    NoBackupConfig,
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
    let k = match kind {
        OpKind::Copy => "copy",
        OpKind::Testdb => "testdb",
        OpKind::Backup => "backup",
        OpKind::Restore => "restore",
    };
    format!(
        "{k}-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32 & 0xffff
    )
}

impl<E: Engine> Operations<E> {
    /// Open the journal and mark what a previous run left running as interrupted.
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
        for rec in journal.recover()? {
            warn!(operation = %rec.id, step = %rec.step, "operation was interrupted by an agent stop; recorded as interrupted");
            if rec.kind == OpKind::Restore {
                warn!(operation = %rec.id, notes = ?rec.notes, "an interrupted restore: check the data directory; its notes say where the old one went");
                continue;
            }
            testdb::mark_copy_unusable(&cfg, &format!("operation {} was interrupted", rec.id));
            testdb::write_state_file(&cfg, &rec);
        }
        Ok(Arc::new(Operations {
            _home_lock: home_lock,
            cfg,
            engine,
            journal: Arc::new(journal),
            events,
            current: Mutex::new(None),
            progress: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
        }))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn config(&self) -> &Arc<AgentConfig> {
        &self.cfg
    }

    /// The id of the running operation, if any.
    pub fn running(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id.clone())
    }

    /// Validate, record and spawn an operation; returns its id.
    pub async fn start(
        self: &Arc<Self>,
        kind: OpKind,
        set_generation: u64,
        params: HashMap<String, String>,
    ) -> Result<String, StartError> {
        if self.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        if let Some(f) = crate::maintain::fence(&self.cfg.home) {
            return Err(StartError::Fenced {
                window: f.window,
                since: f.since,
            });
        }
        let seen = self.journal.generation()?;
        if set_generation < seen {
            return Err(StartError::Stale {
                got: set_generation,
                seen,
            });
        }
        let request_id = params.get("request_id").cloned().unwrap_or_default();
        if !request_id.is_empty()
            && let Some(known) = self
                .journal
                .list()?
                .into_iter()
                .find(|r| r.request_id == request_id)
        {
            info!(operation = %known.id, request = %request_id, "repeated request: returning the operation it started");
            return Ok(known.id);
        }
        if kind == OpKind::Backup && self.cfg.backup.is_none() {
            return Err(StartError::NoBackupConfig);
        }
        let untested = params.get("test").is_some_and(|v| v == "false");
        if params.get("join").is_some_and(|v| v == "true")
            && let Some(id) = self.join(kind, untested, &request_id)
        {
            return Ok(id);
        }
        if let Some(running) = self.running() {
            return Err(StartError::Busy { running });
        }
        // A restore is checked by its own rules (R1, R2, R11); everything
        // else copies a streaming standby (T8, R11).
        let (data_bytes, restore_plan) = if kind == OpKind::Restore {
            let plan = restore::Plan::check(&self.cfg, self.engine.data_dir(), &params)?;
            (plan.unpacked_bytes, Some(plan))
        } else {
            (
                Preconditions::check(&self.cfg, &*self.engine)
                    .await?
                    .data_bytes,
                None,
            )
        };
        let id = new_id(kind);
        let cancel = self.shutdown.child_token();
        let join = Arc::new(Mutex::new(Join {
            open: kind != OpKind::Restore,
            ..Join::default()
        }));
        {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cur.as_ref() {
                return Err(StartError::Busy {
                    running: c.id.clone(),
                });
            }
            *cur = Some(Current {
                id: id.clone(),
                cancel: cancel.clone(),
                join: join.clone(),
            });
        }
        if set_generation > seen {
            self.journal.set_generation(set_generation)?;
        }
        let mut record = OpRecord::new(id.clone(), kind, set_generation);
        record.request_id = request_id;
        if let Err(e) = self.journal.write(&record) {
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Err(e.into());
        }
        let (tx, rx) = watch::channel(Progress {
            record: record.clone(),
            bytes_done: 0,
            bytes_total: data_bytes,
            message: String::new(),
        });
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), rx);
        let this = self.clone();
        let span = info_span!(
            "operation",
            otel.name = %format_args!("operation {}", crate::metrics::kind_label(kind)),
            operation.id = %id,
            kind = crate::metrics::kind_label(kind),
            set = %self.cfg.set,
            member = %self.cfg.member(),
            role = "standby",
            db.system = "postgresql",
            result = tracing::field::Empty,
            lsn = tracing::field::Empty,
            findings = tracing::field::Empty,
            bytes = tracing::field::Empty,
        );
        info!(operation = %id, ?kind, "operation started");
        crate::metrics::operation_started();
        let skip_logical = params.get("skip_logical_read").is_some_and(|v| v == "true");
        if let Some(plan) = restore_plan {
            self.tasks.spawn(
                async move {
                    let job = restore::Job {
                        cfg: this.cfg.clone(),
                        engine: this.engine.clone(),
                        journal: this.journal.clone(),
                        progress: tx,
                        cancel,
                        plan,
                    };
                    let rec = restore::run(job, record).await;
                    this.events.operation_finished(&rec).await;
                    *this.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                .instrument(span),
            );
            return Ok(id);
        }
        self.tasks.spawn(
            async move {
                let job = testdb::Job {
                    cfg: this.cfg.clone(),
                    engine: this.engine.clone(),
                    journal: this.journal.clone(),
                    progress: tx,
                    cancel,
                    only_copy: kind == OpKind::Copy || (kind == OpKind::Backup && untested),
                    pack: kind == OpKind::Backup,
                    logical_read: this.cfg.testdb.logical_read && !skip_logical,
                    shutting_down: this.shutdown.clone(),
                    join,
                };
                let rec = testdb::run(job, record).await;
                crate::metrics::operation_finished(&rec);
                this.events.operation_finished(&rec).await;
                *this.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            .instrument(span),
        );
        Ok(id)
    }

    /// Join the running copy-making operation, when it can still serve this
    /// order too (SPEC T9); its id.
    fn join(&self, kind: OpKind, untested: bool, request: &str) -> Option<String> {
        if !matches!(kind, OpKind::Copy | OpKind::Testdb | OpKind::Backup) {
            return None;
        }
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let c = cur.as_ref()?;
        let mut j = c.join.lock().unwrap_or_else(|p| p.into_inner());
        if !j.open {
            return None;
        }
        let test = kind == OpKind::Testdb || (kind == OpKind::Backup && !untested);
        let pack = kind == OpKind::Backup;
        j.test |= test;
        j.pack |= pack;
        j.notes.push(format!(
            "order {request} ({}{}) joined this operation: one copy serves both (SPEC T9)",
            if test { "a test" } else { "an archive copy" },
            if pack { " with its archive file" } else { "" }
        ));
        info!(operation = %c.id, request, ?kind, "order joined the running operation");
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
        match self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
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

    pub fn state_file(&self) -> PathBuf {
        testdb::state_file_path(&self.cfg)
    }
}

pub enum Watched {
    Live(watch::Receiver<Progress>),
    Finished(Box<OpRecord>),
}
