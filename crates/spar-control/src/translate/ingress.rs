//! Ingress gateways: a Gateway API `Gateway` of class `istio`, or Istio's own `Gateway`
//! (`networking.istio.io`, pods chosen by `selector`). Each listener port becomes one L7 host
//! of the gateway (`<gateway>.<namespace>.gateway-<port>`), whose routes are the gateway's:
//! Istio VirtualServices that name it in `gateways`, and HTTPRoutes whose `parentRefs` name it,
//! each route limited to its own hostnames by an authority match. Only the gateway's pods
//! receive these hosts; the routes' destinations are ordinary Services, reached by the L7
//! engine with mesh mTLS (HBONE) or plain TCP as each destination needs.

use serde_json::{Value, json};
use spar_model::gateway_api::GATEWAY_NAME_LABEL;
use spar_model::istio::networking::VirtualService;
use spar_model::{Kind, Labels, Name, Resource, Spec, labels_match};
use spar_xds::l7 as xl7;

use super::gamma;
use super::l7::{Host, fqdn};
use crate::registry::{Pod, Registry};

/// The Gateway API class of ingress gateways.
pub const INGRESS_CLASS: &str = "istio";

/// A gateway's listener ports with the host names each serves (empty: any) and whether
/// the port passes TLS through by SNI (not terminated here). Listeners (or servers) sharing a
/// port are one port serving all their names (HTTPS: the gateway picks each one's
/// certificate by SNI); the first decides the mode (validation refuses a mix).
fn listeners(r: &Resource) -> Vec<(u32, Vec<String>, bool)> {
    let mut merged: Vec<(u32, Vec<String>, bool)> = Vec::new();
    for (port, hosts, passthrough) in declared_listeners(r) {
        match merged.iter_mut().find(|(p, _, _)| *p == port) {
            Some((_, all, _)) => {
                if all.is_empty() || hosts.is_empty() {
                    all.clear();
                } else {
                    all.extend(hosts);
                }
            }
            None => merged.push((port, hosts, passthrough)),
        }
    }
    merged
}

