//! tandemctl, the operator's command line for Tandem, as a library that
//! `main.rs` drives.
//!
//! - [`cli`]: every command and flag, with its help (clap).
//! - [`commands`]: what each command does: one controller call, then output.
//! - [`output`]: tables for people, stable JSON for scripts.
//! - [`testdb`]: start a run and follow it (`testdb`, `watch`), `cancel`.
//! - [`inventory`]: `set list/add/change/remove` and the member spec.
//! - [`certs`]: `tandemctl certs init`, a development CA and the certificates
//!   of the controller, agents and users (PEM files in one directory).
pub mod certs;
pub mod cli;
pub mod commands;
pub mod inventory;
pub mod maintenance;
pub mod output;
pub mod restore;
pub mod testdb;
