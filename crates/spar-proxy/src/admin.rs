//! The node proxy's HTTP endpoints: Prometheus metrics (`/metrics`, `/stats/prometheus`),
//! readiness (`/healthz/ready`, ready once the first config arrived) and a config dump.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;

use crate::proxy::Proxy;
use crate::role::Role;

/// Serve the admin endpoints of `role` on `listener`, forever.
pub async fn serve<R: Role>(listener: tokio::net::TcpListener, role: Arc<R>) {
    let mut registry = Registry::default();
    role.proxy().metrics.register(&mut registry);
    role.proxy().limit_metrics.register(&mut registry);
    role.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let node = role.proxy().clone();
    loop {
        let (s, _) = crate::accept::next(&listener).await;
        let (node, registry) = (node.clone(), registry.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (node, registry) = (node.clone(), registry.clone());
                async move { Ok::<_, Infallible>(handle(req, &node, &registry)) }
            });
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(s), svc).await;
        });
    }
}

fn handle(
    req: Request<hyper::body::Incoming>,
    node: &Proxy,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" | "/stats/prometheus" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (StatusCode::OK, out),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        "/healthz/ready" => {
            if node.ready() {
                (StatusCode::OK, "ready\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for config from the control plane\n".into(),
                )
            }
        }
        "/config_dump" => (StatusCode::OK, config_dump(node)),
        _ => (
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz/ready or /config_dump\n".into(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn config_dump(node: &Proxy) -> String {
    let state = node.snapshot.load_full();
    let certs: Vec<serde_json::Value> = node
        .certs
        .dump()
        .into_iter()
        .map(|(id, exp)| {
            let secs = exp
                .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            serde_json::json!({ "identity": id, "expires_unix": secs })
        })
        .collect();
    let dump = serde_json::json!({
        "node": node.name,
        "generation": *node.generation.borrow(),
        "enrolled": *node.enrolled.lock().unwrap_or_else(|e| e.into_inner()),
        "certificates": certs,
        "workloads": state.workloads.values().map(|w| &w.workload).collect::<Vec<_>>(),
        "services": state.services.values().filter_map(|s| s.service.as_deref()).collect::<Vec<_>>(),
        "policies": state.policies,
        "l7": state.services.values().filter_map(|s| Some((s.key.to_string(), s.l7.as_ref()?))).map(|(k, s)| (k, serde_json::json!({
            "virtual_service": s.virtual_service,
            "destination_rule": s.destination_rule,
            "http_routes": s.http.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            "tcp_routes": s.tcp.len(),
            "subsets": s.subsets.iter().map(|(n, m)| (n.clone(), m.members.len())).collect::<std::collections::BTreeMap<_, _>>(),
        }))).collect::<std::collections::BTreeMap<_, _>>(),
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

/// Bind the admin address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
