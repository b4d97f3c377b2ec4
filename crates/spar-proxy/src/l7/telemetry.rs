//! L7 telemetry with Istio's names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`) and
//! one access log line per request, as text or JSON.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::body::Body;
use crate::l4::plan::Upstream;
use crate::metrics::PeerLabels;
use crate::snapshot::{ServiceKey, WorkloadInfo};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// What the pipeline learnt about one request, for its metrics and access log line.
#[derive(Debug)]
pub struct Report {
    /// Envoy's response flag (`-` when none).
    pub flags: &'static str,
    pub upstream: Option<Upstream>,
    /// The service the request went to (after routing), when it got that far.
    pub cluster: Option<ServiceKey>,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub route: String,
    pub bytes_received: u64,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            flags: "-",
            upstream: None,
            cluster: None,
            attempts: 0,
            upstream_time: None,
            route: String::new(),
            bytes_received: 0,
        }
    }
}

/// Who talked to whom, for the labels.
pub struct Peers<'a> {
    pub src: Option<&'a WorkloadInfo>,
    /// The caller's identity as verified (destination side) or as held (source side).
    pub src_principal: Option<&'a str>,
    pub dst: Option<&'a WorkloadInfo>,
    pub service: &'a ServiceKey,
    /// `mutual_tls`, or `none`/`unknown` (Istio's values for the two sides).
    pub security: &'a str,
}

impl HttpLabels {
    pub fn new(
        reporter: &str,
        p: &Peers<'_>,
        resp: &Response<Body>,
        grpc: bool,
        flags: &str,
    ) -> HttpLabels {
        HttpLabels {
            peers: PeerLabels::new(reporter, p.src, p.src_principal, p.dst, Some(p.service)),
            request_protocol: if grpc { "grpc" } else { "http" }.into(),
            response_code: resp.status().as_u16().to_string(),
            grpc_response_status: resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            response_flags: flags.into(),
            connection_security_policy: p.security.into(),
        }
    }
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

type Hist = Family<HttpLabels, Histogram, fn() -> Histogram>;

pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Hist,
    pub request_bytes: Hist,
    pub response_bytes: Hist,
    /// The four metrics of each label set seen, found with one lookup per request instead of
    /// four (each hashes the 19 labels).
    handles: RwLock<HashMap<HttpLabels, Arc<Handles>>>,
}

/// One label set's metrics (clones share their values with the families').
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

fn ms_buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0,
    ])
}

fn byte_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 8,
    ))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(ms_buckets),
            request_bytes: Family::new_with_constructor(byte_buckets),
            response_bytes: Family::new_with_constructor(byte_buckets),
            handles: RwLock::default(),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("istio_requests", "Requests", self.requests.clone());
        r.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            self.duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes",
            self.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes",
            self.response_bytes.clone(),
        );
    }

    pub fn record(&self, l: &HttpLabels, ms: f64, req_bytes: u64, resp_bytes: u64) {
        let h = self.handles(l);
        h.requests.inc();
        h.duration.observe(ms);
        h.request_bytes.observe(req_bytes as f64);
        h.response_bytes.observe(resp_bytes as f64);
    }

    fn handles(&self, l: &HttpLabels) -> Arc<Handles> {
        // A poisoned lock only means a panic elsewhere mid-insert: the map is still whole.
        let known = self
            .handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(l)
            .cloned();
        if let Some(h) = known {
            return h;
        }
        let h = Arc::new(Handles {
            requests: self.requests.get_or_create(l).clone(),
            duration: self.duration.get_or_create(l).clone(),
            request_bytes: self.request_bytes.get_or_create(l).clone(),
            response_bytes: self.response_bytes.get_or_create(l).clone(),
        });
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(l.clone())
            .or_insert(h)
            .clone()
    }
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything one access log line says.
#[derive(Debug, Default, serde::Serialize)]
pub struct AccessLog {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub authority: String,
    pub response_code: u16,
    pub response_flags: String,
    /// Why the proxy answered itself, Envoy-style (`rbac_access_denied_matched_policy[...]`).
    pub response_code_details: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub route_name: String,
    pub downstream_remote_address: String,
    pub downstream_local_address: String,
    pub source_principal: String,
    pub destination_principal: String,
    pub request_id: String,
    pub attempts: u32,
}

