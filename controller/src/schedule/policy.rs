//! The policy value, its grammar (parse, canonical `Display`, serde as a
//! string) and its next occurrence. The grammar is documented on the
//! `schedule` module.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use jiff::civil::{DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use nix::sys::signal::Signal;

use super::calendar::{self, CivilSchedule};
use super::cron::{self, Cron};
use super::grammar::{Found, Parser, PolicyError};

/// When a set's tests (or archive copies) run. See the `schedule` module for
/// the grammar; `Display` prints the canonical form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Nothing is scheduled.
    #[default]
    Off,
    /// The next run is due this many seconds after the previous one
    /// finished; due at once when there was none.
    Interval(NonZeroU32),
    /// Weekly (or daily, `*`) wall-clock times in the set's time zone;
    /// `testdb` is `AT*0000`.
    Weekly(Weekly),
    /// A signal to the agent starts a run; nothing is scheduled by time.
    Signal(TestSignal),
    /// A five-field cron line in the set's time zone.
    Cron(Cron),
}

impl Policy {
    /// When the policy next falls due.
    ///
    /// - Calendar policies (`AT...`, `testdb`, `cron=`): the first
    ///   occurrence strictly after `after`, in `tz` (DST: see the module
    ///   docs); `last_finished` is not used.
    /// - `interval=`: `last_finished + interval`, which may be before
    ///   `after` (overdue: run now); never finished: `after` (due at once).
    /// - `off`, `signal`: `None`, nothing falls due by itself.
    ///
    /// `None` also when the answer would be past the year 9999.
    pub fn next_due(
        &self,
        tz: &TimeZone,
        after: Timestamp,
        last_finished: Option<Timestamp>,
    ) -> Option<Timestamp> {
        match self {
            Policy::Off | Policy::Signal(_) => None,
            Policy::Interval(_) => match last_finished {
                None => Some(after),
                Some(finished) => finished.checked_add(self.interval()?).ok(),
            },
            Policy::Weekly(w) => calendar::next_instant(w, tz, after),
            Policy::Cron(c) => calendar::next_instant(c, tz, after),
        }
    }

    /// The interval of an `interval=` policy.
    pub fn interval(&self) -> Option<SignedDuration> {
        match self {
            Policy::Interval(secs) => Some(SignedDuration::from_secs(secs.get().into())),
            _ => None,
        }
    }

    /// The signal of a `signal` policy.
    pub fn signal(&self) -> Option<TestSignal> {
        match self {
            Policy::Signal(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether runs fall due at wall-clock times (`AT...`, `testdb`, `cron=`).
    pub fn is_calendar(&self) -> bool {
        self.calendar().is_some()
    }

    pub(crate) fn calendar(&self) -> Option<&dyn CivilSchedule> {
        match self {
            Policy::Weekly(w) => Some(w),
            Policy::Cron(c) => Some(c),
            _ => None,
        }
    }
}

/// The entries of an `AT...` policy: never empty, sorted (`*` first, then
/// Monday to Sunday, then by time), no occurrence twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Weekly {
    at: Vec<WeeklyAt>,
}

impl Weekly {
    /// Daily at midnight: what a bare `testdb` means.
    pub fn testdb() -> Weekly {
        Weekly {
            at: vec![WeeklyAt {
                day: Day::Every,
                hour: 0,
                minute: 0,
            }],
        }
    }

    pub fn entries(&self) -> &[WeeklyAt] {
        &self.at
    }
}

/// One `<day><HHMM>` of an `AT...` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WeeklyAt {
    pub day: Day,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
}

/// The day of a `<day><HHMM>`; `Every` is `*`. Ordered as printed: `*`,
/// then Monday to Sunday.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Day {
    Every,
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

const DAYS: [(&str, Day); 7] = [
    ("mon", Day::Mon),
    ("tue", Day::Tue),
    ("wed", Day::Wed),
    ("thu", Day::Thu),
    ("fri", Day::Fri),
    ("sat", Day::Sat),
    ("sun", Day::Sun),
];

impl Day {
    pub fn as_str(self) -> &'static str {
        match self {
            Day::Every => "*",
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
            Day::Sun => "sun",
        }
    }

