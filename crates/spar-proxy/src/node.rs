//! The node role (ambient): one process per node. For each enrolled pod on this node it opens
//! 15001 (outbound), 15006 (inbound plaintext) and 15008 (HBONE) inside the pod's network
//! namespace, then installs the capture rules. The path of a connection, top to bottom:
//!
//! outbound: 15001 -> original dst -> plan_outbound -> HBONE tunnel | plain TCP -> copy
//! inbound:  15008 -> mTLS -> CONNECT -> authorize -> connect app as the client -> copy
//!           15006 -> original dst -> authorize (no identity) -> connect app -> copy
//! dns:      15053 -> mesh names from config | the node's resolvers

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom;
use rustls::RootCertStore;
use spar_xds::workload::{TunnelProtocol, Workload};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::authz::{Conn, Decision, applicable, authorize};
use crate::certs::CertManager;
use crate::control::ControlPlane;
use crate::hbone::{self, Connect, Pool};
use crate::inpod::{self, INBOUND_MARK, OUTBOUND_MARK, PodNet};
use crate::metrics::{Metrics, TcpLabels};
use crate::state::{self, State, Upstream, plan_outbound};

/// Which proxy this process is.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Ambient: every mesh pod on the node.
    Node,
    /// Sidecar: exactly one pod, with the L7 engine on its outbound traffic.
    Sidecar {
        namespace: String,
        name: String,
        exclude_inbound: Vec<u16>,
        exclude_outbound: Vec<u16>,
        log_format: crate::l7::telemetry::LogFormat,
    },
}

pub struct NodeOptions {
    pub role: Role,
    pub node: String,
    pub control: ControlPlane,
    pub trust_domain: String,
    pub cert_ttl: Option<Duration>,
    /// Network namespace name of a pod: `{namespace}` and `{name}` are replaced.
    pub netns_template: String,
}

/// Shared by every connection handler.
pub struct Node {
    pub name: String,
    pub role: Role,
    pub state: Arc<ArcSwap<State>>,
    pub certs: Arc<CertManager>,
    pub(crate) roots: Arc<RootCertStore>,
    trust_domain: String,
    pub(crate) pool: Pool,
    /// Sidecars only.
    pub engine: Option<Arc<crate::l7::Engine>>,
    pub metrics: Metrics,
    pub generation: watch::Receiver<u64>,
    pub enrolled: std::sync::Mutex<BTreeMap<String, String>>,
}

/// One enrolled pod.
pub struct Pod {
    pub workload: Arc<Workload>,
    pub ip: IpAddr,
    pub identity: String,
    pub net: PodNet,
}

struct Enrolled {
    netns: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    pub fn new(opts: &NodeOptions) -> Result<(Arc<Node>, watch::Sender<u64>), Error> {
        let (tx, rx) = watch::channel(0);
        let engine = match &opts.role {
            Role::Sidecar { log_format, .. } => Some(Arc::new(crate::l7::Engine::new(*log_format))),
            Role::Node => None,
        };
        let node = Node {
            name: opts.node.clone(),
            role: opts.role.clone(),
            engine,
            state: Arc::new(ArcSwap::from_pointee(State::default())),
            certs: CertManager::new(opts.control.clone(), opts.cert_ttl),
            roots: crate::tls::roots(&opts.control.root_pem)?,
            trust_domain: opts.trust_domain.clone(),
            pool: Pool::default(),
            metrics: Metrics::default(),
            generation: rx,
            enrolled: std::sync::Mutex::new(BTreeMap::new()),
        };
        Ok((Arc::new(node), tx))
    }
}

