//! L7 translation for sidecars (and later waypoints): per service host, the VirtualService
//! and DestinationRule that bind to it, with every host fully qualified and DestinationRule
//! subsets resolved to workload uids. Per-proxy parts (sourceLabels, sourceNamespace, the
//! `Sidecar` resource's egress scope) are resolved in `for_pod`, as Istio does when it
//! generates a proxy's config.

use std::collections::BTreeMap;

use spar_model::istio::networking::{DestinationRule, VirtualService};
use spar_model::{Kind, Labels, Spec, labels_match};
use spar_xds::l7 as xl7;

use crate::registry::{Pod, Registry};
use crate::translate::{service_host, workload_uid};

/// One service host's L7 config before per-proxy resolution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Host {
    pub namespace: String,
    pub hostname: String,
    pub ports: Vec<xl7::PortProtocol>,
    /// (namespace/name, spec with hosts made fully qualified).
    pub virtual_service: Option<(String, VirtualService)>,
    pub destination_rule: Option<(String, DestinationRule)>,
    pub subsets: BTreeMap<String, xl7::Members>,
    /// An ingress gateway's listener (kind, namespace, name of the gateway): only its pods
    /// get this host.
    pub gateway: Option<(spar_model::Kind, String, String)>,
    /// Routes attached to the waypoint this Service uses ((namespace, name) of the waypoint,
    /// route names, the VirtualService they make): only that waypoint's pods apply them.
    pub waypoint_routes: Option<((String, String), String, VirtualService)>,
}

impl Host {
    /// Whether a pod in `ns` with `labels` is a pod of the waypoint whose routes this host has.
    pub fn for_its_waypoint(&self, ns: &str, labels: &Labels) -> bool {
        self.waypoint_routes
            .as_ref()
            .is_some_and(|((wns, wname), _, _)| {
                wns == ns
                    && labels
                        .get(spar_model::gateway_api::GATEWAY_NAME_LABEL)
                        .is_some_and(|n| n == wname)
            })
    }
}

/// `reviews` in namespace `default` -> `reviews.default.svc.cluster.local`, as Istio reads
/// short names relative to the namespace of the resource that names them.
pub fn fqdn(host: &str, ns: &str, suffix: &str) -> String {
    if host.contains('*') || host.ends_with(suffix) {
        return host.to_string();
    }
    match host.matches('.').count() {
        0 => format!("{host}.{ns}.svc.{suffix}"),
        1 => format!("{host}.svc.{suffix}"),
        _ if host.ends_with(".svc") => format!("{host}.{suffix}"),
        _ => host.to_string(),
    }
}

/// The declared protocol of a port, from `appProtocol` or the name prefix.
pub fn declared_protocol(app: Option<&str>, name: Option<&str>) -> String {
    let from = |p: &str| match p.to_ascii_lowercase().as_str() {
        "http" | "http1" => Some("http"),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some("http2"),
        "grpc" | "grpc-web" => Some("grpc"),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some("tcp"),
        _ => None,
    };
    app.and_then(from)
        .or_else(|| name.and_then(|n| from(n.split('-').next().unwrap_or(n))))
        .unwrap_or("")
        .to_string()
}

fn qualify_vs(vs: &VirtualService, ns: &str, suffix: &str) -> VirtualService {
    let mut vs = vs.clone();
    let q = |h: &mut String| *h = fqdn(h, ns, suffix);
    vs.hosts.iter_mut().for_each(q);
    for r in &mut vs.http {
        r.route.iter_mut().for_each(|d| q(&mut d.destination.host));
        if let Some(m) = r.mirror.as_mut() {
            q(&mut m.host);
        }
        r.mirrors
            .iter_mut()
            .for_each(|m| q(&mut m.destination.host));
    }
    for r in &mut vs.tcp {
        r.route.iter_mut().for_each(|d| q(&mut d.destination.host));
    }
    vs
}

