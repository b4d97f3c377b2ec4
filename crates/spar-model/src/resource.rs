//! One typed resource (any kind Spar reads), its identity key, and conversion from a YAML
//! document.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway_api;
use crate::istio::{networking as net, security as sec, telemetry as tel};
use crate::k8s;
use crate::meta::{Name, ObjectMeta};

/// Every kind Spar knows, with its API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Sidecar,
    WorkloadEntry,
    Gateway,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Telemetry,
    /// Gateway API `Gateway` (waypoints use class `istio-waypoint`).
    K8sGateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    TlsRoute,
    ReferenceGrant,
    Namespace,
    ServiceAccount,
    Service,
    Deployment,
    Job,
    Pod,
    Node,
    /// Only Istio's mesh config (`istio-system/istio`, key `mesh`) is read; other ConfigMaps
    /// are accepted as data.
    ConfigMap,
    /// TLS credentials for gateways (`kubernetes.io/tls`). Read by the box only: the control
    /// plane never stores one, and its data is never printed.
    Secret,
}

impl Kind {
    const ALL: [Kind; 25] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::WorkloadEntry,
        Kind::Gateway,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::Telemetry,
        Kind::K8sGateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TcpRoute,
        Kind::TlsRoute,
        Kind::ReferenceGrant,
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::Deployment,
        Kind::Job,
        Kind::Pod,
        Kind::Node,
        Kind::ConfigMap,
        Kind::Secret,
    ];

    /// The `kind:` string as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Gateway | Kind::K8sGateway => "Gateway",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Service => "Service",
            Kind::Deployment => "Deployment",
            Kind::Job => "Job",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The API group (empty for Kubernetes core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::ServiceEntry
            | Kind::Sidecar
            | Kind::WorkloadEntry
            | Kind::Gateway => "networking.istio.io",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::Telemetry => "telemetry.istio.io",
            Kind::K8sGateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::TcpRoute
            | Kind::TlsRoute
            | Kind::ReferenceGrant => "gateway.networking.k8s.io",
            Kind::Deployment => "apps",
            Kind::Job => "batch",
            Kind::Namespace
            | Kind::ServiceAccount
            | Kind::Service
            | Kind::Pod
            | Kind::Node
            | Kind::ConfigMap
            | Kind::Secret => "",
        }
    }

    /// The versions of the group Spar accepts.
    fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => &["v1", "v1beta1", "v1alpha3"],
            "security.istio.io" => &["v1", "v1beta1"],
            "telemetry.istio.io" => &["v1", "v1alpha1"],
            "gateway.networking.k8s.io" => &["v1", "v1beta1", "v1alpha2"],
            _ => &["v1"],
        }
    }

    /// Namespace and Node are cluster-scoped.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// Find the kind for an `apiVersion` and `kind` pair.
    pub fn lookup(api_version: &str, kind: &str) -> Result<Kind, String> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let candidates: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.name() == kind).collect();
        if candidates.is_empty() {
            return Err(format!("kind {kind:?} is not supported by spar"));
        }
        let Some(k) = candidates.iter().copied().find(|k| k.group() == group) else {
            let groups: Vec<&str> = candidates.iter().map(|k| k.group()).collect();
            return Err(format!(
                "apiVersion {api_version:?} does not serve kind {kind}; use group {}",
                groups.join(" or ")
            ));
        };
        if !k.versions().contains(&version) {
            return Err(format!(
                "version {version:?} of {} is not supported; use one of {}",
                if group.is_empty() { "core" } else { group },
                k.versions().join(", ")
            ));
        }
        Ok(k)
    }

    /// Canonical `apiVersion` used when Spar writes a resource out.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => "v1".to_string(),
            g => format!("{g}/v1"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The typed body of a resource. Every variant but a Pod's is boxed: a mesh of 100,000 pods
/// holds 100,000 of these, and inline they all took the size of the largest variant (1,088
/// bytes, a VirtualService's), where a Pod needs 440. Pods stay inline: they are most of a
/// large mesh, and a box would cost each an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(Box<net::VirtualService>),
    DestinationRule(Box<net::DestinationRule>),
    ServiceEntry(Box<net::ServiceEntry>),
    Sidecar(Box<net::Sidecar>),
    WorkloadEntry(Box<net::WorkloadEntry>),
    Gateway(Box<net::IstioGateway>),
    AuthorizationPolicy(Box<sec::AuthorizationPolicy>),
    PeerAuthentication(Box<sec::PeerAuthentication>),
    RequestAuthentication(Box<sec::RequestAuthentication>),
    Telemetry(Box<tel::Telemetry>),
    K8sGateway(Box<gateway_api::Gateway>),
    HttpRoute(Box<gateway_api::HttpRoute>),
    GrpcRoute(Box<gateway_api::GrpcRoute>),
    TcpRoute(Box<gateway_api::TcpRoute>),
    TlsRoute(Box<gateway_api::TlsRoute>),
    ReferenceGrant(Box<gateway_api::ReferenceGrant>),
    Namespace,
    ServiceAccount,
    Service(Box<k8s::ServiceSpec>),
    Deployment(Box<k8s::DeploymentSpec>),
    Job(Box<k8s::JobSpec>),
    Pod(k8s::PodSpec, k8s::PodStatus),
    Node(k8s::NodeSpec, k8s::NodeStatus),
    /// A ConfigMap's `data`.
    ConfigMap(std::collections::BTreeMap<String, String>),
    Secret(Box<crate::k8s::Secret>),
}

