//! Backups end to end (SPEC R1, T9): `tandemctl backup` copies the standby,
//! packs the copy, tests it and keeps the file only when clean; `tandemctl
//! backups` lists the files of every member. Real PostgreSQL, real binaries.

use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};

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