/// Applies to sidecars: no `gateways`, or `mesh` among them.
fn for_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Every service host with its L7 config.
pub fn hosts(reg: &Registry) -> BTreeMap<String, Host> {
    let suffix = reg.mesh.domain_suffix.as_str();
    let mut out: BTreeMap<String, Host> = BTreeMap::new();
    for (r, spec) in reg.services() {
        let hostname = service_host(reg, r);
        out.insert(
            format!("{}/{hostname}", r.namespace()),
            Host {
                namespace: r.namespace().to_string(),
                hostname,
                ports: spec
                    .ports
                    .iter()
                    .map(|p| xl7::PortProtocol {
                        port: p.port,
                        protocol: declared_protocol(p.app_protocol.as_deref(), p.name.as_deref()),
                        name: p.name.clone().unwrap_or_default(),
                    })
                    .collect(),
                ..Default::default()
            },
        );
    }
    for r in reg.of_kind(Kind::ServiceEntry) {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        for h in &se.hosts {
            out.insert(
                format!("{}/{h}", r.namespace()),
                Host {
                    namespace: r.namespace().to_string(),
                    hostname: h.clone(),
                    ports: se
                        .ports
                        .iter()
                        .map(|p| xl7::PortProtocol {
                            port: p.number,
                            protocol: declared_protocol(p.protocol.as_deref(), Some(&p.name)),
                            name: p.name.clone(),
                        })
                        .collect(),
                    ..Default::default()
                },
            );
        }
    }
    // The oldest-named VirtualService and DestinationRule per host win (stable order).
    for r in reg.of_kind(Kind::VirtualService) {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !for_mesh(&vs.gateways) {
            continue;
        }
        let vs = qualify_vs(vs, r.namespace(), suffix);
        for h in out.values_mut() {
            if h.virtual_service.is_none() && vs.hosts.contains(&h.hostname) {
                h.virtual_service = Some((format!("{}/{}", r.namespace(), r.name()), vs.clone()));
            }
        }
    }
    // Ingress gateways' listeners, one host each.
    out.extend(super::ingress::hosts(reg));
    // Gateway API routes attached to a Service (GAMMA) win over its VirtualService.
    for (key, names, vs) in super::gamma::virtual_services(reg) {
        if let Some(h) = out.get_mut(&key) {
            h.virtual_service = Some((names, vs));
        }
    }
    // Routes attached to a waypoint Gateway, for its pods only.
    for (key, wp, names, vs) in super::gamma::waypoint_virtual_services(reg) {
        if let Some(h) = out.get_mut(&key) {
            h.waypoint_routes = Some((wp, names, vs));
        }
    }
    for r in reg.of_kind(Kind::DestinationRule) {
        let Spec::DestinationRule(dr) = &r.spec else {
            continue;
        };
        let host = fqdn(&dr.host, r.namespace(), suffix);
        for h in out.values_mut() {
            if h.destination_rule.is_none() && h.hostname == host {
                let mut dr = dr.clone();
                dr.host = host.clone();
                h.destination_rule = Some((format!("{}/{}", r.namespace(), r.name()), *dr));
            }
        }
    }
    for (r, spec) in reg.services() {
        let key = format!("{}/{}", r.namespace(), service_host(reg, r));
        let Some(h) = out.get_mut(&key) else { continue };
        let Some((_, dr)) = &h.destination_rule else {
            continue;
        };
        let subsets = subsets(reg, r, spec, dr);
        h.subsets = subsets;
    }
    out
}

/// A DestinationRule's subsets resolved to the uids of the Service's endpoints.
pub(crate) fn subsets(
    reg: &Registry,
    svc: &spar_model::Resource,
    spec: &spar_model::k8s::ServiceSpec,
    dr: &DestinationRule,
) -> BTreeMap<String, xl7::Members> {
    dr.subsets
        .iter()
        .map(|s| {
            let uids = reg
                .endpoints(svc, spec)
                .filter(|p| labels_match(&s.labels, p.labels))
                .map(|p| workload_uid(reg, &p))
                .collect();
            (s.name.clone(), xl7::Members { uids })
        })
        .collect()
}

/// The L7 resources one sidecar receives: hosts within its `Sidecar` egress scope, with
/// matches on the source resolved for this pod.
pub fn for_pod(
    reg: &Registry,
    all: &BTreeMap<String, Host>,
    pod: &Pod<'_>,
) -> BTreeMap<String, xl7::ServiceRoutes> {
    let scope = egress_scope(reg, pod);
    all.iter()
        .filter(|(_, h)| in_scope(&scope, pod.namespace, &h.namespace, &h.hostname))
        .filter(|(_, h)| super::ingress::visible(reg, h, pod))
        .map(|(k, h)| (k.clone(), resolve(h, pod.namespace, pod.labels)))
        .collect()
}

