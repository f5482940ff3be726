//! The scheduler's decision for one set and purpose: pure, no I/O.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::calendar;
use super::policy::Policy;

/// A start more than this after its due time is a catch-up (the controller
/// was down, or was not asked, when it fell due).
pub const ON_TIME: SignedDuration = SignedDuration::from_secs(60);

/// [`Decision::Start::missed`] counts up to this and stops.
pub const MISSED_COUNT_CAP: u32 = 1000;

/// What the caller knows about one set's schedule for one purpose (tests,
/// or archive copies). The caller keeps it (in the store, so restarts see
/// it) and updates it after each decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleState {
    /// When this policy took effect for the set: when it was set or changed,
    /// or when the controller first saw it. Calendar occurrences at or
    /// before it are never run, so a new schedule does not start with a
    /// catch-up for times before it existed. Keep it across restarts (a
    /// restart is not a policy change, or downtime would never be caught
    /// up); reset it when the policy changes.
    pub since: Timestamp,
    /// The last occurrence already handled: started ([`Decision::Start`]) or
    /// skipped ([`Decision::Skip`]); set it to their `due`.
    pub last_due: Option<Timestamp>,
    /// When the last run for this purpose finished (whatever its outcome,
    /// manual runs included): `interval=` counts from it.
    pub last_finished: Option<Timestamp>,
    /// The run going on now, if any.
    pub running: Option<Running>,
}

impl ScheduleState {
    /// A policy that has just taken effect: nothing handled, nothing run.
    pub fn new(since: Timestamp) -> ScheduleState {
        ScheduleState {
            since,
            last_due: None,
            last_finished: None,
            running: None,
        }
    }
}

/// A run going on now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub started: Timestamp,
    /// How a skip reason names it after "the previous": `test`,
    /// `archive copy`, `test (run 42)`.
    pub what: String,
}

impl Running {
    pub fn new(started: Timestamp, what: impl Into<String>) -> Running {
        Running {
            started,
            what: what.into(),
        }
    }

    /// A test that started at `started`.
    pub fn test(started: Timestamp) -> Running {
        Running::new(started, "test")
    }
}

/// What the scheduler should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing falls due by time (`off`, `signal`): wait for the policy to
    /// change.
    Idle,
    /// `interval=` while a run goes on: the next due time counts from its
    /// end; ask again when it finishes.
    WaitForRun,
    /// Nothing to do before this instant; ask again then (or when the state
    /// changes).
    WaitUntil(Timestamp),
    /// Start a run for the occurrence `due`, then set `last_due = due` and
    /// `running`.
    Start {
        due: Timestamp,
        /// `due` is more than [`ON_TIME`] in the past.
        catch_up: bool,
        /// Earlier occurrences since `last_due` (or `since`) that are not
        /// run (no burst after downtime): only the newest one is. Counts up
        /// to [`MISSED_COUNT_CAP`].
        missed: u32,
    },
    /// The occurrence `due` fell while a run goes on: record `reason` (a
    /// sentence for people) and set `last_due = due`.
    Skip { due: Timestamp, reason: String },
}

/// `2026-11-25 05:00 Europe/Moscow`: an instant as wall time in `tz`, with
/// the zone's name (its offset when it has none).
pub fn describe_instant(ts: Timestamp, tz: &TimeZone) -> String {
    ts.to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M %:Q")
        .to_string()
}

