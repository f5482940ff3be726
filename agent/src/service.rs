//! The agent's gRPC server (`tandem.v1.Agent`).
//!
//! Only the controller may call it: [`require_controller`] runs before every
//! handler and refuses any other certificate identity. Long operations
//! (copy, testdb, restore) arrive with later issues; until then their RPCs
//! answer `unimplemented` with a message saying so.

use std::sync::Arc;

use tandem_proto::identity::{Identity, peer_identity};
use tandem_proto::pb;
use tonic::{Request, Response, Status};

use crate::engine::Engine;

/// What the service needs to answer.
pub struct AgentService<E> {
    pub agent: String,
    pub set: String,
    pub member: String,
    pub engine: Arc<E>,
}

/// Interceptor: the caller must present the controller's certificate.
#[allow(clippy::result_large_err)]
pub fn require_controller(req: Request<()>) -> Result<Request<()>, Status> {
    match peer_identity(&req)? {
        Identity::Controller => Ok(req),
        other => Err(Status::permission_denied(format!(
            "{other} may not call an agent: agents take orders only from {}",
            Identity::Controller
        ))),
    }
}

type ProgressStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Progress, Status>> + Send>>;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available in this version of tandem-agent"
    ))
}

#[tonic::async_trait]
impl<E: Engine> pb::agent_server::Agent for AgentService<E> {
    #[tracing::instrument(skip_all, fields(agent = %self.agent))]
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let facts = self.engine.facts().await;
        tracing::debug!(role = %facts.role, state = %facts.state_word(), "status read");
        Ok(Response::new(pb::StatusResponse {
            agent: self.agent.clone(),
            set: self.set.clone(),
            member: self.member.clone(),
            facts: Some(facts.into()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn start_operation(
        &self,
        _req: Request<pb::StartOperationRequest>,
    ) -> Result<Response<pb::StartOperationResponse>, Status> {
        Err(not_yet("StartOperation"))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        _req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(not_yet("Watch"))
    }

    async fn cancel(
        &self,
        _req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        Err(not_yet("Cancel"))
    }

    async fn list_operations(
        &self,
        _req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        Ok(Response::new(pb::ListOperationsResponse {
            operations: vec![],
        }))
    }
}
