//! From an order to a running action: the one place that knows both the
//! slot (`ops`) and the actions.
//!
//! [`start`] asks the slot what holds for every order, then checks the
//! action's own preconditions (a streaming standby and room for the copy;
//! a restore's backup, space and target time), then launches the action.
//! Every refusal comes before anything is written.

use std::sync::Arc;

use tandem_proto::model::TestMode;
use tandem_proto::order::{Order, StartOrder};

use crate::actions::maintain::Maintain;
use crate::actions::restore::{self, Restore, RestoreError};
use crate::actions::testdb::{Preconditions, Testdb, TestdbError};
use crate::engine::Engine;
use crate::ops::{AdmitError, Operations};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Refused(#[from] TestdbError),
    #[error(transparent)]
    RestoreRefused(#[from] RestoreError),
    #[error(
        "this agent has no [backup] section in its agent.toml: add one with `dir` (see deploy/agent.example.toml)"
    )]
    NoBackupConfig,
}

/// Check, record and launch one order; the operation's id (the one it
/// joined, or the one a repeated request id started).
pub async fn start<E: Engine>(
    ops: &Arc<Operations<E>>,
    o: StartOrder,
) -> Result<String, StartError> {
    if matches!(o.order, Order::Backup { .. }) && ops.config().backup.is_none() {
        return Err(StartError::NoBackupConfig);
    }
    if let Some(id) = ops.admit(&o)? {
        return Ok(id);
    }
    let cfg = ops.config().clone();
    let id = match &o.order {
        Order::Testdb { .. } | Order::Copy { .. } | Order::Backup { .. } => {
            let asked = o.order.copy_options().and_then(|c| c.mode);
            let mode = resolve_mode(asked, cfg.testdb.mode);
            let bytes = Preconditions::check(&cfg, &**ops.engine(), mode)
                .await?
                .data_bytes;
            let (only_copy, pack, skip_logical) = match o.order {
                Order::Testdb {
                    skip_logical_read, ..
                } => (false, false, skip_logical_read),
                Order::Copy { .. } => (true, false, false),
                Order::Backup { untested, .. } => (untested, true, false),
                _ => unreachable!("matched above"),
            };
            let action = Testdb {
                only_copy,
                pack,
                logical_read: cfg.testdb.logical_read && !skip_logical,
                mode,
            };
            ops.launch(&o, bytes, action)?
        }
        Order::Restore(r) => {
            let plan = restore::Plan::check(&cfg, &**ops.engine(), r)?;
            let bytes = plan.unpacked_bytes;
            ops.launch(&o, bytes, Restore { plan })?
        }
        Order::Maintenance(m) => ops.launch(&o, 0, Maintain { order: m.clone() })?,
    };
    Ok(id)
}

/// The mode an order runs in: the one it names, else the configured one.
fn resolve_mode(asked: Option<TestMode>, configured: TestMode) -> TestMode {
    asked.unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orders_mode_wins_over_the_configured_one() {
        use TestMode::{Cold, Online};
        assert_eq!(resolve_mode(Some(Cold), Online), Cold);
        assert_eq!(resolve_mode(Some(Online), Cold), Online);
        assert_eq!(resolve_mode(None, Online), Online);
        assert_eq!(resolve_mode(None, Cold), Cold);
    }
}
