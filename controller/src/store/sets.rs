//! The inventory in the store (SPEC C1): sets, their members, generations,
//! and who changed them last. The rules (what a set may be, what the file
//! may import) are in `crate::sets`; this is only reading and writing.
//!
//! A set's row outlives its removal (`state = 'removed'`, members deleted),
//! so its generation keeps increasing if it comes back: an agent that saw
//! generation 7 refuses an order made with 1 (STYLE 8).

use jiff::Timestamp;

use super::sql::{DbError, Tx, args};
use super::{Store, StoreError, ts};
use crate::sets::{MemberDecl, SetDecl, StoredSet, StoredState};

/// One set as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRow {
    pub stored: StoredSet,
    pub generation: u64,
    /// `controller.toml` (imported at start) or `tandemctl` (added or
    /// changed by a person since).
    pub source: String,
    pub changed_at: Option<Timestamp>,
    /// Who changed it last (an identity URI; empty when imported).
    pub changed_by: String,
}

fn write_members(tx: &mut Tx<'_>, set: &SetDecl) -> Result<(), DbError> {
    tx.exec("DELETE FROM members WHERE set_name = ?1", args![set.name])?;
    for (i, m) in set.members.iter().enumerate() {
        tx.exec(
            "INSERT INTO members(set_name, name, agent, host, position) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![set.name, m.name, m.agent, m.host, i as i64],
        )?;
    }
    Ok(())
}

fn stored_members(tx: &mut Tx<'_>, set: &str) -> Result<SetDecl, DbError> {
    let members = tx
        .query(
            "SELECT name, agent, host FROM members WHERE set_name = ?1 ORDER BY position, name",
            args![set],
        )?
        .iter()
        .map(|r| {
            Ok(MemberDecl {
                name: r.get(0)?,
                agent: r.get(1)?,
                host: r.get(2)?,
            })
        })
        .collect::<Result<_, DbError>>()?;
    Ok(SetDecl {
        name: set.to_owned(),
        members,
    })
}

