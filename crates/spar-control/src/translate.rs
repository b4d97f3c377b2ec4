//! Translation: registry -> what one proxy receives. Pure functions, tested by tables.
//!
//! Node proxies and sidecars get Istio's ambient resource types: every Address (workloads and
//! services) and the Authorization policies that can apply to the workloads they serve.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use spar_model::k8s::{IntOrString, ServiceSpec};
use spar_model::{Kind, Resource, Spec};
use spar_xds::security as xsec;
use spar_xds::workload::{self as xw};

use crate::registry::{DataplaneMode, Pod, Registry};

mod authz;
pub mod gamma;
pub mod ingress;
pub mod l7;
pub mod security;
pub mod telemetry;
pub mod waypoint;
pub use authz::{authorization, effective_mtls, peer_authentication_policy};

/// Whose config is being computed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum ProxyView {
    /// A node proxy (ambient): serves every enrolled pod on this node.
    Node(String),
    /// A sidecar: serves exactly one pod.
    Workload { namespace: String, name: String },
}

/// Everything one proxy is sent, keyed by xDS resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub addresses: BTreeMap<String, xw::Address>,
    pub authorizations: BTreeMap<String, xsec::Authorization>,
    /// Sidecars only: per-service L7 routing.
    pub l7: BTreeMap<String, spar_xds::l7::ServiceRoutes>,
    /// Sidecars only: access logging from Istio's Telemetry API.
    pub telemetry: Option<spar_xds::l7::Telemetry>,
    /// Sidecars only: AuthorizationPolicy and RequestAuthentication, whole (L4 and L7).
    pub policies: BTreeMap<String, spar_xds::l7::Policy>,
}

/// The full translated mesh; per-proxy configs are filtered views of it.
#[derive(Debug, Clone, Default)]
pub struct Translated {
    pub addresses: BTreeMap<String, xw::Address>,
    pub authorizations: BTreeMap<String, xsec::Authorization>,
    /// Which of `authorizations` PeerAuthentication generated (the rest come from
    /// AuthorizationPolicy, which sidecars get whole as `policies` instead).
    pub peer_authn: BTreeSet<String>,
    pub l7: BTreeMap<String, l7::Host>,
    /// `jwksUri` -> the JWKS last fetched from it.
    pub jwks: BTreeMap<String, String>,
}

pub fn translate(reg: &Registry) -> Translated {
    let mut policies = BTreeMap::new();
    for r in reg.of_kind(Kind::AuthorizationPolicy) {
        if let Spec::AuthorizationPolicy(ap) = &r.spec
            && let Some(a) = authorization(reg, r, ap)
        {
            policies.insert(format!("{}/{}", a.namespace, a.name), a);
        }
    }
    let mut addresses = BTreeMap::new();
    let mut peer_authn = BTreeSet::new();
    for pod in reg.pods() {
        let Some(out) = pod_output(reg, &pod) else {
            continue;
        };
        for g in out.generated {
            if g.peer_authn {
                peer_authn.insert(g.key.clone());
            }
            policies.insert(g.key, g.policy);
        }
        addresses.insert(out.uid, out.address);
    }
    for (r, spec) in reg.services() {
        let s = service(reg, r, spec);
        addresses.insert(
            format!("{}/{}", s.namespace, s.hostname),
            xw::Address {
                r#type: Some(xw::address::Type::Service(s)),
            },
        );
    }
    for (name, a) in service_entries(reg) {
        addresses.insert(name, a);
    }
    Translated {
        addresses,
        authorizations: policies,
        peer_authn,
        l7: l7::hosts(reg),
        jwks: BTreeMap::new(),
    }
}

/// A policy generated for one pod (waypoint-only enforcement, PeerAuthentication) and listed
/// on its workload.
pub struct Generated {
    pub key: String,
    pub policy: xsec::Authorization,
    /// From PeerAuthentication (sidecars get these at L4 too).
    pub peer_authn: bool,
}

