//! Tests of what came with cloning: the fall-back to bytes where the
//! filesystem refuses to clone, the manifest written after the copy, live
//! sources and the live plan. Cloning itself is tested on a real XFS
//! filesystem (`tests/tests/clone_copy.rs`).

use super::tests::{fake_datadir, put};
use super::*;

fn opts(method: CopyMethod) -> CopyOptions {
    CopyOptions {
        workers: 2,
        method,
        ..CopyOptions::default()
    }
}

/// Whether the filesystem of `dir` clones files.
fn clones_in(dir: &Path) -> bool {
    let (a, b) = (dir.join("probe-a"), dir.join("probe-b"));
    fs::write(&a, b"probe").unwrap();
    let input = File::open(&a).unwrap();
    let output = File::create(&b).unwrap();
    let r = worker::ficlone(&input, &output);
    fs::remove_file(&a).unwrap();
    fs::remove_file(&b).unwrap();
    match r {
        Ok(()) => true,
        Err(e) => {
            assert!(worker::clone_refused(&e), "FICLONE failed oddly: {e}");
            false
        }
    }
}

/// A temporary directory on a filesystem that refuses to clone: the
/// default one (ext4 and tmpfs refuse), else /dev/shm.
fn no_clone_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    if !clones_in(t.path()) {
        return t;
    }
    let t = tempfile::tempdir_in("/dev/shm").unwrap();
    assert!(
        !clones_in(t.path()),
        "both TMPDIR and /dev/shm clone files; run with TMPDIR on a filesystem that cannot"
    );
    t
}

#[test]
fn a_filesystem_that_refuses_to_clone_gets_a_byte_copy_and_a_note() {
    let t = no_clone_tempdir();
    let src = t.path().join("data");
    fake_datadir(&src);
    for (method, asked_clone) in [(CopyMethod::Auto, false), (CopyMethod::Clone, true)] {
        let dst = t.path().join(format!("copy-{method}"));
        let p = plan(&src).unwrap();
        let r = copy(
            &p,
            &src,
            &dst,
            &opts(method),
            &|_| {},
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(r.method, CopyMethod::Bytes, "{method}");
        let note = r
            .note
            .as_deref()
            .expect("a note says why bytes were copied");
        assert!(
            note.contains(&format!(
                "cloning was refused by the filesystem of {}",
                dst.display()
            )),
            "{note}"
        );
        assert!(
            note.ends_with("the files were copied byte by byte"),
            "{note}"
        );
        assert_eq!(
            note.starts_with("copy_method is clone, but "),
            asked_clone,
            "{note}"
        );
        assert!(!note.contains("os error"), "{note}");
        assert_eq!(r.files_copied.len(), p.entries.len());
        assert!(r.files_copied.iter().all(|f| f.hash.is_some()));
        for e in &p.entries {
            assert_eq!(
                fs::read(src.join(&e.rel)).unwrap(),
                fs::read(dst.join(&e.rel)).unwrap()
            );
        }
        assert_eq!(r.manifest, Some(manifest_path(&dst).unwrap()));
        verify(&dst).unwrap();
    }
    let dst = t.path().join("copy-bytes");
    let r = run_with(&src, &dst, &opts(CopyMethod::Bytes));
    assert_eq!((r.method, r.note), (CopyMethod::Bytes, None));
    verify(&dst).unwrap();
}

fn run_with(src: &Path, dst: &Path, o: &CopyOptions) -> CopyReport {
    let p = plan(src).unwrap();
    copy(&p, src, dst, o, &|_| {}, &CancellationToken::new()).unwrap()
}

fn manifest_lines(dst: &Path) -> Vec<(String, u64, String)> {
    fs::read_to_string(manifest_path(dst).unwrap())
        .unwrap()
        .lines()
        .map(|l| {
            let mut p = l.splitn(3, "  ");
            let (h, s, r) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            (h.to_owned(), s.parse().unwrap(), r.to_owned())
        })
        .collect()
}

#[test]
fn finish_manifest_takes_known_hashes_hashes_the_rest_and_verify_checks_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    let o = CopyOptions {
        manifest_now: false,
        ..opts(CopyMethod::Bytes)
    };
    let r = run_with(&src, &dst, &o);
    assert_eq!(r.manifest, None);
    assert!(!manifest_path(&dst).unwrap().exists());
    // The caller adds a file of its own before the manifest is written.
    fs::write(dst.join("backup_label"), b"START WAL LOCATION: 0/2000028\n").unwrap();

    // A known hash with the file's size is taken as it is (the file is not
    // read again); one without a hash or with another size is hashed.
    let bogus = blake3::hash(b"not the file");
    let mut known = r.files_copied.clone();
    known[0].hash = Some(bogus);
    known[1].hash = None;
    known[2].hash = Some(bogus);
    known[2].size += 1;
    let hashed = AtomicU64::new(0);
    let m = finish_manifest(
        &dst,
        &known,
        3,
        &|n| hashed.store(n, Ordering::SeqCst),
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(m, manifest_path(&dst).unwrap());
    let lines = manifest_lines(&dst);
    let rels: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    let mut expected: Vec<&str> = r
        .files_copied
        .iter()
        .map(|f| f.rel.to_str().unwrap())
        .collect();
    expected.push("backup_label");
    assert_eq!(rels, expected, "known order first, then the other files");
    assert_eq!(lines[0].0, bogus.to_hex().as_str());
    let real = |rel: &str| {
        blake3::hash(&fs::read(dst.join(rel)).unwrap())
            .to_hex()
            .to_string()
    };
    for l in &lines[1..] {
        assert_eq!(l.0, real(&l.2), "{}", l.2);
        assert_eq!(l.1, fs::metadata(dst.join(&l.2)).unwrap().len());
    }
    let read_back = [&known[1].rel, &known[2].rel, Path::new("backup_label")]
        .iter()
        .map(|r| fs::metadata(dst.join(r)).unwrap().len())
        .sum::<u64>();
    assert_eq!(
        hashed.load(Ordering::SeqCst),
        read_back,
        "only those were read"
    );
    assert!(
        matches!(verify(&dst), Err(CopyError::Mismatch { .. })),
        "the bogus hash"
    );

    // With the copy's own hashes the manifest verifies, until a byte changes.
    finish_manifest(&dst, &r.files_copied, 2, &|_| {}, &CancellationToken::new()).unwrap();
    verify(&dst).unwrap();
    let victim = dst.join("base/5/16384");
    let mut data = fs::read(&victim).unwrap();
    data[CHUNK + 1] ^= 0x40;
    fs::write(&victim, data).unwrap();
    let e = verify(&dst).unwrap_err();
    assert!(
        matches!(&e, CopyError::Mismatch { path, .. } if *path == victim),
        "{e}"
    );
    assert!(!t.path().join("copy.manifest.tandem-tmp").exists());
}

#[test]
fn finish_manifest_with_nothing_known_hashes_everything() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let dst = t.path().join("copy");
    run_with(
        &src,
        &dst,
        &CopyOptions {
            manifest_now: false,
            ..opts(CopyMethod::Auto)
        },
    );
    finish_manifest(&dst, &[], 4, &|_| {}, &CancellationToken::new()).unwrap();
    verify(&dst).unwrap();
    let rels: Vec<String> = manifest_lines(&dst).into_iter().map(|l| l.2).collect();
    let mut sorted = rels.clone();
    sorted.sort();
    assert_eq!(rels, sorted);

    let cancel = CancellationToken::new();
    cancel.cancel();
    fs::remove_file(manifest_path(&dst).unwrap()).unwrap();
    let e = finish_manifest(&dst, &[], 4, &|_| {}, &cancel).unwrap_err();
    assert!(matches!(e, CopyError::Cancelled), "{e}");
    assert!(!manifest_path(&dst).unwrap().exists());
}

