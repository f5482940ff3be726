//! Maintenance windows (SPEC T4, C4), one JSON document each: the plan, each
//! step's outcome and the report, written after every step so a restarted
//! controller carries on from where the window stood. The document's shape
//! belongs to `crate::maintenance`; the store keeps it with its state.

use super::sql::args;
use super::{Store, StoreError, limit_arg};

/// A window's states that are over: nothing runs, the set is not held.
pub const FINISHED_STATES: [&str; 2] = ["closed", "aborted"];

impl Store {
    /// Insert or replace a window's document.
    pub async fn put_window(
        &self,
        id: String,
        set: String,
        state: String,
        doc: String,
        opened_at: String,
        closed_at: Option<String>,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO windows(id, set_name, state, doc, opened_at, closed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET state = ?3, doc = ?4, closed_at = ?6",
                args![id, set, state, doc, opened_at, closed_at],
            )
            .map(|_| ())
        })
        .await
    }

    /// A set's window documents, newest first (all when `limit` is 0).
    pub async fn window_docs(&self, set: String, limit: u32) -> Result<Vec<String>, StoreError> {
        let limit = limit_arg(limit);
        self.call(move |c| {
            c.query(
                "SELECT doc FROM windows WHERE set_name = ?1 ORDER BY opened_at DESC, rowid DESC LIMIT ?2",
                args![set, limit],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .await
    }

    /// The documents of windows that are not over, oldest first.
    pub async fn unfinished_window_docs(&self) -> Result<Vec<String>, StoreError> {
        self.call(move |c| {
            c.query(
                "SELECT doc FROM windows WHERE state NOT IN (?1, ?2) ORDER BY opened_at, rowid",
                args![FINISHED_STATES[0], FINISHED_STATES[1]],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn windows_are_kept_newest_first_and_unfinished_ones_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        let put = |id: &str, state: &str, at: &str| {
            s.put_window(
                id.into(),
                "zeta".into(),
                state.into(),
                format!("{{\"id\":\"{id}\",\"state\":\"{state}\"}}"),
                at.into(),
                None,
            )
        };
        put("w1", "closed", "2026-11-21T10:00:00Z").await.unwrap();
        put("w2", "running", "2026-11-21T11:00:00Z").await.unwrap();
        put("w2", "failed", "2026-11-21T11:00:00Z").await.unwrap();
        let docs = s.window_docs("zeta".into(), 0).await.unwrap();
        assert_eq!(docs.len(), 2);
        assert!(docs[0].contains("\"w2\"") && docs[0].contains("failed"));
        let open = s.unfinished_window_docs().await.unwrap();
        assert_eq!(open.len(), 1);
        assert!(open[0].contains("\"w2\""));
        assert!(s.window_docs("other".into(), 0).await.unwrap().is_empty());
    }
}
