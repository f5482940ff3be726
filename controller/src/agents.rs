//! Channels from the controller to its agents, one per address, reused.
//!
//! The controller presents its own certificate (`spiffe://tandem/controller`)
//! and checks the agent's certificate against the host in its address.

use std::collections::HashMap;
use std::sync::Mutex;

use tandem_proto::pb::agent_client::AgentClient;
use tandem_proto::propagation::{TracedChannel, traced};
use tandem_proto::tls::{TlsError, TlsFiles};

pub struct AgentClients {
    tls: TlsFiles,
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
}

impl AgentClients {
    pub fn new(tls: TlsFiles) -> AgentClients {
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
                let c = tandem_proto::tls::connect_lazy(&format!("https://{address}"), &self.tls)?;
                channels.insert(address.to_owned(), c.clone());
                c
            }
        };
        Ok(AgentClient::new(traced(channel)))
    }
}
