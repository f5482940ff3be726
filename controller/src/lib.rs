//! tandem-controller: one per fleet.
//!
//! Tasks: the gRPC server (`service`: agents register and heartbeat,
//! operators ask and change the inventory), and the liveness loop
//! (`inventory::liveness_loop`: marks silent agents offline). The sets in
//! force are the `inventory`'s, kept in the store (`controller.toml` seeds
//! them; the rules are in `sets`). State that cannot be re-learned lives in the
//! SQLite `store`; what agents are doing is re-learned from them. Calls to
//! agents go through `agents::AgentClients` (mTLS as the controller).
//! Test runs go through the `fleet`: one queue, dispatched under the load
//! limits, each job ordering a test, relaying its progress and storing the
//! set's `verdicts`; unfinished runs are carried on after a restart. Before
//! a cold copy the fleet asks the primary's agent whether stopping the
//! standby would make its commits wait (`syncrep`, pure) and refuses it then.
//! `metrics` holds every Prometheus metric (served when `main` asks).
//! The TLS files are reloaded without a restart (`tandem_proto::tls::LiveTls`:
//! a watch task, every few seconds and on SIGHUP); the server runs each
//! handshake itself with the config in force (`tls::incoming`) and the
//! agent channels reconnect with it.
//! On a PostgreSQL store several controllers may run: one leads (`leader`:
//! a fenced lease in the store), the others answer "not the leader" until
//! they take the lease over, and then start as a restarted controller
//! would, carrying on what the store says was under way.
//! Everything stops when `main` cancels the `shutdown` token.

pub mod agents;
pub mod config;
pub mod error;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod inventory;
pub mod leader;
pub mod maintenance;
pub mod metrics;
pub mod orders;
pub mod restore;
pub mod schedule;
pub mod scheduler;
pub mod service;
pub mod sets;
pub mod store;
pub mod syncrep;
pub mod verdicts;

use std::sync::Arc;

use anyhow::Context;
use tandem_proto::pb::controller_server::ControllerServer;
use tandem_proto::propagation::server_span;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ControllerConfig;

/// Run the controller until `shutdown` is cancelled, or, on a shared
/// store, until it loses the leadership (an error: `leader::Lost`).
pub async fn run(cfg: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let tls = tandem_proto::tls::LiveTls::load(cfg.tls.clone())?;
    let store = store::Store::open_async(cfg.store.clone()).await?;
    let election = leader::Election::new(store.clone(), &cfg);
    // `stop` ends the controller: a shutdown, or the lease lost.
    let stop = shutdown.child_token();
    let campaign = {
        let election = election.clone();
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        tokio::spawn(async move {
            let r = election.campaign(shutdown).await;
            // Only a lost lease stops the controller here: on a store that
            // is not shared the campaign ends at once, with nothing to lose
            // (a shutdown cancels `stop` through its parent anyway).
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    };
    let tls_watch = tokio::spawn(tls.clone().watch(stop.clone().cancelled_owned()));
    if store.shared() {
        info!(listen = %cfg.listen, store = %cfg.store, address = %election.address, "tandem-controller started; following until it takes the lease");
        let follower = stop.child_token();
        let inventory =
            Arc::new(inventory::Inventory::load_following(cfg.clone(), store.clone()).await?);
        let refresh = tokio::spawn(
            inventory
                .clone()
                .follow_store(cfg.leader.renew, follower.clone()),
        );
        let agents = agents::AgentClients::new(tls.clone());
        let service = service(inventory, store.clone(), agents, election.clone()).await?;
        let listener = bind(&cfg).await?;
        let serving = tokio::spawn(serve(
            service,
            listener,
            tls.clone(),
            follower.clone(),
            false,
        ));
        let leading = election.until_leading(&stop).await;
        follower.cancel();
        serving
            .await
            .context("the follower's gRPC server panicked")??;
        let _ = refresh.await;
        if !leading {
            return finish(campaign, tls_watch).await;
        }
    }
    lead(cfg, store, tls, election, stop).await?;
    finish(campaign, tls_watch).await
}

/// Wait for the background tasks; an error when the lease was lost.
async fn finish(
    campaign: tokio::task::JoinHandle<Result<(), leader::Lost>>,
    tls_watch: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let lost = campaign.await.context("the election task panicked")?;
    let _ = tls_watch.await;
    lost?;
    info!("tandem-controller stopped");
    Ok(())
}

async fn bind(cfg: &ControllerConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (field `listen`); is another controller running there?",
                cfg.listen
            )
        })
}

