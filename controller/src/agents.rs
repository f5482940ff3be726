//! Channels from the controller to its agents, one per address, reused.
//!
//! The controller presents its own certificate (`spiffe://tandem/controller`)
//! and checks the agent's certificate against the host in its address.
//! Channels are cached, but each new connection (the first, or one after a
//! failure) is made with the TLS files in force ([`LiveTls`]), so renewed
//! files need no restart; connections already open keep going.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tandem_proto::pb::agent_client::AgentClient;
use tandem_proto::propagation::{TracedChannel, traced};
use tandem_proto::tls::{LiveTls, TlsError};

pub struct AgentClients {
    tls: Arc<LiveTls>,
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
}

impl AgentClients {
    pub fn new(tls: Arc<LiveTls>) -> AgentClients {
        AgentClients {
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for the agent at `address` ("host:port"); connects lazily.
    pub fn client(&self, address: &str) -> Result<AgentClient<TracedChannel>, TlsError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let c = tandem_proto::tls::connect_lazy_live(
                    &format!("https://{address}"),
                    self.tls.clone(),
                )?;
                channels.insert(address.to_owned(), c.clone());
                c
            }
        };
        Ok(AgentClient::new(traced(channel)))
    }
}

/// Ask the agent of every member of `set` at once with `call`, each
/// within `status_timeout`; per member its answer or why there is none
/// (a sentence that names the member).
pub async fn ask_members<T, F, Fut>(
    inventory: &crate::inventory::Inventory,
    agents: &AgentClients,
    set: &crate::sets::SetDecl,
    call: F,
) -> Vec<(String, Result<T, String>)>
where
    T: Send + 'static,
    F: Fn(AgentClient<TracedChannel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
{
    let timeout = inventory.config().status_timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for m in &set.members {
        let view = inventory.get(&m.agent);
        let client = view
            .as_ref()
            .filter(|v| !v.row.address.is_empty())
            .map(|v| agents.client(&v.row.address));
        let member = m.name.clone();
        let agent = m.agent.clone();
        let asked = match client {
            None => Err(format!("{member}: agent `{agent}` never registered")),
            Some(Err(e)) => Err(format!("{member}: {e}")),
            Some(Ok(c)) => Ok(call(c)),
        };
        tasks.spawn(async move {
            let answer = match asked {
                Err(why) => Err(why),
                Ok(fut) => match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(e)) => Err(format!("{member}: agent `{agent}`: {}", e.message())),
                    Err(_) => Err(format!(
                        "{member}: agent `{agent}` did not answer within {timeout:?}"
                    )),
                },
            };
            (member, answer)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(answer) = joined {
            out.push(answer);
        }
    }
    out
}
