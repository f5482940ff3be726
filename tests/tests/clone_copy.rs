//! Clone copies on a real XFS filesystem with reflink: a stopped PostgreSQL
//! 15 cluster with pgbench data is copied with `CopyMethod::Clone`; the copy
//! is all clones, takes (almost) no new space, its manifest written
//! afterwards verifies, and a server started on it has every row. Asked to
//! clone onto a filesystem that cannot, the copy is byte by byte and says so.
//!
//! Needs root and xfsprogs (`tests/run.sh` installs it); fails, rather than
//! skips, without them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tandem_agent::engine::copy::{self, CopyMethod, CopyOptions, CopyReport};
use tandem_tests::pg::PgPair;
use tandem_tests::xfs::XfsMount;
use tokio_util::sync::CancellationToken;

const ACCOUNTS: &str = "500000";

fn clone_copy(src: &Path, dst: &Path) -> CopyReport {
    let plan = copy::plan(src).unwrap_or_else(|e| panic!("{e}"));
    let meta = std::fs::metadata(src).unwrap();
    let opts = CopyOptions {
        workers: 2,
        owner: Some((meta.uid(), meta.gid())),
        method: CopyMethod::Clone,
        manifest_now: false,
        ..CopyOptions::default()
    };
    copy::copy(&plan, src, dst, &opts, &|_| {}, &CancellationToken::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_copy_on_xfs_is_instant_space_free_verified_and_opens() {
    // Declared first, dropped last: the servers stop before the unmount.
    let xfs = XfsMount::new(1024).unwrap_or_else(|e| panic!("{e}"));
    let mut pair = PgPair::create_in(xfs.path(), "clone", 0)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    pair.primary.pgbench_init(5).unwrap();
    pair.primary.stop().unwrap();
    let src = pair.primary.data_dir.clone();
    let dst = pair.dir.join("copy");
    let plan_bytes = copy::plan(&src).unwrap().total_bytes;
    assert!(
        plan_bytes > 80 << 20,
        "pgbench -s 5 is bigger: {plan_bytes}"
    );

    let before = xfs.used_bytes().unwrap();
    let report = clone_copy(&src, &dst);
    let after = xfs.used_bytes().unwrap();
    assert_eq!(report.method, CopyMethod::Clone, "{:?}", report.note);
    assert_eq!(report.note, None);
    assert_eq!(report.bytes, plan_bytes);
    assert_eq!(report.manifest, None, "manifest_now is false");
    assert!(
        report.files_copied.iter().all(|f| f.hash.is_none()),
        "clones are not read"
    );
    // The user-visible proof: the copy of the whole cluster used almost no
    // new space (directories, inodes and the pg_control/metadata blocks).
    let grew = after.saturating_sub(before);
    eprintln!(
        "cloned {} files, {:.1} MB in {:.3}s; space used grew by {:.2} MB",
        report.files,
        plan_bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        grew as f64 / 1e6
    );
    assert!(
        grew < plan_bytes / 20,
        "a clone of {plan_bytes} bytes used {grew} new bytes"
    );

    // The manifest is written afterwards by reading the copy, and verifies.
    let manifest = copy::finish_manifest(
        &dst,
        &report.files_copied,
        2,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest, copy::manifest_path(&dst).unwrap());
    copy::verify(&dst).unwrap_or_else(|e| panic!("{e}"));
    // The files are equal to the source's, byte for byte (spot check of
    // the biggest, pgbench_accounts).
    let biggest = report.files_copied.iter().max_by_key(|f| f.size).unwrap();
    assert_eq!(
        std::fs::read(src.join(&biggest.rel)).unwrap(),
        std::fs::read(dst.join(&biggest.rel)).unwrap()
    );

    // A server on the copy has every row; the source is untouched by it.
    let server = pair
        .add_server_on("clone-copy", &dst)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .clone();
    server.start().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        server
            .psql("postgres", "select count(*) from pgbench_accounts")
            .unwrap(),
        ACCOUNTS
    );
    server
        .psql("postgres", "update pgbench_accounts set abalance = 1")
        .unwrap();
    server.stop().unwrap();
    pair.primary.start().unwrap();
    assert_eq!(
        pair.primary
            .psql(
                "postgres",
                "select count(*) from pgbench_accounts where abalance = 1"
            )
            .unwrap(),
        "0",
        "writing the copy changed the source"
    );
    pair.primary.stop().unwrap();

    // Asked to clone into another filesystem (TMPDIR): bytes, and a note.
    let other = tempfile::tempdir().unwrap();
    let dst2 = other.path().join("copy");
    let report = clone_copy(&src, &dst2);
    assert_eq!(report.method, CopyMethod::Bytes);
    let note = report.note.expect("a note says cloning was refused");
    assert!(
        note.starts_with("copy_method is clone, but cloning was refused"),
        "{note}"
    );
    assert!(note.contains(&dst2.display().to_string()), "{note}");
    assert!(
        note.ends_with("the files were copied byte by byte"),
        "{note}"
    );
    assert!(report.files_copied.iter().all(|f| f.hash.is_some()));
    copy::finish_manifest(
        &dst2,
        &report.files_copied,
        2,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    copy::verify(&dst2).unwrap_or_else(|e| panic!("{e}"));
}
