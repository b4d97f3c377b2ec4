//! Endpoints per service, worked out once per snapshot: every healthy workload with an
//! address that lists the service, with its service-port -> target-port mapping.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use spar_xds::workload::WorkloadStatus;

use super::WorkloadInfo;

/// One member of a service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<WorkloadInfo>,
    pub ip: IpAddr,
    /// (service port, target port); a target port of 0 means "the service port".
    ports: Vec<(u16, u16)>,
}

impl Endpoint {
    /// (service port, target port) pairs; a target port of 0 means "the service port".
    pub fn ports(&self) -> &[(u16, u16)] {
        &self.ports
    }

    /// The port this endpoint serves `service_port` on, or None when it does not serve it.
    pub fn target_port(&self, service_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|(sp, _)| *sp == service_port)
            .map(|(sp, tp)| if *tp == 0 { *sp } else { *tp })
    }
}

/// `namespace/hostname` -> its endpoints, in workload-uid order.
pub fn by_service(
    workloads: &BTreeMap<String, Arc<WorkloadInfo>>,
) -> HashMap<String, Vec<Endpoint>> {
    let mut out: HashMap<String, Vec<Endpoint>> = HashMap::new();
    for w in workloads.values() {
        if w.status != WorkloadStatus::Healthy as i32 {
            continue;
        }
        let Some(ip) = w.ip else { continue };
        for (key, list) in &w.services {
            let ports = list
                .ports
                .iter()
                .filter_map(|p| {
                    Some((
                        u16::try_from(p.service_port).ok()?,
                        u16::try_from(p.target_port).ok()?,
                    ))
                })
                .collect();
            out.entry(key.clone()).or_default().push(Endpoint {
                workload: w.clone(),
                ip,
                ports,
            });
        }
    }
    out
}
