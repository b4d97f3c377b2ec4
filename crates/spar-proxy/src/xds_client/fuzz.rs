//! Bad inputs tried on the xDS client: every resource body is bytes off the wire, decoded
//! and compiled by `apply`. For each subscribed type, random bytes and mutated real
//! resources must never panic, and a response `apply` rejects must leave everything the
//! proxy holds as it was (the last good config stays in force).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use spar_xds::discovery::Resource;
use spar_xds::security as xsec;
use spar_xds::workload::NetworkAddress;

use super::*;

const TYPES: [&str; 5] = [
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    L7_TYPE,
    POLICY_TYPE,
    TELEMETRY_TYPE,
];

/// Everything `Held` holds, comparably (compiled configs by identity: a rejected response
/// must not even rebuild them).
#[derive(Debug, PartialEq)]
struct View {
    workloads: BTreeMap<String, Workload>,
    services: BTreeMap<String, Service>,
    policies: BTreeMap<String, Authorization>,
    l7: BTreeMap<String, usize>,
    telemetry: Option<spar_xds::l7::Telemetry>,
    security: BTreeMap<String, usize>,
    versions: BTreeMap<String, BTreeMap<String, String>>,
    seen: BTreeSet<String>,
}

fn view(h: &Held) -> View {
    View {
        workloads: h.workloads.clone(),
        services: h.services.clone(),
        policies: h.policies.clone(),
        l7: h
            .l7
            .iter()
            .map(|(k, v)| (k.clone(), Arc::as_ptr(v) as usize))
            .collect(),
        telemetry: h.telemetry.clone(),
        security: h
            .security
            .iter()
            .map(|(k, v)| (k.clone(), Arc::as_ptr(v) as usize))
            .collect(),
        versions: h
            .versions
            .iter()
            .map(|(t, v)| (t.clone(), v.clone().into_iter().collect()))
            .collect(),
        seen: h.seen.iter().cloned().collect(),
    }
}

const HOST: &str = "web.ns.svc.cluster.local";
const SERVICE: &str = "ns/web.ns.svc.cluster.local";
const POD: &str = "Kubernetes//Pod/ns/web-1";

/// A real resource of each type, as the control plane sends it (name, message bytes).
fn valid(type_url: &str) -> (String, Vec<u8>) {
    use prost::Message as _;
    match type_url {
        ADDRESS_TYPE => (
            POD.into(),
            Address {
                r#type: Some(address::Type::Workload(Workload {
                    uid: POD.into(),
                    name: "web-1".into(),
                    namespace: "ns".into(),
                    addresses: vec![vec![10, 0, 0, 7]],
                    tunnel_protocol: 1,
                    services: [(
                        SERVICE.to_string(),
                        spar_xds::workload::PortList {
                            ports: vec![spar_xds::workload::Port {
                                service_port: 80,
                                target_port: 8080,
                                app_protocol: 0,
                            }],
                        },
                    )]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                })),
            }
            .encode_to_vec(),
        ),
        AUTHORIZATION_TYPE => (
            "ns/deny-foo".into(),
            Authorization {
                name: "deny-foo".into(),
                namespace: "ns".into(),
                scope: xsec::Scope::Namespace as i32,
                action: xsec::Action::Deny as i32,
                rules: vec![xsec::Rule {
                    clauses: vec![xsec::Clause {
                        matches: vec![xsec::Match {
                            namespaces: vec![xsec::StringMatch {
                                match_type: Some(xsec::string_match::MatchType::Exact(
                                    "foo".into(),
                                )),
                            }],
                            ..Default::default()
                        }],
                    }],
                }],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        L7_TYPE => (SERVICE.into(), routes(&good_vs()).encode_to_vec()),
        POLICY_TYPE => (
            "AuthorizationPolicy/ns/deny-admin".into(),
            policy(GOOD_POLICY).encode_to_vec(),
        ),
        TELEMETRY_TYPE => (
            spar_xds::TELEMETRY_NAME.into(),
            spar_xds::l7::Telemetry {
                access_log_client: true,
                access_log_server: false,
                sources: vec!["ns/web".into()],
                tracing: None,
            }
            .encode_to_vec(),
        ),
        other => panic!("no sample of {other}"),
    }
}

fn good_vs() -> String {
    serde_json::json!({"hosts": [HOST], "http": [
        {"name": "v2", "match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api/"}}],
         "rewrite": {"uri": "/"}, "timeout": "2s",
         "retries": {"attempts": 2, "retryOn": "5xx"},
         "route": [{"destination": {"host": HOST, "subset": "v2"}, "weight": 80},
                   {"destination": {"host": HOST}, "weight": 20}]},
        {"name": "rest", "route": [{"destination": {"host": HOST}}]}]})
    .to_string()
}

