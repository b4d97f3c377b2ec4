//! Bad inputs tried on the inbound decision: the CONNECT authority of an HBONE stream is a
//! client's bytes, and the peer identity is whatever SAN its certificate carries. Whatever
//! they are, `plan_inbound` must not panic, must admit only this pod's own address on a port
//! that is not a capture port, and must never admit what an L4 DENY covers.

use proptest::prelude::*;
use spar_xds::security as xsec;

use super::*;
use crate::snapshot::testing::{key, service, snapshot, workload};

/// The pod `ns/c` at 10.0.2.3 (HBONE), and a caller `ns/a` at 10.0.1.2.
fn mesh() -> Snapshot {
    let web = key("ns", "web");
    snapshot(
        vec![
            workload("ns", "a", [10, 0, 1, 2], true, &[(&web, 80, 8080)]),
            workload("ns", "c", [10, 0, 2, 3], true, &[(&web, 80, 8080)]),
        ],
        vec![service("ns", "web", [10, 96, 0, 1])],
        vec![],
    )
}

/// A namespace-wide L4 DENY of callers from namespace `foo`.
fn deny_foo(snap: &mut Snapshot) {
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
}

/// Authorities: anything, and this pod's address with edits a client might try (case,
/// spaces, leading zeros, IPv6 spellings, zone ids, other ports, the capture ports).
fn authority() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[0-9.:\\[\\]a-fA-F%]{0,30}",
        (
            prop::sample::select(vec![
                "10.0.2.3",
                "10.0.2.03",
                "010.0.2.3",
                " 10.0.2.3",
                "10.0.2.3 ",
                "[::ffff:10.0.2.3]",
                "[::ffff:a00:203]",
                "[10.0.2.3]",
                "[::1]",
                "[fe80::1%1]",
                "10.0.2.2",
                "10.0.2.3.",
                "0x0a.0.2.3",
                "167772675",
                "localhost",
                "",
            ]),
            prop_oneof![
                any::<u16>().prop_map(|p| format!(":{p}")),
                prop::sample::select(vec![
                    ":15001", ":15006", ":15008", ":9000", ":0", ":", "", ":65536", ":+80", ":080",
                    ":9000 ", ":9000/x", ":9000:1",
                ])
                .prop_map(str::to_string),
            ],
        )
            .prop_map(|(h, p)| format!("{h}{p}")),
    ]
}

/// Peer identities: none, anything, and SPIFFE IDs with edits.
fn identity() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        ".{0,60}",
        "spiffe://[a-z.]{0,12}/ns/[a-z/]{0,6}/sa/[a-z/]{0,6}",
        prop::sample::select(vec![
            "spiffe://cluster.local/ns/foo/sa/sleep",
            "spiffe://cluster.local/ns/foo/sa/",
            "spiffe://cluster.local/ns/foo/sa/sleep/x",
            "spiffe:///ns/foo/sa/sleep",
            "SPIFFE://cluster.local/ns/foo/sa/sleep",
            "spiffe://cluster.local/ns/foo",
        ])
        .prop_map(str::to_string),
    ])
}

fn peer() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        Just("10.0.1.2:40000".parse().expect("addr")),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `principal`: only `spiffe://` IDs give a principal (the ID without the scheme), and a
    /// namespace only when the ID has exactly the five parts, none empty.
    #[test]
    fn principals_are_the_id_without_its_scheme(id in prop_oneof![
        ".{0,60}",
        "spiffe://[a-z./]{0,30}",
        "spiffe://[a-z.]{0,8}/ns/[a-z/]{0,6}/sa/[a-z/]{0,6}",
    ]) {
        let (p, ns) = principal(&id);
        prop_assert_eq!(p.as_deref(), id.strip_prefix("spiffe://"));
        if let Some(ns) = ns {
            let parts: Vec<&str> = id["spiffe://".len()..].split('/').collect();
            prop_assert_eq!(parts.len(), 5, "{}", id);
            prop_assert!(parts.iter().all(|s| !s.is_empty()), "{}", id);
            prop_assert_eq!((parts[1], parts[2], parts[3]), ("ns", ns.as_str(), "sa"));
        }
    }

    /// A well-formed identity round-trips: its principal form and its namespace.
    #[test]
    fn spiffe_ids_give_their_namespace(
        td in "[a-z0-9.-]{1,12}", ns in "[a-z0-9-]{1,12}", sa in "[a-z0-9-]{1,12}",
    ) {
        let id = spar_identity::Identity::new(&td, &ns, &sa);
        let (p, n) = principal(&id.to_string());
        prop_assert_eq!(p, Some(id.principal()));
        prop_assert_eq!(n, Some(ns));
    }

    /// Any authority and identity: admitted only to this pod's own address, on the port the
    /// authority names, never a capture port; every refusal is a 400 or a 401.
    #[test]
    fn only_this_pods_address_is_admitted(
        target in authority(), id in identity(), peer in peer(),
    ) {
        let snap = mesh();
        let pod = snap.workloads["ns/c"].clone();
        let a = Arrival { peer, peer_identity: id.as_deref(), target: &target };
        match plan_inbound(&snap, &pod, &a) {
            Ok(ok) => {
                let parsed: SocketAddr = target.parse().expect("admitted means ip:port");
                prop_assert_eq!(ok.target, parsed);
                prop_assert_eq!(Some(ok.target.ip()), pod.ip, "{}", target);
                prop_assert!(!CAPTURE_PORTS.contains(&ok.target.port()), "{}", target);
                prop_assert_eq!(ok.peer, peer);
                prop_assert_eq!(ok.mtls, id.is_some());
                prop_assert_eq!(ok.peer_identity, id);
                if let Some(w) = &ok.source {
                    prop_assert_eq!(w.ip, Some(peer.ip()), "the caller is the workload at its address");
                }
            }
            Err(e) => prop_assert_eq!(e.status, 400, "{:?} for {:?}", e, target),
        }
    }

    /// With an L4 DENY of namespace `foo`: no identity whose namespace is `foo` is ever
    /// admitted, whatever the authority; everything else is decided as without the policy.
    #[test]
    fn a_denied_namespace_is_never_admitted(
        target in authority(), id in identity(), peer in peer(),
    ) {
        let open = mesh();
        let mut closed = mesh();
        deny_foo(&mut closed);
        let pod = closed.workloads["ns/c"].clone();
        let a = Arrival { peer, peer_identity: id.as_deref(), target: &target };
        let denied_ns = id.as_deref().map(principal).and_then(|(_, ns)| ns).as_deref() == Some("foo");
        match (plan_inbound(&open, &pod, &a), plan_inbound(&closed, &pod, &a)) {
            (Ok(_), Ok(_)) => prop_assert!(!denied_ns, "{:?} admitted", id),
            (Ok(_), Err(e)) => {
                prop_assert!(denied_ns, "{:?} refused: {:?}", id, e);
                prop_assert_eq!(e.status, 401);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b, "refused before the policy"),
            (Err(e), Ok(_)) => prop_assert!(false, "a DENY admitted what was refused: {:?}", e),
        }
    }
}