/// Run the node proxy: xDS, then enrol and leave pods as the config says, forever.
pub async fn run(opts: NodeOptions, node: Arc<Node>, generation_tx: watch::Sender<u64>) {
    let node_id = match &opts.role {
        Role::Node => format!("spar-node~{}~{}", opts.node, opts.node),
        Role::Sidecar {
            namespace, name, ..
        } => format!("sidecar~~{name}.{namespace}~{namespace}.svc"),
    };
    tokio::spawn(crate::xds_client::run(
        opts.control.clone(),
        node_id,
        node.engine.is_some(),
        node.state.clone(),
        generation_tx,
    ));
    let mut enrolled: BTreeMap<String, Enrolled> = BTreeMap::new();
    let mut changes = node.generation.clone();
    loop {
        let state = node.state.load_full();
        let desired: BTreeMap<String, Arc<Workload>> = state
            .workloads
            .values()
            .filter(|w| match &node.role {
                Role::Node => {
                    w.node == node.name
                        && w.tunnel_protocol == TunnelProtocol::Hbone as i32
                        && !w.native_tunnel
                        && !w.addresses.is_empty()
                }
                Role::Sidecar {
                    namespace, name, ..
                } => w.namespace == *namespace && w.name == *name && !w.addresses.is_empty(),
            })
            .map(|w| (w.uid.clone(), w.clone()))
            .collect();
        let gone: Vec<String> = enrolled
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(e) = enrolled.remove(&uid) {
                if let Err(err) = inpod::unenroll(&e.netns) {
                    tracing::warn!(%uid, error = %err, "removing capture failed");
                }
                for t in e.tasks {
                    t.abort();
                }
                tracing::info!(%uid, "pod left the mesh");
            }
        }
        for (uid, w) in desired {
            if enrolled.contains_key(&uid) {
                continue;
            }
            let netns = opts
                .netns_template
                .replace("{namespace}", &w.namespace)
                .replace("{name}", &w.name);
            match enroll(&node, w, &netns).await {
                Ok(tasks) => {
                    tracing::info!(%uid, %netns, "pod enrolled");
                    enrolled.insert(uid, Enrolled { netns, tasks });
                }
                Err(e) => {
                    tracing::warn!(%uid, %netns, error = %e, "cannot enrol pod; will retry on the next config change")
                }
            }
        }
        *node.enrolled.lock().unwrap_or_else(|e| e.into_inner()) = enrolled
            .iter()
            .map(|(k, v)| (k.clone(), v.netns.clone()))
            .collect();
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn enroll(
    node: &Arc<Node>,
    w: Arc<Workload>,
    netns: &str,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let ip = w
        .addresses
        .first()
        .and_then(|a| state::ip(a))
        .ok_or_else(|| Error::Denied("workload has no address".into()))?;
    let net = PodNet::open(netns)?;
    // Listeners first, capture second: no connection is redirected to a port nobody holds.
    let outbound = net.listen(15001, false).await?;
    let inbound = net.listen(15006, true).await?;
    let hbone = net.listen(15008, false).await?;
    let dns = net.bind_udp(15053).await?;
    let identity = state::identity(&w);
    node.certs.slot(&identity);
    match &node.role {
        Role::Node => inpod::enroll(netns, &inpod::ambient_rules(&[], &[]))?,
        Role::Sidecar {
            exclude_inbound,
            exclude_outbound,
            ..
        } => inpod::enroll(
            netns,
            &inpod::ambient_rules(exclude_inbound, exclude_outbound),
        )?,
    }
    let pod = Arc::new(Pod {
        workload: w,
        ip,
        identity,
        net,
    });
    let upstreams = Arc::new(crate::dns::upstreams());
    Ok(vec![
        tokio::spawn(crate::dns::serve(dns, node.state.clone(), upstreams)),
        spawn_accept(outbound, node.clone(), pod.clone(), Kind::Outbound),
        spawn_accept(inbound, node.clone(), pod.clone(), Kind::Plaintext),
        spawn_accept(hbone, node.clone(), pod, Kind::Hbone),
    ])
}

#[derive(Clone, Copy)]
enum Kind {
    Outbound,
    Plaintext,
    Hbone,
}

fn spawn_accept(
    l: tokio::net::TcpListener,
    node: Arc<Node>,
    pod: Arc<Pod>,
    kind: Kind,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (s, peer) = crate::accept::next(&l).await;
            // Without this, a response written as several small writes (an h2 HEADERS frame,
            // then DATA, each its own TLS record) waits behind Nagle for the peer's delayed
            // ACK: 40 ms stalls at the tail. Every socket the proxy dials sets it too.
            let _ = s.set_nodelay(true);
            let (node, pod) = (node.clone(), pod.clone());
            tokio::spawn(async move {
                match kind {
                    Kind::Outbound if node.engine.is_some() => {
                        crate::sidecar::outbound(node, pod, s, peer).await
                    }
                    Kind::Outbound => outbound(node, pod, s, peer).await,
                    Kind::Plaintext => plaintext_inbound(node, pod, s, peer).await,
                    Kind::Hbone => hbone_inbound(node, pod, s, peer).await,
                }
            });
        }
    })
}

