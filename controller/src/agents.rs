//! Channels from the controller to its agents, one per address, reused
//! while in use and closed once idle.
//!
//! The controller presents its own certificate (`spiffe://tandem/controller`)
//! and checks the agent's certificate against the host in its address.
//! Channels are cached, but each new connection (the first, or one after a
//! failure) is made with the TLS files in force ([`LiveTls`]), so renewed
//! files need no restart; connections already open keep going.
//!
//! A channel no call has asked for in [`IDLE`] leaves the cache: its
//! connection closes when the last call still holding it (a watch that
//! follows a long operation) ends. A fleet of ten thousand agents, each
//! tested once a night, so holds connections only to the agents it is
//! talking to, not to every agent it ever tested (each costs the
//! controller a file descriptor and about 100 KB). The next call to that
//! agent connects again: one TLS handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tandem_proto::pb::agent_client::AgentClient;
use tandem_proto::propagation::{TracedChannel, traced};
use tandem_proto::tls::{LiveTls, TlsError};

/// How long an unused channel stays open.
pub const IDLE: Duration = Duration::from_secs(20);

pub struct AgentClients {
    tls: Arc<LiveTls>,
    channels: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    channel: tonic::transport::Channel,
    used: Instant,
}

impl AgentClients {
    /// The cache; on a tokio runtime, a task closes idle channels every
    /// `IDLE / 4` for as long as the cache lives.
    pub fn new(tls: Arc<LiveTls>) -> Arc<AgentClients> {
        let clients = Arc::new(AgentClients {
            tls,
            channels: Mutex::new(HashMap::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_loop(Arc::downgrade(&clients)));
        }
        clients
    }

    /// A client for the agent at `address` ("host:port"); connects lazily.
    pub fn client(&self, address: &str) -> Result<AgentClient<TracedChannel>, TlsError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let channel = match channels.get_mut(address) {
            Some(c) => {
                c.used = now;
                c.channel.clone()
            }
            None => {
                let channel = tandem_proto::tls::connect_lazy_live(
                    &format!("https://{address}"),
                    self.tls.clone(),
                )?;
                channels.insert(
                    address.to_owned(),
                    Cached {
                        channel: channel.clone(),
                        used: now,
                    },
                );
                channel
            }
        };
        Ok(AgentClient::new(traced(channel)))
    }

    /// Drop the channels not asked for since `IDLE` before `now`.
    fn sweep(&self, now: Instant) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|_, c| now.saturating_duration_since(c.used) < IDLE);
    }
}

async fn sweep_loop(clients: Weak<AgentClients>) {
    let mut tick = tokio::time::interval(IDLE / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match clients.upgrade() {
            Some(c) => c.sweep(Instant::now()),
            None => return,
        }
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
