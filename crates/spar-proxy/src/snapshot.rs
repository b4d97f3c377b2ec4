//! The proxy's whole view of the mesh: one immutable `Snapshot`, built from xDS off the hot
//! path and swapped atomically; a connection loads it once when accepted. Everything a request
//! looks up is precomputed here: workloads with their identity and address, each service
//! under its typed key with its endpoints (healthy members and their port mappings) and its
//! compiled L7 config.

mod endpoints;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use spar_xds::security::Authorization;
use spar_xds::workload::{Service, TunnelProtocol, Workload};

pub use endpoints::Endpoint;

/// The port every mesh workload accepts HBONE on.
pub const HBONE_PORT: u16 = 15008;

/// A service's key, `namespace/hostname`, as the workload API names it. Built once per
/// service when the snapshot is built; cloning it is a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey(Arc<str>);

impl ServiceKey {
    pub fn new(namespace: &str, hostname: &str) -> ServiceKey {
        ServiceKey(format!("{namespace}/{hostname}").into())
    }

    /// From the workload API's `namespace/hostname` form (a name without `/` is a host in no
    /// namespace).
    pub fn parse(key: &str) -> ServiceKey {
        ServiceKey(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn hostname(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, h)| h)
    }

    /// The first label of the host name (`reviews` of `reviews.ns.svc.cluster.local`).
    pub fn short_name(&self) -> &str {
        let h = self.hostname();
        h.split('.').next().unwrap_or(h)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A workload as the proxy uses it: the xDS resource with its identity and first address
/// worked out once.
#[derive(Debug, PartialEq)]
pub struct WorkloadInfo {
    pub workload: Workload,
    /// `spiffe://td/ns/NS/sa/SA`.
    pub identity: String,
    pub ip: Option<IpAddr>,
    /// Reached over HBONE (ambient pods, sidecars) rather than plain TCP.
    pub hbone: bool,
}

impl WorkloadInfo {
    pub fn new(workload: Workload) -> WorkloadInfo {
        WorkloadInfo {
            identity: identity(&workload),
            ip: workload.addresses.first().and_then(|a| ip(a)),
            hbone: workload.tunnel_protocol == TunnelProtocol::Hbone as i32,
            workload,
        }
    }
}

impl WorkloadInfo {
    /// The service of this workload that `port` (a target port) belongs to, if the service
    /// declares that port HTTP, HTTP/2 or gRPC.
    pub fn http_service(&self, port: u16) -> Option<ServiceKey> {
        use spar_xds::workload::AppProtocol;
        self.services.iter().find_map(|(key, ports)| {
            ports.ports.iter().find_map(|p| {
                let target = if p.target_port == 0 {
                    p.service_port
                } else {
                    p.target_port
                };
                let proto = AppProtocol::try_from(p.app_protocol).ok()?;
                (target == u32::from(port) && proto != AppProtocol::Unknown)
                    .then(|| ServiceKey::parse(key))
            })
        })
    }
}

impl std::ops::Deref for WorkloadInfo {
    type Target = Workload;
    fn deref(&self) -> &Workload {
        &self.workload
    }
}

/// One service host: its workload-API resource (absent for an L7-only host), its endpoints
/// and its compiled L7 config (sidecars and waypoints).
#[derive(Debug)]
pub struct ServiceInfo {
    pub key: ServiceKey,
    pub service: Option<Arc<Service>>,
    pub endpoints: Vec<Endpoint>,
    pub l7: Option<Arc<crate::l7::config::Service>>,
}

impl ServiceInfo {
    /// Healthy endpoints serving `port`, with the address each is reached on; `members` limits
    /// them to a DestinationRule subset (an unknown subset selects nothing, as in Istio).
    pub fn endpoints_for<'a>(
        &'a self,
        port: u16,
        members: Option<&'a std::collections::HashSet<String>>,
    ) -> impl Iterator<Item = (SocketAddr, &'a Endpoint)> + 'a {
        self.endpoints.iter().filter_map(move |e| {
            if members.is_some_and(|m| !m.contains(&e.workload.uid)) {
                return None;
            }
            Some((SocketAddr::new(e.ip, e.target_port(port)?), e))
        })
    }
}

#[derive(Debug, Default)]
pub struct Snapshot {
    pub workloads: BTreeMap<String, Arc<WorkloadInfo>>,
    pub by_ip: HashMap<IpAddr, Arc<WorkloadInfo>>,
    pub services: BTreeMap<ServiceKey, Arc<ServiceInfo>>,
    pub by_vip: HashMap<IpAddr, Arc<ServiceInfo>>,
    /// Services by host name (how VirtualService destinations name them).
    pub by_host: HashMap<String, Arc<ServiceInfo>>,
    pub policies: BTreeMap<String, Authorization>,
    /// Sidecars: which access log lines to write (Istio's Telemetry API; none by default).
    pub telemetry: spar_xds::l7::Telemetry,
    /// Sidecars and waypoints: AuthorizationPolicy, RequestAuthentication, ext_authz.
    pub security: Arc<crate::security::Config>,
}

impl Snapshot {
    pub fn build(
        workloads: BTreeMap<String, Workload>,
        services: BTreeMap<String, Service>,
        policies: BTreeMap<String, Authorization>,
        l7: BTreeMap<String, Arc<crate::l7::config::Service>>,
        telemetry: spar_xds::l7::Telemetry,
        security: crate::security::Config,
    ) -> Snapshot {
        let workloads: BTreeMap<String, Arc<WorkloadInfo>> = workloads
            .into_iter()
            .map(|(k, w)| (k, Arc::new(WorkloadInfo::new(w))))
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
        let mut members = endpoints::by_service(&workloads);
        let mut keys: BTreeMap<ServiceKey, (Option<Service>, Option<_>)> = BTreeMap::new();
        for (k, s) in services {
            keys.entry(ServiceKey::parse(&k)).or_default().0 = Some(s);
        }
        for (k, s) in l7 {
            keys.entry(ServiceKey::parse(&k)).or_default().1 = Some(s);
        }
        let services: BTreeMap<ServiceKey, Arc<ServiceInfo>> = keys
            .into_iter()
            .map(|(key, (service, l7))| {
                let info = ServiceInfo {
                    endpoints: members.remove(key.as_str()).unwrap_or_default(),
                    service: service.map(Arc::new),
                    l7,
                    key: key.clone(),
                };
                (key, Arc::new(info))
            })
            .collect();
        let by_vip = services
            .values()
            .flat_map(|s| {
                s.service
                    .iter()
                    .flat_map(|svc| svc.addresses.iter())
                    .filter_map(|a| ip(&a.address))
                    .map(move |ip| (ip, s.clone()))
            })
            .collect();
        let by_host = services
            .values()
            .map(|s| (s.key.hostname().to_string(), s.clone()))
            .collect();
        Snapshot {
            workloads,
            by_ip,
            services,
            by_vip,
            by_host,
            policies,
            telemetry,
            security: Arc::new(security),
        }
    }

    /// The service a host name names (`reviews.ns.svc.cluster.local`).
    pub fn service_by_host(&self, host: &str) -> Option<&Arc<ServiceInfo>> {
        self.by_host.get(host)
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

#[cfg(test)]
pub mod testing;
