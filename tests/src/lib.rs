//! End-to-end harness.
pub mod archiving;
pub mod corrupt;
pub mod firebird;
pub mod fleet;
pub mod otlp;
pub mod patroni;
pub mod pg;
pub mod procs;
pub mod prom;
pub mod s3;
pub mod scale;
pub mod store;
pub mod wait;
pub mod xfs;

/// The agent's testdb steps in online mode (the default), in order (the
/// names its journal, traces and metrics use).
pub const TESTDB_STEPS: [&str; 9] = [
    "start_backup",
    "copy",
    "stop_backup",
    "manifest",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
    "checksums",
];

/// The testdb steps on Firebird (always online: `nbackup -L` while the
/// database serves; no offline page checksums to read).
pub const FIREBIRD_TESTDB_STEPS: [&str; 8] = [
    "start_backup",
    "copy",
    "stop_backup",
    "manifest",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
];

/// The testdb steps in cold mode: the standby stopped for the copy.
pub const COLD_TESTDB_STEPS: [&str; 9] = [
    "stop_standby",
    "copy",
    "start_standby",
    "manifest",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
    "checksums",
];

/// A backup's steps (online mode): the testdb steps with `pack` after the
/// manifest.
pub const BACKUP_STEPS: [&str; 10] = [
    "start_backup",
    "copy",
    "stop_backup",
    "manifest",
    "pack",
    "open_private",
    "checks",
    "stop_private",
    "lost_rows",
    "checksums",
];
