//! The waypoint's path (ambient L7): a client's node proxy tunnels to the waypoint's 15008
//! with the client's own identity and the original destination as the CONNECT authority;
//! the waypoint applies L7 and opens HBONE to the chosen endpoint with its own identity.
//!
//! ```text
//! 15008 -> l4::inbound::tunnels (mTLS, HTTP/2) -> per CONNECT stream:
//!  1. target    the authority: a VIP:port of a Service that uses this waypoint, or the
//!               ip:port of a pod that does; anything else is 400 (no open relay)
//!  2. client    the verified identity (mTLS), the address from `forwarded`
//!  3. protocol  the Service port's declared protocol: HTTP/HTTP2/gRPC -> 4h, else -> 4t
//!  4h. HTTP     200, then per request: authorize (the policies targeting this waypoint or
//!               the Service: 401/403) -> the sidecar's L7 engine (`l7::outbound::handle`),
//!               reported with reporter="waypoint"
//!  4t. TCP      authorize the connection (401) -> `tcp_plan` (TCPRoute/VirtualService tcp)
//!               -> connect (503 when no endpoint answers) -> 200 -> relay
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Engine;
use super::authorize::{Context, authorize};
use super::body::{Body, counted};
use super::config::Protocol;
use super::downstream::Downstream;
use super::telemetry::{HttpLabels, Peers, is_grpc};
use crate::h2stream::H2Stream;
use crate::hbone;
use crate::l4::outbound::connect_first;
use crate::l4::plan::{Admitted, OutboundPlan, Upstream, tcp_plan};
use crate::l4::relay::{labels, relay};
use crate::proxy::{Pod, Proxy};
use crate::security::authz::Sni;
use crate::snapshot::{ServiceInfo, Snapshot, WorkloadInfo};

/// What every stream at one waypoint shares.
pub struct Waypoint {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
    /// The waypoint's own Service (`<gateway>.<namespace>.svc.<suffix>`), as destinations
    /// name it in their `waypoint` field.
    pub namespace: String,
    pub gateway: String,
}

impl Waypoint {
    /// Whether a destination's `waypoint` field names this waypoint.
    fn fronts(&self, ga: Option<&spar_xds::workload::GatewayAddress>) -> bool {
        use spar_xds::workload::gateway_address::Destination;
        let prefix = format!("{}.{}.svc.", self.gateway, self.namespace);
        matches!(
            ga.and_then(|g| g.destination.as_ref()),
            Some(Destination::Hostname(h)) if h.namespace == self.namespace && h.hostname.starts_with(&prefix)
        )
    }
}

/// Where a tunnel goes, once decided.
enum Target {
    Service(Arc<ServiceInfo>),
    Workload(Arc<WorkloadInfo>),
}

/// The client address a node proxy put in `forwarded: for="ip:port"`.
fn forwarded_for(req: &Request<RecvStream>) -> Option<SocketAddr> {
    let v = req.headers().get("forwarded")?.to_str().ok()?;
    v.split(';')
        .find_map(|p| p.trim().strip_prefix("for="))
        .map(|f| f.trim_matches('"'))
        .and_then(|f| f.parse().ok())
}

/// One CONNECT stream from a client's node proxy.
pub async fn stream(
    wp: Arc<Waypoint>,
    peer: SocketAddr,
    peer_id: Option<String>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    if req.method() != Method::CONNECT {
        return hbone::bad_request(respond, "not CONNECT");
    }
    let Some(client_id) = peer_id else {
        return hbone::refuse(respond, StatusCode::UNAUTHORIZED);
    };
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return hbone::bad_request(respond, "authority is not ip:port");
    };
    let client = forwarded_for(&req).unwrap_or(peer);
    let snap = wp.proxy.snapshot.load_full();
    // 1. The target must use this waypoint.
    let dest = match snap.by_vip.get(&target.ip()) {
        Some(s) => wp
            .fronts(s.service.as_ref().and_then(|x| x.waypoint.as_ref()))
            .then(|| Target::Service(s.clone())),
        None => snap
            .by_ip
            .get(&target.ip())
            .filter(|w| wp.fronts(w.workload.waypoint.as_ref()))
            .map(|w| Target::Workload(w.clone())),
    };
    let Some(dest) = dest else {
        tracing::info!(target: "access", "waypoint src={client} dst={target} src_id={client_id} denied=\"{target} does not use this waypoint\"");
        return hbone::bad_request(respond, "the destination does not use this waypoint");
    };
    // 2-3. The client, then the protocol.
    let http = match &dest {
        Target::Service(s) => s.l7.as_ref().is_some_and(|l7| {
            matches!(
                l7.protocol(target.port()),
                Protocol::Http | Protocol::Http2 | Protocol::Grpc
            )
        }),
        Target::Workload(_) => false,
    };
    let conn = Admitted {
        target,
        peer: client,
        source: snap.by_ip.get(&client.ip()).cloned(),
        peer_identity: Some(client_id),
        mtls: true,
        http_service: match &dest {
            Target::Service(s) => Some(s.key.clone()),
            Target::Workload(_) => None,
        },
        trace_id: hbone::trace_id(req.headers()),
    };
    if http {
        let Target::Service(svc) = dest else { return };
        let recv = req.into_body();
        let Some(io) = hbone::accept(respond, recv) else {
            return;
        };
        drop(snap);
        serve_http(wp, Arc::new(conn), svc, io).await
    } else {
        tcp(wp, &snap, conn, dest, req.into_body(), respond).await
    }
}

