//! Security policies for L7 proxies (sidecars; waypoints later): each AuthorizationPolicy
//! and RequestAuthentication that applies to the proxy's pod, as Istio scopes them (the root
//! namespace's apply mesh-wide, a namespace's to its pods, a `selector` narrows either to the
//! pods it matches; `targetRef(s)` policies belong to waypoints and gateways: an ingress
//! gateway's pods take both kinds, as in Istio), with what the
//! control plane resolves for the proxy: a CUSTOM policy's extension provider from MeshConfig,
//! and each issuer's JWKS (inline, or fetched from `jwksUri`).

use std::collections::{BTreeMap, BTreeSet};

use spar_model::istio::mesh::{self, MeshConfig};
use spar_model::meta::{PolicyTargetReference, WorkloadSelector};
use spar_model::{Kind, Resource, Spec, labels_match};
use spar_xds::l7 as xl7;

use crate::registry::{Pod, Registry};

/// The mesh config: the root namespace's `istio` ConfigMap, else the `--mesh-config` file
/// (empty when there is neither).
pub fn mesh_config(reg: &Registry) -> MeshConfig {
    reg.get(&spar_model::ResourceKey {
        kind: Kind::ConfigMap,
        namespace: reg.mesh.root_namespace.as_str().into(),
        name: mesh::CONFIGMAP.into(),
    })
    .and_then(|r| match &r.spec {
        Spec::ConfigMap(data) => data.get(mesh::KEY).cloned(),
        _ => None,
    })
    .or_else(|| reg.mesh.mesh_config.clone())
    .and_then(|t| MeshConfig::parse(&t).ok())
    .unwrap_or_default()
}

fn applies(
    reg: &Registry,
    r: &Resource,
    selector: Option<&WorkloadSelector>,
    pod: &Pod<'_>,
) -> bool {
    let scope = r.namespace() == reg.mesh.root_namespace || r.namespace() == pod.namespace;
    scope && selector.is_none_or(|s| labels_match(&s.match_labels, pod.labels))
}

/// Every `jwksUri` the mesh's RequestAuthentications name (the control plane fetches them).
pub fn jwks_uris(reg: &Registry) -> BTreeSet<String> {
    reg.of_kind(Kind::RequestAuthentication)
        .filter_map(|r| match &r.spec {
            Spec::RequestAuthentication(ra) => Some(ra),
            _ => None,
        })
        .flat_map(|ra| ra.jwt_rules.iter().filter_map(|j| j.jwks_uri.clone()))
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Where a policy applies for `pod`: not at all, to everything it serves, or (at a waypoint,
/// by `targetRefs` to Services) to requests for these service keys only.
fn reach(
    reg: &Registry,
    r: &Resource,
    selector: Option<&WorkloadSelector>,
    refs: &[&PolicyTargetReference],
    pod: &Pod<'_>,
) -> Option<Vec<String>> {
    let Some(gw) = super::waypoint::served_by(reg, pod) else {
        // A sidecar or an ingress gateway: selector and namespace scoping. targetRef
        // policies are a waypoint's, or (kind Gateway) the Gateway API ingress gateway's.
        if refs.is_empty() {
            return applies(reg, r, selector, pod).then(Vec::new);
        }
        let ingress = super::ingress::k8s_gateway_of(reg, pod);
        let targeted = ingress.is_some_and(|gw| {
            refs.iter().filter(|t| same_namespace(r, t)).any(|t| {
                (t.group.as_str(), t.kind.as_str()) == ("gateway.networking.k8s.io", "Gateway")
                    && r.namespace() == gw.namespace()
                    && t.name == gw.name()
            })
        });
        return targeted.then(Vec::new);
    };
    // A waypoint: only policies that target it (its Gateway, the waypoint GatewayClass from
    // the root namespace, or Services), as Istio's waypoints ignore selector policies.
    let mut services = Vec::new();
    let mut whole = false;
    for t in refs.iter().filter(|t| same_namespace(r, t)) {
        let ns = r.namespace();
        match (t.group.as_str(), t.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => {
                whole |= ns == gw.namespace() && t.name == gw.name();
            }
            ("gateway.networking.k8s.io", "GatewayClass") => {
                whole |= r.namespace() == reg.mesh.root_namespace
                    && t.name == spar_model::gateway_api::WAYPOINT_CLASS;
            }
            ("" | "core", "Service") => {
                services.push(format!(
                    "{ns}/{}.{ns}.svc.{}",
                    t.name, reg.mesh.domain_suffix
                ));
            }
            _ => {}
        }
    }
    if whole {
        Some(Vec::new())
    } else if services.is_empty() {
        None
    } else {
        Some(services)
    }
}

/// Whether a target reference stays in its policy's namespace. One into another namespace
/// is ignored (Istio refuses it, and validation says so): a tenant's policy must not reach
/// another namespace's gateway or waypoint, where an ALLOW would widen what the owner's
/// policies admit.
fn same_namespace(r: &Resource, t: &PolicyTargetReference) -> bool {
    t.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .is_none_or(|n| n == r.namespace())
}

fn refs<'a>(
    one: &'a Option<PolicyTargetReference>,
    many: &'a [PolicyTargetReference],
) -> Vec<&'a PolicyTargetReference> {
    one.iter().chain(many).collect()
}

