//! Registering with the controller and heartbeating, forever.
//!
//! One task owns the controller channel. It registers (with the instance's
//! facts), then heartbeats every `heartbeat_interval`; when the controller is
//! unreachable it logs once per outage and retries on the same interval;
//! when the controller refuses it (not in its inventory, or declared as
//! another member) it logs why once per refusal and asks again at every
//! heartbeat (a set added with `tandemctl set add` is joined at once); when
//! the controller no longer knows the agent it registers again. Register and
//! every heartbeat say when the certificate in force expires, so
//! `tandemctl agents` warns before it does. With several controllers the
//! calls go to the one that leads (`tandem_proto::leader::LeaderChannel`: a
//! follower's "not the leader" is followed to the leader it names, a
//! controller that does not answer is left for the next address); the logs
//! name the controller in use.

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::leader::LeaderChannel;
use tandem_proto::model::timestamp_to_wire;
use tandem_proto::pb;
use tandem_proto::pb::controller_client::ControllerClient;
use tandem_proto::propagation::traced;
use tandem_proto::tls::LiveTls;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::engine::Engine;
use crate::ops::Operations;

pub use tandem_proto::leader::LeaderClient as Client;

/// A call to a controller with no answer (its headers) in this time counts
/// as unreachable, and the next call goes to the next address: a
/// controller whose machine was lost sends no reset.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);

pub async fn run<E: Engine>(
    cfg: Arc<AgentConfig>,
    engine: Arc<E>,
    ops: Arc<Operations<E>>,
    channel: LeaderChannel,
    tls: Arc<LiveTls>,
    shutdown: CancellationToken,
) {
    let mut client = ControllerClient::new(traced(channel.clone()));
    let mut interval = cfg.heartbeat_interval;
    let mut registered = false;
    let mut reachable = true;
    // The controller's last refusal of this agent (not in its inventory, or
    // declared as another member), said once until it changes.
    let mut refusal: Option<String> = None;
    loop {
        let result = if registered {
            heartbeat(&cfg, &*engine, ops.running(), &tls, &mut client)
                .await
                .map(|again| {
                    if again {
                        info!("controller does not know this agent; registering again");
                        registered = false;
                    }
                })
        } else {
            register(&cfg, &*engine, &tls, &mut client, &channel)
                .await
                .map(|ms| {
                    registered = true;
                    refusal = None;
                    if ms > 0 {
                        interval = Duration::from_millis(ms).min(cfg.heartbeat_interval);
                    }
                })
        };
        match result {
            Ok(()) if !reachable => {
                info!(controller = %channel.current(), "controller reachable again");
                reachable = true;
            }
            Ok(()) => {}
            Err(status) if !registered && status.code() == tonic::Code::FailedPrecondition => {
                if refusal.as_deref() != Some(status.message()) {
                    warn!(controller = %channel.current(), error = %status.message(), "the controller refuses this agent; asking again at every heartbeat");
                    refusal = Some(status.message().to_owned());
                }
                reachable = true;
            }
            Err(status) => {
                if reachable {
                    warn!(controller = %channel.current(), code = ?status.code(), error = %status.message(), "cannot reach the controller; retrying");
                }
                reachable = false;
                registered = registered && status.code() != tonic::Code::NotFound;
            }
        }
        // Cancel-safe: both arms only wait; nothing is half-done when one wins.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn register<E: Engine>(
    cfg: &AgentConfig,
    engine: &E,
    tls: &LiveTls,
    client: &mut Client,
    at: &LeaderChannel,
) -> Result<u64, tonic::Status> {
    let facts = engine.facts().await;
    let role = facts.role;
    let resp = client
        .register(pb::RegisterRequest {
            agent: cfg.name.clone(),
            address: cfg.advertise(),
            set: cfg.set.clone(),
            member: cfg.member().to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            facts: Some(facts.into()),
            cert_not_after: Some(timestamp_to_wire(tls.leaf().not_after)),
        })
        .await?
        .into_inner();
    info!(controller = %at.current(), set = %cfg.set, %role, generation = resp.set_generation, "registered with the controller");
    Ok(resp.heartbeat_interval_ms)
}

async fn heartbeat<E: Engine>(
    cfg: &AgentConfig,
    engine: &E,
    running: Option<String>,
    tls: &LiveTls,
    client: &mut Client,
) -> Result<bool, tonic::Status> {
    let facts = engine.facts().await;
    let resp = client
        .heartbeat(pb::HeartbeatRequest {
            agent: cfg.name.clone(),
            facts: Some(facts.into()),
            running_operation_id: running.unwrap_or_default(),
            cert_not_after: Some(timestamp_to_wire(tls.leaf().not_after)),
        })
        .await?
        .into_inner();
    Ok(resp.register_again)
}
