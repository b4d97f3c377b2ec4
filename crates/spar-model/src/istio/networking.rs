//! `networking.istio.io/v1`: VirtualService, DestinationRule, ServiceEntry, Sidecar,
//! WorkloadEntry and Gateway, with the field names of Istio's API.

use std::collections::BTreeMap;

use crate::meta::{Labels, LabelsSelector, Unsupported, model};

model! {
    pub struct VirtualService {
        pub hosts: Vec<String>,
        pub gateways: Vec<String>,
        pub http: Vec<HttpRoute>,
        pub tls: Vec<TlsRoute>,
        pub tcp: Vec<TcpRoute>,
        pub export_to: Vec<String>,
    }
}

model! {
    pub struct HttpRoute {
        pub name: Option<String>,
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        pub delegate: Unsupported,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<String>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        pub mirrors: Vec<HttpMirrorPolicy>,
        pub mirror_percentage: Option<Percent>,
        pub mirror_percent: Option<u32>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

model! {
    pub struct HttpMatchRequest {
        pub name: Option<String>,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<u32>,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub query_params: BTreeMap<String, StringMatch>,
        pub ignore_uri_case: Option<bool>,
        pub without_headers: BTreeMap<String, StringMatch>,
        pub source_namespace: Option<String>,
        pub stat_prefix: Option<String>,
    }
}

model! {
    /// Exactly one of `exact`, `prefix`, `regex` (checked by validation).
    pub struct StringMatch {
        pub exact: Option<String>,
        pub prefix: Option<String>,
        pub regex: Option<String>,
    }
}

model! {
    pub struct HttpRouteDestination {
        pub destination: Destination,
        pub weight: Option<i64>,
        pub headers: Option<Headers>,
    }
}

model! {
    pub struct Destination {
        pub host: String,
        pub subset: Option<String>,
        pub port: Option<PortSelector>,
    }
}

model! {
    pub struct PortSelector {
        pub number: u32,
    }
}

model! {
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

model! {
    pub struct HeaderOperations {
        pub set: BTreeMap<String, String>,
        pub add: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }
}

model! {
    pub struct HttpRedirect {
        pub uri: Option<String>,
        pub authority: Option<String>,
        pub port: Option<u32>,
        pub derive_port: Option<String>,
        pub scheme: Option<String>,
        pub redirect_code: Option<u32>,
    }
}

model! {
    pub struct HttpDirectResponse {
        pub status: u32,
        pub body: Option<HttpBody>,
    }
}

model! {
    pub struct HttpBody {
        pub string: Option<String>,
        pub bytes: Option<String>,
    }
}

model! {
    pub struct HttpRewrite {
        pub uri: Option<String>,
        pub authority: Option<String>,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

model! {
    pub struct RegexRewrite {
        #[serde(rename = "match")]
        pub matches: String,
        pub rewrite: String,
    }
}

model! {
    pub struct HttpRetry {
        pub attempts: i64,
        pub per_try_timeout: Option<String>,
        pub retry_on: Option<String>,
        pub retry_remote_localities: Option<bool>,
    }
}

model! {
    pub struct HttpFaultInjection {
        pub delay: Option<FaultDelay>,
        pub abort: Option<FaultAbort>,
    }
}

model! {
    pub struct FaultDelay {
        pub fixed_delay: Option<String>,
        pub exponential_delay: Unsupported,
        pub percentage: Option<Percent>,
        pub percent: Option<i64>,
    }
}

model! {
    pub struct FaultAbort {
        pub http_status: Option<i64>,
        pub grpc_status: Option<String>,
        pub http2_error: Option<String>,
        pub percentage: Option<Percent>,
    }
}

model! {
    pub struct Percent {
        pub value: f64,
    }
}

model! {
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

model! {
    pub struct CorsPolicy {
        pub allow_origins: Vec<StringMatch>,
        pub allow_origin: Vec<String>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<String>,
        pub allow_credentials: Option<bool>,
        pub unmatched_preflights: Option<String>,
    }
}

model! {
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

model! {
    pub struct TlsMatchAttributes {
        pub sni_hosts: Vec<String>,
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub source_namespace: Option<String>,
    }
}

model! {
    pub struct TcpRoute {
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

model! {
    pub struct L4MatchAttributes {
        pub destination_subnets: Vec<String>,
        pub port: Option<u32>,
        pub source_labels: Labels,
        pub gateways: Vec<String>,
        pub source_namespace: Option<String>,
    }
}

model! {
    pub struct RouteDestination {
        pub destination: Destination,
        pub weight: Option<i64>,
    }
}

model! {
    pub struct DestinationRule {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        pub subsets: Vec<Subset>,
        pub export_to: Vec<String>,
        pub workload_selector: Option<LabelsSelector>,
    }
}

model! {
    pub struct Subset {
        pub name: String,
        pub labels: Labels,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

model! {
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
        pub port_level_settings: Vec<PortTrafficPolicy>,
        pub tunnel: Unsupported,
        pub proxy_protocol: Unsupported,
        pub retry_budget: Unsupported,
    }
}

model! {
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub tls: Option<ClientTlsSettings>,
    }
}

model! {
    pub struct LoadBalancerSettings {
        /// ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH, UNSPECIFIED, LEAST_CONN.
        pub simple: Option<String>,
        pub consistent_hash: Option<ConsistentHash>,
        pub locality_lb_setting: Unsupported,
        pub warmup_duration_secs: Option<String>,
        pub warmup: Unsupported,
    }
}

model! {
    pub struct ConsistentHash {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<Maglev>,
        pub minimum_ring_size: Option<u64>,
    }
}

model! {
    pub struct HttpCookie {
        pub name: String,
        pub path: Option<String>,
        pub ttl: Option<String>,
    }
}

model! {
    pub struct RingHash {
        pub minimum_ring_size: Option<u64>,
    }
}

model! {
    pub struct Maglev {
        pub table_size: Option<u64>,
    }
}

model! {
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

model! {
    pub struct TcpSettings {
        pub max_connections: Option<i64>,
        pub connect_timeout: Option<String>,
        pub tcp_keepalive: Option<TcpKeepalive>,
        pub max_connection_duration: Option<String>,
        pub idle_timeout: Option<String>,
    }
}

model! {
    pub struct TcpKeepalive {
        pub probes: Option<u32>,
        pub time: Option<String>,
        pub interval: Option<String>,
    }
}

model! {
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i64>,
        pub http2_max_requests: Option<i64>,
        pub max_requests_per_connection: Option<i64>,
        pub max_retries: Option<i64>,
        pub idle_timeout: Option<String>,
        pub h2_upgrade_policy: Option<String>,
        pub use_client_protocol: Option<bool>,
        pub max_concurrent_streams: Option<i64>,
    }
}

model! {
    pub struct OutlierDetection {
        pub split_external_local_origin_errors: Option<bool>,
        pub consecutive_local_origin_failures: Option<u32>,
        pub consecutive_gateway_errors: Option<u32>,
        pub consecutive5xx_errors: Option<u32>,
        pub consecutive_errors: Option<u32>,
        pub interval: Option<String>,
        pub base_ejection_time: Option<String>,
        pub max_ejection_percent: Option<i64>,
        pub min_health_percent: Option<i64>,
    }
}

model! {
    pub struct ClientTlsSettings {
        /// DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL.
        pub mode: Option<String>,
        pub client_certificate: Option<String>,
        pub private_key: Option<String>,
        pub ca_certificates: Option<String>,
        pub credential_name: Option<String>,
        pub subject_alt_names: Vec<String>,
        pub sni: Option<String>,
        pub insecure_skip_verify: Option<bool>,
    }
}

model! {
    pub struct ServiceEntry {
        pub hosts: Vec<String>,
        pub addresses: Vec<String>,
        pub ports: Vec<ServicePort>,
        /// MESH_EXTERNAL or MESH_INTERNAL.
        pub location: Option<String>,
        /// NONE, STATIC, DNS, DNS_ROUND_ROBIN.
        pub resolution: Option<String>,
        pub endpoints: Vec<WorkloadEntry>,
        pub workload_selector: Option<LabelsSelector>,
        pub export_to: Vec<String>,
        pub subject_alt_names: Vec<String>,
    }
}

model! {
    pub struct ServicePort {
        pub number: u32,
        pub protocol: Option<String>,
        pub name: String,
        pub target_port: Option<u32>,
    }
}

model! {
    pub struct WorkloadEntry {
        pub address: Option<String>,
        pub ports: BTreeMap<String, u32>,
        pub labels: Labels,
        pub network: Option<String>,
        pub locality: Option<String>,
        pub weight: Option<u32>,
        pub service_account: Option<String>,
    }
}

model! {
    pub struct Sidecar {
        pub workload_selector: Option<LabelsSelector>,
        pub ingress: Vec<IstioIngressListener>,
        pub egress: Vec<IstioEgressListener>,
        pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
        pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    }
}

model! {
    pub struct IstioIngressListener {
        pub port: Option<SidecarPort>,
        pub bind: Option<String>,
        pub capture_mode: Option<String>,
        pub default_endpoint: Option<String>,
        pub connection_pool: Option<ConnectionPoolSettings>,
    }
}

model! {
    pub struct IstioEgressListener {
        pub port: Option<SidecarPort>,
        pub bind: Option<String>,
        pub capture_mode: Option<String>,
        pub hosts: Vec<String>,
    }
}

model! {
    pub struct SidecarPort {
        pub number: u32,
        pub protocol: Option<String>,
        pub name: Option<String>,
        pub target_port: Option<u32>,
    }
}

model! {
    pub struct OutboundTrafficPolicy {
        /// REGISTRY_ONLY or ALLOW_ANY.
        pub mode: Option<String>,
        pub egress_proxy: Option<Destination>,
    }
}

model! {
    /// Istio's own ingress/egress `Gateway` (not the Gateway API one).
    pub struct IstioGateway {
        pub selector: Labels,
        pub servers: Vec<Server>,
    }
}

model! {
    pub struct Server {
        pub port: SidecarPort,
        pub bind: Option<String>,
        pub hosts: Vec<String>,
        pub tls: Unsupported,
        pub default_endpoint: Option<String>,
        pub name: Option<String>,
    }
}
