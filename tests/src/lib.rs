//! End-to-end harness.
pub mod corrupt;
pub mod fleet;
pub mod otlp;
pub mod patroni;
pub mod pg;
pub mod procs;
pub mod prom;
pub mod s3;
pub mod scale;
pub mod wait;
pub mod xfs;

/// The agent's testdb steps, in order (the names its journal, traces and
/// metrics use).
pub const TESTDB_STEPS: [&str; 8] = [
    "stop_standby",
    "copy",
    "start_standby",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
    "checksums",
];

/// A backup's steps: the testdb steps with `pack` after the copy.
pub const BACKUP_STEPS: [&str; 9] = [
    "stop_standby",
    "copy",
    "start_standby",
    "pack",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
    "checksums",
];
