//! The waypoint role: one process in a waypoint pod (a Gateway of class `istio-waypoint`).
//! Its pod is not captured; it serves HBONE on 15008 and sends everything on by HBONE (or
//! plain TCP outside the mesh) with its own identity.
//!
//! 15008 HBONE -> `l4::inbound::tunnels` -> per CONNECT: `l7::waypoint::stream`
//!                (HTTP: authorize, then the L7 engine; TCP: authorize, `tcp_plan`, relay)

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use super::Role;
use crate::l4::inbound::{self, Arrived, Deliver};
use crate::l4::plan::Admitted;
use crate::l7::Engine;
use crate::l7::waypoint::{self, Waypoint};
use crate::net::Capture;
use crate::proxy::{Listeners, Pod, Proxy, accept_loop};
use crate::snapshot::WorkloadInfo;

pub struct WaypointRole {
    pub proxy: Arc<Proxy>,
    pub engine: Arc<Engine>,
    pub namespace: String,
    pub pod: String,
    /// The Gateway this waypoint runs for (its Service is named after it).
    pub gateway: String,
}

impl Role for WaypointRole {
    fn node_id(&self) -> String {
        format!(
            "waypoint~~{}.{}~{}.svc",
            self.pod, self.namespace, self.namespace
        )
    }

    fn wants_l7(&self) -> bool {
        true
    }

    fn pod_ports(&self) -> bool {
        true
    }

    fn serves(&self, w: &WorkloadInfo) -> bool {
        w.namespace == self.namespace && w.name == self.pod
    }

    fn capture(&self) -> Capture {
        Capture::default()
    }

    fn captures(&self) -> bool {
        false
    }

    fn start(self: Arc<Self>, pod: Arc<Pod>, l: Listeners) -> Vec<JoinHandle<()>> {
        let wp = Arc::new(Waypoint {
            proxy: self.proxy.clone(),
            pod: pod.clone(),
            engine: self.engine.clone(),
            namespace: self.namespace.clone(),
            gateway: self.gateway.clone(),
        });
        let admission = self.proxy.admission();
        vec![accept_loop(l.hbone, admission, move |s, peer| {
            let wp = wp.clone();
            async move {
                let (proxy, identity) = (wp.proxy.clone(), wp.pod.identity.clone());
                inbound::tunnels(&proxy, &identity, s, peer, |req, respond, id| {
                    tokio::spawn(waypoint::stream(wp.clone(), peer, id, req, respond));
                })
                .await
            }
        })]
    }

    fn register_metrics(&self, r: &mut Registry) {
        self.engine.metrics.register(r);
    }
}

impl Deliver for WaypointRole {
    fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// A waypoint's tunnels go through `l7::waypoint`, never through `plan_inbound`.
    async fn deliver(self: Arc<Self>, _pod: Arc<Pod>, _conn: Admitted, io: Arrived) {
        io.refuse(http::StatusCode::BAD_REQUEST)
    }
}
