//! A maintenance window as the store keeps it: one document with its
//! plan, its state, the steps done, and what became of a restore's orders
//! (the types are `tandem_proto::window`'s, shared with tandemctl).

pub use tandem_proto::window::{Ending, Window, WindowState};

use tandem_proto::window::{Action, Step};

/// Whether a failed step of a restore window left the set as it was
/// before: the prepare order changes nothing, and the agent's restore puts
/// the old data directory back on a failure before R9 (its undo).
pub(super) fn restore_undone(w: &Window, step: &Step) -> bool {
    match step.action {
        Action::RestorePrepare => true,
        Action::Restore => w.restore.as_ref().is_some_and(|o| {
            o.failed_step
                .as_deref()
                .is_some_and(|s| !s.starts_with("R9") && !s.starts_with("R10"))
        }),
        _ => false,
    }
}

/// The request id of a restore window's agent order: asked again after a
/// controller restart, the agent returns the operation it started.
pub(super) fn restore_request(window: &str, action: Action) -> String {
    format!("{window}/{}", action.name())
}
