//! The proxy's view of the mesh, rebuilt from xDS and swapped atomically; a connection reads
//! it once when accepted. `plan_outbound` is the pure decision of where a connection goes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use spar_xds::security::Authorization;
use spar_xds::workload::{Service, TunnelProtocol, Workload, WorkloadStatus};

pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, Default, Clone)]
pub struct State {
    pub workloads: BTreeMap<String, Arc<Workload>>,
    pub by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub services: BTreeMap<String, Arc<Service>>,
    pub by_vip: HashMap<IpAddr, Arc<Service>>,
    pub policies: BTreeMap<String, Authorization>,
    /// Sidecars: compiled L7 config per `namespace/hostname`, and by hostname.
    pub l7: HashMap<String, Arc<crate::l7::config::Service>>,
    pub l7_by_host: HashMap<String, Arc<crate::l7::config::Service>>,
    /// Sidecars: which access log lines to write (Istio's Telemetry API; none by default).
    pub telemetry: spar_xds::l7::Telemetry,
}

impl State {
    pub fn build(
        workloads: BTreeMap<String, Workload>,
        services: BTreeMap<String, Service>,
        policies: BTreeMap<String, Authorization>,
        l7: BTreeMap<String, Arc<crate::l7::config::Service>>,
    ) -> State {
        let workloads: BTreeMap<String, Arc<Workload>> = workloads
            .into_iter()
            .map(|(k, w)| (k, Arc::new(w)))
            .collect();
        let by_ip = workloads
            .values()
            .flat_map(|w| {
                w.addresses
                    .iter()
                    .filter_map(|a| ip(a))
                    .map(move |ip| (ip, w.clone()))
            })
            .collect();
        let services: BTreeMap<String, Arc<Service>> = services
            .into_iter()
            .map(|(k, s)| (k, Arc::new(s)))
            .collect();
        let by_vip = services
            .values()
            .flat_map(|s| {
                s.addresses
                    .iter()
                    .filter_map(|a| ip(&a.address))
                    .map(move |ip| (ip, s.clone()))
            })
            .collect();
        let l7_by_host = l7
            .values()
            .map(|s| (s.hostname.clone(), s.clone()))
            .collect();
        State {
            workloads,
            by_ip,
            services,
            by_vip,
            policies,
            l7: l7.into_iter().collect(),
            l7_by_host,
            telemetry: Default::default(),
        }
    }
}

pub fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from([b[0], b[1], b[2], b[3]])),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

/// The SPIFFE identity of a workload.
pub fn identity(w: &Workload) -> String {
    let td = if w.trust_domain.is_empty() {
        "cluster.local"
    } else {
        &w.trust_domain
    };
    let sa = if w.service_account.is_empty() {
        "default"
    } else {
        &w.service_account
    };
    format!("spiffe://{td}/ns/{}/sa/{sa}", w.namespace)
}

