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

/// A gateway's listener ports with the host names each serves (empty: any).
fn listeners(r: &Resource) -> Vec<(u32, Vec<String>)> {
    match &r.spec {
        Spec::K8sGateway(g) if g.gateway_class_name == INGRESS_CLASS => g
            .listeners
            .iter()
            .filter(|l| matches!(l.protocol.as_str(), "HTTP" | "HTTPS"))
            .map(|l| (l.port, l.hostname.iter().cloned().collect()))
            .collect(),
        Spec::Gateway(g) => g
            .servers
            .iter()
            .map(|s| (s.port.number, s.hosts.clone()))
            .collect(),
        _ => Vec::new(),
    }
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
        let attached = hr.parent_refs.iter().any(|p| {
            matches!(p.kind.as_deref(), None | Some("Gateway"))
                && p.namespace.as_deref().unwrap_or(r.namespace()) == gw.namespace()
                && p.name == gw.name()
                && p.port.is_none_or(|pp| pp == port)
        });
        if attached {
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
        for (port, listener_hosts) in listeners(gw) {
            let http = rules(reg, gw, port, &listener_hosts);
            let hostname = host_name(gw, port);
            let vs = json!({"hosts": [hostname], "http": http});
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
                        protocol: "http".into(),
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
