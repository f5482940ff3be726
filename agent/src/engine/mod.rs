//! The engine boundary (DESIGN "The engine boundary").
//!
//! The agent's actions never run database tools themselves; they call an
//! [`Engine`]. PostgreSQL ([`postgres::PostgresEngine`]) is the first engine
//! and the one every claim is proven on. Later issues add `stop`/`start`,
//! the ordered copy, private instances, checks and restore to this trait.

pub mod postgres;

use std::future::Future;

use tandem_proto::model::Facts;

/// A local database instance the agent looks after.
pub trait Engine: Send + Sync + 'static {
    /// Read the instance's facts now: role, log positions, replication state,
    /// sizes, version. Never fails: what could not be read is said in
    /// `Facts::problem` and the role is `Unknown`.
    fn facts(&self) -> impl Future<Output = Facts> + Send;
}
