//! Where a connection goes and whether it may: pure decisions over the snapshot. Outbound:
//! a VIP becomes its endpoints in random order (connection-level balancing), a pod address
//! that workload, anything else passthrough; a VirtualService `tcp` route picks a destination
//! by weight. Inbound: the CONNECT authority must be this pod, the peer's SPIFFE identity
//! becomes a principal and namespace, and L4 policy decides.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use rand::seq::SliceRandom;

use super::authz::{self, Conn, Decision};
use crate::security::authz::{Decision as AuthzDecision, Facts, evaluate};
use crate::snapshot::{HBONE_PORT, ServiceInfo, ServiceKey, Snapshot, WorkloadInfo};

/// Where one attempt goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstream {
    /// mTLS HTTP/2 CONNECT to `addr` (the workload's 15008) for `target`.
    Hbone {
        addr: SocketAddr,
        target: SocketAddr,
        identity: String,
        workload: Arc<WorkloadInfo>,
    },
    /// Plain TCP (a destination outside the mesh, or unknown).
    Direct {
        addr: SocketAddr,
        workload: Option<Arc<WorkloadInfo>>,
    },
}

impl Upstream {
    /// How to reach `w` at `target`.
    pub fn to(w: &Arc<WorkloadInfo>, target: SocketAddr) -> Upstream {
        if w.hbone {
            Upstream::Hbone {
                addr: SocketAddr::new(target.ip(), HBONE_PORT),
                target,
                identity: w.identity.clone(),
                workload: w.clone(),
            }
        } else {
            Upstream::Direct {
                addr: target,
                workload: Some(w.clone()),
            }
        }
    }

    /// The address the application behind it is reached on.
    pub fn target(&self) -> SocketAddr {
        match self {
            Upstream::Hbone { target, .. } => *target,
            Upstream::Direct { addr, .. } => *addr,
        }
    }

    pub fn workload(&self) -> Option<&Arc<WorkloadInfo>> {
        match self {
            Upstream::Hbone { workload, .. } => Some(workload),
            Upstream::Direct { workload, .. } => workload.as_ref(),
        }
    }

