//! L7 telemetry with Istio's names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`) and
//! one access log line per request, as text or JSON.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

type Hist = Family<HttpLabels, Histogram, fn() -> Histogram>;

pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Hist,
    pub request_bytes: Hist,
    pub response_bytes: Hist,
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
        self.requests.get_or_create(l).inc();
        self.duration.get_or_create(l).observe(ms);
        self.request_bytes
            .get_or_create(l)
            .observe(req_bytes as f64);
        self.response_bytes
            .get_or_create(l)
            .observe(resp_bytes as f64);
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
    pub fn emit(&self, f: LogFormat) {
        match f {
            LogFormat::Json => {
                let line = serde_json::to_string(self).unwrap_or_default();
                tracing::info!(target: "access", "{line}");
            }
            LogFormat::Text => tracing::info!(target: "access",
                "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" {} {} src_id={} dst_id={} route={} request_id={} attempts={}",
                self.start_time, self.method, self.path, self.protocol, self.response_code,
                self.response_flags, self.bytes_received, self.bytes_sent, self.duration_ms,
                self.upstream_service_time_ms.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                self.authority, self.upstream_host, self.upstream_cluster,
                self.downstream_remote_address, self.source_principal, self.destination_principal,
                self.route_name, self.request_id, self.attempts),
        }
    }
}