    pub fn matches(self, weekday: Weekday) -> bool {
        match self {
            Day::Every => true,
            Day::Mon => weekday == Weekday::Monday,
            Day::Tue => weekday == Weekday::Tuesday,
            Day::Wed => weekday == Weekday::Wednesday,
            Day::Thu => weekday == Weekday::Thursday,
            Day::Fri => weekday == Weekday::Friday,
            Day::Sat => weekday == Weekday::Saturday,
            Day::Sun => weekday == Weekday::Sunday,
        }
    }
}

impl CivilSchedule for Weekly {
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let from_time = (from.hour(), from.minute());
        // Today (from `from`'s time on) and the next seven days.
        for i in 0..8 {
            let weekday = date.weekday();
            let first = self
                .at
                .iter()
                .filter(|e| e.day.matches(weekday))
                .map(|e| (e.hour as i8, e.minute as i8))
                .filter(|t| i > 0 || *t >= from_time)
                .min();
            if let Some((hour, minute)) = first {
                return Some(date.at(hour, minute, 0, 0));
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The signals a `signal` policy may name.
///
/// Only signals that mean nothing else to the agent or the system: SIGALRM
/// (the seed's default), SIGUSR1 and SIGUSR2. Refused, and the error says
/// why: SIGKILL and SIGSTOP (cannot be caught); SIGTERM, SIGINT, SIGQUIT
/// (they stop the agent); SIGHUP (hangup, and "reload" to daemons and
/// service managers: `systemctl reload` sends it, and a test stops the
/// standby, so it must not start by accident); fault signals (SIGSEGV,
/// SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS); the ones the system
/// sends for its own reasons (SIGCHLD, SIGPIPE, SIGWINCH, SIGTSTP, ...).
/// Real-time signals are not offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TestSignal {
    #[default]
    Alrm,
    Usr1,
    Usr2,
}

impl TestSignal {
    pub fn signal(self) -> Signal {
        match self {
            TestSignal::Alrm => Signal::SIGALRM,
            TestSignal::Usr1 => Signal::SIGUSR1,
            TestSignal::Usr2 => Signal::SIGUSR2,
        }
    }

    /// `SIGALRM`, `SIGUSR1`, `SIGUSR2`.
    pub fn name(self) -> &'static str {
        self.signal().as_str()
    }

    /// The signal's number on this system (Linux: 14, 10, 12).
    pub fn number(self) -> i32 {
        self.signal() as i32
    }

    fn from_signal(signal: Signal) -> Result<TestSignal, &'static str> {
        match signal {
            Signal::SIGALRM => Ok(TestSignal::Alrm),
            Signal::SIGUSR1 => Ok(TestSignal::Usr1),
            Signal::SIGUSR2 => Ok(TestSignal::Usr2),
            Signal::SIGKILL | Signal::SIGSTOP => Err("cannot be caught"),
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => Err("stops the agent"),
            Signal::SIGHUP => Err(
                "means hangup, and reload to daemons (systemctl reload sends it): too easy to send by accident for something that stops the standby",
            ),
            Signal::SIGSEGV
            | Signal::SIGBUS
            | Signal::SIGFPE
            | Signal::SIGILL
            | Signal::SIGABRT
            | Signal::SIGTRAP
            | Signal::SIGSYS => Err("reports a fault in the process"),
            _ => Err("is sent by the system for its own purposes"),
        }
    }
}

impl fmt::Display for TestSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const EXPECT_POLICY: &str = "a policy: off, interval=SECONDS, AT<day><HHMM>[,...], testdb, signal[=SIG...] or cron=MIN HOUR DOM MON DOW";
const EXPECT_SECONDS: &str = "a number of seconds from 1 to 4294967295 (digits only)";
const EXPECT_DAY: &str = "a day: mon, tue, wed, thu, fri, sat, sun or * (every day)";
const EXPECT_HHMM: &str = "a time HHMM (four digits, e.g. 0500)";
const EXPECT_SIGNAL: &str =
    "a signal for tests: SIGALRM, SIGUSR1 or SIGUSR2 (a name, SIG<n> or a number)";

