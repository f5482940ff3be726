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