/// What one pod contributes to the translation: its workload (keyed by uid) and the policies
/// generated for it. None for a pod without an IP. Depends on the pod, the Services and
/// policies that select it, its namespace and the mesh, never on other pods: a change to a
/// pod retranslates only this (see `incremental`).
pub struct PodOutput {
    pub uid: String,
    pub address: xw::Address,
    pub generated: Vec<Generated>,
}

pub fn pod_output(reg: &Registry, pod: &Pod<'_>) -> Option<PodOutput> {
    pod.ip?;
    let mut w = workload(reg, pod);
    let mut generated = Vec::new();
    if let Some(only) = waypoint::only_policy(reg, pod) {
        let key = format!("{}/{}", only.namespace, only.name);
        w.authorization_policies.push(key.clone());
        generated.push(Generated {
            key,
            policy: only,
            peer_authn: false,
        });
    }
    if let Some(pa) = peer_authentication_policy(reg, pod) {
        let key = format!("{}/{}", pa.namespace, pa.name);
        w.authorization_policies.push(key.clone());
        generated.push(Generated {
            key,
            policy: pa,
            peer_authn: true,
        });
    }
    Some(PodOutput {
        uid: w.uid.clone(),
        address: xw::Address {
            r#type: Some(xw::address::Type::Workload(w)),
        },
        generated,
    })
}

/// The config of one proxy: all addresses, and the policies relevant to the pods it serves.
pub fn proxy_config(reg: &Registry, all: &Translated, view: &ProxyView) -> ProxyConfig {
    let served: Vec<Pod<'_>> = match view {
        ProxyView::Node(n) => reg.pods_on_node(n).collect(),
        ProxyView::Workload { namespace, name } => reg.pod(namespace, name).into_iter().collect(),
    };
    let listed: BTreeSet<&String> = served
        .iter()
        .filter_map(|p| workload_of(all, reg, p))
        .flat_map(|w| w.authorization_policies.iter())
        .collect();
    let sidecar = matches!(view, ProxyView::Workload { .. });
    let authorizations = all
        .authorizations
        .iter()
        // A sidecar enforces AuthorizationPolicy whole, per connection and per request, from
        // `policies`; at L4 it keeps only what PeerAuthentication generated.
        .filter(|(key, _)| !sidecar || all.peer_authn.contains(*key))
        .filter(|(key, a)| match xsec::Scope::try_from(a.scope) {
            Ok(xsec::Scope::Global) => true,
            Ok(xsec::Scope::Namespace) => served.iter().any(|p| p.namespace == a.namespace),
            _ => listed.contains(key),
        })
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    let (l7, telemetry, policies) = match (view, served.first()) {
        (ProxyView::Workload { .. }, Some(pod)) => (
            l7::for_pod(reg, &all.l7, pod),
            Some(telemetry::for_pod(reg, pod)),
            security::for_pod(reg, &all.jwks, pod),
        ),
        _ => (BTreeMap::new(), None, BTreeMap::new()),
    };
    ProxyConfig {
        addresses: all.addresses.clone(),
        authorizations,
        l7,
        telemetry,
        policies,
    }
}

fn workload_of<'a>(all: &'a Translated, reg: &Registry, p: &Pod<'_>) -> Option<&'a xw::Workload> {
    match all.addresses.get(&workload_uid(reg, p))?.r#type.as_ref()? {
        xw::address::Type::Workload(w) => Some(w),
        xw::address::Type::Service(_) => None,
    }
}

pub fn workload_uid(reg: &Registry, p: &Pod<'_>) -> String {
    format!("{}//Pod/{}/{}", reg.mesh.cluster_id, p.namespace, p.name)
}

