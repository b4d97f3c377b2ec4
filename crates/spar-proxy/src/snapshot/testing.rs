//! Builders of small snapshots for the planners' table tests.

use std::collections::BTreeMap;
use std::sync::Arc;

use spar_xds::workload::{NetworkAddress, Port, PortList, Service, Workload, WorkloadStatus};

use super::Snapshot;

/// A workload `name` in namespace `ns` at `ip`, serving `services` (key, service port,
/// target port).
pub fn workload(
    ns: &str,
    name: &str,
    ip: [u8; 4],
    hbone: bool,
    services: &[(&str, u32, u32)],
) -> Workload {
    let mut by: BTreeMap<String, PortList> = BTreeMap::new();
    for (k, sp, tp) in services {
        by.entry(k.to_string()).or_default().ports.push(Port {
            service_port: *sp,
            target_port: *tp,
            app_protocol: 0,
        });
    }
    Workload {
        uid: format!("{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        workload_name: name.into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: if hbone { 1 } else { 0 },
        service_account: "sa".into(),
        services: by.into_iter().collect(),
        status: WorkloadStatus::Healthy as i32,
        ..Default::default()
    }
}

/// A Service `name.ns.svc.cluster.local` at `vip`.
pub fn service(ns: &str, name: &str, vip: [u8; 4]) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ..Default::default()
    }
}

pub fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}.{ns}.svc.cluster.local")
}

/// A snapshot of these workloads, services and compiled L7 configs.
pub fn snapshot(
    workloads: Vec<Workload>,
    services: Vec<Service>,
    l7: Vec<crate::l7::config::Service>,
) -> Snapshot {
    Snapshot::build(
        workloads.into_iter().map(|w| (w.uid.clone(), w)).collect(),
        services
            .into_iter()
            .map(|s| (format!("{}/{}", s.namespace, s.hostname), s))
            .collect(),
        BTreeMap::new(),
        l7.into_iter()
            .map(|s| (format!("{}/{}", s.namespace, s.hostname), Arc::new(s)))
            .collect(),
        Default::default(),
        Default::default(),
    )
}
