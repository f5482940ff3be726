//! The scheduler: starts each set's tests when its policy says (SPEC T1).
//!
//! The policy grammar and the decisions are pure logic in `schedule`; this
//! is the loop with the I/O. For each set it builds the `ScheduleState` from
//! the store (when the policy took effect, the last occurrence handled), the
//! verdicts (when the last test finished, manual ones included) and the
//! fleet (a test of the set waiting or running), asks `schedule::decide`,
//! and acts: a due test becomes a fleet run (origin `schedule`, under the
//! usual limits); an occurrence that fell while the previous test still ran
//! is skipped and said so in the set's history; after downtime at most one
//! catch-up run starts. It sleeps until the next due time, a test's end, a
//! policy change or shutdown.
//!
//! Archive-copy policies (SPEC T9) run the same way, each purpose with its
//! own schedule state (kind `archive` in the store; its last end is the
//! set's last archive outcome): a due archive copy becomes a fleet run of
//! origin `archive`, or `archive+file` with the archive-file option (the
//! copy packed into one backup file). The two purposes do not block each
//! other here: when one comes due while the other's copy runs, the fleet
//! has the new job ride on that copy (one copy serves both).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tandem_proto::model::TestMode;
use tandem_proto::propagation::current_trace_id;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::fleet::Fleet;
use crate::inventory::Inventory;
use crate::schedule::{Decision, Policy, Running, ScheduleState, decide, describe_instant};
use crate::store::{PolicyRow, ScheduleRow, Store, StoreError};

/// The longest the loop sleeps without looking again (a safety net; every
/// change that matters also wakes it).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A set's policies in force: set with `tandemctl set policy`, else the config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub test: Policy,
    pub archive_copy: Policy,
    pub archive_file: bool,
    /// The mode of the set's tests and copies when a request names none
    /// (`None`: each agent's default).
    pub mode: Option<TestMode>,
    /// True when they come from `tandemctl set policy`.
    pub overridden: bool,
}

/// A set's policies in force, read from the store (the fleet reads the
/// mode of each job from here).
pub(crate) async fn load_policies(
    inv: &Inventory,
    store: &Store,
    set: &str,
) -> Result<Policies, StoreError> {
    if let Some(row) = store.policy(set.to_owned()).await? {
        // Stored strings were parsed before they were stored.
        return Ok(Policies {
            test: row.test.parse().unwrap_or_default(),
            archive_copy: row.archive_copy.parse().unwrap_or_default(),
            archive_file: row.archive_file,
            mode: row.mode.parse().ok(),
            overridden: true,
        });
    }
    let cfg = inv.config();
    let declared = cfg.sets.iter().find(|s| s.name == set);
    Ok(Policies {
        test: declared.map(|s| s.test.clone()).unwrap_or_default(),
        archive_copy: declared.map(|s| s.archive_copy.clone()).unwrap_or_default(),
        archive_file: declared.is_some_and(|s| s.archive_file),
        mode: declared.and_then(|s| s.mode),
        overridden: false,
    })
}

/// Store a set's policies (`None`: back to the config's).
async fn store_policies(store: &Store, set: &str, p: Option<&Policies>) -> Result<(), StoreError> {
    store
        .put_policy(
            set.to_owned(),
            p.map(|p| PolicyRow {
                test: p.test.to_string(),
                archive_copy: p.archive_copy.to_string(),
                archive_file: p.archive_file,
                mode: p.mode.map(|m| m.to_string()).unwrap_or_default(),
            }),
        )
        .await
}

/// What a schedule starts: tests, or archive copies (SPEC T9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Test,
    Archive { file: bool },
}

impl Purpose {
    /// Its schedule state's key in the store.
    fn key(self) -> &'static str {
        match self {
            Purpose::Test => "test",
            Purpose::Archive { .. } => "archive",
        }
    }

    fn origin(self) -> &'static str {
        match self {
            Purpose::Test => "schedule",
            Purpose::Archive { file: false } => crate::fleet::ARCHIVE_ORIGIN,
            Purpose::Archive { file: true } => crate::fleet::ARCHIVE_FILE_ORIGIN,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Purpose::Test => "test",
            Purpose::Archive { .. } => "archive copy",
        }
    }
}

pub struct Scheduler {
    inventory: Arc<Inventory>,
    store: Store,
    fleet: Arc<Fleet>,
    /// Notified when a policy changes.
    changed: Notify,
    /// Policies in force, by set, read from the store once and kept up to
    /// date by [`Scheduler::set_policies`] (the only writer), so a tick does
    /// not read every set's policy again.
    cache: Mutex<HashMap<String, Policies>>,
}

