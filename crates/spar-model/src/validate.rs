//! Semantic checks on a decoded resource: what Istio's validation webhook rejects, plus
//! warnings for fields Spar accepts but does not act on. Pure: resource in, issues out.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::duration::parse_duration;
use crate::istio::networking::StringMatch;
use crate::problem::Issue;
use crate::resource::{Kind, Resource, Spec};

/// Every issue found in `r`.
/// A DNS-1123 subdomain, as Kubernetes object names are (pods, service accounts): lower-case
/// letters, digits, `-` and `.`, alphanumeric at both ends, at most 253 characters. The CA
/// signs identities only for such names.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A DNS-1123 label, as namespace names are: a subdomain without dots, at most 63
/// characters.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// Names of the L4 policies the control plane generates per pod (PeerAuthentication's,
/// waypoint-only enforcement's); an AuthorizationPolicy of the same name would be taken for one.
pub const GENERATED_POLICY_PREFIXES: [&str; 2] =
    ["spar-peer-authentication-", "spar-waypoint-only-"];

pub fn validate(r: &Resource) -> Vec<Issue> {
    let mut v = Checker::default();
    v.name("metadata.name", &r.meta.name);
    if let Some(ns) = &r.meta.namespace {
        if !r.kind.namespaced() {
            v.warn("metadata.namespace", "ignored: this kind is cluster-scoped");
        } else {
            v.name("metadata.namespace", ns);
        }
    }
    match &r.spec {
        Spec::VirtualService(s) => v.virtual_service(s),
        Spec::DestinationRule(s) => v.destination_rule(s),
        Spec::ServiceEntry(s) => v.service_entry(s),
        Spec::Sidecar(s) => v.sidecar(s),
        Spec::AuthorizationPolicy(s) => {
            if let Some(p) = GENERATED_POLICY_PREFIXES
                .iter()
                .find(|p| r.meta.name.starts_with(**p))
            {
                v.err(
                    "metadata.name",
                    format!("names starting with `{p}` are reserved for the policies Spar generates; rename this policy"),
                );
            }
            v.target_namespaces(r.namespace(), s.target_ref.iter().chain(&s.target_refs));
            v.authorization_policy(s)
        }
        Spec::PeerAuthentication(s) => v.peer_authentication(s),
        Spec::RequestAuthentication(s) => {
            v.target_namespaces(r.namespace(), s.target_ref.iter().chain(&s.target_refs));
            v.request_authentication(s)
        }
        Spec::Service(s) => v.service(s),
        Spec::Deployment(s) => v.deployment(s),
        Spec::Job(s) => v.job(s),
        Spec::Pod(spec, st) => {
            v.pod_spec("spec", spec);
            if let Some(ip) = &st.pod_ip {
                v.ip("status.podIP", ip);
            }
        }
        Spec::ConfigMap(data) if r.name() == crate::istio::mesh::CONFIGMAP => v.mesh_config(
            data.get(crate::istio::mesh::KEY)
                .map(String::as_str)
                .unwrap_or(""),
        ),
        Spec::WorkloadEntry(s) => {
            if let Some(a) = &s.address {
                v.ip("spec.address", a);
            }
        }
        Spec::HttpRoute(s) => {
            for (i, rule) in s.rules.iter().enumerate() {
                for (j, b) in rule.backend_refs.iter().enumerate() {
                    if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
                        v.err(
                            format!("spec.rules[{i}].backendRefs[{j}].weight"),
                            "must be between 0 and 1000000",
                        );
                    }
                }
            }
        }
        Spec::Secret(sec) if sec.kind == "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                let pem = sec
                    .data
                    .get(key)
                    .map(|b| String::from_utf8_lossy(b).into_owned());
                if !pem.is_some_and(|p| p.contains("-----BEGIN")) {
                    v.err(
                        format!("data.{key}"),
                        "a kubernetes.io/tls Secret needs a PEM tls.crt and tls.key",
                    );
                }
            }
        }
        Spec::Gateway(g) => {
            // One port is either passed through by SNI or served here, never both.
            let passthrough = |srv: &crate::istio::networking::Server| {
                srv.tls
                    .as_ref()
                    .and_then(|t| t.get("mode"))
                    .and_then(|m| m.as_str())
                    == Some("PASSTHROUGH")
            };
            for (i, srv) in g.servers.iter().enumerate() {
                if g.servers[..i]
                    .iter()
                    .any(|o| o.port.number == srv.port.number && passthrough(o) != passthrough(srv))
                {
                    v.err(
                        format!("spec.servers[{i}].tls.mode"),
                        format!(
                            "port {} mixes PASSTHROUGH with other modes: give passthrough hosts a port of their own",
                            srv.port.number
                        ),
                    );
                }
            }
            for (i, srv) in g.servers.iter().enumerate() {
                let Some(tls) = &srv.tls else { continue };
                let mode = tls.get("mode").and_then(|m| m.as_str()).unwrap_or("SIMPLE");
                let acted_on = match mode {
                    "SIMPLE" => tls.get("credentialName").is_some(),
                    "PASSTHROUGH" => true,
                    _ => false,
                };
                if !acted_on {
                    v.warn(
                        format!("spec.servers[{i}].tls"),
                        "spar terminates TLS (mode SIMPLE) with credentialName (a kubernetes.io/tls Secret given to spar up) or passes it through by SNI (mode PASSTHROUGH, VirtualService tls routes); other modes are not acted on",
                    );
                }
            }
        }
        Spec::K8sGateway(s) => {
            for (i, l) in s.listeners.iter().enumerate() {
                if !["HTTP", "HTTPS", "TCP", "TLS", "HBONE", "UDP"].contains(&l.protocol.as_str()) {
                    v.err(
                        format!("spec.listeners[{i}].protocol"),
                        format!("unknown protocol {:?}", l.protocol),
                    );
                }
            }
            let passthrough = |l: &crate::gateway_api::Listener| {
                l.protocol == "TLS"
                    && l.tls
                        .as_ref()
                        .and_then(|t| t.get("mode"))
                        .and_then(|m| m.as_str())
                        == Some("Passthrough")
            };
            for (i, l) in s.listeners.iter().enumerate() {
                if s.listeners[..i]
                    .iter()
                    .any(|o| o.port == l.port && passthrough(o) != passthrough(l))
                {
                    v.err(
                        format!("spec.listeners[{i}]"),
                        format!(
                            "port {} mixes a TLS Passthrough listener with others: give it a port of its own",
                            l.port
                        ),
                    );
                }
            }
            for (i, l) in s.listeners.iter().enumerate() {
                let Some(tls) = &l.tls else { continue };
                let mode = tls
                    .get("mode")
                    .and_then(|m| m.as_str())
                    .unwrap_or("Terminate");
                let has_ref = tls
                    .get("certificateRefs")
                    .and_then(|c| c.get(0))
                    .and_then(|c| c.get("name"))
                    .is_some();
                let acted_on = match mode {
                    "Terminate" => has_ref,
                    "Passthrough" => l.protocol == "TLS",
                    _ => false,
                };
                if !acted_on {
                    v.warn(
                        format!("spec.listeners[{i}].tls"),
                        "spar terminates TLS with certificateRefs[0] (a kubernetes.io/tls Secret given to spar up) or passes it through by SNI (protocol TLS, mode Passthrough, TLSRoutes); other TLS settings are not acted on",
                    );
                }
            }
            if s.gateway_class_name == crate::gateway_api::WAYPOINT_CLASS {
                let one_hbone = s.listeners.len() == 1
                    && s.listeners[0].port == 15008
                    && s.listeners[0].protocol == "HBONE";
                if !one_hbone {
                    v.err(
                        "spec.listeners",
                        "a waypoint has exactly one listener, on port 15008 with protocol HBONE",
                    );
                }
                if let Some(f) = r.meta.labels.get(crate::gateway_api::WAYPOINT_FOR)
                    && !["service", "workload", "all", "none"].contains(&f.as_str())
                {
                    v.err(
                        format!("metadata.labels.{}", crate::gateway_api::WAYPOINT_FOR),
                        format!("{f:?}: use service, workload, all or none"),
                    );
                }
            }
        }
        _ => {}
    }
    v.unsupported(r);
    v.issues
}