fn routes(vs: &str) -> ServiceRoutes {
    ServiceRoutes {
        namespace: "ns".into(),
        hostname: HOST.into(),
        virtual_service: vs.into(),
        virtual_service_name: "ns/web".into(),
        ..Default::default()
    }
}

const GOOD_POLICY: &str = r#"{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin/{**}"],"methods":["GET"]}}],"when":[{"key":"request.headers[x-a]","values":["b"]}]}]}"#;

fn policy(spec: &str) -> spar_xds::l7::Policy {
    spar_xds::l7::Policy {
        namespace: "ns".into(),
        name: "deny-admin".into(),
        kind: "AuthorizationPolicy".into(),
        spec: spec.into(),
        ..Default::default()
    }
}

fn response(type_url: &str, resources: Vec<(String, Vec<u8>)>) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: "n".into(),
        resources: resources
            .into_iter()
            .map(|(name, value)| Resource {
                version: format!("v-{}", value.len()),
                name,
                resource: Some(prost_types::Any {
                    type_url: type_url.into(),
                    value,
                }),
                aliases: vec![],
            })
            .collect(),
        ..Default::default()
    }
}

/// The address resource of the service `web` (named as its L7 config is).
fn service_address() -> (String, Vec<u8>) {
    use prost::Message as _;
    let svc = Address {
        r#type: Some(address::Type::Service(Service {
            name: "web".into(),
            namespace: "ns".into(),
            hostname: HOST.into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
            }],
            ..Default::default()
        })),
    };
    (SERVICE.into(), svc.encode_to_vec())
}

/// A proxy that has applied one good response of every type (and the service `web`).
fn primed() -> Held {
    let mut held = Held::default();
    apply(&mut held, &response(ADDRESS_TYPE, vec![service_address()])).expect("ACK");
    for t in TYPES {
        let problems = apply(&mut held, &response(t, vec![valid(t)])).expect("a good response");
        assert!(problems.is_empty(), "{t}: {problems:?}");
        held.seen.insert(t.to_string());
    }
    held
}

/// Bytes with some overwritten, a piece cut out, and bytes appended.
fn mutate(
    mut b: Vec<u8>,
    pokes: &[(prop::sample::Index, u8)],
    cut: (prop::sample::Index, usize),
    tail: &[u8],
) -> Vec<u8> {
    if !b.is_empty() {
        for (at, v) in pokes {
            let at = at.index(b.len());
            b[at] = *v;
        }
        let from = cut.0.index(b.len());
        let to = (from + cut.1).min(b.len());
        b.drain(from..to);
    }
    b.extend_from_slice(tail);
    b
}

/// A text with a piece replaced (JSON a control plane might garble).
fn garble(s: &str, at: prop::sample::Index, cut: usize, with: &str) -> String {
    let mut s = s.to_string();
    let mut from = at.index(s.len().max(1)).min(s.len());
    while !s.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (from + cut).min(s.len());
    while !s.is_char_boundary(to) {
        to -= 1;
    }
    s.replace_range(from..to, with);
    s
}

/// Apply `resp` to a primed proxy: Err leaves it as it was; Ok records every resource's
/// version under its type.
fn check(resp: &DeltaDiscoveryResponse) -> Result<(), TestCaseError> {
    let mut held = primed();
    let before = view(&held);
    match apply(&mut held, resp) {
        Err(_) => prop_assert_eq!(view(&held), before, "a rejected response changed state"),
        Ok(_) => {
            for r in &resp.resources {
                prop_assert_eq!(
                    held.versions[&resp.type_url].get(&r.name),
                    Some(&r.version),
                    "{} applied but its version is not held",
                    r.name
                );
            }
        }
    }
    Ok(())
}

