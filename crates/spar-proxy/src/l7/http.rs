//! The HTTP pipeline of one request, in design order: route match -> direct response or
//! redirect -> fault injection -> rewrite and headers -> mirror -> request timeout (all
//! attempts) -> retry (per-try timeout) -> load balancing -> circuit breaking and outlier
//! detection -> upstream (HBONE or plain). Decisions come from `route` and `balance`; this
//! module does the I/O.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};
use rand::Rng;
use spar_xds::workload::{Workload, WorkloadStatus};

use super::balance::{self, Outcome};
use super::config::{Action, HashOn, HeaderOps, Protocol, Route, Service, Target};
use super::route::{self as routing, RequestFacts};
use super::telemetry::{AccessLog, HttpLabels};
use super::upstream::{Body, BoxError};
use super::{Cluster, Engine};
use crate::node::{Node, Pod};
use crate::state::{self, State};

/// Bodies up to this size are buffered so that retries and mirrors can replay them.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// One accepted downstream connection to a service.
pub struct Downstream {
    pub node: Arc<Node>,
    pub pod: Arc<Pod>,
    pub engine: Arc<Engine>,
    /// `namespace/hostname` of the service the client called.
    pub service: String,
    pub dst: SocketAddr,
    pub peer: SocketAddr,
}

pub fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn local(status: StatusCode, flags: &str, body: &str) -> Response<Body> {
    let mut r = Response::new(full_body(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(flags) {
        r.headers_mut().insert("x-spar-response-flags", v);
    }
    r
}

fn apply_ops(h: &mut HeaderMap, ops: &HeaderOps) {
    for n in &ops.remove {
        h.remove(n);
    }
    for (n, v) in &ops.set {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(n.clone(), v);
        }
    }
    for (n, v) in &ops.add {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(n.clone(), v);
        }
    }
}

/// Hop-by-hop headers never travel upstream (except the ones an upgrade needs).
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(n);
    }
    if !upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn roll(pct: f64) -> bool {
    pct >= 100.0 || (pct > 0.0 && rand::rng().random_range(0.0..100.0) < pct)
}

/// The request body: kept in memory when small (replayable), streamed otherwise.
enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b) => Some(full_body(b.clone())),
            ReqBody::Stream(s) => s.take().map(|b| b.map_err(BoxError::from).boxed()),
        }
    }
    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }
    fn len(&self) -> u64 {
        match self {
            ReqBody::Buffered(b) => b.len() as u64,
            ReqBody::Stream(_) => 0,
        }
    }
}

/// Endpoints of `target` for port `port`: (target address, workload).
pub(crate) fn endpoints(
    st: &State,
    svc_key: &str,
    port: u16,
    members: Option<&HashSet<String>>,
) -> Vec<(SocketAddr, Arc<Workload>)> {
    st.workloads
        .values()
        .filter(|w| w.status == WorkloadStatus::Healthy as i32)
        .filter(|w| members.is_none_or(|m| m.contains(&w.uid)))
        .filter_map(|w| {
            let p = w
                .services
                .get(svc_key)?
                .ports
                .iter()
                .find(|p| p.service_port == u32::from(port))?;
            let tp = if p.target_port == 0 {
                port
            } else {
                u16::try_from(p.target_port).ok()?
            };
            let ip = w.addresses.first().and_then(|a| state::ip(a))?;
            Some((SocketAddr::new(ip, tp), w.clone()))
        })
        .collect()
}

