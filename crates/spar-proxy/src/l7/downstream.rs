//! One accepted downstream connection to a service: from the pod's application (a sidecar),
//! or a client's HBONE tunnel (a waypoint); what every request on it shares.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Engine;
use crate::proxy::{Pod, Proxy};
use crate::snapshot::{ServiceKey, WorkloadInfo};

pub struct Downstream {
    pub proxy: Arc<Proxy>,
    /// The pod this proxy serves (its identity dials the upstream).
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
    /// The service the client called.
    pub service: ServiceKey,
    pub dst: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// Istio's `reporter`: `source` (sidecar) or `waypoint`.
    pub reporter: &'static str,
    /// The client as a workload and its principal: the pod itself for a sidecar; the caller
    /// the tunnel came from for a waypoint.
    pub client: Option<Arc<WorkloadInfo>>,
    pub client_identity: String,
}