fn workload(reg: &Registry, p: &Pod<'_>) -> xw::Workload {
    let mode = reg.dataplane_mode(p);
    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| p.labels.get(*k).map(|v| v.to_string()))
    };
    let mut services = BTreeMap::new();
    for (r, spec) in reg.services_selecting(p) {
        let ports = spec
            .ports
            .iter()
            .map(|sp| xw::Port {
                service_port: sp.port,
                target_port: target_port(p, sp.target_port.as_ref(), sp.port),
                app_protocol: app_protocol(sp.app_protocol.as_deref(), sp.name.as_deref()) as i32,
            })
            .collect();
        services.insert(
            format!("{}/{}", r.namespace(), service_host(reg, r)),
            xw::PortList { ports },
        );
    }
    let authorization_policies = reg
        .policies_selecting(p)
        .into_iter()
        .map(|r| format!("{}/{}", r.namespace(), r.name()))
        .collect();
    xw::Workload {
        uid: workload_uid(reg, p),
        name: p.name.to_string(),
        namespace: p.namespace.to_string(),
        addresses: p.ip.map(spar_xds::ip_bytes).into_iter().collect(),
        tunnel_protocol: if mode == DataplaneMode::None {
            xw::TunnelProtocol::None
        } else {
            xw::TunnelProtocol::Hbone
        } as i32,
        trust_domain: reg.mesh.trust_domain.clone(),
        service_account: p.service_account().to_string(),
        node: p.node().unwrap_or_default().to_string(),
        canonical_name: label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .unwrap_or_else(|| p.name.to_string()),
        canonical_revision: label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .unwrap_or_else(|| "latest".into()),
        workload_type: xw::WorkloadType::Deployment as i32,
        workload_name: label(&["spar.io/deployment"]).unwrap_or_else(|| deployment_name(p.name)),
        native_tunnel: mode == DataplaneMode::Sidecar,
        services,
        authorization_policies,
        status: if p.ready() {
            xw::WorkloadStatus::Healthy
        } else {
            xw::WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: reg.mesh.cluster_id.clone(),
        waypoint: waypoint::waypoint_of(reg, p.namespace, p.labels, waypoint::For::Workload)
            .map(|w| waypoint::address(reg, &w)),
        ..Default::default()
    }
}

/// `reviews-v1-7d9f8-abcde` -> `reviews-v1` (Kubernetes' ReplicaSet naming), else the name.
fn deployment_name(pod: &str) -> String {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    if parts.len() == 3 {
        parts[2].to_string()
    } else {
        pod.to_string()
    }
}

fn target_port(p: &Pod<'_>, target: Option<&IntOrString>, port: u32) -> u32 {
    match target {
        None => port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => p.spec.port_named(name).unwrap_or(port),
    }
}

/// Protocol from `appProtocol`, else the port name prefix (`http-`, `grpc-`, ...), as Istio does.
pub fn app_protocol(app: Option<&str>, name: Option<&str>) -> xw::AppProtocol {
    let from = |p: &str| match p.to_ascii_lowercase().as_str() {
        "http" | "http1" => Some(xw::AppProtocol::Http11),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(xw::AppProtocol::Http2),
        "grpc" | "grpc-web" => Some(xw::AppProtocol::Grpc),
        _ => None,
    };
    app.and_then(from)
        .or_else(|| name.and_then(|n| from(n.split('-').next().unwrap_or(n))))
        .unwrap_or(xw::AppProtocol::Unknown)
}

pub fn service_host(reg: &Registry, r: &Resource) -> String {
    format!(
        "{}.{}.svc.{}",
        r.name(),
        r.namespace(),
        reg.mesh.domain_suffix
    )
}

pub(crate) fn service(reg: &Registry, r: &Resource, spec: &ServiceSpec) -> xw::Service {
    let vips = spec
        .cluster_ips
        .iter()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse::<IpAddr>().ok());
    let mut addresses: Vec<xw::NetworkAddress> = Vec::new();
    for ip in vips {
        let a = xw::NetworkAddress {
            network: String::new(),
            address: spar_xds::ip_bytes(ip),
        };
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    xw::Service {
        name: r.name().to_string(),
        namespace: r.namespace().to_string(),
        hostname: service_host(reg, r),
        addresses,
        ports: spec
            .ports
            .iter()
            .map(|p| xw::Port {
                service_port: p.port,
                // Named target ports resolve per workload (Workload.services), as in Istio.
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => *n,
                    Some(IntOrString::String(_)) => 0,
                    None => p.port,
                },
                app_protocol: app_protocol(p.app_protocol.as_deref(), p.name.as_deref()) as i32,
            })
            .collect(),
        waypoint: waypoint::waypoint_of(reg, r.namespace(), &r.meta.labels, waypoint::For::Service)
            .map(|w| waypoint::address(reg, &w)),
        ..Default::default()
    }
}

