//! Entry points for the fuzzers (`fuzz/`) and their corpus regression test
//! (`tests/tests/fuzz_corpus.rs`): each takes arbitrary bytes, must never
//! panic, and checks what must hold of any input it accepts.

use std::path::Path;

use tokio_util::sync::CancellationToken;

/// `agent.toml`: parsed or refused with a message, never a panic.
pub fn agent_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::AgentConfig::parse(Path::new("agent.toml"), text);
    }
}

/// The check tools' output (amcheck, pg_checksums, pg_dumpall): every
/// finding has a kind and a message.
pub fn tool_output(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    use crate::engine::findings::{parse_amcheck, parse_checksums, parse_dump_errors};
    let all = parse_amcheck(&text)
        .into_iter()
        .chain(parse_checksums(&text, Path::new("/d")))
        .chain(parse_dump_errors(&text));
    for f in all {
        assert!(!f.kind.is_empty(), "{f:?}");
    }
}

/// A page of a copy's files (8 kB; shorter input is padded with zeros): the
/// page readers return data or an error, never a panic, and every TID they
/// return lies inside the page's bytes.
pub fn pages(data: &[u8]) {
    use crate::engine::pages::{self, Parsed, btree};
    let mut page = vec![0u8; 8192];
    let n = data.len().min(page.len());
    page[..n].copy_from_slice(&data[..n]);
    let Ok(Parsed::Page(p)) = pages::parse(&page, 8192) else {
        return;
    };
    assert!(p.max_offset() as usize <= 8192 / 4);
    for i in 1..=p.max_offset() {
        let lp = p.line_pointer(i).expect("within max_offset");
        if let Ok(item) = p.item(i) {
            assert_eq!(item.len(), lp.len as usize);
        }
    }
    let _ = btree::kind(&p);
    let mut tids = vec![];
    if let Ok(entries) = btree::leaf_tids(&p, &mut tids) {
        assert!(tids.len() as u64 >= entries);
    }
}

/// WAL file names: a name is valid exactly when it is a segment or a
/// history, backup or partial file, and `checked_name` agrees.
pub fn wal_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let valid = crate::backup::wal::valid_name(name);
    assert_eq!(
        valid,
        crate::backup::wal::checked_name(name).is_ok(),
        "{name:?}"
    );
    if crate::backup::wal::parse_segment(name).is_some() {
        assert!(valid, "{name:?} is a segment but not a valid name");
    }
    if valid {
        assert!(!name.contains('/') && !name.contains(".."), "{name:?}");
    }
}

/// A hostile `.tar.zst` (from a remote store, say): unpacking it fails or
/// succeeds, and writes nothing outside its directory.
pub fn archive(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let file = dir
        .path()
        .join("daily-20261201T000000Z-0_1000000-0_2000000.tar.zst");
    if std::fs::write(&file, data).is_err() {
        return;
    }
    let dest = dir.path().join("out").join("dest");
    let _ = std::fs::create_dir_all(dest.parent().expect("has a parent"));
    let _ = crate::backup::unpack(&file, &dest, None, &|_| {}, &CancellationToken::new());
    // Nothing beside the archive and the destination.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for n in &names {
        assert!(
            n == "out" || file.ends_with(n),
            "{n} written outside the destination"
        );
    }
    let beside: Vec<String> = std::fs::read_dir(dir.path().join("out"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("dest"))
        .collect();
    assert!(
        beside.is_empty(),
        "{beside:?} written beside the destination"
    );
}