/// Serve one request from the pod's application.
pub async fn handle(ds: Arc<Downstream>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let st = ds.node.state.load_full();
    let mut log = AccessLog {
        start_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or_default(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        protocol: format!("{:?}", req.version()),
        authority: req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default(),
        downstream_remote_address: ds.peer.to_string(),
        downstream_local_address: ds.dst.to_string(),
        source_principal: ds.pod.identity.clone(),
        ..Default::default()
    };
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    log.request_id = request_id.clone();
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let mut ctx = Outcome2 {
        flags: "-".into(),
        upstream: None,
        cluster_svc: None,
        attempts: 0,
        upstream_time: None,
    };
    let resp = match st.l7.get(&ds.service).cloned() {
        None => local(
            StatusCode::NOT_FOUND,
            "NR",
            "no route configuration for this service\n",
        ),
        Some(svc) => route_request(&ds, &st, &svc, req, &request_id, &mut ctx, &mut log).await,
    };
    finish(ds, st, resp, ctx, log, grpc, started)
}

/// What the pipeline learnt, for telemetry.
struct Outcome2 {
    flags: String,
    upstream: Option<(SocketAddr, Arc<Workload>)>,
    cluster_svc: Option<String>,
    attempts: u32,
    upstream_time: Option<Duration>,
}

fn finish(
    ds: Arc<Downstream>,
    st: Arc<State>,
    mut resp: Response<Body>,
    ctx: Outcome2,
    mut log: AccessLog,
    grpc: bool,
    started: Instant,
) -> Response<Body> {
    let status = resp.status().as_u16();
    resp.headers_mut().remove("x-spar-response-flags");
    let svc_key = ctx
        .cluster_svc
        .clone()
        .unwrap_or_else(|| ds.service.clone());
    let (svc_ns, svc_host) = svc_key
        .split_once('/')
        .unwrap_or(("unknown", svc_key.as_str()));
    let dst_w = ctx.upstream.as_ref().map(|(_, w)| w.clone());
    let src = &ds.pod.workload;
    let f = |w: Option<&Workload>, g: fn(&Workload) -> String| {
        w.map(g).unwrap_or_else(|| "unknown".into())
    };
    let labels = HttpLabels {
        reporter: "source".into(),
        source_workload: src.workload_name.clone(),
        source_workload_namespace: src.namespace.clone(),
        source_principal: state::identity(src),
        source_app: src.canonical_name.clone(),
        source_version: src.canonical_revision.clone(),
        destination_workload: f(dst_w.as_deref(), |w| w.workload_name.clone()),
        destination_workload_namespace: f(dst_w.as_deref(), |w| w.namespace.clone()),
        destination_principal: f(dst_w.as_deref(), state::identity),
        destination_app: f(dst_w.as_deref(), |w| w.canonical_name.clone()),
        destination_version: f(dst_w.as_deref(), |w| w.canonical_revision.clone()),
        destination_service: svc_host.to_string(),
        destination_service_name: svc_host.split('.').next().unwrap_or(svc_host).to_string(),
        destination_service_namespace: svc_ns.to_string(),
        request_protocol: if grpc { "grpc" } else { "http" }.into(),
        response_code: status.to_string(),
        grpc_response_status: resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        response_flags: ctx.flags.clone(),
        connection_security_policy: if dst_w
            .as_ref()
            .is_some_and(|w| w.tunnel_protocol == spar_xds::workload::TunnelProtocol::Hbone as i32)
        {
            "mutual_tls"
        } else {
            "unknown"
        }
        .into(),
    };
    log.response_code = status;
    log.response_flags = ctx.flags;
    log.attempts = ctx.attempts;
    log.upstream_service_time_ms = ctx.upstream_time.map(|d| d.as_millis() as u64);
    log.upstream_host = ctx
        .upstream
        .as_ref()
        .map(|(a, _)| a.to_string())
        .unwrap_or_else(|| "-".into());
    log.upstream_cluster = svc_key;
    log.destination_principal = dst_w
        .as_deref()
        .map(state::identity)
        .unwrap_or_else(|| "-".into());
    let access_log = st.telemetry.access_log_client;
    drop(st);
    let engine = ds.engine.clone();
    counted(resp, started, move |ms, sent| {
        log.bytes_sent = sent;
        log.duration_ms = ms as u64;
        engine.metrics.record(&labels, ms, log.bytes_received, sent);
        if access_log {
            log.emit(engine.log_format);
        }
    })
}

/// Wrap a response so `done(duration_ms, body_bytes)` runs when its body is finished.
pub fn counted(
    resp: Response<Body>,
    started: Instant,
    done: impl FnOnce(f64, u64) + Send + Sync + 'static,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let done = Box::new(move |sent: u64| done(started.elapsed().as_secs_f64() * 1000.0, sent));
    Response::from_parts(
        parts,
        Counted {
            inner: body,
            bytes: 0,
            done: Some(done),
        }
        .boxed(),
    )
}

/// A response body that reports its size when it is finished (or dropped).
struct Counted {
    inner: Body,
    bytes: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes += d.len() as u64;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.done.take() {
            f(self.bytes);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn route_request(
    ds: &Arc<Downstream>,
    st: &Arc<State>,
    svc: &Arc<Service>,
    mut req: Request<Incoming>,
    request_id: &str,
    ctx: &mut Outcome2,
    log: &mut AccessLog,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    let authority = log.authority.clone();
    let facts = RequestFacts {
        method: method.as_str(),
        scheme: "http",
        authority: &authority,
        path: &path,
        query: query.as_deref(),
        headers: req.headers(),
        port: ds.dst.port(),
    };
    let Some((route, matched)) = routing::select(svc, &facts) else {
        ctx.flags = "NR".into();
        return local(StatusCode::NOT_FOUND, "NR", "no route matched\n");
    };
    log.route_name = route.name.clone();
    let targets = match &route.action {
        Action::Direct { status, body } => {
            let mut r = local(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
                "-",
                body,
            );
            apply_ops(r.headers_mut(), &route.headers.response);
            return r;
        }
        Action::Redirect { code, .. } => {
            let pq = log.path.clone();
            let loc = routing::redirect_location(&route.action, &facts, &pq).unwrap_or_default();
            let mut r = local(
                StatusCode::from_u16(*code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                "-",
                "",
            );
            if let Ok(v) = HeaderValue::from_str(&loc) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Action::Forward(t) => t,
    };
    // Fault injection: delay first, then abort, each with its own percentage.
    if let Some(f) = &route.fault {
        if let Some((d, pct)) = f.delay
            && roll(pct)
        {
            tokio::time::sleep(d).await;
            ctx.flags = "DI".into();
        }
        if let Some((status, grpc, pct)) = f.abort
            && roll(pct)
        {
            ctx.flags = "FI".into();
            let mut r = local(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "FI",
                "fault filter abort",
            );
            if let Some(g) = grpc {
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                r.headers_mut().insert("grpc-status", HeaderValue::from(g));
            }
            return r;
        }
    }
    let Some(chosen) = routing::pick_weighted(targets, |n| rand::rng().random_range(0..n)) else {
        ctx.flags = "NR".into();
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            "route has no destination\n",
        );
    };
    // The upstream request's head.
    let upgrade = req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && req.headers().contains_key(header::UPGRADE);
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    apply_ops(&mut headers, &route.headers.request);
    apply_ops(&mut headers, &chosen.headers.request);
    let mut host = authority.clone();
    if let Some(a) = &route.rewrite_authority {
        host = a.clone();
    }
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    let mut path_q = match &route.rewrite {
        Some(rw) => routing::rewrite_path(rw, matched, &path),
        None => path.clone(),
    };
    if let Some(q) = &query {
        path_q = format!("{path_q}?{q}");
    }
    // The body: small ones are kept so retries and mirrors can replay them.
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let h2 = req.version() == Version::HTTP_2
        || matches!(
            svc.protocol(ds.dst.port()),
            Protocol::Http2 | Protocol::Grpc
        );
    let (parts, incoming) = req.into_parts();
    let small = incoming.is_end_stream()
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n <= REPLAY_LIMIT);
    let mut body = if small && !upgrade {
        match incoming.collect().await {
            Ok(b) => ReqBody::Buffered(b.to_bytes()),
            Err(e) => {
                ctx.flags = "DPE".into();
                return local(
                    StatusCode::BAD_REQUEST,
                    "DPE",
                    &format!("cannot read the request body: {e}\n"),
                );
            }
        }
    } else {
        ReqBody::Stream(Some(incoming))
    };
    log.bytes_received = body.len();

    // Mirrors: fire and forget, with the authority suffixed as Envoy does.
    for m in &route.mirrors {
        if !roll(m.percent) || !body.replayable() {
            continue;
        }
        let mut mh = headers.clone();
        if let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow")) {
            mh.insert(header::HOST, v);
        }
        let (ds, st, target, mb, pq, method) = (
            ds.clone(),
            st.clone(),
            m.target.clone(),
            body.take(),
            path_q.clone(),
            method.clone(),
        );
        tokio::spawn(async move {
            let Some(mb) = mb else { return };
            let Some(c) = resolve(&ds, &st, &target, h2) else {
                return;
            };
            let eps = endpoints(&st, &c.svc_key, c.port, c.members.as_ref());
            let Some(idx) = balance::pick(
                &c.cluster.policy.balance,
                &stats_of(&ds.engine, &eps),
                &[],
                None,
                &c.cluster.rr,
                &mut |n| rand::rng().random_range(0..n),
            ) else {
                return;
            };
            let uri = format!("http://{}{pq}", eps[idx].0);
            let Ok(mut r) = Request::builder().method(method).uri(uri).body(mb) else {
                return;
            };
            *r.headers_mut() = mh;
            *r.version_mut() = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            if let Ok(resp) = c.cluster.client.request(r).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }

    let Some(c) = resolve(ds, st, &chosen.target, h2) else {
        ctx.flags = "NR".into();
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            &format!("unknown destination host {}\n", chosen.target.host),
        );
    };
    ctx.cluster_svc = Some(c.svc_key.clone());
    let hash = hash_of(
        &c.cluster.policy.balance,
        &parts.headers,
        query.as_deref(),
        ds.peer,
    );
    let attempt_all = attempts(
        ds,
        st,
        route,
        &c,
        &method,
        &headers,
        &path_q,
        &mut body,
        hash,
        h2,
        ctx,
        downstream_upgrade,
    );
    let mut resp = match route.timeout {
        Some(t) => match tokio::time::timeout(t, attempt_all).await {
            Ok(r) => r,
            Err(_) => {
                ctx.flags = "UT".into();
                local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                )
            }
        },
        None => attempt_all.await,
    };
    apply_ops(resp.headers_mut(), &chosen.headers.response);
    apply_ops(resp.headers_mut(), &route.headers.response);
    resp
}

/// A destination resolved to its service, port, subset members and cluster.
struct Resolved {
    svc_key: String,
    port: u16,
    members: Option<HashSet<String>>,
    cluster: Arc<Cluster>,
}

fn resolve(ds: &Downstream, st: &State, t: &Target, h2: bool) -> Option<Resolved> {
    let svc = st.l7_by_host.get(&t.host)?;
    let svc_key = format!("{}/{}", svc.namespace, svc.hostname);
    let port = t.port.unwrap_or(ds.dst.port());
    // An unknown subset selects nothing (Istio answers 503 too).
    let members = t.subset.as_ref().map(|s| {
        svc.subsets
            .get(s)
            .map(|s| s.members.clone())
            .unwrap_or_default()
    });
    let policy = svc.policy_for(t.subset.as_deref()).clone();
    let cluster = ds
        .engine
        .cluster(&ds.node, &ds.pod, &svc_key, t.subset.as_deref(), h2, policy);
    Some(Resolved {
        svc_key,
        port,
        members,
        cluster,
    })
}

fn stats_of(
    engine: &Engine,
    eps: &[(SocketAddr, Arc<Workload>)],
) -> Vec<Arc<balance::EndpointStats>> {
    eps.iter().map(|(a, _)| engine.stats.get(*a)).collect()
}

fn hash_of(
    b: &super::config::Balance,
    h: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<u64> {
    let super::config::Balance::Hash(on) = b else {
        return None;
    };
    match on {
        HashOn::Header(n) => h.get(n).map(|v| balance::hash_key(v.as_bytes())),
        HashOn::SourceIp => Some(balance::hash_key(peer.ip().to_string().as_bytes())),
        HashOn::Query(k) => query?.split('&').find_map(|kv| {
            let (key, v) = kv.split_once('=').unwrap_or((kv, ""));
            (key == k).then(|| balance::hash_key(v.as_bytes()))
        }),
        HashOn::Cookie(name) => h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| balance::hash_key(v.as_bytes()))
            }),
    }
}

