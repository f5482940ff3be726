//! tandem-agent: one per database server.
//!
//! Tasks: the gRPC server (`service`, only the controller may call it;
//! `peer`, beside it on the same port: other agents fetch a backup file
//! under a grant the controller asked for), the
//! registration loop (`registration`, register then heartbeat), and at most
//! one running operation: `orders` turns a typed order into an action
//! (`actions`: testdb, restore, a maintenance step), run by the one slot
//! (`ops`) on the one step runner (`steps`: journal, progress, spans, undos;
//! `journal`, `files`, `fence` are what survives on disk). All stop
//! when the `shutdown` token is cancelled by `main` on SIGTERM/SIGINT; `run`
//! then waits for the operation's clean-up (standby back, journal written,
//! event hook run) before returning. The engine (`engine`) is the only code
//! that touches the database; it runs its tools through `runner` as the
//! database's OS user. `run` is the PostgreSQL agent; `run_with_engine`
//! runs the same agent on any [`engine::Engine`] (the scale benchmark uses
//! `engine::simulated`). `events` runs the event hook and tells the controller.
//! `metrics` holds every Prometheus metric (served when `main` asks).
//! The TLS files are reloaded without a restart (`tandem_proto::tls::LiveTls`,
//! a watch task: every few seconds and on SIGHUP); the server runs each
//! handshake itself with the config in force (`tls::incoming`), and the
//! registration loop reports the certificate's expiry to the controller.
//! With several controllers (`controller` a list), one `LeaderChannel`
//! shared by registration, events and signals goes to the one that leads;
//! orders are taken from any of them (they share one certificate identity).

pub mod actions;
pub mod backup;
pub mod config;
pub mod engine;
pub mod events;
pub mod fence;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod metrics;
pub mod ops;
pub mod orders;
pub mod peer;
pub mod registration;
pub mod runner;
pub mod service;
pub mod signals;
pub mod steps;

use std::sync::Arc;

use anyhow::Context;
use tandem_proto::pb::agent_peer_server::AgentPeerServer;
use tandem_proto::pb::agent_server::AgentServer;
use tandem_proto::propagation::server_span;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{AgentConfig, EngineKind};
use crate::engine::Engine;
use crate::engine::firebird::FirebirdEngine;
use crate::engine::postgres::PostgresEngine;
use crate::runner::Runner;

/// Build the PostgreSQL engine an agent config describes.
pub fn engine_for(cfg: &AgentConfig) -> anyhow::Result<PostgresEngine> {
    let Some(pg) = cfg.pg() else {
        anyhow::bail!("this agent's engine is {:?}, not postgres", cfg.engine);
    };
    let runner = Runner::for_os_user(&pg.os_user)?;
    Ok(PostgresEngine::new(pg.clone(), runner, &cfg.home))
}

/// Build the Firebird engine an agent config describes.
pub fn firebird_engine_for(cfg: &AgentConfig) -> anyhow::Result<FirebirdEngine> {
    let Some(fb) = &cfg.firebird else {
        anyhow::bail!("this agent's engine is {:?}, not firebird", cfg.engine);
    };
    let runner = Runner::for_os_user(&fb.os_user)?;
    Ok(FirebirdEngine::new(fb.clone(), runner))
}

/// The facts of the database the config describes, read now.
pub async fn facts_for(cfg: &AgentConfig) -> anyhow::Result<tandem_proto::model::Facts> {
    Ok(match cfg.engine {
        EngineKind::Postgres => engine_for(cfg)?.facts().await,
        EngineKind::Firebird => firebird_engine_for(cfg)?.facts().await,
    })
}

/// Run the agent on its database server (the config's engine) until
/// `shutdown` is cancelled.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cfg.engine {
        EngineKind::Postgres => {
            let engine = engine_for(&cfg)?;
            info!(bin_dir = %engine.bin_dir().display(), "PostgreSQL tools");
            run_with_engine(Arc::new(cfg), Arc::new(engine), shutdown).await
        }
        EngineKind::Firebird => {
            let engine = firebird_engine_for(&cfg)?;
            info!(database = %engine.data_dir().display(), "Firebird database");
            run_with_engine(Arc::new(cfg), Arc::new(engine), shutdown).await
        }
    }
}

/// Run the agent with `engine` until `shutdown` is cancelled: the gRPC
/// server, the registration loop and the operations, then their clean-up.
pub async fn run_with_engine<E: Engine>(
    cfg: Arc<AgentConfig>,
    engine: Arc<E>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.home).with_context(|| {
        format!(
            "cannot create the agent's home {} (field `home`)",
            cfg.home.display()
        )
    })?;
    std::fs::create_dir_all(cfg.archive_dir()).with_context(|| {
        format!(
            "cannot create the archive directory {} (field `archive_dir` of the engine's table)",
            cfg.archive_dir().display()
        )
    })?;
    let tls = tandem_proto::tls::LiveTls::load(cfg.tls.clone())?;
    let controller = tandem_proto::leader::LeaderChannel::lazy(
        cfg.controller.clone(),
        tls.clone(),
        registration::ANSWER_WITHIN,
    )
    .context("cannot use the controller's address (field `controller`)")?;
    let events = events::Events::new(cfg.clone(), Some(controller.clone()));
    let ops = ops::Operations::open(cfg.clone(), engine.clone(), events, shutdown.clone())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (field `listen`); is another agent running there?",
                cfg.listen
            )
        })?;
    info!(listen = %cfg.listen, set = %cfg.set, member = %cfg.member(), data_dir = %engine.data_dir().display(), "tandem-agent started");

    let grants = Arc::new(backup::grants::Grants::default());
    let service = service::AgentService {
        agent: cfg.name.clone(),
        set: cfg.set.clone(),
        member: cfg.member().to_owned(),
        engine: engine.clone(),
        ops: ops.clone(),
        grants: grants.clone(),
    };
    let peer_service = peer::PeerService {
        agent: cfg.name.clone(),
        home: cfg.home.clone(),
        grants,
    };
    let signals = tokio::spawn(signals::run(
        cfg.clone(),
        ops.clone(),
        controller.clone(),
        shutdown.clone(),
    ));
    let registration = tokio::spawn(registration::run(
        cfg.clone(),
        engine,
        ops.clone(),
        controller,
        tls.clone(),
        shutdown.clone(),
    ));
    let tls_watch = tokio::spawn(tls.clone().watch(shutdown.clone().cancelled_owned()));
    tonic::transport::Server::builder()
        .trace_fn(server_span)
        .add_service(AgentServer::with_interceptor(
            service,
            service::require_controller,
        ))
        .add_service(AgentPeerServer::with_interceptor(
            peer_service,
            peer::require_agent,
        ))
        .serve_with_incoming_shutdown(
            tandem_proto::tls::incoming(listener, tls),
            shutdown.clone().cancelled_owned(),
        )
        .await
        .context("agent gRPC server failed")?;
    shutdown.cancel();
    if let Some(op) = ops.running() {
        tracing::warn!(operation = %op, "stopping: interrupting the running operation");
    }
    ops.shutdown().await;
    let _ = registration.await;
    let _ = signals.await;
    let _ = tls_watch.await;
    info!("tandem-agent stopped");
    Ok(())
}