/// The decision for one set and purpose at `now`.
///
/// - `off`, `signal`: [`Decision::Idle`].
/// - `interval=N`: due `N` seconds after the later of `last_finished` and
///   `last_due` (counting from `last_due` too means an attempt that never
///   ran, or was never recorded as finished, is retried after one interval,
///   not at once and forever); nothing yet: due at `since`. While a run goes
///   on: [`Decision::WaitForRun`], so there is nothing to skip.
/// - Calendar (`AT...`, `testdb`, `cron=`): the occurrences after
///   `max(since, last_due)` up to `now`. None: wait for the next one.
///   Some: the newest is started (a catch-up if it is more than [`ON_TIME`]
///   old), the older ones are only counted in `missed`; if a run goes on,
///   the newest is skipped instead and the reason says why.
pub fn decide(policy: &Policy, tz: &TimeZone, now: Timestamp, state: &ScheduleState) -> Decision {
    match policy {
        Policy::Off | Policy::Signal(_) => Decision::Idle,
        Policy::Interval(_) => {
            if state.running.is_some() {
                return Decision::WaitForRun;
            }
            let due = match state.last_finished.max(state.last_due) {
                None => state.since,
                Some(base) => match policy.interval().and_then(|d| base.checked_add(d).ok()) {
                    Some(due) => due,
                    None => return Decision::Idle,
                },
            };
            start_or_wait(now, due, 0)
        }
        Policy::Weekly(_) | Policy::Cron(_) => {
            let Some(schedule) = policy.calendar() else {
                return Decision::Idle;
            };
            let anchor = state.last_due.map_or(state.since, |d| d.max(state.since));
            let Some(first) = calendar::next_instant(schedule, tz, anchor) else {
                return Decision::Idle;
            };
            if first > now {
                return Decision::WaitUntil(first);
            }
            let mut newest = first;
            let mut missed = 0;
            while let Some(next) = calendar::next_instant(schedule, tz, newest) {
                if next > now {
                    break;
                }
                if missed + 1 >= MISSED_COUNT_CAP {
                    newest = calendar::last_instant_at_or_before(schedule, tz, now)
                        .map_or(next, |last| last.max(next));
                    missed = MISSED_COUNT_CAP;
                    break;
                }
                newest = next;
                missed += 1;
            }
            match &state.running {
                None => start_or_wait(now, newest, missed),
                Some(running) => {
                    let mut reason = format!(
                        "skipped the {} occurrence: the previous {} (started {}) still runs",
                        describe_instant(newest, tz),
                        running.what,
                        describe_instant(running.started, tz),
                    );
                    if missed > 0 {
                        reason += &format!(
                            "; {} earlier occurrence{} since {} did not run either",
                            missed,
                            if missed == 1 { "" } else { "s" },
                            describe_instant(anchor, tz)
                        );
                    }
                    Decision::Skip {
                        due: newest,
                        reason,
                    }
                }
            }
        }
    }
}

