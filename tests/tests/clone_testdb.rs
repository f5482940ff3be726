//! testdb with clone copies, end to end: the whole fleet (servers, agents'
//! archive directories) on a real XFS filesystem with reflink, so the
//! standby's copy is cloned, in cold and in online mode. Its own test
//! binary: it points every temporary directory of the process at the XFS
//! mount.
//!
//! Needs root and xfsprogs (`tests/run.sh` installs it); fails, rather than
//! skips, without them.

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::xfs::XfsMount;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_on_xfs_clones_the_standby_in_cold_and_online_mode() {
    // Declared first, dropped last: the servers stop before the unmount.
    let xfs = XfsMount::new(2048).unwrap_or_else(|e| panic!("{e}"));
    let tmp = xfs.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    tempfile::env::override_temp_dir(&tmp).unwrap();

    let fleet = Fleet::start(FleetSpec::new(&[("clo", 1)])).await.unwrap();
    let pair = fleet.set("clo");
    pair.primary.pgbench_init(10).unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();
    let data = tandem_agent::engine::postgres::dir_size(&pair.standbys[0].data_dir);
    assert!(data > 150 << 20, "pgbench -s 10 is bigger: {data}");

    for mode in ["cold", "online"] {
        let used = xfs.used_bytes().unwrap();
        let run = fleet
            .ctl(&["testdb", "clo", "--mode", mode, "--output", "json"])
            .unwrap();
        assert_eq!(run.code, 0, "{mode}: {run:?}\n{}", fleet.logs());
        let v: Value = run.json()["sets"][0]["verdict"].clone();
        assert_eq!(v["kind"], "clean", "{mode}: {v:#}");
        assert_eq!(v["mode"], mode, "{v:#}");
        assert_eq!(v["copy_method"], "clone", "{mode}: {v:#}");
        assert!(v.get("copy_note").is_none_or(Value::is_null), "{v:#}");
        // The user-visible proof: the tested copy of the whole standby
        // (opened, replayed and checked) took a fraction of its size. The
        // previous round's copy is replaced, so compare with before.
        let grew = xfs.used_bytes().unwrap().saturating_sub(used);
        assert!(
            grew < data / 4,
            "{mode}: a cloned copy of {data} bytes used {grew} new bytes"
        );
        // The manifest hashes what was cloned; it checks out.
        let copy = fleet.agent_archive("clo-s1").join("copy");
        let manifest = std::fs::read_to_string(fleet.agent_archive("clo-s1").join("copy.manifest"))
            .unwrap();
        assert!(manifest.lines().count() > 100, "{manifest}");
        assert!(copy.join("global/pg_control").exists());
        pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    }
}
