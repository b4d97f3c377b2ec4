//! One accepted downstream connection from the pod's application to a service: what every
//! request on it shares.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Engine;
use crate::proxy::{Pod, Proxy};
use crate::snapshot::ServiceKey;

pub struct Downstream {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
    /// The service the client called.
    pub service: ServiceKey,
    pub dst: SocketAddr,
    pub peer: SocketAddr,
}
