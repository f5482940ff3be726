//! Fleet runs end to end (SPEC C2, C3, C5, T7, O1): two real PostgreSQL
//! sets, the real controller, agents and tandemctl.

use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use tandem_proto::pb;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::on_both_stores;
use tandem_tests::procs::bin_path;
use tandem_tests::store::StoreKind;
use tandem_tests::wait::wait_for;

fn ts(v: &Value) -> Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

/// Each set's verdict in a `testdb --output json` document, by set name.
fn verdicts(run: &Value) -> Vec<(String, Value)> {
    run["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["verdict"].clone()))
        .collect()
}

/// `tandemctl history SET` once it has at least `n` verdicts.
async fn history_with(fleet: &Fleet, set: &str, n: usize) -> Value {
    wait_for(
        &format!("{n} verdict(s) for {set}"),
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let h = fleet
                .ctl(&["history", set, "--output", "json"])
                .ok()
                .and_then(|r| serde_json::from_str::<Value>(&r.stdout).ok());
            async move { Ok(h.filter(|h| h["verdicts"].as_array().is_some_and(|v| v.len() >= n))) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()))
}

async fn replicated(fleet: &Fleet, set: &str) {
    fleet.replicated(set).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testdb_all_under_a_fleet_limit_of_one_then_errors_in_one_set() {
    let mut spec = FleetSpec::new(&[("alpha", 1), ("beta", 1)]);
    spec.limits = (1, 1);
    let fleet = Fleet::start(spec).await.unwrap();
    replicated(&fleet, "alpha").await;
    replicated(&fleet, "beta").await;

    // A viewer may look but not start a test (SPEC O1); the refusal names
    // the role it needs and is audited.
    let refused = fleet.ctl_as("viewer", &["testdb", "alpha"]).unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("needs the operator role and has viewer"),
        "{}",
        refused.stderr
    );
    assert_eq!(fleet.ctl_as("viewer", &["show"]).unwrap().code, 0);
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let denied = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "StartTestdb" && e["identity"] == "spiffe://tandem/user/viewer")
        .unwrap_or_else(|| panic!("no audit record of the viewer's call: {audit:#}"));
    assert!(
        denied["outcome"]
            .as_str()
            .unwrap()
            .contains("needs the operator role"),
        "{denied:#}"
    );

    // Both sets clean, exit 0; with a fleet limit of 1 the tests ran one
    // after the other, and the second one was told why it waited.
    let run = fleet.ctl(&["testdb", "--all", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let vs = verdicts(&run.json());
    assert_eq!(vs.len(), 2, "{vs:?}");
    for (set, v) in &vs {
        assert_eq!(v["kind"], "clean", "{set}: {v:#}");
        assert_eq!(v["member"], format!("{set}-s1"));
    }
    let mut spans: Vec<(Timestamp, Timestamp)> = vs
        .iter()
        .map(|(_, v)| (ts(&v["started_at"]), ts(&v["at"])))
        .collect();
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0,
        "the tests overlapped under a fleet limit of 1: {spans:?}"
    );
    assert!(
        run.stderr.contains("waiting: fleet limit 1/1"),
        "{}",
        run.stderr
    );

    // The limits can be read by anyone and changed by an admin only, at run time.
    let limits = fleet.ctl(&["limits", "--output", "json"]).unwrap().json();
    assert_eq!(
        (limits["fleet"].as_u64(), limits["source"].as_str()),
        (Some(1), Some("controller.toml"))
    );
    let denied = fleet.ctl(&["limits", "--fleet", "2"]).unwrap();
    assert_eq!(denied.code, 2, "{denied:?}");
    assert!(
        denied.stderr.contains("needs the admin role"),
        "{}",
        denied.stderr
    );
    let changed = fleet
        .ctl_as("admin", &["limits", "--fleet", "2", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(
        (changed["fleet"].as_u64(), changed["source"].as_str()),
        (Some(2), Some("tandemctl"))
    );

    // Replicated corruption in beta: exit 1, only beta needs a repair, and
    // `show` lists it first.
    let beta = fleet.set("beta");
    corrupt::replicated_index_corruption(&beta.primary, "postgres").unwrap();
    replicated(&fleet, "beta").await;
    let run = fleet.ctl(&["testdb", "--all", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
    let vs: std::collections::BTreeMap<_, _> = verdicts(&run.json()).into_iter().collect();
    assert_eq!(vs["alpha"]["kind"], "clean", "{vs:?}");
    assert_eq!(vs["beta"]["kind"], "errors", "{vs:?}");
    let human = fleet.ctl(&["testdb", "beta"]).unwrap();
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("tandem_corrupt_f_idx"),
        "the table names the first finding: {}",
        human.stdout
    );
    let show = fleet.ctl(&["show", "--output", "json"]).unwrap();
    assert_eq!(show.code, 1);
    let sets = show.json()["sets"].as_array().unwrap().clone();
    assert_eq!(sets[0]["name"], "beta", "sets needing repair come first");
    assert_eq!(sets[0]["verdict"]["kind"], "errors");
    assert!(
        sets[0]["verdict"]["summary"]
            .as_str()
            .unwrap()
            .contains("whole set halted"),
        "{:#}",
        sets[0]["verdict"]
    );
    assert_eq!(sets[1]["verdict"]["kind"], "clean");
}

on_both_stores!(a_controller_killed_during_a_fleet_run_carries_it_on);
/// The controller SIGKILLed while a `testdb --all` runs one set and holds
/// the other: started again, it finds the running test on its agent and
/// runs the queued set, one verdict each; a restart at rest starts nothing.
async fn a_controller_killed_during_a_fleet_run_carries_it_on(store: StoreKind) {
    let mut spec = FleetSpec::new(&[("gamma", 1), ("delta", 1)]).on(store);
    spec.limits = (1, 1);
    let mut fleet = Fleet::start(spec).await.unwrap();
    replicated(&fleet, "gamma").await;
    replicated(&fleet, "delta").await;

    // tandemctl watches the run in the background.
    let mut cmd = std::process::Command::new(bin_path("tandemctl").unwrap());
    cmd.args(["testdb", "--all", "--output", "json"])
        .envs(fleet.ctl_env("operator"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut watcher = cmd.spawn().unwrap();
    // Its stderr, line by line (one line per step when not on a terminal).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = watcher.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();

    // Kill the controller while the first test runs on its agent and
    // tandemctl follows it.
    let journals = [
        fleet.agent_home("gamma-s1").join("journal"),
        fleet.agent_home("delta-s1").join("journal"),
    ];
    let count = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(
        "tandemctl to show the first test's steps",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            seen.extend(rx.try_iter());
            let stepping = seen.iter().any(|l| l.contains(": step "));
            async move { Ok(stepping.then_some(())) }
        },
    )
    .await
    .unwrap();
    fleet.kill_controller();
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "the watcher lost the controller"
    );
    let lines: Vec<String> = rx.iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("tandemctl history")),
        "{lines:?}"
    );

    // Restarted, the controller finds the running test on its agent, and
    // runs the set that was still queued.
    fleet.start_controller().unwrap();
    // Verdicts of a set, once the controller answers.
    let history = |set: &str| -> anyhow::Result<Value> {
        let run = fleet.ctl(&["history", set, "--output", "json"])?;
        let v: Value = serde_json::from_str(&run.stdout)
            .map_err(|_| anyhow::anyhow!("no answer yet: {}", run.stderr.trim()))?;
        Ok(v["verdicts"].clone())
    };
    wait_for(
        "both sets' verdicts after the restart",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || {
            let got = (history("gamma"), history("delta"));
            async move {
                Ok(match got {
                    (Ok(g), Ok(d)) => (!g.as_array().unwrap().is_empty()
                        && !d.as_array().unwrap().is_empty())
                    .then_some(()),
                    _ => None,
                })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    for set in ["gamma", "delta"] {
        let h = history(set).unwrap();
        let h = h.as_array().unwrap();
        assert_eq!(h.len(), 1, "{set}: exactly one verdict: {h:#?}");
        assert_eq!(h[0]["kind"], "clean", "{set}: {:#}", h[0]);
    }
    // One operation per set on the agents: the restart ordered nothing twice.
    assert_eq!(count(&journals[0]), 1);
    assert_eq!(count(&journals[1]), 1);

    // A steady-state restart starts nothing.
    fleet.kill_controller();
    fleet.start_controller().unwrap();
    fleet.wait_leading().await.unwrap();
    let names: Vec<String> = fleet.agents.keys().cloned().collect();
    fleet.wait_agents_state(&names, "online").await.unwrap();
    let limits = fleet.ctl(&["limits", "--output", "json"]).unwrap().json();
    assert_eq!(
        (limits["running"].as_u64(), limits["waiting"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(count(&journals[0]) + count(&journals[1]), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_policy_tests_back_to_back_and_a_promotion_is_seen() {
    let fleet = Fleet::start(FleetSpec::new(&[("eps", 1)])).await.unwrap();
    replicated(&fleet, "eps").await;

    // Policies are an admin's, parsed with precise errors.
    let bad = fleet
        .ctl_as("admin", &["set", "policy", "eps", "--test", "ATwed25"])
        .unwrap();
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("at character 5: expected an hour 00-23"),
        "{}",
        bad.stderr
    );
    let denied = fleet
        .ctl(&["set", "policy", "eps", "--test", "interval=2"])
        .unwrap();
    assert!(denied.stderr.contains("needs the admin role"), "{denied:?}");
    let set = fleet
        .ctl_as(
            "admin",
            &[
                "set",
                "policy",
                "eps",
                "--test",
                "interval=2",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(set.json()["policies"]["test"], "interval=2");
    assert_eq!(set.json()["policies"]["source"], "tandemctl");

    // Two scheduled tests, the second 2 s after the first one's end.
    let history = || -> anyhow::Result<Vec<Value>> {
        let run = fleet.ctl(&["history", "eps", "--output", "json"])?;
        let v: Value = serde_json::from_str(&run.stdout)?;
        Ok(v["verdicts"].as_array().cloned().unwrap_or_default())
    };
    let h = wait_for(
        "two scheduled tests",
        Duration::from_secs(180),
        Duration::from_millis(200),
        || {
            let h = history();
            async move { Ok(h.ok().filter(|h| h.len() >= 2)) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let off = fleet
        .ctl_as("admin", &["set", "policy", "eps", "--test", "off"])
        .unwrap();
    assert_eq!(off.code, 0, "{off:?}");
    let (newer, older) = (&h[0], &h[1]);
    for v in [newer, older] {
        assert_eq!(v["kind"], "clean", "{v:#}");
    }
    let gap = ts(&newer["started_at"]).duration_since(ts(&older["at"]));
    assert!(
        gap >= jiff::SignedDuration::from_secs(2) && gap < jiff::SignedDuration::from_secs(15),
        "the next test starts 2 s after the previous one's end, not its start: gap {gap:?}"
    );

    // No test runs any more; then a promotion makes eps-s1 the primary, and
    // the controller sees it and records it.
    wait_for(
        "the fleet to be idle",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let l = fleet.ctl(&["limits", "--output", "json"]);
            async move {
                let l: Value = serde_json::from_str(&l?.stdout)?;
                Ok((l["running"] == 0 && l["waiting"] == 0).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    let pair = fleet.set("eps");
    pair.standbys[0].promote().unwrap();
    wait_for(
        "eps-s1 to be seen as a primary",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let run = fleet.ctl(&["history", "eps", "--output", "json"]);
            async move {
                let v: Value = serde_json::from_str(&run?.stdout)?;
                Ok(v["events"].as_array().and_then(|e| {
                    e.iter()
                        .find(|e| e["kind"] == "role")
                        .map(|e| e["message"].as_str().unwrap_or("").to_owned())
                }))
            }
        },
    )
    .await
    .map(|message| {
        assert!(
            message.contains("eps-s1") && message.contains("is now the primary"),
            "{message}"
        )
    })
    .unwrap();
    let show = fleet
        .ctl(&["show", "eps", "--output", "json"])
        .unwrap()
        .json();
    let members = show["sets"][0]["members"].as_array().unwrap();
    let s1 = members.iter().find(|m| m["name"] == "eps-s1").unwrap();
    assert_eq!(s1["role"], "primary", "{s1:#}");
    assert!(show["sets"][0]["generation"].as_u64().unwrap() > 1);
}

on_both_stores!(a_signal_asks_for_a_test_and_an_agent_alone_tests_by_itself);
/// A signal to a standby's agent asks the controller for a test (the
/// set's policy, set with tandemctl, says so); with the controller down
/// the agent tests by itself, and the controller started again takes the
/// result as the set's verdict.
async fn a_signal_asks_for_a_test_and_an_agent_alone_tests_by_itself(store: StoreKind) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut fleet = Fleet::start(FleetSpec::new(&[("zeta", 1)]).on(store))
        .await
        .unwrap();
    replicated(&fleet, "zeta").await;
    let set = fleet
        .ctl_as("admin", &["set", "policy", "zeta", "--test", "signal"])
        .unwrap();
    assert_eq!(set.code, 0, "{set:?}");
    let pid =
        |fleet: &Fleet| Pid::from_raw(fleet.agents["zeta-s1"].proc.as_ref().unwrap().pid() as i32);
    // SIGALRM to the standby's agent: the controller runs the test.
    kill(pid(&fleet), Signal::SIGALRM).unwrap();
    let h = history_with(&fleet, "zeta", 1).await;
    assert_eq!(h["verdicts"][0]["kind"], "clean", "{h:#}");

    // Without a controller the agent tests by itself and reports the
    // result once the controller is back.
    fleet.kill_controller();
    kill(pid(&fleet), Signal::SIGALRM).unwrap();
    let journal = fleet.agent_home("zeta-s1").join("journal");
    wait_for(
        "the agent's own test to finish",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let local_done = std::fs::read_dir(&journal)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
                .any(|r| {
                    r["request_id"]
                        .as_str()
                        .is_some_and(|x| x.starts_with("local/"))
                        && r["finished_at"].is_string()
                });
            async move { Ok(local_done.then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    fleet.start_controller().unwrap();
    let h = history_with(&fleet, "zeta", 2).await;
    assert_eq!(h["verdicts"][0]["kind"], "clean", "{h:#}");
    let events = h["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "signal" && e["message"].as_str().unwrap().contains("by itself")),
        "{events:#?}"
    );
}

/// A `ReportLocalResult` made up by an agent: a clean result, far ahead,
/// back-dated, from the primary's agent, for an operation the controller
/// ordered, or while the policy lets no agent test by itself.
fn forged(op: &str, request: &str, at: jiff::Timestamp, lsn: &str) -> pb::OperationResult {
    pb::OperationResult {
        operation_id: op.into(),
        kind: pb::OperationKind::Testdb as i32,
        state: pb::OperationState::Succeeded as i32,
        started_at: Some(tandem_proto::model::timestamp_to_wire(at)),
        finished_at: Some(tandem_proto::model::timestamp_to_wire(at)),
        tested_lsn: lsn.into(),
        request_id: request.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_cannot_forge_a_sets_verdict() {
    let fleet = Fleet::start(FleetSpec::new(&[("forge", 1)])).await.unwrap();
    replicated(&fleet, "forge").await;
    let real = fleet.ctl(&["testdb", "forge", "--output", "json"]).unwrap();
    assert_eq!(real.code, 0, "{real:?}\n{}", fleet.logs());
    let show = |fleet: &Fleet| {
        fleet
            .ctl(&["show", "forge", "--output", "json"])
            .unwrap()
            .json()["sets"][0]["verdict"]
            .clone()
    };
    let before = show(&fleet);
    assert_eq!(before["kind"], "clean");

    let certs = fleet.certs.display().to_string();
    let client = |agent: &str| {
        let files = tandem_proto::tls::TlsFiles {
            ca: format!("{certs}/ca.pem").into(),
            cert: format!("{certs}/agent-{agent}.pem").into(),
            key: format!("{certs}/agent-{agent}-key.pem").into(),
        };
        let url = fleet.controller_url.clone();
        async move {
            let ch = tandem_proto::tls::connect(&url, &files).await.unwrap();
            pb::controller_client::ControllerClient::new(ch)
        }
    };
    let now = jiff::Timestamp::now();
    let back_dated = now - jiff::SignedDuration::from_hours(48);
    let report = |agent: &str, result: pb::OperationResult| pb::ReportLocalResultRequest {
        agent: agent.into(),
        result: Some(result),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let refused = |agent: &'static str, result: pb::OperationResult, why: &'static str| {
        let c = client(agent);
        async move {
            let e = c
                .await
                .report_local_result(report(agent, result))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains(why), "{}", e.message());
        }
    };
    // The primary's agent, with a made-up clean result, back-dated, while
    // the policy is off (the defect as it was found).
    refused(
        "forge-p",
        forged("testdb-x", "local/x", back_dated, "0/FFFFFF"),
        "test policy",
    )
    .await;
    // With a policy that lets agents test by themselves, each other rule holds.
    let set = fleet
        .ctl_as("admin", &["set", "policy", "forge", "--test", "signal"])
        .unwrap();
    assert_eq!(set.code, 0, "{set:?}");
    refused(
        "forge-p",
        forged("testdb-x", "local/x", now, "0/100"),
        "not its standby",
    )
    .await;
    refused(
        "forge-s1",
        forged("testdb-y", "local/y", back_dated, "0/100"),
        "before the set's newest verdict",
    )
    .await;
    refused(
        "forge-s1",
        forged(
            "testdb-z",
            "local/z",
            now + jiff::SignedDuration::from_hours(1),
            "0/100",
        ),
        "in the future",
    )
    .await;
    refused(
        "forge-s1",
        forged("testdb-w", "local/w", now, "FF/FFFFFF"),
        "not a log position the set has reached",
    )
    .await;
    refused(
        "forge-s1",
        forged("testdb-v", "run-1/forge", now, "0/100"),
        "not a test the agent started by itself",
    )
    .await;
    // The set's verdict is the real one, and the audit log says refused.
    assert_eq!(show(&fleet), before);
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let reports: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "ReportLocalResult")
        .collect();
    assert_eq!(reports.len(), 6, "{audit:#}");
    assert!(reports.iter().all(|e| e["outcome"] != "ok"), "{reports:#?}");
}
