//! The controller's one conversation with agents: send an order, follow
//! it to its result, find it again after a restart.
//!
//! Fleet runs (testdb, copy, backup), restores and maintenance windows all
//! order agent work through [`Orders`]: the set's generation is read once
//! per order, the order is a typed [`Order`], the request id makes it
//! idempotent (asked again, the agent answers with the operation it
//! started), and one retry policy ([`RETRY`]) bounds how long an agent that
//! does not answer is waited for, while following or finding an operation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tandem_proto::order::{Order, StartOrder};
use tandem_proto::pb;
use tokio_stream::{Stream, StreamExt};
use tracing::{info, warn};

use crate::agents::AgentClients;
use crate::store::{Store, StoreError};

/// How often, and how many times, an agent that does not answer is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub every: Duration,
}

/// The one retry policy: an agent restarting gets half a minute.
pub const RETRY: Retry = Retry {
    attempts: 30,
    every: Duration::from_secs(1),
};

/// An agent and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub agent: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("agent `{agent}` cannot be reached: {why}")]
    Unreachable { agent: String, why: String },
    #[error("agent `{agent}` refused: {message}")]
    Refused {
        agent: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot read the set's generation from the store")]
    Store(#[from] StoreError),
    #[error("set `{set}` is not in the store")]
    UnknownSet { set: String },
    #[error("agent lost operation {operation}: {message}")]
    Lost { operation: String, message: String },
    #[error(
        "lost contact with the agent at {address} during operation {operation}; its journal says what became of it"
    )]
    GaveUp { address: String, operation: String },
    #[error(
        "cannot reach the agent `{agent}` at {address} to learn what became of the order {request} sent before the controller restarted"
    )]
    NotFound {
        agent: String,
        address: String,
        request: String,
    },
}

/// A stream of an operation's progress, as an agent's `Watch` gives it.
pub type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, tonic::Status>> + Send>>;

/// The conversation, over the controller's channels and its store.
pub struct Orders<'a> {
    pub agents: &'a AgentClients,
    pub store: &'a Store,
}

impl Orders<'_> {
    fn client(
        &self,
        to: &AgentRef,
    ) -> Result<pb::agent_client::AgentClient<tandem_proto::propagation::TracedChannel>, OrderError>
    {
        self.agents
            .client(&to.address)
            .map_err(|e| OrderError::Unreachable {
                agent: to.agent.clone(),
                why: e.to_string(),
            })
    }

    /// The set's generation, read once for an order.
    pub async fn generation(&self, set: &str) -> Result<u64, OrderError> {
        self.store
            .generation(set.to_owned())
            .await?
            .ok_or_else(|| OrderError::UnknownSet {
                set: set.to_owned(),
            })
    }

    /// Send one order for `set`; the operation's id.
    pub async fn send(
        &self,
        to: &AgentRef,
        set: &str,
        request_id: String,
        join: bool,
        order: Order,
    ) -> Result<String, OrderError> {
        let set_generation = self.generation(set).await?;
        let kind = order.kind_name();
        let req = pb::StartOperationRequest::from(StartOrder {
            set_generation,
            request_id: request_id.clone(),
            join,
            order,
        });
        let op = self
            .client(to)?
            .start_operation(req)
            .await
            .map_err(|s| OrderError::Refused {
                agent: to.agent.clone(),
                code: s.code(),
                message: s.message().to_owned(),
            })?
            .into_inner()
            .operation_id;
        info!(agent = %to.agent, operation = %op, request = %request_id, kind, "order sent");
        Ok(op)
    }

    /// [`Orders::send`], asked again under [`RETRY`] while the agent does
    /// not answer (it is restarting): for a window's steps, whose request
    /// ids make a repeated order the same order.
    pub async fn send_patiently(
        &self,
        to: &AgentRef,
        set: &str,
        request_id: String,
        order: Order,
    ) -> Result<String, OrderError> {
        let mut attempt = 0;
        loop {
            match self
                .send(to, set, request_id.clone(), false, order.clone())
                .await
            {
                Err(OrderError::Refused { code, .. })
                    if attempt < RETRY.attempts
                        && matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown) =>
                {
                    attempt += 1;
                    tokio::time::sleep(RETRY.every).await;
                }
                r => return r,
            }
        }
    }

    /// Follow an operation to its result, handing each progress message to
    /// `on_progress`; a broken stream is opened again under [`RETRY`].
    pub async fn follow(
        &self,
        to: &AgentRef,
        operation: &str,
        on_progress: impl FnMut(&pb::Progress),
    ) -> Result<pb::OperationResult, OrderError> {
        let open = || async {
            let mut c = self
                .client(to)
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let s = c
                .watch(pb::WatchRequest {
                    operation_id: operation.to_owned(),
                })
                .await?
                .into_inner();
            Ok::<ProgressStream, tonic::Status>(Box::pin(s))
        };
        follow_with(RETRY, &to.address, operation, open, on_progress).await
    }

    /// The operation the agent started for `request`, if the order reached it.
    pub async fn find(&self, to: &AgentRef, request: &str) -> Result<Option<String>, OrderError> {
        for _ in 0..RETRY.attempts {
            let listed = self
                .client(to)?
                .list_operations(pb::ListOperationsRequest { limit: 0 })
                .await;
            match listed {
                Ok(r) => {
                    return Ok(r
                        .into_inner()
                        .operations
                        .into_iter()
                        .find(|o| o.request_id == request)
                        .map(|o| o.operation_id));
                }
                Err(e) => {
                    warn!(agent = %to.agent, error = %e.message(), "cannot list the agent's operations")
                }
            }
            tokio::time::sleep(RETRY.every).await;
        }
        Err(OrderError::NotFound {
            agent: to.agent.clone(),
            address: to.address.clone(),
            request: request.to_owned(),
        })
    }
}