/// The policy forms, parsed on the shared [`Parser`].
impl Parser<'_> {
    fn policy(&self) -> Result<Policy, PolicyError> {
        if self.len() == 0 {
            return Err(self.err(0, EXPECT_POLICY, Found::End));
        }
        if self.len() >= 2 && self.slice(0, 2).eq_ignore_ascii_case("at") {
            return self.weekly(2).map(Policy::Weekly);
        }
        let (word, end) = self.run(0, |c| c.is_ascii_alphabetic());
        match word.to_ascii_lowercase().as_str() {
            "off" => self.end(end).map(|()| Policy::Off),
            "testdb" => self.end(end).map(|()| Policy::Weekly(Weekly::testdb())),
            "interval" => self.interval(self.equals(end, "a number of seconds")?),
            "signal" if end == self.len() => Ok(Policy::Signal(TestSignal::Alrm)),
            "signal" => self.signal(self.equals(end, "a signal")?),
            "cron" => Ok(Policy::Cron(cron::parse(
                self,
                self.equals(end, "five cron fields")?,
            )?)),
            lower => {
                let found = self.token(0);
                let hint = if DAYS.iter().any(|(d, _)| lower.starts_with(d)) {
                    Some("weekly times start with AT, e.g. ATwed0500")
                } else if lower == "daily" {
                    Some("every day at a time is AT*HHMM, e.g. AT*0300")
                } else {
                    None
                };
                Err(match hint {
                    Some(h) => self.err_hint(0, EXPECT_POLICY, found, h),
                    None => self.err(0, EXPECT_POLICY, found),
                })
            }
        }
    }

    fn interval(&self, pos: usize) -> Result<Policy, PolicyError> {
        let (value, end) = self.run(pos, |c| {
            c.is_alphanumeric() || matches!(c, '.' | '-' | '+' | '_')
        });
        if value.is_empty() {
            return Err(self.err(pos, EXPECT_SECONDS, self.token(pos)));
        }
        let secs = value
            .chars()
            .all(|c| c.is_ascii_digit())
            .then(|| value.parse::<u32>().ok())
            .flatten()
            .and_then(NonZeroU32::new);
        let Some(secs) = secs else {
            let found = Found::Text(value.clone());
            return Err(match humantime::parse_duration(&value) {
                Ok(d) if d.as_secs() > 0 && !value.chars().all(|c| c.is_ascii_digit()) => self
                    .err_hint(
                        pos,
                        EXPECT_SECONDS,
                        found,
                        format!("{value} is interval={}", d.as_secs()),
                    ),
                _ => self.err(pos, EXPECT_SECONDS, found),
            });
        };
        self.end(end)?;
        Ok(Policy::Interval(secs))
    }

    fn signal(&self, pos: usize) -> Result<Policy, PolicyError> {
        let value = self.slice(pos, self.len());
        if value.is_empty() {
            return Err(self.err(pos, EXPECT_SIGNAL, Found::End));
        }
        let upper = value.to_ascii_uppercase();
        let rest = upper.strip_prefix("SIG").unwrap_or(&upper);
        let found = || Found::Text(value.clone());
        let (signal, number) = if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()) {
            let Some(signal) = rest
                .parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
            else {
                return Err(self.err_hint(
                    pos,
                    EXPECT_SIGNAL,
                    found(),
                    format!("no standard signal has number {rest}"),
                ));
            };
            (signal, Some(rest))
        } else {
            match Signal::from_str(&format!("SIG{rest}")) {
                Ok(signal) => (signal, None),
                Err(_) => return Err(self.err(pos, EXPECT_SIGNAL, found())),
            }
        };
        match TestSignal::from_signal(signal) {
            Ok(s) => Ok(Policy::Signal(s)),
            Err(why) => {
                let name = signal.as_str();
                let hint = match number {
                    Some(n) => format!("signal {n} is {name}, which {why}"),
                    None => format!("{name} {why}"),
                };
                Err(self.err_hint(pos, EXPECT_SIGNAL, found(), hint))
            }
        }
    }

    fn weekly(&self, mut pos: usize) -> Result<Weekly, PolicyError> {
        let mut seen: Vec<(WeeklyAt, usize, String)> = Vec::new();
        loop {
            let start = pos;
            let (day, after_day) = self.day(pos)?;
            let (hour, minute, end) = self.hhmm(after_day)?;
            let at = WeeklyAt { day, hour, minute };
            let text = self.slice(start, end);
            for (prev, prev_pos, prev_text) in &seen {
                if (prev.hour, prev.minute) != (hour, minute)
                    || (prev.day != day && prev.day != Day::Every && day != Day::Every)
                {
                    continue;
                }
                let why = if prev.day == day {
                    format!("it repeats {prev_text:?} at character {prev_pos}")
                } else if prev.day == Day::Every {
                    format!(
                        "{prev_text:?} at character {prev_pos} already runs every day at {hour:02}:{minute:02}"
                    )
                } else {
                    format!(
                        "it runs every day at {hour:02}:{minute:02}, {prev_text:?} at character {prev_pos} included"
                    )
                };
                return Err(self.err_hint(
                    start,
                    "an occurrence not listed before",
                    Found::Text(text),
                    why,
                ));
            }
            seen.push((at, start, text));
            pos = end;
            match self.at(pos) {
                None => break,
                Some(',') => pos += 1,
                Some(_) => {
                    return Err(self.err(
                        pos,
                        "\",\" and another <day><HHMM>, or the end of the policy",
                        self.token(pos),
                    ));
                }
            }
        }
        let mut at: Vec<WeeklyAt> = seen.into_iter().map(|(at, _, _)| at).collect();
        at.sort();
        Ok(Weekly { at })
    }

    fn day(&self, pos: usize) -> Result<(Day, usize), PolicyError> {
        if self.at(pos) == Some('*') {
            return Ok((Day::Every, pos + 1));
        }
        let (word, end) = self.run(pos, char::is_alphabetic);
        let lower = word.to_lowercase();
        if let Some((_, day)) = DAYS.iter().find(|(name, _)| *name == lower) {
            return Ok((*day, end));
        }
        let found = if word.is_empty() {
            self.token(pos)
        } else {
            Found::Text(word)
        };
        let hint = if matches!(lower.as_str(), "daily" | "day" | "everyday" | "every") {
            Some("every day is *, e.g. AT*0300".to_string())
        } else {
            DAYS.iter()
                .find(|(name, _)| lower.len() > 3 && lower.starts_with(name))
                .map(|(name, _)| format!("days are three letters: {name}"))
        };
        Err(match hint {
            Some(h) => self.err_hint(pos, EXPECT_DAY, found, h),
            None => self.err(pos, EXPECT_DAY, found),
        })
    }

    fn hhmm(&self, pos: usize) -> Result<(u8, u8, usize), PolicyError> {
        let (digits, end) = self.run(pos, |c| c.is_ascii_digit());
        let two = |from: usize| digits[from..from + 2].parse::<u8>().unwrap_or(u8::MAX);
        // Two or four digits start with the hour; other lengths are no
        // time at all ("500" is not hour 50).
        if matches!(digits.len(), 2 | 4) && two(0) > 23 {
            return Err(self.err(pos, "an hour 00-23", Found::Text(digits[..2].into())));
        }
        if digits.len() != 4 {
            let found = self.until(pos, ',');
            return Err(match &found {
                Found::Text(t) if t.contains(':') => {
                    self.err_hint(pos, EXPECT_HHMM, found.clone(), "no colon: 0500")
                }
                _ => self.err(pos, EXPECT_HHMM, found),
            });
        }
        if two(2) > 59 {
            return Err(self.err(pos + 2, "a minute 00-59", Found::Text(digits[2..].into())));
        }
        Ok((two(0), two(2), end))
    }
}
impl FromStr for Policy {
    type Err = PolicyError;

    /// Parses a policy; whitespace around it is ignored.
    fn from_str(s: &str) -> Result<Policy, PolicyError> {
        Parser::new(s.trim()).policy()
    }
}

impl fmt::Display for Weekly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AT")?;
        for (i, e) in self.at.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}{:02}{:02}", e.day.as_str(), e.hour, e.minute)?;
        }
        Ok(())
    }
}

impl fmt::Display for Policy {
    /// The canonical form; parsing it gives the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Off => f.write_str("off"),
            Policy::Interval(secs) => write!(f, "interval={secs}"),
            Policy::Weekly(w) => w.fmt(f),
            Policy::Signal(s) => write!(f, "signal={s}"),
            Policy::Cron(c) => write!(f, "cron={c}"),
        }
    }
}

impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
