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
use tandem_proto::order::CopyOptions;
use tandem_proto::pb;
use tandem_proto::propagation::TraceParent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::agents::AgentClients;
use crate::config::Limits;
use crate::inventory::Inventory;
use crate::orders::AgentRef;
use crate::store::{Store, StoreError};

mod cancel;
mod fresh;
mod guard;
mod job;
mod limits;
mod recover;
mod run;

pub use cancel::Cancelled;
use job::{job_span, seconds_since};
pub use run::{ARCHIVE_FILE_ORIGIN, ARCHIVE_ORIGIN, BACKUP_ORIGIN, Run, RunKind};
use run::{done_event, verdict_event};

use limits::host_of;
pub use limits::{Busy, Places, Wait, admit};

/// Why a job has no member to run on.
#[derive(Debug, thiserror::Error)]
pub(super) enum NoTarget {
    #[error("set `{set}` is no longer in the inventory (removed with `tandemctl set remove`)")]
    Removed { set: String },
    #[error(
        "the agent `{agent}` of member `{member}` is {state}; start it, or test another member"
    )]
    AgentDown {
        agent: String,
        member: String,
        state: &'static str,
    },
    #[error("no standby to test in set `{set}` ({seen}); a test copies a streaming standby")]
    NoStandby { set: String, seen: String },
    /// The set is held by a maintenance window (the window's words).
    #[error("{0}")]
    Held(String),
}

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
    /// The mode asked for (`None`: the set's policy, else the agent's
    /// default) and whether a cold copy may stall the primary's commits.
    copy: CopyOptions,
    /// Whether the set's agents were asked for fresh facts when the last
    /// heartbeats showed no standby to test.
    refresh: Refresh,
}

/// Asking a set's agents for fresh facts before a job is refused for want
/// of a standby (the heartbeats may be older than a standby's restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    NotYet,
    Asking,
    Done,
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
    /// The places the running jobs take (a job riding on another's
    /// operation takes none).
    fn places(&self) -> Places {
        Places::of(self.running.iter().filter(|r| !r.rides).map(|r| &r.busy))
    }
}

/// A waiting job learns why it waits: logged, counted and told to its run
/// once per reason.
fn note_wait(job: &mut Job, wait: Wait) {
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
        copy: CopyOptions,
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
                    copy,
                    refresh: Refresh::NotYet,
                });
            }
        }
        self.wake.notify_one();
        Ok(id)
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
        let mut places = q.places();
        let mut i = 0;
        while i < q.waiting.len() {
            let job = &q.waiting[i];
            let held = self
                .held(&job.set)
                .filter(|_| job.origin != MAINTENANCE_ORIGIN);
            let is_held = held.is_some();
            // A full fleet: a job that needs a place of its own waits, and
            // its member is not looked for. Only a held set's job (refused
            // at once) and one riding on its set's running operation go
            // on. With thousands waiting this keeps each pass one lookup
            // per job; a job whose set lost its member learns it when a
            // place frees.
            if !is_held && places.full(&limits) && !places.set_busy(&job.set) {
                let wait = places.fleet_wait(&limits);
                note_wait(&mut q.waiting[i], wait);
                i += 1;
                continue;
            }
            let target = match held {
                Some(why) => Err(NoTarget::Held(why)),
                None => self.target(&job.set, job.member.as_deref()),
            };
            // The heartbeats may be older than a standby's restart: before
            // a job is refused for want of a standby, the set's agents are
            // asked (in a task of its own; the job waits meanwhile).
            if matches!(target, Err(NoTarget::NoStandby { .. })) && job.member.is_none() {
                match job.refresh {
                    Refresh::NotYet => {
                        let (set, run_id) = (job.set.clone(), job.run_id.clone());
                        q.waiting[i].refresh = Refresh::Asking;
                        self.refresh_facts(set, run_id);
                        i += 1;
                        continue;
                    }
                    Refresh::Asking => {
                        i += 1;
                        continue;
                    }
                    Refresh::Done => {}
                }
            }
            let host = target.as_ref().map(|t| t.host.clone()).unwrap_or_default();
            let admitted = match &target {
                Ok(_) => admit(&limits, &places, &job.set, &host),
                // Nothing will run on the set, only the set rule applies.
                Err(_) => admit(
                    &Limits {
                        fleet: u32::MAX,
                        per_host: u32::MAX,
                    },
                    &places,
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
                    places.take(&place.busy);
                    q.running.push(place);
                    let this = self.clone();
                    let span = job_span(&job, false);
                    tokio::spawn(async move { this.run_job(job, target).await }.instrument(span));
                }
                Err(wait) => {
                    note_wait(&mut q.waiting[i], wait);
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
    fn target(&self, set: &str, member: Option<&str>) -> Result<Target, NoTarget> {
        let declared = self.inventory.declared();
        let Some(set_decl) = declared.set(set) else {
            return Err(NoTarget::Removed {
                set: set.to_owned(),
            });
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
        let single = |v: &Option<crate::inventory::AgentView>| {
            v.as_ref()
                .and_then(|v| v.facts.as_ref())
                .is_some_and(|f| f.single_member && f.role == Role::Primary)
        };
        // A standby the primary's commits do not wait for is tested first
        // (as the primary's last heartbeat says; a cold copy is checked
        // again with live facts before it is ordered).
        let primary = views.iter().find_map(|(_, v)| {
            v.as_ref()
                .and_then(|v| v.facts.as_ref())
                .filter(|f| f.role == Role::Primary)
        });
        let asynchronous = |v: &Option<crate::inventory::AgentView>| {
            let name = v
                .as_ref()
                .and_then(|v| v.facts.as_ref())
                .and_then(|f| f.wal_receiver_application_name.as_deref());
            primary.is_some_and(|p| {
                crate::syncrep::stop_effect(p, name) == crate::syncrep::StopEffect::NoWait
            })
        };
        let chosen = match member {
            Some(name) => views.iter().find(|(m, _)| m.name == name),
            None => views
                .iter()
                .find(|(_, v)| online(v) && standby(v, true) && asynchronous(v))
                .or_else(|| views.iter().find(|(_, v)| online(v) && standby(v, true)))
                .or_else(|| views.iter().find(|(_, v)| online(v) && standby(v, false)))
                // A member that is its set's only one by nature (no
                // physical replication) is tested itself.
                .or_else(|| views.iter().find(|(_, v)| online(v) && single(v))),
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
            Some((m, v)) => Err(NoTarget::AgentDown {
                agent: m.agent.clone(),
                member: m.name.clone(),
                state: v.as_ref().map_or("never seen", |v| {
                    if v.row.state == AgentState::Offline {
                        "offline"
                    } else {
                        "never seen"
                    }
                }),
            }),
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
                Err(NoTarget::NoStandby {
                    set: set.to_owned(),
                    seen: seen.join(", "),
                })
            }
        }
    }
}
