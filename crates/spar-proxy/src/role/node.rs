//! The node role (ambient): one process per node, serving every ambient pod scheduled there.
//! L4 only; listeners open inside each pod's network namespace:
//!
//! 15001 outbound -> `l4::outbound::serve`
//! 15006 inbound plaintext -> `l4::inbound::plaintext` -> `l4::inbound::to_app`
//! 15008 HBONE -> `l4::inbound::hbone` -> `l4::inbound::to_app`
//! 15053 DNS -> `dns::serve`

use std::sync::Arc;

use spar_xds::workload::TunnelProtocol;
use tokio::task::JoinHandle;

use super::Role;
use crate::l4::inbound::Deliver;
use crate::l4::inbound::{self, Arrived};
use crate::l4::outbound;
use crate::l4::plan::Admitted;
use crate::net::Capture;
use crate::proxy::{Listeners, Pod, Proxy, accept_loop};
use crate::snapshot::WorkloadInfo;

pub struct NodeRole {
    pub proxy: Arc<Proxy>,
}

impl Role for NodeRole {
    fn node_id(&self) -> String {
        format!("spar-node~{0}~{0}", self.proxy.name)
    }

    fn wants_l7(&self) -> bool {
        false
    }

    /// Ambient pods of this node (sidecars carry their own proxy).
    fn serves(&self, w: &WorkloadInfo) -> bool {
        w.node == self.proxy.name
            && w.tunnel_protocol == TunnelProtocol::Hbone as i32
            && !w.native_tunnel
    }

    fn capture(&self) -> Capture {
        Capture::default()
    }

    fn start(self: Arc<Self>, pod: Arc<Pod>, l: Listeners) -> Vec<JoinHandle<()>> {
        let proxy = self.proxy.clone();
        let upstreams = Arc::new(crate::dns::upstreams());
        let (p, out_pod) = (proxy.clone(), pod.clone());
        let (r1, in_pod) = (self.clone(), pod.clone());
        let (r2, hb_pod) = (self, pod);
        vec![
            tokio::spawn(crate::dns::serve(l.dns, proxy.snapshot.clone(), upstreams)),
            accept_loop(l.outbound, proxy.admission(), move |s, peer| {
                outbound::serve(p.clone(), out_pod.clone(), s, peer, true)
            }),
            accept_loop(l.inbound, proxy.admission(), move |s, peer| {
                inbound::plaintext(r1.clone(), in_pod.clone(), s, peer)
            }),
            accept_loop(l.hbone, proxy.admission(), move |s, peer| {
                inbound::hbone(r2.clone(), hb_pod.clone(), s, peer)
            }),
        ]
    }
}

impl Deliver for NodeRole {
    fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    async fn deliver(self: Arc<Self>, pod: Arc<Pod>, conn: Admitted, io: Arrived) {
        inbound::to_app(&self.proxy, &pod, conn, io).await
    }
}
