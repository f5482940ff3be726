//! Pack and unpack round trips, and damaged or foreign files refused.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::unpack::open_archive;
use super::*;
use crate::engine::copy::{self, tests::fake_datadir};

fn meta() -> BackupMeta {
    BackupMeta {
        format: 1,
        kind: BackupKind::Daily,
        taken_at: "2026-11-21T04:30:07Z".parse().unwrap(),
        start_lsn: "0/3000028".parse().unwrap(),
        end_lsn: "0/5000000".parse().unwrap(),
        set: "billing".into(),
        member: "db2".into(),
        files: 0,
        unpacked_bytes: 0,
        verified: true,
    }
}

fn packed(tmp: &Path) -> PathBuf {
    let src = tmp.join("copy");
    fake_datadir(&src);
    let out = tmp.join("backups");
    fs::create_dir(&out).unwrap();
    let opts = PackOptions {
        threads: 2,
        level: 3,
        dump: false,
    };
    let p = pack(&src, &out, meta(), opts, &|_| {}, &CancellationToken::new()).unwrap();
    assert!(p.partial.exists());
    assert!(!p.path.exists(), "not under its name before commit");
    p.commit().unwrap()
}

#[test]
fn a_packed_copy_unpacks_to_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let file = packed(tmp.path());
    assert_eq!(
        file.file_name().unwrap().to_str().unwrap(),
        "daily-20261121T043007Z-0_3000028-0_5000000.tar.zst"
    );
    let m = read_meta(&file).unwrap();
    assert_eq!(m.set, "billing");
    assert_eq!(
        m.files,
        copy::plan(&tmp.path().join("copy")).unwrap().entries.len() as u64
    );

    let dest = tmp.path().join("prepare");
    let seen = std::sync::Mutex::new(0u64);
    let u = unpack(
        &file,
        &dest,
        None,
        &|n| *seen.lock().unwrap() = n,
        &CancellationToken::new(),
    )
    .unwrap();
    assert_eq!(u.meta, m);
    assert_eq!(u.bytes, m.unpacked_bytes);
    assert_eq!(*seen.lock().unwrap(), m.unpacked_bytes);
    let src = tmp.path().join("copy");
    for e in copy::plan(&src).unwrap().entries {
        assert_eq!(
            fs::read(src.join(&e.rel)).unwrap(),
            fs::read(dest.join(&e.rel)).unwrap(),
            "{:?}",
            e.rel
        );
    }
    // Left out like a base backup, but the directories are there.
    assert!(!dest.join("postmaster.pid").exists());
    assert!(dest.join("pg_stat_tmp").is_dir());
    assert!(!dest.join("pg_stat_tmp/x").exists());
    assert_eq!(
        fs::metadata(dest.join("base/1/2608")).unwrap().mode() & 0o777,
        0o640
    );
    // The prepare directory must not exist.
    let again = unpack(&file, &dest, None, &|_| {}, &CancellationToken::new()).unwrap_err();
    assert!(matches!(again, BackupError::Exists { .. }), "{again}");
}

/// Rewrite the backup's tar stream with `edit` applied to the bytes of the
/// entry named `name`.
fn tamper(file: &Path, name: &str, edit: impl Fn(&mut Vec<u8>)) {
    let mut ar = open_archive(file).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if path == Path::new(name) {
            edit(&mut data);
        }
        h.set_size(data.len() as u64);
        out.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    let tar = out.into_inner().unwrap();
    fs::write(file, zstd::encode_all(tar.as_slice(), 1).unwrap()).unwrap();
}

#[test]
fn a_changed_byte_is_found_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = packed(tmp.path());
    tamper(&file, "data/base/1/2608", |d| d[100] ^= 1);
    let e = unpack(
        &file,
        &tmp.path().join("p"),
        None,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("is damaged: base/1/2608: expected BLAKE3"),
        "{msg}"
    );
}

#[test]
fn a_truncated_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = packed(tmp.path());
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = unpack(
        &file,
        &tmp.path().join("p"),
        None,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert!(matches!(e, BackupError::NotABackup { .. }), "{e}");
}

