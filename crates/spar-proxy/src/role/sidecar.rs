//! The sidecar role: one process in one injected pod, L4 and L7 on both ends.
//!
//! 15001 outbound -> service VIP with L7 config? no: `l4::outbound::serve`
//!                -> port protocol (declared, or sniffed): TCP: `l4::plan::tcp_plan` ->
//!                   `l4::outbound::forward`; HTTP: `l7::outbound::serve`
//! 15006 / 15008 inbound -> `l4::inbound` (policy) -> declared HTTP port? `l7::inbound::serve`
//!                -> else `l4::inbound::to_app`
//! 15053 DNS -> `dns::serve`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Role;
use crate::l4::inbound::Deliver;
use crate::l4::inbound::{self, Arrived};
use crate::l4::outbound;
use crate::l4::plan::{Admitted, tcp_plan};
use crate::l4::relay::reset;
use crate::l7::config::Protocol;
use crate::l7::detect::{Detected, sniff};
use crate::l7::downstream::Downstream;
use crate::l7::{self, Engine};
use crate::net::Capture;
use crate::proxy::{Listeners, Pod, Proxy, accept_loop};
use crate::snapshot::WorkloadInfo;

/// How long an undeclared port waits for the client's first bytes before treating the
/// connection as TCP (server-first protocols send nothing first).
const DETECT_WINDOW: Duration = Duration::from_millis(200);

pub struct SidecarRole {
    pub proxy: Arc<Proxy>,
    pub engine: Arc<Engine>,
    pub namespace: String,
    pub pod: String,
    pub capture: Capture,
}

impl Role for SidecarRole {
    fn node_id(&self) -> String {
        format!(
            "sidecar~~{}.{}~{}.svc",
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
        // The proxy's own ports in the pod are reached directly, as Istio's sidecar
        // capture leaves them: metrics (15020), readiness (15021), Envoy's stats port.
        let mut c = self.capture.clone();
        for port in [crate::admin::STATS_PORT, crate::admin::HEALTH_PORT, 15090] {
            if !c.exclude_inbound.contains(&port) {
                c.exclude_inbound.push(port);
            }
        }
        c
    }

    fn start(self: Arc<Self>, pod: Arc<Pod>, l: Listeners) -> Vec<JoinHandle<()>> {
        let upstreams = Arc::new(crate::dns::upstreams());
        let dns = crate::dns::serve(l.dns, self.proxy.snapshot.clone(), upstreams);
        let proxy = self.proxy.clone();
        let (r0, p0) = (self.clone(), pod.clone());
        let (r1, p1) = (self.clone(), pod.clone());
        let (r2, p2) = (self, pod);
        vec![
            tokio::spawn(dns),
            accept_loop(l.outbound, proxy.admission(), move |s, peer| {
                r0.clone().outbound(p0.clone(), s, peer)
            }),
            accept_loop(l.inbound, proxy.admission(), move |s, peer| {
                inbound::plaintext(r1.clone(), p1.clone(), s, peer)
            }),
            accept_loop(l.hbone, proxy.admission(), move |s, peer| {
                inbound::hbone(r2.clone(), p2.clone(), s, peer)
            }),
        ]
    }

    fn register_metrics(&self, r: &mut Registry) {
        self.engine.metrics.register(r);
    }
}

impl SidecarRole {
    /// A captured connection from the pod's application.
    async fn outbound(self: Arc<Self>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
        let Ok(dst) = pod.net.original_dst(&s) else {
            return reset(s);
        };
        let snap = self.proxy.snapshot.load_full();
        let Some(svc) = snap
            .by_vip
            .get(&dst.ip())
            .filter(|s| s.l7.is_some())
            .cloned()
        else {
            // Not a service with L7 config: L4 (pod addresses, passthrough).
            drop(snap);
            return outbound::serve(self.proxy.clone(), pod, s, peer, false).await;
        };
        let protocol = svc
            .l7
            .as_ref()
            .map_or(Protocol::Detect, |l7| l7.protocol(dst.port()));
        let http = match protocol {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Tcp => false,
            Protocol::Detect => sniff(&s, DETECT_WINDOW).await == Detected::Http,
        };
        if !http {
            let plan = tcp_plan(&snap, &svc, dst, &mut rand::rng());
            drop(snap);
            return outbound::forward(&self.proxy, &pod, s, peer, dst, plan).await;
        }
        let ds = Arc::new(Downstream {
            proxy: self.proxy.clone(),
            reporter: "source",
            client: Some(pod.workload.clone()),
            client_identity: pod.identity.clone(),
            pod,
            engine: self.engine.clone(),
            service: svc.key.clone(),
            dst,
            peer,
        });
        drop(snap);
        l7::outbound::serve(ds, s).await
    }
}

impl Deliver for SidecarRole {
    fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Ports the pod's Service declares HTTP get the L7 inbound path (destination metrics,
    /// XFCC); everything else is L4.
    async fn deliver(self: Arc<Self>, pod: Arc<Pod>, conn: Admitted, io: Arrived) {
        match conn.http_service.clone() {
            Some(service) => {
                let ib = l7::inbound::Inbound::new(
                    self.proxy.clone(),
                    pod,
                    self.engine.clone(),
                    conn,
                    service,
                );
                if let Some(io) = io.accept() {
                    l7::inbound::serve(Arc::new(ib), io).await;
                }
            }
            None => inbound::to_app(&self.proxy, &pod, conn, io).await,
        }
    }
}