/// Where one attempt goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// mTLS HTTP/2 CONNECT to `addr` (the pod's 15008) for `target`.
    Hbone {
        addr: SocketAddr,
        target: SocketAddr,
        identity: String,
        workload: Arc<Workload>,
    },
    /// Plain TCP (destination outside the mesh, or unknown).
    Direct {
        addr: SocketAddr,
        workload: Option<Arc<Workload>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundPlan {
    /// Endpoints to try in order (connection-level load balancing: a random order).
    pub candidates: Vec<Upstream>,
    /// `namespace/hostname` when the destination was a service VIP.
    pub service: Option<String>,
}

/// Decide where a captured outbound connection to `dst` goes. `shuffle` orders endpoints.
pub fn plan_outbound(
    state: &State,
    dst: SocketAddr,
    shuffle: impl FnOnce(&mut Vec<Arc<Workload>>),
) -> OutboundPlan {
    if let Some(svc) = state.by_vip.get(&dst.ip()) {
        let key = format!("{}/{}", svc.namespace, svc.hostname);
        let mut eps: Vec<Arc<Workload>> = state
            .workloads
            .values()
            .filter(|w| w.status == WorkloadStatus::Healthy as i32 && w.services.contains_key(&key))
            .cloned()
            .collect();
        shuffle(&mut eps);
        let candidates = eps
            .iter()
            .filter_map(|w| {
                let ports = &w.services.get(&key)?.ports;
                let port = ports
                    .iter()
                    .find(|p| p.service_port == u32::from(dst.port()))?;
                let target = if port.target_port == 0 {
                    dst.port()
                } else {
                    u16::try_from(port.target_port).ok()?
                };
                let wip = w.addresses.first().and_then(|a| ip(a))?;
                Some(to_workload(w, SocketAddr::new(wip, target)))
            })
            .collect();
        return OutboundPlan {
            candidates,
            service: Some(key),
        };
    }
    let candidates = match state.by_ip.get(&dst.ip()) {
        Some(w) => vec![to_workload(w, dst)],
        None => vec![Upstream::Direct {
            addr: dst,
            workload: None,
        }],
    };
    OutboundPlan {
        candidates,
        service: None,
    }
}

pub fn to_workload(w: &Arc<Workload>, target: SocketAddr) -> Upstream {
    if w.tunnel_protocol == TunnelProtocol::Hbone as i32 {
        Upstream::Hbone {
            addr: SocketAddr::new(target.ip(), HBONE_PORT),
            target,
            identity: identity(w),
            workload: w.clone(),
        }
    } else {
        Upstream::Direct {
            addr: target,
            workload: Some(w.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spar_xds::workload::{NetworkAddress, Port, PortList};

    fn wl(
        name: &str,
        ipb: [u8; 4],
        hbone: bool,
        svc: Option<(&str, u32, u32)>,
    ) -> (String, Workload) {
        let services = svc
            .map(|(k, sp, tp)| {
                (
                    k.to_string(),
                    PortList {
                        ports: vec![Port {
                            service_port: sp,
                            target_port: tp,
                            app_protocol: 0,
                        }],
                    },
                )
            })
            .into_iter()
            .collect();
        (
            name.into(),
            Workload {
                uid: name.into(),
                name: name.into(),
                namespace: "ns".into(),
                addresses: vec![ipb.to_vec()],
                tunnel_protocol: if hbone { 1 } else { 0 },
                service_account: "sa".into(),
                services,
                ..Default::default()
            },
        )
    }

    #[test]
    fn plans_table() {
        let workloads = [
            wl(
                "a",
                [10, 0, 1, 2],
                true,
                Some(("ns/web.ns.svc.cluster.local", 80, 8080)),
            ),
            wl(
                "b",
                [10, 0, 2, 2],
                false,
                Some(("ns/web.ns.svc.cluster.local", 80, 8080)),
            ),
            wl("c", [10, 0, 2, 3], true, None),
        ]
        .into_iter()
        .collect();
        let svc = Service {
            name: "web".into(),
            namespace: "ns".into(),
            hostname: "web.ns.svc.cluster.local".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
            }],
            ..Default::default()
        };
        let state = State::build(
            workloads,
            [("ns/web.ns.svc.cluster.local".to_string(), svc)]
                .into_iter()
                .collect(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        let keep = |_: &mut Vec<Arc<Workload>>| {};
        // VIP -> each endpoint, HBONE for the mesh one, plain for the other, target port mapped.
        let p = plan_outbound(&state, "10.96.0.1:80".parse().expect("addr"), keep);
        assert_eq!(p.service.as_deref(), Some("ns/web.ns.svc.cluster.local"));
        let got: Vec<String> = p
            .candidates
            .iter()
            .map(|u| match u {
                Upstream::Hbone {
                    addr,
                    target,
                    identity,
                    ..
                } => format!("hbone {addr} {target} {identity}"),
                Upstream::Direct { addr, .. } => format!("direct {addr}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "hbone 10.0.1.2:15008 10.0.1.2:8080 spiffe://cluster.local/ns/ns/sa/sa",
                "direct 10.0.2.2:8080"
            ]
        );
        // A port the service does not have: nothing to try.
        assert!(
            plan_outbound(&state, "10.96.0.1:81".parse().expect("addr"), keep)
                .candidates
                .is_empty()
        );
        // A pod IP directly.
        assert!(
            matches!(&plan_outbound(&state, "10.0.2.3:9000".parse().expect("addr"), keep).candidates[0], Upstream::Hbone { target, .. } if target.port() == 9000)
        );
        // Outside the mesh.
        assert_eq!(
            plan_outbound(&state, "1.1.1.1:443".parse().expect("addr"), keep).candidates,
            vec![Upstream::Direct {
                addr: "1.1.1.1:443".parse().expect("addr"),
                workload: None
            }]
        );
    }
}