impl Store {
    /// Every set the store has seen, in the order they were first stored.
    pub async fn sets(&self) -> Result<Vec<SetRow>, StoreError> {
        self.call(|tx| {
            let rows: Vec<(String, i64, String, String, Option<String>, String)> = tx
                .query(
                    "SELECT name, generation, state, source, changed_at, changed_by FROM sets ORDER BY rowid",
                    args![],
                )?
                .iter()
                .map(|r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .collect::<Result<_, DbError>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (name, generation, state, source, changed_at, changed_by) in rows {
                let changed_at = changed_at.map(ts);
                let state = match state.as_str() {
                    "active" => StoredState::Active,
                    "removed" => StoredState::Removed {
                        at: changed_at.unwrap_or(Timestamp::UNIX_EPOCH),
                        by: changed_by.clone(),
                    },
                    _ => StoredState::Legacy,
                };
                out.push(SetRow {
                    stored: StoredSet {
                        decl: stored_members(tx, &name)?,
                        state,
                    },
                    generation: generation as u64,
                    source,
                    changed_at,
                    changed_by,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Import sets from `controller.toml` (ones the store never saw, or
    /// only mirrored before schema 5), each with a history entry. Rows an
    /// older controller mirrored that the file no longer declares lose
    /// their members (they were not in force either).
    pub async fn import_sets(&self, sets: Vec<SetDecl>) -> Result<(), StoreError> {
        self.call(move |tx| {
            let now = Timestamp::now().to_string();
            for set in &sets {
                let before = stored_members(tx, &set.name)?;
                let existed = tx.exec(
                    "UPDATE sets SET state = 'active', source = 'controller.toml', changed_at = ?2, changed_by = '' WHERE name = ?1",
                    args![set.name, now],
                )? > 0;
                if !existed {
                    tx.exec(
                        "INSERT INTO sets(name, created_at, state, source, changed_at) VALUES (?1, ?2, 'active', 'controller.toml', ?2)",
                        args![set.name, now],
                    )?;
                }
                // An agent mirrored under another set by an older controller moves.
                for m in &set.members {
                    tx.exec(
                        "DELETE FROM members WHERE agent = ?1 AND set_name != ?2",
                        args![m.agent, set.name],
                    )?;
                }
                write_members(tx, set)?;
                if existed && !crate::sets::same_members(&before, set) {
                    tx.exec(
                        "UPDATE sets SET generation = generation + 1 WHERE name = ?1",
                        args![set.name],
                    )?;
                }
                let generation: i64 = tx
                    .query_one("SELECT generation FROM sets WHERE name = ?1", args![set.name])?
                    .get(0)?;
                tx.exec(
                    "INSERT INTO set_events(set_name, at, kind, message) VALUES (?1, ?2, 'inventory', ?3)",
                    args![
                        set.name,
                        now,
                        format!(
                            "imported from controller.toml: members {}; set generation {generation}",
                            set.describe_members()
                        )
                    ],
                )?;
            }
            tx.exec(
                "DELETE FROM members WHERE set_name IN (SELECT name FROM sets WHERE state = 'legacy')",
                args![],
            )?;
            Ok(())
        })
        .await
    }

    /// Put `set` in force as a person asked (added, re-added, or its members
    /// changed), with a history entry `event` (the new generation is
    /// appended). The generation increases when the set existed before and
    /// its members change or it comes back after a removal. Returns the
    /// set's generation.
    pub async fn put_set(
        &self,
        set: SetDecl,
        by: String,
        event: String,
    ) -> Result<u64, StoreError> {
        self.call(move |tx| {
            let now = Timestamp::now().to_string();
            let before: Option<String> = tx
                .query_opt("SELECT state FROM sets WHERE name = ?1", args![set.name])?
                .map(|r| r.get(0))
                .transpose()?;
            let old = stored_members(tx, &set.name)?;
            match &before {
                Some(state) => {
                    let bump = state != "active" || !crate::sets::same_members(&old, &set);
                    tx.exec(
                        "UPDATE sets SET state = 'active', source = 'tandemctl', changed_at = ?2, changed_by = ?3,
                           generation = generation + ?4 WHERE name = ?1",
                        args![set.name, now, by, i64::from(bump)],
                    )?;
                }
                None => {
                    tx.exec(
                        "INSERT INTO sets(name, created_at, state, source, changed_at, changed_by) VALUES (?1, ?2, 'active', 'tandemctl', ?2, ?3)",
                        args![set.name, now, by],
                    )?;
                }
            }
            write_members(tx, &set)?;
            let generation: i64 = tx
                .query_one("SELECT generation FROM sets WHERE name = ?1", args![set.name])?
                .get(0)?;
            tx.exec(
                "INSERT INTO set_events(set_name, at, kind, message) VALUES (?1, ?2, 'inventory', ?3)",
                args![set.name, now, format!("{event}; set generation {generation}")],
            )?;
            Ok(generation as u64)
        })
        .await
    }

    /// Remove a set from the inventory: its members go, its row (generation,
    /// history, verdicts) stays, with a history entry `event`.
    pub async fn remove_set(
        &self,
        set: String,
        by: String,
        event: String,
    ) -> Result<(), StoreError> {
        self.call(move |tx| {
            let now = Timestamp::now().to_string();
            tx.exec(
                "UPDATE sets SET state = 'removed', source = 'tandemctl', changed_at = ?2, changed_by = ?3 WHERE name = ?1",
                args![set, now, by],
            )?;
            tx.exec("DELETE FROM members WHERE set_name = ?1", args![set])?;
            tx.exec("DELETE FROM schedules WHERE set_name = ?1", args![set])?;
            tx.exec(
                "INSERT INTO set_events(set_name, at, kind, message) VALUES (?1, ?2, 'inventory', ?3)",
                args![set, now, event],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, members: &[&str]) -> SetDecl {
        SetDecl {
            name: name.into(),
            members: members
                .iter()
                .map(|m| MemberDecl {
                    name: (*m).into(),
                    agent: (*m).into(),
                    host: None,
                })
                .collect(),
        }
    }

    fn find(rows: &[SetRow], name: &str) -> SetRow {
        rows.iter()
            .find(|r| r.stored.decl.name == name)
            .cloned()
            .unwrap()
    }

    #[tokio::test]
    async fn generations_go_on_through_changes_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        s.import_sets(vec![set("billing", &["db1", "db2"])])
            .await
            .unwrap();
        let row = find(&s.sets().await.unwrap(), "billing");
        assert_eq!(row.generation, 1);
        assert_eq!(row.stored.state, StoredState::Active);
        assert_eq!(row.source, "controller.toml");
        assert_eq!(row.stored.decl, set("billing", &["db1", "db2"]));

        let admin = "spiffe://tandem/user/admin".to_owned();
        // Same members in another order: no new generation.
        let g = s
            .put_set(set("billing", &["db2", "db1"]), admin.clone(), "x".into())
            .await
            .unwrap();
        assert_eq!(g, 1);
        let g = s
            .put_set(set("billing", &["db1", "db3"]), admin.clone(), "y".into())
            .await
            .unwrap();
        assert_eq!(g, 2);
        s.remove_set("billing".into(), admin.clone(), "removed".into())
            .await
            .unwrap();
        let row = find(&s.sets().await.unwrap(), "billing");
        assert!(
            matches!(&row.stored.state, StoredState::Removed { by, .. } if by == &admin),
            "{row:?}"
        );
        assert!(row.stored.decl.members.is_empty());
        // Back with the same members: a new generation all the same.
        let g = s
            .put_set(set("billing", &["db1", "db3"]), admin.clone(), "z".into())
            .await
            .unwrap();
        assert_eq!(g, 3);
        let events = s.set_events("billing".into(), 0).await.unwrap();
        assert_eq!(events[0].message, "z; set generation 3");
        assert!(events.iter().all(|e| e.kind == "inventory"));
        assert_eq!(s.generation("nope".into()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rows_of_an_older_controller_are_legacy_until_imported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A store as a schema-4 controller left it: sets mirrored from its file.
        {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::super::migrations::MIGRATIONS[..4] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 4).unwrap();
            let tx = c.transaction().unwrap();
            tx.execute(
                "INSERT INTO sets(name, generation, created_at) VALUES ('old', 4, 'x'), ('kept', 2, 'x')",
                [],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO members(set_name, name, agent) VALUES ('old', 'o1', 'o1'), ('kept', 'k1', 'k1')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let rows = s.sets().await.unwrap();
        assert_eq!(find(&rows, "old").stored.state, StoredState::Legacy);
        s.import_sets(vec![set("kept", &["k1"])]).await.unwrap();
        let rows = s.sets().await.unwrap();
        let kept = find(&rows, "kept");
        assert_eq!(
            (kept.stored.state.clone(), kept.generation),
            (StoredState::Active, 2),
            "same members: the generation stays"
        );
        let old = find(&rows, "old");
        assert_eq!(old.stored.state, StoredState::Legacy);
        assert!(old.stored.decl.members.is_empty(), "{old:?}");
    }
}
