//! `cron=MIN HOUR DOM MON DOW`: five numeric cron fields.

use std::fmt;

use jiff::civil::{Date, DateTime};

use super::calendar::CivilSchedule;
use super::grammar::{Found, Parser, PolicyError};

/// A five-field cron line as the sets of values each field allows.
///
/// A day matches when its month matches and: both day fields restricted
/// (not covering every value) → either matches, as in cron; otherwise both
/// match. Unlike Vixie cron, "restricted" is about the values, not the
/// spelling: `1-31` is the same as `*`, and `*/2` is restricted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cron {
    /// Bit n: minute n (0-59).
    minutes: u64,
    /// Bit n: hour n (0-23).
    hours: u64,
    /// Bit n: day of the month n (1-31).
    doms: u64,
    /// Bit n: month n (1-12).
    months: u64,
    /// Bit n: weekday n, 0 = Sunday (0-6).
    dows: u64,
}

struct Field {
    name: &'static str,
    expect: &'static str,
    min: u8,
    max: u8,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        expect: "a minute 0-59",
        min: 0,
        max: 59,
    },
    Field {
        name: "hour",
        expect: "an hour 0-23",
        min: 0,
        max: 23,
    },
    Field {
        name: "day-of-month",
        expect: "a day of the month 1-31",
        min: 1,
        max: 31,
    },
    Field {
        name: "month",
        expect: "a month 1-12",
        min: 1,
        max: 12,
    },
    Field {
        name: "day-of-week",
        expect: "a day of the week 0-7 (0 and 7 are Sunday)",
        min: 0,
        max: 7,
    },
];

const FIVE_FIELDS: &str = "cron= takes five fields: minute hour day-of-month month day-of-week";

fn all(min: u8, max: u8) -> u64 {
    (min..=max).fold(0, |bits, v| bits | 1 << v)
}

/// Long enough for any date that comes at all (Feb 29 skips 8 years
/// around 2100).
const HORIZON_DAYS: usize = 9 * 366;

const MONTH_DAYS: [u8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let bit = |set: u64, v: i8| set & (1 << v) != 0;
        if !bit(self.months, date.month()) {
            return false;
        }
        let dom = bit(self.doms, date.day());
        let dow = bit(self.dows, date.weekday().to_sunday_zero_offset());
        if self.doms != all(1, 31) && self.dows != all(0, 6) {
            dom || dow
        } else {
            dom && dow
        }
    }
}

impl CivilSchedule for Cron {
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let (mut hour0, mut minute0) = (from.hour(), from.minute());
        for _ in 0..HORIZON_DAYS {
            if self.day_matches(date) {
                for hour in hour0..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let start = if hour == hour0 { minute0 } else { 0 };
                    if let Some(minute) = (start..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.at(hour, minute, 0, 0));
                    }
                }
            }
            date = date.tomorrow().ok()?;
            (hour0, minute0) = (0, 0);
        }
        None
    }
}

/// Parses the five fields from `pos` (just after `cron=`) to the end.
pub(super) fn parse(p: &Parser<'_>, mut pos: usize) -> Result<Cron, PolicyError> {
    let mut sets = [0u64; 5];
    let mut spans = [(0usize, 0usize); 5];
    for (i, field) in FIELDS.iter().enumerate() {
        let start = pos;
        let (bits, end) = parse_field(p, pos, field)?;
        sets[i] = bits;
        spans[i] = (start, end);
        pos = end;
        let next = FIELDS.get(i + 1);
        match (p.at(pos), next) {
            (None, None) => {}
            (None, Some(next)) => {
                return Err(p.err_hint(
                    pos,
                    format!("a space and the {} field", next.name),
                    Found::End,
                    FIVE_FIELDS,
                ));
            }
            (Some(' ' | '\t'), Some(_)) => pos = p.run(pos, |c| c == ' ' || c == '\t').1,
            (Some(' ' | '\t'), None) => {
                let (_, word) = p.run(pos, |c| c == ' ' || c == '\t');
                return Err(p.err_hint(word, "the end of the policy", p.token(word), FIVE_FIELDS));
            }
            (Some(_), Some(next)) => {
                return Err(p.err(
                    pos,
                    format!("\",\" or a space and the {} field", next.name),
                    p.token(pos),
                ));
            }
            (Some(_), None) => {
                return Err(p.err(pos, "\",\" or the end of the policy", p.token(pos)));
            }
        }
    }
    let [minutes, hours, doms, months, dows] = sets;
    // 7 is Sunday too.
    let dows = (dows | dows >> 7) & all(0, 6);
    let cron = Cron {
        minutes,
        hours,
        doms,
        months,
        dows,
    };
    let comes = (1..=12u8).any(|m| {
        months & (1 << m) != 0 && (1..=MONTH_DAYS[m as usize - 1]).any(|d| doms & (1 << d) != 0)
    });
    if !comes && dows == all(0, 6) {
        let (start, end) = spans[2];
        return Err(p.err_hint(
            start,
            "a day of the month that comes in the chosen months",
            Found::Text(p.slice(start, end)),
            "these days never come (e.g. day 30 of February), so this would never run",
        ));
    }
    Ok(cron)
}

