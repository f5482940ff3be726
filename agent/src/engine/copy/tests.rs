//! Tests of the ordered copy: plan order, exclusions, bytes, modes, mtimes,
//! manifest, verification, cancellation and phase ordering.

use super::*;
use std::time::UNIX_EPOCH;

/// Write `rel` under `root` with `len` bytes of a pattern and the given
/// mtime (seconds since the epoch).
pub(super) fn put(root: &Path, rel: &str, len: usize, mtime: u64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ rel.len() as u8)
        .collect();
    fs::write(&p, data).unwrap();
    let f = File::options().write(true).open(&p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// A fake stopped data directory (also used by the backup tests).
pub(crate) fn fake_datadir(root: &Path) {
    fs::create_dir(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).unwrap();
    put(root, "PG_VERSION", 3, 1_000);
    put(root, "base/1/1259", 3 * CHUNK + 17, 5_000);
    put(root, "base/1/2608", 8192, 3_000);
    put(root, "base/1/2608_fsm", 8192, 3_000);
    put(root, "base/5/16384", 2 * CHUNK, 4_000);
    put(root, "global/1262", 8192, 2_000);
    put(root, "global/pg_control", 8192, 9_000);
    put(root, "pg_xact/0000", 8192, 6_000);
    put(root, "postgresql.conf", 100, 500);
    put(root, "postmaster.pid", 50, 9_500);
    put(root, "postmaster.opts", 50, 9_500);
    put(root, "patroni.dynamic.json", 212, 9_500);
    put(root, "patroni.dynamic.jsonk2j4_x", 211, 9_600);
    put(root, "pg_stat_tmp/x", 10, 100);
    put(root, "pg_replslot/slot/state", 10, 100);
    put(root, "base/1/junk.tandem-tmp", 10, 100);
    // Log segments: newer names have older mtimes, so order by name shows.
    put(root, "pg_wal/000000010000000000000003", CHUNK, 7_000);
    put(root, "pg_wal/000000010000000000000001", CHUNK, 8_000);
    put(root, "pg_wal/000000010000000000000002", CHUNK, 7_500);
    put(
        root,
        "pg_wal/archive_status/000000010000000000000001.done",
        0,
        8_000,
    );
    fs::set_permissions(root.join("base/1/2608"), fs::Permissions::from_mode(0o640)).unwrap();
}

fn rels(plan: &CopyPlan) -> Vec<(String, u8)> {
    plan.entries
        .iter()
        .map(|e| (e.rel.to_str().unwrap().to_owned(), e.phase))
        .collect()
}

fn run(src: &Path, dst: &Path, workers: usize) -> Result<CopyReport, CopyError> {
    let plan = plan(src)?;
    copy(
        &plan,
        src,
        dst,
        &CopyOptions {
            workers,
            owner: None,
            ..CopyOptions::default()
        },
        &|_| {},
        &CancellationToken::new(),
    )
}

#[test]
fn plan_orders_by_mtime_then_log_then_control() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let p = plan(&src).unwrap();
    let expected: Vec<(String, u8)> = [
        ("postgresql.conf", 1),
        ("PG_VERSION", 1),
        ("global/1262", 1),
        ("base/1/2608", 1),
        ("base/1/2608_fsm", 1),
        ("base/5/16384", 1),
        ("base/1/1259", 1),
        ("pg_xact/0000", 1),
        ("pg_wal/000000010000000000000001", 2),
        ("pg_wal/000000010000000000000002", 2),
        ("pg_wal/000000010000000000000003", 2),
        ("global/pg_control", 3),
    ]
    .iter()
    .map(|(r, p)| (r.to_string(), *p))
    .collect();
    assert_eq!(rels(&p), expected);
    assert_eq!(p.total_bytes, p.entries.iter().map(|e| e.size).sum::<u64>());
    let dirs: Vec<&str> = p.dirs.iter().map(|d| d.to_str().unwrap()).collect();
    assert_eq!(
        dirs,
        [
            "base",
            "base/1",
            "base/5",
            "global",
            "pg_replslot",
            "pg_stat_tmp",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_xact"
        ]
    );
}

#[test]
fn symlinks_and_missing_control_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    fs::create_dir(src.join("pg_tblspc")).unwrap();
    std::os::unix::fs::symlink(t.path(), src.join("pg_tblspc/16400")).unwrap();
    let e = plan(&src).unwrap_err();
    assert!(
        matches!(&e, CopyError::Unsupported { path, .. } if path.ends_with("pg_tblspc/16400")),
        "{e}"
    );
    assert!(e.to_string().contains("pg_tblspc/16400"), "{e}");

    let other = t.path().join("other");
    fs::create_dir(&other).unwrap();
    put(&other, "base/1/1", 10, 1);
    assert!(matches!(plan(&other), Err(CopyError::NotDataDir { .. })));
}

