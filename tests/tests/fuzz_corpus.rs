//! The fuzzers' corpus as regression tests: every input under
//! `fuzz/corpus/<target>/` (seeds, and whatever a fuzzer found and was
//! fixed) goes through the same entry point the fuzz target calls.

use std::path::PathBuf;

fn each(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus for {target} in {}", dir.display());
}

#[test]
fn the_schedule_grammar_corpus() {
    each("schedule", tandem_controller::fuzzing::schedule);
}

#[test]
fn the_controller_config_corpus() {
    each(
        "controller_config",
        tandem_controller::fuzzing::controller_config,
    );
}

#[test]
fn the_agent_config_corpus() {
    each("agent_config", tandem_agent::fuzzing::agent_config);
}

#[test]
fn the_tool_output_corpus() {
    each("tool_output", tandem_agent::fuzzing::tool_output);
}

#[test]
fn the_wal_name_corpus() {
    each("wal_name", tandem_agent::fuzzing::wal_name);
}

#[test]
fn the_archive_corpus() {
    each("archive", tandem_agent::fuzzing::archive);
}

#[test]
fn the_start_order_corpus() {
    each("start_order", tandem_proto::fuzzing::start_order);
}

#[test]
fn the_page_readers_corpus() {
    each("pages", tandem_agent::fuzzing::pages);
}
