use std::collections::BTreeMap;

use http::HeaderMap;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use spar_xds::l7::{Members, PortProtocol, ServiceRoutes};

use super::*;
use crate::snapshot::ServiceKey;
use crate::snapshot::testing::{key, service, snapshot, workload};

const HOST: &str = "reviews.default.svc.cluster.local";

/// A snapshot of `reviews` (v1 at .1, v2 at .2) with this VirtualService/DestinationRule,
/// and `ratings` without L7 config; port 9080 declared HTTP, 9070 gRPC.
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
        virtual_service: if vs.is_null() {
            String::new()
        } else {
            vs.to_string()
        },
        virtual_service_name: "default/reviews".into(),
        destination_rule: if dr.is_null() {
            String::new()
        } else {
            dr.to_string()
        },
        destination_rule_name: "default/reviews".into(),
        subsets: [
            (
                "v1".to_string(),
                Members {
                    uids: vec!["default/v1".into()],
                },
            ),
            (
                "v2".to_string(),
                Members {
                    uids: vec!["default/v2".into()],
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    snapshot(
        vec![
            workload(
                "default",
                "v1",
                [10, 0, 0, 1],
                true,
                &[(&k, 9080, 9080), (&k, 9070, 9070)],
            ),
            workload(
                "default",
                "v2",
                [10, 0, 0, 2],
                true,
                &[(&k, 9080, 9080), (&k, 9070, 9070)],
            ),
        ],
        vec![
            service("default", "reviews", [10, 96, 0, 1]),
            service("default", "ratings", [10, 96, 0, 2]),
        ],
        vec![crate::l7::config::compile(&sr).expect("compiles")],
    )
}

struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: HeaderMap,
    port: u16,
    h2: bool,
    service: ServiceKey,
}

fn req(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        query: None,
        headers: HeaderMap::new(),
        port: 9080,
        h2: false,
        service: ServiceKey::new("default", HOST),
    }
}

impl Req {
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.insert(k, v.parse().expect("value"));
        self
    }
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: self.method,
            scheme: "http",
            authority: "reviews:9080",
            path: self.path,
            query: self.query,
            headers: &self.headers,
            port: self.port,
            service: &self.service,
            peer: "10.0.9.9:40000".parse().expect("addr"),
            h2: self.h2,
        }
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn forward<'s>(p: &'s RequestPlan<'s>) -> &'s Forward<'s> {
    match &p.step {
        Step::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn local_answers_are_planned_without_a_destination() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [
            {"name": "gone", "match": [{"uri": {"exact": "/gone"}}], "directResponse": {"status": 410, "body": {"string": "bye"}}},
            {"name": "moved", "match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 308}},
            {"name": "rest", "route": [{"destination": {"host": HOST}}]}]}),
        serde_json::Value::Null,
    );
    let r = req("/gone");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("plan");
    assert!(matches!(p.step, Step::Direct { status, body: "bye" } if status == 410));
    let mut r = req("/old/x");
    r.query = Some("a=1");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("plan");
    match p.step {
        Step::Redirect { status, location } => {
            assert_eq!(status, 308);
            assert_eq!(location, "http://reviews:9080/new");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.route.name, "moved");
}

#[test]
fn weights_choose_the_subset_and_its_endpoints() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [{"route": [
            {"destination": {"host": HOST, "subset": "v1"}, "weight": 80},
            {"destination": {"host": HOST, "subset": "v2"}, "weight": 20}]}]}),
        json!({"host": HOST, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
    );
    let mut rng = rng();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let r = req("/");
        let p = plan_request(&snap, &r.facts(), &mut rng).expect("plan");
        let f = forward(&p);
        let eps = f.cluster.endpoints();
        assert_eq!(eps.len(), 1, "a subset of one");
        *by.entry(f.cluster.subset.clone().unwrap_or_default())
            .or_default() += 1;
        let want = if f.cluster.subset.as_deref() == Some("v1") {
            "10.0.0.1:9080"
        } else {
            "10.0.0.2:9080"
        };
        assert_eq!(eps[0].0.to_string(), want);
    }
    assert!((740..860).contains(&by["v1"]), "{by:?}");
}

#[test]
fn unknown_destinations_and_services() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [
            {"match": [{"uri": {"exact": "/nowhere"}}], "route": [{"destination": {"host": "nowhere.example.com"}}]},
            {"match": [{"uri": {"exact": "/nosubset"}}], "route": [{"destination": {"host": HOST, "subset": "v9"}}]},
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": HOST}}]}]}),
        serde_json::Value::Null,
    );
    let e = plan_request(&snap, &req("/nowhere").facts(), &mut rng()).expect_err("no cluster");
    assert!(
        matches!(e, Error::NoCluster(ref h) if h == "nowhere.example.com"),
        "{e}"
    );
    let e = plan_request(&snap, &req("/other").facts(), &mut rng()).expect_err("no route");
    assert!(matches!(e, Error::NoRoute(_)), "{e}");
    let r = req("/nosubset");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("planned");
    assert!(
        forward(&p).cluster.endpoints().is_empty(),
        "an unknown subset selects nobody"
    );
    let mut r = req("/");
    r.service = ServiceKey::new("default", "ratings.default.svc.cluster.local");
    let e = plan_request(&snap, &r.facts(), &mut rng()).expect_err("no L7 config");
    assert!(matches!(e, Error::NoRoute(_)), "{e}");
}

