//! The ingress gateway role: one process in a gateway pod (a Gateway of class `istio`, or the
//! pods an Istio `Gateway` selects). Its pod is not captured; it listens on the gateway's
//! ports for clients from outside the mesh and sends each request on with its own identity.
//!
//! listener (HTTP, or HTTPS with the listener's credential) -> `l7::ingress::serve`
//! listener passing TLS through by SNI -> `l7::passthrough::serve`

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use super::Role;
use crate::l4::inbound::{Arrived, Deliver};
use crate::l4::plan::Admitted;
use crate::l7::Engine;
use crate::l7::ingress::{self, Ingress};
use crate::l7::passthrough;
use crate::net::Capture;
use crate::proxy::{Listeners, Pod, Proxy, accept_loop};
use crate::snapshot::WorkloadInfo;

/// One listener port of the gateway, with its TLS credential (HTTPS) or none (HTTP), or
/// passing TLS through by SNI.
#[derive(Clone)]
pub struct GatewayListener {
    pub port: u16,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub passthrough: bool,
}

pub struct GatewayRole {
    pub proxy: Arc<Proxy>,
    pub engine: Arc<Engine>,
    pub namespace: String,
    pub pod: String,
    pub listeners: Vec<GatewayListener>,
}

impl Role for GatewayRole {
    fn node_id(&self) -> String {
        format!(
            "router~~{}.{}~{}.svc",
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

    fn start(self: Arc<Self>, pod: Arc<Pod>, _l: Listeners) -> Vec<JoinHandle<()>> {
        let ig = Arc::new(Ingress {
            proxy: self.proxy.clone(),
            pod: pod.clone(),
            engine: self.engine.clone(),
        });
        self.listeners
            .iter()
            .cloned()
            .map(|l| {
                let (ig, pod) = (ig.clone(), pod.clone());
                tokio::spawn(async move {
                    let listener = match pod.net.listen(l.port, false).await {
                        Ok(x) => x,
                        Err(e) => {
                            return tracing::error!(port = l.port, error = %e, "cannot listen for the gateway");
                        }
                    };
                    let admission = ig.proxy.admission();
                    if l.passthrough {
                        let serving = accept_loop(listener, admission, move |s, peer| {
                            passthrough::serve(ig.clone(), l.port, s, peer)
                        });
                        let _ = serving.await;
                    } else {
                        let serving = accept_loop(listener, admission, move |s, peer| {
                            ingress::serve(ig.clone(), l.port, l.tls.clone(), s, peer)
                        });
                        let _ = serving.await;
                    }
                })
            })
            .collect()
    }

    fn register_metrics(&self, r: &mut Registry) {
        self.engine.metrics.register(r);
    }
}

impl Deliver for GatewayRole {
    fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// A gateway takes no mesh traffic in: its listeners are its own.
    async fn deliver(self: Arc<Self>, _pod: Arc<Pod>, _conn: Admitted, io: Arrived) {
        io.refuse(http::StatusCode::BAD_REQUEST)
    }
}
