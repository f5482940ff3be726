//! The files an operation leaves on the agent's host for people and for
//! the next operation: where the copy goes and its unusable marker, the
//! state file of the last test (SPEC T5), and `testdb.out`; and what a
//! filesystem has free.

use std::path::{Path, PathBuf};

use serde_json::json;
use tracing::{error, warn};

use crate::config::AgentConfig;
use crate::journal::{OpRecord, OpState, write_atomic};

/// Where the copy goes: `<archive_dir>/copy` (manifest: `copy.manifest`).
pub fn copy_dir(cfg: &AgentConfig) -> PathBuf {
    cfg.archive_dir().join("copy")
}

/// `<archive_dir>/copy.UNUSABLE`: there while a copy is incomplete or was
/// interrupted, saying why.
pub fn unusable_marker(cfg: &AgentConfig) -> PathBuf {
    cfg.archive_dir().join("copy.UNUSABLE")
}

/// Mark the copy unusable (SPEC T3), saying why.
pub fn mark_copy_unusable(cfg: &AgentConfig, why: &str) {
    if let Err(e) = std::fs::write(unusable_marker(cfg), format!("{why}\n")) {
        warn!(error = %e, "cannot mark the copy unusable");
    }
}

pub fn state_file_path(cfg: &AgentConfig) -> PathBuf {
    cfg.home.join("testdb.state.json")
}

pub fn output_path(cfg: &AgentConfig) -> PathBuf {
    cfg.home.join("testdb.out")
}

/// The state file (SPEC T5): the last result, kept across restarts.
pub fn state_json(rec: &OpRecord) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for f in &rec.findings {
        let n = counts.get(&f.kind).and_then(|v| v.as_u64()).unwrap_or(0);
        counts.insert(f.kind.clone(), json!(n + 1));
    }
    let result = match rec.state {
        OpState::Succeeded => "clean",
        OpState::ErrorsFound => "errors_found",
        OpState::Failed => "failed",
        OpState::Cancelled => "cancelled",
        OpState::Interrupted => "interrupted",
        OpState::Running => "running",
    };
    json!({
        "operation_id": rec.id,
        "kind": rec.kind,
        "result": result,
        "errors": rec.state == OpState::ErrorsFound,
        "started_at": rec.started_at,
        "finished_at": rec.finished_at,
        "tested_lsn": rec.tested_lsn,
        "finding_counts": counts,
        "findings": rec.findings,
        "reason": rec.reason,
        "warnings": rec.warnings,
        "coverage": rec.coverage,
        "steps": rec.steps,
        "standby_downtime_seconds": rec.standby_downtime_seconds,
        "mode": rec.mode,
        "copy_method": rec.copy_method,
        "copy_note": rec.copy_note,
        "bytes_copied": rec.bytes_copied,
        "output": rec.output_path,
    })
}

/// The state file for people (`tandem-agent show`).
pub fn state_human(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let mut out = match v["result"].as_str() {
        Some("clean") if v["tested_lsn"].is_null() => format!(
            "clean: the database and its copy verified clean (the set's only member; finished {})\n",
            s("finished_at")
        ),
        Some("clean") => format!(
            "clean: primary, standby and copy verified clean up to LSN {} (finished {})\n",
            s("tested_lsn"),
            s("finished_at")
        ),
        Some("errors_found") => format!(
            "errors found on the standby's copy (finished {}): they are the primary's errors too; repair on the primary with the whole set halted\n",
            s("finished_at")
        ),
        Some(other) => format!("{other}: {}\n", s("reason")),
        None => "unknown state file\n".to_owned(),
    };
    if let Some(f) = v["findings"].as_array() {
        for f in f.iter().take(10) {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                f["kind"].as_str().unwrap_or(""),
                f["database"].as_str().unwrap_or(""),
                f["relation"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(w) = v["warnings"].as_array() {
        for w in w {
            out.push_str(&format!("  warning: {}\n", w.as_str().unwrap_or("")));
        }
    }
    out.push_str(&format!(
        "operation {}, started {}, mode {}, copy {}, standby down {} s, output {}\n",
        s("operation_id"),
        s("started_at"),
        s("mode"),
        s("copy_method"),
        v["standby_downtime_seconds"]
            .as_f64()
            .map_or("-".into(), |d| format!("{d:.1}")),
        s("output")
    ));
    if let Some(note) = v["copy_note"].as_str() {
        out.push_str(&format!("  copy: {note}\n"));
    }
    out
}

pub fn write_state_file(cfg: &AgentConfig, rec: &OpRecord) {
    let bytes = serde_json::to_vec_pretty(&state_json(rec)).expect("json serializes");
    if let Err(e) = write_atomic(&state_file_path(cfg), &bytes) {
        error!(error = %e, "cannot write the state file");
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Whether `a` and `b` are on one filesystem (false when either is missing).
pub fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}
