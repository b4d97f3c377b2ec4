//! Bad inputs tried on the L7 planner: hyper has parsed the request line and headers, and
//! everything after that is Spar's: route matching on the path, method, authority, headers
//! and query; rewrites; redirects; the consistent-hash key. Any request head must plan
//! without a panic, the same way twice for the same rolls, and rewrites must keep what
//! they do not replace.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use spar_xds::l7::{Members, PortProtocol, ServiceRoutes};

use super::*;
use crate::l7::config::{Rewrite, StringMatch};
use crate::snapshot::ServiceKey;
use crate::snapshot::testing::{key, service, snapshot, workload};

const HOST: &str = "reviews.default.svc.cluster.local";

fn virtual_service() -> serde_json::Value {
    json!({"hosts": [HOST], "http": [
        {"name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api/"}}],
         "rewrite": {"uri": "/v2/"}, "route": [{"destination": {"host": HOST, "subset": "v2"}}]},
        {"name": "regex", "match": [{"uri": {"regex": "/r/[0-9]+.*"}}],
         "rewrite": {"uriRegexRewrite": {"match": "^/r/([0-9]+)", "rewrite": "/item/\\1"}},
         "route": [{"destination": {"host": HOST}}]},
        {"name": "moved", "match": [{"uri": {"prefix": "/moved"}}], "redirect": {"uri": "/here", "port": 8080}},
        {"name": "elsewhere", "match": [{"queryParams": {"go": {"exact": "1"}}}], "redirect": {"authority": "other", "redirectCode": 302}},
        {"name": "gone", "match": [{"uri": {"exact": "/gone"}, "method": {"exact": "DELETE"}}],
         "directResponse": {"status": 410, "body": {"string": "bye"}}},
        {"name": "internal", "match": [{"authority": {"prefix": "reviews."}, "withoutHeaders": {"x-skip": {"regex": ".*"}}}],
         "rewrite": {"authority": "reviews.internal"}, "timeout": "3s",
         "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}}},
         "mirror": {"host": HOST, "subset": "v1"}, "mirrorPercentage": {"value": 50},
         "route": [{"destination": {"host": HOST, "subset": "v1"}}]},
        {"name": "rest", "route": [
            {"destination": {"host": HOST, "subset": "v1"}, "weight": 50},
            {"destination": {"host": HOST, "subset": "v2"}, "weight": 50}]}]})
}

/// How the DestinationRule hashes (none, or by header, cookie, query or source IP).
fn destination_rule(hash: usize) -> serde_json::Value {
    let lb = match hash {
        0 => json!({"simple": "ROUND_ROBIN"}),
        1 => json!({"consistentHash": {"httpHeaderName": "x-user"}}),
        2 => json!({"consistentHash": {"httpCookie": {"name": "session", "ttl": "0s"}}}),
        3 => json!({"consistentHash": {"httpQueryParameterName": "u"}}),
        _ => json!({"consistentHash": {"useSourceIp": true}}),
    };
    json!({"host": HOST, "trafficPolicy": {"loadBalancer": lb}, "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}}]})
}

fn mesh(vs: serde_json::Value, dr: serde_json::Value) -> Snapshot {
    let k = key("default", "reviews");
    let sr = ServiceRoutes {
        namespace: "default".into(),
        hostname: HOST.into(),
        ports: vec![
            PortProtocol {
                port: 9080,
                protocol: "http".into(),
                name: "http".into(),
            },
            PortProtocol {
                port: 9070,
                protocol: "grpc".into(),
                name: "grpc".into(),
            },
        ],
        virtual_service: vs.to_string(),
        virtual_service_name: "default/reviews".into(),
        destination_rule: dr.to_string(),
        destination_rule_name: "default/reviews".into(),
        subsets: [("v1", "default/v1"), ("v2", "default/v2")]
            .into_iter()
            .map(|(s, uid)| {
                (
                    s.to_string(),
                    Members {
                        uids: vec![uid.into()],
                    },
                )
            })
            .collect(),
    };
    snapshot(
        vec![
            workload("default", "v1", [10, 0, 0, 1], true, &[(&k, 9080, 9080)]),
            workload("default", "v2", [10, 0, 0, 2], true, &[(&k, 9080, 9080)]),
        ],
        vec![service("default", "reviews", [10, 96, 0, 1])],
        vec![crate::l7::config::compile(&sr).expect("compiles")],
    )
}

/// One request head, as hyper would hand it over (and some it never would).
#[derive(Debug, Clone)]
struct Head {
    method: String,
    authority: String,
    path: String,
    query: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    port: u16,
    h2: bool,
    peer: SocketAddr,
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "DELETE", "delete", "PATCH", "CONNECT", ""
        ])
        .prop_map(str::to_string),
        "[A-Za-z!#$%&'*+.^_`|~-]{1,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => "/[a-zA-Z0-9/._%~-]{0,30}",
        1 => ".{0,30}",
        1 => prop::sample::select(vec!["/gone", "/api/x/y", "/r/12/z", "/moved/x", "/Gone", "*"])
            .prop_map(str::to_string),
        2 => (
            prop::sample::select(vec![
                "/api/", "/api/", "/API/", "/api", "/r/1", "/r/", "/moved", "/gone", "/", "//", "",
            ]),
            "[a-zA-Z0-9/._%-]{0,12}",
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
    ]
}

fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
    let name = prop_oneof![
        prop::sample::select(vec!["end-user", "x-user", "cookie", "host", "x-skip", "u"])
            .prop_map(HeaderName::from_static),
        "[a-z0-9-]{1,12}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("name")),
    ];
    let value = prop_oneof![
        prop::sample::select(vec!["jason", "JASON", "session=abc; x=1", "session=", ""])
            .prop_map(|v| v.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    (name, value).prop_filter_map("a header value", |(n, v)| {
        HeaderValue::from_bytes(&v).ok().map(|v| (n, v))
    })
}

fn head() -> impl Strategy<Value = Head> {
    (
        method(),
        prop_oneof![
            prop::sample::select(vec![
                "reviews:9080",
                "reviews.default:9080",
                "REVIEWS.x",
                "[::1]:9080",
                "10.96.0.1",
                "",
            ])
            .prop_map(str::to_string),
            ".{0,24}",
        ],
        path(),
        prop::option::of(prop_oneof![
            prop::sample::select(vec!["go=1", "u=7&go=1", "go=10", "u", "=", "&&", ""])
                .prop_map(str::to_string),
            ".{0,24}",
        ]),
        prop::collection::vec(header(), 0..5),
        any::<bool>(),
        prop_oneof![Just(9080u16), Just(9070u16), any::<u16>()],
        any::<bool>(),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    )
        .prop_map(
            |(method, authority, path, query, mut headers, jason, port, h2, peer)| {
                // One head in eight is the direct response's, which chance rarely spells.
                let (method, path) = match (jason, peer.port() % 4) {
                    (false, 0) => ("DELETE".to_string(), "/gone".to_string()),
                    _ => (method, path),
                };
                if jason {
                    let user = (
                        HeaderName::from_static("end-user"),
                        HeaderValue::from_static("jason"),
                    );
                    headers.insert(0, user);
                }
                Head {
                    method,
                    authority,
                    path,
                    query,
                    headers,
                    port,
                    h2,
                    peer,
                }
            },
        )
}

fn plan_debug(snap: &Snapshot, f: &RequestFacts<'_>, seed: u64) -> String {
    format!(
        "{:?}",
        plan_request(snap, f, &mut StdRng::seed_from_u64(seed))
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any request head: planned (the last route takes everything), the same way for the
    /// same rolls, and each step keeps its promises: no rewrite keeps the path and query as
    /// they came; a prefix rewrite replaces only the prefix; the upstream authority is the
    /// rewritten one or the request's; a redirect is an absolute `http://` URL.
    #[test]
    fn any_request_head_plans(h in head(), hash in 0usize..5, seed in any::<u64>()) {
        let snap = mesh(virtual_service(), destination_rule(hash));
        let mut headers = HeaderMap::new();
        for (n, v) in &h.headers {
            headers.append(n.clone(), v.clone());
        }
        let svc = ServiceKey::new("default", HOST);
        let f = RequestFacts {
            method: &h.method,
            scheme: "http",
            authority: &h.authority,
            path: &h.path,
            query: h.query.as_deref(),
            headers: &headers,
            port: h.port,
            service: &svc,
            peer: h.peer,
            h2: h.h2,
        };
        let plan = plan_request(&snap, &f, &mut StdRng::seed_from_u64(seed));
        prop_assert_eq!(format!("{plan:?}"), plan_debug(&snap, &f, seed), "deterministic");
        let plan = plan.expect("the last route matches every request");
        let with_query = |p: &str| match &h.query {
            Some(q) => format!("{p}?{q}"),
            None => p.to_string(),
        };
        match &plan.step {
            Step::Forward(fw) => {
                prop_assert_eq!(
                    &fw.authority,
                    plan.route.rewrite_authority.as_deref().unwrap_or(&h.authority)
                );
                prop_assert!(fw.h2 || !h.h2, "an HTTP/2 downstream goes upstream as HTTP/2");
                let (_, matched) = routing::select(snap.services[&svc].l7.as_deref().expect("l7"), &f)
                    .expect("selected");
                match (&plan.route.rewrite, matched.and_then(|m| m.uri.as_ref())) {
                    (None, _) => prop_assert_eq!(&fw.path_and_query, &with_query(&h.path)),
                    (Some(Rewrite::Uri(new)), Some(StringMatch::Prefix(p))) => {
                        prop_assert!(h.path.starts_with(p.as_str()));
                        prop_assert_eq!(
                            &fw.path_and_query,
                            &with_query(&format!("{new}{}", &h.path[p.len()..]))
                        );
                    }
                    (Some(Rewrite::Regex(..)), _) => {
                        prop_assert!(fw.path_and_query.starts_with("/item/"), "{}", fw.path_and_query);
                    }
                    _ => {}
                }
            }
            Step::Redirect { status, location } => {
                prop_assert!(status.is_redirection());
                prop_assert!(location.starts_with("http://"), "{}", location);
                if plan.route.name == "moved" && !h.authority.contains('[') {
                    // Only a numeric port is replaced.
                    let host = match h.authority.rsplit_once(':') {
                        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
                        _ => h.authority.as_str(),
                    };
                    prop_assert_eq!(location, &format!("http://{host}:8080/here"));
                }
                if plan.route.name == "elsewhere" {
                    prop_assert_eq!(location, &format!("http://other{}", with_query(&h.path)));
                }
            }
            Step::Direct { status, body } => {
                prop_assert_eq!((status.as_u16(), *body), (410, "bye"));
                prop_assert_eq!((h.method.as_str(), h.path.as_str()), ("DELETE", "/gone"));
            }
        }
    }

    /// The consistent-hash key of a header, cookie or query value is a function of that
    /// value only: the same value in a request with other headers and another path lands on
    /// the same key.
    #[test]
    fn hash_keys_depend_only_on_their_value(
        value in "[a-zA-Z0-9]{1,16}",
        noise in prop::collection::vec(header(), 0..4),
        path in path(),
    ) {
        let svc = ServiceKey::new("default", HOST);
        for (on, header, query) in [
            (HashOn::Header("x-user".parse().expect("name")), Some(("x-user", value.clone())), None),
            (HashOn::Cookie("session".into()), Some(("cookie", format!("a=b; session={value}"))), None),
            (HashOn::Query("u".into()), None, Some(format!("x=1&u={value}"))),
        ] {
            let mut quiet = HeaderMap::new();
            let mut noisy = HeaderMap::new();
            for (n, v) in &noise {
                if Some(n.as_str()) != header.as_ref().map(|(h, _)| *h) {
                    noisy.append(n.clone(), v.clone());
                }
            }
            if let Some((n, v)) = &header {
                quiet.insert(*n, v.parse().expect("value"));
                noisy.insert(*n, v.parse().expect("value"));
            }
            let b = Balance::Hash(on);
            let key = hash_of(&b, &get(&quiet, "/", query.as_deref(), &svc));
            prop_assert!(key.is_some());
            prop_assert_eq!(key, hash_of(&b, &get(&noisy, &path, query.as_deref(), &svc)));
        }
    }
}

/// A plain GET to `reviews`.
fn get<'a>(
    headers: &'a HeaderMap,
    path: &'a str,
    query: Option<&'a str>,
    svc: &'a ServiceKey,
) -> RequestFacts<'a> {
    RequestFacts {
        method: "GET",
        scheme: "http",
        authority: "reviews",
        path,
        query,
        headers,
        port: 9080,
        service: svc,
        peer: "10.0.9.9:1".parse().expect("addr"),
        h2: false,
    }
}