/// The service over the inventory: the leader's, or a follower's (which
/// starts none of the leader's work and answers reads only).
async fn service(
    inventory: Arc<inventory::Inventory>,
    store: store::Store,
    agents: Arc<agents::AgentClients>,
    election: Arc<leader::Election>,
) -> anyhow::Result<service::ControllerService> {
    let fleet = fleet::Fleet::new(inventory.clone(), store.clone(), agents.clone()).await?;
    let maintenance = maintenance::Maintenance::new(
        inventory.clone(),
        store.clone(),
        agents.clone(),
        fleet.clone(),
    );
    let scheduler = scheduler::Scheduler::new(inventory.clone(), store.clone(), fleet.clone());
    Ok(service::ControllerService {
        inventory,
        store,
        agents,
        fleet,
        scheduler,
        maintenance,
        election,
    })
}

/// Serve `service` (behind the leader's guard) on `listener` until `stop`;
/// `leaders` when it is the leader's service, not a follower's.
async fn serve(
    service: service::ControllerService,
    listener: tokio::net::TcpListener,
    tls: Arc<tandem_proto::tls::LiveTls>,
    stop: CancellationToken,
    leaders: bool,
) -> anyhow::Result<()> {
    let election = service.election.clone();
    let server = tonic::transport::Server::builder()
        .trace_fn(server_span)
        .add_service(leader::LeaderOnly {
            inner: ControllerServer::new(service),
            election,
            follower_calls: service::FOLLOWER_CALLS,
            leaders_service: leaders,
        })
        .serve_with_incoming_shutdown(
            tandem_proto::tls::incoming(listener, tls),
            stop.clone().cancelled_owned(),
        );
    // A stop waits for the calls in flight, but not for ever: a tandemctl
    // following a run holds its stream open until the run ends, and a
    // controller that lost its lease must go now (tandemctl follows on
    // through the next leader, or this one restarted).
    tokio::select! {
        served = server => served.context("controller gRPC server failed"),
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => {
            warn!("calls still open {STOP_GRACE:?} after the stop were cut off");
            Ok(())
        }
    }
}

/// How long a stopping controller lets the calls in flight finish.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The leader's work, until `stop`.
async fn lead(
    cfg: Arc<ControllerConfig>,
    store: store::Store,
    tls: Arc<tandem_proto::tls::LiveTls>,
    election: Arc<leader::Election>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let shutdown = stop;
    let inventory = Arc::new(inventory::Inventory::load(cfg.clone(), store.clone()).await?);
    if cfg.metrics_listen.is_some() {
        let sets: Vec<String> = cfg.sets.iter().map(|s| s.name.clone()).collect();
        metrics::load_verdicts(&store, &sets).await?;
    }
    let listener = bind(&cfg).await?;
    info!(listen = %cfg.listen, store = %cfg.store, sets = inventory.declared().sets.len(), "tandem-controller started");

    let liveness = tokio::spawn(inventory::liveness_loop(
        inventory.clone(),
        shutdown.clone(),
    ));
    let agents = agents::AgentClients::new(tls.clone());
    let service = service(inventory, store, agents, election).await?;
    // Windows first: their sets are held before any recovered run dispatches.
    service.maintenance.recover().await?;
    let recurring = tokio::spawn(service.maintenance.clone().recurring_loop(shutdown.clone()));
    service.fleet.recover().await?;
    let dispatcher = tokio::spawn(service.fleet.clone().dispatch_loop(shutdown.clone()));
    let scheduling = tokio::spawn(service.scheduler.clone().run(shutdown.clone()));
    serve(service, listener, tls, shutdown.clone(), true).await?;
    shutdown.cancel();
    let _ = liveness.await;
    let _ = dispatcher.await;
    let _ = scheduling.await;
    let _ = recurring.await;
    Ok(())
}
