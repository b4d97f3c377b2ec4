//! TCP telemetry with Istio's metric names and labels, so Istio's dashboards work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
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
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

#[derive(Default)]
pub struct Metrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent: Family<TcpLabels, Counter>,
    pub received: Family<TcpLabels, Counter>,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        // prometheus-client appends `_total` to counters.
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            self.opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            self.closed.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the destination",
            self.sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the destination",
            self.received.clone(),
        );
    }
}