/// A resource: kind, metadata and typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub spec: Spec,
}

/// What identifies a resource: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: Name,
    pub name: Name,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Resource {
    /// The namespace, `default` when a namespaced resource leaves it out (as kubectl does).
    pub fn namespace(&self) -> &str {
        if !self.kind.namespaced() {
            ""
        } else {
            self.meta.namespace.as_deref().unwrap_or("default")
        }
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The namespace as a shared `Name` (the metadata's own when it is set).
    pub fn namespace_name(&self) -> Name {
        match &self.meta.namespace {
            Some(ns) if self.kind.namespaced() => ns.clone(),
            _ => Name::intern(self.namespace()),
        }
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind,
            namespace: self.namespace_name(),
            name: self.meta.name.clone(),
        }
    }

    /// The resource as Kubernetes-shaped JSON (apiVersion, kind, metadata, spec[, status]).
    pub fn to_value(&self) -> Value {
        let mut meta = self.meta.clone();
        if self.kind.namespaced() {
            meta.namespace = Some(self.namespace_name());
        }
        let mut obj = serde_json::Map::new();
        obj.insert("apiVersion".into(), self.kind.api_version().into());
        obj.insert("kind".into(), self.kind.name().into());
        obj.insert("metadata".into(), strip_nulls(to_json(&meta)));
        let (spec, status) = match &self.spec {
            Spec::VirtualService(s) => (Some(to_json(s)), None),
            Spec::DestinationRule(s) => (Some(to_json(s)), None),
            Spec::ServiceEntry(s) => (Some(to_json(s)), None),
            Spec::Sidecar(s) => (Some(to_json(s)), None),
            Spec::WorkloadEntry(s) => (Some(to_json(s)), None),
            Spec::Gateway(s) => (Some(to_json(s)), None),
            Spec::AuthorizationPolicy(s) => (Some(to_json(s)), None),
            Spec::PeerAuthentication(s) => (Some(to_json(s)), None),
            Spec::RequestAuthentication(s) => (Some(to_json(s)), None),
            Spec::Telemetry(s) => (Some(to_json(s)), None),
            Spec::K8sGateway(s) => (Some(to_json(s)), None),
            Spec::HttpRoute(s) => (Some(to_json(s)), None),
            Spec::GrpcRoute(s) => (Some(to_json(s)), None),
            Spec::TcpRoute(s) => (Some(to_json(s)), None),
            Spec::TlsRoute(s) => (Some(to_json(s)), None),
            Spec::ReferenceGrant(s) => (Some(to_json(s)), None),
            Spec::Namespace | Spec::ServiceAccount => (None, None),
            Spec::Service(s) => (Some(to_json(s)), None),
            Spec::Deployment(s) => (Some(to_json(s)), None),
            Spec::Job(s) => (Some(to_json(s)), None),
            Spec::Pod(s, st) => (Some(to_json(s)), Some(to_json(st))),
            Spec::Node(s, st) => (Some(to_json(s)), Some(to_json(st))),
            Spec::ConfigMap(data) => {
                obj.insert("data".into(), to_json(data));
                (None, None)
            }
            Spec::Secret(sec) => {
                // Keys never leave in a dump: the names of the entries only.
                obj.insert("type".into(), to_json(&sec.kind));
                let redacted: std::collections::BTreeMap<&String, &str> =
                    sec.data.keys().map(|k| (k, "<redacted>")).collect();
                obj.insert("data".into(), to_json(&redacted));
                (None, None)
            }
        };
        if let Some(spec) = spec {
            obj.insert("spec".into(), strip_nulls(spec));
        }
        if let Some(status) = status {
            obj.insert("status".into(), strip_nulls(status));
        }
        Value::Object(obj)
    }
}

fn to_json<T: Serialize>(v: &T) -> Value {
    // Serializing plain data structs to a JSON value cannot fail (string keys only).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Drop nulls, empty arrays and empty objects so that dumps read like the input.
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_nulls(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// A problem found while decoding: the JSON path of the field and the message.
#[derive(Debug, Clone)]
pub struct DecodeError {
    pub kind: Option<Kind>,
    pub name: String,
    pub path: String,
    pub message: String,
}

/// Decode a document's JSON value into a typed resource.
pub fn decode(value: &Value) -> Result<Resource, DecodeError> {
    let err = |kind, name: &str, path: &str, message: String| DecodeError {
        kind,
        name: name.to_string(),
        path: path.to_string(),
        message,
    };
    let Some(obj) = value.as_object() else {
        return Err(err(
            None,
            "",
            "",
            "a resource must be a YAML mapping".into(),
        ));
    };
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = obj.get("apiVersion").and_then(Value::as_str);
    let kind_name = obj.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(err(
            None,
            &name,
            "kind",
            "apiVersion and kind are required".into(),
        ));
    };
    let kind =
        Kind::lookup(api_version, kind_name).map_err(|m| err(None, &name, "apiVersion", m))?;
    for key in obj.keys() {
        let allowed: &[&str] = if kind == Kind::ConfigMap {
            &["apiVersion", "kind", "metadata", "data"]
        } else if kind == Kind::Secret {
            &[
                "apiVersion",
                "kind",
                "metadata",
                "type",
                "data",
                "stringData",
            ]
        } else {
            &["apiVersion", "kind", "metadata", "spec", "status"]
        };
        if !allowed.contains(&key.as_str()) {
            return Err(err(
                Some(kind),
                &name,
                key,
                format!("unknown field `{key}`"),
            ));
        }
    }
    let meta: ObjectMeta =
        typed(obj.get("metadata"), "metadata").map_err(|(p, m)| err(Some(kind), &name, &p, m))?;
    let spec_v = obj.get("spec");
    let status_v = obj.get("status");
    let spec = (|| -> Result<Spec, (String, String)> {
        Ok(match kind {
            Kind::VirtualService => Spec::VirtualService(typed(spec_v, "spec")?),
            Kind::DestinationRule => Spec::DestinationRule(typed(spec_v, "spec")?),
            Kind::ServiceEntry => Spec::ServiceEntry(typed(spec_v, "spec")?),
            Kind::Sidecar => Spec::Sidecar(typed(spec_v, "spec")?),
            Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec_v, "spec")?),
            Kind::Gateway => Spec::Gateway(typed(spec_v, "spec")?),
            Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(typed(spec_v, "spec")?),
            Kind::PeerAuthentication => Spec::PeerAuthentication(typed(spec_v, "spec")?),
            Kind::RequestAuthentication => Spec::RequestAuthentication(typed(spec_v, "spec")?),
            Kind::Telemetry => Spec::Telemetry(typed(spec_v, "spec")?),
            Kind::K8sGateway => Spec::K8sGateway(typed(spec_v, "spec")?),
            Kind::HttpRoute => Spec::HttpRoute(typed(spec_v, "spec")?),
            Kind::GrpcRoute => Spec::GrpcRoute(typed(spec_v, "spec")?),
            Kind::TcpRoute => Spec::TcpRoute(typed(spec_v, "spec")?),
            Kind::TlsRoute => Spec::TlsRoute(typed(spec_v, "spec")?),
            Kind::ReferenceGrant => Spec::ReferenceGrant(typed(spec_v, "spec")?),
            Kind::Namespace => Spec::Namespace,
            Kind::ServiceAccount => Spec::ServiceAccount,
            Kind::Service => Spec::Service(typed(spec_v, "spec")?),
            Kind::Deployment => Spec::Deployment(typed(spec_v, "spec")?),
            Kind::Job => Spec::Job(typed(spec_v, "spec")?),
            Kind::Pod => Spec::Pod(typed(spec_v, "spec")?, typed(status_v, "status")?),
            Kind::Node => Spec::Node(typed(spec_v, "spec")?, typed(status_v, "status")?),
            Kind::ConfigMap => Spec::ConfigMap(typed(obj.get("data"), "data")?),
            Kind::Secret => Spec::Secret(Box::new(crate::k8s::Secret::decode(
                obj.get("type"),
                obj.get("data"),
                obj.get("stringData"),
            )?)),
        })
    })()
    .map_err(|(p, m)| err(Some(kind), &name, &p, m))?;
    Ok(Resource { kind, meta, spec })
}

