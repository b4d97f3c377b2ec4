//! The connection to the control plane: one TLS gRPC channel (checked against the mesh
//! root), with the node's bearer token on every call.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Error;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A certificate request (one unary call) gets this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// `host:port` of `spar control` (xDS and CA).
    pub addr: String,
    /// The name its certificate carries for that address (`localhost` for 127.0.0.1).
    pub server_name: String,
    pub root_pem: String,
    pub token_file: PathBuf,
}

impl ControlPlane {
    pub fn channel(&self) -> Result<Channel, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::ControlPlane {
            addr: self.addr.clone(),
            reason: e.to_string(),
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name(&self.server_name);
        // A half-open connection (the control plane's host gone without a FIN) is found by
        // HTTP/2 pings within half a minute, instead of an xDS stream that waits for good.
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))
            .map_err(|e| bad(&e))?
            .tls_config(tls)
            .map_err(|e| bad(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// The bearer token, read fresh each time so a rotated token file is picked up.
    pub fn bearer(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Error> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| Error::ControlPlane {
            addr: self.addr.clone(),
            reason: format!("cannot read token {}: {e}", self.token_file.display()),
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| Error::ControlPlane {
                addr: self.addr.clone(),
                reason: "the token file holds invalid characters".into(),
            })
    }
}