/// The retry loop. Each attempt: breaker slot, endpoint choice, per-try timeout, outcome.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    ds: &Arc<Downstream>,
    st: &Arc<State>,
    route: &Route,
    c: &Resolved,
    method: &Method,
    headers: &HeaderMap,
    path_q: &str,
    body: &mut ReqBody,
    hash: Option<u64>,
    h2: bool,
    ctx: &mut Outcome2,
    mut downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let eps = endpoints(st, &c.svc_key, c.port, c.members.as_ref());
    if eps.is_empty() {
        ctx.flags = "UH".into();
        return local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream");
    }
    let stats = stats_of(&ds.engine, &eps);
    let policy = &c.cluster.policy;
    let retry = &route.retry;
    let mut tried: Vec<usize> = Vec::new();
    let mut last = local(
        StatusCode::SERVICE_UNAVAILABLE,
        "UF",
        "upstream connect error",
    );
    let mut retrying = false;
    for attempt in 0..=retry.attempts {
        ctx.attempts = attempt + 1;
        let permit = match c.cluster.breaker.enter().await {
            Ok(p) => p,
            Err(_) => {
                ctx.flags = "UO".into();
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UO",
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
            }
        };
        let Some(idx) = balance::pick(
            &policy.balance,
            &stats,
            &tried,
            hash,
            &c.cluster.rr,
            &mut |n| rand::rng().random_range(0..n),
        ) else {
            break;
        };
        let (addr, w) = &eps[idx];
        ctx.upstream = Some((*addr, w.clone()));
        let Some(b) = body.take() else { break };
        let uri: Uri = match format!("http://{addr}{path_q}").parse() {
            Ok(u) => u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "DPE", "bad request path"),
        };
        let mut r = Request::new(b);
        *r.method_mut() = method.clone();
        *r.uri_mut() = uri;
        *r.headers_mut() = headers.clone();
        *r.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if h2 {
            r.headers_mut().remove(header::HOST);
        }
        if policy.limits.max_requests_per_connection == Some(1) && !h2 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let es = &stats[idx];
        es.inflight.fetch_add(1, Ordering::Relaxed);
        es.requests.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let sent = c.cluster.client.request(r);
        let res = match retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        es.inflight.fetch_sub(1, Ordering::Relaxed);
        if std::mem::take(&mut retrying) {
            c.cluster.breaker.retries.fetch_sub(1, Ordering::Relaxed);
        }
        let (outcome, reached, resp) = match res {
            Ok(Ok(resp)) => (Outcome::Status(resp.status().as_u16()), true, Some(resp)),
            Ok(Err(e)) => {
                let connect = e.is_connect();
                ctx.flags = if connect { "UF" } else { "UC" }.into();
                last = local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &ctx.flags,
                    &format!("upstream connect error or disconnect/reset before headers: {e}"),
                );
                (Outcome::Failed, !connect, None)
            }
            Err(_) => {
                ctx.flags = "UT".into();
                last = local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                );
                (Outcome::Failed, true, None)
            }
        };
        es.observe(t0.elapsed());
        ctx.upstream_time = Some(t0.elapsed());
        balance::record(policy.outlier.as_ref(), es, outcome, &stats);
        let on = &retry.on;
        let may_replay = body.replayable() && (!reached || idempotent(method) || on.non_idempotent);
        let wants = match (&resp, outcome) {
            (Some(r), _) => {
                let s = r.status().as_u16();
                (on.five_xx && s >= 500)
                    || (on.gateway_error && matches!(s, 502..=504))
                    || on.statuses.contains(&s)
            }
            (None, _) if !reached => {
                on.connect_failure || on.refused_stream || on.five_xx || on.gateway_error
            }
            (None, _) => {
                on.reset || on.five_xx || on.gateway_error || retry.per_try_timeout.is_some()
            }
        };
        let budget =
            c.cluster.breaker.retries.load(Ordering::Relaxed) < c.cluster.breaker.max_retries;
        if wants && may_replay && budget && attempt < retry.attempts && downstream_upgrade.is_none()
        {
            tried.push(idx);
            if tried.len() >= eps.len() {
                tried.clear();
            }
            c.cluster.breaker.retries.fetch_add(1, Ordering::Relaxed);
            retrying = true;
            if let Some(r) = resp {
                let _ = r.into_body().collect().await;
            }
            // Envoy's base back-off: 25 ms, jittered.
            let backoff = Duration::from_millis(rand::rng().random_range(0..25));
            tokio::time::sleep(backoff).await;
            continue;
        }
        let Some(mut resp) = resp else {
            if attempt > 0 {
                ctx.flags = "URX".into();
            }
            return last;
        };
        ctx.flags = "-".into();
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(down) = downstream_upgrade.take()
        {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (down.await, up.await) {
                    let mut a = hyper_util::rt::TokioIo::new(a);
                    let mut b = hyper_util::rt::TokioIo::new(b);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
        let (mut parts, b) = resp.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(&mut parts.headers, false);
        }
        // The breaker slot is held until the response body is done: an HTTP/1.1 connection is
        // busy until then.
        let guarded = Guarded {
            inner: b.map_err(BoxError::from).boxed(),
            _permit: permit,
        };
        return Response::from_parts(parts, guarded.boxed());
    }
    last
}

/// A body that holds a circuit-breaker slot while it streams.
struct Guarded {
    inner: Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
