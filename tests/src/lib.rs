//! End-to-end harness.
pub mod corrupt;
pub mod fleet;
pub mod otlp;
pub mod pg;
pub mod procs;
pub mod scale;
pub mod wait;