fn parse_field(p: &Parser<'_>, mut pos: usize, f: &Field) -> Result<(u64, usize), PolicyError> {
    let mut bits = 0;
    loop {
        let (item, end) = parse_item(p, pos, f)?;
        bits |= item;
        pos = end;
        if p.at(pos) != Some(',') {
            return Ok((bits, pos));
        }
        pos += 1;
    }
}

fn parse_item(p: &Parser<'_>, pos: usize, f: &Field) -> Result<(u64, usize), PolicyError> {
    let (lo, hi, mut pos, range) = if p.at(pos) == Some('*') {
        (f.min, f.max, pos + 1, true)
    } else {
        let (lo, end) = number(p, pos, f)?;
        if p.at(end) == Some('-') {
            let (hi, end2) = number(p, end + 1, f)?;
            if hi < lo {
                return Err(p.err(
                    end + 1,
                    format!("a number from {lo} to {} (the end of the range)", f.max),
                    Found::Text(hi.to_string()),
                ));
            }
            (lo, hi, end2, true)
        } else {
            (lo, lo, end, false)
        }
    };
    let mut step = 1;
    if p.at(pos) == Some('/') {
        if !range {
            return Err(p.err_hint(
                pos,
                format!(
                    "\",\", \"-\" or a space and the next field after the {}",
                    f.name
                ),
                Found::Text("/".into()),
                "a step needs a range: */n or a-b/n",
            ));
        }
        let width = f.max - f.min + 1;
        let expect = format!("a step 1-{width}");
        let (digits, end) = p.run(pos + 1, |c| c.is_ascii_digit());
        if digits.is_empty() {
            return Err(p.err(pos + 1, expect, p.token(pos + 1)));
        }
        step = match digits.parse::<u8>() {
            Ok(s) if (1..=width).contains(&s) => s,
            _ => return Err(p.err(pos + 1, expect, Found::Text(digits))),
        };
        pos = end;
    }
    let bits = (lo..=hi)
        .step_by(step.into())
        .fold(0, |bits, v| bits | 1 << v);
    Ok((bits, pos))
}

fn number(p: &Parser<'_>, pos: usize, f: &Field) -> Result<(u8, usize), PolicyError> {
    let (digits, end) = p.run(pos, |c| c.is_ascii_digit());
    if digits.is_empty() {
        let found = p.token(pos);
        let expect = format!("{} (or *, a-b, */n, a-b/n)", f.expect);
        return Err(match &found {
            Found::Text(t) if t.starts_with(|c: char| c.is_alphabetic()) => p.err_hint(
                pos,
                expect,
                found.clone(),
                "cron fields take numbers only: months 1-12, days of the week 0-7 (0 and 7 are Sunday)",
            ),
            _ => p.err(pos, expect, found),
        });
    }
    match digits.parse::<u8>() {
        Ok(n) if (f.min..=f.max).contains(&n) => Ok((n, end)),
        _ => Err(p.err(pos, f.expect, Found::Text(digits))),
    }
}

/// One field from its set: `*`, `*/n`, `a-b/n`, or a list of values and
/// ranges. Parses back to the same set.
fn render(bits: u64, min: u8, max: u8) -> String {
    let values: Vec<u8> = (min..=max).filter(|v| bits & (1 << v) != 0).collect();
    if values.len() == usize::from(max - min + 1) {
        return "*".into();
    }
    if values.len() >= 3 {
        let step = values[1] - values[0];
        if step > 1 && values.windows(2).all(|w| w[1] - w[0] == step) {
            let (first, last) = (values[0], values[values.len() - 1]);
            return if first == min && last + step > max {
                format!("*/{step}")
            } else {
                format!("{first}-{last}/{step}")
            };
        }
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}-{}", values[i], values[j]));
        } else {
            parts.extend(values[i..=j].iter().map(u8::to_string));
        }
        i = j + 1;
    }
    parts.join(",")
}

impl fmt::Display for Cron {
    /// The five fields, canonical.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            render(self.minutes, 0, 59),
            render(self.hours, 0, 23),
            render(self.doms, 1, 31),
            render(self.months, 1, 12),
            render(self.dows, 0, 6)
        )
    }
}
