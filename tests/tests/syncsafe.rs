//! Testing without hurting the set: a cold test of the only synchronous
//! standby is refused before anything stops (the primary's commits go on),
//! unless it is allowed; and a standby that just restarted is found by
//! asking the agents, not refused on the strength of an old heartbeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::pg::PgServer;
use tandem_tests::wait::wait_for;

/// What the refusal says (the member names are the harness's).
const REFUSAL: &str = "sync-s1 is the only synchronous standby of sync-p (synchronous_standby_names = '*'): stopping it for a cold test would make every commit on sync-p wait";

/// The standby's WAL receiver pid and its server's start time.
fn receiver(standby: &PgServer) -> String {
    standby
        .psql(
            "postgres",
            "select pid || ' ' || status || ' ' || pg_postmaster_start_time() from pg_stat_wal_receiver",
        )
        .unwrap()
}

/// Single-row inserts on `primary` until `stop`: how many committed and
/// the longest one took. A commit waiting for a stopped synchronous
/// standby is cancelled by the statement timeout (it would hang forever
/// otherwise), so a stall shows as a slow insert.
fn insert_stream(
    primary: PgServer,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    std::thread::spawn(move || {
        let (mut n, mut longest) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            primary
                .psql(
                    "postgres",
                    &format!("SET statement_timeout = '10s'; INSERT INTO stream VALUES ({n})"),
                )
                .unwrap();
            longest = longest.max(t0.elapsed());
            n += 1;
        }
        (n, longest)
    })
}

async fn rows(server: &PgServer, at_least: u64) {
    wait_for(
        &format!("{} to have {at_least} rows in stream", server.name),
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let n: u64 = server
                .psql("postgres", "select count(*) from stream")?
                .parse()?;
            Ok((n >= at_least).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_test_of_the_only_synchronous_standby_is_refused_unless_allowed() {
    let fleet = Fleet::start(FleetSpec::new(&[("sync", 1)])).await.unwrap();
    let pair = fleet.set("sync");
    let (primary, standby) = (&pair.primary, &pair.standbys[0]);
    primary
        .psql("postgres", "CREATE TABLE stream (i bigint)")
        .unwrap();
    primary
        .psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )
        .unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    wait_for(
        "the standby to be synchronous",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let s = primary.psql("postgres", "select sync_state from pg_stat_replication")?;
            Ok((s == "sync").then_some(()))
        },
    )
    .await
    .unwrap();
    let before = receiver(standby);

    // Commits go on while the refused test is asked for.
    let stop = Arc::new(AtomicBool::new(false));
    let stream = insert_stream(primary.clone(), stop.clone());
    rows(primary, 3).await;
    let run = fleet
        .ctl(&["testdb", "sync", "--mode", "cold", "--output", "json"])
        .unwrap();
    let seen: u64 = primary
        .psql("postgres", "select count(*) from stream")
        .unwrap()
        .parse()
        .unwrap();
    rows(primary, seen + 3).await;
    stop.store(true, Ordering::SeqCst);
    let (inserted, longest) = stream.join().unwrap();

    assert_eq!(run.code, 2, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "failed_to_run", "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with(REFUSAL), "{reason}");
    assert!(
        reason.ends_with("Test it online (--mode online), or allow it with --allow-commit-stall"),
        "{reason}"
    );
    // The standby never stopped: the same WAL receiver streams on.
    assert_eq!(receiver(standby), before);
    assert!(before.contains(" streaming "), "{before}");
    // Every insert committed, none waited, and the standby has them all.
    let on_primary: u64 = primary
        .psql("postgres", "select count(*) from stream")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(on_primary, inserted);
    assert!(
        longest < Duration::from_secs(8),
        "an insert took {longest:?}"
    );
    rows(standby, inserted).await;
    // Nothing reached the standby's agent.
    let agent_ops = std::fs::read_dir(fleet.agent_home("sync-s1").join("journal"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(agent_ops, 0, "the agent was sent an operation");

    // The set's policy says online: a request naming no mode follows it
    // and is not refused by the check (whether online copies are built on
    // this branch is not what this test looks at); one naming cold still is.
    let policy = fleet
        .ctl_as(
            "admin",
            &[
                "set", "policy", "sync", "--mode", "online", "--output", "json",
            ],
        )
        .unwrap();
    assert_eq!(policy.code, 0, "{policy:?}");
    assert_eq!(policy.json()["policies"]["mode"], "online");
    let cold = fleet
        .ctl(&["testdb", "sync", "--mode", "cold", "--output", "json"])
        .unwrap();
    assert_eq!(cold.code, 2, "{cold:?}");
    let reason = cold.json()["sets"][0]["verdict"]["reason"].clone();
    assert!(reason.as_str().unwrap().starts_with(REFUSAL), "{reason}");
    assert_eq!(receiver(standby), before);
    let online = fleet.ctl(&["testdb", "sync", "--output", "json"]).unwrap();
    let v = &online.json()["sets"][0]["verdict"];
    assert!(
        !v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("synchronous standby"),
        "{v:#}"
    );
    pair.wait_streaming(standby).await.unwrap();
    fleet.wait_heartbeat_streaming("sync-s1").await.unwrap();

    // Allowed, the cold test runs: the standby is stopped and started again.
    let receiver_now = receiver(standby);
    let allowed = fleet
        .ctl(&[
            "testdb",
            "sync",
            "--mode",
            "cold",
            "--allow-commit-stall",
            "--output",
            "json",
        ])
        .unwrap();
    assert_eq!(allowed.code, 0, "{allowed:?}\n{}", fleet.logs());
    let v = &allowed.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert_eq!(v["member"], "sync-s1");
    pair.wait_streaming(standby).await.unwrap();
    assert_ne!(
        receiver(standby),
        receiver_now,
        "the standby was not stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_just_restarted_is_tested_though_its_heartbeat_said_stopped() {
    // Heartbeats far apart, so the controller's facts stay stale for a
    // while on purpose.
    let mut spec = FleetSpec::new(&[("fresh", 1)]);
    spec.heartbeat_interval = Duration::from_secs(20);
    spec.offline_after = Duration::from_secs(120);
    let fleet = Fleet::start(spec).await.unwrap();
    let pair = fleet.set("fresh");
    let standby = &pair.standbys[0];

    standby.stop().unwrap();
    wait_for(
        "the controller's heartbeat facts to say fresh-s1 is stopped",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let agents = fleet.ctl(&["agents", "--output", "json"])?.json();
            Ok(agents["agents"]
                .as_array()
                .is_some_and(|all| {
                    all.iter()
                        .any(|a| a["name"] == "fresh-s1" && a["server_state"] == "stopped")
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
    standby.start().unwrap();
    pair.wait_streaming(standby).await.unwrap();

    let run = fleet.ctl(&["testdb", "fresh", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert_eq!(v["member"], "fresh-s1");
    // It was the live answer that found it, not a heartbeat in between.
    assert!(
        fleet
            .logs()
            .contains("no standby to test as the last heartbeats say; asking the set's agents"),
        "{}",
        fleet.logs()
    );
}