/// ServiceEntry hosts become services; inline endpoints with IPs become workloads.
fn service_entries(reg: &Registry) -> Vec<(String, xw::Address)> {
    let mut out = Vec::new();
    for r in reg.of_kind(Kind::ServiceEntry) {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        let ns = r.namespace();
        let ports: Vec<xw::Port> = se
            .ports
            .iter()
            .map(|p| xw::Port {
                service_port: p.number,
                target_port: p.target_port.unwrap_or(p.number),
                app_protocol: app_protocol(p.protocol.as_deref(), Some(&p.name)) as i32,
            })
            .collect();
        let addresses: Vec<xw::NetworkAddress> = se
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| xw::NetworkAddress {
                network: String::new(),
                address: spar_xds::ip_bytes(ip),
            })
            .collect();
        for host in &se.hosts {
            let s = xw::Service {
                name: r.name().to_string(),
                namespace: ns.to_string(),
                hostname: host.clone(),
                addresses: addresses.clone(),
                ports: ports.clone(),
                subject_alt_names: se.subject_alt_names.clone(),
                ..Default::default()
            };
            out.push((
                format!("{ns}/{host}"),
                xw::Address {
                    r#type: Some(xw::address::Type::Service(s)),
                },
            ));
        }
        for (i, ep) in se.endpoints.iter().enumerate() {
            let Some(ip) = ep.address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let uid = format!(
                "{}/networking.istio.io/ServiceEntry/{ns}/{}/{i}",
                reg.mesh.cluster_id,
                r.name()
            );
            let services = se
                .hosts
                .iter()
                .map(|h| {
                    let ports = ports
                        .iter()
                        .zip(&se.ports)
                        .map(|(p, sp)| xw::Port {
                            target_port: ep.ports.get(&sp.name).copied().unwrap_or(p.target_port),
                            ..*p
                        })
                        .collect();
                    (format!("{ns}/{h}"), xw::PortList { ports })
                })
                .collect();
            let w = xw::Workload {
                uid: uid.clone(),
                name: format!("{}-{i}", r.name()),
                namespace: ns.to_string(),
                addresses: vec![spar_xds::ip_bytes(ip)],
                trust_domain: reg.mesh.trust_domain.clone(),
                service_account: ep
                    .service_account
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                canonical_name: r.name().to_string(),
                canonical_revision: "latest".into(),
                workload_name: r.name().to_string(),
                services,
                cluster_id: reg.mesh.cluster_id.clone(),
                ..Default::default()
            };
            out.push((
                uid,
                xw::Address {
                    r#type: Some(xw::address::Type::Workload(w)),
                },
            ));
        }
    }
    out
}

/// A registry of the resources in `yaml` (mesh defaults), for tests; the YAML must load clean.
#[cfg(test)]
pub(crate) fn test_registry(yaml: &str) -> Registry {
    let l = spar_model::load_str("t.yaml", yaml);
    assert!(!l.has_errors(), "{:?}", l.problems);
    Registry::new(
        crate::registry::MeshSettings::default(),
        l.resources.into_iter().map(|(r, _)| r),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MeshSettings;

    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: a1, namespace: a, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: n1}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b1, namespace: b, labels: {app: web}}
