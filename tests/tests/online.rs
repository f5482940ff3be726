//! Online testdb end to end: the standby keeps running and streaming while
//! its copy is made under a non-exclusive backup on the standby; real
//! PostgreSQL, the real agent, controller and tandemctl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tandem_tests::corrupt;
use tandem_tests::fleet::{Fleet, FleetSpec};
use tandem_tests::pg::PgServer;
use tandem_tests::wait::wait_for;

const RECEIVER: &str =
    "select pid || '|' || status || '|' || pg_postmaster_start_time() from pg_stat_wal_receiver";

fn verdict(stdout: &str) -> Value {
    let v: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v["sets"][0]["verdict"].clone()
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Sample the standby's WAL receiver (pid, status, server start) every
/// 100 ms on a thread until the returned flag is set.
fn sample_receiver(s: &PgServer) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, s) = (stop.clone(), s.clone());
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !flag.load(Ordering::SeqCst) && seen.len() < 6000 {
            seen.push(
                s.psql("postgres", RECEIVER)
                    .unwrap_or_else(|e| format!("error: {e:#}")),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    });
    (stop, h)
}

fn steps_of(fleet: &Fleet, member: &str) -> Vec<String> {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(fleet.agent_home(member).join("testdb.state.json")).unwrap(),
    )
    .unwrap();
    state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_test_under_write_load_is_clean_and_the_standby_never_stops_streaming() {
    let fleet = Fleet::start(FleetSpec::new(&[("onl", 1)])).await.unwrap();
    let pair = fleet.set("onl");
    let (p, s) = (pair.primary.clone(), pair.standbys[0].clone());
    p.pgbench_init(5).unwrap();
    let replayed = corrupt::wait_replayed(&p, &s).await.unwrap();
    let before = s.psql("postgres", RECEIVER).unwrap();
    assert!(before.contains("|streaming|"), "{before}");

    let mut load = p.pgbench_load(300);
    let (stop, sampler) = sample_receiver(&s);
    let run = fleet
        .ctl(&["testdb", "onl", "--mode", "online", "--output", "json"])
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = sampler.join().unwrap();
    let _ = load.kill();
    let _ = load.wait();

    assert_eq!(run.code, 0, "{run:?}\n{}", fleet.logs());
    let v = verdict(&run.stdout);
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert_eq!(v["mode"], "online", "{v:#}");
    assert_eq!(v["standby_downtime_seconds"].as_f64(), Some(0.0), "{v:#}");
    assert!(lsn(v["lsn"].as_str().unwrap()) >= lsn(&replayed), "{v:#}");
    // The same WAL receiver, of the same server, streamed at every sample.
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen.iter().all(|x| *x == before),
        "before {before}, seen {seen:?}"
    );
    assert_eq!(steps_of(&fleet, "onl-s1"), tandem_tests::TESTDB_STEPS);
    // The copy has its manifest, and the backup's slot is gone.
    assert!(fleet.agent_archive("onl-s1").join("copy.manifest").exists());
    assert_eq!(
        s.psql("postgres", "select count(*) from pg_replication_slots")
            .unwrap(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_corruption_is_found_online_as_it_is_cold() {
    let fleet = Fleet::start(FleetSpec::new(&[("onc", 1)])).await.unwrap();
    let pair = fleet.set("onc");
    let index = corrupt::replicated_index_corruption(&pair.primary, "postgres").unwrap();
    corrupt::wait_replayed(&pair.primary, &pair.standbys[0])
        .await
        .unwrap();
    let mut found = Vec::new();
    for mode in ["online", "cold"] {
        let run = fleet
            .ctl(&["testdb", "onc", "--mode", mode, "--output", "json"])
            .unwrap();
        assert_eq!(run.code, 1, "{mode}: {run:?}\n{}", fleet.logs());
        let v = verdict(&run.stdout);
        assert_eq!(v["mode"], mode, "{v:#}");
        let named = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "index" && f["relation"].as_str().unwrap().ends_with(&index));
        assert!(named, "{mode}: no finding names {index}: {v:#}");
        found.push(v["findings"].as_array().unwrap().len());
        pair.wait_streaming(&pair.standbys[0]).await.unwrap();
    }
    assert_eq!(found[0], found[1], "online and cold found different counts");
}

/// The WAL segment file that holds `at` (`X/Y`), timeline 1.
fn segment_file(primary: &PgServer, at: &str) -> String {
    primary
        .psql("postgres", &format!("select pg_walfile_name('{at}')"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restartpoints_during_an_online_copy_do_not_take_the_wal_it_needs() {
    let mut fleet = Fleet::start(FleetSpec::new(&[("rp", 1)])).await.unwrap();
    let (p, s) = {
        let pair = fleet.set("rp");
        (pair.primary.clone(), pair.standbys[0].clone())
    };
    // The standby recycles WAL as soon as it may.
    s.psql("postgres", "alter system set max_wal_size = '32MB'")
        .unwrap();
    s.psql("postgres", "alter system set wal_keep_size = 0")
        .unwrap();
    s.psql("postgres", "select pg_reload_conf()").unwrap();
    p.pgbench_init(2).unwrap();
    corrupt::wait_replayed(&p, &s).await.unwrap();
    fleet.start_agent_held("rp-s1", "copy").await.unwrap();

    let ctl = fleet
        .spawn_ctl(
            "operator",
            &["testdb", "rp", "--mode", "online", "--output", "json"],
        )
        .unwrap();
    let held = fleet.agent_home("rp-s1").join("held-after-copy");
    wait_for(
        "the copy to be held",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let held = held.clone();
            async move { Ok(held.exists().then_some(())) }
        },
    )
    .await
    .unwrap();
    let slot = s
        .psql(
            "postgres",
            "select restart_lsn from pg_replication_slots where slot_name = 'tandem_online_copy'",
        )
        .unwrap();
    assert!(slot.contains('/'), "no slot holds the copy's WAL: {slot:?}");
    let first = segment_file(&p, &slot);

    // Write well past the segment the copy starts in, with restartpoints.
    p.psql("postgres", "create table rp_fill (n int, pad text)")
        .unwrap();
    for _ in 0..4 {
        p.psql(
            "postgres",
            "insert into rp_fill select g, repeat('x', 200) from generate_series(1, 40000) g",
        )
        .unwrap();
        p.psql("postgres", "select pg_switch_wal()").unwrap();
        p.psql("postgres", "checkpoint").unwrap();
        corrupt::wait_replayed(&p, &s).await.unwrap();
        s.psql("postgres", "checkpoint").unwrap();
    }
    let redo = s
        .psql(
            "postgres",
            "select redo_wal_file from pg_control_checkpoint()",
        )
        .unwrap();
    assert!(
        redo[8..] > first[8..],
        "the standby's restartpoint (redo in {redo}) did not pass the copy's first segment {first}"
    );
    // Without the slot the first segment would have been recycled by now.
    assert!(
        s.data_dir.join("pg_wal").join(&first).exists(),
        "{first} was removed from the standby during the copy"
    );
    let written = p.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    let rows = p.psql("postgres", "select count(*) from rp_fill").unwrap();
    corrupt::wait_replayed(&p, &s).await.unwrap();

    std::fs::remove_file(&held).unwrap();
    let out = ctl.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", fleet.logs());
    let v = verdict(&stdout);
    assert_eq!(v["kind"], "clean", "{v:#}");
    assert!(
        lsn(v["lsn"].as_str().unwrap()) >= lsn(&written),
        "tested {} < written {written}",
        v["lsn"]
    );
    assert_eq!(rows, "160000");
    assert_eq!(
        s.psql("postgres", "select count(*) from pg_replication_slots")
            .unwrap(),
        "0",
        "the copy's slot outlived the copy"
    );
}

/// An online copy whose standby stops following (its primary gone) or
/// becomes a primary while the copy is made is never tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_copy_is_unusable_when_the_standby_stops_following_or_is_promoted() {
    let mut fleet = Fleet::start(FleetSpec::new(&[("onf", 1)])).await.unwrap();
    let (p, s) = {
        let pair = fleet.set("onf");
        (pair.primary.clone(), pair.standbys[0].clone())
    };
    p.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&p, &s).await.unwrap();
    fleet.start_agent_held("onf-s1", "copy").await.unwrap();
    let held = fleet.agent_home("onf-s1").join("held-after-copy");
    let unusable = fleet.agent_archive("onf-s1").join("copy.UNUSABLE");

    for case in ["primary gone", "promoted"] {
        let ctl = fleet
            .spawn_ctl(
                "operator",
                &["testdb", "onf", "--mode", "online", "--output", "json"],
            )
            .unwrap();
        wait_for(
            "the copy to be held",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                let held = held.clone();
                async move { Ok(held.exists().then_some(())) }
            },
        )
        .await
        .unwrap();
        match case {
            "primary gone" => p.stop().unwrap(),
            _ => s.promote().unwrap(),
        }
        std::fs::remove_file(&held).unwrap();
        let out = ctl.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(0), "{case}: {stdout}");
        let want = match case {
            "primary gone" => "WAL receiver stopped during the online copy",
            _ => "promoted",
        };
        assert!(
            stdout.contains(want) || fleet.logs().contains(want),
            "{case}: no `{want}` in {stdout}"
        );
        // Never tested, marked unusable, and the standby was never stopped.
        assert!(unusable.exists(), "{case}: the copy is not marked unusable");
        assert!(!stdout.contains("\"kind\": \"clean\""), "{case}: {stdout}");
        assert!(s.is_running(), "{case}: the standby is down");
        if case == "primary gone" {
            assert!(s.is_in_recovery().unwrap());
            p.start().unwrap();
            let pair = fleet.set("onf");
            pair.wait_streaming(&pair.standbys[0]).await.unwrap();
        }
    }
}