fn type_url() -> impl Strategy<Value = &'static str> {
    prop::sample::select(TYPES.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes as one or more resources of any type: no panic, all or nothing.
    #[test]
    fn random_resource_bytes(
        t in type_url(),
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..4),
    ) {
        let resources = bodies.into_iter().enumerate().map(|(i, b)| (format!("ns/r{i}"), b)).collect();
        check(&response(t, resources))?;
    }

    /// A real resource with bytes poked, cut and appended, beside an intact one: no panic;
    /// if any of them is rejected, the intact one is not applied either.
    #[test]
    fn mutated_real_resources(
        t in type_url(),
        pokes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in (any::<prop::sample::Index>(), 0usize..6),
        tail in prop::collection::vec(any::<u8>(), 0..6),
        first in any::<bool>(),
    ) {
        let (name, body) = valid(t);
        let bad = (format!("{name}-mutated"), mutate(body, &pokes, cut, &tail));
        let good = valid(t);
        let resources = if first { vec![bad, good] } else { vec![good, bad] };
        check(&response(t, resources))?;
    }

    /// A resource decoded as another type than it is: no panic, all or nothing.
    #[test]
    fn resources_of_the_wrong_type(t in type_url(), other in type_url()) {
        check(&response(t, vec![valid(other)]))?;
    }

    /// L7 config with its VirtualService JSON garbled: rejected whole or compiled; never a
    /// panic, never half applied.
    #[test]
    fn garbled_virtual_services(
        at in any::<prop::sample::Index>(),
        cut in 0usize..8,
        with in "[\\[\\]{}\":,a-z0-9/*^$().\\\\-]{0,6}",
    ) {
        use prost::Message as _;
        let vs = garble(&good_vs(), at, cut, &with);
        check(&response(L7_TYPE, vec![(SERVICE.into(), routes(&vs).encode_to_vec())]))?;
    }

    /// A policy with its spec garbled is applied (policies are never left at the last good
    /// version), and one that does not compile is reported and denies every request.
    #[test]
    fn garbled_policies_fail_closed(
        at in any::<prop::sample::Index>(),
        cut in 0usize..8,
        with in "[\\[\\]{}\":,a-zA-Z0-9/*.\\-]{0,6}",
        path in "/[a-z/.%]{0,12}",
    ) {
        use prost::Message as _;
        let spec = garble(GOOD_POLICY, at, cut, &with);
        let name = valid(POLICY_TYPE).0;
        let resp = response(POLICY_TYPE, vec![(name, policy(&spec).encode_to_vec())]);
        let mut held = primed();
        let problems = apply(&mut held, &resp).expect("policies are always applied");
        let config = crate::security::Config::build(held.security.values().map(|c| &**c));
        prop_assert_eq!(config.authz.len(), 1);
        if !problems.is_empty() {
            let headers = http::HeaderMap::new();
            let facts = crate::security::authz::Facts {
                source_ip: [10, 0, 0, 1].into(),
                remote_ip: [10, 0, 0, 1].into(),
                principal: Some("cluster.local/ns/ns/sa/client"),
                namespace: Some("ns"),
                dest_ip: [10, 0, 0, 7].into(),
                dest_port: 8080,
                sni: crate::security::authz::Sni::Unknowable,
                http: Some(crate::security::authz::Http {
                    method: "GET",
                    path: &path,
                    host: HOST,
                    headers: &headers,
                    auth: None,
                }),
            };
            let v = crate::security::authz::evaluate(config.authz.iter(), &facts);
            prop_assert!(
                matches!(v.decision, crate::security::authz::Decision::Deny { .. }),
                "{spec}: {problems:?} but {v:?}"
            );
        }
    }
}

/// Removing a name under one type must not remove what another type holds under the same
/// name. The control plane names a service's L7 config exactly as its address resource
/// (`ns/host`), so a sidecar whose L7 config for a service is withdrawn (e.g. a Sidecar
/// egress change) would also lose the service itself, until the next address push, which
/// never comes, because the control plane believes the proxy still holds it.
#[test]
fn removing_l7_config_keeps_the_service_address() {
    let mut held = Held::default();
    apply(&mut held, &response(ADDRESS_TYPE, vec![service_address()])).expect("ACK");
    apply(&mut held, &response(L7_TYPE, vec![valid(L7_TYPE)])).expect("ACK");
    let withdraw = DeltaDiscoveryResponse {
        type_url: L7_TYPE.into(),
        removed_resources: vec![SERVICE.into()],
        ..Default::default()
    };
    apply(&mut held, &withdraw).expect("ACK");
    assert!(!held.l7.contains_key(SERVICE), "the L7 config is gone");
    assert!(
        held.services.contains_key(SERVICE),
        "the service's address resource was not removed, so it must stay"
    );
}

/// The general rule behind the test above: a removal under one type leaves every other
/// type's resources as they were.
#[test]
fn removals_touch_only_their_own_type() {
    for t in TYPES {
        let mut held = primed();
        let before = view(&held);
        let removed = TYPES
            .iter()
            .map(|t| valid(t).0)
            .chain([SERVICE.to_string()])
            .collect();
        let resp = DeltaDiscoveryResponse {
            type_url: t.into(),
            removed_resources: removed,
            ..Default::default()
        };
        apply(&mut held, &resp).expect("removals apply");
        let after = view(&held);
        if t != ADDRESS_TYPE {
            assert_eq!(after.workloads, before.workloads, "{t}");
            assert_eq!(after.services, before.services, "{t}");
        }
        if t != AUTHORIZATION_TYPE {
            assert_eq!(after.policies, before.policies, "{t}");
        }
        if t != L7_TYPE {
            assert_eq!(after.l7, before.l7, "{t}");
        }
        if t != POLICY_TYPE {
            assert_eq!(after.security, before.security, "{t}");
        }
        if t != TELEMETRY_TYPE {
            assert_eq!(after.telemetry, before.telemetry, "{t}");
        }
    }
}
