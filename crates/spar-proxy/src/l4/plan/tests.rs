use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use spar_xds::security as xsec;

use super::*;
use crate::snapshot::testing::{key, service, snapshot, workload};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn describe(u: &Upstream) -> String {
    match u {
        Upstream::Hbone {
            addr,
            target,
            identity,
            ..
        } => format!("hbone {addr} {target} {identity}"),
        Upstream::Direct { addr, .. } => format!("direct {addr}"),
    }
}

fn web() -> Snapshot {
    let web = key("ns", "web");
    snapshot(
        vec![
            workload("ns", "a", [10, 0, 1, 2], true, &[(&web, 80, 8080)]),
            workload("ns", "b", [10, 0, 2, 2], false, &[(&web, 80, 8080)]),
            workload("ns", "c", [10, 0, 2, 3], true, &[]),
        ],
        vec![service("ns", "web", [10, 96, 0, 1])],
        vec![],
    )
}

#[test]
fn outbound_plans() {
    let snap = web();
    let mut rng = StdRng::seed_from_u64(7);
    // VIP -> each endpoint, HBONE for the mesh one, plain for the other, target port mapped.
    let p = plan_outbound(&snap, addr("10.96.0.1:80"), false, &mut rng);
    assert_eq!(
        p.service.as_ref().map(ServiceKey::as_str),
        Some("ns/web.ns.svc.cluster.local")
    );
    let mut got: Vec<String> = p.candidates.iter().map(describe).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            "direct 10.0.2.2:8080",
            "hbone 10.0.1.2:15008 10.0.1.2:8080 spiffe://cluster.local/ns/ns/sa/sa",
        ]
    );
    // A port the service does not have: nothing to try.
    assert!(
        plan_outbound(&snap, addr("10.96.0.1:81"), false, &mut rng)
            .candidates
            .is_empty()
    );
    // A pod address: that workload, on the port asked for.
    let p = plan_outbound(&snap, addr("10.0.2.3:9000"), false, &mut rng);
    assert_eq!(
        p.candidates.iter().map(describe).collect::<Vec<_>>(),
        vec!["hbone 10.0.2.3:15008 10.0.2.3:9000 spiffe://cluster.local/ns/ns/sa/sa"]
    );
    // Outside the mesh: passthrough.
    assert_eq!(
        plan_outbound(&snap, addr("1.1.1.1:443"), false, &mut rng).candidates,
        vec![Upstream::Direct {
            addr: addr("1.1.1.1:443"),
            workload: None
        }]
    );
}

/// A client that dials the proxy's own capture ports directly would be forwarded back into
/// the same listener, without end: such connections get no upstream.
#[test]
fn the_proxys_own_ports_are_never_a_destination() {
    let snap = web();
    let mut rng = StdRng::seed_from_u64(7);
    for dst in [
        "127.0.0.1:15001",
        "10.0.2.3:15006",
        "10.0.1.2:15001",
        "1.1.1.1:15006",
    ] {
        let p = plan_outbound(&snap, addr(dst), false, &mut rng);
        assert!(p.candidates.is_empty(), "{dst}: {p:?}");
    }
}

#[test]
fn outbound_order_is_spread_over_endpoints() {
    let snap = web();
    let mut rng = StdRng::seed_from_u64(1);
    let mut first = BTreeMap::new();
    for _ in 0..200 {
        let p = plan_outbound(&snap, addr("10.96.0.1:80"), false, &mut rng);
        *first.entry(p.candidates[0].target()).or_insert(0) += 1;
    }
    assert_eq!(
        first.len(),
        2,
        "both endpoints come first sometimes: {first:?}"
    );
    assert!(first.values().all(|n| *n > 50), "{first:?}");
}

