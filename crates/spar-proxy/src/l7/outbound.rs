//! The client side of the L7 engine: one downstream connection from the pod's application
//! to a service, and each request on it, in this order (pingora-style phase chart):
//!
//! ```text
//!  1. facts      the request head + the connection -> RequestFacts
//!  2. plan       plan_request(&snapshot, &facts, rng)            [pure: plan.rs]
//!  3. local      direct response | redirect                      -> respond
//!  4. fault      delay, then abort                               -> respond
//!  5. head       hop-by-hop stripped, x-request-id, header ops, rewritten authority
//!  6. body       buffered up to 64 KiB (replayable), else streamed
//!  7. mirror     copies to the mirrors that rolled, fire and forget      [mirror.rs]
//!  8. timeout    the route's timeout over every attempt
//!  9. attempts   breaker -> pick -> per-try timeout -> should_retry      [attempt.rs]
//! 10. response   header ops; the breaker slot is held until the body ends
//! 11. telemetry  metrics, the access log line and the span when the body is done
//! ```
//!
//! Tracing (when configured) starts with the request: the span's context goes upstream in
//! the head (step 5), the span itself is reported with the telemetry.
//!
//! Any error ends the request in `respond::error`; the report carries its flag.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::attempt::{self, Exchange};
use super::body::{Body, ReqBody, counted};
pub use super::downstream::Downstream;
use super::facts::RequestFacts;
use super::headers::{apply_ops, strip_hop_by_hop, wants_upgrade};
use super::plan::{Forward, RequestPlan, Step, plan_request};
use super::telemetry::{AccessLog, HttpLabels, Peers, Report, is_grpc};
use super::trace::{self, Kind, Pending};
use super::{mirror, respond};
use crate::Error;
use crate::snapshot::Snapshot;