fn labels(
    reporter: &str,
    src: Option<&Workload>,
    dst: Option<&Workload>,
    service: &str,
    mtls: bool,
) -> TcpLabels {
    let f = |w: Option<&Workload>, g: fn(&Workload) -> String| {
        w.map(g).unwrap_or_else(|| "unknown".into())
    };
    TcpLabels {
        reporter: reporter.into(),
        source_workload: f(src, |w| w.workload_name.clone()),
        source_workload_namespace: f(src, |w| w.namespace.clone()),
        source_principal: f(src, state::identity),
        source_app: f(src, |w| w.canonical_name.clone()),
        source_version: f(src, |w| w.canonical_revision.clone()),
        destination_workload: f(dst, |w| w.workload_name.clone()),
        destination_workload_namespace: f(dst, |w| w.namespace.clone()),
        destination_principal: f(dst, state::identity),
        destination_app: f(dst, |w| w.canonical_name.clone()),
        destination_version: f(dst, |w| w.canonical_revision.clone()),
        destination_service: if service.is_empty() {
            "unknown".into()
        } else {
            service.rsplit('/').next().unwrap_or(service).into()
        },
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
    }
}

/// Bytes moved per read and write when relaying a connection.
const COPY_BUF: usize = 64 * 1024;

/// Copy both ways, then account bytes and log the connection.
async fn proxy<A, B>(node: &Node, mut a: A, mut b: B, l: TcpLabels, log: String)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    node.metrics.opened.get_or_create(&l).inc();
    let (sent, received) =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF)
            .await
            .unwrap_or((0, 0));
    node.metrics.sent.get_or_create(&l).inc_by(sent);
    node.metrics.received.get_or_create(&l).inc_by(received);
    node.metrics.closed.get_or_create(&l).inc();
    tracing::info!(target: "access", "{log} sent={sent} received={received} duration_ms={}", started.elapsed().as_millis());
}

/// Refuse a plaintext connection with a reset.
pub(crate) fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

pub(crate) async fn outbound(node: Arc<Node>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let Ok(dst) = inpod::original_dst(&s) else {
        return reset(s);
    };
    outbound_to(node, pod, s, peer, dst).await
}

/// The L4 outbound path for a connection whose original destination is known.
pub(crate) async fn outbound_to(
    node: Arc<Node>,
    pod: Arc<Pod>,
    s: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    let state = node.state.load_full();
    let plan = plan_outbound(&state, dst, |v| v.shuffle(&mut rand::rng()));
    forward(node, pod, s, peer, dst, plan).await
}

