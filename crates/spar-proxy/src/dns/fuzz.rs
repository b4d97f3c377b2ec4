//! Bad inputs tried on the DNS proxy: any datagram a pod sends to 15053 goes through
//! `parse_question`, then `lookup` and `answer`. Random bytes and mutated real queries must
//! never panic, and whatever parses must answer with a well-formed reply that echoes the
//! question, so a stub resolver never sees a reply it cannot read.

use std::net::IpAddr;

use proptest::prelude::*;
use spar_xds::workload::Service;

use super::*;
use crate::snapshot::testing::{key, service, snapshot, workload};

/// A query as a stub resolver sends it: header, one question, class IN.
fn query(id: u16, flags: u8, labels: &[Vec<u8>], qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[flags & 0x7f, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in labels {
        q.push(l.len() as u8);
        q.extend_from_slice(l);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// `reviews` with a VIP and two endpoints; `db` headless (no VIP: its endpoints answer).
fn mesh() -> Snapshot {
    let reviews = key("ns", "reviews");
    let db = key("ns", "db");
    snapshot(
        vec![
            workload("ns", "r1", [10, 0, 0, 1], true, &[(&reviews, 80, 8080)]),
            workload("ns", "d1", [10, 0, 0, 2], true, &[(&db, 5432, 5432)]),
            workload("ns", "d2", [10, 0, 0, 3], true, &[(&db, 5432, 5432)]),
        ],
        vec![
            service("ns", "reviews", [10, 96, 0, 1]),
            Service {
                name: "db".into(),
                namespace: "ns".into(),
                hostname: "db.ns.svc.cluster.local".into(),
                ..Default::default()
            },
        ],
        vec![],
    )
}

/// Read a reply back as a resolver would: the header, the echoed question, and each answer
/// record (name pointer, type, class, TTL, address). Panics (fails the property) on any
/// malformation.
fn read_reply(reply: &[u8], query: &[u8], q: &Question) -> Vec<IpAddr> {
    assert!(reply.len() >= q.end, "a reply holds at least the question");
    assert_eq!(&reply[..2], &query[..2], "the id is echoed");
    assert_ne!(reply[2] & 0x80, 0, "QR: this is a response");
    assert_eq!(reply[2] & 0x01, query[2] & 0x01, "RD is copied");
    assert_eq!(&reply[4..6], &[0, 1], "one question");
    let ancount = u16::from_be_bytes([reply[6], reply[7]]) as usize;
    assert_eq!(
        &reply[8..12],
        &[0, 0, 0, 0],
        "no authority or additional records"
    );
    assert_eq!(
        &reply[12..q.end],
        &query[12..q.end],
        "the question is echoed"
    );
    let mut i = q.end;
    let mut ips = Vec::new();
    for _ in 0..ancount {
        let rec = &reply[i..];
        assert_eq!(&rec[..2], &[0xc0, 12], "the name points at the question");
        assert_eq!(u16::from_be_bytes([rec[2], rec[3]]), q.qtype);
        assert_eq!(&rec[4..6], &[0, 1], "class IN");
        let len = u16::from_be_bytes([rec[10], rec[11]]) as usize;
        let data = &rec[12..12 + len];
        ips.push(match len {
            4 => IpAddr::from(<[u8; 4]>::try_from(data).expect("4 bytes")),
            16 => IpAddr::from(<[u8; 16]>::try_from(data).expect("16 bytes")),
            n => panic!("an address record of {n} bytes"),
        });
        i += 12 + len;
    }
    assert_eq!(i, reply.len(), "nothing after the last record");
    ips
}

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => "[a-zA-Z0-9-]{1,20}".prop_map(String::into_bytes),
        1 => "[ -~]{1,63}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..64),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// A real query, then bytes overwritten, cut off or appended.
fn mutated_query() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<u8>(),
        prop::collection::vec(label(), 0..5),
        prop_oneof![Just(TYPE_A), Just(TYPE_AAAA), any::<u16>()],
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        prop_oneof![3 => Just(0usize), 1 => 1usize..6],
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(id, flags, labels, qtype, pokes, cut, tail)| {
            let mut q = query(id, flags, &labels, qtype);
            for (at, b) in pokes {
                let at = at.index(q.len());
                q[at] = b;
            }
            q.truncate(q.len().saturating_sub(cut));
            q.extend(tail);
            q
        })
}

/// What `serve` does with one datagram, without the socket: None when dropped.
fn serve_one(snap: &Snapshot, datagram: &[u8]) -> Option<(Question, Vec<u8>)> {
    let q = parse_question(datagram)?;
    let ips = lookup(snap, &q.name)?;
    let reply = answer(datagram, &q, &ips, 0);
    Some((q, reply))
}

/// The invariants of anything `parse_question` accepts.
fn check_question(msg: &[u8], q: &Question) -> Result<(), TestCaseError> {
    prop_assert!(
        q.end <= msg.len() && q.end >= 12 + 1 + 4,
        "{q:?} in {msg:?}"
    );
    prop_assert_eq!(msg[2] & 0x80, 0, "a response is never taken for a question");
    prop_assert_eq!(&msg[4..6], &[0u8, 1][..]);
    prop_assert_eq!(&msg[q.end - 2..q.end], &[0u8, 1][..], "class IN");
    prop_assert_eq!(q.name.to_ascii_lowercase(), q.name.clone(), "lower case");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any datagram (also with a header that passes the first checks): no panic; what
    /// parses is a question inside the datagram, and a SERVFAIL for it is readable.
    #[test]
    fn random_datagrams_parse_safely(
        mut msg in prop::collection::vec(any::<u8>(), 0..600),
        fix_header in any::<bool>(),
    ) {
        if fix_header && msg.len() >= 12 {
            msg[2] &= 0x7f;
            msg[4..6].copy_from_slice(&[0, 1]);
        }
        if let Some(q) = parse_question(&msg) {
            check_question(&msg, &q)?;
            let reply = answer(&msg, &q, &[], 2);
            prop_assert!(read_reply(&reply, &msg, &q).is_empty());
        }
    }

    /// A query a stub resolver would send parses back to its name (lower case) and type.
    #[test]
    fn real_queries_round_trip(
        id in any::<u16>(),
        flags in any::<u8>(),
        labels in prop::collection::vec("[a-zA-Z0-9-]{1,63}", 0..6),
        qtype in any::<u16>(),
    ) {
        let raw: Vec<Vec<u8>> = labels.iter().map(|l| l.clone().into_bytes()).collect();
        let msg = query(id, flags, &raw, qtype);
        let q = parse_question(&msg).expect("a real query parses");
        check_question(&msg, &q)?;
        prop_assert_eq!(q.name, labels.join(".").to_ascii_lowercase());
        prop_assert_eq!(q.qtype, qtype);
        prop_assert_eq!(q.end, msg.len());
    }

    /// Real queries with bytes poked, cut or appended: no panic; what still parses answers
    /// with a reply a resolver can read, whose records are exactly the addresses of the
    /// question's family.
    #[test]
    fn mutated_queries_answer_well_formed(
        msg in mutated_query(),
        ips in prop::collection::vec(ip(), 0..20),
        rcode in any::<u8>(),
    ) {
        if let Some(q) = parse_question(&msg) {
            check_question(&msg, &q)?;
            let reply = answer(&msg, &q, &ips, rcode);
            prop_assert_eq!(reply[3] & 0x0f, rcode & 0x0f);
            let want: Vec<IpAddr> = ips
                .iter()
                .copied()
                .filter(|ip| match q.qtype {
                    TYPE_A => ip.is_ipv4(),
                    TYPE_AAAA => ip.is_ipv6(),
                    _ => false,
                })
                .collect();
            prop_assert_eq!(read_reply(&reply, &msg, &q), want);
        }
    }

    /// Any name: no panic; a name the mesh answers is one of its hosts, in any case, and the
    /// answer is exactly its addresses.
    #[test]
    fn lookups_answer_only_mesh_names(
        name in prop_oneof![
            ".{0,40}",
            prop::sample::select(vec![
                "reviews.ns.svc.cluster.local", "REVIEWS.ns.SVC.cluster.local",
                "db.ns.svc.cluster.local", "reviews.ns.svc.cluster.local.", "reviews", "",
            ]).prop_map(str::to_string),
        ],
    ) {
        let snap = mesh();
        if let Some(ips) = lookup(&snap, &name) {
            let host = name.to_ascii_lowercase();
            prop_assert!(snap.by_host.contains_key(&host), "{name}");
            let want: Vec<IpAddr> = match host.as_str() {
                "reviews.ns.svc.cluster.local" => vec![[10, 96, 0, 1].into()],
                "db.ns.svc.cluster.local" => vec![[10, 0, 0, 2].into(), [10, 0, 0, 3].into()],
                other => return Err(TestCaseError::fail(format!("unexpected host {other}"))),
            };
            prop_assert_eq!(ips, want);
        }
    }

    /// The whole of `serve` for one datagram (mesh names): a mutated query for a mesh name
    /// is either dropped or answered with a readable reply.
    #[test]
    fn serve_answers_mesh_names_readably(
        id in any::<u16>(),
        host in prop::sample::select(vec!["reviews", "db", "ratings"]),
        upper in any::<bool>(),
        qtype in prop_oneof![Just(TYPE_A), Just(TYPE_AAAA), any::<u16>()],
        pokes in prop::collection::vec((12usize..60, any::<u8>()), 0..2),
    ) {
        let snap = mesh();
        let name = format!("{host}.ns.svc.cluster.local");
        let name = if upper { name.to_ascii_uppercase() } else { name };
        let labels: Vec<Vec<u8>> = name.split('.').map(|l| l.as_bytes().to_vec()).collect();
        let mut msg = query(id, 0x01, &labels, qtype);
        for (at, b) in pokes {
            if at < msg.len() {
                msg[at] = b;
            }
        }
        if let Some((q, reply)) = serve_one(&snap, &msg) {
            check_question(&msg, &q)?;
            let got = read_reply(&reply, &msg, &q);
            prop_assert!(got.len() <= 2, "{got:?}");
        }
    }
}

/// A label may hold any byte, `.` included: the single label `reviews.ns.svc.cluster.local`
/// is not the mesh name of four labels. It was answered with the mesh's VIP; now its dots
/// are escaped, so the mesh does not know it and the query goes to the node's resolvers.
#[test]
fn a_dot_inside_a_label_is_not_a_mesh_name() {
    let snap = mesh();
    let msg = query(1, 0x01, &[b"reviews.ns.svc.cluster.local".to_vec()], TYPE_A);
    let q = parse_question(&msg).expect("a valid (if odd) question");
    assert_eq!(q.name, r"reviews\.ns\.svc\.cluster\.local");
    assert_eq!(lookup(&snap, &q.name), None, "not the mesh's name");
}
