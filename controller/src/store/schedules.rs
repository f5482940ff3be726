//! Policies set at run time, and where each set's schedule stands, so a
//! restarted controller neither forgets a due test nor runs a burst of them.

use jiff::Timestamp;

use super::sql::args;
use super::{Store, StoreError, ts};

/// A set's policies as `tandemctl set policy` left them (strings in the
/// policy grammar, parsed by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    pub test: String,
    pub archive_copy: String,
    pub archive_file: bool,
    /// `online`, `cold`, or empty (each agent's default).
    pub mode: String,
}

/// Where one set's schedule for one purpose stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    /// The policy the row is for (a different one starts afresh).
    pub policy: String,
    pub since: Timestamp,
    pub last_due: Option<Timestamp>,
}

impl Store {
    pub async fn policy(&self, set: String) -> Result<Option<PolicyRow>, StoreError> {
        self.call(move |c| {
            c.query_opt(
                "SELECT test, archive_copy, archive_file, mode FROM policies WHERE set_name = ?1",
                args![set],
            )?
            .map(|r| {
                Ok(PolicyRow {
                    test: r.get(0)?,
                    archive_copy: r.get(1)?,
                    archive_file: r.get(2)?,
                    mode: r.get(3)?,
                })
            })
            .transpose()
        })
        .await
    }

    /// Store a set's policies (`None`: back to the config's).
    pub async fn put_policy(&self, set: String, p: Option<PolicyRow>) -> Result<(), StoreError> {
        self.call(move |c| {
            match p {
                Some(p) => c.exec(
                    "INSERT INTO policies(set_name, test, archive_copy, archive_file, changed_at, mode) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(set_name) DO UPDATE SET test = ?2, archive_copy = ?3, archive_file = ?4, changed_at = ?5, mode = ?6",
                    args![set, p.test, p.archive_copy, p.archive_file, Timestamp::now().to_string(), p.mode],
                ),
                None => c.exec("DELETE FROM policies WHERE set_name = ?1", args![set]),
            }
            .map(|_| ())
        })
        .await
    }

    pub async fn schedule(
        &self,
        set: String,
        purpose: &'static str,
    ) -> Result<Option<ScheduleRow>, StoreError> {
        self.call(move |c| {
            c.query_opt(
                "SELECT policy, since, last_due FROM schedules WHERE set_name = ?1 AND purpose = ?2",
                args![set, purpose],
            )?
            .map(|r| {
                Ok(ScheduleRow {
                    policy: r.get(0)?,
                    since: ts(r.get(1)?),
                    last_due: r.get::<Option<String>>(2)?.map(ts),
                })
            })
            .transpose()
        })
        .await
    }

    pub async fn put_schedule(
        &self,
        set: String,
        purpose: &'static str,
        row: ScheduleRow,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            c.exec(
                "INSERT INTO schedules(set_name, purpose, policy, since, last_due) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(set_name, purpose) DO UPDATE SET policy = ?3, since = ?4, last_due = ?5",
                args![
                    set,
                    purpose,
                    row.policy,
                    row.since.to_string(),
                    row.last_due.map(|t| t.to_string())
                ],
            )
            .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn policies_and_schedules_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("c.db")).unwrap();
        assert_eq!(s.policy("a".into()).await.unwrap(), None);
        let p = PolicyRow {
            test: "interval=60".into(),
            archive_copy: "off".into(),
            archive_file: true,
            mode: "cold".into(),
        };
        s.put_policy("a".into(), Some(p.clone())).await.unwrap();
        assert_eq!(s.policy("a".into()).await.unwrap(), Some(p));
        s.put_policy("a".into(), None).await.unwrap();
        assert_eq!(s.policy("a".into()).await.unwrap(), None);

        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let row = ScheduleRow {
            policy: "AT*0000".into(),
            since: t,
            last_due: Some(t),
        };
        s.put_schedule("a".into(), "test", row.clone())
            .await
            .unwrap();
        assert_eq!(s.schedule("a".into(), "test").await.unwrap(), Some(row));
        assert_eq!(s.schedule("a".into(), "archive_copy").await.unwrap(), None);
    }
}
