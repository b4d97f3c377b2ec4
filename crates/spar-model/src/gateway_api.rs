//! `gateway.networking.k8s.io/v1`: Gateway (class `istio-waypoint` for waypoints), HTTPRoute,
//! GRPCRoute and TCPRoute.

use crate::meta::{Unsupported, model};

/// The GatewayClass of ambient waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// Which traffic a waypoint takes: `service` (default), `workload`, `all` or `none`.
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Opting in: on a namespace, Service or Pod (the most specific wins; `none` opts out).
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// The waypoint's namespace, when it is not the opted-in resource's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// The label the pods of a Gateway's deployment carry (Gateway API's).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

model! {
    pub struct Gateway {
        pub gateway_class_name: String,
        pub listeners: Vec<Listener>,
        pub addresses: Vec<GatewayAddress>,
        pub infrastructure: Unsupported,
    }
}

model! {
    pub struct Listener {
        pub name: String,
        pub hostname: Option<String>,
        pub port: u32,
        /// HTTP, HTTPS, TCP, TLS or HBONE.
        pub protocol: String,
        pub tls: Unsupported,
        pub allowed_routes: Option<serde_json::Value>,
    }
}

model! {
    pub struct GatewayAddress {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: String,
    }
}

model! {
    pub struct ParentReference {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub namespace: Option<String>,
        pub name: String,
        pub section_name: Option<String>,
        pub port: Option<u32>,
    }
}

model! {
    pub struct HttpRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<HttpRouteRule>,
    }
}

model! {
    pub struct HttpRouteRule {
        pub name: Option<String>,
        pub matches: Vec<HttpRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<BackendRef>,
        pub timeouts: Option<HttpRouteTimeouts>,
        pub retry: Option<HttpRouteRetry>,
        pub session_persistence: Unsupported,
    }
}

model! {
    pub struct HttpRouteMatch {
        pub path: Option<PathMatch>,
        pub headers: Vec<ValueMatch>,
        pub query_params: Vec<ValueMatch>,
        pub method: Option<String>,
    }
}

model! {
    pub struct PathMatch {
        /// Exact, PathPrefix (default) or RegularExpression.
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub value: Option<String>,
    }
}

model! {
    pub struct ValueMatch {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub name: String,
        pub value: String,
    }
}

model! {
    pub struct HttpRouteFilter {
        #[serde(rename = "type")]
        pub kind: String,
        pub request_header_modifier: Option<HeaderModifier>,
        pub response_header_modifier: Option<HeaderModifier>,
        pub request_redirect: Option<RequestRedirect>,
        pub url_rewrite: Option<UrlRewrite>,
        pub request_mirror: Option<RequestMirror>,
        pub extension_ref: Unsupported,
        pub cors: Unsupported,
    }
}

model! {
    pub struct HeaderModifier {
        pub set: Vec<HeaderValue>,
        pub add: Vec<HeaderValue>,
        pub remove: Vec<String>,
    }
}

model! {
    pub struct HeaderValue {
        pub name: String,
        pub value: String,
    }
}

model! {
    pub struct RequestRedirect {
        pub scheme: Option<String>,
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
        pub port: Option<u32>,
        pub status_code: Option<u32>,
    }
}

model! {
    pub struct UrlRewrite {
        pub hostname: Option<String>,
        pub path: Option<PathModifier>,
    }
}

model! {
    pub struct PathModifier {
        #[serde(rename = "type")]
        pub kind: String,
        pub replace_full_path: Option<String>,
        pub replace_prefix_match: Option<String>,
    }
}

model! {
    pub struct RequestMirror {
        pub backend_ref: BackendRef,
        pub percent: Option<u32>,
        pub fraction: Option<Fraction>,
    }
}

model! {
    pub struct Fraction {
        pub numerator: u32,
        pub denominator: Option<u32>,
    }
}

model! {
    pub struct BackendRef {
        pub group: Option<String>,
        pub kind: Option<String>,
        pub name: String,
        pub namespace: Option<String>,
        pub port: Option<u32>,
        pub weight: Option<i64>,
        pub filters: Vec<HttpRouteFilter>,
    }
}

model! {
    pub struct HttpRouteTimeouts {
        pub request: Option<String>,
        pub backend_request: Option<String>,
    }
}

model! {
    pub struct HttpRouteRetry {
        pub codes: Vec<u32>,
        pub attempts: Option<u32>,
        pub backoff: Option<String>,
    }
}

model! {
    pub struct GrpcRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<GrpcRouteRule>,
    }
}

model! {
    pub struct GrpcRouteRule {
        pub name: Option<String>,
        pub matches: Vec<GrpcRouteMatch>,
        pub filters: Vec<HttpRouteFilter>,
        pub backend_refs: Vec<BackendRef>,
    }
}

model! {
    pub struct GrpcRouteMatch {
        pub method: Option<GrpcMethodMatch>,
        pub headers: Vec<ValueMatch>,
    }
}

model! {
    pub struct GrpcMethodMatch {
        #[serde(rename = "type")]
        pub kind: Option<String>,
        pub service: Option<String>,
        pub method: Option<String>,
    }
}

model! {
    pub struct TcpRoute {
        pub parent_refs: Vec<ParentReference>,
        pub rules: Vec<TcpRouteRule>,
    }
}

model! {
    /// A `TLSRoute`: TLS connections routed by SNI (`hostnames`) without being terminated,
    /// as an ingress gateway's `Passthrough` listener does.
    pub struct TlsRoute {
        pub parent_refs: Vec<ParentReference>,
        pub hostnames: Vec<String>,
        pub rules: Vec<TcpRouteRule>,
    }
}

model! {
    /// A `ReferenceGrant`: in its own namespace, lets routes of other namespaces (`from`) name
    /// objects of this one (`to`, all of a kind or one by name) as backends.
    pub struct ReferenceGrant {
        pub from: Vec<ReferenceGrantFrom>,
        pub to: Vec<ReferenceGrantTo>,
    }
}

model! {
    pub struct ReferenceGrantFrom {
        pub group: String,
        pub kind: String,
        pub namespace: String,
    }
}

model! {
    pub struct ReferenceGrantTo {
        pub group: String,
        pub kind: String,
        pub name: Option<String>,
    }
}

model! {
    pub struct TcpRouteRule {
        pub name: Option<String>,
        pub backend_refs: Vec<BackendRef>,
    }
}
