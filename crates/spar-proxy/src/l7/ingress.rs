//! The ingress gateway's path: clients from outside the mesh on the gateway's listener ports,
//! plain HTTP or HTTPS (TLS terminated here with the listener's credential), routed by the
//! gateway's routes and sent on into the mesh by the sidecar's L7 engine (HBONE with the
//! gateway's own identity to mesh pods, plain TCP elsewhere).
//!
//! ```text
//! listener port -> [TLS, within the handshake timeout] -> HTTP/1.1 or HTTP/2
//!  per request: the gateway hosts of this port (one per Gateway on it), the first whose
//!  routes match the request (authority, path, headers...) -> l7::outbound::handle
//!  no host has a route: 404
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::Engine;
use super::body::Body;
use super::downstream::Downstream;
use super::facts::RequestFacts;
use super::respond;
use crate::proxy::{Pod, Proxy};
use crate::snapshot::ServiceKey;

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
        return http(ig, port, peer, TokioIo::new(s)).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(s);
    match tokio::time::timeout(ig.proxy.limits.handshake, accept).await {
        Ok(Ok(t)) => http(ig, port, peer, TokioIo::new(t)).await,
        Ok(Err(e)) => {
            tracing::info!(target: "access", "gateway src={peer} port={port} rejected=\"TLS: {e}\"")
        }
        Err(_) => ig.proxy.limit_metrics.timed_out(),
    }
}

async fn http<I>(ig: Arc<Ingress>, port: u16, peer: SocketAddr, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_read = ig.proxy.limits.header_read;
    let svc = hyper::service::service_fn(move |req| {
        let ig = ig.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(ig, port, peer, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    let _ = builder.serve_connection_with_upgrades(io, svc).await;
}

/// The gateway host (one per Gateway on this port) whose routes take the request.
fn host_for(ig: &Ingress, port: u16, req: &Request<Incoming>) -> Option<ServiceKey> {
    let snap = ig.proxy.snapshot.load();
    let suffix = format!(".gateway-{port}");
    let peer = SocketAddr::new(ig.pod.ip, port);
    snap.services
        .values()
        .filter(|s| s.service.is_none() && s.key.hostname().ends_with(&suffix))
        .find_map(|s| {
            let l7 = s.l7.as_deref()?;
            let facts = RequestFacts::of(req, &s.key, port, peer);
            super::route::select(l7, &facts).map(|_| s.key.clone())
        })
}

async fn handle(
    ig: Arc<Ingress>,
    port: u16,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(service) = host_for(&ig, port, &req) else {
        tracing::info!(target: "access", "gateway src={peer} port={port} authority={} path={} error=\"no route\"",
            super::facts::authority(&req), req.uri().path());
        return respond::local(StatusCode::NOT_FOUND, "no route\n");
    };
    let ds = Arc::new(Downstream {
        proxy: ig.proxy.clone(),
        pod: ig.pod.clone(),
        engine: ig.engine.clone(),
        service,
        dst: SocketAddr::new(ig.pod.ip, port),
        peer,
        reporter: "source",
        client: Some(ig.pod.workload.clone()),
        client_identity: ig.pod.identity.clone(),
    });
    super::outbound::handle(ds, req).await
}
