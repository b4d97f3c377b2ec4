//! What every proxy role shares, at the bottom of the crate: the snapshot and its xDS client,
//! certificates and the mesh root, the HBONE pool, TCP metrics, the pods being served (each
//! with its network handle), and the enrolment loop that opens a pod's listeners, then its
//! capture, as the config says, and undoes both when the pod leaves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::certs::CertManager;
use crate::control::ControlPlane;
use crate::hbone::Pool;
use crate::metrics::Metrics;
use crate::net::{Network, PodNet};
use crate::role::Role;
use crate::snapshot::{Snapshot, WorkloadInfo};

pub struct ProxyOptions {
    /// The node's name (node role) or `namespace/pod` (sidecar).
    pub name: String,
    pub control: ControlPlane,
    pub trust_domain: String,
    pub cert_ttl: Option<Duration>,
    pub network: Network,
}

/// Shared by every connection a proxy serves.
pub struct Proxy {
    pub name: String,
    pub control: ControlPlane,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub certs: Arc<CertManager>,
    pub roots: Arc<RootCertStore>,
    pub trust_domain: String,
    pub pool: Pool,
    pub metrics: Metrics,
    /// Ticks after each config update (0 until the first).
    pub generation: watch::Receiver<u64>,
    generation_tx: watch::Sender<u64>,
    /// Enrolled pods: uid -> network name (for the config dump).
    pub enrolled: Mutex<BTreeMap<String, String>>,
    pub network: Network,
}

/// One pod a proxy serves.
pub struct Pod {
    pub workload: Arc<WorkloadInfo>,
    pub ip: IpAddr,
    pub identity: String,
    pub net: PodNet,
}

impl Pod {
    /// The pod as the latest config describes it (labels and policies change over time).
    pub fn current(&self, snap: &Snapshot) -> Arc<WorkloadInfo> {
        snap.workloads
            .get(&self.workload.uid)
            .cloned()
            .unwrap_or_else(|| self.workload.clone())
    }
}

/// The sockets a pod gets, bound before its traffic is captured.
pub struct Listeners {
    pub outbound: TcpListener,
    pub inbound: TcpListener,
    pub hbone: TcpListener,
    pub dns: UdpSocket,
}

impl Proxy {
    pub fn new(opts: ProxyOptions) -> Result<Arc<Proxy>, Error> {
        let (tx, rx) = watch::channel(0);
        Ok(Arc::new(Proxy {
            name: opts.name,
            certs: CertManager::new(opts.control.clone(), opts.cert_ttl),
            roots: crate::tls::roots(&opts.control.root_pem)?,
            control: opts.control,
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            trust_domain: opts.trust_domain,
            pool: Pool::default(),
            metrics: Metrics::default(),
            generation: rx,
            generation_tx: tx,
            enrolled: Mutex::new(BTreeMap::new()),
            network: opts.network,
        }))
    }

    /// Whether the first config has arrived.
    pub fn ready(&self) -> bool {
        *self.generation.borrow() > 0
    }
}

struct Enrolled {
    pod: Arc<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

/// Run a proxy role: xDS, then enrol and release pods as the config says, forever.
pub async fn run<R: Role>(role: Arc<R>) {
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
            match enrol(&role, w.clone()).await {
                Ok(e) => {
                    tracing::info!(%uid, net = %e.pod.net.name(), "pod enrolled");
                    enrolled.insert(uid.clone(), e);
                }
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "cannot enrol pod; will retry on the next config change")
                }
            }
        }
        *proxy.enrolled.lock().unwrap_or_else(|e| e.into_inner()) = enrolled
            .iter()
            .map(|(k, v)| (k.clone(), v.pod.net.name()))
            .collect();
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn enrol<R: Role>(role: &Arc<R>, w: Arc<WorkloadInfo>) -> Result<Enrolled, Error> {
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
    net.capture(&role.capture())?;
    let pod = Arc::new(Pod {
        identity: w.identity.clone(),
        workload: w,
        ip,
        net,
    });
    let tasks = role.clone().start(pod.clone(), listeners);
    Ok(Enrolled { pod, tasks })
}

/// Accept connections on `l` forever, each served by its own task.
pub fn accept_loop<F, Fut>(l: TcpListener, serve: F) -> JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (s, peer) = crate::accept::next(&l).await;
            // Without this, a response written as several small writes (an h2 HEADERS frame,
            // then DATA, each its own TLS record) waits behind Nagle for the peer's delayed
            // ACK: 40 ms stalls at the tail. Every socket the proxy dials sets it too.
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, peer));
        }
    })
}
