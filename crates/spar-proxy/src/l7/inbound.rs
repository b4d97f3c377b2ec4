//! The sidecar's inbound L7 path: on a port the pod's Service declares HTTP, HTTP/2 or gRPC,
//! requests arriving over HBONE (or plaintext) are parsed, forwarded to the application on
//! one connection per downstream connection, and reported with `reporter="destination"`:
//!
//! ```text
//! 1. head       hop-by-hop stripped
//! 2. authorize  RequestAuthentication, CUSTOM, DENY, ALLOW (`authorize`): 401 / 403 here
//! 3. app        x-forwarded-client-cert from the verified identity; the request on this
//!               downstream connection's application connection
//! 4. telemetry  metrics, the access log line and the span when the response body is done
//! ```
//!
//! Tracing (when configured): the server span is the caller's span's child, and its context
//! goes to the application, whose own calls then descend from it.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

use super::Engine;
use super::authorize::{Context, authorize};
use super::body::{Body, BoxError, counted, full_body};
use super::headers::strip_hop_by_hop;
use super::telemetry::{AccessLog, HttpLabels, Peers, is_grpc};
use super::trace::{self, Kind, Pending};
use crate::l4::inbound::{InboundIo, connect_app};
use crate::l4::plan::Admitted;
use crate::proxy::{Pod, Proxy};
use crate::security::authz::Sni;
use crate::snapshot::ServiceKey;

