//! Which controller leads. On an SQLite store there is one controller and
//! it leads. On a PostgreSQL store several controllers may run; the one
//! holding the lease in the store (`store::lease`) leads, renews it every
//! `leader.renew`, and every write it makes is fenced by the lease's
//! generation. The others follow: they try to take the lease as often, and
//! until they lead they answer reads themselves and every other call with
//! "not the leader; the leader is URL" ([`LeaderOnly`]), which tandemctl
//! and the agents follow.
//!
//! A leader that loses its lease (another controller took it, or the store
//! could not be reached before the lease ran out) stops at once: nothing
//! it was doing is lost, because the new leader carries on from the store
//! the way a restarted controller does. The service manager starts it
//! again, as a follower.
//!
//! The campaign also sets the leader metrics (`metrics::leader`, `lease`,
//! `leader_acquired`, `leader_changed`): whether this controller leads,
//! the generation, the lease's times, and how often it changed hands.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use jiff::Timestamp;
use tandem_proto::model::timestamp_to_wire;
use tandem_proto::pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ControllerConfig;
use crate::metrics;
use crate::store::{Leadership, LeaseRow, Store, StoreError};

/// Where the election stands, as this controller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// This controller leads.
    pub leading: bool,
    /// The lease generation it leads under (0 when following, or on SQLite).
    pub generation: i64,
    /// The lease as a follower last read it (none while leading: the
    /// leader's is in the store, `describe` reads it there).
    pub lease: Option<LeaseRow>,
    /// Since when this controller leads.
    pub since: Option<Timestamp>,
}

pub struct Election {
    store: Store,
    /// This process's name in the election: its address, pid and start.
    pub holder: String,
    /// The URL clients reach this controller at.
    pub address: String,
    lease: Duration,
    renew: Duration,
    state: watch::Sender<State>,
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
#[error(
    "this controller lost the leadership ({0}); it stops so that the new leader alone drives the fleet, and will follow when started again"
)]
pub struct Lost(pub String);