/// The follow loop over any way of opening the progress stream: a stream
/// that breaks or cannot be opened is opened again, `retry.attempts` times
/// in a row at most, `retry.every` apart; any message resets the count.
pub async fn follow_with<F, Fut>(
    retry: Retry,
    address: &str,
    operation: &str,
    mut open: F,
    mut on_progress: impl FnMut(&pb::Progress),
) -> Result<pb::OperationResult, OrderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<ProgressStream, tonic::Status>>,
{
    let mut failures = 0;
    loop {
        match open().await {
            Ok(mut s) => {
                while let Some(m) = s.next().await {
                    match m {
                        Ok(p) => {
                            failures = 0;
                            on_progress(&p);
                            if let Some(r) = p.result {
                                return Ok(r);
                            }
                        }
                        Err(e) => {
                            warn!(operation, error = %e.message(), "watch stream broke");
                            break;
                        }
                    }
                }
            }
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Err(OrderError::Lost {
                    operation: operation.to_owned(),
                    message: e.message().to_owned(),
                });
            }
            Err(e) => warn!(operation, error = %e.message(), "cannot watch the operation"),
        }
        failures += 1;
        if failures > retry.attempts {
            return Err(OrderError::GaveUp {
                address: address.to_owned(),
                operation: operation.to_owned(),
            });
        }
        tokio::time::sleep(retry.every).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn progress(step: &str, done: bool) -> pb::Progress {
        pb::Progress {
            operation_id: "op".into(),
            step: step.into(),
            result: done.then(|| pb::OperationResult {
                operation_id: "op".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_never_answers_is_asked_again_then_given_up_on() {
        let opened = AtomicU32::new(0);
        let real = std::time::Instant::now();
        let virtual_start = tokio::time::Instant::now();
        let r = follow_with(
            RETRY,
            "127.0.0.1:1",
            "op",
            || async {
                opened.fetch_add(1, Ordering::SeqCst);
                Err::<ProgressStream, _>(tonic::Status::unavailable("connection refused"))
            },
            |_| {},
        )
        .await;
        let e = r.unwrap_err();
        assert!(matches!(e, OrderError::GaveUp { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        assert_eq!(opened.load(Ordering::SeqCst), RETRY.attempts + 1);
        assert_eq!(
            virtual_start.elapsed(),
            RETRY.every * RETRY.attempts,
            "the retries are spaced by the policy"
        );
        assert!(
            real.elapsed() < Duration::from_secs(2),
            "{:?}",
            real.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_is_followed_again_to_the_result() {
        let opened = AtomicU32::new(0);
        let mut steps = Vec::new();
        let r = follow_with(
            RETRY,
            "a",
            "op",
            || {
                let n = opened.fetch_add(1, Ordering::SeqCst);
                async move {
                    let items: Vec<Result<pb::Progress, tonic::Status>> = match n {
                        // The agent goes away mid-stream, then cannot be reached twice.
                        0 => vec![
                            Ok(progress("copy", false)),
                            Err(tonic::Status::unavailable("gone")),
                        ],
                        1 | 2 => return Err(tonic::Status::unavailable("restarting")),
                        _ => vec![Ok(progress("checks", false)), Ok(progress("checks", true))],
                    };
                    Ok::<ProgressStream, _>(Box::pin(tokio_stream::iter(items)))
                }
            },
            |p| steps.push(p.step.clone()),
        )
        .await;
        assert_eq!(r.unwrap().operation_id, "op");
        assert_eq!(steps, ["copy", "checks", "checks"]);
        assert_eq!(opened.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_the_agent_does_not_know_is_lost_at_once() {
        let r = follow_with(
            RETRY,
            "a",
            "op",
            || async { Err::<ProgressStream, _>(tonic::Status::not_found("no operation `op`")) },
            |_| {},
        )
        .await;
        assert!(matches!(r, Err(OrderError::Lost { .. })));
    }
}