/// The policies of `pod`, by resource name (`KIND/namespace/name`).
pub fn for_pod(
    reg: &Registry,
    jwks: &BTreeMap<String, String>,
    pod: &Pod<'_>,
) -> BTreeMap<String, xl7::Policy> {
    let mesh = mesh_config(reg);
    let mut out = BTreeMap::new();
    for r in reg.of_kind(Kind::AuthorizationPolicy) {
        let Spec::AuthorizationPolicy(ap) = &r.spec else {
            continue;
        };
        let Some(services) = reach(
            reg,
            r,
            ap.selector.as_ref(),
            &refs(&ap.target_ref, &ap.target_refs),
            pod,
        ) else {
            continue;
        };
        let provider = match (&ap.action, &ap.provider) {
            (Some(a), Some(p)) if a == "CUSTOM" => mesh.provider_json(&p.name).unwrap_or_default(),
            _ => String::new(),
        };
        out.insert(
            format!("AuthorizationPolicy/{}/{}", r.namespace(), r.name()),
            xl7::Policy {
                namespace: r.namespace().into(),
                name: r.name().into(),
                kind: "AuthorizationPolicy".into(),
                spec: json(ap),
                provider,
                jwks: BTreeMap::new(),
                services,
            },
        );
    }
    for r in reg.of_kind(Kind::RequestAuthentication) {
        let Spec::RequestAuthentication(ra) = &r.spec else {
            continue;
        };
        let Some(services) = reach(
            reg,
            r,
            ra.selector.as_ref(),
            &refs(&ra.target_ref, &ra.target_refs),
            pod,
        ) else {
            continue;
        };
        let keys = ra
            .jwt_rules
            .iter()
            .filter_map(|j| {
                let set = j
                    .jwks
                    .clone()
                    .or_else(|| j.jwks_uri.as_ref().and_then(|u| jwks.get(u).cloned()))?;
                Some((j.issuer.clone(), set))
            })
            .collect();
        out.insert(
            format!("RequestAuthentication/{}/{}", r.namespace(), r.name()),
            xl7::Policy {
                namespace: r.namespace().into(),
                name: r.name().into(),
                kind: "RequestAuthentication".into(),
                spec: json(ra),
                provider: String::new(),
                jwks: keys,
                services,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MeshSettings;

    fn reg(text: &str) -> Registry {
        let l = spar_model::load_str("t", text);
        assert!(!l.has_errors(), "{:?}", l.problems);
        Registry::new(
            MeshSettings::default(),
            l.resources.into_iter().map(|(r, _)| r),
        )
    }

    #[test]
    fn scoping_providers_and_keys() {
        let r = reg(r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: authz-http
      envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: "8000"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, action: CUSTOM, provider: {name: authz-http}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-only, namespace: shop}
spec: {selector: {matchLabels: {app: db}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: bank}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-waypoint, namespace: shop}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
  - {issuer: inline, jwks: '{"keys":[]}'}
  - {issuer: fetched, jwksUri: 'http://keys.example/jwks.json'}
  - {issuer: unfetched, jwksUri: 'http://down.example/jwks.json'}
"#);
        let pod = r.pod("shop", "web-1").expect("pod");
        let jwks: BTreeMap<String, String> = [(
            "http://keys.example/jwks.json".to_string(),
            "{\"keys\":[1]}".to_string(),
        )]
        .into();
        let got = for_pod(&r, &jwks, &pod);
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "AuthorizationPolicy/istio-system/mesh-wide",
                "AuthorizationPolicy/shop/web-only",
                "RequestAuthentication/shop/jwt"
            ]
        );
        assert!(
            got["AuthorizationPolicy/shop/web-only"]
                .provider
                .contains("ext-authz.foo.svc.cluster.local")
        );
        let keys = &got["RequestAuthentication/shop/jwt"].jwks;
        assert_eq!(
            keys.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["fetched", "inline"]
        );
        assert_eq!(
            jwks_uris(&r).into_iter().collect::<Vec<_>>(),
            vec![
                "http://down.example/jwks.json",
                "http://keys.example/jwks.json"
            ]
        );
    }

    #[test]
    fn an_ingress_gateway_takes_selector_policies_and_those_targeting_its_gateway() {
        let r = reg(r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Pod
metadata: {name: public-1, namespace: edge, labels: {gateway.networking.k8s.io/gateway-name: public, app: public}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.9}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ref, namespace: edge}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: public}], action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-gateway, namespace: edge}
spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: private}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: edge}
spec: {selector: {matchLabels: {app: public}}, action: DENY, rules: [{from: [{source: {remoteIpBlocks: [10.9.0.0/16]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: to-a-service, namespace: edge}
spec: {targetRefs: [{kind: Service, group: "", name: public}]}
"#);
        let pod = r.pod("edge", "public-1").expect("pod");
        let got = for_pod(&r, &BTreeMap::new(), &pod);
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "AuthorizationPolicy/edge/by-ref",
                "AuthorizationPolicy/edge/by-selector"
            ]
        );
        assert!(
            got.values().all(|p| p.services.is_empty()),
            "the whole gateway"
        );
    }
}