#[test]
fn a_path_escaping_the_prepare_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = packed(tmp.path());
    let mut ar = open_archive(&file).unwrap();
    let mut out = tar::Builder::new(Vec::new());
    for e in ar.entries().unwrap().take(1) {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.append_data(&mut h, META_ENTRY, data.as_slice())
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o600);
    // append_data refuses "..", so write the name into the header directly.
    h.as_gnu_mut().unwrap().name[..14].copy_from_slice(b"data/../escape");
    h.set_cksum();
    out.append(&h, &b"bad"[..]).unwrap();
    let tar = out.into_inner().unwrap();
    fs::write(&file, zstd::encode_all(tar.as_slice(), 1).unwrap()).unwrap();
    let e = unpack(
        &file,
        &tmp.path().join("p"),
        None,
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not plain"), "{e}");
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn other_files_are_not_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.tar.zst");
    fs::write(&f, b"hello").unwrap();
    let e = read_meta(&f).unwrap_err();
    assert!(e.to_string().contains("is not a Tandem backup"), "{e}");
}

#[test]
fn a_cancelled_pack_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("copy");
    fake_datadir(&src);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = pack(
        &src,
        tmp.path(),
        meta(),
        PackOptions::default(),
        &|_| {},
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, BackupError::Cancelled), "{e}");
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "copy")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn many_files_and_empty_ones_round_trip() {
    // More files than buffers in flight: every buffer must come back.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("copy");
    fake_datadir(&src);
    for i in 0..100 {
        let len = [0, 1, 511, 512, 513, CHUNK, CHUNK + 1][i % 7];
        fs::write(
            src.join(format!("base/1/{}", 20000 + i)),
            vec![i as u8; len],
        )
        .unwrap();
    }
    let out = tmp.path().join("b");
    fs::create_dir(&out).unwrap();
    let p = pack(
        &src,
        &out,
        meta(),
        PackOptions::default(),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    let file = p.commit().unwrap();
    let dest = tmp.path().join("p");
    let u = unpack(&file, &dest, None, &|_| {}, &CancellationToken::new()).unwrap();
    assert_eq!(u.files, copy::plan(&src).unwrap().entries.len() as u64);
    for i in 0..100 {
        let rel = format!("base/1/{}", 20000 + i);
        assert_eq!(
            fs::read(src.join(&rel)).unwrap(),
            fs::read(dest.join(&rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn recycled_and_old_wal_segments_are_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("copy");
    fake_datadir(&src);
    let seg = 1u64 << 20; // the fake directory's segments are 1 MiB
    // A segment is kept when its first page says it is for its own position.
    let write_seg = |name: &str, pageaddr: u64| {
        let mut data = vec![0u8; seg as usize];
        data[8..16].copy_from_slice(&pageaddr.to_ne_bytes());
        fs::write(src.join("pg_wal").join(name), data).unwrap();
    };
    // 1 MiB segments: 4096 per log. Segment 3 and 4 are real, 5 is recycled
    // (an old page address), 2 is before the redo point.
    write_seg("000000010000000000000002", 2 * seg);
    write_seg("000000010000000000000003", 3 * seg);
    write_seg("000000010000000000000004", 4 * seg);
    write_seg("000000010000000000000005", seg);
    fs::remove_file(src.join("pg_wal/000000010000000000000001")).unwrap();
    let out = tmp.path().join("b");
    fs::create_dir(&out).unwrap();
    let mut m = meta();
    m.start_lsn = Lsn(3 * seg + 40);
    let p = pack(
        &src,
        &out,
        m,
        PackOptions::default(),
        &|_| {},
        &CancellationToken::new(),
    )
    .unwrap();
    let file = p.commit().unwrap();
    let dest = tmp.path().join("p");
    unpack(&file, &dest, None, &|_| {}, &CancellationToken::new()).unwrap();
    let mut wal: Vec<String> = fs::read_dir(dest.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    wal.sort();
    assert_eq!(
        wal,
        ["000000010000000000000003", "000000010000000000000004"]
    );
    assert!(dest.join("pg_wal/archive_status").is_dir());
}