/// A bind mount, unmounted when dropped (after the fleet that uses it,
/// before the filesystem under it).
struct Bind(Option<std::path::PathBuf>);

impl Drop for Bind {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::process::Command::new("umount").arg(&p).status();
        }
    }
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    st.blocks_available() as u64 * st.fragment_size() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_copy_that_fills_the_archive_filesystem_is_unusable_and_the_standby_streams_on() {
    // The standby's archive directory on a small XFS of its own (bind
    // mounted), filled up once the backup has started: the free-space
    // check before the copy passed, the copy then meets a full disk.
    let xfs = tandem_tests::xfs::XfsMount::new(320).unwrap_or_else(|e| panic!("{e}"));
    let mut bound = Bind(None);
    let mut spec = FleetSpec::new(&[("ofull", 1)]);
    spec.agent_testdb = "free_space_reserve_mib = 8".into();
    let mut fleet = Fleet::start(spec).await.unwrap();
    let (p, s) = {
        let pair = fleet.set("ofull");
        (pair.primary.clone(), pair.standbys[0].clone())
    };
    p.pgbench_init(1).unwrap();
    corrupt::wait_replayed(&p, &s).await.unwrap();
    let archive = fleet.agent_archive("ofull-s1");
    std::fs::create_dir_all(&archive).unwrap();
    let bind = std::process::Command::new("mount")
        .args(["--bind"])
        .arg(xfs.path())
        .arg(&archive)
        .status()
        .unwrap();
    assert!(bind.success(), "mount --bind {}", archive.display());
    bound.0 = Some(archive.clone());
    fleet
        .start_agent_held("ofull-s1", "start_backup")
        .await
        .unwrap();
    let held = fleet.agent_home("ofull-s1").join("held-after-start_backup");
    let ctl = fleet
        .spawn_ctl(
            "operator",
            &["testdb", "ofull", "--mode", "online", "--output", "json"],
        )
        .unwrap();
    wait_for(
        "the backup to start",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || async { Ok(held.exists().then_some(())) },
    )
    .await
    .unwrap();
    // Leave 4 MiB: less than the copy needs.
    let leave = 4u64 << 20;
    let fill = free_bytes(&archive).saturating_sub(leave);
    let filler = archive.join("filler");
    let f = std::process::Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(f.success(), "fallocate");
    assert!(free_bytes(&archive) <= 2 * leave);
    std::fs::remove_file(&held).unwrap();
    let out = ctl.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();

    // Not clean, never tested or packed, said why, marked unusable.
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("\"kind\": \"clean\""), "{stdout}");
    let said = format!("{stdout}\n{stderr}");
    assert!(
        said.contains("step `copy` failed") && said.contains("No space left on device"),
        "{said}"
    );
    let steps = steps_of(&fleet, "ofull-s1");
    assert!(
        !steps.iter().any(|s| s == "checks" || s == "pack"),
        "{steps:?}"
    );
    assert!(archive.join("copy.UNUSABLE").exists(), "{said}");
    // The standby never stopped: running, in recovery, streaming, and the
    // copy's slot is gone with its session.
    assert!(s.is_running());
    assert!(s.is_in_recovery().unwrap());
    fleet.set("ofull").wait_streaming(&s).await.unwrap();
    assert_eq!(
        s.psql(
            "postgres",
            "select count(*) from pg_replication_slots where slot_name = 'tandem_online_copy'"
        )
        .unwrap(),
        "0"
    );
    std::fs::remove_file(&filler).unwrap();
    drop(fleet);
    drop(bound);
    drop(xfs);
}