#[test]
fn faults_and_mirrors_roll_by_percentage() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [
            {"match": [{"uri": {"exact": "/always"}}], "route": [{"destination": {"host": HOST}}],
             "fault": {"delay": {"fixedDelay": "7s", "percentage": {"value": 100}}, "abort": {"httpStatus": 500, "percentage": {"value": 100}}},
             "mirror": {"host": HOST, "subset": "v2"}},
            {"match": [{"uri": {"exact": "/never"}}], "route": [{"destination": {"host": HOST}}],
             "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0}}},
             "mirror": {"host": HOST}, "mirrorPercentage": {"value": 0}},
            {"match": [{"uri": {"exact": "/half"}}], "route": [{"destination": {"host": HOST}}],
             "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}},
             "mirrors": [{"destination": {"host": HOST}, "percentage": {"value": 25}}]}]}),
        serde_json::Value::Null,
    );
    let r = req("/always");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("plan");
    let f = forward(&p);
    assert_eq!(f.delay, Some(Duration::from_secs(7)));
    assert_eq!(f.abort, Some((500, None)));
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(f.mirrors[0].subset.as_deref(), Some("v2"));
    let r = req("/never");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("plan");
    let f = forward(&p);
    assert_eq!((f.delay, f.abort, f.mirrors.len()), (None, None, 0));
    let (mut aborts, mut mirrors) = (0, 0);
    let mut rng = rng();
    for _ in 0..2000 {
        let r = req("/half");
        let p = plan_request(&snap, &r.facts(), &mut rng).expect("plan");
        let f = forward(&p);
        if let Some((200, Some(14))) = f.abort {
            aborts += 1;
        }
        mirrors += f.mirrors.len();
    }
    assert!(
        (900..1100).contains(&aborts),
        "{aborts} of 2000 aborted at 50%"
    );
    assert!(
        (400..600).contains(&mirrors),
        "{mirrors} of 2000 mirrored at 25%"
    );
}

#[test]
fn rewrites_timeouts_and_retries_are_in_the_plan() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [{"match": [{"uri": {"prefix": "/v1/"}}],
            "rewrite": {"uri": "/api/", "authority": "reviews.internal"},
            "timeout": "3s", "retries": {"attempts": 4, "perTryTimeout": "500ms", "retryOn": "5xx"},
            "route": [{"destination": {"host": HOST, "port": {"number": 9070}}}]}]}),
        serde_json::Value::Null,
    );
    let mut r = req("/v1/items");
    r.query = Some("page=2");
    let p = plan_request(&snap, &r.facts(), &mut rng()).expect("plan");
    let f = forward(&p);
    assert_eq!(f.path_and_query, "/api/items?page=2");
    assert_eq!(f.authority, "reviews.internal");
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    assert_eq!(f.retry.attempts, 4);
    assert_eq!(f.retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(f.retry.on.five_xx);
    assert_eq!(f.cluster.port, 9070, "the destination's port");
}

#[test]
fn http2_upstream_when_declared_or_asked() {
    let snap = mesh(
        json!({"hosts": [HOST], "http": [{"route": [{"destination": {"host": HOST}}]}]}),
        serde_json::Value::Null,
    );
    let r = req("/");
    assert!(!forward(&plan_request(&snap, &r.facts(), &mut rng()).expect("plan")).h2);
    let mut r = req("/");
    r.port = 9070;
    assert!(
        forward(&plan_request(&snap, &r.facts(), &mut rng()).expect("plan")).h2,
        "gRPC port"
    );
    let mut r = req("/");
    r.h2 = true;
    assert!(
        forward(&plan_request(&snap, &r.facts(), &mut rng()).expect("plan")).h2,
        "h2 downstream"
    );
}

#[test]
fn hash_keys_follow_the_destination_rule() {
    let vs = json!({"hosts": [HOST], "http": [{"route": [{"destination": {"host": HOST}}]}]});
    let dr = |ch: serde_json::Value| json!({"host": HOST, "trafficPolicy": {"loadBalancer": {"consistentHash": ch}}});
    let key_of = |snap: &Snapshot, r: &Req| {
        forward(&plan_request(snap, &r.facts(), &mut rng()).expect("plan")).hash
    };
    let by_header = mesh(vs.clone(), dr(json!({"httpHeaderName": "x-user"})));
    let a = key_of(&by_header, &req("/").header("x-user", "alice"));
    let b = key_of(&by_header, &req("/").header("x-user", "bob"));
    assert!(a.is_some() && b.is_some() && a != b);
    assert_eq!(
        a,
        key_of(&by_header, &req("/x").header("x-user", "alice")),
        "one key, one hash"
    );
    assert_eq!(key_of(&by_header, &req("/")), None, "no header, no key");
    let by_cookie = mesh(
        vs.clone(),
        dr(json!({"httpCookie": {"name": "session", "ttl": "0s"}})),
    );
    let c = key_of(&by_cookie, &req("/").header("cookie", "a=1; session=s1"));
    assert_eq!(c, Some(balance::hash_key(b"s1")));
    let by_query = mesh(vs.clone(), dr(json!({"httpQueryParameterName": "user"})));
    let mut r = req("/");
    r.query = Some("x=1&user=carol");
    assert_eq!(key_of(&by_query, &r), Some(balance::hash_key(b"carol")));
    let by_ip = mesh(vs.clone(), dr(json!({"useSourceIp": true})));
    assert_eq!(
        key_of(&by_ip, &req("/")),
        Some(balance::hash_key(b"10.0.9.9"))
    );
    let none = mesh(vs, serde_json::Value::Null);
    assert_eq!(key_of(&none, &req("/").header("x-user", "alice")), None);
}