/// A gateway's listeners (or servers) one by one.
fn declared_listeners(r: &Resource) -> Vec<(u32, Vec<String>, bool)> {
    match &r.spec {
        Spec::K8sGateway(g) if g.gateway_class_name == INGRESS_CLASS => g
            .listeners
            .iter()
            .filter_map(|l| {
                let passthrough = l.protocol == "TLS" && tls_mode(&l.tls) == Some("Passthrough");
                (matches!(l.protocol.as_str(), "HTTP" | "HTTPS") || passthrough)
                    .then(|| (l.port, l.hostname.iter().cloned().collect(), passthrough))
            })
            .collect(),
        Spec::Gateway(g) => g
            .servers
            .iter()
            .map(|s| {
                let passthrough = tls_mode(&s.tls) == Some("PASSTHROUGH");
                (s.port.number, s.hosts.clone(), passthrough)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `tls.mode` of a listener or server.
pub fn tls_mode(tls: &Option<Value>) -> Option<&str> {
    tls.as_ref()?.get("mode")?.as_str()
}

/// Whether a route's `parentRefs` name gateway `gw` (on `port`, when they give one). Gateway
/// API routes attach to Gateway API Gateways only, never to Istio's classic ones.
fn attached_to(
    refs: &[spar_model::gateway_api::ParentReference],
    route: &Resource,
    gw: &Resource,
    port: u32,
) -> bool {
    gw.kind == Kind::K8sGateway
        && refs.iter().any(|p| {
            matches!(p.kind.as_deref(), None | Some("Gateway"))
                && matches!(p.group.as_deref(), None | Some("gateway.networking.k8s.io"))
                && p.namespace.as_deref().unwrap_or(route.namespace()) == gw.namespace()
                && p.name == gw.name()
                && p.port.is_none_or(|pp| pp == port)
        })
}

/// Whether a listener hostname (`name` or `*.suffix`) admits a route hostname (a name or a
/// wildcard of its own), case-insensitively.
fn host_admits(listener: &str, route: &str) -> bool {
    let (l, r) = (listener.to_ascii_lowercase(), route.to_ascii_lowercase());
    match l.strip_prefix('*') {
        Some(suffix) => r.ends_with(suffix) && r.len() > suffix.len(),
        None => l == r,
    }
}

/// The SNI routes of gateway `gw`'s passthrough `port`: VirtualServices bound to it (their
/// `tls` routes), then TLSRoutes attached to it, as VirtualService `tls` routes.
fn tls_rules(reg: &Registry, gw: &Resource, port: u32, listener_hosts: &[String]) -> Vec<Value> {
    let suffix = &reg.mesh.domain_suffix;
    let mut out = Vec::new();
    for r in reg.of_kind(Kind::VirtualService) {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !names(&vs.gateways, r.namespace(), gw) {
            continue;
        }
        for t in &vs.tls {
            let matches: Vec<Value> = t
                .matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == port))
                .map(|m| {
                    let sni = if m.sni_hosts.is_empty() {
                        &vs.hosts
                    } else {
                        &m.sni_hosts
                    };
                    json!({"sniHosts": sni})
                })
                .collect();
            if matches.is_empty() {
                continue;
            }
            let route: Vec<Value> = t
                .route
                .iter()
                .map(|d| {
                    let mut d = d.clone();
                    d.destination.host = fqdn(&d.destination.host, r.namespace(), suffix);
                    serde_json::to_value(d).unwrap_or_default()
                })
                .collect();
            out.push(json!({"match": matches, "route": route}));
        }
    }
    for r in reg.of_kind(Kind::TlsRoute) {
        let Spec::TlsRoute(tr) = &r.spec else {
            continue;
        };
        if !attached_to(&tr.parent_refs, r, gw, port) {
            continue;
        }
        let sni: Vec<String> = match (&tr.hostnames[..], listener_hosts) {
            ([], []) => vec!["*".into()],
            ([], l) => l.to_vec(),
            (h, []) => h.to_vec(),
            // Both given: the route's names that the listener's admit.
            (h, l) => h
                .iter()
                .filter(|h| l.iter().any(|l| host_admits(l, h)))
                .cloned()
                .collect(),
        };
        if sni.is_empty() {
            continue;
        }
        for rule in &tr.rules {
            // Backends that do not exist or are not granted are left out (a TLS connection
            // has no error status to answer with); a rule left with none routes nothing.
            let route: Vec<Value> = rule
                .backend_refs
                .iter()
                .filter_map(|b| {
                    let d = gamma::backend(reg, r, b)?;
                    Some(json!({"destination": d, "weight": b.weight.unwrap_or(1)}))
                })
                .collect();
            if route.is_empty() {
                continue;
            }
            out.push(json!({"match": [{"sniHosts": sni}], "route": route}));
        }
    }
    out
}

/// Every ingress gateway.
pub fn gateways(reg: &Registry) -> Vec<&Resource> {
    reg.of_kind(Kind::K8sGateway)
        .chain(reg.of_kind(Kind::Gateway))
        .filter(|r| !listeners(r).is_empty())
        .collect()
}

/// Whether `pod` runs gateway `gw`: a Gateway API gateway's deployment carries its name; an
/// Istio Gateway picks its pods by `selector`.
pub fn selects(gw: &Resource, namespace: &str, labels: &Labels) -> bool {
    match &gw.spec {
        Spec::K8sGateway(_) => {
            namespace == gw.namespace()
                && labels.get(GATEWAY_NAME_LABEL).map(Name::as_str) == Some(gw.name())
        }
        Spec::Gateway(g) => !g.selector.is_empty() && labels_match(&g.selector, labels),
        _ => false,
    }
}

/// The Gateway API ingress gateway (class `istio`) whose deployment `pod` belongs to.
pub fn k8s_gateway_of<'a>(reg: &'a Registry, pod: &Pod<'_>) -> Option<&'a Resource> {
    let name = pod.labels.get(GATEWAY_NAME_LABEL)?;
    reg.get(&spar_model::ResourceKey {
        kind: Kind::K8sGateway,
        namespace: pod.namespace.into(),
        name: name.clone(),
    })
    .filter(|r| matches!(&r.spec, Spec::K8sGateway(g) if g.gateway_class_name == INGRESS_CLASS))
}

/// The L7 host name of gateway `gw`'s listener on `port`.
pub fn host_name(gw: &Resource, port: u32) -> String {
    format!("{}.{}.gateway-{port}", gw.name(), gw.namespace())
}

/// `^(a\.example\.com|[^.]+\.example\.org)(:[0-9]+)?$` for the host names a route serves
/// (`*.example.org` is one label of any name); `None` for any host.
fn authority(hosts: &[String]) -> Option<String> {
    if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
        return None;
    }
    let alts: Vec<String> = hosts
        .iter()
        .map(|h| {
            let (wild, rest) = match h.strip_prefix("*.") {
                Some(r) => (true, r),
                None => (false, h.as_str()),
            };
            let lit: String = rest
                .chars()
                .flat_map(|c| {
                    let special = !c.is_ascii_alphanumeric() && c != '-';
                    special
                        .then_some('\\')
                        .into_iter()
                        .chain(std::iter::once(c))
                })
                .collect();
            if wild { format!("[^.]+\\.{lit}") } else { lit }
        })
        .collect();
    Some(format!("^({})(:[0-9]+)?$", alts.join("|")))
}

/// Limit each rule to `hosts` (and the listener's port).
fn limit(rules: Vec<Value>, hosts: &[String]) -> Vec<Value> {
    let Some(re) = authority(hosts) else {
        return rules;
    };
    rules
        .into_iter()
        .map(|mut r| {
            let m = r
                .get("match")
                .and_then(|m| m.as_array().cloned())
                .unwrap_or_else(|| vec![json!({})]);
            let m: Vec<Value> = m
                .into_iter()
                .map(|mut x| {
                    x["authority"] = json!({"regex": re});
                    x
                })
                .collect();
            r["match"] = Value::Array(m);
            r
        })
        .collect()
}

/// Whether `refs` (a VirtualService's `gateways`) name `gw` (as `name` in its own
/// namespace, or `namespace/name`).
fn names(refs: &[String], vs_ns: &str, gw: &Resource) -> bool {
    refs.iter().any(|g| match g.split_once('/') {
        Some((ns, n)) => ns == gw.namespace() && n == gw.name(),
        None => vs_ns == gw.namespace() && g == gw.name(),
    })
}

/// The rules of gateway `gw` on `port`: VirtualServices bound to it, then HTTPRoutes.
fn rules(reg: &Registry, gw: &Resource, port: u32, listener_hosts: &[String]) -> Vec<Value> {
    let suffix = &reg.mesh.domain_suffix;
    let mut out = Vec::new();
    let mut vss: Vec<&Resource> = reg.of_kind(Kind::VirtualService).collect();
    vss.sort_by_key(|r| (r.namespace().to_string(), r.name().to_string()));
    for r in vss {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !names(&vs.gateways, r.namespace(), gw) {
            continue;
        }
        let mut vs = vs.clone();
        for h in &mut vs.http {
            h.route.iter_mut().for_each(|d| {
                d.destination.host = fqdn(&d.destination.host, r.namespace(), suffix)
            });
            h.mirrors.iter_mut().for_each(|m| {
                m.destination.host = fqdn(&m.destination.host, r.namespace(), suffix)
            });
        }
        let http: Vec<Value> = vs
            .http
            .iter()
            .filter_map(|h| serde_json::to_value(h).ok())
            .collect();
        out.extend(limit(http, &vs.hosts));
    }
    let mut routes: Vec<&Resource> = reg.of_kind(Kind::HttpRoute).collect();
    routes.sort_by_key(|r| (r.namespace().to_string(), r.name().to_string()));
    for r in routes {
        let Spec::HttpRoute(hr) = &r.spec else {
            continue;
        };
        if attached_to(&hr.parent_refs, r, gw, port) {
            let hosts = if hr.hostnames.is_empty() {
                listener_hosts.to_vec()
            } else {
                hr.hostnames.clone()
            };
            out.extend(limit(gamma::http_rules_of(reg, r, hr, None), &hosts));
        }
    }
    out
}

/// The L7 hosts of every ingress gateway, keyed `namespace/hostname` as Services are.
pub fn hosts(reg: &Registry) -> Vec<(String, Host)> {
    let mut out = Vec::new();
    for gw in gateways(reg) {
        for (port, listener_hosts, passthrough) in listeners(gw) {
            let hostname = host_name(gw, port);
            let vs = if passthrough {
                json!({"hosts": [hostname], "tls": tls_rules(reg, gw, port, &listener_hosts)})
            } else {
                json!({"hosts": [hostname], "http": rules(reg, gw, port, &listener_hosts)})
            };
            let vs = match serde_json::from_value::<VirtualService>(vs) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(gateway = %gw.key(), port, error = %e, "cannot translate the gateway's routes");
                    continue;
                }
            };
            out.push((
                format!("{}/{hostname}", gw.namespace()),
                Host {
                    namespace: gw.namespace().to_string(),
                    hostname,
                    ports: vec![xl7::PortProtocol {
                        port,
                        protocol: if passthrough { "tcp" } else { "http" }.into(),
                        name: format!("gateway-{port}"),
                    }],
                    virtual_service: Some((gw.key().to_string(), vs)),
                    gateway: Some((gw.kind, gw.namespace().to_string(), gw.name().to_string())),
                    ..Default::default()
                },
            ));
        }
    }
    out
}