/// Connect to the first candidate that answers (HBONE or plain) and copy both ways.
pub(crate) async fn forward(
    node: Arc<Node>,
    pod: Arc<Pod>,
    s: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    plan: state::OutboundPlan,
) {
    let service = plan.service.clone().unwrap_or_default();
    let mut last_err = String::from("no endpoint");
    for up in plan.candidates {
        match up {
            Upstream::Hbone {
                addr,
                target,
                identity,
                workload,
            } => {
                let c = Connect {
                    net: &pod.net,
                    src_identity: &pod.identity,
                    dst_identity: &identity,
                    addr,
                    target,
                    src_addr: peer,
                };
                match node.pool.connect(&node.certs, &node.roots, c).await {
                    Ok((io, _guard)) => {
                        let l = labels(
                            "source",
                            Some(&pod.workload),
                            Some(&workload),
                            &service,
                            true,
                        );
                        let log = format!(
                            "outbound src={peer} dst={dst} upstream={target} via=hbone:{addr} src_id={} dst_id={identity}",
                            pod.identity
                        );
                        return proxy(&node, s, io, l, log).await;
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
            Upstream::Direct { addr, workload } => {
                match pod.net.connect(addr, OUTBOUND_MARK, None).await {
                    Ok(up) => {
                        let l = labels(
                            "source",
                            Some(&pod.workload),
                            workload.as_deref(),
                            &service,
                            false,
                        );
                        let log = format!(
                            "outbound src={peer} dst={dst} upstream={addr} via=plaintext src_id={}",
                            pod.identity
                        );
                        return proxy(&node, s, up, l, log).await;
                    }
                    Err(e) => last_err = format!("{addr}: {e}"),
                }
            }
        }
    }
    tracing::info!(target: "access", "outbound src={peer} dst={dst} error=\"{last_err}\"");
    reset(s);
}

/// Policies for the pod as the latest config describes it (its policy list changes over time).
fn policies_for<'a>(state: &'a State, pod: &'a Pod) -> Vec<&'a spar_xds::security::Authorization> {
    let current = state
        .workloads
        .get(&pod.workload.uid)
        .map(|w| w.as_ref())
        .unwrap_or(&pod.workload);
    applicable(state.policies.iter(), current)
}

async fn plaintext_inbound(node: Arc<Node>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let Ok(dst) = inpod::original_dst(&s) else {
        return reset(s);
    };
    let state = node.state.load_full();
    let conn = Conn {
        src_ip: peer.ip(),
        src_principal: None,
        src_namespace: None,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    };
    if let Decision::Deny(why) = authorize(&policies_for(&state, &pod), &conn) {
        tracing::info!(target: "access", "inbound src={peer} dst={dst} via=plaintext denied=\"{why}\"");
        return reset(s);
    }
    if node.engine.is_some() {
        let current = state.workloads.get(&pod.workload.uid).cloned();
        let w = current.as_deref().unwrap_or(&pod.workload);
        if let Some((service, _)) = crate::l7::inbound::declared_http(w, dst.port()) {
            let ib = Arc::new(crate::l7::inbound::Inbound::new(
                node.clone(),
                pod.clone(),
                peer,
                None,
                dst,
                service,
                false,
            ));
            return crate::l7::inbound::serve(ib, TokioIo::new(s)).await;
        }
    }
    match connect_app(&pod, dst, peer.ip()).await {
        Ok(app) => {
            let src = state.by_ip.get(&peer.ip()).cloned();
            let l = labels(
                "destination",
                src.as_deref(),
                Some(&pod.workload),
                "",
                false,
            );
            proxy(
                &node,
                s,
                app,
                l,
                format!("inbound src={peer} dst={dst} via=plaintext"),
            )
            .await;
        }
        Err(e) => {
            tracing::info!(target: "access", "inbound src={peer} dst={dst} via=plaintext error=\"{e}\"");
            reset(s);
        }
    }
}

/// Connect to the application as the client (its real source address), falling back to the
/// pod's own address if transparent sockets are not available.
pub(crate) async fn connect_app(
    pod: &Pod,
    dst: SocketAddr,
    src: IpAddr,
) -> std::io::Result<TcpStream> {
    match pod.net.connect(dst, INBOUND_MARK, Some(src)).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "transparent connect failed; the application will see the proxy's address");
            pod.net.connect(dst, OUTBOUND_MARK, None).await
        }
    }
}

