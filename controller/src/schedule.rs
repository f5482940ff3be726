//! When a set's tests (and archive copies, SPEC T9) run: the policy grammar,
//! the next occurrence in the set's time zone, the scheduler's decision, and
//! a clock the async driver sleeps on. Pure logic: no store, no agents.
//!
//! # The policy grammar (SPEC T1)
//!
//! One string per set and purpose (`test = "ATwed0500"` in TOML). Whitespace
//! around the whole string is ignored, nowhere else. Keywords, `AT`, day
//! names and signal names are case-insensitive; [`Policy`]'s `Display` prints
//! the canonical form, which parses back to the same value.
//!
//! | form | meaning | canonical form |
//! |---|---|---|
//! | `off` | nothing is scheduled (the default) | `off` |
//! | `interval=SECONDS` | the next run starts SECONDS (1 to 4294967295, digits only) after the previous one *finished*; never run: due at once | `interval=3600` |
//! | `AT<day><HHMM>[,<day><HHMM>...]` | weekly, at wall-clock times in the set's time zone; `<day>` is `mon tue wed thu fri sat sun`, or `*` for every day (an extension of the seed's syntax); `HH` 00-23, `MM` 00-59, always four digits | entries sorted, `*` first, then Monday to Sunday: `ATwed0500,sun0300` |
//! | `testdb` | daily at midnight, the same value as `AT*0000` | `AT*0000` |
//! | `signal` | a signal to the agent starts a run: SIGALRM | `signal=SIGALRM` |
//! | `signal=SIGUSR1`, `signal=SIG10`, `signal=10` | the same with another signal; only SIGALRM, SIGUSR1 and SIGUSR2 (see [`TestSignal`]) | `signal=SIGUSR1` |
//! | `cron=MIN HOUR DOM MON DOW` | five cron fields separated by spaces: numbers, `*`, lists `a,b`, ranges `a-b`, steps `*/n` and `a-b/n`; DOW 0-7 with 0 and 7 Sunday; no names | from the sets: `cron=*/15 5 * * 1-5` |
//!
//! Decisions worth knowing:
//! - There is no `ATdaily0300`: every day is `AT*0300`.
//! - The same occurrence twice is an error (`ATsun0300,sun0300`, or
//!   `AT*0300,sun0300` where `*` already covers Sunday).
//! - Cron: when both day fields are restricted a day matches either (as in
//!   cron); a field is "restricted" when it does not cover every value, so
//!   `1-31` is the same as `*`. Days that never come (`cron=0 0 30 2 *`) are
//!   an error. Overlapping list items are allowed.
//!
//! Errors ([`PolicyError`]) give the 0-based character position in the
//! trimmed string, what was expected and what was found:
//! `policy "ATwed25,sun0300": at character 5: expected an hour 00-23, found "25"`.
//!
//! # Time zones and DST
//!
//! Calendar policies are wall-clock times in the set's time zone. A time that
//! does not exist that day (the spring-forward gap: 02:30 in Europe/Berlin on
//! 2026-03-29) runs at the same wall time shifted by the gap (03:30 CEST); a
//! time that occurs twice (the autumn fold: 02:30 on 2026-10-25) runs once, at
//! the first (the earlier offset, CEST). This is jiff's `compatible`
//! disambiguation (RFC 5545's and Temporal's default).
//!
//! # Scheduling
//!
//! [`decide`] turns a policy, a time zone, the current time and the set's
//! [`ScheduleState`] into a [`Decision`]; [`next_decision`] sleeps on a
//! [`Clock`] until there is something to do. The caller records what it did
//! (`last_due`, `running`, `last_finished`) and asks again.

mod calendar;
mod clock;
mod cron;
mod decide;
mod grammar;
mod policy;

pub use clock::{Clock, next_decision};
pub use cron::Cron;
pub use decide::{
    Decision, MISSED_COUNT_CAP, ON_TIME, Running, ScheduleState, decide, describe_instant,
};
pub use grammar::{Found, PolicyError};
pub use policy::{Day, Policy, TestSignal, Weekly, WeeklyAt};
