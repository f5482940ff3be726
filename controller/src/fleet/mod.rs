//! Fleet runs: the controller's side of `tandemctl testdb` (SPEC C2, T7, C5).
//!
//! A run is a list of sets to test. Each set becomes a job in one fleet-wide
//! queue; the dispatcher starts queued jobs in order as the load limits allow
//! ([`admit`]: at most `fleet` tests at once, at most `per_host` on one host,
//! never two operations on members of one set) and tells the run why a job
//! waits ("waiting: fleet limit 4/4"). The limits can be changed while the
//! controller runs ([`Fleet::set_limits`], persisted).
//!
//! Every step of a job is written to the store before and after it happens
//! (`queued` -> `starting` -> `running` -> `done`, see `store::runs`). The
//! order to the agent carries a request id (`<run>/<set>`) that the agent
//! keeps in its journal and answers idempotently, so a controller killed at
//! any point carries each unfinished run on at start ([`Fleet::recover`]):
//! queued sets are queued again, started ones are found on their agents and
//! followed to their verdicts. A steady-state restart (no unfinished runs)
//! starts nothing.
//!
//! `WatchRun` replays a run's events from the start and then follows them,
//! so a late watcher misses nothing; a run that finished before a restart is
//! rebuilt from its stored verdicts. A run is a spawned task: a `tandemctl`
//! that goes away does not stop it (STYLE 6); [`Fleet::cancel_run`] does:
//! its queued sets end at once as could-not-run ("cancelled by ..."), and
//! the agents running its tests are asked to cancel them (they put the
//! standby back and end `cancelled`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tandem_proto::model::{AgentState, Role};
use tandem_proto::pb;
use tandem_proto::propagation::TraceParent;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::agents::AgentClients;
use crate::config::Limits;
use crate::inventory::Inventory;
use crate::orders::{AgentRef, Orders};
use crate::store::{RunSetState, Store, StoreError};
use crate::verdicts::Verdict;
use tandem_proto::order::Order;

mod cancel;
mod limits;

pub use cancel::Cancelled;

use limits::host_of;
pub use limits::{Busy, Wait, admit};

/// A busy place, with when its job started and the run it belongs to.
struct Running {
    busy: Busy,
    since: Timestamp,
    run_id: String,
    kind: RunKind,
    /// The member its operation runs on (a job of the other purpose may
    /// join it there, SPEC T9).
    target: Option<Target>,
    /// A job already joined it, or tried to: not offered again.
    joined: bool,
    /// Its operation, once the agent accepted the order: a job joins only
    /// then (before, the agent would start the rider's order on its own).
    op: Option<String>,
    /// A job that joined another's operation: it takes no place under the
    /// limits.
    rides: bool,
}

impl Running {
    /// `job`'s place, on `host`, running on `target` when known; neither
    /// joined nor riding.
    fn of(job: &Job, host: String, target: Option<Target>, since: Timestamp) -> Running {
        Running {
            busy: Busy {
                set: job.set.clone(),
                host,
            },
            since,
            run_id: job.run_id.clone(),
            kind: job.kind,
            target,
            joined: false,
            rides: false,
            op: None,
        }
    }
}

/// One run's events, for `WatchRun`.
pub struct Run {
    events: Mutex<Vec<pb::RunProgress>>,
    count: watch::Sender<usize>,
}

impl Run {
    fn new() -> Arc<Run> {
        Arc::new(Run {
            events: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        })
    }

    fn push(&self, ev: pb::RunProgress) {
        let n = {
            let mut evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
            evs.push(ev);
            evs.len()
        };
        self.count.send_replace(n);
    }

