//! The connection to the controller: the operator's TLS files from the
//! flags (or environment) and one eager, traced channel to the controller
//! that leads ([`LeaderChannel`]: a call a follower turns away is sent again
//! to the leader, so every command goes there without knowing it).
//! [`Connection::reopen`] opens a broken stream again through whichever
//! controller leads now, for the commands that follow a run or a window.

use std::future::Future;
use std::time::Duration;

use tandem_proto::leader::{LeaderChannel, channel::NoController, parse_addresses};
use tandem_proto::pb::controller_client::ControllerClient;
use tandem_proto::propagation::traced;
use tandem_proto::tls::{TlsError, TlsFiles};

use crate::cli::Connection;
use crate::outcome::CtlError;

pub use tandem_proto::leader::LeaderClient as Client;

/// How long a stream that broke is tried again, in all.
pub const REOPEN_FOR: Duration = Duration::from_secs(60);
/// The wait between two tries.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// A client and the channel under it, which says where it goes.
pub struct Leader {
    pub client: Client,
    channel: LeaderChannel,
}

impl Leader {
    /// The controller calls go to now.
    pub fn url(&self) -> String {
        self.channel.current()
    }
}

/// Whether a stream's error means its controller went away (stopped, lost
/// its machine or its lead) rather than answered: the stream can be opened
/// again through another.
pub fn went_away(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Unavailable | Unknown | Cancelled)
}

impl Connection {
    fn tls(&self) -> Result<TlsFiles, CtlError> {
        let missing = |what, flag, env| CtlError::Missing { what, flag, env };
        Ok(TlsFiles {
            ca: self
                .ca
                .clone()
                .ok_or_else(|| missing("CA certificate", "--ca", "TANDEM_CA"))?,
            cert: self
                .cert
                .clone()
                .ok_or_else(|| missing("operator certificate", "--cert", "TANDEM_CERT"))?,
            key: self
                .key
                .clone()
                .ok_or_else(|| missing("operator key", "--key", "TANDEM_KEY"))?,
        })
    }

    /// Connect to the controller (eagerly, so an unreachable one fails here).
    pub async fn connect(&self) -> Result<Client, CtlError> {
        Ok(self.leader().await?.client)
    }

    /// Connect to the first controller address that answers; calls then go
    /// on to the leader.
    pub async fn leader(&self) -> Result<Leader, CtlError> {
        let missing = CtlError::Missing {
            what: "controller address",
            flag: "--controller",
            env: "TANDEM_CONTROLLER",
        };
        let addresses = parse_addresses(self.controller.as_deref().ok_or(missing)?);
        let channel = match LeaderChannel::connect(addresses, &self.tls()?).await {
            Ok(c) => c,
            Err(NoController::NoAddress) => {
                return Err(CtlError::Missing {
                    what: "controller address",
                    flag: "--controller",
                    env: "TANDEM_CONTROLLER",
                });
            }
            // One address: said as before, the address and its cause.
            Err(NoController::Unreachable(mut errors)) if errors.len() == 1 => {
                return Err(errors.remove(0).into());
            }
            Err(NoController::Unreachable(errors)) => {
                return Err(CtlError::NoController {
                    tried: errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        };
        Ok(Leader {
            client: ControllerClient::new(traced(channel.clone())),
            channel,
        })
    }

    /// After a stream broke because its controller went away: connect
    /// again and `open` the stream anew through the controller that leads
    /// now, once a second for up to [`REOPEN_FOR`]. The last failure when
    /// none answers in that time.
    pub async fn reopen<T, F, Fut>(
        &self,
        call: &'static str,
        mut open: F,
    ) -> Result<(Leader, T), CtlError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let until = tokio::time::Instant::now() + REOPEN_FOR;
        loop {
            let failed = match self.leader().await {
                Ok(leader) => match open(leader.client.clone()).await {
                    Ok(t) => return Ok((leader, t)),
                    Err(s) if went_away(&s) => crate::outcome::refused(call)(s),
                    Err(s) => return Err(crate::outcome::refused(call)(s)),
                },
                Err(
                    e @ (CtlError::Tls(TlsError::Connect { .. }) | CtlError::NoController { .. }),
                ) => e,
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= until {
                return Err(failed);
            }
            tokio::time::sleep(REOPEN_EVERY).await;
        }
    }
}