#[test]
fn a_live_source_copies_what_it_finds() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    let p = plan(&src).unwrap();
    // Between plan and copy: a file deleted, one grown, a directory gone.
    fs::remove_file(src.join("base/1/2608")).unwrap();
    let grown = src.join("base/5/16384");
    let mut data = fs::read(&grown).unwrap();
    data.extend_from_slice(&[7u8; 8192]);
    fs::write(&grown, &data).unwrap();
    fs::remove_dir_all(src.join("pg_xact")).unwrap();

    let dst = t.path().join("copy");
    let o = CopyOptions {
        live_source: true,
        ..opts(CopyMethod::Auto)
    };
    let r = copy(&p, &src, &dst, &o, &|_| {}, &CancellationToken::new()).unwrap();
    assert!(!dst.join("base/1/2608").exists());
    assert!(dst.join("base/1/2608_fsm").exists());
    assert!(!dst.join("pg_xact").exists());
    assert_eq!(fs::read(dst.join("base/5/16384")).unwrap(), data);
    let rels: Vec<&Path> = r.files_copied.iter().map(|f| f.rel.as_path()).collect();
    assert!(!rels.contains(&Path::new("base/1/2608")));
    assert!(!rels.contains(&Path::new("pg_xact/0000")));
    assert_eq!(r.files, p.entries.len() - 2);
    let f = r
        .files_copied
        .iter()
        .find(|f| f.rel == Path::new("base/5/16384"))
        .unwrap();
    assert_eq!(f.size, data.len() as u64);
    let line = manifest_lines(&dst)
        .into_iter()
        .find(|l| l.2 == "base/5/16384")
        .unwrap();
    assert_eq!(
        line.1,
        data.len() as u64,
        "the manifest records what was copied"
    );
    verify(&dst).unwrap();

    // The same copy from a stopped source is refused.
    let e = copy(
        &p,
        &src,
        &t.path().join("stopped"),
        &opts(CopyMethod::Auto),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, CopyError::Vanished { .. } | CopyError::Changed { .. }),
        "{e}"
    );
}

