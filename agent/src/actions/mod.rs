//! Actions: multi-step work over the engine, each step named, timed, traced
//! and safe to run again. `testdb` also serves the copy-only operation.

pub mod restore;
pub mod testdb;