mod k8s;
mod networking;
mod security;

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.issues.push(Issue::error(path, msg));
    }

    fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.issues.push(Issue::warning(path, msg));
    }

    /// Kubernetes object names: DNS-1123 subdomain.
    fn name(&mut self, path: &str, name: &str) {
        if !is_dns_subdomain(name) {
            self.err(
                path,
                format!(
                    "{name:?} is not a valid name: use lower-case letters, digits, '-' and '.'"
                ),
            );
        }
    }

    fn duration(&mut self, path: impl Into<String>, d: &Option<String>) {
        if let Some(d) = d
            && let Err(e) = parse_duration(d)
        {
            self.err(path, e);
        }
    }

    fn ip(&mut self, path: &str, s: &str) {
        if s.parse::<IpAddr>().is_err() {
            self.err(path, format!("{s:?} is not an IP address"));
        }
    }

    fn cidr(&mut self, path: String, s: &str) {
        if s.parse::<IpNet>().is_err() && s.parse::<IpAddr>().is_err() {
            self.err(path, format!("{s:?} is not an IP address or CIDR block"));
        }
    }

    fn percent(&mut self, path: String, p: f64) {
        if !(0.0..=100.0).contains(&p) {
            self.err(path, format!("percentage {p} must be between 0 and 100"));
        }
    }

    fn port(&mut self, path: String, p: u32) {
        if p == 0 || p > 65535 {
            self.err(path, format!("port {p} must be between 1 and 65535"));
        }
    }

    fn one_of(&mut self, path: String, value: &Option<String>, allowed: &[&str]) {
        if let Some(v) = value
            && !allowed.contains(&v.as_str())
        {
            self.err(path, format!("{v:?} is not one of {}", allowed.join(", ")));
        }
    }

    fn string_match(&mut self, path: String, m: &StringMatch) {
        let set = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|x| x.is_some())
            .count();
        if set != 1 {
            self.err(path.clone(), "set exactly one of exact, prefix or regex");
        }
        if let Some(re) = &m.regex
            && let Err(e) = regex::Regex::new(re)
        {
            self.err(
                format!("{path}.regex"),
                format!("invalid regular expression: {e}"),
            );
        }
    }

    /// Fields Spar accepts but does not act on: warn, by name, so nothing is silently dropped.
    fn unsupported(&mut self, r: &Resource) {
        let patterns: &[&str] = match r.kind {
            Kind::VirtualService => &[],
            Kind::DestinationRule => &[
                "spec.trafficPolicy.tunnel",
                "spec.trafficPolicy.proxyProtocol",
                "spec.trafficPolicy.retryBudget",
                "spec.trafficPolicy.loadBalancer.localityLbSetting",
                "spec.trafficPolicy.loadBalancer.warmup",
            ],
            Kind::K8sGateway => &["spec.infrastructure"],
            Kind::HttpRoute => &[
                "spec.rules[*].sessionPersistence",
                "spec.rules[*].filters[*].extensionRef",
                "spec.rules[*].filters[*].cors",
            ],
            Kind::Telemetry => &["spec.accessLogging[*].filter", "spec.metrics[*].overrides"],
            Kind::Deployment => &[
                "spec.strategy",
                "spec.minReadySeconds",
                "spec.revisionHistoryLimit",
                "spec.template.spec.initContainers",
                "spec.template.spec.volumes",
                "spec.template.spec.affinity",
                "spec.template.spec.tolerations",
                "spec.template.spec.nodeSelector",
                "spec.template.spec.containers[*].livenessProbe",
                "spec.template.spec.containers[*].startupProbe",
                "spec.template.spec.containers[*].resources",
                "spec.template.spec.containers[*].volumeMounts",
                "spec.template.spec.containers[*].env[*].valueFrom",
            ],
            _ => &[],
        };
        let v = r.to_value();
        for pat in patterns {
            for path in find(&v, pat) {
                self.warn(path, "not supported by spar yet; ignored");
            }
        }
        if matches!(r.kind, Kind::Deployment | Kind::Job) {
            self.security_contexts(&v);
        }
    }

    /// The box runs containers as `runAsUser`/`runAsGroup` (nobody by default); the rest of
    /// a securityContext is not acted on.
    fn security_contexts(&mut self, v: &Value) {
        const ACTED_ON: [&str; 3] = ["runAsUser", "runAsGroup", "runAsNonRoot"];
        let pod = "spec.template.spec.securityContext";
        let mut paths: Vec<String> = find(v, pod);
        paths.extend(find(v, "spec.template.spec.containers[*].securityContext"));
        for path in paths {
            let Some(ctx) = lookup(v, &path).and_then(Value::as_object) else {
                continue;
            };
            for (k, val) in ctx {
                if !ACTED_ON.contains(&k.as_str()) {
                    self.warn(format!("{path}.{k}"), "not supported by spar yet; ignored");
                } else if k != "runAsNonRoot"
                    && val.as_u64().is_none_or(|n| n > u64::from(u32::MAX))
                {
                    self.err(
                        format!("{path}.{k}"),
                        "a numeric user or group id is required",
                    );
                }
            }
            if ctx.get("runAsNonRoot") == Some(&Value::Bool(true))
                && ctx.get("runAsUser").and_then(Value::as_u64) == Some(0)
            {
                self.err(format!("{path}.runAsUser"), "runAsNonRoot forbids user 0");
            }
        }
    }
}

