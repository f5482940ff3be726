//! From wall-clock occurrences to instants in a time zone, DST included.

use jiff::civil::DateTime;
use jiff::civil::DateTimeRound;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{RoundMode, SignedDuration, Timestamp, Unit};

/// A calendar schedule seen as a set of wall-clock minutes.
pub(crate) trait CivilSchedule {
    /// The first matching wall-clock minute at or after `from` (which is
    /// whole minutes), or `None` if none comes within the schedule's
    /// horizon.
    fn next_civil(&self, from: DateTime) -> Option<DateTime>;
}

/// Upper bound on the candidates one search looks at (a day of minutes,
/// with room to spare): only reached by a schedule that matches every
/// minute across a whole-day gap.
const SEARCH_LIMIT: usize = 4000;

/// The first instant strictly after `after` at which `schedule` occurs in
/// `tz`, with jiff's `compatible` disambiguation: a wall time in a gap runs
/// shifted forward by the gap, a wall time in a fold runs at its first
/// occurrence.
///
/// Wall times map to instants in order except those in a gap, which are
/// shifted past later wall times. So the search starts early enough to see
/// gap times that land after `after` (up to a 25 h gap before it), keeps the
/// smallest instant seen, and stops at the first non-gap candidate after
/// `after`: no later wall time can map before it.
pub(crate) fn next_instant<S: CivilSchedule + ?Sized>(
    schedule: &S,
    tz: &TimeZone,
    after: Timestamp,
) -> Option<Timestamp> {
    let here = tz.to_offset(after).to_datetime(after);
    let earlier = after
        .checked_sub(SignedDuration::from_hours(25))
        .map(|t| tz.to_offset(t).to_datetime(after))
        .unwrap_or(here);
    let mut from = ceil_minute(here.min(earlier))?;
    let mut best: Option<Timestamp> = None;
    for _ in 0..SEARCH_LIMIT {
        let Some(civil) = schedule.next_civil(from) else {
            break;
        };
        let ambiguous = tz.to_ambiguous_timestamp(civil);
        let Ok(ts) = ambiguous.compatible() else {
            break;
        };
        if ts > after {
            best = Some(best.map_or(ts, |b| b.min(ts)));
            if !matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. }) {
                break;
            }
        }
        let Ok(next) = civil.checked_add(SignedDuration::from_mins(1)) else {
            break;
        };
        from = next;
    }
    best
}

/// The last instant at or before `at` at which `schedule` occurs, found by
/// searching forward from ever wider windows before `at` (an hour, a day, 8
/// days, 400 days, 9 years). Used only to jump over a long run of missed
/// occurrences.
pub(crate) fn last_instant_at_or_before<S: CivilSchedule + ?Sized>(
    schedule: &S,
    tz: &TimeZone,
    at: Timestamp,
) -> Option<Timestamp> {
    for hours in [1, 24, 8 * 24, 400 * 24, 9 * 366 * 24] {
        let Ok(start) = at.checked_sub(SignedDuration::from_hours(hours)) else {
            continue;
        };
        let Some(mut last) = next_instant(schedule, tz, start).filter(|t| *t <= at) else {
            continue;
        };
        // The previous, narrower window found nothing, so this walks over
        // one stretch of matching days: in practice at most a day of
        // minutes.
        for _ in 0..2000 {
            match next_instant(schedule, tz, last) {
                Some(next) if next <= at => last = next,
                _ => return Some(last),
            }
        }
        return Some(last);
    }
    None
}

