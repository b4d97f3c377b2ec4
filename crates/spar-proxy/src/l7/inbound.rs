//! The sidecar's inbound L7 path: on a port the pod's Service declares HTTP, HTTP/2 or gRPC,
//! requests arriving over HBONE (or plaintext) are parsed, forwarded to the application on
//! one connection per downstream connection, and reported with `reporter="destination"`.
//! The caller's verified identity reaches the application in `x-forwarded-client-cert`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use spar_xds::workload::{AppProtocol, Workload};
use tokio::sync::Mutex;

use super::http::{full_body, strip_hop_by_hop};
use super::telemetry::{AccessLog, HttpLabels};
use super::upstream::{Body, BoxError};
use crate::node::{Node, Pod, connect_app};
use crate::state;

/// The service port of this pod that `port` (a target port) belongs to, if it is HTTP.
pub fn declared_http(w: &Workload, port: u16) -> Option<(String, AppProtocol)> {
    w.services.iter().find_map(|(key, ports)| {
        ports.ports.iter().find_map(|p| {
            let target = if p.target_port == 0 {
                p.service_port
            } else {
                p.target_port
            };
            let proto = AppProtocol::try_from(p.app_protocol).ok()?;
            (target == u32::from(port) && proto != AppProtocol::Unknown)
                .then(|| (key.clone(), proto))
        })
    })
}

enum AppConn {
    None,
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// One downstream connection to the pod's application.
pub struct Inbound {
    pub node: Arc<Node>,
    pub pod: Arc<Pod>,
    pub peer: SocketAddr,
    pub peer_id: Option<String>,
    pub target: SocketAddr,
    /// `namespace/hostname` of the service the port belongs to.
    pub service: String,
    pub mtls: bool,
    app: Mutex<AppConn>,
}

impl Inbound {
    pub fn new(
        node: Arc<Node>,
        pod: Arc<Pod>,
        peer: SocketAddr,
        peer_id: Option<String>,
        target: SocketAddr,
        service: String,
        mtls: bool,
    ) -> Inbound {
        Inbound {
            node,
            pod,
            peer,
            peer_id,
            target,
            service,
            mtls,
            app: Mutex::new(AppConn::None),
        }
    }
}

/// Serve HTTP on `io` until the downstream closes it.
pub async fn serve<I>(ib: Arc<Inbound>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ib = ib.clone();
        async move { Ok::<_, std::convert::Infallible>(request(ib, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that half-closes after its request still gets the answer.
    builder.http1().half_close(true);
    let _ = builder.serve_connection_with_upgrades(io, svc).await;
}

async fn send(ib: &Inbound, req: Request<Body>) -> Result<Response<Incoming>, String> {
    let mut app = ib.app.lock().await;
    let closed = match &*app {
        AppConn::None => true,
        AppConn::H1(s) => s.is_closed(),
        AppConn::H2(s) => s.is_closed(),
    };
    if closed {
        let tcp = connect_app(&ib.pod, ib.target, ib.peer.ip())
            .await
            .map_err(|e| format!("connect to the application: {e}"))?;
        *app = if req.version() == Version::HTTP_2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            AppConn::H2(s)
        } else {
            let (s, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn.with_upgrades());
            AppConn::H1(s)
        };
    }
    match &mut *app {
        AppConn::H1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            let fut = s.send_request(req);
            // HTTP/1.1 carries one exchange at a time: hold the connection until headers.
            fut.await.map_err(|e| e.to_string())
        }
        AppConn::H2(s) => {
            let mut s = s.clone();
            drop(app);
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(req).await.map_err(|e| e.to_string())
        }
        AppConn::None => Err("no application connection".into()),
    }
}

async fn request(ib: Arc<Inbound>, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut log = AccessLog {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        protocol: format!("{:?}", req.version()),
        authority: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default(),
        downstream_remote_address: ib.peer.to_string(),
        downstream_local_address: ib.target.to_string(),
        source_principal: ib.peer_id.clone().unwrap_or_else(|| "-".into()),
        destination_principal: ib.pod.identity.clone(),
        upstream_host: ib.target.to_string(),
        upstream_cluster: format!("inbound|{}|{}", ib.target.port(), ib.service),
        request_id: req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string(),
        attempts: 1,
        ..Default::default()
    };
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    // The caller as this proxy verified it; never what the caller claimed.
    req.headers_mut().remove("x-forwarded-client-cert");
    if let Some(id) = &ib.peer_id
        && let Ok(v) = HeaderValue::from_str(&format!("By={};URI={id}", ib.pod.identity))
    {
        req.headers_mut().insert("x-forwarded-client-cert", v);
    }
    let received = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let (mut parts, body) = req.into_parts();
    // Origin-form towards the application.
    if let Some(pq) = parts.uri.path_and_query().cloned()
        && parts.version != Version::HTTP_2
    {
        parts.uri = pq.as_str().parse().unwrap_or_default();
    }
    let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
    let (mut resp, flags) = match send(&ib, req).await {
        Ok(r) => {
            let r = r.map(|b| b.map_err(BoxError::from).boxed());
            (r, "-")
        }
        Err(e) => {
            let mut r = Response::new(full_body(format!(
                "upstream connect error or disconnect/reset before headers: {e}\n"
            )));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            (r, "UF")
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = down_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = (down.await, up.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    // Telemetry when the response body is done.
    let st = ib.node.state.load_full();
    let src = st.by_ip.get(&ib.peer.ip()).cloned();
    let dst = &ib.pod.workload;
    let f = |w: Option<&Workload>, g: fn(&Workload) -> String| {
        w.map(g).unwrap_or_else(|| "unknown".into())
    };
    let (svc_ns, svc_host) = ib
        .service
        .split_once('/')
        .unwrap_or(("unknown", ib.service.as_str()));
    let labels = HttpLabels {
        reporter: "destination".into(),
        source_workload: f(src.as_deref(), |w| w.workload_name.clone()),
        source_workload_namespace: f(src.as_deref(), |w| w.namespace.clone()),
        source_principal: ib.peer_id.clone().unwrap_or_else(|| "unknown".into()),
        source_app: f(src.as_deref(), |w| w.canonical_name.clone()),
        source_version: f(src.as_deref(), |w| w.canonical_revision.clone()),
        destination_workload: dst.workload_name.clone(),
        destination_workload_namespace: dst.namespace.clone(),
        destination_principal: state::identity(dst),
        destination_app: dst.canonical_name.clone(),
        destination_version: dst.canonical_revision.clone(),
        destination_service: svc_host.to_string(),
        destination_service_name: svc_host.split('.').next().unwrap_or(svc_host).to_string(),
        destination_service_namespace: svc_ns.to_string(),
        request_protocol: if grpc { "grpc" } else { "http" }.into(),
        response_code: resp.status().as_u16().to_string(),
        grpc_response_status: resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        response_flags: flags.into(),
        connection_security_policy: if ib.mtls { "mutual_tls" } else { "none" }.into(),
    };
    log.response_code = resp.status().as_u16();
    log.response_flags = flags.into();
    log.upstream_service_time_ms = Some(started.elapsed().as_millis() as u64);
    let Some(engine) = ib.node.engine.clone() else {
        return resp;
    };
    let access_log = st.telemetry.access_log_server;
    super::http::counted(resp, started, move |ms, sent| {
        log.bytes_sent = sent;
        log.bytes_received = received;
        log.duration_ms = ms as u64;
        engine.metrics.record(&labels, ms, received, sent);
        if access_log {
            log.emit(engine.log_format);
        }
    })
}