impl Election {
    pub fn new(store: Store, cfg: &ControllerConfig) -> Arc<Election> {
        let address = cfg.advertised_address();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let holder = format!("{address} pid {} at {started:x}", std::process::id());
        let leading = !store.shared();
        metrics::leader(leading, 0);
        let (state, _) = watch::channel(State {
            leading,
            generation: 0,
            lease: None,
            since: leading.then(Timestamp::now),
        });
        Arc::new(Election {
            store,
            holder,
            address,
            lease: cfg.leader.lease,
            renew: cfg.leader.renew,
            state,
        })
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    pub fn is_leading(&self) -> bool {
        self.state.borrow().leading
    }

    /// The leader's URL, when another controller leads.
    pub fn leader_address(&self) -> Option<String> {
        let s = self.state.borrow();
        if s.leading {
            return Some(self.address.clone());
        }
        s.lease
            .as_ref()
            .filter(|l| !l.expired())
            .map(|l| l.address.clone())
    }

    /// Wait until this controller leads; false when `shutdown` came first.
    pub async fn until_leading(&self, shutdown: &CancellationToken) -> bool {
        let mut rx = self.state.subscribe();
        tokio::select! {
            r = rx.wait_for(|s| s.leading) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// Take part in the election until `shutdown` (then give the lease up,
    /// so a follower takes over at once) or until this controller loses
    /// the lease it held (`Lost`). On SQLite there is nothing to do.
    pub async fn campaign(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), Lost> {
        if !self.store.shared() {
            return Ok(());
        }
        let mut held = 0i64;
        // The generation last seen, leading or following (0: none yet);
        // another one is the lease changing hands.
        let mut seen = 0i64;
        let mut saw = |generation: i64| {
            if seen != 0 && generation != seen {
                metrics::leader_changed();
            }
            seen = generation;
        };
        // The leader's own deadline: the lease it renewed, counted from
        // before it asked, so it always ends before the store's.
        let mut deadline: Option<Instant> = None;
        loop {
            let asked = Instant::now();
            let asked_at = Timestamp::now();
            // A store that does not answer (a host gone without a reset)
            // must not keep a leader leading past its own deadline: the
            // wait ends there, or after a renewal's time while following.
            let limit = deadline.map_or(self.renew, |d| d.saturating_duration_since(asked));
            let answer = tokio::time::timeout(
                limit,
                self.store
                    .take_lease(self.holder.clone(), self.address.clone(), held, self.lease),
            )
            .await
            .unwrap_or_else(|_| Err(StoreError::NoAnswer(limit)));
            match answer {
                Ok(Leadership::Leading { generation }) => {
                    if held != 0 && generation != held {
                        return Err(self.step_down(held, format!(
                            "its lease generation {held} ran out before it was renewed; the store gave generation {generation}"
                        )));
                    }
                    if held == 0 {
                        info!(
                            generation,
                            address = %self.address,
                            "this controller leads (lease generation {generation})"
                        );
                        metrics::leader_acquired();
                    }
                    saw(generation);
                    held = generation;
                    deadline = Some(asked + self.lease);
                    metrics::leader(true, generation);
                    metrics::lease(Timestamp::now(), asked_at + self.lease);
                    self.state.send_modify(|s| {
                        if !s.leading {
                            s.since = Some(Timestamp::now());
                        }
                        s.leading = true;
                        s.generation = generation;
                        s.lease = None;
                    });
                }
                Ok(Leadership::Following { leader }) => {
                    if held != 0 {
                        let by = leader
                            .as_ref()
                            .map(|l| format!("{} took it over", l.address))
                            .unwrap_or_else(|| "it was taken over".into());
                        return Err(self.step_down(held, format!("lease generation {held}: {by}")));
                    }
                    let changed = self.state.borrow().lease.as_ref().map(|l| &l.holder)
                        != leader.as_ref().map(|l| &l.holder);
                    if changed {
                        match &leader {
                            Some(l) => {
                                info!(leader = %l.address, generation = l.generation, "following the leader {}", l.address)
                            }
                            None => info!("no controller leads yet"),
                        }
                    }
                    match &leader {
                        Some(l) => {
                            saw(l.generation);
                            metrics::leader(false, l.generation);
                            metrics::lease(l.renewed_at, l.expires_at);
                        }
                        None => metrics::leader(false, 0),
                    }
                    self.state.send_modify(|s| {
                        s.leading = false;
                        s.generation = 0;
                        s.lease = leader;
                        s.since = None;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "cannot reach the store to take or renew the lease");
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(self.step_down(held, format!(
                            "the store could not be reached to renew lease generation {held} before it ran out: {e}"
                        )));
                    }
                }
            }
            let mut wake = Instant::now() + self.renew;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => {
                    if held != 0 {
                        if let Err(e) = self.store.release_lease(self.holder.clone(), held).await {
                            warn!(error = %e, "cannot give the lease up; a follower takes over when it runs out");
                        } else {
                            info!(generation = held, "lease given up");
                        }
                    }
                    return Ok(());
                }
            }
        }
    }
}

impl Election {
    /// Stop leading at once (writes are no longer fenced as this
    /// controller's, the metrics say it follows); why, for the caller to
    /// return.
    fn step_down(&self, held: i64, why: String) -> Lost {
        self.store.step_down();
        metrics::leader(false, held);
        Lost(why)
    }

    /// `tandemctl controllers`: who takes part, who leads, the lease.
    pub async fn describe(&self) -> Result<pb::ControllersResponse, StoreError> {
        let state = self.state();
        let wire = |t: Option<Timestamp>| t.map(timestamp_to_wire);
        if !self.store.shared() {
            return Ok(pb::ControllersResponse {
                store: "sqlite".into(),
                controllers: vec![pb::ControllerInfo {
                    address: self.address.clone(),
                    leader: true,
                    holder: self.holder.clone(),
                    started_at: wire(state.since),
                    last_seen: wire(Some(Timestamp::now())),
                    leader_since: wire(state.since),
                    generation: 0,
                    lease_expires: None,
                }],
                lease_seconds: 0,
                answered_by: self.address.clone(),
            });
        }
        let lease = self.store.lease().await?;
        let live = lease.as_ref().filter(|l| !l.expired());
        let controllers = self
            .store
            .controllers()
            .await?
            .into_iter()
            .map(|c| {
                let leads = live.filter(|l| l.holder == c.holder);
                pb::ControllerInfo {
                    address: c.address,
                    leader: leads.is_some(),
                    started_at: wire(Some(c.started_at)),
                    last_seen: wire(Some(c.last_seen)),
                    leader_since: wire(leads.map(|l| l.acquired_at)),
                    generation: leads.map_or(0, |l| l.generation),
                    lease_expires: wire(leads.map(|l| l.expires_at)),
                    holder: c.holder,
                }
            })
            .collect();
        Ok(pb::ControllersResponse {
            store: "postgresql".into(),
            controllers,
            lease_seconds: self.lease.as_secs(),
            answered_by: self.address.clone(),
        })
    }
}

/// The controller's gRPC service as served: while this controller does
/// not lead, only the calls in `follower_calls` (`service::FOLLOWER_CALLS`)
/// reach it; the others are answered "not the leader", naming the leader
/// when one is known, so clients go there.
#[derive(Clone)]
pub struct LeaderOnly<S> {
    pub inner: S,
    pub election: Arc<Election>,
    pub follower_calls: &'static [&'static str],
    /// This serves the leader's service. A follower's server never passes
    /// on the other calls, not even in the moment between this controller
    /// taking the lease and the follower's server stopping: its service
    /// has none of the leader's work running, and a window or run opened
    /// there would be driven beside the leader's.
    pub leaders_service: bool,
}

impl<S> tonic::server::NamedService for LeaderOnly<S> {
    const NAME: &'static str = "tandem.v1.Controller";
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for LeaderOnly<S>
where
    S: tonic::codegen::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or("");
        if (self.leaders_service && self.election.is_leading())
            || self.follower_calls.contains(&method)
        {
            return Box::pin(self.inner.call(req));
        }
        let leader = self.election.leader_address();
        let answer = tandem_proto::leader::not_leader(leader.as_deref()).into_http();
        Box::pin(async move { Ok(answer) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::Service;

    /// An inner service that answers every call with 200.
    #[derive(Clone)]
    struct Ok200;

    impl Service<http::Request<()>> for Ok200 {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
        }
    }

    /// The grpc-status of `method`'s answer through the guard (0 = passed on).
    async fn status(guard: &mut LeaderOnly<Ok200>, method: &str) -> String {
        let req = http::Request::builder()
            .uri(format!("/tandem.v1.Controller/{method}"))
            .body(())
            .unwrap();
        let resp = guard.call(req).await.unwrap();
        resp.headers()
            .get("grpc-status")
            .map_or("0".to_owned(), |v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_followers_server_turns_leader_calls_away_even_once_this_controller_leads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ControllerConfig::parse(
            std::path::Path::new("c.toml"),
            &format!(
                "listen = \"127.0.0.1:7700\"\nstore = \"{}\"\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
                dir.path().join("c.db").display()
            ),
        )
        .unwrap();
        let store = Store::open(dir.path().join("c.db")).unwrap();
        // On SQLite the controller leads from the start.
        let election = Election::new(store, &cfg);
        assert!(election.is_leading());
        let mut leaders = LeaderOnly {
            inner: Ok200,
            election: election.clone(),
            follower_calls: &["ListAgents"],
            leaders_service: true,
        };
        let mut followers = LeaderOnly {
            leaders_service: false,
            ..leaders.clone()
        };
        assert_eq!(status(&mut leaders, "Testdb").await, "0");
        assert_eq!(status(&mut followers, "ListAgents").await, "0");
        let unavailable = (tonic::Code::Unavailable as i32).to_string();
        assert_eq!(status(&mut followers, "Testdb").await, unavailable);
    }
}