#[test]
fn the_live_plan_leaves_out_what_a_base_backup_leaves_out() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("data");
    fake_datadir(&src);
    for (rel, len) in [
        ("global/pg_internal.init", 100),
        ("base/1/pg_internal.init", 100),
        ("base/1/pg_internal.init.1234", 100),
        ("base/pgsql_tmp/pgsql_tmp1234.0", 100),
        ("base/1/pgsql_tmp5678", 100),
        ("base/5/t3_16400", 8192),
        ("base/5/t3_16400_fsm", 8192),
        ("base/5/16500", 8192),
        ("base/5/16500.1", 8192),
        ("base/5/16500_fsm", 8192),
        ("base/5/16500_init", 0),
        ("base/5/16600_vm", 8192),
        ("backup_label", 100),
        ("tablespace_map", 10),
        ("backup_manifest", 10),
        ("current_logfiles.tmp", 10),
        ("postgresql.auto.conf.tmp", 10),
        ("postgresql.auto.conf", 10),
        ("pg_wal/000000010000000000000004.partial", 100),
        ("pg_wal/00000002.history", 40),
        ("pg_snapshots/00000003-0000001B-1", 10),
    ] {
        put(&src, rel, len, 2_500);
    }
    let p = plan_live(&src).unwrap();
    let rels: Vec<&str> = p.entries.iter().map(|e| e.rel.to_str().unwrap()).collect();
    for gone in [
        "postmaster.pid",
        "postmaster.opts",
        "patroni.dynamic.json",
        "pg_stat_tmp/x",
        "pg_replslot/slot/state",
        "pg_snapshots/00000003-0000001B-1",
        "pg_wal/000000010000000000000001",
        "pg_wal/000000010000000000000004.partial",
        "pg_wal/00000002.history",
        "pg_wal/archive_status/000000010000000000000001.done",
        "global/pg_internal.init",
        "base/1/pg_internal.init",
        "base/1/pg_internal.init.1234",
        "base/pgsql_tmp/pgsql_tmp1234.0",
        "base/1/pgsql_tmp5678",
        "base/5/t3_16400",
        "base/5/t3_16400_fsm",
        "base/5/16500",
        "base/5/16500.1",
        "base/5/16500_fsm",
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "current_logfiles.tmp",
        "postgresql.auto.conf.tmp",
        "base/1/junk.tandem-tmp",
    ] {
        assert!(!rels.contains(&gone), "{gone} is in the live plan");
    }
    for kept in [
        "base/5/16500_init",
        "base/5/16600_vm",
        "base/5/16384",
        "base/1/1259",
        "postgresql.auto.conf",
        "postgresql.conf",
        "pg_xact/0000",
        "global/1262",
    ] {
        assert!(rels.contains(&kept), "{kept} is missing from the live plan");
    }
    assert!(
        p.entries.iter().all(|e| e.phase != 2),
        "no WAL in a live plan"
    );
    assert_eq!(p.entries.last().unwrap().rel, Path::new(PG_CONTROL));
    assert_eq!(p.entries.last().unwrap().phase, 3);
    let dirs: Vec<&str> = p.dirs.iter().map(|d| d.to_str().unwrap()).collect();
    for d in [
        "pg_wal",
        "pg_wal/archive_status",
        "pg_replslot",
        "pg_stat_tmp",
        "pg_snapshots",
    ] {
        assert!(dirs.contains(&d), "{d} is not created");
    }
    assert!(!dirs.contains(&"base/pgsql_tmp"), "{dirs:?}");
    assert!(!dirs.contains(&"pg_replslot/slot"), "{dirs:?}");

    // The copy has the excluded directories, empty.
    let dst = t.path().join("copy");
    let o = CopyOptions {
        live_source: true,
        ..opts(CopyMethod::Auto)
    };
    copy(&p, &src, &dst, &o, &|_| {}, &CancellationToken::new()).unwrap();
    for d in [
        "pg_wal",
        "pg_wal/archive_status",
        "pg_replslot",
        "pg_snapshots",
    ] {
        let entries: Vec<_> = fs::read_dir(dst.join(d)).unwrap().collect();
        let empty_ok = if d == "pg_wal" { 1 } else { 0 };
        assert_eq!(
            entries.len(),
            empty_ok,
            "{d} should be empty (pg_wal: its archive_status)"
        );
    }
    verify(&dst).unwrap();
    // The stopped plan is unchanged: it still has the WAL.
    assert!(plan(&src).unwrap().entries.iter().any(|e| e.phase == 2));
}