/// Serve HTTP on a downstream connection until the client closes it.
pub async fn serve<S>(ds: Arc<Downstream>, s: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_read = ds.proxy.limits.header_read;
    let svc = hyper::service::service_fn(move |req| {
        let ds = ds.clone();
        async move { Ok::<_, Infallible>(handle(ds, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that half-closes after its request still gets the answer.
    // A client that never finishes its request head (slowloris) is dropped.
    builder
        .http1()
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(s), svc)
        .await;
}

/// Serve one request from the pod's application.
pub async fn handle(ds: Arc<Downstream>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let snap = ds.proxy.snapshot.load_full();
    // The line is only built when it is written (off by default, as in Istio); the request
    // id is needed either way, for the request.
    let log = if snap.telemetry.access_log_client {
        AccessLog::of(&req, ds.peer, ds.dst, &ds.client_identity)
    } else {
        AccessLog {
            request_id: AccessLog::request_id(&req),
            ..AccessLog::default()
        }
    };
    let grpc = is_grpc(req.headers());
    let span = Pending::start(
        snap.telemetry.tracing.as_ref(),
        if ds.reporter == "waypoint" {
            Kind::Server
        } else {
            Kind::Client
        },
        req.headers(),
        req.method(),
        (ds.service.hostname(), ds.dst.port()),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        Some(&log.request_id),
    );
    let mut report = Report::default();
    let resp = match forward(&ds, &snap, req, &log.request_id, &mut report, span.as_ref()).await {
        Ok(r) => r,
        Err(e) => {
            report.flags = flag(&e, report.attempts);
            respond::error(&e)
        }
    };
    finish(&ds, &snap, resp, report, log, grpc, started, span)
}

/// An error's flag; Envoy reports an upstream failure after retries as `URX` (but the
/// route's timeout as `UT`).
fn flag(e: &Error, attempts: u32) -> &'static str {
    match e {
        Error::Timeout => e.flag(),
        _ if attempts > 1 && e.side() == crate::error::Side::Upstream => "URX",
        _ => e.flag(),
    }
}

async fn forward(
    ds: &Arc<Downstream>,
    snap: &Arc<Snapshot>,
    mut req: Request<Incoming>,
    request_id: &str,
    report: &mut Report,
    trace: Option<&Pending>,
) -> Result<Response<Body>, Error> {
    // 1-2. Facts, then the plan.
    let plan = {
        let facts = RequestFacts::of(&req, &ds.service, ds.dst.port(), ds.peer);
        plan_request(snap, &facts, &mut rand::rng())?
    };
    let RequestPlan { route, step } = plan;
    report.route = route.name.clone();
    // 3. Local answers.
    let fwd = match step {
        Step::Direct { status, body } => {
            let mut r = respond::local(status, body.to_string());
            apply_ops(r.headers_mut(), &route.headers.response);
            return Ok(r);
        }
        Step::Redirect { status, location } => {
            let mut r = respond::local(status, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
        Step::Forward(f) => f,
    };
    report.cluster = Some(fwd.cluster.service.key.clone());
    // 4. Faults.
    if let Some(d) = fwd.delay {
        tokio::time::sleep(d).await;
        report.flags = "DI";
    }
    if let Some((status, grpc)) = fwd.abort {
        return Err(Error::FaultAbort { status, grpc });
    }
    // 5. The upstream head.
    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let mut head = upstream_head(req.headers(), &fwd, route, request_id, upgrade);
    if let Some(span) = trace {
        span.inject(&mut head);
    }
    // 6. The body.
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let mut body = ReqBody::read(incoming, &parts.headers, upgrade)
        .await
        .map_err(|e| Error::Downstream(format!("cannot read the request body: {e}")))?;
    report.bytes_received = body.buffered_len();
    // 7. Mirrors.
    for m in &fwd.mirrors {
        if let Some(b) = body.replayable().then(|| body.take()).flatten() {
            mirror::spawn(ds, m.clone(), &parts.method, &head, &fwd, b);
        }
    }
    // 8-9. Attempts under the route's timeout.
    let cluster = ds.engine.cluster(&fwd.cluster, fwd.h2);
    let x = Exchange {
        ds,
        fwd: &fwd,
        cluster: &cluster,
        method: &parts.method,
        head: &head,
    };
    let attempts = attempt::run(&x, &mut body, down_upgrade, report);
    let mut resp = match fwd.timeout {
        Some(t) => tokio::time::timeout(t, attempts)
            .await
            .map_err(|_| Error::Timeout)??,
        None => attempts.await?,
    };
    // 10. Response header operations: the destination's, then the route's.
    apply_ops(resp.headers_mut(), &fwd.target.headers.response);
    apply_ops(resp.headers_mut(), &route.headers.response);
    Ok(resp)
}

/// The head sent upstream: the client's headers without hop-by-hop ones, the request id,
/// the route's and the destination's header operations, and the rewritten authority.
fn upstream_head(
    h: &HeaderMap,
    fwd: &Forward<'_>,
    route: &super::config::Route,
    request_id: &str,
    upgrade: bool,
) -> HeaderMap {
    let mut head = h.clone();
    strip_hop_by_hop(&mut head, upgrade);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        head.insert("x-request-id", v);
    }
    head.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    apply_ops(&mut head, &route.headers.request);
    apply_ops(&mut head, &fwd.target.headers.request);
    if let Ok(v) = HeaderValue::from_str(&fwd.authority) {
        head.insert(header::HOST, v);
    }
    head
}

/// 11. Metrics, the access log line and the span, when the response body is done.
#[allow(clippy::too_many_arguments)]
fn finish(
    ds: &Downstream,
    snap: &Snapshot,
    resp: Response<Body>,
    report: Report,
    mut log: AccessLog,
    grpc: bool,
    started: Instant,
    span: Option<Pending>,
) -> Response<Body> {
    let service = report.cluster.clone().unwrap_or_else(|| ds.service.clone());
    let dst = report.upstream.as_ref().and_then(|u| u.workload());
    let peers = Peers {
        src: ds.client.as_deref(),
        src_principal: None,
        dst: dst.map(|w| &**w),
        service: &service,
        security: if report.upstream.as_ref().is_some_and(|u| u.mtls()) {
            "mutual_tls"
        } else {
            "unknown"
        },
    };
    let labels = HttpLabels::new(ds.reporter, &peers, &resp, grpc, report.flags);
    log.bytes_received = report.bytes_received;
    let access_log = snap.telemetry.access_log_client;
    // The rest of the line is only built when it is written (off by default, as in Istio).
    if access_log {
        log.response_code = resp.status().as_u16();
        log.response_flags = report.flags.to_string();
        log.attempts = report.attempts;
        log.route_name = report.route;
        log.upstream_service_time_ms = report.upstream_time.map(|d| d.as_millis() as u64);
        log.upstream_host = report
            .upstream
            .as_ref()
            .map(|u| u.target().to_string())
            .unwrap_or_else(|| "-".into());
        log.upstream_cluster = service.to_string();
        log.destination_principal = dst
            .map(|w| w.identity.clone())
            .unwrap_or_else(|| "-".into());
    }
    let engine = ds.engine.clone();
    let status = resp.status().as_u16();
    let flags = report.flags;
    let traced = span.filter(Pending::is_sampled).map(|s| {
        let v = |x: String| trace::Value::Str(x);
        let mut more = vec![
            (
                "upstream_cluster".to_string(),
                v(format!(
                    "outbound|{}||{}",
                    ds.dst.port(),
                    service.hostname()
                )),
            ),
            ("peer.address".into(), v(ds.peer.ip().to_string())),
            (
                "request_size".into(),
                trace::Value::Int(report.bytes_received as i64),
            ),
        ];
        if let Some(u) = &report.upstream {
            more.push(("upstream_address".into(), v(u.target().to_string())));
        }
        (
            s,
            more,
            span_service(ds),
            trace::export::Reach {
                engine: ds.engine.clone(),
                proxy: ds.proxy.clone(),
                pod: ds.pod.clone(),
            },
        )
    });
    counted(resp, started, move |ms, sent| {
        log.bytes_sent = sent;
        log.duration_ms = ms as u64;
        engine.metrics.record(&labels, ms, log.bytes_received, sent);
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

/// The reporting workload as a span's `service.name`, as Istio names it (`app.namespace`).
pub fn span_service(ds: &Downstream) -> String {
    format!(
        "{}.{}",
        ds.pod.workload.canonical_name, ds.pod.workload.namespace
    )
}
