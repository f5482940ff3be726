//! tandemctl, the operator's command line for Tandem, as a library that
//! `main.rs` drives.
//!
//! - [`cli`]: every command and flag, with its help (clap).
//! - [`commands`]: what each command does: one controller call, then output.
//! - [`outcome`]: how a command ends (exit code, error) and its printing;
//!   [`client`]: the connection to the controller. Every command uses both.
//! - [`output`]: tables for people, stable JSON for scripts.
//! - [`testdb`]: start a run and follow it (`testdb`, `watch`), `cancel`.
//! - [`inventory`]: `set list/add/change/remove`; [`member`]: the member spec.
//! - [`maintenance`]: `tandemctl maintenance`; [`restore`]: `tandemctl
//!   restore`; [`window`]: a window shown and followed, for both.
//! - [`certs`]: `tandemctl certs init`, a development CA and the certificates
//!   of the controller, agents and users (PEM files in one directory).
pub mod certs;
pub mod cli;
pub mod client;
pub mod commands;
pub mod inventory;
pub mod maintenance;
pub mod member;
pub mod outcome;
pub mod output;
pub mod restore;
pub mod testdb;
pub mod window;