impl AccessLog {
    /// The line's request part, from the request head; the request id is the client's
    /// `x-request-id` or a new one.
    pub fn of<B>(
        req: &http::Request<B>,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
        source_principal: &str,
    ) -> AccessLog {
        AccessLog {
            start_time: now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into()),
            protocol: format!("{:?}", req.version()),
            authority: super::facts::authority(req).to_string(),
            downstream_remote_address: peer.to_string(),
            downstream_local_address: local.to_string(),
            source_principal: source_principal.to_string(),
            request_id: AccessLog::request_id(req),
            ..Default::default()
        }
    }

    /// The client's `x-request-id`, or a new one.
    pub fn request_id<B>(req: &http::Request<B>) -> String {
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
    }

    pub fn emit(&self, f: LogFormat) {
        match f {
            LogFormat::Json => {
                let line = serde_json::to_string(self).unwrap_or_default();
                tracing::info!(target: "access", "{line}");
            }
            LogFormat::Text => tracing::info!(target: "access",
                "[{}] \"{} {} {}\" {} {} {} {} {} {} {} \"{}\" \"{}\" {} {} src_id={} dst_id={} route={} request_id={} attempts={}",
                self.start_time, self.method, self.path, self.protocol, self.response_code,
                self.response_flags, if self.response_code_details.is_empty() { "-" } else { &self.response_code_details }, self.bytes_received, self.bytes_sent, self.duration_ms,
                self.upstream_service_time_ms.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                self.authority, self.upstream_host, self.upstream_cluster,
                self.downstream_remote_address, self.source_principal, self.destination_principal,
                self.route_name, self.request_id, self.attempts),
        }
    }
}

/// Seconds since the epoch with milliseconds, for the access log.
pub fn now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(code: &str) -> HttpLabels {
        let s = |v: &str| v.to_string();
        HttpLabels {
            peers: PeerLabels {
                reporter: s("destination"),
                source_workload: s("client"),
                source_workload_namespace: s("ns"),
                source_principal: s("spiffe://cluster.local/ns/ns/sa/client"),
                source_app: s("client"),
                source_version: s("v1"),
                source_canonical_service: s("client"),
                source_canonical_revision: s("v1"),
                source_cluster: s("Kubernetes"),
                destination_workload: s("server"),
                destination_workload_namespace: s("ns"),
                destination_principal: s("spiffe://cluster.local/ns/ns/sa/server"),
                destination_app: s("server"),
                destination_version: s("v1"),
                destination_canonical_service: s("server"),
                destination_canonical_revision: s("v1"),
                destination_cluster: s("Kubernetes"),
                destination_service: s("server.ns.svc.cluster.local"),
                destination_service_name: s("server"),
                destination_service_namespace: s("ns"),
            },
            request_protocol: s("http"),
            response_code: s(code),
            grpc_response_status: s(""),
            response_flags: s("-"),
            connection_security_policy: s("mutual_tls"),
        }
    }

    #[test]
    fn cached_handles_count_into_the_exported_families() {
        let m = HttpMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        for _ in 0..3 {
            m.record(&labels("200"), 2.0, 10, 2000);
        }
        m.record(&labels("503"), 1.0, 0, 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        let value = |metric: &str, code: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(metric) && l.contains(&format!("response_code=\"{code}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        assert_eq!(value("istio_requests_total{", "200"), Some(3.0), "{text}");
        assert_eq!(value("istio_requests_total{", "503"), Some(1.0), "{text}");
        assert_eq!(
            value("istio_response_bytes_sum{", "200"),
            Some(6000.0),
            "{text}"
        );
        assert_eq!(
            value("istio_request_duration_milliseconds_count{", "200"),
            Some(3.0),
            "{text}"
        );
    }
}
