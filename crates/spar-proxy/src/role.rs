//! The proxy roles. Each is one short file that says which pods it serves, how their traffic
//! is captured, and which path serves each listener; the paths themselves live in `l4` and
//! `l7`, and what every role shares in `proxy`.

pub mod node;
pub mod sidecar;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::l4::inbound::Arrived;
use crate::l4::plan::Admitted;
use crate::net::Capture;
use crate::proxy::{Listeners, Pod, Proxy};
use crate::snapshot::WorkloadInfo;

pub use node::NodeRole;
pub use sidecar::SidecarRole;

pub trait Role: Send + Sync + 'static {
    fn proxy(&self) -> &Arc<Proxy>;
    /// The id this proxy gives the control plane.
    fn node_id(&self) -> String;
    /// Whether to subscribe to Spar's L7 types (routes, telemetry).
    fn wants_l7(&self) -> bool;
    /// Whether this proxy serves `w`.
    fn serves(&self, w: &WorkloadInfo) -> bool;
    fn capture(&self) -> Capture;
    /// Serve an enrolled pod's listeners; the tasks are aborted when the pod leaves.
    fn start(self: Arc<Self>, pod: Arc<Pod>, l: Listeners) -> Vec<JoinHandle<()>>;
    /// Serve an inbound connection `plan_inbound` admitted.
    fn deliver(
        self: Arc<Self>,
        pod: Arc<Pod>,
        conn: Admitted,
        io: Arrived,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// Metrics beyond the TCP ones every role has.
    fn register_metrics(&self, _r: &mut Registry) {}
}
