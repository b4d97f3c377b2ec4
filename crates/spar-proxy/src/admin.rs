//! A proxy's HTTP endpoints, on Istio's ports and paths so scrape configs, probes and
//! dashboards written for Istio work unchanged:
//!
//! | surface | where | paths |
//! | --- | --- | --- |
//! | `Full` | `--admin` (host loopback), a pod's `127.0.0.1:15000` | everything below, `/config_dump` |
//! | `Stats` | a pod's `:15020`, a node proxy's node address `:15020` | `/stats/prometheus`, `/metrics`, `/healthz/ready` |
//! | `Health` | a pod's `:15021`, a node proxy's node address `:15021` | `/healthz/ready` |
//!
//! A sidecar's `/stats/prometheus` is merged with the application's own metrics when the pod
//! asked to be scraped (`prometheus.io/*` annotations, moved to the proxy by injection as
//! Istio's injector does): the proxy fetches them over the pod's loopback per scrape.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;

mod dump;

use crate::net::{OUTBOUND_MARK, PodNet};
use crate::proxy::Proxy;
use crate::role::Role;

/// Istio's ports inside a pod (and on a node proxy's node).
pub const CONFIG_DUMP_PORT: u16 = 15000;
pub const STATS_PORT: u16 = 15020;
pub const HEALTH_PORT: u16 = 15021;

/// How long a scrape waits for the application's metrics, and how much it takes of them.
const APP_SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
const APP_SCRAPE_LIMIT: usize = 16 << 20;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Full,
    Stats,
    Health,
}

/// Where the application of a sidecar's pod serves its own metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetrics {
    pub port: u16,
    pub path: String,
}

/// What every admin listener of one proxy serves from.
pub struct Admin {
    proxy: Arc<Proxy>,
    registry: Registry,
    app: Option<AppMetrics>,
}

impl Admin {
    pub fn new<R: Role>(role: &R, app: Option<AppMetrics>) -> Arc<Admin> {
        let mut registry = Registry::default();
        role.proxy().metrics.register(&mut registry);
        role.proxy().limit_metrics.register(&mut registry);
        role.register_metrics(&mut registry);
        Arc::new(Admin {
            proxy: role.proxy().clone(),
            registry,
            app,
        })
    }

    /// The proxy's metrics, OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Serve `surface` of `admin` on `listener`, forever. `pod` is the pod whose network the
/// listener is in (where a sidecar finds its application's metrics).
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    surface: Surface,
    pod: Option<Arc<crate::proxy::Pod>>,
) {
    loop {
        let (s, _) = crate::accept::next(&listener).await;
        let (admin, pod) = (admin.clone(), pod.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (admin, pod) = (admin.clone(), pod.clone());
                async move {
                    let net = pod.as_deref().map(|p| &p.net);
                    Ok::<_, Infallible>(handle(req, &admin, surface, net).await)
                }
            });
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(s), svc).await;
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    admin: &Admin,
    surface: Surface,
    net: Option<&PodNet>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (status, content_type, body) = match (surface, path) {
        (_, "/healthz/ready") => {
            if admin.proxy.ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for config from the control plane\n".to_string(),
                )
            }
        }
        (Surface::Full | Surface::Stats, "/metrics" | "/stats/prometheus") => {
            match admin.encode() {
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
                Ok(own) => match (surface, net, &admin.app) {
                    (Surface::Stats, Some(net), Some(app)) => {
                        (StatusCode::OK, PROMETHEUS_TEXT, merged(own, net, app).await)
                    }
                    _ => (StatusCode::OK, OPENMETRICS, own),
                },
            }
        }
        (Surface::Full, "/config_dump") => (
            StatusCode::OK,
            "application/json",
            dump::config_dump(&admin.proxy),
        ),
        (Surface::Full, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /stats/prometheus, /healthz/ready or /config_dump\n".into(),
        ),
        (Surface::Stats, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /stats/prometheus or /healthz/ready\n".into(),
        ),
        (Surface::Health, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /healthz/ready\n".into(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// The proxy's metrics followed by the application's, in Prometheus text format (as
/// Istio's agent merges them). An application that does not answer costs only its part:
/// the proxy's metrics are served regardless, with a comment saying why the rest is missing.
async fn merged(own: String, net: &PodNet, app: &AppMetrics) -> String {
    let mut out = own
        .strip_suffix("# EOF\n")
        .map(str::to_string)
        .unwrap_or(own);
    match tokio::time::timeout(APP_SCRAPE_TIMEOUT, scrape_app(net, app)).await {
        Ok(Ok(text)) => {
            out.push_str(text.strip_suffix("# EOF\n").unwrap_or(&text));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(port = app.port, path = %app.path, error = %e, "cannot scrape the application's metrics");
            out.push_str(&format!(
                "# the application's metrics at :{}{} could not be read: {}\n",
                app.port,
                app.path,
                e.replace('\n', " ")
            ));
        }
        Err(_) => out.push_str(&format!(
            "# the application's metrics at :{}{} did not answer within {}s\n",
            app.port,
            app.path,
            APP_SCRAPE_TIMEOUT.as_secs()
        )),
    }
    out
}

async fn scrape_app(net: &PodNet, app: &AppMetrics) -> Result<String, String> {
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, app.port));
    let tcp = net
        .connect(dst, OUTBOUND_MARK, None)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(app.path.as_str())
        .header(header::HOST, format!("localhost:{}", app.port))
        .header(header::ACCEPT, PROMETHEUS_TEXT)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), APP_SCRAPE_LIMIT)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the metrics are not UTF-8".to_string())
}

