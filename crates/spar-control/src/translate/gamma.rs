//! Gateway API routes for the mesh (GAMMA): an `HTTPRoute`, `GRPCRoute` or `TCPRoute` whose
//! `parentRefs` name a Service routes that Service's traffic, in sidecars and at waypoints
//! alike. Each is
//! translated into the VirtualService the L7 engine already runs (as istiod does): matches,
//! weighted `backendRefs` (to other Services too), header modifiers, redirects, URL
//! rewrites, mirrors, timeouts and retries. A `backendRef` to a Service that does not exist
//! answers 500, as the Gateway API specifies. When a Service has both, its HTTPRoutes win
//! over a VirtualService.
//!
//! Routes whose `parentRefs` name a waypoint `Gateway` (class `istio-waypoint`; from another
//! namespace only where its listener's `allowedRoutes` admits it) route every Service that
//! uses that waypoint (narrowed by the route's `hostnames`), and only at that waypoint:
//! sidecars and other waypoints do not see them. At the waypoint, a Service's own Gateway API
//! routes come first, then the waypoint's (`waypoint_virtual_services`); like any Gateway API
//! routes, together they win over the Service's VirtualService.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use spar_model::gateway_api::{
    BackendRef, GrpcRoute, HttpRoute, HttpRouteFilter, ParentReference, PathModifier,
};
use spar_model::istio::networking::VirtualService;
use spar_model::{Kind, Resource, Spec};

use super::l7::fqdn;
use crate::registry::Registry;

/// The Service hosts (`namespace/hostname`) a route's `parentRefs` attach it to, each with
/// the port it is limited to, if any.
fn parents(reg: &Registry, r: &Resource, refs: &[ParentReference]) -> Vec<(String, Option<u32>)> {
    refs.iter()
        .filter(|p| {
            p.kind.as_deref() == Some("Service")
                && matches!(p.group.as_deref(), None | Some("") | Some("core"))
        })
        .map(|p| {
            let ns = p.namespace.as_deref().unwrap_or(r.namespace());
            (
                format!("{ns}/{}.{ns}.svc.{}", p.name, reg.mesh.domain_suffix),
                p.port,
            )
        })
        .collect()
}

/// A backendRef as a VirtualService destination; `None` (answered 500 for HTTP, as a missing
/// backend) when no such Service exists, or when it is in another namespace that has no
/// ReferenceGrant letting this route name it.
pub(crate) fn backend(reg: &Registry, r: &Resource, b: &BackendRef) -> Option<Value> {
    let ns = b.namespace.as_deref().unwrap_or(r.namespace());
    reg.service(ns, &b.name)?;
    if !granted(reg, r, ns, &b.name) {
        return None;
    }
    let mut d = json!({"host": fqdn(&b.name, ns, &reg.mesh.domain_suffix)});
    if let Some(p) = b.port {
        d["port"] = json!({"number": p});
    }
    Some(d)
}

