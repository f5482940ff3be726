//! The leader's lease on the shared (PostgreSQL) store: one row in
//! `tandem_leader` (who holds it, its address for clients, a generation,
//! until when), and a row per controller in `tandem_controllers` (who
//! takes part, last seen), for `tandemctl controllers`.
//!
//! Times are the store's own clock (`now()`), so the controllers' clocks
//! never have to agree. A lease is taken when none is held or the holder's
//! has expired, always with a new generation; the holder renews it under
//! the generation it holds. Every write of the leader checks that
//! generation in its own transaction (`sql::Tx::check_fence`): these are
//! the only writes that do not.

use std::time::Duration;

use jiff::Timestamp;

use super::sql::{DbError, Row, args};
use super::{Store, StoreError};

/// The lease as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub holder: String,
    pub address: String,
    pub generation: i64,
    pub acquired_at: Timestamp,
    pub renewed_at: Timestamp,
    pub expires_at: Timestamp,
    /// The store's clock when this was read.
    pub now: Timestamp,
}

impl LeaseRow {
    pub fn expired(&self) -> bool {
        self.expires_at <= self.now
    }
}

/// A controller taking part in the election.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerRow {
    pub holder: String,
    pub address: String,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
}

/// What [`Store::take_lease`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Leadership {
    /// This controller leads under `generation` (taken or renewed).
    Leading { generation: i64 },
    /// Another controller holds the lease (or none does, when `None`).
    Following { leader: Option<LeaseRow> },
}

fn millis(r: &Row, i: usize) -> Result<Timestamp, DbError> {
    let ms: i64 = r.get(i)?;
    Ok(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

const LEASE_COLUMNS: &str = "holder, address, generation,
    (extract(epoch FROM acquired_at) * 1000)::bigint,
    (extract(epoch FROM renewed_at) * 1000)::bigint,
    (extract(epoch FROM expires_at) * 1000)::bigint,
    (extract(epoch FROM now()) * 1000)::bigint";

fn lease_row(r: &Row) -> Result<LeaseRow, DbError> {
    Ok(LeaseRow {
        holder: r.get(0)?,
        address: r.get(1)?,
        generation: r.get(2)?,
        acquired_at: millis(r, 3)?,
        renewed_at: millis(r, 4)?,
        expires_at: millis(r, 5)?,
        now: millis(r, 6)?,
    })
}

impl Store {
    /// Take the lease, or renew the one held under `held` (0: none held),
    /// for `lease` from now; says who leads afterwards. Also records this
    /// controller as taking part. Arms this store's fence with `holder`.
    pub async fn take_lease(
        &self,
        holder: String,
        address: String,
        held: i64,
        lease: Duration,
    ) -> Result<Leadership, StoreError> {
        if let Some(fence) = self.fence() {
            fence.arm(holder.clone());
        }
        let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let taken = self
            .call_lease(move |c| {
                c.unfenced();
                c.exec(
                    "INSERT INTO tandem_controllers(holder, address, started_at, last_seen)
                     VALUES (?1, ?2, now(), now())
                     ON CONFLICT (holder) DO UPDATE SET address = ?2, last_seen = now()",
                    args![holder, address],
                )?;
                // A controller not seen for three leases has gone (killed,
                // or its machine lost): it leaves the list.
                c.exec(
                    "DELETE FROM tandem_controllers WHERE last_seen < now() - 3 * ?1::bigint * interval '1 millisecond'",
                    args![ms],
                )?;
                // Renew when this holder holds it under `held`; take it when
                // it has expired (a new generation); else nothing.
                let taken = c.query_opt(
                    "INSERT INTO tandem_leader(id, holder, address, generation, acquired_at, renewed_at, expires_at)
                     VALUES (1, ?1, ?2, 1, now(), now(), now() + ?3::bigint * interval '1 millisecond')
                     ON CONFLICT (id) DO UPDATE SET
                       generation = CASE WHEN tandem_leader.holder = ?1 AND tandem_leader.generation = ?4
                                         THEN tandem_leader.generation ELSE tandem_leader.generation + 1 END,
                       acquired_at = CASE WHEN tandem_leader.holder = ?1 AND tandem_leader.generation = ?4
                                          THEN tandem_leader.acquired_at ELSE now() END,
                       holder = ?1, address = ?2, renewed_at = now(),
                       expires_at = now() + ?3::bigint * interval '1 millisecond'
                     WHERE (tandem_leader.holder = ?1 AND tandem_leader.generation = ?4
                            AND tandem_leader.expires_at > now())
                        OR tandem_leader.expires_at <= now()
                     RETURNING generation",
                    args![holder, address, ms, held],
                )?;
                match taken {
                    Some(r) => Ok(Leadership::Leading {
                        generation: r.get(0)?,
                    }),
                    None => Ok(Leadership::Following {
                        leader: c
                            .query_opt(
                                &format!("SELECT {LEASE_COLUMNS} FROM tandem_leader WHERE id = 1"),
                                args![],
                            )?
                            .map(|r| lease_row(&r))
                            .transpose()?,
                    }),
                }
            })
            .await?;
        if let (Some(fence), Leadership::Leading { generation }) = (self.fence(), &taken) {
            fence.set(*generation);
        }
        Ok(taken)
    }

    /// Give the lease up at once (a clean stop), so another controller
    /// takes over without waiting for it to expire.
    pub async fn release_lease(&self, holder: String, generation: i64) -> Result<(), StoreError> {
        if let Some(fence) = self.fence() {
            fence.set(0);
        }
        self.call_lease(move |c| {
            c.unfenced();
            c.exec(
                "UPDATE tandem_leader SET expires_at = now() WHERE id = 1 AND holder = ?1 AND generation = ?2",
                args![holder, generation],
            )?;
            c.exec(
                "DELETE FROM tandem_controllers WHERE holder = ?1",
                args![holder],
            )?;
            Ok(())
        })
        .await
    }

    /// Stop fencing writes as this holder's: it no longer leads.
    pub fn step_down(&self) {
        if let Some(fence) = self.fence() {
            fence.set(0);
        }
    }

    /// The lease, when the store is shared and someone ever held it.
    pub async fn lease(&self) -> Result<Option<LeaseRow>, StoreError> {
        if !self.shared() {
            return Ok(None);
        }
        self.call(|c| {
            c.query_opt(
                &format!("SELECT {LEASE_COLUMNS} FROM tandem_leader WHERE id = 1"),
                args![],
            )?
            .map(|r| lease_row(&r))
            .transpose()
        })
        .await
    }

    /// The controllers that took part in the election, most recently seen
    /// first.
    pub async fn controllers(&self) -> Result<Vec<ControllerRow>, StoreError> {
        if !self.shared() {
            return Ok(vec![]);
        }
        self.call(|c| {
            c.query(
                "SELECT holder, address, (extract(epoch FROM started_at) * 1000)::bigint,
                        (extract(epoch FROM last_seen) * 1000)::bigint
                 FROM tandem_controllers ORDER BY last_seen DESC, holder",
                args![],
            )?
            .iter()
            .map(|r| {
                Ok(ControllerRow {
                    holder: r.get(0)?,
                    address: r.get(1)?,
                    started_at: millis(r, 2)?,
                    last_seen: millis(r, 3)?,
                })
            })
            .collect()
        })
        .await
    }
}