/// `ignoreUriCase` lets `/OLD/a/b` match the prefix `/old/`, and a prefix rewrite replaces
/// the matched prefix only (as Envoy's `prefix_rewrite` does), so the rest of the path must
/// survive: `/new/a/b`, not `/new/`.
#[test]
fn a_case_insensitive_prefix_rewrite_keeps_the_rest_of_the_path() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [
            {"match": [{"uri": {"prefix": "/old/"}, "ignoreUriCase": true}], "rewrite": {"uri": "/new/"},
             "route": [{"destination": {"host": HOST}}]}]}),
        destination_rule(0),
    );
    let headers = HeaderMap::new();
    let svc = ServiceKey::new("default", HOST);
    let f = get(&headers, "/OLD/a/b", None, &svc);
    let plan = plan_request(&snap, &f, &mut StdRng::seed_from_u64(1)).expect("plan");
    let Step::Forward(fw) = plan.step else {
        panic!("forwarded")
    };
    assert_eq!(fw.path_and_query, "/new/a/b");
}

/// A redirect that sets a port replaces the port of the request's authority; an IPv6
/// literal without a port has none to replace, and its brackets must survive.
#[test]
fn a_redirect_port_keeps_an_ipv6_host_whole() {
    let snap = mesh(virtual_service(), destination_rule(0));
    let headers = HeaderMap::new();
    let svc = ServiceKey::new("default", HOST);
    for (authority, want) in [
        ("[::1]:9080", "http://[::1]:8080/here"),
        ("[::1]", "http://[::1]:8080/here"),
    ] {
        let f = RequestFacts {
            authority,
            ..get(&headers, "/moved", None, &svc)
        };
        let plan = plan_request(&snap, &f, &mut StdRng::seed_from_u64(1)).expect("plan");
        let Step::Redirect { location, .. } = plan.step else {
            panic!("redirected")
        };
        assert_eq!(location, want, "{authority}");
    }
}
