//! Wall time for the scheduler, on tokio's clock so tests can pause it.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::time::Instant;

use super::decide::{Decision, ScheduleState, decide};
use super::policy::Policy;

/// The longest single sleep of the system clock: the wall clock can jump
/// (NTP steps, suspend) while a monotonic sleep goes on, so a long wait is
/// cut into naps and the wall clock looked at again after each.
const MAX_NAP: Duration = Duration::from_secs(60);

/// Where the scheduler reads the time and sleeps.
///
/// - [`Clock::system`]: the real wall clock; sleeps are tokio sleeps of at
///   most a minute each, re-checked against the wall clock.
/// - [`Clock::new`]: `start` plus the tokio time elapsed since the clock
///   was made. Under `tokio::time::pause()` (or
///   `#[tokio::test(start_paused = true)]`), `advance` and auto-advance
///   move it, so tests of days of scheduling run at once.
#[derive(Clone, Debug)]
pub struct Clock {
    base: Option<(Timestamp, Instant)>,
}

impl Clock {
    /// Wall time `start` now, then moving with tokio's clock.
    pub fn new(start: Timestamp) -> Clock {
        Clock {
            base: Some((start, Instant::now())),
        }
    }

    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { base: None }
    }

    pub fn now(&self) -> Timestamp {
        match self.base {
            None => Timestamp::now(),
            Some((start, at)) => {
                let elapsed = Instant::now().saturating_duration_since(at);
                start.checked_add(elapsed).unwrap_or(Timestamp::MAX)
            }
        }
    }

    /// Returns once [`now`](Self::now) is at or after `t` (at once if it
    /// already is).
    pub async fn sleep_until(&self, t: Timestamp) {
        loop {
            let now = self.now();
            if now >= t {
                return;
            }
            let left = Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO);
            let nap = match self.base {
                None => left.min(MAX_NAP),
                Some(_) => left,
            };
            // At least 1 ms: tokio's timer granularity; `now` is re-read.
            tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
        }
    }
}

/// Sleeps until something is to be done and returns it: only
/// [`Decision::Start`] or [`Decision::Skip`]. With nothing scheduled by time
/// ([`Decision::Idle`], [`Decision::WaitForRun`]) it never returns: race it
/// against whatever changes the state (a run finished, the policy changed,
/// shutdown), then record the decision and call again:
///
/// ```text
/// loop {
///     tokio::select! {
///         d = next_decision(&clock, &policy, &tz, &state) => { /* start or record the skip; update state */ }
///         _ = changed.notified() => { /* reload policy and state */ }
///         _ = shutdown.cancelled() => break,
///     }
/// }
/// ```
pub async fn next_decision(
    clock: &Clock,
    policy: &Policy,
    tz: &TimeZone,
    state: &ScheduleState,
) -> Decision {
    loop {
        match decide(policy, tz, clock.now(), state) {
            Decision::WaitUntil(t) => clock.sleep_until(t).await,
            Decision::Idle | Decision::WaitForRun => std::future::pending().await,
            d @ (Decision::Start { .. } | Decision::Skip { .. }) => return d,
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::schedule::Running;

    fn at(s: &str) -> Timestamp {
        s.parse::<jiff::Zoned>()
            .map(|z| z.timestamp())
            .or_else(|_| s.parse::<Timestamp>())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Equal to the millisecond: tokio's timer wakes on whole ticks.
    fn assert_near(got: Timestamp, want: Timestamp) {
        let off = got.duration_since(want);
        assert!(
            off >= SignedDuration::ZERO && off < SignedDuration::from_millis(2),
            "woke at {got}, due {want}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_tokio_time() {
        let start = at("2026-11-21T12:00Z");
        let clock = Clock::new(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), at("2026-11-21T12:01:30Z"));
        // A time in the past: at once.
        let before = clock.now();
        clock.sleep_until(start).await;
        assert_eq!(clock.now(), before);
        clock.sleep_until(at("2026-11-22T00:00Z")).await;
        assert_near(clock.now(), at("2026-11-22T00:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_sleeps_until_the_due_time() {
        let tz = TimeZone::get("Europe/Moscow").unwrap();
        let saturday = at("2026-11-21T12:00[Europe/Moscow]");
        let wednesday = at("2026-11-25T05:00[Europe/Moscow]");
        let clock = Clock::new(saturday);
        let policy: Policy = "ATwed0500".parse().unwrap();
        let state = ScheduleState::new(saturday);

        let driver = {
            let (clock, tz, policy, state) =
                (clock.clone(), tz.clone(), policy.clone(), state.clone());
            tokio::spawn(async move { next_decision(&clock, &policy, &tz, &state).await })
        };
        // Three and a half days later it still sleeps.
        tokio::time::sleep(Duration::from_secs(3 * 86400 + 12 * 3600)).await;
        assert!(!driver.is_finished());
        let decision = driver.await.unwrap();
        assert_eq!(
            decision,
            Decision::Start {
                due: wednesday,
                catch_up: false,
                missed: 0
            }
        );
        assert_near(clock.now(), wednesday);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_run_follows_the_previous_runs_end_not_its_start() {
        let tz = TimeZone::UTC;
        let t0 = at("2026-06-01T10:00Z");
        let clock = Clock::new(t0);
        let policy: Policy = "interval=3600".parse().unwrap();
        let mut state = ScheduleState::new(t0);

        // Never run: at once.
        let Decision::Start { due, .. } = next_decision(&clock, &policy, &tz, &state).await else {
            panic!("start expected")
        };
        assert_eq!((due, clock.now()), (t0, t0));
        state.last_due = Some(due);
        state.running = Some(Running::test(clock.now()));

        // The test takes 30 minutes; meanwhile nothing is decided (an hour
        // after the start passes too).
        let waiting = tokio::time::timeout(
            Duration::from_secs(30 * 60),
            next_decision(&clock, &policy, &tz, &state),
        )
        .await;
        assert!(waiting.is_err(), "nothing to do while the run goes on");
        state.running = None;
        state.last_finished = Some(clock.now());
        let finished = clock.now();
        assert_near(
            finished,
            t0.checked_add(SignedDuration::from_mins(30)).unwrap(),
        );

        let decision = next_decision(&clock, &policy, &tz, &state).await;
        let want = finished.checked_add(SignedDuration::from_hours(1)).unwrap();
        assert_eq!(
            decision,
            Decision::Start {
                due: want,
                catch_up: false,
                missed: 0
            }
        );
        assert_near(clock.now(), want);
        assert!(clock.now() > t0.checked_add(SignedDuration::from_mins(89)).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_decides() {
        let clock = Clock::new(at("2026-06-01T10:00Z"));
        let state = ScheduleState::new(clock.now());
        let r = tokio::time::timeout(
            Duration::from_secs(365 * 86400),
            next_decision(&clock, &Policy::Off, &TimeZone::UTC, &state),
        )
        .await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn the_system_clock_is_the_wall_clock() {
        let clock = Clock::system();
        let before = Timestamp::now();
        let now = clock.now();
        assert!(now >= before);
        clock.sleep_until(now).await;
        let soon = Timestamp::now()
            .checked_add(SignedDuration::from_millis(20))
            .unwrap();
        clock.sleep_until(soon).await;
        assert!(Timestamp::now() >= soon);
    }
}
