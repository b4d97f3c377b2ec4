//! Gateway API routes for the mesh (GAMMA): an `HTTPRoute`, `GRPCRoute` or `TCPRoute` whose
//! `parentRefs` name a Service routes that Service's traffic, in sidecars and at waypoints
//! alike. Each is
//! translated into the VirtualService the L7 engine already runs (as istiod does): matches,
//! weighted `backendRefs` (to other Services too), header modifiers, redirects, URL
//! rewrites, mirrors, timeouts and retries. A `backendRef` to a Service that does not exist
//! answers 500, as the Gateway API specifies. When a Service has both, its HTTPRoutes win
//! over a VirtualService.

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

fn backend(reg: &Registry, r: &Resource, b: &BackendRef) -> Option<Value> {
    let ns = b.namespace.as_deref().unwrap_or(r.namespace());
    reg.service(ns, &b.name)?;
    let mut d = json!({"host": fqdn(&b.name, ns, &reg.mesh.domain_suffix)});
    if let Some(p) = b.port {
        d["port"] = json!({"number": p});
    }
    Some(d)
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

/// Every Service host that Gateway API routes attach to, with the VirtualService they make
/// (routes in name order; their rules one after another).
pub fn virtual_services(reg: &Registry) -> Vec<(String, String, VirtualService)> {
    type Routes = (Vec<String>, Vec<Value>, Vec<Value>);
    let mut by_host: std::collections::BTreeMap<String, Routes> = Default::default();
    let mut routes: Vec<&Resource> = reg
        .of_kind(Kind::HttpRoute)
        .chain(reg.of_kind(Kind::GrpcRoute))
        .chain(reg.of_kind(Kind::TcpRoute))
        .collect();
    routes.sort_by_key(|r| (r.namespace().to_string(), r.name().to_string()));
    for r in routes {
        let (refs, rules): (&[ParentReference], RulesFor<'_>) = match &r.spec {
            Spec::HttpRoute(h) => (&h.parent_refs, Box::new(move |p| http_rules(reg, r, h, p))),
            Spec::GrpcRoute(g) => (&g.parent_refs, Box::new(move |p| grpc_rules(reg, r, g, p))),
            Spec::TcpRoute(t) => (&t.parent_refs, Box::new(move |p| tcp_rules(reg, r, t, p))),
            _ => continue,
        };
        let tcp = r.kind == Kind::TcpRoute;
        for (host, port) in parents(reg, r, refs) {
            let e = by_host.entry(host).or_default();
            e.0.push(format!("{}/{}", r.namespace(), r.name()));
            if tcp {
                e.2.extend(rules(port));
            } else {
                e.1.extend(rules(port));
            }
        }
    }
    by_host
        .into_iter()
        .filter_map(|(key, (names, http, tcp))| {
            let hostname = key.split_once('/').map(|(_, h)| h.to_string())?;
            let vs = json!({"hosts": [hostname], "http": http, "tcp": tcp});
            match serde_json::from_value::<VirtualService>(vs) {
                Ok(vs) => Some((key, names.join(","), vs)),
                Err(e) => {
                    tracing::warn!(routes = %names.join(","), error = %e, "cannot translate Gateway API routes");
                    None
                }
            }
        })
        .collect()
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
    use crate::registry::MeshSettings;

    fn reg(yaml: &str) -> Registry {
        let l = spar_model::load_str("t.yaml", yaml);
        assert!(!l.has_errors(), "{:?}", l.problems);
        Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        )
    }

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
}