fn start_or_wait(now: Timestamp, due: Timestamp, missed: u32) -> Decision {
    if due > now {
        Decision::WaitUntil(due)
    } else {
        Decision::Start {
            due,
            catch_up: now.duration_since(due) > ON_TIME,
            missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse::<jiff::Zoned>()
            .map(|z| z.timestamp())
            .or_else(|_| s.parse::<Timestamp>())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn policy(s: &str) -> Policy {
        s.parse().unwrap()
    }

    fn moscow() -> TimeZone {
        TimeZone::get("Europe/Moscow").unwrap()
    }

    fn mins(n: i64) -> SignedDuration {
        SignedDuration::from_mins(n)
    }

    #[test]
    fn off_and_signal_are_idle() {
        let now = at("2026-11-21T12:00Z");
        let state = ScheduleState::new(now);
        for p in ["off", "signal", "signal=SIGUSR1"] {
            assert_eq!(decide(&policy(p), &moscow(), now, &state), Decision::Idle);
        }
    }

    #[test]
    fn calendar_waits_then_starts_on_time_then_waits_for_the_next() {
        let tz = moscow();
        let p = policy("ATwed0500,sun0300");
        let saturday = at("2026-11-21T12:00[Europe/Moscow]");
        let mut state = ScheduleState::new(saturday);
        let sunday = at("2026-11-22T03:00[Europe/Moscow]");
        assert_eq!(
            decide(&p, &tz, saturday, &state),
            Decision::WaitUntil(sunday)
        );
        // Woken a little late: still on time.
        let now = sunday
            .checked_add(SignedDuration::from_millis(300))
            .unwrap();
        assert_eq!(
            decide(&p, &tz, now, &state),
            Decision::Start {
                due: sunday,
                catch_up: false,
                missed: 0
            }
        );
        state.last_due = Some(sunday);
        assert_eq!(
            decide(&p, &tz, now, &state),
            Decision::WaitUntil(at("2026-11-25T05:00[Europe/Moscow]"))
        );
    }

    #[test]
    fn a_new_policy_does_not_catch_up_on_times_before_it() {
        let tz = moscow();
        // Set on a Thursday: last Wednesday's and Sunday's times are not
        // missed, they were before the policy.
        let since = at("2026-11-26T12:00[Europe/Moscow]");
        let state = ScheduleState::new(since);
        let p = policy("ATwed0500,sun0300");
        assert_eq!(
            decide(&p, &tz, since, &state),
            Decision::WaitUntil(at("2026-11-29T03:00[Europe/Moscow]"))
        );
        // A policy changed after the last run: counted from the change.
        let state = ScheduleState {
            last_due: Some(at("2026-11-01T03:00[Europe/Moscow]")),
            ..ScheduleState::new(since)
        };
        assert_eq!(
            decide(&p, &tz, since, &state),
            Decision::WaitUntil(at("2026-11-29T03:00[Europe/Moscow]"))
        );
    }

    #[test]
    fn an_occurrence_during_a_run_is_skipped_with_the_reason() {
        let tz = moscow();
        let p = policy("ATwed0500,sun0300");
        let wed = at("2026-11-25T05:00[Europe/Moscow]");
        let sun = at("2026-11-29T03:00[Europe/Moscow]");
        let mut state = ScheduleState {
            last_due: Some(wed),
            running: Some(Running::test(wed.checked_add(mins(1)).unwrap())),
            ..ScheduleState::new(at("2026-11-01T00:00Z"))
        };
        assert_eq!(decide(&p, &tz, wed, &state), Decision::WaitUntil(sun));
        let now = sun.checked_add(SignedDuration::from_secs(1)).unwrap();
        assert_eq!(
            decide(&p, &tz, now, &state),
            Decision::Skip {
                due: sun,
                reason: "skipped the 2026-11-29 03:00 Europe/Moscow occurrence: the previous \
                         test (started 2026-11-25 05:01 Europe/Moscow) still runs"
                    .into()
            }
        );
        // Recorded: on to the next one; the run ends, the next one starts.
        state.last_due = Some(sun);
        let next_wed = at("2026-12-02T05:00[Europe/Moscow]");
        assert_eq!(decide(&p, &tz, now, &state), Decision::WaitUntil(next_wed));
        state.running = None;
        state.last_finished = Some(now);
        assert!(matches!(
            decide(&p, &tz, next_wed, &state),
            Decision::Start { due, catch_up: false, missed: 0 } if due == next_wed
        ));
        // Another purpose names its run.
        let state = ScheduleState {
            last_due: Some(wed),
            running: Some(Running::new(wed, "archive copy")),
            ..ScheduleState::new(wed)
        };
        let Decision::Skip { reason, .. } = decide(&p, &tz, now, &state) else {
            panic!("skip expected")
        };
        assert!(
            reason.contains("the previous archive copy (started 2026-11-25 05:00 Europe/Moscow)")
        );
    }

    #[test]
    fn after_downtime_one_catch_up_run_then_the_future() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let p = policy("AT*0300");
        let day1 = at("2026-06-01T03:00[Europe/Berlin]");
        let mut state = ScheduleState {
            last_due: Some(day1),
            last_finished: Some(at("2026-06-01T04:10[Europe/Berlin]")),
            ..ScheduleState::new(at("2026-05-01T00:00Z"))
        };
        // Down from day 1 afternoon to day 4 noon: days 2, 3 and 4 passed.
        let now = at("2026-06-04T12:00[Europe/Berlin]");
        let newest = at("2026-06-04T03:00[Europe/Berlin]");
        assert_eq!(
            decide(&p, &tz, now, &state),
            Decision::Start {
                due: newest,
                catch_up: true,
                missed: 2
            }
        );
        state.last_due = Some(newest);
        state.running = Some(Running::test(now));
        assert_eq!(
            decide(&p, &tz, now, &state),
            Decision::WaitUntil(at("2026-06-05T03:00[Europe/Berlin]"))
        );

        // The same downtime with a run going on: one skip, and it says so.
        let state = ScheduleState {
            last_due: Some(day1),
            running: Some(Running::test(day1)),
            ..ScheduleState::new(at("2026-05-01T00:00Z"))
        };
        let Decision::Skip { due, reason } = decide(&p, &tz, now, &state) else {
            panic!("skip expected")
        };
        assert_eq!(due, newest);
        assert!(
            reason.ends_with(
                "still runs; 2 earlier occurrences since 2026-06-01 03:00 Europe/Berlin did not run either"
            ),
            "{reason}"
        );
    }

    #[test]
    fn missed_counting_stops_at_the_cap_and_still_finds_the_newest() {
        let p = policy("cron=* * * * *");
        let now = at("2026-06-04T12:00:30Z");
        let state = ScheduleState {
            last_due: Some(at("2026-06-01T00:00Z")),
            ..ScheduleState::new(at("2026-05-01T00:00Z"))
        };
        assert_eq!(
            decide(&p, &TimeZone::UTC, now, &state),
            Decision::Start {
                due: at("2026-06-04T12:00Z"),
                catch_up: false,
                missed: MISSED_COUNT_CAP
            }
        );
    }

    #[test]
    fn interval_counts_from_completion() {
        let tz = TimeZone::UTC;
        let p = policy("interval=3600");
        let t0 = at("2026-06-01T10:00Z");
        let mut state = ScheduleState::new(t0);
        // Never run: due when the policy took effect.
        assert_eq!(
            decide(&p, &tz, t0, &state),
            Decision::Start {
                due: t0,
                catch_up: false,
                missed: 0
            }
        );
        state.last_due = Some(t0);
        state.running = Some(Running::test(t0));
        // While it runs there is no due time yet.
        assert_eq!(
            decide(&p, &tz, t0.checked_add(mins(200)).unwrap(), &state),
            Decision::WaitForRun
        );
        // It took 30 minutes: the next is an hour after the end.
        let end = t0.checked_add(mins(30)).unwrap();
        state.running = None;
        state.last_finished = Some(end);
        let due = t0.checked_add(mins(90)).unwrap();
        assert_eq!(decide(&p, &tz, end, &state), Decision::WaitUntil(due));
        assert_eq!(
            decide(&p, &tz, due, &state),
            Decision::Start {
                due,
                catch_up: false,
                missed: 0
            }
        );
        // Controller down past it: late is a catch-up, still one run.
        assert_eq!(
            decide(&p, &tz, due.checked_add(mins(600)).unwrap(), &state),
            Decision::Start {
                due,
                catch_up: true,
                missed: 0
            }
        );
        // An attempt that never ran (no finish recorded) is retried after
        // one interval, not at once.
        let state = ScheduleState {
            last_due: Some(due),
            ..state
        };
        assert_eq!(
            decide(&p, &tz, due, &state),
            Decision::WaitUntil(due.checked_add(mins(60)).unwrap())
        );
    }

    #[test]
    fn describe_instant_names_the_zone_or_the_offset() {
        let t = at("2026-11-25T02:00Z");
        assert_eq!(
            describe_instant(t, &moscow()),
            "2026-11-25 05:00 Europe/Moscow"
        );
        let fixed = TimeZone::fixed(jiff::tz::offset(5));
        assert_eq!(describe_instant(t, &fixed), "2026-11-25 07:00 +05:00");
    }
}
