//! What every proxy role shares, at the bottom of the crate: the snapshot (fed by the xDS
//! client), certificates and the mesh root, the HBONE pool, TCP metrics, and the pods being
//! served, each with its network handle.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::certs::CertManager;
use crate::control::ControlPlane;
use crate::hbone::Pool;
use crate::limits::{Admission, LimitMetrics, Limits};
use crate::metrics::Metrics;
use crate::net::{Network, PodNet};
use crate::snapshot::{Snapshot, WorkloadInfo};

pub struct ProxyOptions {
    /// The node's name (node role) or `namespace/pod` (sidecar).
    pub name: String,
    pub control: ControlPlane,
    pub trust_domain: String,
    pub cert_ttl: Option<Duration>,
    pub network: Network,
    pub limits: Limits,
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
    pub(crate) generation_tx: watch::Sender<u64>,
    /// Enrolled pods: uid -> network name (for the config dump).
    pub enrolled: Mutex<BTreeMap<String, String>>,
    /// The listeners open in each enrolled pod: uid -> (port, what it serves).
    pub listeners: Mutex<BTreeMap<String, Vec<(String, &'static str)>>>,
    pub network: Network,
    /// Open inbound L4 connections, re-decided on every config change.
    pub tracker: Arc<Tracker>,
    pub limits: Limits,
    pub limit_metrics: LimitMetrics,
}

type Recheck = Box<dyn Fn(&Snapshot) -> Option<String> + Send + Sync>;

/// Open inbound connections and how to decide each again. A policy change that now denies
/// one closes it (as ztunnel does), so no connection outlives the policy that admitted it.
#[derive(Default)]
pub struct Tracker {
    conns: Mutex<HashMap<u64, (Recheck, Arc<Notify>)>>,
    next: AtomicU64,
}

/// Keeps a connection tracked while it lives.
pub struct Tracked {
    tracker: Arc<Tracker>,
    id: u64,
    /// Notified when the connection must close; the reason is logged by the rechecker.
    pub stop: Arc<Notify>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.lock().remove(&self.id);
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Recheck, Arc<Notify>)>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Track a connection; `recheck` returns why it is no longer allowed, if it is not.
    pub fn track(self: &Arc<Self>, recheck: Recheck) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        self.lock().insert(id, (recheck, stop.clone()));
        Tracked {
            tracker: self.clone(),
            id,
            stop,
        }
    }

    /// Decide every open connection again; close those now denied. Returns how many.
    pub fn recheck(&self, snap: &Snapshot) -> usize {
        let mut closed = 0;
        for (recheck, stop) in self.lock().values() {
            if let Some(why) = recheck(snap) {
                tracing::info!(target: "access", "closing an open connection: policy changed: {why}");
                stop.notify_one();
                closed += 1;
            }
        }
        closed
    }

    pub fn open(&self) -> usize {
        self.lock().len()
    }
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
            pool: Pool::new(opts.limits.handshake),
            metrics: Metrics::default(),
            generation: rx,
            generation_tx: tx,
            enrolled: Mutex::new(BTreeMap::new()),
            listeners: Mutex::new(BTreeMap::new()),
            network: opts.network,
            tracker: Arc::new(Tracker::default()),
            limits: opts.limits,
            limit_metrics: LimitMetrics::default(),
        }))
    }

    /// A new listener's admission (its own connection caps, the proxy's counters).
    pub fn admission(&self) -> Arc<Admission> {
        Admission::new(self.limits.clone(), self.limit_metrics.clone())
    }

    /// Whether the first config has arrived.
    pub fn ready(&self) -> bool {
        *self.generation.borrow() > 0
    }
}

/// Accept connections on `l` forever, each served by its own task while `admission` has
/// room for it (else it is closed at once).
pub fn accept_loop<F, Fut>(l: TcpListener, admission: Arc<Admission>, serve: F) -> JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (s, peer) = crate::accept::next(&l).await;
            let Ok(place) = admission.admit(peer.ip()) else {
                drop(s);
                continue;
            };
            // Without this, a response written as several small writes (an h2 HEADERS frame,
            // then DATA, each its own TLS record) waits behind Nagle for the peer's delayed
            // ACK: 40 ms stalls at the tail. Every socket the proxy dials sets it too.
            let _ = s.set_nodelay(true);
            let conn = serve(s, peer);
            tokio::spawn(async move {
                conn.await;
                drop(place);
            });
        }
    })
}
