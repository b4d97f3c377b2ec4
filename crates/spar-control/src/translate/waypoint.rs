//! Waypoints, as Istio resolves them: a Gateway of class `istio-waypoint` is a waypoint; a
//! Service, ServiceEntry or pod uses one by its own `istio.io/use-waypoint` label, else its
//! namespace's (`none` opts out; `istio.io/use-waypoint-namespace` names another namespace,
//! which the waypoint's listener must allow); the Gateway's `istio.io/waypoint-for` says
//! which traffic it takes (`service` by default). The answer fills the workload API's
//! `waypoint` field, exactly as Istio does, so Istio's ztunnel would follow it too.

use spar_model::gateway_api::{
    GATEWAY_NAME_LABEL, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_CLASS, WAYPOINT_FOR,
};
use spar_model::{Kind, Labels, Name, Resource, Spec, labels_match};
use spar_xds::security as xsec;
use spar_xds::workload as xw;

use crate::registry::Registry;

/// The HBONE port of every waypoint.
pub const HBONE_PORT: u32 = 15008;

/// Which traffic is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For {
    Service,
    Workload,
}

/// A waypoint Gateway (namespace, name, and the Gateway).
pub fn gateway<'a>(reg: &'a Registry, ns: &str, name: &str) -> Option<&'a Resource> {
    reg.get(&spar_model::ResourceKey {
        kind: Kind::K8sGateway,
        namespace: ns.into(),
        name: name.into(),
    })
    .filter(|r| matches!(&r.spec, Spec::K8sGateway(g) if g.gateway_class_name == WAYPOINT_CLASS))
}

/// The waypoint named for a resource in `namespace` with `labels` (`None` when it uses none).
pub fn waypoint_of(
    reg: &Registry,
    namespace: &str,
    labels: &Labels,
    traffic: For,
) -> Option<(String, String)> {
    // A waypoint's own pods never go through a waypoint.
    if labels.contains_key(GATEWAY_NAME_LABEL) {
        return None;
    }
    let ns_labels = reg.namespace_labels(namespace);
    let (name, wp_ns) = match labels.get(USE_WAYPOINT) {
        Some(n) => (n, labels.get(USE_WAYPOINT_NAMESPACE)),
        None => {
            let nsl = ns_labels?;
            (nsl.get(USE_WAYPOINT)?, nsl.get(USE_WAYPOINT_NAMESPACE))
        }
    };
    if name == "none" || name.is_empty() {
        return None;
    }
    let wp_ns = wp_ns.map(Name::as_str).unwrap_or(namespace);
    let gw = gateway(reg, wp_ns, name)?;
    let Spec::K8sGateway(g) = &gw.spec else {
        return None;
    };
    if wp_ns != namespace && !allows_from(g, ns_labels) {
        return None;
    }
    let takes = gw
        .meta
        .labels
        .get(WAYPOINT_FOR)
        .map(Name::as_str)
        .unwrap_or("service");
    let ok = match traffic {
        For::Service => matches!(takes, "service" | "all"),
        For::Workload => matches!(takes, "workload" | "all"),
    };
    ok.then(|| (wp_ns.to_string(), name.to_string()))
}

/// Whether the waypoint's listener admits routes (and users) from another namespace.
pub(crate) fn allows_from(
    g: &spar_model::gateway_api::Gateway,
    ns_labels: Option<&Labels>,
) -> bool {
    let Some(ns) = g
        .listeners
        .first()
        .and_then(|l| l.allowed_routes.as_ref())
        .and_then(|a| a.get("namespaces"))
    else {
        return false; // Same, by default
    };
    match ns.get("from").and_then(|f| f.as_str()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let want: Labels = ns
                .get("selector")
                .and_then(|s| s.get("matchLabels"))
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default();
            ns_labels.is_some_and(|l| labels_match(&want, l))
        }
        _ => false,
    }
}

/// The workload API's `waypoint` field for a waypoint.
pub fn address(reg: &Registry, (ns, name): &(String, String)) -> xw::GatewayAddress {
    xw::GatewayAddress {
        destination: Some(xw::gateway_address::Destination::Hostname(
            xw::NamespacedHostname {
                namespace: ns.clone(),
                hostname: format!("{name}.{ns}.svc.{}", reg.mesh.domain_suffix),
            },
        )),
        hbone_mtls_port: HBONE_PORT,
    }
}