impl Scheduler {
    pub fn new(inventory: Arc<Inventory>, store: Store, fleet: Arc<Fleet>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            inventory,
            store,
            fleet,
            changed: Notify::new(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A set's policies in force.
    pub async fn policies(&self, set: &str) -> Result<Policies, StoreError> {
        if let Some(p) = self.lock_cache().get(set) {
            return Ok(p.clone());
        }
        let p = load_policies(&self.inventory, &self.store, set).await?;
        self.lock_cache().insert(set.to_owned(), p.clone());
        Ok(p)
    }

    /// Change a set's policies (`None`: back to the config's); returns the
    /// policies now in force and wakes the loop.
    pub async fn set_policies(
        &self,
        set: &str,
        p: Option<&Policies>,
    ) -> Result<Policies, StoreError> {
        store_policies(&self.store, set, p).await?;
        self.lock_cache().remove(set);
        let now = self.policies(set).await?;
        self.changed.notify_one();
        Ok(now)
    }

    /// The inventory changed for `set` (added again, or new): read its
    /// policies afresh and look at the schedule now.
    pub fn forget(&self, set: &str) {
        self.lock_cache().remove(set);
        self.changed.notify_one();
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Policies>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schedule state of `set`'s `purpose` under `policy`, now.
    async fn state(
        &self,
        set: &str,
        purpose: Purpose,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<ScheduleState, StoreError> {
        let canonical = policy.to_string();
        let row = match self.store.schedule(set.to_owned(), purpose.key()).await? {
            Some(row) if row.policy == canonical => row,
            // New, or changed: it takes effect now.
            _ => {
                let row = ScheduleRow {
                    policy: canonical,
                    since: now,
                    last_due: None,
                };
                self.store
                    .put_schedule(set.to_owned(), purpose.key(), row.clone())
                    .await?;
                row
            }
        };
        let last_finished = match purpose {
            Purpose::Test => self.store.verdicts(set.to_owned(), 1).await?,
            Purpose::Archive { .. } => self.store.archive_outcomes(set.to_owned(), 1).await?,
        }
        .first()
        .map(|v| v.at);
        let tests = purpose == Purpose::Test;
        Ok(ScheduleState {
            since: row.since,
            last_due: row.last_due,
            last_finished,
            running: self
                .fleet
                .purpose_active_since(set, tests)
                .map(|t| Running::new(t, purpose.what())),
        })
    }

    /// Look at every set once; act on what is due. Returns when to look again.
    pub async fn tick(&self, now: Timestamp) -> Result<Option<Timestamp>, StoreError> {
        let mut next: Option<Timestamp> = None;
        let sets: Vec<String> = self
            .inventory
            .declared()
            .sets
            .iter()
            .map(|s| s.name.clone())
            .collect();
        for set in sets {
            let p = self.policies(&set).await?;
            for (purpose, policy) in [
                (Purpose::Test, p.test),
                (
                    Purpose::Archive {
                        file: p.archive_file,
                    },
                    p.archive_copy,
                ),
            ] {
                if matches!(policy, Policy::Off | Policy::Signal(_)) {
                    continue;
                }
                if let Some(t) = self.tick_purpose(&set, purpose, &policy, now).await? {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        Ok(next)
    }

    /// One set's one purpose: start, skip or wait. When to look again.
    async fn tick_purpose(
        &self,
        set: &str,
        purpose: Purpose,
        policy: &Policy,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let tz = self.inventory.config().tz();
        let state = self.state(set, purpose, policy, now).await?;
        let what = purpose.what();
        match decide(policy, &tz, now, &state) {
            Decision::Idle | Decision::WaitForRun => Ok(None),
            Decision::WaitUntil(t) => Ok(Some(t)),
            Decision::Start {
                due,
                catch_up,
                missed,
            } => {
                // A maintenance window holds the set: the occurrence is
                // skipped, with the reason in the set's history.
                if let Some(why) = self.fleet.held(set) {
                    let reason = format!(
                        "scheduled {what} of the {} occurrence skipped: {why}",
                        describe_instant(due, &tz)
                    );
                    info!(set, due = %due, "{reason}");
                    self.store
                        .set_event(set.to_owned(), "schedule", reason)
                        .await?;
                    self.handled(set, purpose, policy, &state, due).await?;
                    return Ok(Some(now));
                }
                // A scheduled run is a trace of its own, stored with its outcome.
                let span = info_span!(parent: None, "tandem-controller schedule", set = %set, policy = %policy, purpose = what);
                let trace_id = span.in_scope(current_trace_id).unwrap_or_default();
                let run = self
                    .fleet
                    .start_run(
                        vec![set.to_owned()],
                        None,
                        Default::default(),
                        purpose.origin(),
                        trace_id,
                    )
                    .instrument(span)
                    .await?;
                info!(set, run, policy = %policy, due = %due, catch_up, missed, "scheduled {what} started");
                if catch_up {
                    self.store
                        .set_event(
                            set.to_owned(),
                            "schedule",
                            format!(
                                "catch-up {what} (run {run}) for the {} occurrence{}",
                                describe_instant(due, &tz),
                                if missed > 0 {
                                    format!("; {missed} older occurrence(s) missed while the controller was down are not run")
                                } else {
                                    String::new()
                                }
                            ),
                        )
                        .await?;
                }
                self.handled(set, purpose, policy, &state, due).await?;
                // Look again at once: the next occurrence.
                Ok(Some(now))
            }
            Decision::Skip { due, reason } => {
                info!(set, due = %due, "{reason}");
                self.store
                    .set_event(set.to_owned(), "schedule", reason)
                    .await?;
                self.handled(set, purpose, policy, &state, due).await?;
                Ok(Some(now))
            }
        }
    }

    async fn handled(
        &self,
        set: &str,
        purpose: Purpose,
        policy: &Policy,
        state: &ScheduleState,
        due: Timestamp,
    ) -> Result<(), StoreError> {
        self.store
            .put_schedule(
                set.to_owned(),
                purpose.key(),
                ScheduleRow {
                    policy: policy.to_string(),
                    since: state.since,
                    last_due: Some(due),
                },
            )
            .await
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = Timestamp::now();
            let wait = match self.tick(now).await {
                Ok(Some(t)) => Duration::try_from(t.duration_since(now))
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    warn!(error = %e, "scheduler: store failed; trying again");
                    Duration::from_secs(5)
                }
            };
            // Cancel-safe: each branch only waits.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.fleet.finished.notified() => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}
