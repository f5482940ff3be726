//! The inventory changed at run time with `tandemctl set` (SPEC C1, O1), and
//! runs cancelled with `tandemctl cancel` (SPEC C2): real PostgreSQL sets,
//! the real controller, agents and tandemctl.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tandem_tests::fleet::{CtlRun, Fleet, FleetSpec};
use tandem_tests::on_both_stores;
use tandem_tests::procs::bin_path;
use tandem_tests::store::StoreKind;
use tandem_tests::wait::wait_for;

fn names(v: &Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no `{list}` in {v:#}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

fn refused(run: &CtlRun, says: &str) {
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(says),
        "expected `{says}` in: {}",
        run.stderr
    );
}

/// `tandemctl show -o json` once the controller answers.
async fn show_when_up(fleet: &Fleet) -> Value {
    wait_for(
        "the controller to answer",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let r = fleet.ctl(&["show", "--output", "json"]);
            async move {
                let r = r?;
                Ok(serde_json::from_str::<Value>(&r.stdout).ok())
            }
        },
    )
    .await
    .unwrap()
}

on_both_stores!(sets_are_added_changed_and_removed_at_run_time);
/// Sets added, changed and removed with `tandemctl set`; what was removed
/// stays removed when the controller is killed and started again.
async fn sets_are_added_changed_and_removed_at_run_time(store: StoreKind) {
    let mut spec = FleetSpec::new(&[("alpha", 1)]).on(store);
    spec.undeclared_sets = vec![("beta".into(), 1)];
    let mut fleet = Fleet::start(spec).await.unwrap();
    let beta = fleet.members("beta");
    assert_eq!(beta, ["beta-p", "beta-s1"]);

    // beta's agents run but are not in the inventory: refused, and audited
    // once each however often they retry.
    let agents = fleet.ctl(&["agents", "--output", "json"]).unwrap().json();
    assert_eq!(names(&agents, "agents"), ["alpha-p", "alpha-s1"]);
    let refusals = |audit: &Value| {
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["action"] == "Register"
                    && e["identity"] == "spiffe://tandem/agent/beta-p"
                    && e["outcome"]
                        .as_str()
                        .unwrap()
                        .contains("not a member of any set in the inventory")
            })
            .count()
    };
    wait_for(
        "beta-p's refused registration in the audit log",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let a = fleet.ctl(&["audit", "--output", "json"]);
            async move { Ok((refusals(&a?.json()) > 0).then_some(())) }
        },
    )
    .await
    .unwrap();

    // Only an admin changes the inventory; refusals name the role and are audited.
    let add = [
        "set", "add", "beta", "--member", "beta-p", "--member", "beta-s1",
    ];
    refused(
        &fleet.ctl_as("viewer", &add).unwrap(),
        "needs the admin role and has viewer",
    );
    refused(
        &fleet.ctl_as("operator", &add).unwrap(),
        "needs the admin role and has operator",
    );
    // Bad requests say what is wrong.
    refused(
        &fleet
            .ctl_as("admin", &["set", "add", "beta", "--member", "beta p"])
            .unwrap(),
        "NAME[=AGENT][@HOST]",
    );
    refused(
        &fleet
            .ctl_as("admin", &["set", "add", "beta", "--member", "x=alpha-p"])
            .unwrap(),
        "agent `alpha-p` is already member `alpha-p` of set `alpha`",
    );
    refused(
        &fleet
            .ctl_as(
                "admin",
                &[
                    "set",
                    "add",
                    "beta",
                    "--member",
                    "b1=beta-p",
                    "--member",
                    "b1=beta-s1",
                ],
            )
            .unwrap(),
        "member `b1` appears twice",
    );
    refused(
        &fleet
            .ctl_as("admin", &["set", "add", "alpha", "--member", "z"])
            .unwrap(),
        "set `alpha` exists",
    );
    refused(
        &fleet
            .ctl_as("admin", &["set", "change", "nope", "--remove-member", "z"])
            .unwrap(),
        "no set named `nope`",
    );

    // Added: its agents are accepted without a restart and it can be tested.
    let mut args = add.to_vec();
    args.extend(["--output", "json"]);
    let added = fleet.ctl_as("admin", &args).unwrap();
    assert_eq!(added.code, 0, "{added:?}");
    let set = &added.json()["set"];
    assert_eq!(set["generation"], 1, "{set:#}");
    assert_eq!(set["source"], "tandemctl");
    assert_eq!(set["changed_by"], "spiffe://tandem/user/admin");
    fleet.wait_agents_state(&beta, "online").await.unwrap();
    // The agent said why it was refused, once, however often it asked.
    let log = fleet.agents["beta-p"].proc.as_ref().unwrap().log_text();
    assert_eq!(
        log.matches("the controller refuses this agent").count(),
        1,
        "said once, with why: {log}"
    );
    assert!(
        log.contains("not a member of any set in the inventory"),
        "{log}"
    );
    fleet.replicated("beta").await.unwrap();
    let run = fleet.ctl(&["testdb", "beta", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0];
    assert_eq!(
        (v["name"].as_str(), v["verdict"]["kind"].as_str()),
        (Some("beta"), Some("clean")),
        "{v:#}"
    );

    // A member change: a new generation, in the set's history.
    let changed = fleet
        .ctl_as(
            "admin",
            &[
                "set",
                "change",
                "beta",
                "--change-member",
                "beta-s1@127.0.0.1",
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(changed.code, 0, "{changed:?}");
    assert_eq!(changed.json()["set"]["generation"], 2);
    assert_eq!(changed.json()["set"]["members"][1]["host"], "127.0.0.1");
    let show = fleet
        .ctl(&["show", "beta", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(show["sets"][0]["generation"], 2);
    let history = fleet
        .ctl(&["history", "beta", "--output", "json"])
        .unwrap()
        .json();
    let events: Vec<&Value> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "inventory")
        .collect();
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("members changed by spiffe://tandem/user/admin: changed member beta-s1"),
        "{history:#}"
    );
    assert!(
        events[1]["message"].as_str().unwrap().contains("added by"),
        "{history:#}"
    );
    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let entries = audit["entries"].as_array().unwrap();
    let by = |who: &str, action: &str| {
        entries
            .iter()
            .find(|e| {
                e["action"] == action && e["identity"] == format!("spiffe://tandem/user/{who}")
            })
            .unwrap_or_else(|| panic!("no {action} by {who} in {audit:#}"))
    };
    assert_eq!(by("admin", "AddSet")["outcome"], "ok");
    assert_eq!(by("admin", "AddSet")["arguments"]["set"], "beta");
    assert!(
        by("viewer", "AddSet")["outcome"]
            .as_str()
            .unwrap()
            .contains("needs the admin role")
    );
    assert_eq!(by("admin", "ChangeSet")["outcome"], "ok");
    assert_eq!(refusals(&audit), 1, "{audit:#}");

    // Removed (a question unless --yes): gone from show, agents and testdb.
    refused(
        &fleet.ctl_as("admin", &["set", "remove", "beta"]).unwrap(),
        "needs --yes",
    );
    for set in ["beta", "alpha"] {
        let r = fleet
            .ctl_as("admin", &["set", "remove", set, "--yes"])
            .unwrap();
        assert_eq!(r.code, 0, "{r:?}");
    }
    let show = fleet.ctl(&["show", "--output", "json"]).unwrap().json();
    assert!(names(&show, "sets").is_empty(), "{show:#}");
    refused(
        &fleet.ctl(&["testdb", "beta"]).unwrap(),
        "no set named `beta`",
    );
    let agents = fleet.ctl(&["agents", "--output", "json"]).unwrap().json();
    assert!(names(&agents, "agents").is_empty(), "{agents:#}");
    // The history of a removed set stays readable.
    let history = fleet.ctl(&["history", "beta", "--output", "json"]).unwrap();
    assert_eq!(history.code, 0, "{history:?}");
    assert_eq!(history.json()["events"][0]["kind"], "inventory");

    // A restart does not bring them back, not even alpha, which is still in
    // controller.toml: the controller says so, and how to bring it back.
    fleet.kill_controller();
    fleet.start_controller().unwrap();
    fleet.wait_leading().await.unwrap();
    let show = show_when_up(&fleet).await;
    assert!(names(&show, "sets").is_empty(), "{show:#}");
    let log = fleet.controller.as_ref().unwrap().log_text();
    assert!(
        log.contains(
            "set `alpha` is in controller.toml but was removed with `tandemctl set remove`"
        ) && log.contains("tandemctl set add alpha --from-config"),
        "{log}"
    );
    // Brought back from the file: a new generation, and its agents are
    // accepted again.
    let back = fleet
        .ctl_as(
            "admin",
            &["set", "add", "alpha", "--from-config", "--output", "json"],
        )
        .unwrap();
    assert_eq!(back.code, 0, "{back:?}");
    assert_eq!(back.json()["set"]["generation"], 2);
    fleet
        .wait_agents_state(&fleet.members("alpha"), "online")
        .await
        .unwrap();
}

/// Start `tandemctl args...` in the background as the operator; its stderr
/// comes line by line on the receiver.
fn spawn_ctl(fleet: &Fleet, args: &[&str]) -> (Child, Receiver<String>) {
    let mut cmd = std::process::Command::new(bin_path("tandemctl").unwrap());
    cmd.args(args)
        .envs(fleet.ctl_env("operator"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Wait until a line of `rx` satisfies `f`; every line seen goes to `seen`.
async fn line_where(
    what: &str,
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    f: impl Fn(&str) -> bool,
) -> String {
    wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            seen.extend(rx.try_iter());
            let hit = seen.iter().find(|l| f(l)).cloned();
            async move { Ok(hit) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; lines: {seen:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_ends_its_queued_sets_and_ctrl_c_does_not_cancel() {
    let mut spec = FleetSpec::new(&[("alpha", 1), ("beta", 1)]);
    spec.limits = (1, 1);
    let fleet = Fleet::start(spec).await.unwrap();
    fleet.replicated("alpha").await.unwrap();
    fleet.replicated("beta").await.unwrap();

    // Under a fleet limit of 1, alpha is tested while beta waits.
    let (mut first, rx) = spawn_ctl(&fleet, &["testdb", "--all", "--output", "json"]);
    let mut seen = Vec::new();
    let started = line_where("the run id", &rx, &mut seen, |l| {
        l.starts_with("run ") && l.contains(" started")
    })
    .await;
    let run_id = started.split_whitespace().nth(1).unwrap().to_owned();
    line_where("alpha's test to run", &rx, &mut seen, |l| {
        l.starts_with("alpha ") && l.contains(": step ")
    })
    .await;

    // A set with a test waiting or running cannot be removed.
    refused(
        &fleet
            .ctl_as("admin", &["set", "remove", "beta", "--yes"])
            .unwrap(),
        &format!("has a test in run {run_id}"),
    );

    // Ctrl-C stops the watching, not the run.
    signal::kill(Pid::from_raw(first.id() as i32), Signal::SIGINT).unwrap();
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let lines: Vec<String> = seen.into_iter().chain(rx.iter()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the run goes on on the controller")),
        "{lines:?}"
    );

    // Someone else follows it, and the operator cancels it.
    let (watcher, _rx) = spawn_ctl(&fleet, &["watch", &run_id, "--output", "json"]);
    refused(
        &fleet.ctl_as("viewer", &["cancel", &run_id]).unwrap(),
        "needs the operator role and has viewer",
    );
    let cancel = fleet.ctl(&["cancel", &run_id, "--output", "json"]).unwrap();
    assert_eq!(cancel.code, 0, "{cancel:?}\n{}", fleet.logs());
    let c = cancel.json();
    assert_eq!(c["queued"], serde_json::json!(["beta"]), "{c:#}");
    assert_eq!(c["stopping"], serde_json::json!(["alpha"]), "{c:#}");

    let out = watcher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}\n{}", fleet.logs());
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = |set: &str| {
        run["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == set)
            .unwrap_or_else(|| panic!("no verdict for {set}: {run:#}"))["verdict"]
            .clone()
    };
    let beta = verdict("beta");
    assert_eq!(beta["kind"], "failed_to_run", "{beta:#}");
    assert_eq!(
        beta["reason"], "cancelled by operator before it started",
        "{beta:#}"
    );
    let alpha = verdict("alpha");
    assert_eq!(alpha["kind"], "failed_to_run", "{alpha:#}");
    assert!(
        alpha["reason"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by operator"),
        "{alpha:#}"
    );

    // The cancelled test put alpha's standby back, and it is in the history.
    wait_for(
        "alpha's standby to stream again",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let r = fleet.ctl(&["show", "alpha"]);
            async move { Ok((r?.code == 0).then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fleet.logs()));
    let h = fleet
        .ctl(&["history", "beta", "--output", "json"])
        .unwrap()
        .json();
    assert_eq!(
        h["verdicts"][0]["reason"],
        "cancelled by operator before it started"
    );
    refused(&fleet.ctl(&["cancel", &run_id]).unwrap(), "has finished");
}
