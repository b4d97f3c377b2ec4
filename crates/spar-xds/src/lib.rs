//! Spar's wire types: delta ADS (Envoy's discovery protocol), Istio's workload and
//! authorization resources, and Istio's CA API, generated from Spar's own `.proto` files.

#![allow(clippy::all, missing_docs)]

pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

pub mod workload {
    tonic::include_proto!("istio.workload");
}

pub mod security {
    tonic::include_proto!("istio.security");
}

pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

pub mod l7 {
    tonic::include_proto!("spar.l7.v1");
}

/// Envoy's ext_authz API (`envoy.service.auth.v3.Authorization/Check`).
pub mod ext_authz {
    tonic::include_proto!("envoy.service.auth.v3");
}

/// Type URL of ambient addresses (workloads and services).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Type URL of L4 authorization policies.
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of Spar's per-service L7 routing (sidecars and waypoints).
pub const L7_TYPE: &str = "type.googleapis.com/spar.l7.v1.ServiceRoutes";
/// Type URL of a sidecar's telemetry settings (access logging), one resource per proxy.
pub const TELEMETRY_TYPE: &str = "type.googleapis.com/spar.l7.v1.Telemetry";
/// Type URL of security policies (AuthorizationPolicy, RequestAuthentication) for L7 proxies.
pub const POLICY_TYPE: &str = "type.googleapis.com/spar.l7.v1.Policy";
/// Ends the `system_version_info` of every response of a split delta but the last: the proxy
/// applies it and waits for the rest before serving from it (Spar's control plane splits large
/// deltas so that no stream's send buffer grows to the size of a whole mesh).
pub const MORE_FOLLOWS: &str = "+more";
/// The largest xDS message either side decodes (tonic's default is 4 MB): a reconnecting
/// proxy's request lists every version it holds, about 6 MB at 100,000 pods.
pub const MAX_MESSAGE: usize = 64 << 20;
/// The name of a proxy's one telemetry resource.
pub const TELEMETRY_NAME: &str = "telemetry";

/// Pack a message as `google.protobuf.Any` with the given type URL.
pub fn to_any<M: prost::Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

/// Serde helpers for config dumps: IP bytes as text.
pub mod ser {
    use serde::Serializer;

    /// Text form of 4- or 16-byte addresses; anything else as hex, never a panic.
    pub fn ip_text(b: &[u8]) -> String {
        match b.len() {
            4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                std::net::Ipv6Addr::from(a).to_string()
            }
            _ => b.iter().map(|x| format!("{x:02x}")).collect(),
        }
    }

    pub fn ip<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ip_text(b))
    }

    pub fn ip_list<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| ip_text(b)))
    }
}

/// IP address to the bytes the workload API carries.
pub fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}