#[test]
fn copy_reproduces_bytes_modes_and_mtimes_and_leaves_out_excluded() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let report = run(&src, &dst, 2).unwrap();
    let p = plan(&src).unwrap();
    assert_eq!(report.files, p.entries.len());
    assert_eq!(report.bytes, p.total_bytes);
    assert_eq!(
        report.manifest.clone().unwrap(),
        t.path().join("copy.manifest")
    );
    for e in &p.entries {
        let (a, b) = (src.join(&e.rel), dst.join(&e.rel));
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{a:?}");
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(ma.mode(), mb.mode(), "{a:?}");
        assert_eq!(ma.modified().unwrap(), mb.modified().unwrap(), "{a:?}");
    }
    assert_eq!(
        fs::metadata(&dst).unwrap().mode() & 0o7777,
        0o700,
        "root mode"
    );
    assert_eq!(
        fs::metadata(dst.join("base/1"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(src.join("base/1"))
            .unwrap()
            .modified()
            .unwrap()
    );
    for gone in [
        "postmaster.pid",
        "postmaster.opts",
        "patroni.dynamic.json",
        "patroni.dynamic.jsonk2j4_x",
        "pg_stat_tmp/x",
        "pg_replslot/slot",
        "base/1/junk.tandem-tmp",
        "pg_wal/archive_status/000000010000000000000001.done",
    ] {
        assert!(!dst.join(gone).exists(), "{gone} was copied");
    }
    for kept in ["pg_stat_tmp", "pg_replslot", "pg_wal/archive_status"] {
        assert!(dst.join(kept).is_dir(), "{kept} is missing");
    }
    assert!(!t.path().join("copy.manifest.tandem-tmp").exists());
}

#[test]
fn manifest_has_blake3_of_every_file_and_verify_catches_a_flipped_byte() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let report = run(&src, &dst, 3).unwrap();
    let p = plan(&src).unwrap();
    let text = fs::read_to_string(report.manifest.as_ref().unwrap()).unwrap();
    let expected: String = p
        .entries
        .iter()
        .map(|e| {
            let h = blake3::hash(&fs::read(src.join(&e.rel)).unwrap());
            format!("{}  {}  {}\n", h.to_hex(), e.size, e.rel.display())
        })
        .collect();
    assert_eq!(text, expected);

    verify(&dst).unwrap();
    let victim = dst.join("base/1/1259");
    let mut data = fs::read(&victim).unwrap();
    data[CHUNK + 5] ^= 0x01;
    fs::write(&victim, data).unwrap();
    let e = verify(&dst).unwrap_err();
    assert!(
        matches!(&e, CopyError::Mismatch { path, .. } if *path == victim),
        "{e}"
    );

    // An extra file is a mismatch too.
    let t2 = tempfile::tempdir().unwrap();
    let dst2 = t2.path().join("copy");
    run(&src, &dst2, 1).unwrap();
    fs::write(dst2.join("base/extra"), b"x").unwrap();
    assert!(matches!(verify(&dst2), Err(CopyError::Mismatch { .. })));
}

#[test]
fn existing_destination_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("keep"), b"keep").unwrap();
    let e = run(&src, &dst, 2).unwrap_err();
    assert!(
        matches!(&e, CopyError::Exists { path } if *path == dst),
        "{e}"
    );
    assert_eq!(fs::read(dst.join("keep")).unwrap(), b"keep");
}

#[test]
fn cancelled_before_start_does_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let p = plan(&src).unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = copy(&p, &src, &dst, &CopyOptions::default(), &|_| {}, &cancel).unwrap_err();
    assert!(matches!(e, CopyError::Cancelled), "{e}");
    assert!(!dst.exists());
}

#[test]
fn cancelled_during_copy_stops_promptly() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let p = plan(&src).unwrap();
    let cancel = CancellationToken::new();
    let calls = AtomicUsize::new(0);
    // Cancel from the first completed file on.
    let e = copy_observed(
        &p,
        &src,
        &dst,
        &CopyOptions {
            workers: 1,
            owner: None,
            ..CopyOptions::default()
        },
        &|_| {},
        &cancel,
        &|step| {
            if let Step::FileDone(_) = step {
                calls.fetch_add(1, Ordering::SeqCst);
                cancel.cancel();
            }
        },
    )
    .unwrap_err();
    assert!(matches!(e, CopyError::Cancelled), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!dst.join("global/pg_control").exists());
    assert!(!t.path().join("copy.manifest").exists());
}