/// 4h. HTTP on the tunnel: each request authorized, then routed by the L7 engine.
async fn serve_http(wp: Arc<Waypoint>, conn: Arc<Admitted>, svc: Arc<ServiceInfo>, io: H2Stream) {
    let ds = Arc::new(Downstream {
        proxy: wp.proxy.clone(),
        pod: wp.pod.clone(),
        engine: wp.engine.clone(),
        service: svc.key.clone(),
        dst: conn.target,
        peer: conn.peer,
        reporter: "waypoint",
        client: conn.source.clone(),
        client_identity: conn.peer_identity.clone().unwrap_or_default(),
    });
    let header_read = wp.proxy.limits.header_read;
    let svc_fn = hyper::service::service_fn(move |req| {
        let (wp, conn, ds) = (wp.clone(), conn.clone(), ds.clone());
        async move { Ok::<_, std::convert::Infallible>(request(wp, conn, ds, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc_fn)
        .await;
}

async fn request(
    wp: Arc<Waypoint>,
    conn: Arc<Admitted>,
    ds: Arc<Downstream>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let snap = wp.proxy.snapshot.load_full();
    let grpc = is_grpc(req.headers());
    let (mut parts, body) = req.into_parts();
    let cx = Context {
        proxy: &wp.proxy,
        pod: &wp.pod,
        engine: &wp.engine,
        conn: &conn,
        sni: Sni::Unknowable,
    };
    match authorize(&cx, &snap, &mut parts).await {
        Ok(added) => {
            let mut resp = super::outbound::handle(ds, Request::from_parts(parts, body)).await;
            for (k, v) in added {
                resp.headers_mut().append(k, v);
            }
            resp
        }
        Err(refused) => {
            tracing::info!(target: "access", "waypoint src={} dst={} src_id={} denied=\"{}\"",
                conn.peer, conn.target, conn.peer_identity.as_deref().unwrap_or("-"), refused.detail);
            // Denials are counted as Istio counts them at a waypoint.
            let peers = Peers {
                src: conn.source.as_deref(),
                src_principal: conn.peer_identity.as_deref(),
                dst: None,
                service: &ds.service,
                security: "mutual_tls",
            };
            let labels = HttpLabels::new("waypoint", &peers, &refused.response, grpc, refused.flag);
            let engine = wp.engine.clone();
            counted(refused.response, started, move |ms, sent| {
                engine.metrics.record(&labels, ms, 0, sent);
            })
        }
    }
}

/// 4t. A TCP tunnel: authorized once, then relayed to the endpoint `tcp_plan` picks.
async fn tcp(
    wp: Arc<Waypoint>,
    snap: &Snapshot,
    conn: Admitted,
    dest: Target,
    recv: RecvStream,
    respond: SendResponse<Bytes>,
) {
    let denied = super::authorize::connection(snap, &conn, Sni::Unknowable).err();
    let log = format!(
        "waypoint src={} dst={} src_id={}",
        conn.peer,
        conn.target,
        conn.peer_identity.as_deref().unwrap_or("-")
    );
    if let Some(why) = denied {
        tracing::info!(target: "access", "{log} denied=\"{why}\"");
        return hbone::refuse(respond, StatusCode::UNAUTHORIZED);
    }
    let plan: OutboundPlan = match &dest {
        Target::Service(s) => tcp_plan(snap, s, conn.target, &mut rand::rng()),
        Target::Workload(w) => OutboundPlan {
            candidates: vec![Upstream::to(w, conn.target)],
            service: None,
        },
    };
    match connect_first(&wp.proxy, &wp.pod, &plan.candidates, conn.peer).await {
        Ok((upstream, up)) => {
            let Some(io) = hbone::accept(respond, recv) else {
                return;
            };
            let l = labels(
                "waypoint",
                conn.source.as_deref(),
                up.workload().map(|w| &**w),
                plan.service.as_ref(),
                up.mtls(),
            );
            let log = format!("{log} upstream={}", up.target());
            relay(&wp.proxy.metrics, io, upstream, l, log, None).await
        }
        Err(last) => {
            tracing::info!(target: "access", "{log} error=\"{last}\"");
            hbone::refuse(respond, StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}