enum AppConn {
    None,
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// One downstream connection to the pod's application.
pub struct Inbound {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
    pub conn: Admitted,
    /// The service the port belongs to.
    pub service: ServiceKey,
    app: Mutex<AppConn>,
}

impl Inbound {
    pub fn new(
        proxy: Arc<Proxy>,
        pod: Arc<Pod>,
        engine: Arc<Engine>,
        conn: Admitted,
        service: ServiceKey,
    ) -> Inbound {
        Inbound {
            proxy,
            pod,
            engine,
            conn,
            service,
            app: Mutex::new(AppConn::None),
        }
    }
}

/// The Service of this pod a request with `authority` called: the one whose host name is
/// the authority's host (or starts with it and a dot, for a short name), else the port's.
fn called_service(ib: &Inbound, authority: &str) -> ServiceKey {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let short = format!("{host}.");
    ib.pod
        .workload
        .services
        .keys()
        .map(|k| ServiceKey::parse(k))
        .find(|k| k.hostname() == host || k.hostname().starts_with(&short))
        .unwrap_or_else(|| ib.service.clone())
}

/// Serve HTTP on `io` until the downstream closes it.
pub async fn serve(ib: Arc<Inbound>, io: InboundIo) {
    let io = TokioIo::new(io);
    let header_read = ib.proxy.limits.header_read;
    let svc = hyper::service::service_fn(move |req| {
        let ib = ib.clone();
        async move { Ok::<_, std::convert::Infallible>(request(ib, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that half-closes after its request still gets the answer.
    // A client that never finishes its request head (slowloris) is dropped.
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
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
        let tcp = connect_app(&ib.pod, ib.conn.target, ib.conn.peer.ip())
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
    let conn = &ib.conn;
    let upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let snap = ib.proxy.snapshot.load_full();
    // Several Services may select this pod on this port (reviews and reviews-v1): the one
    // the client called, by its host, names the destination as Istio reports it.
    let service = called_service(&ib, super::facts::authority(&req));
    let access_log = snap.telemetry.access_log_server;
    // The line is only built when it is written (off by default, as in Istio).
    let mut log = AccessLog::default();
    if access_log {
        log = AccessLog::of(
            &req,
            conn.peer,
            conn.target,
            conn.peer_identity.as_deref().unwrap_or("-"),
        );
        if !req.headers().contains_key("x-request-id") {
            log.request_id = "-".into();
        }
        log.destination_principal = ib.pod.identity.clone();
        log.upstream_host = conn.target.to_string();
        log.upstream_cluster = format!("inbound|{}|{}", conn.target.port(), service);
        log.attempts = 1;
    }
    let grpc = is_grpc(req.headers());
    let span = Pending::start(
        snap.telemetry.tracing.as_ref(),
        Kind::Server,
        req.headers(),
        req.method(),
        (service.hostname(), conn.target.port()),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        None,
    );
    // 1. The head.
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let received = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let (mut parts, body) = req.into_parts();
    // 2. Authorization, against the policies in force now.
    let cx = Context {
        proxy: &ib.proxy,
        pod: &ib.pod,
        engine: &ib.engine,
        conn,
        sni: Sni::Unknowable,
    };
    let (mut resp, flags, added) = match authorize(&cx, &snap, &mut parts).await {
        Err(refused) => {
            tracing::info!(target: "access", "inbound src={} dst={} src_id={} denied=\"{}\"",
                conn.peer, conn.target, conn.peer_identity.as_deref().unwrap_or("-"), refused.detail);
            log.response_code_details = refused.detail;
            (refused.response, refused.flag, Vec::new())
        }
        Ok(added) => {
            // 3. The application. The caller as this proxy verified it, never as it claimed.
            if let Some(s) = &span {
                s.inject(&mut parts.headers);
            }
            parts.headers.remove("x-forwarded-client-cert");
            if let Some(id) = &conn.peer_identity
                && let Ok(v) = HeaderValue::from_str(&format!("By={};URI={id}", ib.pod.identity))
            {
                parts.headers.insert("x-forwarded-client-cert", v);
            }
            // Origin-form towards the application.
            if let Some(pq) = parts.uri.path_and_query().cloned()
                && parts.version != Version::HTTP_2
            {
                parts.uri = pq.as_str().parse().unwrap_or_default();
            }
            let req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());
            match send(&ib, req).await {
                Ok(r) => (r.map(|b| b.map_err(BoxError::from).boxed()), "-", added),
                Err(e) => {
                    let mut r = Response::new(full_body(format!(
                        "upstream connect error or disconnect/reset before headers: {e}\n"
                    )));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    (r, "UF", Vec::new())
                }
            }
        }
    };
    for (k, v) in added {
        resp.headers_mut().append(k, v);
    }
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
    // 4. Telemetry when the response body is done.
    let peers = Peers {
        src: conn.source.as_deref(),
        src_principal: Some(conn.peer_identity.as_deref().unwrap_or("unknown")),
        dst: Some(&ib.pod.workload),
        service: &service,
        security: if conn.mtls { "mutual_tls" } else { "none" },
    };
    let labels = HttpLabels::new("destination", &peers, &resp, grpc, flags);
    if access_log {
        log.response_code = resp.status().as_u16();
        log.response_flags = flags.into();
        log.upstream_service_time_ms = Some(started.elapsed().as_millis() as u64);
    }
    let engine = ib.engine.clone();
    let status = resp.status().as_u16();
    let traced = span.filter(Pending::is_sampled).map(|s| {
        let v = |x: String| trace::Value::Str(x);
        let more = vec![
            (
                "upstream_cluster".to_string(),
                v(format!(
                    "inbound|{}||{}",
                    conn.target.port(),
                    service.hostname()
                )),
            ),
            ("peer.address".into(), v(conn.peer.ip().to_string())),
            ("request_size".into(), trace::Value::Int(received as i64)),
        ];
        let service = format!(
            "{}.{}",
            ib.pod.workload.canonical_name, ib.pod.workload.namespace
        );
        let reach = trace::export::Reach {
            engine: ib.engine.clone(),
            proxy: ib.proxy.clone(),
            pod: ib.pod.clone(),
        };
        (s, more, service, reach)
    });
    counted(resp, started, move |ms, sent| {
        log.bytes_sent = sent;
        log.bytes_received = received;
        log.duration_ms = ms as u64;
        engine.metrics.record(&labels, ms, received, sent);
        if access_log {
            log.emit(engine.log_format);
        }
        if let Some((s, mut more, service, reach)) = traced {
            more.push(("response_size".into(), trace::Value::Int(sent as i64)));
            if let Some((cfg, span)) = s.finish(status, flags, more, service) {
                engine.tracer.report(&cfg, &reach, span);
            }
        }
    })
}
