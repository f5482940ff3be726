//! Recurring maintenance windows (`[windows.<set>]` in controller.toml):
//! at each occurrence of a set's window schedule, a set whose last verdict
//! found errors gets its repair, if the plan's expected downtime fits in
//! what is left of the window. A set with nothing to repair is left alone.
//!
//! Where each set stands is in the store (`schedules`, purpose `window`),
//! so a restarted controller neither forgets an occurrence that is still
//! open nor runs old ones: only the newest occurrence is looked at, and only
//! while its window lasts.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Maintenance;
use crate::config::WindowConfig;
use crate::schedule::Policy;
use crate::store::{ScheduleRow, StoreError};
use crate::verdicts::VerdictKind;

/// Look again at least this often (config changes need a restart; the
/// inventory and verdicts change at any time).
const LOOK_EVERY: Duration = Duration::from_secs(30);
/// Bound on occurrences walked over after a long downtime.
const MAX_WALK: usize = 10_000;

/// The newest occurrence of `schedule` in `(from, now]`, and the first one
/// after `now`.
pub fn occurrences(
    schedule: &Policy,
    tz: &TimeZone,
    from: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let mut due = None;
    let mut t = from;
    for _ in 0..MAX_WALK {
        match schedule.next_due(tz, t, None) {
            Some(n) if n <= now => {
                due = Some(n);
                t = n;
            }
            next => return (due, next),
        }
    }
    (due, None)
}

/// What is left of a window that opened at `due` and lasts `duration`.
pub fn left(due: Timestamp, duration: Duration, now: Timestamp) -> Option<f64> {
    let end = due
        .checked_add(SignedDuration::try_from(duration).ok()?)
        .ok()?;
    let s = end.duration_since(now).as_secs_f64();
    (s > 0.0).then_some(s)
}

impl Maintenance {
    /// Open the recurring windows as they fall due, until `shutdown`.
    pub async fn recurring_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = match self.recurring_tick(Timestamp::now()).await {
                Ok(next) => next
                    .map(|t| {
                        Duration::try_from(t.duration_since(Timestamp::now()))
                            .unwrap_or_default()
                            .min(LOOK_EVERY)
                    })
                    .unwrap_or(LOOK_EVERY),
                Err(e) => {
                    warn!(error = %e, "recurring maintenance windows: cannot read the store");
                    LOOK_EVERY
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Act on every set's window that is due at `now`; returns when the
    /// next one falls due.
    pub async fn recurring_tick(
        self: &Arc<Self>,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let cfg = self.inventory.config();
        let tz = cfg.tz();
        let mut next_all: Option<Timestamp> = None;
        for (set, w) in &cfg.windows {
            if self.inventory.set(set).is_none() {
                continue;
            }
            if let Some(n) = self.recurring_set(set, w, &tz, now).await? {
                next_all = Some(next_all.map_or(n, |m| m.min(n)));
            }
        }
        Ok(next_all)
    }

    async fn recurring_set(
        self: &Arc<Self>,
        set: &str,
        w: &WindowConfig,
        tz: &TimeZone,
        now: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let canonical = w.schedule.to_string();
        let row = match self.store.schedule(set.to_owned(), "window").await? {
            Some(r) if r.policy == canonical => r,
            // New or changed: occurrences from now on.
            _ => {
                let r = ScheduleRow {
                    policy: canonical.clone(),
                    since: now,
                    last_due: None,
                };
                self.store
                    .put_schedule(set.to_owned(), "window", r.clone())
                    .await?;
                r
            }
        };
        let (due, next) = occurrences(&w.schedule, tz, row.last_due.unwrap_or(row.since), now);
        let Some(due) = due else { return Ok(next) };
        self.store
            .put_schedule(
                set.to_owned(),
                "window",
                ScheduleRow {
                    last_due: Some(due),
                    ..row
                },
            )
            .await?;
        let Some(left) = left(due, w.duration, now) else {
            return Ok(next);
        };
        let repair_needed = self
            .store
            .verdicts(set.to_owned(), 1)
            .await?
            .first()
            .is_some_and(|v| v.kind == VerdictKind::Errors);
        if !repair_needed {
            info!(set, "recurring maintenance window: nothing to repair");
            return Ok(next);
        }
        let reason = format!(
            "recurring window `{canonical}` for {}",
            humantime::format_duration(w.duration)
        );
        match self
            .open_within(set, &reason, false, "schedule", String::new(), Some(left))
            .await
        {
            Ok(win) => info!(set, window = %win.id, "recurring maintenance window opened"),
            Err(e) => {
                self.event(set, format!("{reason}: the repair was not started: {e}"))
                    .await;
            }
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_newest_occurrence_since_the_last_one_handled_is_due() {
        let p: Policy = "AT*0300".parse().unwrap();
        let tz = TimeZone::UTC;
        // Three days down: one occurrence is due (the newest), not three.
        let (due, next) = occurrences(
            &p,
            &tz,
            t("2026-11-18T04:00:00Z"),
            t("2026-11-21T03:30:00Z"),
        );
        assert_eq!(due, Some(t("2026-11-21T03:00:00Z")));
        assert_eq!(next, Some(t("2026-11-22T03:00:00Z")));
        // Handled: nothing until the next one.
        let (due, next) = occurrences(
            &p,
            &tz,
            t("2026-11-21T03:00:00Z"),
            t("2026-11-21T03:30:00Z"),
        );
        assert_eq!(due, None);
        assert_eq!(next, Some(t("2026-11-22T03:00:00Z")));
    }

    #[test]
    fn what_is_left_of_a_window() {
        let due = t("2026-11-21T03:00:00Z");
        let two_hours = Duration::from_secs(7200);
        assert_eq!(
            left(due, two_hours, t("2026-11-21T03:30:00Z")),
            Some(5400.0)
        );
        assert_eq!(left(due, two_hours, t("2026-11-21T05:00:00Z")), None);
    }
}