pub(crate) fn resolve(h: &Host, ns: &str, labels: &Labels) -> xl7::ServiceRoutes {
    let chosen = match &h.waypoint_routes {
        Some((_, name, vs)) if h.for_its_waypoint(ns, labels) => Some((name, vs)),
        _ => h.virtual_service.as_ref().map(|(n, v)| (n, v)),
    };
    let vs = chosen.map(|(name, vs)| {
        let mut vs = vs.clone();
        vs.http
            .retain_mut(|r| for_source(&mut r.matches, ns, labels));
        vs.tcp
            .retain_mut(|r| for_source(&mut r.matches, ns, labels));
        (name.clone(), vs)
    });
    let json = |v: &dyn erased::Json| v.json();
    xl7::ServiceRoutes {
        namespace: h.namespace.clone(),
        hostname: h.hostname.clone(),
        ports: h.ports.clone(),
        virtual_service: vs.as_ref().map(|(_, v)| json(v)).unwrap_or_default(),
        virtual_service_name: vs.map(|(n, _)| n).unwrap_or_default(),
        destination_rule: h
            .destination_rule
            .as_ref()
            .map(|(_, d)| json(d))
            .unwrap_or_default(),
        destination_rule_name: h
            .destination_rule
            .as_ref()
            .map(|(n, _)| n.clone())
            .unwrap_or_default(),
        subsets: h.subsets.clone(),
    }
}

/// The source-side fields of a match (HTTP or L4), resolved per proxy.
trait SourceMatch {
    fn source(&mut self) -> (&mut Labels, &mut Option<String>, &mut Vec<String>);
}

impl SourceMatch for spar_model::istio::networking::HttpMatchRequest {
    fn source(&mut self) -> (&mut Labels, &mut Option<String>, &mut Vec<String>) {
        (
            &mut self.source_labels,
            &mut self.source_namespace,
            &mut self.gateways,
        )
    }
}

impl SourceMatch for spar_model::istio::networking::L4MatchAttributes {
    fn source(&mut self) -> (&mut Labels, &mut Option<String>, &mut Vec<String>) {
        (
            &mut self.source_labels,
            &mut self.source_namespace,
            &mut self.gateways,
        )
    }
}

/// Keep the matches that apply to a pod in `ns` with `labels`, with their source conditions
/// cleared; false when a route had matches and none apply (the route is dropped).
fn for_source<M: SourceMatch>(matches: &mut Vec<M>, ns: &str, labels: &Labels) -> bool {
    let had = !matches.is_empty();
    matches.retain_mut(|m| {
        let (sl, sn, gw) = m.source();
        labels_match(sl, labels) && sn.as_deref().is_none_or(|s| s == ns) && for_mesh(gw)
    });
    for m in matches.iter_mut() {
        let (sl, sn, gw) = m.source();
        sl.clear();
        *sn = None;
        gw.clear();
    }
    !had || !matches.is_empty()
}

mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// `(namespace pattern, host pattern)` pairs from the pod's `Sidecar` egress hosts; `None`:
/// no Sidecar applies and every host is in scope.
pub(crate) fn egress_scope(reg: &Registry, pod: &Pod<'_>) -> Option<Vec<(String, String)>> {
    let sidecars: Vec<_> = reg
        .of_kind(Kind::Sidecar)
        .filter_map(|r| match &r.spec {
            Spec::Sidecar(s) => Some((r, s)),
            _ => None,
        })
        .collect();
    // A selecting Sidecar in the pod's namespace, then a namespace-wide one, then the root's.
    let chosen = sidecars
        .iter()
        .find(|(r, s)| {
            r.namespace() == pod.namespace
                && s.workload_selector
                    .as_ref()
                    .is_some_and(|w| labels_match(&w.labels, pod.labels))
        })
        .or_else(|| {
            sidecars
                .iter()
                .find(|(r, s)| r.namespace() == pod.namespace && s.workload_selector.is_none())
        })
        .or_else(|| {
            sidecars.iter().find(|(r, s)| {
                r.namespace() == reg.mesh.root_namespace && s.workload_selector.is_none()
            })
        })?;
    Some(
        chosen
            .1
            .egress
            .iter()
            .flat_map(|e| &e.hosts)
            .filter_map(|h| {
                let (ns, host) = h.split_once('/')?;
                Some((ns.to_string(), host.to_string()))
            })
            .collect(),
    )
}