async fn hbone_inbound(node: Arc<Node>, pod: Arc<Pod>, s: TcpStream, peer: SocketAddr) {
    let cfg = match crate::tls::server_config(
        node.certs.slot(&pod.identity),
        node.roots.clone(),
        &node.trust_domain,
    ) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "HBONE TLS config"),
    };
    let tls = match tokio_rustls::TlsAcceptor::from(cfg)
        .accept(crate::hbone::buffered(s))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return tracing::info!(target: "access", "inbound src={peer} via=hbone rejected=\"mTLS: {e}\"");
        }
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
        return tracing::info!(target: "access", "inbound src={peer} via=hbone rejected=\"ALPN h2 required\"");
    }
    let peer_id = crate::tls::peer_identity(tls.get_ref().1.peer_certificates());
    let mut tls = tls;
    tls.get_mut()
        .1
        .set_buffer_limit(Some(crate::hbone::TLS_SEND_LIMIT));
    let mut conn = match crate::hbone::server_builder().handshake(tls).await {
        Ok(c) => c,
        Err(e) => return tracing::debug!(error = %e, "HBONE HTTP/2 handshake failed"),
    };
    // Accepting also drives the connection, so this loop runs until the peer goes away.
    while let Some(next) = conn.accept().await {
        let (req, respond) = match next {
            Ok(r) => r,
            Err(e) => return tracing::debug!(error = %e, "HBONE connection closed"),
        };
        let (node, pod, peer_id) = (node.clone(), pod.clone(), peer_id.clone());
        tokio::spawn(connect_request(node, pod, peer, peer_id, req, respond));
    }
}

/// One CONNECT stream: checks in phases, each failure its own status.
async fn connect_request(
    node: Arc<Node>,
    pod: Arc<Pod>,
    peer: SocketAddr,
    peer_id: Option<String>,
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) {
    // 1. A CONNECT to this pod's own address.
    if req.method() != Method::CONNECT {
        return hbone::bad_request(respond, "not CONNECT");
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return hbone::bad_request(respond, "authority is not ip:port");
    };
    if target.ip() != pod.ip {
        return hbone::bad_request(respond, "authority is not this pod");
    }
    // 2. Policy, with the peer's verified identity.
    let principal = peer_id
        .as_deref()
        .and_then(|i| i.strip_prefix("spiffe://"))
        .map(str::to_string);
    let namespace = principal
        .as_deref()
        .and_then(|p| p.split('/').nth(2))
        .map(str::to_string);
    let state = node.state.load_full();
    let conn = Conn {
        src_ip: peer.ip(),
        src_principal: principal,
        src_namespace: namespace,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let log = format!(
        "inbound src={peer} dst={target} via=hbone src_id={} dst_id={}",
        peer_id.as_deref().unwrap_or("-"),
        pod.identity
    );
    if let Decision::Deny(why) = authorize(&policies_for(&state, &pod), &conn) {
        tracing::info!(target: "access", "{log} denied=\"{why}\"");
        return hbone::refuse(respond, StatusCode::UNAUTHORIZED);
    }
    // 3. Sidecars parse HTTP on ports the pod's Service declares HTTP (destination metrics,
    //    XFCC); everything else is L4.
    if node.engine.is_some() {
        let current = state.workloads.get(&pod.workload.uid).cloned();
        let w = current.as_deref().unwrap_or(&pod.workload);
        if let Some((service, _)) = crate::l7::inbound::declared_http(w, target.port()) {
            let ib = Arc::new(crate::l7::inbound::Inbound::new(
                node.clone(),
                pod.clone(),
                peer,
                peer_id.clone(),
                target,
                service,
                true,
            ));
            if let Some(io) = hbone::accept(respond, req.into_body()) {
                crate::l7::inbound::serve(ib, TokioIo::new(io)).await;
            }
            return;
        }
    }
    // 4. The application, as the client.
    let app = match connect_app(&pod, target, peer.ip()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(target: "access", "{log} error=\"{e}\"");
            return hbone::refuse(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    // 5. 200, then copy.
    let src = state.by_ip.get(&peer.ip()).cloned();
    let l = labels("destination", src.as_deref(), Some(&pod.workload), "", true);
    if let Some(io) = hbone::accept(respond, req.into_body()) {
        proxy(&node, io, app, l, log).await;
    }
}