spec: {serviceAccountName: web, nodeName: n2}
status: {podIP: 10.0.2.1}
";

    fn reg(extra: &str) -> Registry {
        let l = spar_model::load_str("t", &format!("{BASE}---\n{extra}"));
        assert!(!l.has_errors(), "{:?}", l.problems);
        Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        )
    }

    /// Node proxies: the L4 policies; sidecars: the whole policies (plus no L4 ones but
    /// PeerAuthentication's, checked apart).
    fn policy_names(reg: &Registry, view: ProxyView) -> Vec<String> {
        let all = translate(reg);
        let cfg = proxy_config(reg, &all, &view);
        match view {
            ProxyView::Node(_) => cfg.authorizations.into_keys().collect(),
            ProxyView::Workload { .. } => {
                assert!(
                    cfg.authorizations.is_empty(),
                    "{:?}",
                    cfg.authorizations.keys()
                );
                cfg.policies
                    .into_keys()
                    .map(|k| k.trim_start_matches("AuthorizationPolicy/").to_string())
                    .collect()
            }
        }
    }

    fn ap(name: &str, ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
        )
    }

    #[test]
    fn which_policies_each_proxy_receives() {
        let r = reg(&[
            ap("mesh", "istio-system", "{}"),
            ap("ns-a", "a", "{}"),
            ap("ns-b", "b", "{}"),
            ap("sel-a", "a", "{selector: {matchLabels: {app: web}}}"),
            ap("sel-a-miss", "a", "{selector: {matchLabels: {app: db}}}"),
            ap(
                "root-sel",
                "istio-system",
                "{selector: {matchLabels: {app: web}}}",
            ),
            ap("audit", "a", "{action: AUDIT}"),
            ap(
                "waypoint",
                "a",
                "{targetRefs: [{kind: Service, group: '', name: web}]}",
            ),
        ]
        .concat());
        let cases = [
            (
                ProxyView::Node("n1".into()),
                vec![
                    "a/ns-a",
                    "a/sel-a",
                    "istio-system/mesh",
                    "istio-system/root-sel",
                ],
            ),
            (
                ProxyView::Node("n2".into()),
                vec!["b/ns-b", "istio-system/mesh", "istio-system/root-sel"],
            ),
            (ProxyView::Node("empty".into()), vec!["istio-system/mesh"]),
            (
                ProxyView::Workload {
                    namespace: "a".into(),
                    name: "a1".into(),
                },
                // AUDIT reaches the sidecar (it logs); the targetRef one is the waypoint's.
                vec![
                    "a/audit",
                    "a/ns-a",
                    "a/sel-a",
                    "istio-system/mesh",
                    "istio-system/root-sel",
                ],
            ),
        ];
        for (view, want) in cases {
            assert_eq!(policy_names(&r, view.clone()), want, "{view:?}");
        }
    }

    #[test]
    fn workloads_and_services_and_modes() {
        let r = reg(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{name: grpc-api, port: 80, targetPort: 9090}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: a1, namespace: b, labels: {app: web}}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.2.2}\n",
        );
        let all = translate(&r);
        let Some(xw::address::Type::Workload(twin)) = &all.addresses["Kubernetes//Pod/b/a1"].r#type
        else {
            panic!("workload")
        };
        assert!(
            twin.services.is_empty(),
            "a pod with the same name in another namespace is not an endpoint"
        );
        let Some(xw::address::Type::Workload(a1)) = &all.addresses["Kubernetes//Pod/a/a1"].r#type
        else {
            panic!("workload")
        };
        assert_eq!(a1.tunnel_protocol, xw::TunnelProtocol::Hbone as i32);
        let port = &a1.services["a/web.a.svc.cluster.local"].ports[0];
        assert_eq!(
            (port.service_port, port.target_port, port.app_protocol),
            (80, 9090, xw::AppProtocol::Grpc as i32)
        );
        let Some(xw::address::Type::Workload(b1)) = &all.addresses["Kubernetes//Pod/b/b1"].r#type
        else {
            panic!("workload")
        };
        assert_eq!(
            b1.tunnel_protocol,
            xw::TunnelProtocol::None as i32,
            "namespace b is not in the mesh"
        );
        assert!(
            b1.services.is_empty(),
            "a Service selects only its own namespace"
        );
        let Some(xw::address::Type::Service(s)) =
            &all.addresses["a/web.a.svc.cluster.local"].r#type
        else {
            panic!("service")
        };
        assert_eq!(s.addresses[0].address, vec![10, 96, 0, 1]);
    }

    #[test]
    fn l7_rules_fail_closed_at_l4() {
        let r = reg(&[
            ap("allow-get", "a", "{rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [x]}}]}]}"),
            ap("deny-get", "a", "{action: DENY, rules: [{from: [{source: {namespaces: [x]}}], to: [{operation: {methods: [GET]}}]}]}"),
        ]
        .concat());
        let all = translate(&r);
        let allow = &all.authorizations["a/allow-get"];
        assert_eq!(
            allow.rules.len(),
            1,
            "the L7 ALLOW rule is dropped: it can never match"
        );
        let deny = &all.authorizations["a/deny-get"];
        assert_eq!(deny.rules.len(), 1, "the DENY rule stays");
        let clauses = &deny.rules[0].clauses;
        assert_eq!(clauses.len(), 2);
        assert!(
            clauses[1].matches[0] == xsec::Match::default(),
            "its L7 part is widened to match anything"
        );
    }

    #[test]
    fn custom_fails_closed_and_ip_blocks_intersect_at_l4() {
        let r = reg(&[
            ap("ext", "a", "{action: CUSTOM, provider: {name: authz}, rules: [{to: [{operation: {paths: [/admin]}}]}]}"),
            ap("both", "a", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], remoteIpBlocks: [10.1.0.0/16, 192.168.0.0/16]}}]}]}"),
            ap("disjoint", "a", "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], remoteIpBlocks: [192.168.0.0/16]}}]}]}"),
        ]
        .concat());
        let all = translate(&r);
        let ext = &all.authorizations["a/ext"];
        assert_eq!(
            ext.action,
            xsec::Action::Deny as i32,
            "a node proxy cannot ask ext_authz: CUSTOM denies what it matches"
        );
        assert_eq!(ext.rules.len(), 1);
        let both = &all.authorizations["a/both"].rules[0].clauses[0].matches[0];
        assert_eq!(both.source_ips.len(), 1, "the intersection: {both:?}");
        assert_eq!(both.source_ips[0].address, vec![10, 1, 0, 0]);
        assert_eq!(both.source_ips[0].length, 16);
        let disjoint = &all.authorizations["a/disjoint"].rules[0].clauses[0].matches[0];
        assert!(disjoint.source_ips.is_empty());
        assert!(
            disjoint.not_source_ips.iter().any(|a| a.length == 0),
            "no address is in both: nothing matches: {disjoint:?}"
        );
    }

    #[test]
    fn peer_authentication_precedence() {
        let pa = |name: &str, ns: &str, spec: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
            )
        };
        let mesh_strict = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
        let ns_permissive = pa("default", "a", "{mtls: {mode: PERMISSIVE}}");
        let wl = pa(
            "web",
            "a",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}, portLevelMtls: {8080: {mode: STRICT}}}",
        );
        type Case = (String, &'static str, Vec<(u32, &'static str)>);
        let cases: Vec<Case> = vec![
            (String::new(), "PERMISSIVE", vec![]),
            (mesh_strict.clone(), "STRICT", vec![]),
            (
                format!("{mesh_strict}{ns_permissive}"),
                "PERMISSIVE",
                vec![],
            ),
            (
                format!("{mesh_strict}{ns_permissive}{wl}"),
                "PERMISSIVE",
                vec![(8080, "STRICT")],
            ),
        ];
        for (yaml, mode, ports) in cases {
            let r = reg(&yaml);
            let pod = r.pod("a", "a1").expect("pod");
            let (m, p) = effective_mtls(&r, &pod);
            assert_eq!(m, mode, "{yaml}");
            assert_eq!(
                p,
                ports.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
                "{yaml}"
            );
        }
        let r = reg(&format!("{mesh_strict}{ns_permissive}{wl}"));
        let pod = r.pod("a", "a1").expect("pod");
        let deny = peer_authentication_policy(&r, &pod).expect("strict on a port");
        assert_eq!(
            deny.rules[0].clauses[0].matches[0].destination_ports,
            vec![8080]
        );
        let other = r.pod("b", "b1").expect("pod");
        assert_eq!(
            effective_mtls(&r, &other).0,
            "STRICT",
            "mesh-wide STRICT reaches namespace b"
        );
    }
}
