//! TCP telemetry with Istio's metric names and labels (Istio's standard metrics: every label
//! Istio documents, with its values), so Istio's dashboards and alerts work unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::snapshot::{ServiceKey, WorkloadInfo};

/// The labels every Istio standard metric has: who reported, who talked to whom, and the
/// service in between (`unknown` for what is not known).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
}

impl PeerLabels {
    /// `src_principal` is the caller's identity as verified (destination side) or held
    /// (source side); without it, the source workload's.
    pub fn new(
        reporter: &str,
        src: Option<&WorkloadInfo>,
        src_principal: Option<&str>,
        dst: Option<&WorkloadInfo>,
        service: Option<&ServiceKey>,
    ) -> PeerLabels {
        let f = |w: Option<&WorkloadInfo>, g: fn(&WorkloadInfo) -> &str| {
            w.map(g).unwrap_or("unknown").to_string()
        };
        PeerLabels {
            reporter: reporter.into(),
            source_workload: f(src, |w| &w.workload_name),
            source_workload_namespace: f(src, |w| &w.namespace),
            source_principal: src_principal
                .or(src.map(|w| w.identity.as_str()))
                .unwrap_or("unknown")
                .to_string(),
            source_app: f(src, |w| &w.canonical_name),
            source_version: f(src, |w| &w.canonical_revision),
            source_canonical_service: f(src, |w| &w.canonical_name),
            source_canonical_revision: revision(src),
            source_cluster: cluster(src),
            destination_workload: f(dst, |w| &w.workload_name),
            destination_workload_namespace: f(dst, |w| &w.namespace),
            destination_principal: f(dst, |w| &w.identity),
            destination_app: f(dst, |w| &w.canonical_name),
            destination_version: f(dst, |w| &w.canonical_revision),
            destination_canonical_service: f(dst, |w| &w.canonical_name),
            destination_canonical_revision: revision(dst),
            destination_cluster: cluster(dst),
            destination_service: service
                .map(|s| s.hostname().to_string())
                .unwrap_or_else(|| "unknown".into()),
            destination_service_name: service
                .map(|s| s.short_name().to_string())
                .unwrap_or_else(|| "unknown".into()),
            destination_service_namespace: service
                .map(|s| s.namespace())
                .filter(|ns| !ns.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// Istio's default cluster id, for workloads that carry none.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// The `*_cluster` label of a peer (`unknown` when the peer is not a known workload).
pub fn cluster(w: Option<&WorkloadInfo>) -> String {
    match w {
        None => "unknown".into(),
        Some(w) if w.cluster_id.is_empty() => DEFAULT_CLUSTER.into(),
        Some(w) => w.cluster_id.clone(),
    }
}

/// The `*_canonical_revision` label: Istio says `latest` when a workload has no version.
pub fn revision(w: Option<&WorkloadInfo>) -> String {
    match w {
        None => "unknown".into(),
        Some(w) if w.canonical_revision.is_empty() => "latest".into(),
        Some(w) => w.canonical_revision.clone(),
    }
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