    /// Events from index `from` on, and whether the run is done.
    pub fn events_from(&self, from: usize) -> (Vec<pb::RunProgress>, bool) {
        let evs = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let done = evs.last().is_some_and(|e| e.done);
        (
            evs.get(from..).map(|s| s.to_vec()).unwrap_or_default(),
            done,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// What a run orders on each set's standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// testdb (SPEC T2).
    Testdb,
    /// A backup: the testdb steps plus a pack step; the file is kept only
    /// when the test is clean (SPEC R1, T9).
    Backup,
    /// An archive copy (SPEC T9): the copy only, packed into an archive
    /// file with `file`. Its outcome is stored apart from the set's
    /// verdicts (it tests nothing).
    Archive { file: bool },
}

/// The origin of backup runs started by `tandemctl backup`.
pub const BACKUP_ORIGIN: &str = "backup";
/// The origins of archive-copy runs (SPEC T9): a copy, no test; packed into
/// an archive file with the archive-file option.
pub const ARCHIVE_ORIGIN: &str = "archive";
pub const ARCHIVE_FILE_ORIGIN: &str = "archive+file";

impl RunKind {
    /// The kind of a stored run. It is carried by the run's origin (no
    /// store migration needed): runs whose origin starts with `backup` are
    /// backups, `archive` and `archive+file` archive copies.
    pub fn of_origin(origin: &str) -> RunKind {
        if origin.starts_with(BACKUP_ORIGIN) {
            RunKind::Backup
        } else if origin == ARCHIVE_FILE_ORIGIN {
            RunKind::Archive { file: true }
        } else if origin == ARCHIVE_ORIGIN {
            RunKind::Archive { file: false }
        } else {
            RunKind::Testdb
        }
    }

    /// The agent's order for a job of this kind.
    fn order(self) -> Order {
        match self {
            RunKind::Testdb => Order::Testdb {
                skip_logical_read: false,
            },
            RunKind::Backup => Order::Backup { untested: false },
            RunKind::Archive { file: false } => Order::Copy,
            RunKind::Archive { file: true } => Order::Backup { untested: true },
        }
    }

    /// Whether its copy is tested (and its outcome a verdict).
    pub fn tests(self) -> bool {
        !matches!(self, RunKind::Archive { .. })
    }

    /// Whether one copy can serve a job of this kind and one of `other`
    /// (SPEC T9): a test and an archive copy.
    fn serves_with(self, other: RunKind) -> bool {
        self.tests() != other.tests()
    }
}

/// One set of a run, queued or running.
struct Job {
    kind: RunKind,
    run_id: String,
    run: Arc<Run>,
    set: String,
    /// The member asked for; `None`: the set's streaming standby.
    member: Option<String>,
    /// Who asked: "manual", "schedule", "signal", "maintenance".
    origin: String,
    trace_id: String,
    /// The trace the job's spans continue: the call that queued it, or,
    /// after a restart, the stored trace id.
    parent: TraceParent,
    /// The last reason given to the run, so it is said once per change.
    waiting: Option<Wait>,
    /// When the job was queued.
    since: Timestamp,
}

/// The member a job tests.
#[derive(Debug, Clone)]
struct Target {
    member: String,
    agent: String,
    address: String,
    host: String,
}

impl Target {
    fn agent_ref(&self) -> AgentRef {
        AgentRef {
            agent: self.agent.clone(),
            address: self.address.clone(),
        }
    }
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    running: Vec<Running>,
}

impl Queue {
    fn busy(&self) -> Vec<Busy> {
        self.running
            .iter()
            .filter(|r| !r.rides)
            .map(|r| r.busy.clone())
            .collect()
    }
}

/// The running job that a waiting `job` can join (SPEC T9): on its set,
/// of the other purpose, on the member the job asked for (if any), not
/// joined yet. Marks it joined; returns where it runs.
fn join_target(running: &mut [Running], job: &Job) -> Option<Target> {
    let r = running.iter_mut().find(|r| {
        r.busy.set == job.set
            && !r.rides
            && !r.joined
            && r.op.is_some()
            && r.kind.serves_with(job.kind)
            && r.target
                .as_ref()
                .is_some_and(|t| job.member.as_deref().is_none_or(|m| m == t.member))
    })?;
    r.joined = true;
    r.target.clone()
}

pub struct Fleet {
    inventory: Arc<Inventory>,
    store: Store,
    agents: Arc<AgentClients>,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    queue: Mutex<Queue>,
    limits: Mutex<Limits>,
    wake: Notify,
    /// Sets held by a maintenance window, with why: only the window's own
    /// runs (origin "maintenance") start there.
    held: Mutex<HashMap<String, String>>,
    /// Notified when a job ends (the scheduler waits on it).
    pub finished: Notify,
    /// Runs being cancelled, with who cancelled them (until they end).
    cancelled: Mutex<HashMap<String, String>>,
}

/// The origin of a maintenance window's own runs.
pub const MAINTENANCE_ORIGIN: &str = "maintenance";

fn new_run_id() -> String {
    let now = Timestamp::now();
    format!(
        "run-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32 & 0xffff
    )
}

impl Fleet {
    /// The fleet with the limits the store says (set by `tandemctl limits`),
    /// or else the config's.
    pub async fn new(
        inventory: Arc<Inventory>,
        store: Store,
        agents: Arc<AgentClients>,
    ) -> Result<Arc<Fleet>, StoreError> {
        let limits = match store.setting("limits").await? {
            Some(json) => serde_json::from_str(&json).unwrap_or(inventory.config().limits),
            None => inventory.config().limits,
        };
        Ok(Arc::new(Fleet {
            inventory,
            store,
            agents,
            runs: Mutex::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            limits: Mutex::new(limits),
            wake: Notify::new(),
            held: Mutex::new(HashMap::new()),
            finished: Notify::new(),
            cancelled: Mutex::new(HashMap::new()),
        }))
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the limits come from `tandemctl limits` (else from the config).
    pub async fn limits_overridden(&self) -> Result<bool, StoreError> {
        Ok(self.store.setting("limits").await?.is_some())
    }

    /// Change the limits now (persisted); `None` goes back to the config's.
    pub async fn set_limits(&self, limits: Option<Limits>) -> Result<Limits, StoreError> {
        let effective = limits.unwrap_or(self.inventory.config().limits);
        match limits {
            Some(l) => {
                self.store
                    .put_setting(
                        "limits",
                        serde_json::to_string(&l).expect("limits serialize"),
                    )
                    .await?
            }
            None => self.store.delete_setting("limits").await?,
        }
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = effective;
        info!(
            fleet = effective.fleet,
            per_host = effective.per_host,
            "limits changed"
        );
        self.wake.notify_one();
        Ok(effective)
    }

    /// Hold `set` for a maintenance window: nothing but the window's own
    /// runs starts there until [`Fleet::release`].
    pub fn hold(&self, set: &str, why: String) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(set.to_owned(), why);
        crate::metrics::window_open(set, true);
    }

    pub fn release(&self, set: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(set);
        crate::metrics::window_open(set, false);
        self.wake.notify_one();
    }

    /// Why `set` is held, if it is.
    pub fn held(&self, set: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
            .cloned()
    }

    /// Jobs waiting and running now.
    pub fn queue_lengths(&self) -> (usize, usize) {
        let q = self.lock_queue();
        (q.waiting.len(), q.running.len())
    }

    /// Since when a job of `set` waits or runs, if one does.
    pub fn set_active_since(&self, set: &str) -> Option<Timestamp> {
        let q = self.lock_queue();
        q.running
            .iter()
            .filter(|r| r.busy.set == set)
            .map(|r| r.since)
            .chain(q.waiting.iter().filter(|j| j.set == set).map(|j| j.since))
            .min()
    }

    /// Since when a job of `set` that tests (`tests`) or makes an archive
    /// copy (`!tests`) waits or runs, if one does (the scheduler keeps the
    /// two purposes apart: one rides on the other, SPEC T9).
    pub fn purpose_active_since(&self, set: &str, tests: bool) -> Option<Timestamp> {
        let q = self.lock_queue();
        q.running
            .iter()
            .filter(|r| r.busy.set == set && r.kind.tests() == tests)
            .map(|r| r.since)
            .chain(
                q.waiting
                    .iter()
                    .filter(|j| j.set == set && j.kind.tests() == tests)
                    .map(|j| j.since),
            )
            .min()
    }

    /// The run with a test of `set` waiting or running, if any.
    pub fn active_run(&self, set: &str) -> Option<String> {
        let q = self.lock_queue();
        q.running
            .iter()
            .find(|r| r.busy.set == set)
            .map(|r| r.run_id.clone())
            .or_else(|| {
                q.waiting
                    .iter()
                    .find(|j| j.set == set)
                    .map(|j| j.run_id.clone())
            })
    }

    /// A run's events: live, or rebuilt from the store for a run that
    /// finished before this controller started.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Run>>, StoreError> {
        if let Some(r) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(r.clone()));
        }
        let Some(row) = self.store.run(id.to_owned()).await? else {
            return Ok(None);
        };
        let run = Run::new();
        for s in &row.sets {
            if let Some(v) = &s.verdict {
                run.push(verdict_event(&row.id, &s.set, v));
            }
        }
        run.push(done_event(&row.id));
        Ok(Some(run))
    }

    /// Start a run over `sets` (already validated); returns its id once it
    /// is stored.
    pub async fn start_run(
        self: &Arc<Self>,
        sets: Vec<String>,
        member: Option<String>,
        origin: &str,
        trace_id: String,
    ) -> Result<String, StoreError> {
        let id = new_run_id();
        let kind = RunKind::of_origin(origin);
        self.store
            .create_run(
                id.clone(),
                origin.to_owned(),
                trace_id.clone(),
                sets.iter()
                    .map(|s| (s.clone(), member.clone().unwrap_or_default()))
                    .collect(),
            )
            .await?;
        let run = Run::new();
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), run.clone());
        info!(run = %id, sets = ?sets, origin, "run queued");
        let parent = TraceParent::current();
        {
            let mut q = self.lock_queue();
            for set in sets {
                q.waiting.push_back(Job {
                    kind,
                    run_id: id.clone(),
                    run: run.clone(),
                    set,
                    member: member.clone(),
                    origin: origin.to_owned(),
                    trace_id: trace_id.clone(),
                    parent: parent.clone(),
                    waiting: None,
                    since: Timestamp::now(),
                });
            }
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Carry on the runs a previous controller left unfinished (SPEC C5).
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        for row in self.store.unfinished_runs().await? {
            let run = Run::new();
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(row.id.clone(), run.clone());
            info!(run = %row.id, sets = row.sets.len(), "carrying on a run left unfinished by a restart");
            for s in row.sets {
                let job = Job {
                    kind: RunKind::of_origin(&row.origin),
                    run_id: row.id.clone(),
                    run: run.clone(),
                    set: s.set.clone(),
                    member: (!s.member.is_empty()).then_some(s.member.clone()),
                    origin: row.origin.clone(),
                    trace_id: row.trace_id.clone(),
                    parent: TraceParent::from_trace_id(&row.trace_id),
                    waiting: None,
                    since: row.created_at,
                };
                match s.state {
                    RunSetState::Done => {
                        if let Some(v) = &s.verdict {
                            run.push(verdict_event(&row.id, &s.set, v));
                        }
                    }
                    RunSetState::Queued => self.lock_queue().waiting.push_back(job),
                    RunSetState::Starting | RunSetState::Running => {
                        let view = self.inventory.get(&s.agent);
                        let address = view.map(|v| v.row.address).unwrap_or_default();
                        let declared = self.declared(&s.set, &s.agent);
                        let target = Target {
                            member: declared
                                .as_ref()
                                .map(|m| m.name.clone())
                                .unwrap_or_default(),
                            // The host a member runs on: declared, or its agent's address.
                            host: declared
                                .and_then(|m| m.host)
                                .unwrap_or_else(|| host_of(&address).to_owned()),
                            agent: s.agent.clone(),
                            address,
                        };
                        self.lock_queue().running.push(Running {
                            // Carried on after a restart: not offered to joins.
                            joined: true,
                            ..Running::of(
                                &job,
                                target.host.clone(),
                                Some(target.clone()),
                                row.created_at,
                            )
                        });
                        let this = self.clone();
                        let span = job_span(&job, true);
                        let op = s.operation_id.clone();
                        tokio::spawn(
                            async move { this.resume(job, target, op).await }.instrument(span),
                        );
                    }
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Dispatch queued jobs until `shutdown`.
    pub async fn dispatch_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.dispatch();
            // Cancel-safe: both only wait.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Start every queued job the limits admit, in queue order; tell the
    /// others' runs why they wait.
    fn dispatch(self: &Arc<Self>) {
        let limits = self.limits();
        let mut q = self.lock_queue();
        let mut busy = q.busy();
        let mut i = 0;
        while i < q.waiting.len() {
            let job = &q.waiting[i];
            let held = self
                .held(&job.set)
                .filter(|_| job.origin != MAINTENANCE_ORIGIN);
            let is_held = held.is_some();
            let target = match held {
                Some(why) => Err(why),
                None => self.target(&job.set, job.member.as_deref()),
            };
            let host = target.as_ref().map(|t| t.host.clone()).unwrap_or_default();
            let admitted = match &target {
                Ok(_) => admit(&limits, &busy, &job.set, &host),
                // Nothing will run on the set, only the set rule applies.
                Err(_) => admit(
                    &Limits {
                        fleet: u32::MAX,
                        per_host: u32::MAX,
                    },
                    &busy,
                    &job.set,
                    &host,
                ),
            };
            // One copy serves both (SPEC T9): a job waiting for its set
            // rides on the running operation of the other purpose.
            let ride = match &admitted {
                Err(Wait::Set { .. }) if !is_held => {
                    let q = &mut *q;
                    join_target(&mut q.running, &q.waiting[i])
                }
                _ => None,
            };
            if let Some(t) = ride {
                let job = q.waiting.remove(i).expect("index checked");
                q.running.push(Running {
                    rides: true,
                    ..Running::of(&job, t.host.clone(), Some(t.clone()), Timestamp::now())
                });
                let this = self.clone();
                let span = job_span(&job, false);
                tokio::spawn(async move { this.ride(job, t).await }.instrument(span));
                continue;
            }
            match admitted {
                Ok(()) => {
                    let job = q.waiting.remove(i).expect("index checked");
                    crate::metrics::admitted(seconds_since(job.since));
                    let place =
                        Running::of(&job, host, target.as_ref().ok().cloned(), Timestamp::now());
                    busy.push(place.busy.clone());
                    q.running.push(place);
                    let this = self.clone();
                    let span = job_span(&job, false);
                    tokio::spawn(async move { this.run_job(job, target).await }.instrument(span));
                }
                Err(wait) => {
                    let job = &mut q.waiting[i];
                    if job.waiting.as_ref() != Some(&wait) {
                        info!(run = %job.run_id, set = %job.set, "{wait}");
                        crate::metrics::wait(wait.reason());
                        job.run.push(pb::RunProgress {
                            run_id: job.run_id.clone(),
                            set: job.set.clone(),
                            waiting: wait.to_string(),
                            ..Default::default()
                        });
                        job.waiting = Some(wait);
                    }
                    i += 1;
                }
            }
        }
        crate::metrics::queue(
            q.running.len(),
            q.waiting
                .iter()
                .map(|j| j.waiting.as_ref().map(Wait::reason)),
        );
    }

    /// The declared member of `set` that `agent` serves.
    fn declared(&self, set: &str, agent: &str) -> Option<crate::sets::MemberDecl> {
        self.inventory
            .declared()
            .set(set)
            .and_then(|s| s.member_of_agent(agent))
            .cloned()
    }

    /// The member to test: the named one, or the set's streaming standby as
    /// the agents' last heartbeats say. The agent checks again before it
    /// starts (SPEC T8). `Err` says why nothing can be tested.
    fn target(&self, set: &str, member: Option<&str>) -> Result<Target, String> {
        let declared = self.inventory.declared();
        let Some(set_decl) = declared.set(set) else {
            return Err(format!(
                "set `{set}` is no longer in the inventory (removed with `tandemctl set remove`)"
            ));
        };
        let views: Vec<_> = set_decl
            .members
            .iter()
            .map(|m| (m, self.inventory.get(&m.agent)))
            .collect();
        let online = |v: &Option<crate::inventory::AgentView>| {
            v.as_ref()
                .is_some_and(|v| v.row.state == AgentState::Online && !v.row.address.is_empty())
        };
        let standby = |v: &Option<crate::inventory::AgentView>, streaming: bool| {
            v.as_ref()
                .and_then(|v| v.facts.as_ref())
                .is_some_and(|f| f.role == Role::Standby && (f.fully_received || !streaming))
        };
        let chosen = match member {
            Some(name) => views.iter().find(|(m, _)| m.name == name),
            None => views
                .iter()
                .find(|(_, v)| online(v) && standby(v, true))
                .or_else(|| views.iter().find(|(_, v)| online(v) && standby(v, false))),
        };
        match chosen {
            Some((m, v)) if online(v) => {
                let address = v
                    .as_ref()
                    .map(|v| v.row.address.clone())
                    .unwrap_or_default();
                Ok(Target {
                    member: m.name.clone(),
                    agent: m.agent.clone(),
                    host: m
                        .host
                        .clone()
                        .unwrap_or_else(|| host_of(&address).to_owned()),
                    address,
                })
            }
            Some((m, v)) => Err(format!(
                "the agent `{}` of member `{}` is {}; start it, or test another member",
                m.agent,
                m.name,
                v.as_ref()
                    .map_or("never seen", |v| if v.row.state == AgentState::Offline {
                        "offline"
                    } else {
                        "never seen"
                    })
            )),
            None => {
                let seen: Vec<String> = views
                    .iter()
                    .map(|(m, v)| {
                        let what = match v {
                            Some(v) if v.row.state != AgentState::Online => {
                                "agent offline".to_owned()
                            }
                            Some(v) => v.facts.as_ref().map_or("no facts yet".to_owned(), |f| {
                                format!("{} {}", f.role, f.state_word())
                            }),
                            None => "agent never seen".to_owned(),
                        };
                        format!("{}: {what}", m.name)
                    })
                    .collect();
                Err(format!(
                    "no standby to test in set `{set}` ({}); a test copies a streaming standby",
                    seen.join(", ")
                ))
            }
        }
    }

    /// Run one admitted job to its verdict.
    async fn run_job(self: Arc<Self>, job: Job, target: Result<Target, String>) {
        if let Some(who) = self.cancelled_by(&job.run_id) {
            let v = Verdict::failed_to_run(
                job.member.as_deref().unwrap_or(""),
                format!("cancelled by {who} before it started"),
                job.trace_id.clone(),
            );
            return self.finish(job, v).await;
        }
        let target = match target {
            Ok(t) => t,
            Err(reason) => {
                let v = Verdict::failed_to_run(
                    job.member.as_deref().unwrap_or(""),
                    reason,
                    job.trace_id.clone(),
                );
                return self.finish(job, v).await;
            }
        };
        let verdict = self.order(&job, &target).await;
        self.finish(job, verdict).await;
    }

    /// Order the test from the target's agent and follow it to its verdict.
    async fn order(&self, job: &Job, t: &Target) -> Verdict {
        let span = tracing::Span::current();
        span.record("member", t.member.as_str());
        span.record("agent", t.agent.as_str());
        let failed =
            |reason: String| Verdict::failed_to_run(&t.member, reason, job.trace_id.clone());
        let op_id = match self.send(job, t, false).await {
            Ok(id) => id,
            Err(e) => return failed(e),
        };
        // A job of the other purpose waiting for the set may join it now.
        if let Some(r) = self
            .lock_queue()
            .running
            .iter_mut()
            .find(|r| r.busy.set == job.set && r.run_id == job.run_id)
        {
            r.op = Some(op_id.clone());
        }
        self.wake.notify_one();
        if self.cancelled_by(&job.run_id).is_some()
            && let Err(e) = self.cancel_on_agent(&t.agent, &op_id).await
        {
            warn!(set = %job.set, error = %e, "cannot ask the agent to cancel");
        }
        self.follow_to_verdict(job, t, op_id).await
    }

    /// A job that joins the running operation of the other purpose on
    /// `t` (SPEC T9). The agent says whether it still can; when it cannot
    /// (the copy is already packed or opened for its test), the job waits
    /// for the set like any other and makes its own copy after.
    async fn ride(self: Arc<Self>, job: Job, t: Target) {
        if self.cancelled_by(&job.run_id).is_some() {
            return self.run_job(job, Ok(t)).await;
        }
        match self.send(&job, &t, true).await {
            Ok(op_id) => {
                info!(set = %job.set, member = %t.member, operation = %op_id, "joined the running operation: one copy serves both");
                let v = self.follow_to_verdict(&job, &t, op_id).await;
                self.finish(job, v).await;
            }
            Err(why) => {
                info!(set = %job.set, "could not join the running operation ({why}); waiting for the set");
                if let Err(e) = self
                    .store
                    .run_set_state(
                        job.run_id.clone(),
                        job.set.clone(),
                        RunSetState::Queued,
                        String::new(),
                        String::new(),
                    )
                    .await
                {
                    warn!(set = %job.set, error = %e, "cannot record the job queued again");
                }
                let mut q = self.lock_queue();
                q.running
                    .retain(|r| !(r.rides && r.busy.set == job.set && r.run_id == job.run_id));
                q.waiting.push_front(job);
                drop(q);
                self.wake.notify_one();
            }
        }
    }

    /// Record the job `starting`, then send its order (`join`: join the
    /// running operation of the other purpose); the operation's id, or why
    /// it could not be ordered.
    async fn send(&self, job: &Job, t: &Target, join: bool) -> Result<String, String> {
        self.store
            .run_set_state(
                job.run_id.clone(),
                job.set.clone(),
                RunSetState::Starting,
                t.agent.clone(),
                String::new(),
            )
            .await
            .map_err(|e| format!("cannot record the order in the store: {e}"))?;
        self.orders()
            .send(
                &t.agent_ref(),
                &job.set,
                request_id(job),
                join,
                job.kind.order(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    fn orders(&self) -> Orders<'_> {
        Orders {
            agents: &self.agents,
            store: &self.store,
        }
    }

    async fn follow_to_verdict(&self, job: &Job, t: &Target, op_id: String) -> Verdict {
        info!(set = %job.set, member = %t.member, operation = %op_id, "testdb running");
        tracing::Span::current().record("operation.id", op_id.as_str());
        if let Err(e) = self
            .store
            .run_set_state(
                job.run_id.clone(),
                job.set.clone(),
                RunSetState::Running,
                t.agent.clone(),
                op_id.clone(),
            )
            .await
        {
            warn!(error = %e, "cannot record the running operation");
        }
        let mut v = match self.follow(job, t, &op_id).await {
            Ok(r) => Verdict::from_result(&t.member, &r, job.trace_id.clone()),
            Err(reason) => Verdict::failed_to_run(&t.member, reason, job.trace_id.clone()),
        };
        if let Some(who) = self.cancelled_by(&job.run_id)
            && v.kind == crate::verdicts::VerdictKind::FailedToRun
        {
            v.reason = Some(format!(
                "cancelled by {who}: {}",
                v.reason.as_deref().unwrap_or("")
            ));
        }
        v
    }

    /// A job a previous controller started: find its operation on the
    /// agent and follow it; if the order never reached the agent, queue the
    /// job again.
    async fn resume(self: Arc<Self>, job: Job, t: Target, op_id: String) {
        let op_id = if op_id.is_empty() {
            match self.find_request(&t, &request_id(&job)).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    info!(set = %job.set, "the order never reached the agent; queued again");
                    let mut q = self.lock_queue();
                    q.running
                        .retain(|r| !(r.busy.set == job.set && r.run_id == job.run_id));
                    q.waiting.push_front(job);
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
                Err(reason) => {
                    let v = Verdict::failed_to_run(&t.member, reason, job.trace_id.clone());
                    return self.finish(job, v).await;
                }
            }
        } else {
            op_id
        };
        let v = self.follow_to_verdict(&job, &t, op_id).await;
        self.finish(job, v).await;
    }

    /// The operation the agent started for `request`, if any.
    async fn find_request(&self, t: &Target, request: &str) -> Result<Option<String>, String> {
        self.orders()
            .find(&t.agent_ref(), request)
            .await
            .map_err(|e| e.to_string())
    }

    /// Store the verdict, tell the run, free the job's place.
    async fn finish(&self, job: Job, verdict: Verdict) {
        let (run_id, set) = (job.run_id.clone(), job.set.clone());
        self.record(job, verdict).await;
        self.lock_queue()
            .running
            .retain(|r| !(r.busy.set == set && r.run_id == run_id));
        self.wake.notify_one();
        self.finished.notify_one();
    }

    /// Store a job's verdict and tell its run (and, when it was the run's
    /// last, that the run is done).
    async fn record(&self, job: Job, verdict: Verdict) {
        info!(set = %job.set, verdict = verdict.kind.as_str(), lsn = ?verdict.lsn, "verdict");
        let span = tracing::Span::current();
        span.record("verdict", verdict.kind.as_str());
        span.record("findings", verdict.findings.len() as u64);
        if let Some(lsn) = &verdict.lsn {
            span.record("lsn", lsn.as_str());
        }
        // The verdict goes to the run before the store decides whether it was
        // the run's last: whoever's write lands last pushes `done`, after
        // every set's verdict was pushed.
        job.run.push(verdict_event(&job.run_id, &job.set, &verdict));
        let tested = job.kind.tests();
        if tested {
            crate::metrics::verdict(&job.set, &verdict);
        } else {
            let what = match verdict.kind {
                crate::verdicts::VerdictKind::FailedToRun => format!(
                    "archive copy (run {}) could not be made: {}",
                    job.run_id,
                    verdict.reason.as_deref().unwrap_or("")
                ),
                _ => format!(
                    "archive copy (run {}) made on {} by operation {}{}",
                    job.run_id,
                    verdict.member,
                    verdict.operation_id,
                    verdict
                        .backup_path
                        .as_deref()
                        .map(|p| format!(", archive file {p}"))
                        .unwrap_or_default()
                ),
            };
            if let Err(e) = self.store.set_event(job.set.clone(), "archive", what).await {
                warn!(error = %e, "cannot record the set event");
            }
        }
        let run_done = match self
            .store
            .finish_run_set(job.run_id.clone(), job.set.clone(), verdict.clone(), tested)
            .await
        {
            Ok(done) => done,
            Err(e) => {
                warn!(set = %job.set, error = %e, "cannot store the verdict");
                false
            }
        };
        if run_done {
            info!(run = %job.run_id, "run finished");
            job.run.push(done_event(&job.run_id));
            // Watchers keep their Arc; a later WatchRun rebuilds the run
            // from the store, so finished runs do not pile up in memory.
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.run_id);
            self.cancelled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.run_id);
        }
    }

    /// Relay the agent's progress until the operation's result arrives.
    async fn follow(
        &self,
        job: &Job,
        t: &Target,
        op_id: &str,
    ) -> Result<pb::OperationResult, String> {
        self.orders()
            .follow(&t.agent_ref(), op_id, |p| {
                job.run.push(pb::RunProgress {
                    run_id: job.run_id.clone(),
                    set: job.set.clone(),
                    member: t.member.clone(),
                    progress: Some(p.clone()),
                    ..Default::default()
                })
            })
            .await
            .map_err(|e| e.to_string())
    }
}

/// The span of one set's test on the controller, in the trace of the call
/// that queued it; the agent's operation and steps are its descendants.
/// Fields left empty are recorded as they become known; `resumed`: carried
/// on after a controller restart.
fn job_span(job: &Job, resumed: bool) -> tracing::Span {
    let span = info_span!(
        parent: None,
        "testdb.set",
        resumed,
        run.id = %job.run_id,
        set = %job.set,
        member = tracing::field::Empty,
        agent = tracing::field::Empty,
        operation.id = tracing::field::Empty,
        verdict = tracing::field::Empty,
        findings = tracing::field::Empty,
        lsn = tracing::field::Empty,
        db.system = "postgresql",
    );
    job.parent.adopt(&span);
    span
}

/// Seconds from `t` until now.
fn seconds_since(t: Timestamp) -> f64 {
    (Timestamp::now() - t)
        .total(jiff::Unit::Second)
        .unwrap_or(0.0)
}

fn request_id(job: &Job) -> String {
    format!("{}/{}", job.run_id, job.set)
}

fn verdict_event(run_id: &str, set: &str, v: &Verdict) -> pb::RunProgress {
    pb::RunProgress {
        run_id: run_id.to_owned(),
        set: set.to_owned(),
        member: v.member.clone(),
        verdict: Some(v.to_pb()),
        ..Default::default()
    }
}

fn done_event(run_id: &str) -> pb::RunProgress {
    pb::RunProgress {
        run_id: run_id.to_owned(),
        done: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_kind_comes_from_its_origin_and_a_test_and_an_archive_copy_share_a_copy() {
        assert_eq!(RunKind::of_origin("manual"), RunKind::Testdb);
        assert_eq!(RunKind::of_origin("schedule"), RunKind::Testdb);
        assert_eq!(RunKind::of_origin(BACKUP_ORIGIN), RunKind::Backup);
        assert_eq!(
            RunKind::of_origin(ARCHIVE_ORIGIN),
            RunKind::Archive { file: false }
        );
        assert_eq!(
            RunKind::of_origin(ARCHIVE_FILE_ORIGIN),
            RunKind::Archive { file: true }
        );
        let archive = RunKind::Archive { file: true };
        assert!(archive.serves_with(RunKind::Testdb));
        assert!(RunKind::Backup.serves_with(RunKind::Archive { file: false }));
        assert!(!RunKind::Testdb.serves_with(RunKind::Backup));
        assert!(!archive.serves_with(RunKind::Archive { file: false }));
        // An archive file is an untested backup; a plain archive copy a copy.
        assert_eq!(archive.order(), Order::Backup { untested: true });
        assert_eq!(RunKind::Archive { file: false }.order(), Order::Copy);
    }
}