/// Whether `pod` may see host `h`: every pod sees Services; a gateway's hosts only its pods.
pub fn visible(reg: &Registry, h: &Host, pod: &Pod<'_>) -> bool {
    let Some((kind, ns, name)) = &h.gateway else {
        return true;
    };
    reg.get(&spar_model::ResourceKey {
        kind: *kind,
        namespace: ns.into(),
        name: name.into(),
    })
    .is_some_and(|gw| selects(gw, pod.namespace, pod.labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_registry as reg;

    /// The routes of a gateway port's host, as the gateway's pods receive them.
    fn host<'a>(all: &'a [(String, Host)], name: &str) -> &'a VirtualService {
        let (_, h) = all
            .iter()
            .find(|(k, _)| k.ends_with(name))
            .unwrap_or_else(|| panic!("no host {name}"));
        &h.virtual_service.as_ref().expect("routes").1
    }

    #[test]
    fn passthrough_ports_route_by_sni_and_others_by_http() {
        let r = reg("
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: a}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: a}
spec:
  hosts: [nginx.example.com]
  gateways: [mygateway]
  tls:
  - match: [{port: 443, sniHosts: [nginx.example.com]}]
    route: [{destination: {host: my-nginx, port: {number: 443}}}]
  - match: [{port: 9443, sniHosts: [elsewhere.example.com]}]
    route: [{destination: {host: other}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: a}
spec:
  gatewayClassName: istio
  listeners:
  - {name: tls, port: 8443, protocol: TLS, hostname: '*.example.com', tls: {mode: Passthrough}}
  - {name: other, port: 9000, protocol: TLS, tls: {mode: Terminate}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: narrowed, namespace: a}
spec:
  parentRefs: [{name: gw}]
  hostnames: [www.example.com, www.example.org]
  rules: [{backendRefs: [{name: my-nginx, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: not-on-classic, namespace: a}
spec:
  parentRefs: [{name: mygateway}]
  rules: [{backendRefs: [{name: my-nginx, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: nginx, namespace: a}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - {name: my-nginx, port: 443, weight: 3}
    - {name: b, namespace: c, port: 8443}
    - {name: not-granted, namespace: d, port: 443}
    - {name: missing, port: 443}
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx, namespace: a}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: c}
spec: {ports: [{name: https, port: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: not-granted, namespace: d}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-a, namespace: c}
spec:
  from: [{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: a}]
  to: [{group: '', kind: Service, name: b}]
");
        let all = hosts(&r);
        let classic = host(&all, "mygateway.a.gateway-443");
        assert!(classic.http.is_empty());
        assert_eq!(classic.tls.len(), 1, "only the route of this port");
        assert_eq!(classic.tls[0].matches[0].sni_hosts, ["nginx.example.com"]);
        let d = &classic.tls[0].route[0].destination;
        assert_eq!(d.host, "my-nginx.a.svc.cluster.local");
        let classic_http = host(&all, "mygateway.a.gateway-80");
        assert!(
            classic_http.tls.is_empty(),
            "an HTTP server has no SNI routes"
        );
        assert!(
            classic_http.http.is_empty(),
            "Gateway API routes do not attach to a classic Gateway of the same name"
        );
        let api = host(&all, "gw.a.gateway-8443");
        // TLSRoutes in name order: `narrowed`, then `nginx`.
        assert_eq!(
            api.tls[1].matches[0].sni_hosts,
            ["*.example.com"],
            "no hostnames: the listener's"
        );
        let hosts_weights: Vec<(&str, Option<u32>)> = api.tls[1]
            .route
            .iter()
            .map(|d| (d.destination.host.as_str(), d.weight.map(|w| w as u32)))
            .collect();
        assert_eq!(
            hosts_weights,
            [
                ("my-nginx.a.svc.cluster.local", Some(3)),
                ("b.c.svc.cluster.local", Some(1))
            ],
            "a backend in another namespace without a ReferenceGrant, or missing, is left out"
        );
        assert_eq!(
            api.tls[0].matches[0].sni_hosts,
            ["www.example.com"],
            "a route's hostnames narrowed to those the listener admits"
        );
        assert!(
            !all.iter().any(|(k, _)| k.ends_with("gw.a.gateway-9000")),
            "a TLS listener in another mode is not served"
        );
    }

    #[test]
    fn listeners_sharing_a_port_serve_all_their_hosts() {
        let r = reg("
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: a}
spec:
  gatewayClassName: istio
  listeners:
  - {name: one, port: 443, protocol: HTTPS, hostname: httpbin.example.com, tls: {certificateRefs: [{name: c1}]}}
  - {name: two, port: 443, protocol: HTTPS, hostname: helloworld.example.com, tls: {certificateRefs: [{name: c2}]}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: a}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
");
        let all = hosts(&r);
        assert_eq!(all.len(), 1, "one host for the port");
        let vs = host(&all, "gw.a.gateway-443");
        let m = serde_json::to_string(&vs.http[0].matches).expect("json");
        assert!(
            m.contains("httpbin") && m.contains("helloworld"),
            "the route admits both listeners' hosts: {m}"
        );
    }
}
