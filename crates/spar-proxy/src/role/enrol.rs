//! Enrolment: open a pod's listeners, then its capture, as the config says, hand them to the
//! role, and undo both when the pod leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Role;
use crate::Error;
use crate::admin::Admin;
use crate::proxy::{Listeners, Pod};
use crate::snapshot::WorkloadInfo;

struct Enrolled {
    pod: Arc<Pod>,
    tasks: Vec<JoinHandle<()>>,
    /// Listeners in the pod: (port, what it serves), for the config dump.
    listeners: Vec<(String, &'static str)>,
}

/// Run a proxy role: xDS, then enrol and release pods as the config says, forever. With
/// `admin`, a role that has `pod_ports` serves Istio's ports in each pod it enrols.
pub async fn run<R: Role>(role: Arc<R>, admin: Option<Arc<Admin>>) {
    let proxy = role.proxy().clone();
    tokio::spawn(crate::xds_client::run(
        proxy.control.clone(),
        role.node_id(),
        role.wants_l7(),
        proxy.snapshot.clone(),
        proxy.generation_tx.clone(),
    ));
    let mut enrolled: BTreeMap<String, Enrolled> = BTreeMap::new();
    let mut changes = proxy.generation.clone();
    loop {
        let snap = proxy.snapshot.load_full();
        let desired: BTreeMap<&String, &Arc<WorkloadInfo>> = snap
            .workloads
            .iter()
            .filter(|(_, w)| w.ip.is_some() && role.serves(w))
            .collect();
        enrolled.retain(|uid, e| {
            if desired.contains_key(uid) {
                return true;
            }
            if let Err(err) = e.pod.net.release() {
                tracing::warn!(%uid, error = %err, "removing capture failed");
            }
            for t in &e.tasks {
                t.abort();
            }
            tracing::info!(%uid, "pod left the mesh");
            false
        });
        for (uid, w) in desired {
            if enrolled.contains_key(uid) {
                continue;
            }
            match enrol(&role, w.clone(), admin.as_ref()).await {
                Ok(e) => {
                    tracing::info!(%uid, net = %e.pod.net.name(), "pod enrolled");
                    enrolled.insert(uid.clone(), e);
                }
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "cannot enrol pod; will retry on the next config change")
                }
            }
        }
        proxy.tracker.recheck(&snap);
        *proxy.enrolled.lock().unwrap_or_else(|e| e.into_inner()) = enrolled
            .iter()
            .map(|(k, v)| (k.clone(), v.pod.net.name()))
            .collect();
        *proxy.listeners.lock().unwrap_or_else(|e| e.into_inner()) = enrolled
            .iter()
            .map(|(k, v)| (k.clone(), v.listeners.clone()))
            .collect();
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn enrol<R: Role>(
    role: &Arc<R>,
    w: Arc<WorkloadInfo>,
    admin: Option<&Arc<Admin>>,
) -> Result<Enrolled, Error> {
    let ip =
        w.ip.ok_or_else(|| Error::Denied("workload has no address".into()))?;
    let proxy = role.proxy();
    let net = proxy.network.open(&w.namespace, &w.name, ip)?;
    // Listeners first, capture second: no connection is redirected to a port nobody holds.
    let listeners = Listeners {
        outbound: net.listen(15001, false).await?,
        inbound: net.listen(15006, true).await?,
        hbone: net.listen(crate::snapshot::HBONE_PORT, false).await?,
        dns: net.bind_udp(15053).await?,
    };
    proxy.certs.slot(&w.identity);
    if role.captures() {
        net.capture(&role.capture())?;
    }
    let pod = Arc::new(Pod {
        identity: w.identity.clone(),
        workload: w,
        ip,
        net,
    });
    let mut tasks = role.clone().start(pod.clone(), listeners);
    let mut open = vec![
        ("0.0.0.0:15001/tcp".to_string(), "outbound (captured)"),
        (
            "0.0.0.0:15006/tcp".to_string(),
            "inbound plaintext (captured)",
        ),
        ("0.0.0.0:15008/tcp".to_string(), "inbound HBONE (mTLS)"),
        ("0.0.0.0:15053/udp".to_string(), "DNS proxy"),
    ];
    if let (Some(admin), true) = (admin, role.pod_ports()) {
        let (served, ports) = crate::admin::open_pod_ports(admin, &pod).await;
        tasks.extend(served);
        open.extend(ports);
    }
    Ok(Enrolled {
        pod,
        tasks,
        listeners: open,
    })
}
