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

/// What the parser found where it expected something else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The policy ended.
    End,
    /// This text (a word, a number, or one character).
    Text(String),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end of the policy"),
            Found::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// A policy that does not parse: where (0-based character position in the
/// trimmed policy), what was expected there, and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "policy {policy:?}: at character {position}: expected {expected}, found {found}{}",
    hint_suffix(.hint)
)]
pub struct PolicyError {
    /// The policy as parsed (trimmed).
    pub policy: String,
    pub position: usize,
    pub expected: String,
    pub found: Found,
    /// Why the found text does not do, or what to write instead.
    pub hint: Option<String>,
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

impl PolicyError {
    /// The policy with a caret line under the error, for a terminal:
    ///
    /// ```text
    /// ATwed25,sun0300
    ///      ^^
    /// ```
    pub fn pointer(&self) -> String {
        let width = match &self.found {
            Found::End => 1,
            Found::Text(t) => t.chars().count().max(1),
        };
        format!(
            "{}\n{}{}",
            self.policy,
            " ".repeat(self.position),
            "^".repeat(width)
        )
    }
}

const EXPECT_POLICY: &str = "a policy: off, interval=SECONDS, AT<day><HHMM>[,...], testdb, signal[=SIG...] or cron=MIN HOUR DOM MON DOW";
const EXPECT_SECONDS: &str = "a number of seconds from 1 to 4294967295 (digits only)";
const EXPECT_DAY: &str = "a day: mon, tue, wed, thu, fri, sat, sun or * (every day)";
const EXPECT_HHMM: &str = "a time HHMM (four digits, e.g. 0500)";
const EXPECT_SIGNAL: &str =
    "a signal for tests: SIGALRM, SIGUSR1 or SIGUSR2 (a name, SIG<n> or a number)";

/// The trimmed policy as characters, and the error maker. Shared with the
/// cron parser.
pub(super) struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text,
            chars: text.chars().collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.chars.len()
    }

    pub(super) fn at(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).copied()
    }

    pub(super) fn err(
        &self,
        position: usize,
        expected: impl Into<String>,
        found: Found,
    ) -> PolicyError {
        PolicyError {
            policy: self.text.to_string(),
            position,
            expected: expected.into(),
            found,
            hint: None,
        }
    }

    pub(super) fn err_hint(
        &self,
        position: usize,
        expected: impl Into<String>,
        found: Found,
        hint: impl Into<String>,
    ) -> PolicyError {
        PolicyError {
            hint: Some(hint.into()),
            ..self.err(position, expected, found)
        }
    }

    /// The longest run of characters from `pos` that satisfy `pred`, and
    /// where it ends.
    pub(super) fn run(&self, pos: usize, pred: impl Fn(char) -> bool) -> (String, usize) {
        let mut end = pos;
        while end < self.chars.len() && pred(self.chars[end]) {
            end += 1;
        }
        (self.chars[pos.min(end)..end].iter().collect(), end)
    }

    pub(super) fn slice(&self, start: usize, end: usize) -> String {
        self.chars[start..end].iter().collect()
    }

    /// What is at `pos`, for an error: a word or number, a run of
    /// whitespace, or one other character.
    pub(super) fn token(&self, pos: usize) -> Found {
        match self.at(pos) {
            None => Found::End,
            Some(c) if c.is_alphanumeric() => Found::Text(self.run(pos, char::is_alphanumeric).0),
            Some(c) if c.is_whitespace() => Found::Text(self.run(pos, char::is_whitespace).0),
            Some(c) => Found::Text(c.to_string()),
        }
    }

    /// The text from `pos` up to `stop` or the end.
    fn until(&self, pos: usize, stop: char) -> Found {
        let (text, _) = self.run(pos, |c| c != stop);
        if text.is_empty() {
            self.token(pos)
        } else {
            Found::Text(text)
        }
    }

    pub(super) fn end(&self, pos: usize) -> Result<(), PolicyError> {
        if pos == self.chars.len() {
            Ok(())
        } else {
            Err(self.err(pos, "the end of the policy", self.token(pos)))
        }
    }

    fn equals(&self, pos: usize, what: &str) -> Result<usize, PolicyError> {
        if self.at(pos) == Some('=') {
            Ok(pos + 1)
        } else {
            Err(self.err(pos, format!("\"=\" and {what}"), self.token(pos)))
        }
    }

    fn policy(&self) -> Result<Policy, PolicyError> {
        if self.chars.is_empty() {
            return Err(self.err(0, EXPECT_POLICY, Found::End));
        }
        if self.chars.len() >= 2
            && self.chars[..2]
                .iter()
                .collect::<String>()
                .eq_ignore_ascii_case("at")
        {
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
        let value: String = self.chars[pos..].iter().collect();
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
mod tests {
    use super::*;
    use jiff::civil::Weekday;

    fn parse(s: &str) -> Policy {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn error(s: &str) -> PolicyError {
        match s.parse::<Policy>() {
            Ok(p) => panic!("{s:?} should not parse, got {p}"),
            Err(e) => e,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse::<jiff::Zoned>()
            .map(|z| z.timestamp())
            .or_else(|_| s.parse::<Timestamp>())
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn every_form_parses_and_prints_canonically() {
        let cases = [
            ("off", "off"),
            ("  OFF\t", "off"),
            ("interval=3600", "interval=3600"),
            ("Interval=0060", "interval=60"),
            ("interval=4294967295", "interval=4294967295"),
            ("ATwed0500,sun0300", "ATwed0500,sun0300"),
            ("atSUN0300,Wed0500", "ATwed0500,sun0300"),
            ("ATmon0000", "ATmon0000"),
            ("AT*0300", "AT*0300"),
            ("ATfri2359,*0100,mon0000", "AT*0100,mon0000,fri2359"),
            ("testdb", "AT*0000"),
            ("TESTDB", "AT*0000"),
            ("signal", "signal=SIGALRM"),
            ("signal=SIGALRM", "signal=SIGALRM"),
            ("signal=SIGUSR1", "signal=SIGUSR1"),
            ("signal=sigusr2", "signal=SIGUSR2"),
            ("signal=USR1", "signal=SIGUSR1"),
            ("cron=0 5 * * 3", "cron=0 5 * * 3"),
            ("cron=*/15 5 * * 1-5", "cron=*/15 5 * * 1-5"),
            ("cron=0,30 1-3 1,15 */3 7", "cron=0,30 1-3 1,15 */3 0"),
            ("cron=0 0 1-31 * 0-7", "cron=0 0 * * *"),
            (
                "cron=5-59/10  2,3,4,9\t*/2 6-8 1,2,3",
                "cron=5-55/10 2-4,9 */2 6-8 1-3",
            ),
            ("cron=0,1 0 * * 1,2", "cron=0,1 0 * * 1,2"),
        ];
        for (input, canonical) in cases {
            let policy = parse(input);
            assert_eq!(policy.to_string(), canonical, "{input:?}");
            let again = parse(canonical);
            assert_eq!(again, policy, "{canonical:?} parses back to the same value");
            assert_eq!(again.to_string(), canonical);
        }
        assert_eq!(parse("testdb"), parse("AT*0000"));
        assert_eq!(parse("ATwed0500,sun0300"), parse("ATsun0300,wed0500"));
        assert_eq!(Policy::default(), Policy::Off);
    }

    #[test]
    fn signal_numbers_are_this_systems() {
        let n = Signal::SIGALRM as i32;
        assert_eq!(
            parse(&format!("signal=SIG{n}")),
            Policy::Signal(TestSignal::Alrm)
        );
        let n = Signal::SIGUSR1 as i32;
        assert_eq!(
            parse(&format!("signal={n}")),
            Policy::Signal(TestSignal::Usr1)
        );
        assert_eq!(TestSignal::Usr2.number(), Signal::SIGUSR2 as i32);
        assert_eq!(parse("signal").signal(), Some(TestSignal::Alrm));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(parse("signal=SIG14"), Policy::Signal(TestSignal::Alrm));
            assert_eq!(parse("signal=10"), Policy::Signal(TestSignal::Usr1));
        }
    }

    #[test]
    fn error_message_names_position_expectation_and_finding() {
        let e = error("ATwed25,sun0300");
        assert_eq!(
            e.to_string(),
            r#"policy "ATwed25,sun0300": at character 5: expected an hour 00-23, found "25""#
        );
        assert_eq!(e.pointer(), "ATwed25,sun0300\n     ^^");
        let e = error("  ATwed0500,sun  ");
        assert_eq!(
            e.to_string(),
            r#"policy "ATwed0500,sun": at character 13: expected a time HHMM (four digits, e.g. 0500), found the end of the policy"#
        );
        let e = error("signal=SIGKILL");
        assert_eq!(
            e.to_string(),
            r#"policy "signal=SIGKILL": at character 7: expected a signal for tests: SIGALRM, SIGUSR1 or SIGUSR2 (a name, SIG<n> or a number), found "SIGKILL"; SIGKILL cannot be caught"#
        );
    }

    #[test]
    fn invalid_policies_say_where_and_what() {
        use Found::End;
        let text = |s: &str| Found::Text(s.into());
        // (policy, position, expected starts with, found, hint contains)
        let cases: Vec<(&str, usize, &str, Found, Option<&str>)> = vec![
            ("", 0, "a policy: off, interval=SECONDS", End, None),
            ("   ", 0, "a policy: off", End, None),
            ("weekly", 0, "a policy: off", text("weekly"), None),
            ("daily", 0, "a policy", text("daily"), Some("AT*HHMM")),
            (
                "wed0500",
                0,
                "a policy",
                text("wed0500"),
                Some("start with AT"),
            ),
            ("off now", 3, "the end of the policy", text(" "), None),
            ("testdb=1", 6, "the end of the policy", text("="), None),
            ("ATwed25,sun0300", 5, "an hour 00-23", text("25"), None),
            ("ATwed0561", 7, "a minute 00-59", text("61"), None),
            ("ATwed2400", 5, "an hour 00-23", text("24"), None),
            ("ATwed0500,sun", 13, "a time HHMM", End, None),
            ("ATwed500", 5, "a time HHMM", text("500"), None),
            ("ATwed05000", 5, "a time HHMM", text("05000"), None),
            (
                "ATwed05:00",
                5,
                "a time HHMM",
                text("05:00"),
                Some("no colon"),
            ),
            ("AT", 2, "a day: mon, tue", End, None),
            ("ATxyz0500", 2, "a day: mon, tue", text("xyz"), None),
            ("ATdaily0300", 2, "a day", text("daily"), Some("AT*0300")),
            (
                "ATwednesday0500",
                2,
                "a day",
                text("wednesday"),
                Some("three letters: wed"),
            ),
            ("ATwed0500,sün0300", 10, "a day", text("sün"), None),
            ("ATwed0500,,sun0300", 10, "a day", text(","), None),
            ("ATwed0500,", 10, "a day", End, None),
            ("ATwed0500;sun0300", 9, "\",\" and another", text(";"), None),
            (
                "ATwed0500 ,sun0300",
                9,
                "\",\" and another",
                text(" "),
                None,
            ),
            (
                "ATsun0300,wed0500,SUN0300",
                18,
                "an occurrence not listed before",
                text("SUN0300"),
                Some("repeats \"sun0300\" at character 2"),
            ),
            (
                "AT*0300,sun0300",
                8,
                "an occurrence not listed before",
                text("sun0300"),
                Some("\"*0300\" at character 2 already runs every day at 03:00"),
            ),
            (
                "ATsun0300,*0300",
                10,
                "an occurrence not listed before",
                text("*0300"),
                Some("every day at 03:00, \"sun0300\" at character 2 included"),
            ),
            ("interval", 8, "\"=\" and a number of seconds", End, None),
            ("interval 60", 8, "\"=\"", text(" "), None),
            ("interval=", 9, "a number of seconds from 1", End, None),
            (
                "interval=0",
                9,
                "a number of seconds from 1",
                text("0"),
                None,
            ),
            ("interval=-5", 9, "a number of seconds", text("-5"), None),
            (
                "interval=4294967296",
                9,
                "a number of seconds",
                text("4294967296"),
                None,
            ),
            (
                "interval=1h",
                9,
                "a number of seconds",
                text("1h"),
                Some("1h is interval=3600"),
            ),
            (
                "interval=60 s",
                11,
                "the end of the policy",
                text(" "),
                None,
            ),
            ("signal=", 7, "a signal for tests", End, None),
            (
                "signal=SIGKILL",
                7,
                "a signal for tests",
                text("SIGKILL"),
                Some("SIGKILL cannot be caught"),
            ),
            (
                "signal=STOP",
                7,
                "a signal for tests",
                text("STOP"),
                Some("cannot be caught"),
            ),
            (
                "signal=SIGHUP",
                7,
                "a signal for tests",
                text("SIGHUP"),
                Some("reload"),
            ),
            (
                "signal=SIGTERM",
                7,
                "a signal for tests",
                text("SIGTERM"),
                Some("stops the agent"),
            ),
            (
                "signal=SIGSEGV",
                7,
                "a signal for tests",
                text("SIGSEGV"),
                Some("fault"),
            ),
            (
                "signal=SIGCHLD",
                7,
                "a signal for tests",
                text("SIGCHLD"),
                Some("system"),
            ),
            (
                "signal=SIGFOO",
                7,
                "a signal for tests",
                text("SIGFOO"),
                None,
            ),
            (
                "signal=99",
                7,
                "a signal for tests",
                text("99"),
                Some("no standard signal has number 99"),
            ),
            ("signal:SIGUSR1", 6, "\"=\" and a signal", text(":"), None),
            ("cron=61 5 * * *", 5, "a minute 0-59", text("61"), None),
            ("cron=0 24 * * *", 7, "an hour 0-23", text("24"), None),
            (
                "cron=0 5 0 * *",
                9,
                "a day of the month 1-31",
                text("0"),
                None,
            ),
            ("cron=0 5 * 13 *", 11, "a month 1-12", text("13"), None),
            (
                "cron=0 5 * * 8",
                13,
                "a day of the week 0-7",
                text("8"),
                None,
            ),
            (
                "cron=0 5 * *",
                12,
                "a space and the day-of-week field",
                End,
                Some("five fields"),
            ),
            (
                "cron=0 5 * * * *",
                15,
                "the end of the policy",
                text("*"),
                Some("five fields"),
            ),
            ("cron=0 5 * * 1x", 14, "\",\" or the end", text("x"), None),
            (
                "cron=0 5x * * 1",
                8,
                "\",\" or a space and the day-of-month field",
                text("x"),
                None,
            ),
            ("cron= 0 5 * * 1", 5, "a minute 0-59 (or *", text(" "), None),
            (
                "cron=0 5 * jan *",
                11,
                "a month 1-12 (or *",
                text("jan"),
                Some("numbers only"),
            ),
            (
                "cron=5-1 * * * *",
                7,
                "a number from 5 to 59",
                text("1"),
                None,
            ),
            (
                "cron=0/5 * * * *",
                6,
                "\",\", \"-\" or a space",
                text("/"),
                Some("needs a range"),
            ),
            ("cron=*/0 * * * *", 7, "a step 1-60", text("0"), None),
            ("cron=*/ * * * *", 7, "a step 1-60", text(" "), None),
            (
                "cron=0 0 1, * *",
                11,
                "a day of the month 1-31 (or *",
                text(" "),
                None,
            ),
            (
                "cron=0 0 30,31 2 *",
                9,
                "a day of the month that comes in the chosen months",
                text("30,31"),
                Some("never come"),
            ),
        ];
        for (input, position, expected, found, hint) in cases {
            let e = error(input);
            assert_eq!(e.position, position, "{input:?}: {e}");
            assert!(
                e.expected.starts_with(expected),
                "{input:?}: expected {:?} to start with {expected:?}",
                e.expected
            );
            assert_eq!(e.found, found, "{input:?}: {e}");
            match hint {
                None => assert_eq!(e.hint, None, "{input:?}: {e}"),
                Some(h) => assert!(
                    e.hint.as_deref().is_some_and(|eh| eh.contains(h)),
                    "{input:?}: hint {:?} should contain {h:?}",
                    e.hint
                ),
            }
            assert_eq!(e.policy, input.trim());
        }
    }

    #[test]
    fn cron_days_that_come_only_with_the_weekday_rule_are_fine() {
        // Day 30 of February never comes, but Mondays do (either matches).
        parse("cron=0 0 30 2 1");
        parse("cron=0 0 29 2 *");
    }

    #[test]
    fn serde_is_the_string() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Set {
            test: Policy,
            #[serde(default)]
            archive: Policy,
        }
        let set: Set = toml::from_str("test = \"ATwed0500\"").unwrap();
        assert_eq!(set.test, parse("ATwed0500"));
        assert_eq!(set.archive, Policy::Off);
        let json = serde_json::to_string(&Set {
            test: parse("testdb"),
            archive: parse("interval=60"),
        })
        .unwrap();
        assert_eq!(json, r#"{"test":"AT*0000","archive":"interval=60"}"#);
        let e = toml::from_str::<Set>("test = \"ATwed25\"").err().unwrap();
        assert!(
            e.to_string().contains(
                r#"policy "ATwed25": at character 5: expected an hour 00-23, found "25""#
            ),
            "{e}"
        );
    }

    #[test]
    fn weekly_next_runs_across_weeks() {
        let moscow = tz("Europe/Moscow");
        let policy = parse("ATwed0500,sun0300");
        let saturday = at("2026-11-21T12:00[Europe/Moscow]");
        assert_eq!(
            saturday.to_zoned(moscow.clone()).weekday(),
            Weekday::Saturday
        );
        let mut t = saturday;
        let mut seen = Vec::new();
        for _ in 0..5 {
            t = policy.next_due(&moscow, t, None).unwrap();
            seen.push(t);
        }
        let want: Vec<Timestamp> = [
            "2026-11-22T03:00[Europe/Moscow]",
            "2026-11-25T05:00[Europe/Moscow]",
            "2026-11-29T03:00[Europe/Moscow]",
            "2026-12-02T05:00[Europe/Moscow]",
            "2026-12-06T03:00[Europe/Moscow]",
        ]
        .iter()
        .map(|s| at(s))
        .collect();
        assert_eq!(seen, want);

        // From Saturday to next Wednesday; strictly after an occurrence.
        let wed = parse("ATwed0500");
        let first = wed.next_due(&moscow, saturday, None).unwrap();
        assert_eq!(first, at("2026-11-25T05:00[Europe/Moscow]"));
        assert_eq!(
            wed.next_due(&moscow, first, None),
            Some(at("2026-12-02T05:00[Europe/Moscow]"))
        );
        let just_before = first.checked_sub(SignedDuration::from_nanos(1)).unwrap();
        assert_eq!(wed.next_due(&moscow, just_before, None), Some(first));

        // The same wall time is another instant in another zone.
        let utc_wed = wed.next_due(&TimeZone::UTC, saturday, None).unwrap();
        assert_eq!(utc_wed, at("2026-11-25T05:00Z"));
    }

    #[test]
    fn weekly_next_runs_across_dst_in_berlin() {
        let berlin = tz("Europe/Berlin");
        let policy = parse("ATsun0230");
        // Spring forward, Sunday 2026-03-29: 02:00 CET -> 03:00 CEST. 02:30
        // does not exist: it runs at 03:30 CEST.
        let spring = policy
            .next_due(&berlin, at("2026-03-28T12:00[Europe/Berlin]"), None)
            .unwrap();
        assert_eq!(spring, at("2026-03-29T01:30Z"));
        assert_eq!(
            spring.to_zoned(berlin.clone()).to_string(),
            "2026-03-29T03:30:00+02:00[Europe/Berlin]"
        );
        assert_eq!(
            policy.next_due(&berlin, spring, None),
            Some(at("2026-04-05T00:30Z"))
        );
        // Fall back, Sunday 2026-10-25: 03:00 CEST -> 02:00 CET. 02:30
        // happens twice: it runs once, at the first (CEST).
        let autumn = policy
            .next_due(&berlin, at("2026-10-24T12:00[Europe/Berlin]"), None)
            .unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30Z"));
        assert_eq!(
            policy.next_due(&berlin, autumn, None),
            Some(at("2026-11-01T01:30Z")),
            "not again at the second 02:30 (01:30Z)"
        );
        // Daily 02:30 and 03:00 on the spring day: 03:00 CEST comes before
        // the shifted 02:30 (03:30 CEST).
        let daily = parse("AT*0230,*0300");
        let mut t = at("2026-03-29T00:00[Europe/Berlin]");
        let mut seen = Vec::new();
        for _ in 0..3 {
            t = daily.next_due(&berlin, t, None).unwrap();
            seen.push(t);
        }
        assert_eq!(
            seen,
            vec![
                at("2026-03-29T01:00Z"),
                at("2026-03-29T01:30Z"),
                at("2026-03-30T00:30Z")
            ]
        );
        // 02:00 (shifted to 03:00) and 03:00 are the same instant: once.
        let same = parse("AT*0200,*0300");
        let first = same
            .next_due(&berlin, at("2026-03-29T00:00[Europe/Berlin]"), None)
            .unwrap();
        assert_eq!(first, at("2026-03-29T01:00Z"));
        assert_eq!(
            same.next_due(&berlin, first, None),
            Some(at("2026-03-30T00:00Z"))
        );
    }

    #[test]
    fn interval_counts_from_completion_and_others_never_fall_due() {
        let utc = TimeZone::UTC;
        let policy = parse("interval=3600");
        let now = at("2026-05-01T12:00Z");
        assert_eq!(
            policy.next_due(&utc, now, None),
            Some(now),
            "never run: at once"
        );
        assert_eq!(
            policy.next_due(&utc, now, Some(at("2026-05-01T11:30Z"))),
            Some(at("2026-05-01T12:30Z"))
        );
        assert_eq!(
            policy.next_due(&utc, now, Some(at("2026-05-01T09:00Z"))),
            Some(at("2026-05-01T10:00Z")),
            "overdue: the due time, before `after`"
        );
        assert_eq!(policy.interval(), Some(SignedDuration::from_hours(1)));
        for p in ["off", "signal", "signal=SIGUSR2"] {
            assert_eq!(parse(p).next_due(&utc, now, Some(now)), None, "{p}");
            assert!(!parse(p).is_calendar());
        }
        assert!(parse("testdb").is_calendar());
    }

    #[test]
    fn testdb_is_midnight_every_day() {
        let helsinki = tz("Europe/Helsinki");
        let policy = parse("testdb");
        let t = policy
            .next_due(&helsinki, at("2026-07-01T23:59[Europe/Helsinki]"), None)
            .unwrap();
        assert_eq!(t, at("2026-07-02T00:00[Europe/Helsinki]"));
        assert_eq!(
            policy.next_due(&helsinki, t, None),
            Some(at("2026-07-03T00:00[Europe/Helsinki]"))
        );
    }
}