/// Whether route `r` may name Service `ns/name`: its own namespace's always; another's only
/// when a ReferenceGrant there lets `r`'s kind from `r`'s namespace name Services (all, or
/// this one), as the Gateway API requires.
fn granted(reg: &Registry, r: &Resource, ns: &str, name: &str) -> bool {
    r.namespace() == ns
        || reg.of_kind(Kind::ReferenceGrant).any(|g| {
            let Spec::ReferenceGrant(grant) = &g.spec else {
                return false;
            };
            g.namespace() == ns
                && grant.from.iter().any(|f| {
                    f.group == "gateway.networking.k8s.io"
                        && f.kind == r.kind.name()
                        && f.namespace == r.namespace()
                })
                && grant.to.iter().any(|t| {
                    matches!(t.group.as_str(), "" | "core")
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
}

fn headers(m: &spar_model::gateway_api::HeaderModifier) -> Value {
    let pairs = |l: &[spar_model::gateway_api::HeaderValue]| -> serde_json::Map<String, Value> {
        l.iter()
            .map(|h| (h.name.clone(), Value::String(h.value.clone())))
            .collect()
    };
    json!({"set": pairs(&m.set), "add": pairs(&m.add), "remove": m.remove})
}

fn path_value(p: &PathModifier) -> Option<&String> {
    p.replace_full_path
        .as_ref()
        .or(p.replace_prefix_match.as_ref())
}

/// Filters onto the VirtualService route `out`.
fn filters(reg: &Registry, r: &Resource, fs: &[HttpRouteFilter], out: &mut Value) {
    for f in fs {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                if let Some(m) = &f.request_header_modifier {
                    out["headers"]["request"] = headers(m);
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(m) = &f.response_header_modifier {
                    out["headers"]["response"] = headers(m);
                }
            }
            "RequestRedirect" => {
                if let Some(rr) = &f.request_redirect {
                    let mut red = json!({});
                    if let Some(s) = &rr.scheme {
                        red["scheme"] = json!(s);
                    }
                    if let Some(h) = &rr.hostname {
                        red["authority"] = json!(h);
                    }
                    if let Some(p) = rr.path.as_ref().and_then(path_value) {
                        red["uri"] = json!(p);
                    }
                    if let Some(p) = rr.port {
                        red["port"] = json!(p);
                    }
                    red["redirectCode"] = json!(rr.status_code.unwrap_or(302));
                    out["redirect"] = red;
                }
            }
            "URLRewrite" => {
                if let Some(u) = &f.url_rewrite {
                    let mut rw = json!({});
                    if let Some(h) = &u.hostname {
                        rw["authority"] = json!(h);
                    }
                    if let Some(p) = u.path.as_ref().and_then(path_value) {
                        rw["uri"] = json!(p);
                    }
                    out["rewrite"] = rw;
                }
            }
            "RequestMirror" => {
                if let Some(m) = &f.request_mirror
                    && let Some(d) = backend(reg, r, &m.backend_ref)
                {
                    let pct = match (&m.fraction, m.percent) {
                        (Some(fr), _) => {
                            f64::from(fr.numerator) * 100.0
                                / f64::from(fr.denominator.unwrap_or(100).max(1))
                        }
                        (None, Some(p)) => f64::from(p),
                        (None, None) => 100.0,
                    };
                    let mirrors = out["mirrors"].as_array().cloned().unwrap_or_default();
                    let mut mirrors = mirrors;
                    mirrors.push(json!({"destination": d, "percentage": {"value": pct}}));
                    out["mirrors"] = Value::Array(mirrors);
                }
            }
            _ => {}
        }
    }
}

/// `backendRefs` as weighted destinations; a missing Service answers 500.
fn routes(reg: &Registry, r: &Resource, backends: &[BackendRef], out: &mut Value) {
    if out.get("redirect").is_some() {
        return;
    }
    let mut route = Vec::new();
    for b in backends {
        match backend(reg, r, b) {
            Some(d) => route.push(json!({"destination": d, "weight": b.weight.unwrap_or(1)})),
            None => {
                out["directResponse"] = json!({"status": 500});
                return;
            }
        }
    }
    if route.is_empty() {
        out["directResponse"] = json!({"status": 500});
    } else {
        out["route"] = Value::Array(route);
    }
}

/// A literal inside a regular expression.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn value_match(kind: Option<&str>, value: &str) -> Value {
    match kind {
        Some("RegularExpression") => json!({"regex": value}),
        _ => json!({"exact": value}),
    }
}

/// An HTTPRoute's rules as VirtualService `http` routes (also for ingress gateways).
pub fn http_rules_of(
    reg: &Registry,
    r: &Resource,
    hr: &HttpRoute,
    port: Option<u32>,
) -> Vec<Value> {
    http_rules(reg, r, hr, port)
}

fn http_rules(reg: &Registry, r: &Resource, hr: &HttpRoute, port: Option<u32>) -> Vec<Value> {
    hr.rules
        .iter()
        .map(|rule| {
            let mut matches: Vec<Value> = rule
                .matches
                .iter()
                .map(|m| {
                    let mut v = json!({});
                    if let Some(p) = &m.path {
                        let value = p.value.clone().unwrap_or_else(|| "/".into());
                        v["uri"] = match p.kind.as_deref() {
                            Some("Exact") => json!({"exact": value}),
                            Some("RegularExpression") => json!({"regex": value}),
                            _ => json!({"prefix": value}),
                        };
                    }
                    for h in &m.headers {
                        v["headers"][h.name.to_ascii_lowercase()] =
                            value_match(h.kind.as_deref(), &h.value);
                    }
                    for q in &m.query_params {
                        v["queryParams"][&q.name] = value_match(q.kind.as_deref(), &q.value);
                    }
                    if let Some(method) = &m.method {
                        v["method"] = json!({"exact": method});
                    }
                    if let Some(p) = port {
                        v["port"] = json!(p);
                    }
                    v
                })
                .collect();
            if matches.is_empty()
                && let Some(p) = port
            {
                matches.push(json!({"port": p}));
            }
            let mut out = json!({});
            if !matches.is_empty() {
                out["match"] = Value::Array(matches);
            }
            if let Some(n) = &rule.name {
                out["name"] = json!(n);
            }
            filters(reg, r, &rule.filters, &mut out);
            routes(reg, r, &rule.backend_refs, &mut out);
            if let Some(t) = &rule.timeouts {
                if let Some(req) = &t.request {
                    out["timeout"] = json!(req);
                }
                if let Some(b) = &t.backend_request {
                    out["retries"]["perTryTimeout"] = json!(b);
                }
            }
            if let Some(rt) = &rule.retry {
                out["retries"]["attempts"] = json!(rt.attempts.unwrap_or(1));
                if !rt.codes.is_empty() {
                    let on: Vec<String> = rt.codes.iter().map(u32::to_string).collect();
                    out["retries"]["retryOn"] = json!(on.join(","));
                }
            }
            out
        })
        .collect()
}

fn grpc_rules(reg: &Registry, r: &Resource, gr: &GrpcRoute, port: Option<u32>) -> Vec<Value> {
    gr.rules
        .iter()
        .map(|rule| {
            let matches: Vec<Value> = rule
                .matches
                .iter()
                .map(|m| {
                    let mut v = json!({});
                    if let Some(mm) = &m.method {
                        // gRPC's path is /package.Service/Method.
                        v["uri"] = match (mm.service.as_deref(), mm.method.as_deref()) {
                            (Some(s), Some(me)) => json!({"exact": format!("/{s}/{me}")}),
                            (Some(s), None) => json!({"prefix": format!("/{s}/")}),
                            (None, Some(me)) => json!({"regex": format!("/[^/]+/{}", escape(me))}),
                            (None, None) => json!({"prefix": "/"}),
                        };
                    }
                    for h in &m.headers {
                        v["headers"][h.name.to_ascii_lowercase()] =
                            value_match(h.kind.as_deref(), &h.value);
                    }
                    if let Some(p) = port {
                        v["port"] = json!(p);
                    }
                    v
                })
                .collect();
            let mut out = json!({});
            if !matches.is_empty() {
                out["match"] = Value::Array(matches);
            }
            filters(reg, r, &rule.filters, &mut out);
            routes(reg, r, &rule.backend_refs, &mut out);
            out
        })
        .collect()
}

/// A route's rules for one parent port.
type RulesFor<'a> = Box<dyn Fn(Option<u32>) -> Vec<Value> + 'a>;

/// Routes' names with their HTTP (and gRPC) rules and their TCP rules.
#[derive(Default, Clone)]
struct Routes {
    names: Vec<String>,
    http: Vec<Value>,
    tcp: Vec<Value>,
}

impl Routes {
    fn add(&mut self, other: &Routes) {
        self.names.extend(other.names.iter().cloned());
        self.http.extend(other.http.iter().cloned());
        self.tcp.extend(other.tcp.iter().cloned());
    }

    /// The VirtualService these rules make for `hostname`.
    fn virtual_service(&self, hostname: &str) -> Option<(String, VirtualService)> {
        let names = self.names.join(",");
        let vs = json!({"hosts": [hostname], "http": self.http, "tcp": self.tcp});
        match serde_json::from_value::<VirtualService>(vs) {
            Ok(vs) => Some((names, vs)),
            Err(e) => {
                tracing::warn!(routes = %names, error = %e, "cannot translate Gateway API routes");
                None
            }
        }
    }
}

/// A route attached to a waypoint Gateway: the hostnames it is limited to (empty: every
/// Service of the waypoint) and its rules.
struct WaypointRoute {
    hostnames: Vec<String>,
    routes: Routes,
}

/// Gateway API routes, in name order: those attached to Services by host key, and those
/// attached to waypoint Gateways by the waypoint's (namespace, name).
type Attached = (
    BTreeMap<String, Routes>,
    BTreeMap<(String, String), Vec<WaypointRoute>>,
);

fn attached(reg: &Registry) -> Attached {
    let (mut by_host, mut by_waypoint) = Attached::default();
    let mut routes: Vec<&Resource> = reg
        .of_kind(Kind::HttpRoute)
        .chain(reg.of_kind(Kind::GrpcRoute))
        .chain(reg.of_kind(Kind::TcpRoute))
        .collect();
    routes.sort_by_key(|r| (r.namespace().to_string(), r.name().to_string()));
    for r in routes {
        let (refs, hostnames, rules): (&[ParentReference], &[String], RulesFor<'_>) = match &r.spec
        {
            Spec::HttpRoute(h) => (
                &h.parent_refs,
                &h.hostnames,
                Box::new(move |p| http_rules(reg, r, h, p)),
            ),
            Spec::GrpcRoute(g) => (
                &g.parent_refs,
                &g.hostnames,
                Box::new(move |p| grpc_rules(reg, r, g, p)),
            ),
            Spec::TcpRoute(t) => (
                &t.parent_refs,
                &[],
                Box::new(move |p| tcp_rules(reg, r, t, p)),
            ),
            _ => continue,
        };
        let name = format!("{}/{}", r.namespace(), r.name());
        let one = |port: Option<u32>| {
            let (http, tcp) = match r.kind {
                Kind::TcpRoute => (Vec::new(), rules(port)),
                _ => (rules(port), Vec::new()),
            };
            Routes {
                names: vec![name.clone()],
                http,
                tcp,
            }
        };
        for (host, port) in parents(reg, r, refs) {
            by_host.entry(host).or_default().add(&one(port));
        }
        for wp in waypoint_parents(reg, r, refs) {
            by_waypoint.entry(wp).or_default().push(WaypointRoute {
                hostnames: hostnames.to_vec(),
                routes: one(None),
            });
        }
    }
    (by_host, by_waypoint)
}

/// The waypoint Gateways (class `istio-waypoint`) a route's `parentRefs` name.
fn waypoint_parents(
    reg: &Registry,
    r: &Resource,
    refs: &[ParentReference],
) -> Vec<(String, String)> {
    refs.iter()
        .filter(|p| {
            matches!(p.kind.as_deref(), None | Some("Gateway"))
                && matches!(p.group.as_deref(), None | Some("gateway.networking.k8s.io"))
        })
        .filter_map(|p| {
            let ns = p.namespace.as_deref().unwrap_or(r.namespace());
            let gw = super::waypoint::gateway(reg, ns, &p.name)?;
            let Spec::K8sGateway(g) = &gw.spec else {
                return None;
            };
            // A route of another namespace attaches only where the listener's
            // `allowedRoutes` admits that namespace (Gateway API's default: the same only).
            let admitted = ns == r.namespace()
                || super::waypoint::allows_from(g, reg.namespace_labels(r.namespace()));
            admitted.then(|| (ns.to_string(), p.name.clone()))
        })
        .collect()
}

/// Whether a route's `hostnames` admit the Service `name.ns` (any name of it, or a
/// `*.suffix` wildcard of its full name); no hostnames admit every Service.
fn admits(hostnames: &[String], name: &str, ns: &str, suffix: &str) -> bool {
    let fqdn = format!("{name}.{ns}.svc.{suffix}");
    hostnames.is_empty()
        || hostnames.iter().any(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(rest) => fqdn.ends_with(rest),
                None => {
                    h == fqdn
                        || h == name
                        || h == format!("{name}.{ns}")
                        || h == format!("{name}.{ns}.svc")
                }
            }
        })
}

/// Every Service host that Gateway API routes attach to, with the VirtualService they make
/// (routes in name order; their rules one after another).
pub fn virtual_services(reg: &Registry) -> Vec<(String, String, VirtualService)> {
    attached(reg)
        .0
        .into_iter()
        .filter_map(|(key, routes)| {
            let hostname = key.split_once('/').map(|(_, h)| h.to_string())?;
            let (names, vs) = routes.virtual_service(&hostname)?;
            Some((key, names, vs))
        })
        .collect()
}

/// For every Service whose waypoint has routes attached to it: the host key, the waypoint's
/// (namespace, name) and the VirtualService its pods apply to the Service's traffic (the
/// Service's own routes first, then the waypoint's that admit it).
pub fn waypoint_virtual_services(
    reg: &Registry,
) -> Vec<(String, (String, String), String, VirtualService)> {
    let (by_host, by_waypoint) = attached(reg);
    if by_waypoint.is_empty() {
        return Vec::new();
    }
    let suffix = reg.mesh.domain_suffix.as_str();
    let mut out = Vec::new();
    for (svc, _) in reg.services() {
        let Some(wp) = super::waypoint::waypoint_of(
            reg,
            svc.namespace(),
            &svc.meta.labels,
            super::waypoint::For::Service,
        ) else {
            continue;
        };
        let Some(wroutes) = by_waypoint.get(&wp) else {
            continue;
        };
        let (name, ns) = (svc.name(), svc.namespace());
        let hostname = format!("{name}.{ns}.svc.{suffix}");
        let key = format!("{ns}/{hostname}");
        let mut routes = by_host.get(&key).cloned().unwrap_or_default();
        let before = routes.names.len();
        for w in wroutes
            .iter()
            .filter(|w| admits(&w.hostnames, name, ns, suffix))
        {
            routes.add(&w.routes);
        }
        if routes.names.len() == before {
            continue;
        }
        if let Some((names, vs)) = routes.virtual_service(&hostname) {
            out.push((key, wp, names, vs));
        }
    }
    out
}

/// A TCPRoute's rules as VirtualService `tcp` routes (weighted backendRefs, on the port).
fn tcp_rules(
    reg: &Registry,
    r: &Resource,
    t: &spar_model::gateway_api::TcpRoute,
    port: Option<u32>,
) -> Vec<Value> {
    t.rules
        .iter()
        .map(|rule| {
            let route: Vec<Value> = rule
                .backend_refs
                .iter()
                .filter_map(|b| {
                    backend(reg, r, b)
                        .map(|d| json!({"destination": d, "weight": b.weight.unwrap_or(1)}))
                })
                .collect();
            let mut out = json!({"route": route});
            if let Some(p) = port {
                out["match"] = json!([{"port": p}]);
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_registry as reg;
    use spar_model::Labels;
    use spar_model::gateway_api::GATEWAY_NAME_LABEL;

    #[test]
    fn routes_on_a_service_become_its_virtual_service() {
        let r = reg("
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: a}
spec: {selector: {app: echo}, ports: [{name: tcp, port: 9000}, {name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: a}
spec: {selector: {app: echo, version: v2}, ports: [{name: tcp, port: 9000}]}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: echo-tcp, namespace: a}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 9000}]
  rules: [{backendRefs: [{name: echo-v2, port: 9000}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-http, namespace: a}
spec:
  parentRefs: [{group: '', kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - backendRefs: [{name: missing, port: 80}]
");
        let all = virtual_services(&r);
        assert_eq!(all.len(), 1, "{all:?}");
        let (key, names, vs) = &all[0];
        assert_eq!(key, "a/echo.a.svc.cluster.local");
        assert_eq!(names, "a/echo-http,a/echo-tcp");
        assert_eq!(vs.tcp.len(), 1);
        assert_eq!(
            vs.tcp[0].route[0].destination.host,
            "echo-v2.a.svc.cluster.local"
        );
        assert_eq!(vs.http.len(), 2);
        assert_eq!(
            vs.http[0].route[0].destination.host,
            "echo-v2.a.svc.cluster.local"
        );
        assert_eq!(
            vs.http[1].direct_response.as_ref().map(|d| d.status),
            Some(500),
            "a missing backend answers 500"
        );
    }

    #[test]
    fn routes_on_a_waypoint_route_its_services_at_that_waypoint_only() {
        let r = reg("
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: a}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: a}
spec: {selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: a}
spec: {selector: {app: echo, version: v2}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: skips, namespace: a, labels: {istio.io/use-waypoint: none}}
spec: {selector: {app: echo}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all, namespace: a}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: only-echo, namespace: a}
spec:
  parentRefs: [{kind: Gateway, name: wp}]
  hostnames: [echo.a.svc.cluster.local]
  rules: [{matches: [{path: {type: PathPrefix, value: /x}}], backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: own, namespace: a}
spec:
  parentRefs: [{group: '', kind: Service, name: echo}]
  rules: [{matches: [{path: {type: PathPrefix, value: /own}}], backendRefs: [{name: echo, port: 80}]}]
");
        let hosts = crate::translate::l7::hosts(&r);
        let names = |h: &str| {
            hosts[h]
                .waypoint_routes
                .as_ref()
                .map(|(wp, names, vs)| (wp.clone(), names.clone(), vs.http.len()))
        };
        let wp = ("a".to_string(), "wp".to_string());
        // The Service's own route first, then the waypoint's that admit it.
        assert_eq!(
            names("a/echo.a.svc.cluster.local"),
            Some((wp.clone(), "a/own,a/all,a/only-echo".into(), 3))
        );
        assert_eq!(
            names("a/echo-v2.a.svc.cluster.local"),
            Some((wp, "a/all".into(), 1)),
            "hostnames narrow a route to the Services they name"
        );
        assert_eq!(
            names("a/skips.a.svc.cluster.local"),
            None,
            "a Service that skips the waypoint"
        );
        // Only the waypoint's pods apply them; everyone else sees the Service's own routes.
        let h = &hosts["a/echo.a.svc.cluster.local"];
        let waypoint_pod: Labels = [(GATEWAY_NAME_LABEL.into(), "wp".into())].into();
        let seen = |ns: &str, labels: &Labels| {
            crate::translate::l7::resolve(h, ns, labels).virtual_service_name
        };
        assert_eq!(seen("a", &waypoint_pod), "a/own,a/all,a/only-echo");
        assert_eq!(seen("a", &Labels::default()), "a/own");
        assert_eq!(seen("b", &waypoint_pod), "a/own", "another namespace's wp");
        let item = crate::encoded::L7Item::new(h.clone());
        assert_ne!(
            item.for_pod("a", &waypoint_pod),
            item.for_pod("a", &Labels::default())
        );
    }

    #[test]
    fn a_backend_in_another_namespace_needs_a_reference_grant() {
        let yaml = |grant: &str| {
            format!(
                "
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: a}}
spec: {{selector: {{app: echo}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: b}}
spec: {{selector: {{app: other}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-b, namespace: a}}
spec:
  parentRefs: [{{group: '', kind: Service, name: echo}}]
  rules: [{{backendRefs: [{{name: other, namespace: b, port: 80}}]}}]
{grant}"
            )
        };
        let routed_to = |grant: &str| {
            let all = virtual_services(&reg(&yaml(grant)));
            let http = &all[0].2.http[0];
            match &http.direct_response {
                Some(d) => format!("{}", d.status),
                None => http.route[0].destination.host.clone(),
            }
        };
        assert_eq!(routed_to(""), "500", "no grant: as a missing backend");
        let grant = |from_kind: &str, from_ns: &str, to_name: &str| {
            format!(
                "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: g, namespace: b}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]
  to: [{{group: '', kind: Service{to_name}}}]
"
            )
        };
        assert_eq!(
            routed_to(&grant("HTTPRoute", "a", "")),
            "other.b.svc.cluster.local"
        );
        assert_eq!(
            routed_to(&grant("HTTPRoute", "a", ", name: other")),
            "other.b.svc.cluster.local"
        );
        assert_eq!(routed_to(&grant("HTTPRoute", "a", ", name: x")), "500");
        assert_eq!(routed_to(&grant("GRPCRoute", "a", "")), "500");
        assert_eq!(routed_to(&grant("HTTPRoute", "c", "")), "500");
    }

    #[test]
    fn a_route_of_another_namespace_attaches_to_a_waypoint_only_where_it_is_allowed() {
        let yaml = |allowed: &str| {
            format!(
                "
apiVersion: v1
kind: Namespace
metadata: {{name: a, labels: {{istio.io/use-waypoint: wp}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: b, labels: {{team: b}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: a}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE{allowed}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: a}}
spec: {{selector: {{app: echo}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: thief, namespace: b}}
spec: {{selector: {{app: thief}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: hijack, namespace: b}}
spec:
  parentRefs: [{{kind: Gateway, name: wp, namespace: a}}]
  rules: [{{backendRefs: [{{name: thief, port: 80}}]}}]
"
            )
        };
        let attached = |allowed: &str| {
            crate::translate::l7::hosts(&reg(&yaml(allowed)))["a/echo.a.svc.cluster.local"]
                .waypoint_routes
                .is_some()
        };
        assert!(
            !attached(""),
            "the default admits the Gateway's namespace only"
        );
        assert!(!attached(", allowedRoutes: {namespaces: {from: Same}}"));
        assert!(attached(", allowedRoutes: {namespaces: {from: All}}"));
        assert!(attached(
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: b}}}}"
        ));
        assert!(!attached(
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: c}}}}"
        ));
    }
}
