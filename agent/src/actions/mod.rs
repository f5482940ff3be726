//! Actions: multi-step work over the engine, each declaring its steps and
//! undos on a `steps::Run`. `testdb` also serves the copy-only and backup
//! operations; `restore` is the runbook; `maintain` one window step. No
//! action knows the slot (`ops`); `orders` joins the two.

pub mod maintain;
pub mod restore;
pub mod testdb;
