//! The ingress gateway's path: clients from outside the mesh on the gateway's listener ports,
//! plain HTTP or HTTPS (TLS terminated here with the listener's credential), routed by the
//! gateway's routes and sent on into the mesh by the sidecar's L7 engine (HBONE with the
//! gateway's own identity to mesh pods, plain TCP elsewhere).
//!
//! ```text
//! listener port -> [TLS, within the handshake timeout] -> HTTP/1.1 or HTTP/2, per request:
//!  1. authorize  the policies selecting the gateway's pods or targeting its Gateway
//!                (`l7::authorize`: JWT 401, CUSTOM, DENY/ALLOW 403 `RBAC: access denied`);
//!                the client is outside the mesh: its address, no principal
//!  2. route      the gateway hosts of this port (one per Gateway on it), the first whose
//!                routes match the request (authority, path, headers...); none: 404
//!  3. send       -> l7::outbound::handle
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::Engine;
use super::authorize::{Context, authorize};
use super::body::{Body, counted};
use super::downstream::Downstream;
use super::facts::RequestFacts;
use super::respond;
use super::telemetry::{HttpLabels, Peers, is_grpc};
use crate::l4::plan::Admitted;
use crate::proxy::{Pod, Proxy};
use crate::security::authz::Sni;
use crate::snapshot::{ServiceInfo, ServiceKey, Snapshot};

/// What every connection to one gateway pod shares.
pub struct Ingress {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
}

/// Serve one client connection on listener `port`.
pub async fn serve(
    ig: Arc<Ingress>,
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    s: TcpStream,
    peer: SocketAddr,
) {
    let Some(tls) = tls else {
        return http(ig, port, peer, None, TokioIo::new(s)).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(s);
    match tokio::time::timeout(ig.proxy.limits.handshake, accept).await {
        Ok(Ok(t)) => {
            let sni = t.get_ref().1.server_name().map(Arc::<str>::from);
            http(ig, port, peer, sni, TokioIo::new(t)).await
        }
        Ok(Err(e)) => {
            tracing::info!(target: "access", "gateway src={peer} port={port} rejected=\"TLS: {e}\"")
        }
        Err(_) => ig.proxy.limit_metrics.timed_out(),
    }
}

async fn http<I>(ig: Arc<Ingress>, port: u16, peer: SocketAddr, sni: Option<Arc<str>>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_read = ig.proxy.limits.header_read;
    // The client as policies see it: outside the mesh, so an address and no principal.
    let conn = Arc::new(Admitted::external(SocketAddr::new(ig.pod.ip, port), peer));
    let svc = hyper::service::service_fn(move |req| {
        let (ig, conn, sni) = (ig.clone(), conn.clone(), sni.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(ig, conn, sni, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    let _ = builder.serve_connection_with_upgrades(io, svc).await;
}

/// The L7 hosts of listener `port`, one per Gateway on it (`<gateway>.<ns>.gateway-<port>`,
/// with no Service behind them).
pub fn gateway_hosts(snap: &Snapshot, port: u16) -> impl Iterator<Item = &ServiceInfo> {
    let suffix = format!(".gateway-{port}");
    snap.services
        .values()
        .filter(move |s| s.service.is_none() && s.key.hostname().ends_with(&suffix))
        .map(|s| &**s)
}

/// The gateway host (one per Gateway on this port) whose routes take the request.
fn host_for(ig: &Ingress, port: u16, req: &Request<Incoming>) -> Option<ServiceKey> {
    let snap = ig.proxy.snapshot.load();
    let peer = SocketAddr::new(ig.pod.ip, port);
    gateway_hosts(&snap, port).find_map(|s| {
        let l7 = s.l7.as_deref()?;
        let facts = RequestFacts::of(req, &s.key, port, peer);
        super::route::select(l7, &facts).map(|_| s.key.clone())
    })
}

async fn handle(
    ig: Arc<Ingress>,
    conn: Arc<Admitted>,
    sni: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (port, peer) = (conn.target.port(), conn.peer);
    // 1. authorize, before routing (as Envoy's RBAC filter runs before its router).
    let snap = ig.proxy.snapshot.load_full();
    let grpc = is_grpc(req.headers());
    let (mut parts, body) = req.into_parts();
    let cx = Context {
        proxy: &ig.proxy,
        pod: &ig.pod,
        engine: &ig.engine,
        conn: &conn,
        sni: Sni::Sent(sni.as_deref()),
    };
    let added = match authorize(&cx, &snap, &mut parts).await {
        Ok(added) => added,
        Err(refused) => {
            let req = Request::from_parts(parts, body);
            tracing::info!(target: "access", "gateway src={peer} port={port} authority={} path={} denied=\"{}\"",
                super::facts::authority(&req), req.uri().path(), refused.detail);
            let Some(service) = host_for(&ig, port, &req) else {
                return refused.response;
            };
            let peers = Peers {
                src: Some(&ig.pod.workload),
                src_principal: Some(&ig.pod.identity),
                dst: None,
                service: &service,
                security: "unknown",
            };
            let labels = HttpLabels::new("source", &peers, &refused.response, grpc, refused.flag);
            let engine = ig.engine.clone();
            return counted(refused.response, started, move |ms, sent| {
                engine.metrics.record(&labels, ms, 0, sent);
            });
        }
    };
    // 2. route
    let req = Request::from_parts(parts, body);
    let Some(service) = host_for(&ig, port, &req) else {
        tracing::info!(target: "access", "gateway src={peer} port={port} authority={} path={} error=\"no route\"",
            super::facts::authority(&req), req.uri().path());
        return respond::local(StatusCode::NOT_FOUND, "no route\n");
    };
    // 3. send
    let ds = Arc::new(Downstream {
        proxy: ig.proxy.clone(),
        pod: ig.pod.clone(),
        engine: ig.engine.clone(),
        service,
        dst: conn.target,
        peer,
        reporter: "source",
        client: Some(ig.pod.workload.clone()),
        client_identity: ig.pod.identity.clone(),
    });
    let mut resp = super::outbound::handle(ds, req).await;
    for (k, v) in added {
        resp.headers_mut().append(k, v);
    }
    resp
}