fn l7_with_tcp_routes(
    routes: serde_json::Value,
    subsets: &[(&str, &[&str])],
) -> crate::l7::config::Service {
    let sr = spar_xds::l7::ServiceRoutes {
        namespace: "ns".into(),
        hostname: "web.ns.svc.cluster.local".into(),
        virtual_service: serde_json::json!({"hosts": ["web.ns.svc.cluster.local"], "tcp": routes})
            .to_string(),
        virtual_service_name: "ns/web".into(),
        destination_rule: if subsets.is_empty() {
            String::new()
        } else {
            serde_json::json!({"host": "web.ns.svc.cluster.local",
                "subsets": subsets.iter().map(|(n, _)| serde_json::json!({"name": n, "labels": {"version": n}})).collect::<Vec<_>>()}).to_string()
        },
        destination_rule_name: "ns/web".into(),
        subsets: subsets
            .iter()
            .map(|(n, uids)| {
                (
                    n.to_string(),
                    spar_xds::l7::Members {
                        uids: uids.iter().map(|u| u.to_string()).collect(),
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    crate::l7::config::compile(&sr).expect("compiles")
}

#[test]
fn tcp_routes_pick_a_subset_by_weight() {
    let web = key("ns", "web");
    let l7 = l7_with_tcp_routes(
        serde_json::json!([{"match": [{"port": 80}], "route": [
            {"destination": {"host": "web.ns.svc.cluster.local", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "web.ns.svc.cluster.local", "subset": "v2"}, "weight": 20}]}]),
        &[("v1", &["ns/a"]), ("v2", &["ns/b"])],
    );
    let snap = snapshot(
        vec![
            workload("ns", "a", [10, 0, 1, 2], true, &[(&web, 80, 8080)]),
            workload("ns", "b", [10, 0, 2, 2], true, &[(&web, 80, 8080)]),
        ],
        vec![service("ns", "web", [10, 96, 0, 1])],
        vec![l7],
    );
    let svc = snap.by_vip[&"10.96.0.1".parse().expect("ip")].clone();
    let mut rng = StdRng::seed_from_u64(3);
    let mut v1 = 0;
    for _ in 0..1000 {
        let p = tcp_plan(&snap, &svc, addr("10.96.0.1:80"), &mut rng);
        assert_eq!(p.candidates.len(), 1, "one subset, one member");
        if p.candidates[0].target() == addr("10.0.1.2:8080") {
            v1 += 1;
        }
    }
    assert!((740..860).contains(&v1), "80/20 split: {v1} of 1000 to v1");
    // A port no tcp route names: the service itself, every endpoint.
    let p = tcp_plan(&snap, &svc, addr("10.96.0.1:81"), &mut rng);
    assert!(p.candidates.is_empty(), "the service has no port 81");
}

#[test]
fn a_tcp_route_left_without_destinations_refuses() {
    // A Gateway API route whose backends are all missing or not granted arrives with an
    // empty route: the connection is refused, never sent to the address the client named.
    let web = key("ns", "web");
    let l7 = l7_with_tcp_routes(
        serde_json::json!([{"match": [{"port": 80}], "route": []}]),
        &[],
    );
    let snap = snapshot(
        vec![workload(
            "ns",
            "a",
            [10, 0, 1, 2],
            true,
            &[(&web, 80, 8080)],
        )],
        vec![service("ns", "web", [10, 96, 0, 1])],
        vec![l7],
    );
    let svc = snap.by_vip[&"10.96.0.1".parse().expect("ip")].clone();
    let p = tcp_plan(
        &snap,
        &svc,
        addr("10.96.0.1:80"),
        &mut StdRng::seed_from_u64(1),
    );
    assert!(p.candidates.is_empty(), "{:?}", p.candidates.len());
}

#[test]
fn principals_parse_strictly() {
    for (id, principal_, ns) in [
        (
            "spiffe://cluster.local/ns/foo/sa/bar",
            Some("cluster.local/ns/foo/sa/bar"),
            Some("foo"),
        ),
        ("spiffe://td/ns//sa/bar", Some("td/ns//sa/bar"), None),
        ("spiffe://td/ns/foo", Some("td/ns/foo"), None),
        ("spiffe://td/xx/foo/sa/bar", Some("td/xx/foo/sa/bar"), None),
        ("https://td/ns/foo/sa/bar", None, None),
    ] {
        let (p, n) = principal(id);
        assert_eq!((p.as_deref(), n.as_deref()), (principal_, ns), "{id}");
    }
}

#[test]
fn inbound_plans() {
    let mut snap = web();
    let pod = snap.workloads["ns/c"].clone();
    let arrive = |target, id| Arrival {
        peer: addr("10.0.1.2:40000"),
        peer_identity: id,
        target,
    };
    let sleep = Some("spiffe://cluster.local/ns/foo/sa/sleep");
    let ok = plan_inbound(&snap, &pod, &arrive("10.0.2.3:9000", sleep)).expect("admitted");
    assert_eq!(ok.target, addr("10.0.2.3:9000"));
    assert!(ok.mtls);
    assert_eq!(ok.source.as_ref().map(|w| w.name.as_str()), Some("a"));
    for (target, why) in [
        ("10.0.2.2:9000", "not this pod"),
        ("web:80", "not ip:port"),
        ("10.0.2.3:15006", "own capture port"),
        ("10.0.2.3:15001", "own capture port"),
    ] {
        let e = plan_inbound(&snap, &pod, &arrive(target, sleep)).expect_err("refused");
        assert_eq!(e.status, 400);
        assert!(e.reason.contains(why), "{e:?}");
    }
    // A namespace-wide DENY of namespace foo: 401 for sleep, admitted without identity.
    snap.policies.insert(
        "ns/deny-foo".into(),
        xsec::Authorization {
            name: "deny-foo".into(),
            namespace: "ns".into(),
            scope: xsec::Scope::Namespace as i32,
            action: xsec::Action::Deny as i32,
            rules: vec![xsec::Rule {
                clauses: vec![xsec::Clause {
                    matches: vec![xsec::Match {
                        namespaces: vec![xsec::StringMatch {
                            match_type: Some(xsec::string_match::MatchType::Exact("foo".into())),
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        },
    );
    let e = plan_inbound(&snap, &pod, &arrive("10.0.2.3:9000", sleep)).expect_err("denied");
    assert_eq!(e.status, 401);
    assert!(e.reason.contains("ns/deny-foo"), "{e:?}");
    let plain = plan_inbound(&snap, &pod, &arrive("10.0.2.3:9000", None)).expect("admitted");
    assert!(!plain.mtls);
}
