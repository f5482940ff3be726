//! The connection to the controller: the operator's TLS files from the
//! flags (or environment) and one eager, traced channel.

use tandem_proto::pb::controller_client::ControllerClient;
use tandem_proto::propagation::{TracedChannel, traced};
use tandem_proto::tls::TlsFiles;

use crate::cli::Connection;
use crate::outcome::CtlError;

/// A connected controller client.
pub type Client = ControllerClient<TracedChannel>;

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
        let url = self.controller.as_deref().ok_or(CtlError::Missing {
            what: "controller address",
            flag: "--controller",
            env: "TANDEM_CONTROLLER",
        })?;
        let channel = tandem_proto::tls::connect(url, &self.tls()?).await?;
        Ok(ControllerClient::new(traced(channel)))
    }
}
