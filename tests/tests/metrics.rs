//! Prometheus metrics of a real fleet (SPEC O3): after one `tandemctl
//! testdb`, the controller and the agents export the verdict, its time,
//! durations per step, bytes copied and the queue; every metric the shipped
//! Grafana dashboards query is among them; verdict times survive a
//! controller restart; and a metrics address in use stops a daemon at start
//! with a clear error. Two controllers on a PostgreSQL store say which one
//! leads and under which lease generation, and count a takeover; every
//! metric the shipped alert rules query is among theirs. Their store URI is
//! the kind deploy/ha recommends for a Patroni cluster: every server,
//! a standby first, and `target_session_attrs=read-write`.

use std::collections::BTreeSet;
use std::time::Duration;

use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::pg::PgPair;
use tandem_tests::procs::{bin_path, workspace_root};
use tandem_tests::prom::{Sample, dashboard_metrics, parse, query_metrics, scrape};
use tandem_tests::wait::wait_for;

fn samples(fleet: &Fleet, who: &str) -> Vec<Sample> {
    let addr = &fleet.metrics[who];
    let text = scrape(addr).unwrap_or_else(|e| panic!("scrape {who} at {addr}: {e}"));
    parse(&text).unwrap_or_else(|e| panic!("{who}: {e}\n{text}"))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

/// Start `bin` with `args`; it must exit within 30 s. Returns (code, stderr).
async fn exits(bin: &str, args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin_path(bin).unwrap())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{bin} {args:?} did not exit within 30 s"))
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_exports_what_the_dashboards_query_and_keeps_verdict_times_across_a_restart() {
    let mut spec = FleetSpec::new(&[("mu", 1)]);
    spec.metrics = true;
    let mut fleet = Fleet::start(spec).await.unwrap();

    let run = fleet.ctl(&["testdb", "mu", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let verdict = &run.json()["sets"][0]["verdict"];
    assert_eq!(verdict["kind"], "clean");
    let at: jiff::Timestamp = verdict["at"].as_str().unwrap().parse().unwrap();
    let at = at.as_millisecond() as f64 / 1000.0;

    // The controller: the set's verdict, its time, the test's duration, agents online.
    let c = samples(&fleet, "controller");
    let set = [("set", "mu")];
    assert_eq!(
        value(
            &c,
            "tandem_set_verdict",
            &[("set", "mu"), ("verdict", "clean")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &c,
            "tandem_set_verdict",
            &[("set", "mu"), ("verdict", "never_tested")]
        ),
        Some(0.0)
    );
    let ts = value(&c, "tandem_set_verdict_timestamp_seconds", &set).unwrap();
    assert!((ts - at).abs() < 0.002, "gauge {ts}, verdict at {at}");
    assert_eq!(
        value(&c, "tandem_test_duration_seconds_count", &set),
        Some(1.0)
    );
    assert_eq!(
        value(
            &c,
            "tandem_verdicts_total",
            &[("set", "mu"), ("verdict", "clean")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&c, "tandem_fleet_queue_length", &[]), Some(0.0));
    assert_eq!(value(&c, "tandem_fleet_running_operations", &[]), Some(0.0));
    assert_eq!(
        value(&c, "tandem_fleet_queue_wait_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&c, "tandem_agents", &[("state", "online")]),
        Some(2.0)
    );
    // On an SQLite store the one controller leads, with no lease.
    assert_eq!(value(&c, "tandem_leader_leading", &[]), Some(1.0));
    assert_eq!(value(&c, "tandem_leader_generation", &[]), Some(0.0));
    assert_eq!(
        value(&c, "tandem_leader_lease_renewed_timestamp_seconds", &[]),
        None
    );
    // The controller's own certificate: made a year ahead at the fleet's start.
    let days = value(&c, "tandem_tls_cert_days_left", &[]).unwrap();
    assert!(days > 364.0 && days <= 365.0, "{days}");

    // The standby's agent: each of the testdb steps once, bytes copied, downtime.
    let s = samples(&fleet, "mu-s1");
    for step in tandem_tests::TESTDB_STEPS {
        assert_eq!(
            value(
                &s,
                "tandem_agent_step_duration_seconds_count",
                &[
                    ("kind", "testdb"),
                    ("step", step),
                    ("set", "mu"),
                    ("member", "mu-s1")
                ]
            ),
            Some(1.0),
            "step {step}"
        );
    }
    assert_eq!(
        value(
            &s,
            "tandem_agent_operations_total",
            &[("kind", "testdb"), ("result", "clean")]
        ),
        Some(1.0)
    );
    let copied = value(&s, "tandem_agent_copied_bytes_total", &[]).unwrap();
    assert!(copied > 1_000_000.0, "copied {copied} bytes");
    assert_eq!(
        value(&s, "tandem_agent_standby_downtime_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(value(&s, "tandem_agent_operations_running", &[]), Some(0.0));

    // Every metric a shipped dashboard queries is exported by someone.
    let mut exported: BTreeSet<String> = c.iter().map(|s| s.name.clone()).collect();
    for who in ["mu-p", "mu-s1"] {
        exported.extend(samples(&fleet, who).into_iter().map(|s| s.name));
    }
    let dir = workspace_root().join("deploy/observability/grafana/dashboards");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            dashboards += 1;
            let queried = dashboard_metrics(&path).unwrap();
            assert!(!queried.is_empty(), "{} queries no metric", path.display());
            let missing: Vec<&String> = queried.difference(&exported).collect();
            assert!(
                missing.is_empty(),
                "{} queries metrics no Tandem process exports: {missing:?}\nexported: {exported:?}",
                path.display()
            );
        }
    }
    assert!(dashboards >= 2, "dashboards in {}", dir.display());

    // A metrics address in use: a clear error and exit 2, for both daemons.
    let controller_config = fleet.controller_config.to_str().unwrap().to_owned();
    let taken = fleet.metrics["controller"].clone();
    let (code, err) = exits(
        "tandem-controller",
        &["--config", &controller_config, "--metrics-listen", &taken],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "cannot serve metrics on {taken} (--metrics-listen)"
        )),
        "{err}"
    );
    let agent_config = fleet.agents["mu-s1"].config.to_str().unwrap().to_owned();
    let (code, err) = exits("tandem-agent", &["--config", &agent_config, "run"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "cannot serve metrics on {} (field `metrics_listen`)",
            fleet.metrics["mu-s1"]
        )),
        "{err}"
    );

    // After a restart the verdict's time comes from the store, unchanged.
    fleet.kill_controller();
    fleet.start_controller().unwrap();
    let addr = fleet.metrics["controller"].clone();
    let after = wait_for(
        "the restarted controller's metrics",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move { Ok(scrape(&addr).ok().and_then(|t| parse(&t).ok())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    assert_eq!(
        value(
            &after,
            "tandem_set_verdict",
            &[("set", "mu"), ("verdict", "clean")]
        ),
        Some(1.0)
    );
    let ts2 = value(&after, "tandem_set_verdict_timestamp_seconds", &set).unwrap();
    assert!(
        (ts2 - at).abs() < 0.002,
        "after restart {ts2}, verdict at {at}"
    );
    assert!(value(&after, "tandem_set_clean_timestamp_seconds", &set).is_some());
}

const LEASE: Duration = Duration::from_secs(3);

/// The leader metrics of every controller that answers: (key in
/// `Fleet::metrics`, its samples).
fn controllers_samples(fleet: &Fleet, keys: &[&str]) -> Vec<(String, Vec<Sample>)> {
    keys.iter()
        .filter_map(|k| {
            let text = scrape(&fleet.metrics[*k]).ok()?;
            Some(((*k).to_owned(), parse(&text).ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_a_postgresql_store_export_who_leads_and_count_a_takeover() {
    let store = PgPair::create("mstore", 1).await.unwrap();
    store
        .primary
        .psql("postgres", "CREATE DATABASE tandem")
        .unwrap();
    let mut spec = FleetSpec::new(&[("ml", 0)]);
    spec.metrics = true;
    // Both servers, the standby first: the controllers must write to the
    // primary, as they must find a Patroni cluster's leader. (Socket
    // directories go in `host` parameters, one each.)
    let (standby, primary) = (&store.standbys[0], &store.primary);
    spec.store = Some(format!(
        "postgresql://postgres@/tandem?host={}&host={}&port={},{}&target_session_attrs=read-write&connect_timeout=3",
        standby.socket_dir.display(),
        primary.socket_dir.display(),
        standby.port,
        primary.port
    ));
    spec.more_controllers = 1;
    spec.lease = LEASE;
    let mut fleet = Fleet::start(spec).await.unwrap();
    let keys = ["controller", "controller-2"];
    let gauge = |s: &[Sample], name: &str| value(s, name, &[]);

    // One leads, the other follows and has read its lease: same generation.
    let both = wait_for(
        "one controller to lead and the other to follow under its lease",
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            let both = controllers_samples(&fleet, &keys);
            let leading: Vec<Option<f64>> = both
                .iter()
                .map(|(_, s)| gauge(s, "tandem_leader_leading"))
                .collect();
            let generations: BTreeSet<String> = both
                .iter()
                .map(|(_, s)| format!("{:?}", gauge(s, "tandem_leader_generation")))
                .collect();
            let settled = both.len() == 2
                && leading.contains(&Some(1.0))
                && leading.contains(&Some(0.0))
                && generations.len() == 1;
            Ok(settled.then_some(both))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let (leader, follower) = if gauge(&both[0].1, "tandem_leader_leading") == Some(1.0) {
        (&both[0], &both[1])
    } else {
        (&both[1], &both[0])
    };
    let g = gauge(&leader.1, "tandem_leader_generation").unwrap();
    assert!(g >= 1.0, "a lease generation: {g}");
    for (who, s, acquired) in [(&leader.0, &leader.1, 1.0), (&follower.0, &follower.1, 0.0)] {
        assert_eq!(
            gauge(s, "tandem_leader_acquired_total"),
            Some(acquired),
            "{who}"
        );
        assert_eq!(gauge(s, "tandem_leader_changes_total"), Some(0.0), "{who}");
        // The lease as each knows it: renewed within a lease, running out
        // at most a lease after that.
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        let renewed = gauge(s, "tandem_leader_lease_renewed_timestamp_seconds").unwrap();
        let expires = gauge(s, "tandem_leader_lease_expires_timestamp_seconds").unwrap();
        let lease = LEASE.as_secs_f64();
        assert!(now - renewed < lease, "{who}: renewed {renewed}, now {now}");
        assert!(
            expires > renewed && expires - renewed <= lease + 0.5,
            "{who}: renewed {renewed}, expires {expires}"
        );
    }

    // The leader is killed: the other takes over under the next generation.
    let (gone, survivor) = (leader.0.clone(), follower.0.clone());
    if gone == "controller" {
        fleet.kill_controller();
    } else {
        fleet.more_controllers[0].proc.take().unwrap().kill();
    }
    let after = wait_for(
        &format!("{survivor} to lead"),
        LEASE * 3,
        Duration::from_millis(100),
        || async {
            let s = controllers_samples(&fleet, &[survivor.as_str()]);
            Ok(s.into_iter()
                .next()
                .map(|(_, s)| s)
                .filter(|s| gauge(s, "tandem_leader_leading") == Some(1.0)))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    assert_eq!(
        gauge(&after, "tandem_leader_generation"),
        Some(g + 1.0),
        "a takeover is a new lease generation"
    );
    assert_eq!(gauge(&after, "tandem_leader_acquired_total"), Some(1.0));
    assert_eq!(gauge(&after, "tandem_leader_changes_total"), Some(1.0));

    // Every metric the shipped alert rules query is exported.
    let exported: BTreeSet<String> = after.iter().map(|s| s.name.clone()).collect();
    let dir = workspace_root().join("deploy/observability/prometheus/rules");
    let mut rules = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let queried = query_metrics(&doc);
        assert!(!queried.is_empty(), "{} queries no metric", path.display());
        let missing: Vec<&String> = queried.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{} queries metrics a leading controller does not export: {missing:?}",
            path.display()
        );
        rules += 1;
    }
    assert!(rules >= 1, "rules in {}", dir.display());
}