    pub fn mtls(&self) -> bool {
        matches!(self, Upstream::Hbone { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundPlan {
    /// Endpoints to try in order.
    pub candidates: Vec<Upstream>,
    /// The service, when the destination was a service VIP.
    pub service: Option<ServiceKey>,
}

/// The ports a proxy captures into. A connection whose destination is one of them was not
/// redirected (a client dialled the proxy itself, e.g. `127.0.0.1:15001` or a pod's own
/// `:15006`): forwarding it would dial the same listener again, without end.
pub const CAPTURE_PORTS: [u16; 2] = [15001, 15006];

/// Decide where a captured outbound connection to `dst` goes. With `waypoints` (node
/// proxies), a destination that uses a waypoint is reached through it: HBONE to a waypoint
/// pod, CONNECT to the original destination (Istio's ztunnel does the same).
pub fn plan_outbound(
    snap: &Snapshot,
    dst: SocketAddr,
    waypoints: bool,
    rng: &mut impl Rng,
) -> OutboundPlan {
    if CAPTURE_PORTS.contains(&dst.port()) {
        return OutboundPlan {
            candidates: Vec::new(),
            service: None,
        };
    }
    if waypoints && let Some(plan) = via_waypoint(snap, dst, rng) {
        return plan;
    }
    if let Some(svc) = snap.by_vip.get(&dst.ip()) {
        return to_service(svc, dst.port(), None, rng);
    }
    let candidates = match snap.by_ip.get(&dst.ip()) {
        Some(w) => vec![Upstream::to(w, dst)],
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

/// The waypoint `dst` uses (a service VIP's, else a pod's), as candidates: each waypoint pod,
/// in random order, tunnelling to `dst` itself. A destination whose waypoint has no pod yet
/// gets no candidate: its traffic waits for the waypoint rather than skip it.
fn via_waypoint(snap: &Snapshot, dst: SocketAddr, rng: &mut impl Rng) -> Option<OutboundPlan> {
    use spar_xds::workload::gateway_address::Destination;
    let (ga, service) = match snap.by_vip.get(&dst.ip()) {
        Some(svc) => (
            svc.service.as_ref()?.waypoint.as_ref()?,
            Some(svc.key.clone()),
        ),
        None => (snap.by_ip.get(&dst.ip())?.workload.waypoint.as_ref()?, None),
    };
    let Some(Destination::Hostname(h)) = &ga.destination else {
        return None;
    };
    let port = u16::try_from(ga.hbone_mtls_port).ok()?;
    let mut candidates: Vec<Upstream> = snap
        .services
        .get(&ServiceKey::new(&h.namespace, &h.hostname))
        .map(|wp| {
            wp.endpoints
                .iter()
                .map(|e| Upstream::Hbone {
                    addr: SocketAddr::new(e.ip, port),
                    target: dst,
                    identity: e.workload.identity.clone(),
                    workload: e.workload.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    candidates.shuffle(rng);
    if candidates.is_empty() {
        tracing::warn!(%dst, waypoint = %h.hostname, "the waypoint has no ready pod; not bypassing it");
    }
    Some(OutboundPlan {
        candidates,
        service,
    })
}

/// Every endpoint of `svc` serving `port` (of `members` only, when a subset is named), in
/// random order.
fn to_service(
    svc: &ServiceInfo,
    port: u16,
    members: Option<&std::collections::HashSet<String>>,
    rng: &mut impl Rng,
) -> OutboundPlan {
    let mut candidates: Vec<Upstream> = svc
        .endpoints_for(port, members)
        .map(|(addr, e)| Upstream::to(&e.workload, addr))
        .collect();
    candidates.shuffle(rng);
    OutboundPlan {
        candidates,
        service: Some(svc.key.clone()),
    }
}

/// A TCP connection to a service with L7 config: the first `tcp` route for the port picks a
/// destination by weight; without one, the service itself.
pub fn tcp_plan(
    snap: &Snapshot,
    svc: &ServiceInfo,
    dst: SocketAddr,
    rng: &mut impl Rng,
) -> OutboundPlan {
    let route = svc.l7.as_ref().and_then(|l7| {
        l7.tcp
            .iter()
            .find(|r| r.ports.is_empty() || r.ports.contains(&dst.port()))
    });
    let Some(route) = route else {
        return plan_outbound(snap, dst, false, rng);
    };
    // A route that matched but has no destination left (a Gateway API route whose backends
    // are all missing or not granted) refuses the connection: never the original address.
    let Some(t) = crate::l7::route::pick_weighted(&route.targets, |n| rng.random_range(0..n))
    else {
        return OutboundPlan {
            candidates: Vec::new(),
            service: Some(svc.key.clone()),
        };
    };
    to_target(snap, &t.target, dst.port(), rng).unwrap_or_else(|| OutboundPlan {
        candidates: Vec::new(),
        service: Some(svc.key.clone()),
    })
}

/// The endpoints of a route's destination (its subset's, when it names one) on its port, or
/// `port` when it gives none; `None` when no Service has its host.
pub fn to_target(
    snap: &Snapshot,
    t: &crate::l7::config::Target,
    port: u16,
    rng: &mut impl Rng,
) -> Option<OutboundPlan> {
    let target = snap.service_by_host(&t.host)?;
    let members = t.subset.as_ref().map(|s| {
        target
            .l7
            .as_ref()
            .and_then(|l7| l7.subsets.get(s))
            .map(|s| s.members.clone())
            .unwrap_or_default()
    });
    Some(to_service(
        target,
        t.port.unwrap_or(port),
        members.as_ref(),
        rng,
    ))
}

/// An inbound connection as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub peer: SocketAddr,
    /// The peer's verified SPIFFE identity (HBONE); None for plaintext.
    pub peer_identity: Option<&'a str>,
    /// Where it is going: the CONNECT authority (HBONE) or the original destination.
    pub target: &'a str,
}

/// An inbound connection allowed in.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub target: SocketAddr,
    pub peer: SocketAddr,
    pub peer_identity: Option<String>,
    /// The caller as a workload of the mesh, when its address is one.
    pub source: Option<Arc<WorkloadInfo>>,
    pub mtls: bool,
    /// The destination's Service when the target port is declared HTTP: decided here, with
    /// the policy check, so the request path and the authorization never disagree.
    pub http_service: Option<ServiceKey>,
    /// The trace id of the HBONE CONNECT (the client node proxy's connection id), for logs.
    pub trace_id: Option<String>,
}

impl Admitted {
    /// A client from outside the mesh (at an ingress gateway): an address, no identity.
    pub fn external(target: SocketAddr, peer: SocketAddr) -> Admitted {
        Admitted {
            target,
            peer,
            peer_identity: None,
            source: None,
            mtls: false,
            http_service: None,
            trace_id: None,
        }
    }
}

/// Why an inbound connection is refused, with the HBONE status that says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

/// `spiffe://td/ns/NS/sa/SA` -> (`td/ns/NS/sa/SA`, `NS`): AuthorizationPolicy's principal
/// form and the namespace. Anything else yields no namespace, so namespace rules fail closed.
pub fn principal(identity: &str) -> (Option<String>, Option<String>) {
    let Some(p) = identity.strip_prefix("spiffe://") else {
        return (None, None);
    };
    let parts: Vec<&str> = p.split('/').collect();
    let ns = match parts.as_slice() {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
            Some(ns.to_string())
        }
        _ => None,
    };
    (Some(p.to_string()), ns)
}

/// Decide an inbound connection to the pod `dst` (its current config).
pub fn plan_inbound(
    snap: &Snapshot,
    dst: &WorkloadInfo,
    a: &Arrival<'_>,
) -> Result<Admitted, Refused> {
    let refuse = |status: u16, reason: String| Refused { status, reason };
    let target: SocketAddr = a
        .target
        .parse()
        .map_err(|_| refuse(400, format!("authority {:?} is not ip:port", a.target)))?;
    if Some(target.ip()) != dst.ip {
        return Err(refuse(400, format!("authority {target} is not this pod")));
    }
    if CAPTURE_PORTS.contains(&target.port()) {
        return Err(refuse(
            400,
            format!("{target} is the proxy's own capture port; it is never forwarded"),
        ));
    }
    let (src_principal, src_namespace) = a.peer_identity.map(principal).unwrap_or_default();
    // A sidecar's AuthorizationPolicies on a port that is not HTTP: decided per connection,
    // with TCP semantics (requests on HTTP ports are decided one by one in `l7::authorize`).
    let http_service = dst.http_service(target.port());
    if !snap.security.authz.is_empty() && http_service.is_none() {
        let facts = Facts {
            source_ip: a.peer.ip(),
            remote_ip: a.peer.ip(),
            principal: src_principal.as_deref(),
            namespace: src_namespace.as_deref(),
            dest_ip: target.ip(),
            dest_port: target.port(),
            sni: crate::security::authz::Sni::Unknowable,
            http: None,
        };
        let v = evaluate(
            snap.security.authz.iter().filter(|p| p.covers(None)),
            &facts,
        );
        if let Some((policy, _)) = v.custom {
            return Err(refuse(
                401,
                format!(
                    "CUSTOM policy {policy} matches a TCP connection, which ext_authz over HTTP cannot check"
                ),
            ));
        }
        if let AuthzDecision::Deny { .. } = v.decision {
            return Err(refuse(401, v.decision.detail()));
        }
    }
    let conn = Conn {
        src_ip: a.peer.ip(),
        src_principal,
        src_namespace,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let policies = authz::applicable(snap.policies.iter(), dst);
    if let Decision::Deny(why) = authz::authorize(&policies, &conn) {
        return Err(refuse(401, why));
    }
    Ok(Admitted {
        target,
        peer: a.peer,
        peer_identity: a.peer_identity.map(str::to_string),
        source: snap.by_ip.get(&a.peer.ip()).cloned(),
        mtls: a.peer_identity.is_some(),
        http_service,
        trace_id: None,
    })
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