/// Bind the admin address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Open a pod's `:15020`, `:15021` (all its addresses) and `127.0.0.1:15000` and serve them
/// until the tasks are aborted. A port the pod already uses is skipped with a warning: the
/// proxy still serves the pod's traffic.
pub async fn open_pod_ports(
    admin: &Arc<Admin>,
    pod: &Arc<crate::proxy::Pod>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Vec<(String, &'static str)>,
) {
    let mut tasks = Vec::new();
    let mut open = Vec::new();
    for (port, surface, local) in [
        (STATS_PORT, Surface::Stats, false),
        (HEALTH_PORT, Surface::Health, false),
        (CONFIG_DUMP_PORT, Surface::Full, true),
    ] {
        // A pod enrolled again right after leaving may still hold its previous listener
        // for a moment (aborted tasks drop theirs when next polled): retry briefly.
        let mut l = Err(std::io::ErrorKind::AddrInUse.into());
        for _ in 0..20 {
            l = if local {
                pod.net.listen_local(port).await
            } else {
                pod.net.listen(port, false).await
            };
            match &l {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
        match l {
            Ok(l) => {
                let ip = if local { "127.0.0.1" } else { "0.0.0.0" };
                open.push((
                    format!("{ip}:{port}/tcp"),
                    match surface {
                        Surface::Stats => "metrics (/stats/prometheus)",
                        Surface::Health => "readiness (/healthz/ready)",
                        Surface::Full => "config dump (/config_dump)",
                    },
                ));
                tasks.push(tokio::spawn(serve(
                    l,
                    admin.clone(),
                    surface,
                    Some(pod.clone()),
                )));
            }
            Err(e) => {
                tracing::warn!(pod = %pod.workload.workload.uid, port, error = %e, "cannot open the proxy's port in the pod; its endpoints are not served there")
            }
        }
    }
    (tasks, open)
}

/// A node proxy's `:15020` and `:15021` on its node's addresses (`netns`: the node's network
/// namespace), as ztunnel serves them on its node.
pub async fn open_node_ports(
    admin: &Arc<Admin>,
    netns: &str,
) -> Result<Vec<tokio::task::JoinHandle<()>>, crate::Error> {
    let ns = crate::net::netns::Netns::open(netns)?;
    let mut tasks = Vec::new();
    for (port, surface) in [(STATS_PORT, Surface::Stats), (HEALTH_PORT, Surface::Health)] {
        let l = ns.listen(port, false).await?;
        tasks.push(tokio::spawn(serve(l, admin.clone(), surface, None)));
    }
    Ok(tasks)
}
