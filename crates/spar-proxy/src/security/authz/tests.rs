//! Istio's documented AuthorizationPolicy semantics, case by case, and properties that must
//! hold for any policies: adding a DENY policy never allows more; removing an ALLOW rule never
//! allows more.

use std::net::IpAddr;

use http::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::Error;
use crate::security::pattern::normalize_path;

fn policy(name: &str, spec: Value) -> Policy {
    let spec: spar_model::istio::security::AuthorizationPolicy =
        serde_json::from_value(spec).expect("spec deserializes");
    compile(&format!("ns/{name}"), &spec).expect("compiles")
}

/// `.sni(UNKNOWABLE)`: mesh traffic, where no server name can be known.
const UNKNOWABLE: &str = "<unknowable>";

/// A request's facts, built up by the cases.
#[derive(Clone, Debug)]
struct Req {
    source: IpAddr,
    remote: IpAddr,
    principal: Option<String>,
    dest: IpAddr,
    port: u16,
    sni: Option<String>,
    http: Option<(String, String, String, HeaderMap)>,
    auth: Option<RequestAuth>,
}

fn http() -> Req {
    Req {
        source: "10.0.0.5".parse().expect("ip"),
        remote: "10.0.0.5".parse().expect("ip"),
        principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        dest: "10.0.1.9".parse().expect("ip"),
        port: 8080,
        sni: None,
        http: Some((
            "GET".into(),
            "/".into(),
            "example.com".into(),
            HeaderMap::new(),
        )),
        auth: None,
    }
}

fn tcp() -> Req {
    Req {
        http: None,
        ..http()
    }
}

