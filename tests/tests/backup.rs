//! Backups end to end (SPEC R1, T9): `tandemctl backup` copies the standby,
//! packs the copy, tests it and keeps the file only when clean; `tandemctl
//! backups` lists the files of every member. Real PostgreSQL, real binaries.

use std::time::Duration;

use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::wait::wait_for;

fn spec(set: &str) -> FleetSpec {
    let mut spec = FleetSpec::new(&[(set, 1)]);
    spec.backups = Some("daily = 2\nweekly = 1\nmonthly = 1".into());
    spec
}

/// Unpack a backup file with the agent's own code (which refuses any
/// other layout than: description first, data, manifest last, every file
/// matching the manifest).
fn unpacked(file: &std::path::Path) -> (tempfile::TempDir, tandem_agent::backup::Unpacked) {
    let tmp = tempfile::tempdir().unwrap();
    let u = tandem_agent::backup::unpack(
        file,
        &tmp.path().join("data"),
        None,
        &|_| {},
        &tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    (tmp, u)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_a_tested_copy_packed_with_its_manifest_and_listed() {
    let fleet = Fleet::start(spec("bk")).await.unwrap();
    let pair = fleet.set("bk");
    pair.primary.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();

    // A viewer may list but not take backups; the refusal is audited.
    let refused = fleet.ctl_as("viewer", &["backup", "bk"]).unwrap();
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("operator"), "{refused:?}");

    let run = fleet.ctl(&["backup", "bk", "--output", "json"]).unwrap();
    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert_eq!(v["member"], "bk-s1");
    let file = std::path::PathBuf::from(v["backup_path"].as_str().unwrap());
    assert!(file.starts_with(fleet.agent_backups("bk-s1")), "{file:?}");
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with("monthly-") && name.ends_with(".tar.zst"),
        "{name}"
    );

    // Inside: the description, the data directory, every file verified.
    let (dir, u) = unpacked(&file);
    assert_eq!(u.meta.set, "bk");
    assert_eq!(u.meta.member, "bk-s1");
    assert!(u.meta.verified);
    assert!(u.meta.start_lsn <= u.meta.end_lsn);
    let data = dir.path().join("data");
    assert!(data.join("global/pg_control").is_file());
    assert!(data.join("standby.signal").is_file(), "a standby's copy");
    let wal = std::fs::read_dir(data.join("pg_wal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 24)
        .count();
    assert!(wal >= 1, "the WAL from the redo point on is inside");
    // No partial file is left beside it.
    let left: Vec<_> = std::fs::read_dir(fleet.agent_backups("bk-s1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![name.clone()]);

    // Two more: weekly, then daily (rotation by kind).
    for expected in ["weekly-", "daily-"] {
        let run = fleet.ctl(&["backup", "bk", "--output", "json"]).unwrap();
        assert_eq!(run.code, 0, "{run:?}");
        let p = run.json()["sets"][0]["verdict"]["backup_path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(p.contains(&format!("/{expected}")), "{p}");
    }

    let list = fleet
        .ctl_as("viewer", &["backups", "bk", "--output", "json"])
        .unwrap();
    assert_eq!(list.code, 0, "{list:?}");
    let l = list.json();
    let backups = l["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 3, "{l:#}");
    let kinds: Vec<&str> = backups
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["daily", "weekly", "monthly"], "newest first");
    for b in backups {
        assert_eq!(b["member"], "bk-s1");
        assert_eq!(b["verified"], true);
        assert!(b["bytes"].as_u64().unwrap() > 0);
        assert!(b["unpacked_bytes"].as_u64().unwrap() > b["bytes"].as_u64().unwrap());
        assert!(b["start_lsn"].as_str().unwrap().contains('/'));
    }
    // The primary has a [backup] table too, and no backups: no problem.
    assert_eq!(l["problems"].as_array().unwrap().len(), 0, "{l:#}");
    let human = fleet.ctl(&["backups", "bk"]).unwrap();
    assert!(human.stdout.contains("VERIFIED"), "{human:?}");

    let audit = fleet.ctl(&["audit", "--output", "json"]).unwrap().json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "Backup").count(),
        4,
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_with_errors_is_not_kept() {
    let fleet = Fleet::start(spec("bad")).await.unwrap();
    let pair = fleet.set("bad");
    corrupt::replicated_index_corruption(&pair.primary, "postgres").unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();
    let run = fleet.ctl(&["backup", "bad", "--output", "json"]).unwrap();
    assert_eq!(run.code, 1, "{run:?}\n{}", fleet.logs());
    let v = &run.json()["sets"][0]["verdict"];
    assert_eq!(v["kind"], "errors", "{v:#}");
    assert!(v["backup_path"].is_null(), "{v:#}");
    let left: Vec<_> = std::fs::read_dir(fleet.agent_backups("bad-s1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The journal records of an agent's operations.
fn journal(fleet: &Fleet, agent: &str) -> Vec<serde_json::Value> {
    std::fs::read_dir(fleet.agent_home(agent).join("journal"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_and_an_archive_copy_due_together_share_one_copy() {
    let fleet = Fleet::start(spec("t9")).await.unwrap();
    let pair = fleet.set("t9");
    pair.primary.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();

    // Both policies take effect at once, so both fall due together.
    let set = fleet
        .ctl_as(
            "admin",
            &[
                "set",
                "policy",
                "t9",
                "--test",
                "interval=3600",
                "--archive-copy",
                "interval=3600",
                "--archive-file",
                "on",
            ],
        )
        .unwrap();
    assert_eq!(set.code, 0, "{set:?}");

    // The test's verdict and the archive copy's outcome both arrive.
    let history = wait_for(
        "a verdict and an archive copy in t9's history",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || async {
            let h = fleet.ctl(&["history", "t9", "--output", "json"])?.json();
            let archived = h["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "archive");
            let tested = !h["verdicts"].as_array().unwrap().is_empty();
            Ok((archived && tested).then_some(h))
        },
    )
    .await
    .unwrap();
    let verdicts = history["verdicts"].as_array().unwrap();
    assert_eq!(
        verdicts.len(),
        1,
        "the archive copy is not a verdict: {history:#}"
    );
    let v = &verdicts[0];
    assert_eq!(v["kind"], "clean", "{v:#}");
    let op = v["operation_id"].as_str().unwrap();
    let event = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "archive")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        event.contains(op),
        "the archive copy names the same operation: {event}"
    );

    // One copy was made: one operation on the standby, which packed the
    // archive file before the test opened the copy, and says who joined.
    let ops = journal(&fleet, "t9-s1");
    assert_eq!(ops.len(), 1, "{ops:#?}");
    let steps: Vec<&str> = ops[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    let at = |name: &str| steps.iter().position(|s| *s == name);
    assert_eq!(
        steps.iter().filter(|s| **s == "copy").count(),
        1,
        "{steps:?}"
    );
    assert!(
        at("pack").unwrap() < at("open_private").unwrap(),
        "{steps:?}"
    );
    let notes = ops[0]["notes"].to_string();
    assert!(notes.contains("joined this operation"), "{notes}");
    // The archive file is kept (the test was clean) and listed.
    let file = std::path::PathBuf::from(v["backup_path"].as_str().unwrap());
    assert!(file.is_file(), "{file:?}");
    assert!(event.contains(file.to_str().unwrap()), "{event}");
}