/// Deserialize one part of the object, reporting the failing field's full path.
fn typed<T: for<'de> Deserialize<'de> + Default>(
    v: Option<&Value>,
    root: &str,
) -> Result<T, (String, String)> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(T::default());
    };
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." {
            root.to_string()
        } else {
            format!("{root}.{inner}")
        };
        (path, clean_message(&e.into_inner().to_string()))
    })
}

/// serde's messages name Rust types ("expected u32"); make them read as YAML.
fn clean_message(m: &str) -> String {
    m.replace("u32", "a non-negative integer")
        .replace("i64", "an integer")
        .replace("u64", "a non-negative integer")
        .replace("f64", "a number")
        .replace("struct ", "")
        .replace("a sequence", "a list")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_lookup_table() {
        assert_eq!(
            Kind::lookup("networking.istio.io/v1", "VirtualService"),
            Ok(Kind::VirtualService)
        );
        assert_eq!(
            Kind::lookup("networking.istio.io/v1alpha3", "Gateway"),
            Ok(Kind::Gateway)
        );
        assert_eq!(
            Kind::lookup("gateway.networking.k8s.io/v1", "Gateway"),
            Ok(Kind::K8sGateway)
        );
        assert_eq!(Kind::lookup("apps/v1", "Deployment"), Ok(Kind::Deployment));
        assert_eq!(Kind::lookup("v1", "ConfigMap"), Ok(Kind::ConfigMap));
        assert_eq!(Kind::lookup("v1", "Secret"), Ok(Kind::Secret));
        assert!(Kind::lookup("v1", "PersistentVolume").is_err());
        assert!(Kind::lookup("networking.istio.io/v9", "VirtualService").is_err());
        assert!(Kind::lookup("security.istio.io/v1", "VirtualService").is_err());
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let v = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"}, "spec": {"hosts": ["a"], "http": [{"rout": []}]}});
        let e = decode(&v).expect_err("unknown field");
        assert!(e.message.contains("unknown field `rout`"), "{e:?}");
        assert!(e.path.starts_with("spec.http[0]"), "{e:?}");
    }

    #[test]
    fn roundtrip_through_value() {
        let v = json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "x"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}});
        let r = decode(&v).expect("decodes");
        assert_eq!(r.key().to_string(), "DestinationRule/x/r");
        let again = decode(&r.to_value()).expect("decodes again");
        assert_eq!(r, again);
    }

    #[test]
    fn a_secret_is_decoded_and_never_printed() {
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cred", "namespace": "ns"}, "type": "kubernetes.io/tls",
            "data": {"tls.key": "c2VjcmV0LWtleQ=="}, "stringData": {"tls.crt": "cert"}});
        let r = decode(&v).expect("decodes");
        let Spec::Secret(s) = &r.spec else {
            panic!("a secret")
        };
        assert_eq!(s.data["tls.key"], b"secret-key");
        assert_eq!(s.data["tls.crt"], b"cert");
        let shown = format!("{:?} {}", r, r.to_value());
        assert!(
            !shown.contains("secret-key") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }
}
