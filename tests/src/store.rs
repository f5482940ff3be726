//! The controller's store for a test fleet ([`StoreKind`]): an SQLite file
//! in the fleet's directory, or a database on a private PostgreSQL server
//! ([`PgStore`]) that the fleet makes and stops with itself.
//!
//! One server per fleet, not one per test process: a process-wide server
//! would live in a `static`, which Rust never drops, so nothing would stop
//! it at exit; per fleet it is a [`PgPair`] with no standby and is stopped
//! and removed like the sets' servers. It costs ~1.6 s (initdb and start,
//! measured on a loaded 2-core machine) against ~0.3 s for a `CREATE
//! DATABASE` on a shared one: a few seconds for the whole suite.
//!
//! [`on_both_stores!`](crate::on_both_stores) runs one test body on each
//! store, for the tests where the store matters: a controller killed and
//! started again must carry on from what it stored.

use crate::pg::PgPair;

/// Which store a fleet's controller keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// `controller.db` in the fleet's directory.
    #[default]
    Sqlite,
    /// The database `tandem` on a private PostgreSQL server ([`PgStore`]).
    Postgresql,
}

/// A private PostgreSQL server (no standby) with an empty database
/// `tandem` for a controller's store; dropping it stops the server and
/// removes its directory (kept, like any [`PgPair`], when a test failed).
#[derive(Debug)]
pub struct PgStore {
    pub server: PgPair,
    /// The `postgresql://` URI of the database, over the server's socket.
    pub uri: String,
}

impl PgStore {
    pub async fn create() -> anyhow::Result<PgStore> {
        let server = PgPair::create("store", 0).await?;
        server.primary.psql("postgres", "CREATE DATABASE tandem")?;
        let uri = format!(
            "postgresql://postgres@localhost/tandem?host={}&port={}",
            server.primary.socket_dir.display(),
            server.primary.port
        );
        Ok(PgStore { server, uri })
    }
}

/// `on_both_stores!(body)` with `async fn body(store: StoreKind)`: two
/// tests, `body::on_sqlite` and `body::on_postgresql`, each running `body`
/// with its store (`cargo test body` runs both).
#[macro_export]
macro_rules! on_both_stores {
    ($body:ident) => {
        mod $body {
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$body($crate::store::StoreKind::Sqlite).await;
            }

            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgresql() {
                super::$body($crate::store::StoreKind::Postgresql).await;
            }
        }
    };
}