#[test]
fn progress_is_reported_and_ends_at_total() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let p = plan(&src).unwrap();
    let seen = Mutex::new(Vec::new());
    copy(
        &p,
        &src,
        &dst,
        &CopyOptions {
            workers: 2,
            owner: None,
            ..CopyOptions::default()
        },
        &|n| seen.lock().unwrap().push(n),
        &CancellationToken::new(),
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), p.total_bytes);
}

#[test]
fn one_and_four_workers_give_identical_manifests() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let a = run(&src, &t.path().join("a"), 1).unwrap();
    let b = run(&src, &t.path().join("b"), 4).unwrap();
    assert_eq!(
        fs::read_to_string(a.manifest.unwrap()).unwrap(),
        fs::read_to_string(b.manifest.unwrap()).unwrap()
    );
}

#[test]
fn phases_complete_in_order() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    // More files, so that four workers really overlap.
    for i in 0..40 {
        put(
            &src,
            &format!("base/7/{i}"),
            4096 * (i % 5 + 1),
            100 + i as u64,
        );
    }
    for i in 4..12 {
        put(
            &src,
            &format!("pg_wal/0000000100000000000000{i:02X}"),
            8192,
            50,
        );
    }
    let p = plan(&src).unwrap();
    let steps = Mutex::new(Vec::new());
    copy_observed(
        &p,
        &src,
        &t.path().join("copy"),
        &CopyOptions {
            workers: 4,
            owner: None,
            ..CopyOptions::default()
        },
        &|_| {},
        &CancellationToken::new(),
        &|s| steps.lock().unwrap().push(s),
    )
    .unwrap();
    let steps = steps.into_inner().unwrap();
    // Each step's phase: files by their plan phase, barriers by theirs.
    let mut current = 1u8;
    let mut files_in_phase = [0usize; 3];
    for s in &steps {
        match *s {
            Step::FileDone(i) => {
                assert_eq!(p.entries[i].phase, current, "{steps:?}");
                files_in_phase[usize::from(current - 1)] += 1;
            }
            Step::PhaseSynced(ph) => {
                assert_eq!(ph, current, "{steps:?}");
                current += 1;
            }
        }
    }
    assert_eq!(current, 4);
    assert_eq!(files_in_phase.iter().sum::<usize>(), p.entries.len());
    assert_eq!(files_in_phase[2], 1);
    assert_eq!(
        steps[steps.len() - 2],
        Step::FileDone(p.entries.len() - 1),
        "pg_control is the last file"
    );
}

#[test]
fn manifest_lists_phases_in_order() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let r = run(&src, &t.path().join("copy"), 4).unwrap();
    let text = fs::read_to_string(r.manifest.unwrap()).unwrap();
    let phases: Vec<u8> = text
        .lines()
        .map(|l| {
            let rel = l.splitn(3, "  ").nth(2).unwrap();
            if rel == PG_CONTROL {
                3
            } else if rel.starts_with("pg_wal/") {
                2
            } else {
                1
            }
        })
        .collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert_eq!(phases.last(), Some(&3));
}

#[test]
fn owner_is_applied_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let p = plan(&src).unwrap();
    let r = copy(
        &p,
        &src,
        &dst,
        &CopyOptions {
            workers: 2,
            owner: Some((4321, 4322)),
            ..CopyOptions::default()
        },
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    for path in [
        dst.clone(),
        dst.join("base/1"),
        dst.join("base/1/1259"),
        dst.join("global/pg_control"),
        r.manifest.unwrap(),
    ] {
        let m = fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{path:?}");
    }
    assert_eq!(
        fs::metadata(dst.join("base/1/2608")).unwrap().mode() & 0o7777,
        0o640
    );
}

#[test]
fn a_plan_leaving_the_destination_is_refused_before_anything_is_made() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    for bad in ["../escape", "/etc/passwd", "nodir/file"] {
        let mut p = plan(&src).unwrap();
        p.entries.insert(
            0,
            PlanEntry {
                rel: PathBuf::from(bad),
                size: 1,
                phase: 1,
            },
        );
        let e = copy(
            &p,
            &src,
            &dst,
            &CopyOptions::default(),
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, CopyError::Unsupported { .. }), "{bad}: {e}");
        assert!(!dst.exists(), "{bad}");
    }
}

#[test]
fn a_vanished_file_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let p = plan(&src).unwrap();
    fs::remove_file(src.join("base/1/2608")).unwrap();
    let e = copy(
        &p,
        &src,
        &t.path().join("copy"),
        &CopyOptions::default(),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, CopyError::Vanished { path } if path.ends_with("base/1/2608")),
        "{e}"
    );
}
