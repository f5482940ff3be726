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
        e.to_string()
            .contains(r#"policy "ATwed25": at character 5: expected an hour 00-23, found "25""#),
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