/// `dt` rounded up to a whole minute.
fn ceil_minute(dt: DateTime) -> Option<DateTime> {
    dt.round(
        DateTimeRound::new()
            .smallest(Unit::Minute)
            .mode(RoundMode::Ceil),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use jiff::civil::{Date, date};

    use super::*;
    use crate::schedule::Policy;

    /// Every instant `policy` occurs at between `from` and `to` (civil
    /// dates in `tz`), by walking the wall-clock matches one by one.
    fn brute_force(policy: &Policy, tz: &TimeZone, from: Date, to: Date) -> BTreeSet<Timestamp> {
        let schedule = policy.calendar().unwrap();
        let mut out = BTreeSet::new();
        let mut civil = from.at(0, 0, 0, 0);
        let end = to.at(0, 0, 0, 0);
        while let Some(c) = schedule.next_civil(civil) {
            if c >= end {
                break;
            }
            out.insert(tz.to_ambiguous_timestamp(c).compatible().unwrap());
            civil = c.checked_add(SignedDuration::from_mins(1)).unwrap();
        }
        out
    }

    /// `next_instant` agrees with the brute-force set for queries every 7
    /// minutes and at, just before and just after every occurrence.
    #[test]
    fn next_instant_matches_brute_force_around_transitions() {
        let policies = [
            "AT*0000,*0030,*0100,*0130,*0200,*0230,*0300,*2330",
            "ATsat2330,sun0000,sun0015,sun0200,sun0230",
            "cron=*/10 * * * *",
            "cron=15,45 0-3,23 * * *",
            "cron=* 0-2 * * *",
            "cron=0 10 * * *",
        ];
        let windows = [
            ("Europe/Berlin", date(2026, 3, 26), date(2026, 4, 2)),
            ("Europe/Berlin", date(2026, 10, 22), date(2026, 10, 29)),
            ("America/Santiago", date(2026, 4, 2), date(2026, 4, 8)),
            ("America/Santiago", date(2026, 9, 3), date(2026, 9, 9)),
            ("Australia/Lord_Howe", date(2026, 4, 2), date(2026, 4, 8)),
            ("Australia/Lord_Howe", date(2026, 10, 1), date(2026, 10, 7)),
            ("Pacific/Apia", date(2011, 12, 27), date(2012, 1, 3)),
        ];
        for policy in policies {
            let policy: Policy = policy.parse().unwrap();
            for (zone, from, to) in windows {
                let tz = TimeZone::get(zone).unwrap();
                let all = brute_force(&policy, &tz, from, to);
                let lo = tz
                    .to_ambiguous_timestamp(from.at(0, 0, 0, 0))
                    .compatible()
                    .unwrap()
                    .checked_add(SignedDuration::from_hours(36))
                    .unwrap();
                let hi = *all.last().unwrap();
                let mut queries: Vec<Timestamp> = Vec::new();
                let mut q = lo;
                while q < hi {
                    queries.push(q);
                    q = q.checked_add(SignedDuration::from_mins(7)).unwrap();
                }
                for t in all.range(lo..) {
                    let ns = SignedDuration::from_nanos(1);
                    queries.extend([t.checked_sub(ns).unwrap(), *t, t.checked_add(ns).unwrap()]);
                }
                for after in queries {
                    let Some(want) = all.range(after..).find(|t| **t > after) else {
                        continue;
                    };
                    let got = next_instant(schedule_of(&policy), &tz, after);
                    assert_eq!(
                        got,
                        Some(*want),
                        "{policy} in {zone} after {}",
                        after.to_zoned(tz.clone())
                    );
                }
                // And the last occurrence at or before a time.
                for t in all.range(lo..).step_by(7) {
                    assert_eq!(
                        last_instant_at_or_before(schedule_of(&policy), &tz, *t),
                        Some(*t),
                        "{policy} in {zone} at {}",
                        t.to_zoned(tz.clone())
                    );
                }
            }
        }
    }

    fn schedule_of(policy: &Policy) -> &dyn CivilSchedule {
        policy.calendar().unwrap()
    }

    #[test]
    fn a_day_that_never_comes_twice_is_found_years_ahead() {
        let policy: Policy = "cron=0 0 29 2 *".parse().unwrap();
        let utc = TimeZone::UTC;
        let after: Timestamp = "2026-03-01T00:00Z".parse().unwrap();
        let next = policy.next_due(&utc, after, None).unwrap();
        assert_eq!(next, "2028-02-29T00:00Z".parse().unwrap());
        // 2100 is no leap year: from 2096 to 2104.
        let after: Timestamp = "2096-03-01T00:00Z".parse().unwrap();
        let next = policy.next_due(&utc, after, None).unwrap();
        assert_eq!(next, "2104-02-29T00:00Z".parse().unwrap());
    }
}
