//! The proxy roles. Each is one short file that says which pods it serves, how their traffic
//! is captured, and which path serves each listener; the paths themselves live in `l4` and
//! `l7`, and what every role shares in `proxy`.

mod enrol;
pub mod gateway;
pub mod node;
pub mod sidecar;
pub mod waypoint;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::l4::inbound::Deliver;
use crate::net::Capture;
use crate::proxy::{Listeners, Pod};
use crate::snapshot::WorkloadInfo;

pub use enrol::run;
pub use gateway::{GatewayListener, GatewayRole};
pub use node::NodeRole;
pub use sidecar::SidecarRole;
pub use waypoint::WaypointRole;

/// A proxy role. Its `Deliver` half serves inbound connections policy admitted.
pub trait Role: Deliver {
    /// The id this proxy gives the control plane.
    fn node_id(&self) -> String;
    /// Whether to subscribe to Spar's L7 types (routes, telemetry).
    fn wants_l7(&self) -> bool;
    /// Whether this proxy serves `w`.
    fn serves(&self, w: &WorkloadInfo) -> bool;
    fn capture(&self) -> Capture;
    /// Whether the pod's traffic is redirected to the proxy (a waypoint's is not).
    fn captures(&self) -> bool {
        true
    }
    /// Serve an enrolled pod's listeners; the tasks are aborted when the pod leaves.
    fn start(self: Arc<Self>, pod: Arc<Pod>, l: Listeners) -> Vec<JoinHandle<()>>;
    /// Whether the proxy serves Istio's `:15020`/`:15021`/`:15000` inside its pod (a
    /// sidecar, waypoint or gateway: the pod is the proxy's own; a node proxy serves its
    /// node's instead).
    fn pod_ports(&self) -> bool {
        false
    }
    /// Metrics beyond the TCP ones every role has.
    fn register_metrics(&self, _r: &mut Registry) {}
}