/// The namespace label that turns on waypoint-only enforcement for its pods.
pub const ENFORCE: &str = "spar.io/waypoint-only";

/// Waypoint-only enforcement (Spar's opt-in; Istio lets traffic that skipped the waypoint
/// through): when `pod`'s namespace is labelled `spar.io/waypoint-only: "true"` and the pod
/// or a Service selecting it uses a waypoint, an L4 DENY for every caller but that
/// waypoint's identity, listed on the pod, so its node proxy refuses connections that
/// bypassed the waypoint.
pub fn only_policy(reg: &Registry, pod: &crate::registry::Pod<'_>) -> Option<xsec::Authorization> {
    let on = reg
        .namespace_labels(pod.namespace)
        .and_then(|l| l.get(ENFORCE))
        .is_some_and(|v| v == "true");
    if !on {
        return None;
    }
    let (ns, name) = waypoint_of(reg, pod.namespace, pod.labels, For::Workload).or_else(|| {
        reg.services_selecting(pod)
            .into_iter()
            .find_map(|(r, _)| waypoint_of(reg, r.namespace(), &r.meta.labels, For::Service))
    })?;
    let principal = format!("{}/ns/{ns}/sa/{name}", reg.mesh.trust_domain);
    Some(xsec::Authorization {
        name: format!("spar-waypoint-only-{ns}-{name}"),
        namespace: pod.namespace.to_string(),
        scope: xsec::Scope::WorkloadSelector as i32,
        action: xsec::Action::Deny as i32,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause {
                matches: vec![xsec::Match {
                    not_principals: vec![xsec::StringMatch {
                        match_type: Some(xsec::string_match::MatchType::Exact(principal)),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    })
}

/// The waypoint Gateway a pod runs for, if it is one's (its pods carry the Gateway API
/// label and run the Gateway's service account).
pub fn served_by<'a>(reg: &'a Registry, pod: &crate::registry::Pod<'_>) -> Option<&'a Resource> {
    let name = pod.labels.get(GATEWAY_NAME_LABEL)?;
    gateway(reg, pod.namespace, name).filter(|_| pod.service_account() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_registry as reg;

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue, istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c, labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: a}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: a}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: blue}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wl, namespace: a, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn the_most_specific_label_wins_and_the_listener_decides_other_namespaces() {
        let r = reg(MESH);
        let wp = Some(("a".to_string(), "wp".to_string()));
        type Case = (&'static str, Labels, For, Option<(String, String)>);
        let cases: Vec<Case> = vec![
            ("a", labels(&[]), For::Service, wp.clone()),
            ("a", labels(&[(USE_WAYPOINT, "none")]), For::Service, None),
            ("a", labels(&[]), For::Workload, None),
            (
                "a",
                labels(&[(USE_WAYPOINT, "wl")]),
                For::Workload,
                Some(("a".into(), "wl".into())),
            ),
            ("a", labels(&[(USE_WAYPOINT, "wl")]), For::Service, None),
            (
                "a",
                labels(&[(USE_WAYPOINT, "missing")]),
                For::Service,
                None,
            ),
            (
                "a",
                labels(&[(GATEWAY_NAME_LABEL, "wp")]),
                For::Service,
                None,
            ),
            // b is selected by the listener; c is not.
            ("b", labels(&[]), For::Service, wp.clone()),
            ("c", labels(&[]), For::Service, None),
            ("none-such", labels(&[]), For::Service, None),
        ];
        for (ns, l, traffic, want) in cases {
            assert_eq!(
                waypoint_of(&r, ns, &l, traffic),
                want,
                "{ns} {l:?} {traffic:?}"
            );
        }
        let a = address(&r, &("a".into(), "wp".into()));
        assert_eq!(a.hbone_mtls_port, 15008);
        assert!(matches!(
            a.destination,
            Some(xw::gateway_address::Destination::Hostname(h)) if h.hostname == "wp.a.svc.cluster.local"
        ));
    }
}
