//! testdb with clone copies, end to end: the whole fleet (servers, agents'
//! archive directories) on a real XFS filesystem with reflink, so the
//! standby's copy is cloned, in cold and in online mode. Its own test
//! binary: it points every temporary directory of the process at the XFS
//! mount.
//!
//! Needs root and xfsprogs (`tests/run.sh` installs it); fails, rather than
//! skips, without them.

use std::time::Duration;

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::wait::wait_for;
use tandem_tests::xfs::XfsMount;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_on_xfs_clones_the_standby_in_cold_and_online_mode() {
    // Declared first, dropped last: the servers stop before the unmount.
    let xfs = XfsMount::new(2048).unwrap_or_else(|e| panic!("{e}"));
    let tmp = xfs.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    tempfile::env::override_temp_dir(&tmp).unwrap();

    let mut fleet = Fleet::start(FleetSpec::new(&[("clo", 1)])).await.unwrap();
    let (primary, standby) = {
        let pair = fleet.set("clo");
        (pair.primary.clone(), pair.standbys[0].clone())
    };
    primary.pgbench_init(10).unwrap();
    corrupt::wait_replayed(&primary, &standby).await.unwrap();
    let data = tandem_agent::engine::postgres::dir_size(&standby.data_dir);
    assert!(data > 150 << 20, "pgbench -s 10 is bigger: {data}");

    // Held once the copy and its manifest are made, before the private
    // server opens it (which sets hint bits, and so rewrites pages).
    fleet.start_agent_held("clo-s1", "manifest").await.unwrap();
    let held = fleet.agent_home("clo-s1").join("held-after-manifest");
    for mode in ["cold", "online"] {
        fleet.wait_heartbeat_streaming("clo-s1").await.unwrap();
        // Everything replayed is on disk: a restarted standby replays from
        // its last restartpoint, and pages it rewrites would be new blocks
        // of the standby's own files (copy-on-write), not of the copy.
        primary.psql("postgres", "checkpoint").unwrap();
        corrupt::wait_replayed(&primary, &standby).await.unwrap();
        standby.psql("postgres", "checkpoint").unwrap();
        // The previous round's copy is replaced: count without it.
        let _ = std::fs::remove_dir_all(fleet.agent_archive("clo-s1").join("copy"));
        let used = xfs.used_bytes().unwrap();
        let ctl = fleet
            .spawn_ctl(
                "operator",
                &["testdb", "clo", "--mode", mode, "--output", "json"],
            )
            .unwrap();
        wait_for(
            "the copy to be made",
            Duration::from_secs(300),
            Duration::from_millis(50),
            || {
                let held = held.clone();
                async move { Ok(held.exists().then_some(())) }
            },
        )
        .await
        .unwrap();
        // The user-visible proof: the copy of the whole standby took a
        // fraction of its size.
        let grew = xfs.used_bytes().unwrap().saturating_sub(used);
        assert!(
            grew < data / 10,
            "{mode}: a cloned copy of {data} bytes used {grew} new bytes"
        );
        std::fs::remove_file(&held).unwrap();
        let out = ctl.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode}: {stdout}\n{}",
            fleet.logs()
        );
        let v: Value =
            serde_json::from_str::<Value>(&stdout).unwrap()["sets"][0]["verdict"].clone();
        assert_eq!(v["kind"], "clean", "{mode}: {v:#}");
        assert_eq!(v["mode"], mode, "{v:#}");
        assert_eq!(v["copy_method"], "clone", "{mode}: {v:#}");
        assert!(v.get("copy_note").is_none_or(Value::is_null), "{v:#}");
        // The manifest hashes what was cloned; it checks out.
        let copy = fleet.agent_archive("clo-s1").join("copy");
        let manifest =
            std::fs::read_to_string(fleet.agent_archive("clo-s1").join("copy.manifest")).unwrap();
        assert!(manifest.lines().count() > 100, "{manifest}");
        assert!(copy.join("global/pg_control").exists());
        fleet.set("clo").wait_streaming(&standby).await.unwrap();
    }
}