impl Req {
    fn from(mut self, p: Option<&str>) -> Req {
        self.principal = p.map(str::to_string);
        self
    }
    fn ip(mut self, ip: &str) -> Req {
        self.source = ip.parse().expect("ip");
        self.remote = self.source;
        self
    }
    fn remote(mut self, ip: &str) -> Req {
        self.remote = ip.parse().expect("ip");
        self
    }
    fn port(mut self, p: u16) -> Req {
        self.port = p;
        self
    }
    fn sni(mut self, s: &str) -> Req {
        self.sni = Some(s.into());
        self
    }
    fn method(mut self, m: &str) -> Req {
        if let Some(h) = &mut self.http {
            h.0 = m.into();
        }
        self
    }
    fn path(mut self, p: &str) -> Req {
        if let Some(h) = &mut self.http {
            h.1 = normalize_path(p);
        }
        self
    }
    fn host(mut self, host: &str) -> Req {
        if let Some(h) = &mut self.http {
            h.2 = host.into();
        }
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        if let Some(h) = &mut self.http {
            h.3.append(k, v.parse().expect("value"));
        }
        self
    }
    fn jwt(mut self, principal: &str, claims: Value) -> Req {
        self.auth = Some(RequestAuth {
            principal: principal.into(),
            audiences: claims["aud"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            presenter: claims["azp"].as_str().map(str::to_string),
            claims,
        });
        self
    }
    fn verdict(&self, ps: &[Policy]) -> Verdict {
        let ns = self.principal.as_deref().and_then(|p| p.split('/').nth(2));
        let f = Facts {
            source_ip: self.source,
            remote_ip: self.remote,
            principal: self.principal.as_deref(),
            namespace: ns,
            dest_ip: self.dest,
            dest_port: self.port,
            sni: match &self.sni {
                Some(s) if s == UNKNOWABLE => Sni::Unknowable,
                s => Sni::Sent(s.as_deref()),
            },
            http: self.http.as_ref().map(|(m, p, h, hd)| Http {
                method: m,
                path: p,
                host: h,
                headers: hd,
                auth: self.auth.as_ref(),
            }),
        };
        evaluate(ps.iter(), &f)
    }
    fn allowed(&self, ps: &[Policy]) -> bool {
        self.verdict(ps).decision == Decision::Allow
    }
}

fn allow(rules: Value) -> Policy {
    policy("allow", json!({"action": "ALLOW", "rules": rules}))
}

fn deny(rules: Value) -> Policy {
    policy("deny", json!({"action": "DENY", "rules": rules}))
}

fn from(source: Value) -> Value {
    json!([{"from": [{"source": source}]}])
}

fn to(op: Value) -> Value {
    json!([{"to": [{"operation": op}]}])
}

fn when(conds: Value) -> Value {
    json!([{"when": conds}])
}

#[test]
fn documented_semantics() {
    let sleep = Some("cluster.local/ns/foo/sa/sleep");
    let other = Some("cluster.local/ns/bar/sa/other");
    let t = |spec: Value| vec![policy("p", spec)];
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Policy>, Req, bool)> = vec![
        ("no policy allows", vec![], http(), true),
        ("allow-nothing denies", t(json!({})), http(), false),
        ("allow-nothing denies TCP", t(json!({})), tcp(), false),
        ("an empty rule allows everything", vec![allow(json!([{}]))], http(), true),
        ("DENY without rules never matches", t(json!({"action": "DENY"})), http(), true),
        ("DENY with an empty rule denies everything", vec![deny(json!([{}]))], http(), false),
        ("principal exact", vec![allow(from(json!({"principals": [sleep]})))], http(), true),
        ("principal other", vec![allow(from(json!({"principals": [sleep]})))], http().from(other), false),
        ("principal plaintext", vec![allow(from(json!({"principals": [sleep]})))], http().from(None), false),
        ("principal prefix", vec![allow(from(json!({"principals": ["cluster.local/ns/foo/*"]})))], http(), true),
        ("principal prefix other", vec![allow(from(json!({"principals": ["cluster.local/ns/foo/*"]})))], http().from(other), false),
        ("principal suffix", vec![allow(from(json!({"principals": ["*/sa/sleep"]})))], http(), true),
        ("principal * is any identity", vec![allow(from(json!({"principals": ["*"]})))], http().from(other), true),
        ("principal * refuses plaintext", vec![allow(from(json!({"principals": ["*"]})))], http().from(None), false),
        ("DENY notPrincipals * denies plaintext", vec![deny(from(json!({"notPrincipals": ["*"]})))], http().from(None), false),
        ("DENY notPrincipals * lets mTLS in", vec![deny(from(json!({"notPrincipals": ["*"]})))], http(), true),
        ("namespace", vec![allow(from(json!({"namespaces": ["foo"]})))], http(), true),
        ("namespace other", vec![allow(from(json!({"namespaces": ["foo"]})))], http().from(other), false),
        ("notNamespaces", vec![allow(from(json!({"notNamespaces": ["bar"]})))], http().from(other), false),
        ("notNamespaces passes others", vec![allow(from(json!({"notNamespaces": ["bar"]})))], http(), true),
        ("serviceAccounts in any trust domain", vec![allow(from(json!({"serviceAccounts": ["foo/sleep"]})))], http().from(Some("other.td/ns/foo/sa/sleep")), true),
        ("serviceAccounts other", vec![allow(from(json!({"serviceAccounts": ["foo/sleep"]})))], http().from(other), false),
        ("notServiceAccounts", vec![deny(from(json!({"notServiceAccounts": ["foo/sleep"]})))], http().from(other), false),
        ("ipBlocks inside", vec![allow(from(json!({"ipBlocks": ["10.0.0.0/24"]})))], http(), true),
        ("ipBlocks outside", vec![allow(from(json!({"ipBlocks": ["10.0.9.0/24"]})))], http(), false),
        ("ipBlocks single address", vec![allow(from(json!({"ipBlocks": ["10.0.0.5"]})))], http(), true),
        ("notIpBlocks", vec![allow(from(json!({"notIpBlocks": ["10.0.0.0/24"]})))], http(), false),
        ("remoteIpBlocks use the original client", vec![allow(from(json!({"remoteIpBlocks": ["192.168.0.0/16"]})))], http().remote("192.168.1.1"), true),
        ("remoteIpBlocks not the peer", vec![allow(from(json!({"remoteIpBlocks": ["10.0.0.0/8"]})))], http().remote("192.168.1.1"), false),
        ("ports", vec![allow(to(json!({"ports": ["8080"]})))], http(), true),
        ("ports other", vec![allow(to(json!({"ports": ["9090"]})))], http(), false),
        ("notPorts", vec![deny(to(json!({"notPorts": ["8080"]})))], http().port(9090), false),
        ("methods", vec![allow(to(json!({"methods": ["GET"]})))], http(), true),
        ("methods other", vec![allow(to(json!({"methods": ["GET"]})))], http().method("POST"), false),
        ("notMethods", vec![deny(to(json!({"notMethods": ["GET", "HEAD"]})))], http().method("DELETE"), false),
        ("paths exact", vec![allow(to(json!({"paths": ["/info"]})))], http().path("/info"), true),
        ("paths exact is exact", vec![allow(to(json!({"paths": ["/info"]})))], http().path("/info/x"), false),
        ("paths prefix", vec![allow(to(json!({"paths": ["/api/*"]})))], http().path("/api/v1/x"), true),
        ("paths suffix", vec![allow(to(json!({"paths": ["*.png"]})))], http().path("/img/a.png"), true),
        ("paths template {*}", vec![allow(to(json!({"paths": ["/api/{*}/detail"]})))], http().path("/api/42/detail"), true),
        ("paths template {*} is one segment", vec![allow(to(json!({"paths": ["/api/{*}/detail"]})))], http().path("/api/4/2/detail"), false),
        ("paths template {**}", vec![allow(to(json!({"paths": ["/api/{**}"]})))], http().path("/api/a/b/c"), true),
        ("notPaths", vec![deny(to(json!({"notPaths": ["/healthz"]})))], http().path("/secret"), false),
        ("notPaths passes", vec![deny(to(json!({"notPaths": ["/healthz"]})))], http().path("/healthz"), true),
        ("paths are normalized before matching", vec![deny(to(json!({"paths": ["/admin*"]})))], http().path("/public/../admin"), false),
        ("percent-encoded unreserved is decoded", vec![deny(to(json!({"paths": ["/admin*"]})))], http().path("/%61dmin"), false),
        ("hosts ignore case", vec![allow(to(json!({"hosts": ["Example.com"]})))], http().host("EXAMPLE.com"), true),
        ("hosts ignore the port", vec![allow(to(json!({"hosts": ["example.com"]})))], http().host("example.com:8080"), true),
        ("hosts suffix", vec![allow(to(json!({"hosts": ["*.example.com"]})))], http().host("api.example.com"), true),
        ("notHosts", vec![deny(to(json!({"notHosts": ["example.com"]})))], http().host("evil.com"), false),
        ("from and to must both match", vec![allow(json!([{"from": [{"source": {"namespaces": ["foo"]}}], "to": [{"operation": {"methods": ["POST"]}}]}]))], http(), false),
        ("any from", vec![allow(json!([{"from": [{"source": {"namespaces": ["x"]}}, {"source": {"namespaces": ["foo"]}}]}]))], http(), true),
        ("any to", vec![allow(json!([{"to": [{"operation": {"methods": ["PUT"]}}, {"operation": {"paths": ["/"]}}]}]))], http(), true),
        ("fields of one source are ANDed", vec![allow(from(json!({"namespaces": ["foo"], "ipBlocks": ["10.9.0.0/16"]})))], http(), false),
        ("any rule", vec![allow(json!([{"to": [{"operation": {"methods": ["PUT"]}}]}, {"from": [{"source": {"namespaces": ["foo"]}}]}]))], http(), true),
        ("every when", vec![allow(when(json!([{"key": "request.headers[x-a]", "values": ["1"]}, {"key": "request.headers[x-b]", "values": ["2"]}])))], http().header("x-a", "1"), false),
        ("every when, all there", vec![allow(when(json!([{"key": "request.headers[x-a]", "values": ["1"]}, {"key": "request.headers[x-b]", "values": ["2"]}])))], http().header("x-a", "1").header("x-b", "2"), true),
        ("header missing", vec![allow(when(json!([{"key": "request.headers[x-token]", "values": ["*"]}])))], http(), false),
        ("header prefix", vec![allow(when(json!([{"key": "request.headers[User-Agent]", "values": ["curl/*"]}])))], http().header("user-agent", "curl/8.0"), true),
        ("DENY header x-token: admin", vec![deny(when(json!([{"key": "request.headers[x-token]", "notValues": ["admin"]}])))], http().header("x-token", "guest"), false),
        ("DENY header: the right token passes", vec![deny(when(json!([{"key": "request.headers[x-token]", "notValues": ["admin"]}])))], http().header("x-token", "admin"), true),
        ("when source.ip", vec![allow(when(json!([{"key": "source.ip", "values": ["10.0.0.0/8"]}])))], http(), true),
        ("when remote.ip", vec![allow(when(json!([{"key": "remote.ip", "values": ["192.168.0.0/16"]}])))], http(), false),
        ("when source.namespace", vec![allow(when(json!([{"key": "source.namespace", "values": ["foo"]}])))], http(), true),
        ("when source.principal", vec![allow(when(json!([{"key": "source.principal", "values": ["*/sa/sleep"]}])))], http(), true),
        ("when source.serviceAccount", vec![allow(when(json!([{"key": "source.serviceAccount", "values": ["foo/sleep"]}])))], http(), true),
        ("when destination.ip", vec![allow(when(json!([{"key": "destination.ip", "values": ["10.0.1.0/24"]}])))], http(), true),
        ("when destination.port", vec![allow(when(json!([{"key": "destination.port", "values": ["8080"]}])))], http(), true),
        ("when destination.port notValues", vec![allow(when(json!([{"key": "destination.port", "notValues": ["8080"]}])))], http(), false),
        ("when connection.sni absent", vec![allow(when(json!([{"key": "connection.sni", "values": ["*"]}])))], http(), false),
        ("when connection.sni", vec![allow(when(json!([{"key": "connection.sni", "values": ["*.example.com"]}])))], tcp().sni("a.example.com"), true),
        ("ALLOW by connection.sni on mesh traffic never matches", vec![allow(when(json!([{"key": "connection.sni", "values": ["*"]}])))], http().sni(UNKNOWABLE), false),
        ("DENY by connection.sni on mesh traffic applies without it", vec![deny(when(json!([{"key": "connection.sni", "values": ["a.example.com"]}])))], http().sni(UNKNOWABLE), false),
        ("DENY by connection.sni, another name sent", vec![deny(when(json!([{"key": "connection.sni", "values": ["a.example.com"]}])))], tcp().sni("b.example.com"), true),
        ("DENY by connection.sni, that name sent", vec![deny(when(json!([{"key": "connection.sni", "values": ["a.example.com"]}])))], tcp().sni("a.example.com"), false),
        ("when request.auth.principal", vec![allow(when(json!([{"key": "request.auth.principal", "values": ["https://iss/alice"]}])))], http().jwt("https://iss/alice", json!({})), true),
        ("when request.auth.audiences", vec![allow(when(json!([{"key": "request.auth.audiences", "values": ["api"]}])))], http().jwt("i/s", json!({"aud": ["web", "api"]})), true),
        ("when request.auth.presenter", vec![allow(when(json!([{"key": "request.auth.presenter", "values": ["app"]}])))], http().jwt("i/s", json!({"azp": "app"})), true),
        ("when groups claim", vec![allow(when(json!([{"key": "request.auth.claims[groups]", "values": ["group1"]}])))], http().jwt("i/s", json!({"groups": ["group1", "group2"]})), true),
        ("when groups claim missing", vec![allow(when(json!([{"key": "request.auth.claims[groups]", "values": ["group1"]}])))], http().jwt("i/s", json!({"groups": ["group2"]})), false),
        ("when nested claim", vec![allow(when(json!([{"key": "request.auth.claims[realm][role]", "values": ["admin"]}])))], http().jwt("i/s", json!({"realm": {"role": "admin"}})), true),
        ("when claim without a token", vec![allow(when(json!([{"key": "request.auth.claims[groups]", "values": ["*"]}])))], http(), false),
        ("requestPrincipals * needs a token", vec![allow(from(json!({"requestPrincipals": ["*"]})))], http(), false),
        ("requestPrincipals * with a token", vec![allow(from(json!({"requestPrincipals": ["*"]})))], http().jwt("testing@secure.istio.io/testing@secure.istio.io", json!({})), true),
        ("requestPrincipals exact", vec![allow(from(json!({"requestPrincipals": ["iss/bob"]})))], http().jwt("iss/alice", json!({})), false),
        ("notRequestPrincipals * denies without a token", vec![deny(from(json!({"notRequestPrincipals": ["*"]})))], http(), false),
        ("DENY wins over ALLOW", vec![allow(json!([{}])), deny(to(json!({"methods": ["GET"]})))], http(), false),
        ("a DENY that does not match", vec![allow(json!([{}])), deny(to(json!({"methods": ["POST"]})))], http(), true),
        ("one of several ALLOWs", vec![allow(to(json!({"methods": ["POST"]}))), policy("b", json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))], http(), true),
        ("AUDIT never denies", vec![policy("a", json!({"action": "AUDIT", "rules": [{}]}))], http(), true),
        ("AUDIT is not an ALLOW", vec![policy("a", json!({"action": "AUDIT", "rules": [{}]})), allow(to(json!({"methods": ["POST"]})))], http(), false),
        ("gRPC: POST and the method's path", vec![allow(to(json!({"methods": ["POST"], "paths": ["/pkg.Greeter/SayHello"]})))], http().method("POST").path("/pkg.Greeter/SayHello"), true),
        ("an empty source matches anything", vec![allow(from(json!({})))], http().from(None), true),
        ("TCP: an ALLOW with HTTP fields never matches", vec![allow(to(json!({"methods": ["GET"]})))], tcp(), false),
        ("TCP: an ALLOW with a header condition never matches", vec![allow(when(json!([{"key": "request.headers[x]", "values": ["*"]}])))], tcp(), false),
        ("TCP: a DENY with HTTP fields applies without them", vec![deny(to(json!({"methods": ["GET"]})))], tcp(), false),
        ("TCP: a DENY with ports and paths applies on the port", vec![deny(to(json!({"ports": ["8080"], "paths": ["/x"]})))], tcp(), false),
        ("TCP: ... and not on another port", vec![deny(to(json!({"ports": ["9090"], "paths": ["/x"]})))], tcp(), true),
        ("TCP: an ALLOW by port", vec![allow(to(json!({"ports": ["8080"]})))], tcp(), true),
        ("TCP: an ALLOW by principal", vec![allow(from(json!({"principals": [sleep]})))], tcp(), true),
        ("TCP: a DENY by namespace with a header condition", vec![deny(json!([{"from": [{"source": {"namespaces": ["foo"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}]))], tcp(), false),
        ("TCP: ... another namespace passes", vec![deny(json!([{"from": [{"source": {"namespaces": ["bar"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}]))], tcp(), true),
        ("TCP: requestPrincipals in an ALLOW", vec![allow(from(json!({"requestPrincipals": ["*"]})))], tcp(), false),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    for (what, ps, req, want) in &cases {
        assert_eq!(req.allowed(ps), *want, "{what}");
    }
}

#[test]
fn custom_and_audit_are_reported() {
    let custom = policy(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "ext-authz-http"}, "rules": [{"to": [{"operation": {"paths": ["/headers"]}}]}]}),
    );
    let v = http()
        .path("/headers")
        .verdict(std::slice::from_ref(&custom));
    assert_eq!(v.custom, Some(("ns/ext".into(), "ext-authz-http".into())));
    assert_eq!(v.decision, Decision::Allow, "CUSTOM is not an ALLOW");
    assert_eq!(
        http()
            .path("/ip")
            .verdict(std::slice::from_ref(&custom))
            .custom,
        None
    );
    let audit = policy(
        "audit",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    );
    assert_eq!(
        http().verdict(std::slice::from_ref(&audit)).audit,
        vec!["ns/audit".to_string()]
    );
    // What cannot be evaluated is applied without, as DENY: a TCP connection (or a condition
    // on the SNI of mesh traffic) meets the CUSTOM policy, which asks or refuses, and AUDIT logs.
    assert_eq!(
        tcp().verdict(std::slice::from_ref(&custom)).custom,
        Some(("ns/ext".into(), "ext-authz-http".into())),
        "a CUSTOM rule on HTTP fields is not skipped for TCP"
    );
    let by_sni = policy(
        "ext-sni",
        json!({"action": "CUSTOM", "provider": {"name": "p"}, "rules": [{"when": [{"key": "connection.sni", "values": ["a.example.com"]}]}]}),
    );
    assert!(
        http()
            .sni(UNKNOWABLE)
            .verdict(std::slice::from_ref(&by_sni))
            .custom
            .is_some()
    );
    assert!(
        tcp()
            .sni("b.example.com")
            .verdict(&[by_sni])
            .custom
            .is_none()
    );
    assert_eq!(tcp().verdict(&[audit]).audit, vec!["ns/audit".to_string()]);
}

#[test]
fn denials_name_the_policy_and_rule() {
    let d = deny(
        json!([{"to": [{"operation": {"methods": ["POST"]}}]}, {"to": [{"operation": {"methods": ["GET"]}}]}]),
    );
    let v = http().verdict(&[d]);
    assert_eq!(
        v.decision.detail(),
        "rbac_access_denied_matched_policy[ns[ns]-policy[deny]-rule[1]]"
    );
    let v = http().verdict(&[policy("p", json!({}))]);
    assert_eq!(
        v.decision.detail(),
        "rbac_access_denied_matched_policy[none]"
    );
}

#[test]
fn what_cannot_be_evaluated_is_refused() {
    for (spec, field, why) in [
        (
            json!({"rules": [{"when": [{"key": "destination.port", "values": ["http"]}]}]}),
            "spec.rules[0].when[0].values[0]",
            "not a port",
        ),
        (
            json!({"rules": [{"to": [{"operation": {"ports": ["eighty"]}}]}]}),
            "spec.rules[0].to[0].operation.ports.values[0]",
            "not a port",
        ),
        (
            json!({"rules": [{"when": [{"key": "experimental.envoy.filters.network.mysql_proxy[db.table]", "values": ["[update]"]}]}]}),
            "spec.rules[0].when[0].key",
            "not supported",
        ),
        (
            json!({"rules": [{"when": [{"key": "request.colour", "values": ["blue"]}]}]}),
            "spec.rules[0].when[0].key",
            "unknown",
        ),
        (
            json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]}),
            "spec.rules[0].when[0].key",
            "claims[NAME]",
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip", "values": ["10.0.0.0/33"]}]}]}),
            "spec.rules[0].when[0].values[0]",
            "CIDR",
        ),
        (
            json!({"rules": [{"when": [{"key": "source.namespace"}]}]}),
            "spec.rules[0].when[0]",
            "values or notValues",
        ),
        (
            json!({"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b"]}}]}]}),
            "spec.rules[0].to[0].operation.paths[0]",
            "last",
        ),
        (
            json!({"rules": [{"from": [{"source": {"serviceAccounts": ["sleep"]}}]}]}),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "namespace/serviceaccount",
        ),
        (
            json!({"rules": [{"from": [{"source": {"ipBlocks": ["not-an-ip"]}}]}]}),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "CIDR",
        ),
        (
            json!({"action": "CUSTOM", "rules": [{}]}),
            "spec.provider",
            "provider",
        ),
    ] {
        let s: spar_model::istio::security::AuthorizationPolicy =
            serde_json::from_value(spec.clone()).expect("deserializes");
        let e = compile("ns/p", &s).expect_err("refused");
        let Error::Config {
            field: f, reason, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(f, field, "{spec}: {e}");
        assert!(reason.contains(why), "{spec}: {e}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn source() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec!["foo", "bar", "*"]).prop_map(|n| json!({"namespaces": [n]})),
            prop::sample::select(vec!["cluster.local/ns/foo/sa/sleep", "*/sa/other", "*"])
                .prop_map(|p| json!({"principals": [p]})),
            prop::sample::select(vec!["foo", "bar"]).prop_map(|n| json!({"notNamespaces": [n]})),
            prop::sample::select(vec!["10.0.0.0/24", "10.9.0.0/16"])
                .prop_map(|c| json!({"ipBlocks": [c]})),
            Just(json!({"requestPrincipals": ["*"]})),
        ]
    }

    fn operation() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec!["GET", "POST"]).prop_map(|m| json!({"methods": [m]})),
            prop::sample::select(vec!["/a*", "/b", "/a/{*}"]).prop_map(|p| json!({"paths": [p]})),
            prop::sample::select(vec!["8080", "9090"]).prop_map(|p| json!({"ports": [p]})),
            prop::sample::select(vec!["/a*", "/b"]).prop_map(|p| json!({"notPaths": [p]})),
        ]
    }

    fn rule() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(source(), 0..3),
            prop::collection::vec(operation(), 0..3),
            prop::option::of(prop::sample::select(vec!["x", "y"])),
        )
            .prop_map(|(from, to, header)| {
                let mut r = json!({
                    "from": from.into_iter().map(|s| json!({"source": s})).collect::<Vec<_>>(),
                    "to": to.into_iter().map(|o| json!({"operation": o})).collect::<Vec<_>>(),
                });
                if let Some(h) = header {
                    r["when"] = json!([{"key": "request.headers[x-h]", "values": [h]}]);
                }
                r
            })
    }

    fn spec() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec!["ALLOW", "DENY", "AUDIT"]),
            prop::collection::vec(rule(), 0..3),
        )
            .prop_map(|(action, rules)| json!({"action": action, "rules": rules}))
    }

    fn request() -> impl Strategy<Value = Req> {
        (
            prop::sample::select(vec![
                Some("cluster.local/ns/foo/sa/sleep"),
                Some("cluster.local/ns/bar/sa/other"),
                None,
            ]),
            prop::sample::select(vec!["10.0.0.5", "10.9.1.1"]),
            prop::sample::select(vec!["GET", "POST"]),
            prop::sample::select(vec!["/a/1", "/b", "/c"]),
            prop::sample::select(vec![8080u16, 9090]),
            prop::option::of(prop::sample::select(vec!["x", "y"])),
            proptest::arbitrary::any::<bool>(),
            proptest::arbitrary::any::<bool>(),
        )
            .prop_map(|(p, ip, m, path, port, header, jwt, is_tcp)| {
                let mut r = if is_tcp { tcp() } else { http() };
                r = r.from(p).ip(ip).method(m).path(path).port(port);
                if let Some(h) = header {
                    r = r.header("x-h", h);
                }
                if jwt {
                    r = r.jwt("iss/sub", json!({}));
                }
                r
            })
    }

    fn compile_all(specs: &[Value]) -> Vec<Policy> {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| policy(&format!("p{i}"), s.clone()))
            .collect()
    }

    proptest! {
        #[test]
        fn adding_a_deny_never_allows_more(specs in prop::collection::vec(spec(), 0..4), extra in prop::collection::vec(rule(), 0..3), req in request()) {
            let before = compile_all(&specs);
            let mut after = before.clone();
            after.push(policy("added", json!({"action": "DENY", "rules": extra})));
            prop_assert!(!req.allowed(&after) || req.allowed(&before));
        }

        #[test]
        fn removing_an_allow_rule_never_allows_more(specs in prop::collection::vec(spec(), 1..4), pick in proptest::arbitrary::any::<prop::sample::Index>(), req in request()) {
            let before = compile_all(&specs);
            let allows: Vec<usize> = specs.iter().enumerate()
                .filter(|(_, s)| s["action"] == "ALLOW" && !s["rules"].as_array().map(Vec::is_empty).unwrap_or(true))
                .map(|(i, _)| i).collect();
            prop_assume!(!allows.is_empty());
            let i = allows[pick.index(allows.len())];
            let mut specs2 = specs.clone();
            if let Some(rules) = specs2[i]["rules"].as_array_mut() {
                rules.remove(0);
            }
            let after = compile_all(&specs2);
            prop_assert!(!req.allowed(&after) || req.allowed(&before));
        }
    }
}