/// The value at a concrete path from `find` (`a.b[2].c`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.') {
        let (name, index) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (seg, None),
        };
        cur = cur.get(name)?;
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// Concrete paths in `v` that match `pattern` (segments split by '.', `[*]` = each element).
fn find(v: &Value, pattern: &str) -> Vec<String> {
    fn walk(v: &Value, segs: &[&str], at: String, out: &mut Vec<String>) {
        let Some((seg, rest)) = segs.split_first() else {
            if !v.is_null() {
                out.push(at);
            }
            return;
        };
        let (key, each) = match seg.strip_suffix("[*]") {
            Some(k) => (k, true),
            None => (*seg, false),
        };
        let Some(child) = v.get(key) else { return };
        let here = if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        };
        if each {
            for (i, item) in child.as_array().into_iter().flatten().enumerate() {
                walk(item, rest, format!("{here}[{i}]"), out);
            }
        } else {
            walk(child, rest, here, out);
        }
    }
    let segs: Vec<&str> = pattern.split('.').collect();
    let mut out = Vec::new();
    walk(v, &segs, String::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::decode;
    use serde_json::json;

    fn issues(v: Value) -> Vec<(String, String)> {
        let r = decode(&v).expect("decodes");
        validate(&r)
            .into_iter()
            .map(|i| (i.path, i.message))
            .collect()
    }

    fn vs(http: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"}, "spec": {"hosts": ["reviews"], "http": http}})
    }

    #[test]
    fn generated_policy_names_are_reserved() {
        let ap = |name: &str| {
            issues(
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": "a"}, "spec": {}}),
            )
        };
        for name in ["spar-peer-authentication-web", "spar-waypoint-only-a-wp"] {
            let found = ap(name);
            assert_eq!(found.len(), 1, "{name}: {found:?}");
            assert!(found[0].1.contains("reserved"), "{found:?}");
        }
        assert!(ap("spar-allow").is_empty());
    }

    #[test]
    fn a_port_is_passed_through_or_served_never_both() {
        let classic = |second_mode: &str| {
            issues(
                json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "g", "namespace": "a"},
                "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                    {"port": {"number": 443, "name": "a", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
                     "tls": {"mode": "PASSTHROUGH"}},
                    {"port": {"number": 443, "name": "b", "protocol": "HTTPS"}, "hosts": ["b.example.com"],
                     "tls": {"mode": second_mode, "credentialName": "c"}}]}}),
            )
        };
        let mixed = classic("SIMPLE");
        assert!(
            mixed
                .iter()
                .any(|(p, m)| p == "spec.servers[1].tls.mode" && m.contains("port 443")),
            "{mixed:?}"
        );
        assert!(
            classic("PASSTHROUGH").is_empty(),
            "{:?}",
            classic("PASSTHROUGH")
        );
        let api = issues(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "a"},
            "spec": {"gatewayClassName": "istio", "listeners": [
                {"name": "a", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                {"name": "b", "port": 443, "protocol": "HTTPS",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "c"}]}}]}}),
        );
        assert!(
            api.iter()
                .any(|(p, m)| p == "spec.listeners[1]" && m.contains("port 443")),
            "{api:?}"
        );
    }

    #[test]
    fn weights_must_sum_to_100() {
        let found = issues(vs(json!([{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 40}]}])));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "spec.http[0].route");
        assert!(found[0].1.contains("90"));
    }

    #[test]
    fn good_route_has_no_issues() {
        let found = issues(vs(
            json!([{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
            "fault": {"delay": {"percentage": {"value": 100.0}, "fixedDelay": "7s"}},
            "timeout": "0.5s", "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure"},
            "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}]),
        ));
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn table_of_errors() {
        let cases = [
            (
                vs(json!([{"route": [{"destination": {"host": "a"}}], "timeout": "fast"}])),
                "spec.http[0].timeout",
            ),
            (
                vs(
                    json!([{"match": [{"uri": {"prefix": "/", "exact": "/"}}], "route": [{"destination": {"host": "a"}}]}]),
                ),
                "spec.http[0].match[0].uri",
            ),
            (
                vs(
                    json!([{"match": [{"uri": {"regex": "("}}], "route": [{"destination": {"host": "a"}}]}]),
                ),
                "spec.http[0].match[0].uri.regex",
            ),
            (
                vs(
                    json!([{"fault": {"abort": {"httpStatus": 42}}, "route": [{"destination": {"host": "a"}}]}]),
                ),
                "spec.http[0].fault.abort.httpStatus",
            ),
            (vs(json!([{}])), "spec.http[0]"),
            (
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
                "spec": {"action": "MAYBE"}}),
                "spec.action",
            ),
            (
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
                "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}}),
                "spec.rules[0].from[0].source.ipBlocks[0]",
            ),
            (
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"},
                "spec": {"rules": [{"when": [{"key": "source.color", "values": ["x"]}]}]}}),
                "spec.rules[0].when[0].key",
            ),
            (
                json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "p"},
                "spec": {"portLevelMtls": {"80": {"mode": "DISABLE"}}}}),
                "spec.portLevelMtls",
            ),
            (
                json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "d"},
                "spec": {"host": "r", "subsets": [{"name": "v1"}, {"name": "v1"}]}}),
                "spec.subsets[1].name",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}}),
                "metadata.name",
            ),
        ];
        for (v, path) in cases {
            let found = issues(v);
            assert!(
                found.iter().any(|(p, _)| p == path),
                "expected issue at {path}, got {found:?}"
            );
        }
    }

    /// What the proxy's policy engine could not evaluate is refused here, by field, so a
    /// policy never reaches a proxy with a condition it would drop.
    #[test]
    fn security_fields_the_engine_cannot_evaluate_are_errors() {
        let ap = |spec: Value| {
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p"}, "spec": spec})
        };
        let ra = |rule: Value| {
            json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                "metadata": {"name": "j"}, "spec": {"jwtRules": [rule]}})
        };
        let cases = [
            (
                ap(json!({"rules": [{"when": [{"key": "destination.port", "values": ["http"]}]}]})),
                "spec.rules[0].when[0].values[0]",
            ),
            (
                ap(json!({"rules": [{"from": [{"source": {"serviceAccounts": ["sleep"]}}]}]})),
                "spec.rules[0].from[0].source.serviceAccounts[0]",
            ),
            (
                ap(json!({"rules": [{"to": [{"operation": {"paths": ["/a/{**}/b"]}}]}]})),
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                ap(json!({"rules": [{"to": [{"operation": {"notPaths": ["/a/x{*}"]}}]}]})),
                "spec.rules[0].to[0].operation.notPaths[0]",
            ),
            (
                ap(
                    json!({"rules": [{"when": [{"key": "request.headers[x y]", "values": ["1"]}]}]}),
                ),
                "spec.rules[0].when[0].key",
            ),
            (
                ap(
                    json!({"action": "DENY", "rules": [{"when": [{"key": "connection.sni", "values": ["a"]}]}]}),
                ),
                "spec.rules[0].when[0].key",
            ),
            (
                ap(
                    json!({"rules": [{"when": [{"key": "experimental.envoy.filters.network.mysql_proxy[db.table]", "values": ["[update]"]}]}]}),
                ),
                "spec.rules[0].when[0].key",
            ),
            (
                ap(json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]})),
                "spec.rules[0].when[0].key",
            ),
            (
                ra(json!({"issuer": "i", "jwks": "not json"})),
                "spec.jwtRules[0].jwks",
            ),
            (
                ra(json!({"issuer": "i", "jwksUri": "file:///etc/keys"})),
                "spec.jwtRules[0].jwksUri",
            ),
            (
                ra(json!({"issuer": "i", "fromHeaders": [{"name": "bad header"}]})),
                "spec.jwtRules[0].fromHeaders[0].name",
            ),
            (
                ra(
                    json!({"issuer": "i", "outputClaimToHeaders": [{"header": "", "claim": "sub"}]}),
                ),
                "spec.jwtRules[0].outputClaimToHeaders[0].header",
            ),
        ];
        for (v, path) in cases {
            let found = issues(v.clone());
            assert!(
                found.iter().any(|(p, _)| p == path),
                "expected issue at {path} for {v}, got {found:?}"
            );
        }
        let fine = ap(
            json!({"rules": [{"from": [{"source": {"serviceAccounts": ["ns/sa"]}}],
            "to": [{"operation": {"paths": ["/api/{*}/items/{**}"]}}],
            "when": [{"key": "request.headers[x-token]", "values": ["a"]},
                     {"key": "request.auth.claims[groups]", "values": ["g"]}]}]}),
        );
        assert!(issues(fine).is_empty());
        let at_a_gateway = ap(json!({"action": "DENY",
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "public"}],
            "rules": [{"when": [{"key": "connection.sni", "values": ["a.example.com"]}]}]}));
        assert!(
            issues(at_a_gateway).is_empty(),
            "connection.sni at an ingress gateway"
        );
        let elsewhere = decode(&json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "public", "namespace": "edge"}]}}))
        .expect("decodes");
        let found = validate(&elsewhere);
        assert!(
            found
                .iter()
                .any(|i| i.path == "spec.targetRefs[0].namespace"
                    && i.severity == crate::problem::Severity::Error),
            "{found:?}"
        );
        let targeted = decode(&ap(json!({"targetRefs": [
            {"kind": "Service", "group": "", "name": "web"},
            {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ext"}]})))
        .expect("decodes");
        let found = validate(&targeted);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].path == "spec.targetRefs[1]"
                && found[0].severity == crate::problem::Severity::Warning
                && found[0].message.contains("not enforced"),
            "accepted but not enforced is said by name: {found:?}"
        );
    }

    #[test]
    fn unsupported_fields_warn_by_name() {
        let r = decode(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "c", "command": ["x"], "resources": {"limits": {"cpu": "1"}}}]}}}}))
        .expect("decodes");
        let found = validate(&r);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "spec.template.spec.containers[0].resources");
        assert_eq!(found[0].severity, crate::problem::Severity::Warning);
    }
}