pub(crate) fn in_scope(
    scope: &Option<Vec<(String, String)>>,
    pod_ns: &str,
    ns: &str,
    host: &str,
) -> bool {
    let Some(scope) = scope else { return true };
    scope.iter().any(|(n, h)| {
        let ns_ok = n == "*" || (n == "." && ns == pod_ns) || n == ns;
        let host_ok = h == "*"
            || h == host
            || h.strip_prefix('*')
                .is_some_and(|suffix| host.ends_with(suffix));
        ns_ok && host_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MeshSettings;
    use crate::translate::{ProxyView, proxy_config, translate};

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}, {name: tcp-db, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: other}
spec: {selector: {app: cart}, ports: [{name: grpc-api, port: 7000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: r1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: r2, namespace: shop, labels: {app: reviews, version: v2}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: shop, labels: {app: admin}}
spec: {nodeName: n1}
status: {podIP: 10.0.1.4}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: admin}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow, namespace: shop}
spec:
  workloadSelector: {labels: {app: web}}
  egress: [{hosts: [./*]}]
";

    fn view(reg: &Registry, pod: &str) -> BTreeMap<String, xl7::ServiceRoutes> {
        let all = translate(reg);
        proxy_config(
            reg,
            &all,
            &ProxyView::Workload {
                namespace: "shop".into(),
                name: pod.into(),
            },
        )
        .l7
    }

    #[test]
    fn per_pod_l7_config() {
        let l = spar_model::load_str("t", MESH);
        assert!(!l.has_errors(), "{:?}", l.problems);
        let reg = Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        );
        let key = "shop/reviews.shop.svc.cluster.local";
        // The admin pod keeps its sourceLabels route, resolved (no sourceLabels left).
        let admin = view(&reg, "admin");
        let r = &admin[key];
        assert_eq!(r.virtual_service_name, "shop/reviews");
        let vs: serde_json::Value = serde_json::from_str(&r.virtual_service).expect("json");
        assert_eq!(vs["http"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            vs["http"][0]["match"][0]["sourceLabels"],
            serde_json::json!({})
        );
        assert_eq!(
            vs["http"][1]["route"][0]["destination"]["host"],
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            r.subsets["v1"].uids,
            vec!["Kubernetes//Pod/shop/r1".to_string()]
        );
        assert_eq!(
            r.subsets["v2"].uids,
            vec!["Kubernetes//Pod/shop/r2".to_string()]
        );
        let ports: Vec<(u32, &str)> = r
            .ports
            .iter()
            .map(|p| (p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, vec![(9080, "http"), (5432, "tcp")]);
        // Another pod: the route for admin's labels is gone; other namespaces stay in scope.
        let r2 = view(&reg, "r2");
        let vs: serde_json::Value = serde_json::from_str(&r2[key].virtual_service).expect("json");
        assert_eq!(vs["http"].as_array().map(Vec::len), Some(1));
        assert!(r2.contains_key("other/cart.other.svc.cluster.local"));
        // The web pod's Sidecar limits it to its own namespace.
        let web = view(&reg, "web");
        assert!(web.contains_key(key));
        assert!(!web.contains_key("other/cart.other.svc.cluster.local"));
    }

    #[test]
    fn short_names_qualify_relative_to_the_namespace() {
        let s = "cluster.local";
        for (h, want) in [
            ("reviews", "reviews.default.svc.cluster.local"),
            ("reviews.prod", "reviews.prod.svc.cluster.local"),
            ("reviews.prod.svc", "reviews.prod.svc.cluster.local"),
            (
                "reviews.default.svc.cluster.local",
                "reviews.default.svc.cluster.local",
            ),
            ("api.example.com", "api.example.com"),
            ("*.example.com", "*.example.com"),
        ] {
            assert_eq!(fqdn(h, "default", s), want, "{h}");
        }
    }

    #[test]
    fn protocols_from_app_protocol_then_name() {
        for (app, name, want) in [
            (Some("grpc"), Some("tcp-x"), "grpc"),
            (None, Some("http-web"), "http"),
            (None, Some("http2"), "http2"),
            (None, Some("tcp-db"), "tcp"),
            (None, Some("web"), ""),
            (None, None, ""),
        ] {
            assert_eq!(declared_protocol(app, name), want);
        }
    }

    #[test]
    fn scope_patterns() {
        let scope = Some(vec![
            (".".to_string(), "*".to_string()),
            ("istio-system".to_string(), "*".to_string()),
            (
                "*".to_string(),
                "ratings.other.svc.cluster.local".to_string(),
            ),
        ]);
        for (ns, host, want) in [
            ("default", "reviews.default.svc.cluster.local", true),
            ("istio-system", "x.istio-system.svc.cluster.local", true),
            ("other", "ratings.other.svc.cluster.local", true),
            ("other", "details.other.svc.cluster.local", false),
        ] {
            assert_eq!(in_scope(&scope, "default", ns, host), want, "{ns}/{host}");
        }
        assert!(in_scope(&None, "default", "x", "y"));
    }
}
