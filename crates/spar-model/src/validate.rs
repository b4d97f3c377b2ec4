//! Semantic checks on a decoded resource: what Istio's validation webhook rejects, plus
//! warnings for fields Spar accepts but does not act on. Pure: resource in, issues out.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::duration::parse_duration;
use crate::istio::networking::{self as net, StringMatch};
use crate::istio::security as sec;
use crate::problem::Issue;
use crate::resource::{Kind, Resource, Spec};

/// Every issue found in `r`.
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
        Spec::AuthorizationPolicy(s) => v.authorization_policy(s),
        Spec::PeerAuthentication(s) => v.peer_authentication(s),
        Spec::RequestAuthentication(s) => v.request_authentication(s),
        Spec::Service(s) => v.service(s),
        Spec::Deployment(s) => v.deployment(s),
        Spec::Pod(_, st) => {
            if let Some(ip) = &st.pod_ip {
                v.ip("status.podIP", ip);
            }
        }
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
        Spec::K8sGateway(s) => {
            for (i, l) in s.listeners.iter().enumerate() {
                if !["HTTP", "HTTPS", "TCP", "TLS", "HBONE", "UDP"].contains(&l.protocol.as_str()) {
                    v.err(
                        format!("spec.listeners[{i}].protocol"),
                        format!("unknown protocol {:?}", l.protocol),
                    );
                }
            }
        }
        _ => {}
    }
    v.unsupported(r);
    v.issues
}

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
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
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

    fn virtual_service(&mut self, s: &net::VirtualService) {
        if s.hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, h) in s.hosts.iter().enumerate() {
            if h.is_empty() || h.contains('/') {
                self.err(
                    format!("spec.hosts[{i}]"),
                    format!("{h:?} is not a host name"),
                );
            }
        }
        for (i, r) in s.http.iter().enumerate() {
            let p = format!("spec.http[{i}]");
            self.http_route(&p, r);
        }
        for (i, r) in s.tcp.iter().enumerate() {
            let p = format!("spec.tcp[{i}]");
            self.weights(
                &p,
                r.route.iter().map(|d| (&d.destination, d.weight)).collect(),
            );
            for (j, m) in r.matches.iter().enumerate() {
                for (k, c) in m.destination_subnets.iter().enumerate() {
                    self.cidr(format!("{p}.match[{j}].destinationSubnets[{k}]"), c);
                }
            }
        }
        for (i, r) in s.tls.iter().enumerate() {
            self.weights(
                &format!("spec.tls[{i}]"),
                r.route.iter().map(|d| (&d.destination, d.weight)).collect(),
            );
        }
    }

    fn http_route(&mut self, p: &str, r: &net::HttpRoute) {
        let actions = usize::from(!r.route.is_empty())
            + usize::from(r.redirect.is_some())
            + usize::from(r.direct_response.is_some())
            + usize::from(r.delegate.is_some());
        if actions == 0 {
            self.err(p, "set one of route, redirect, directResponse or delegate");
        } else if actions > 1 {
            self.err(
                p,
                "route, redirect, directResponse and delegate are mutually exclusive",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            for (f, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    self.string_match(format!("{mp}.{f}"), sm);
                }
            }
            for (f, map) in [
                ("headers", &m.headers),
                ("queryParams", &m.query_params),
                ("withoutHeaders", &m.without_headers),
            ] {
                for (k, sm) in map {
                    self.string_match(format!("{mp}.{f}.{k}"), sm);
                }
            }
            if let Some(port) = m.port {
                self.port(format!("{mp}.port"), port);
            }
        }
        self.weights(
            p,
            r.route.iter().map(|d| (&d.destination, d.weight)).collect(),
        );
        self.duration(format!("{p}.timeout"), &r.timeout);
        if let Some(rt) = &r.retries {
            if rt.attempts < 0 {
                self.err(format!("{p}.retries.attempts"), "must not be negative");
            }
            self.duration(format!("{p}.retries.perTryTimeout"), &rt.per_try_timeout);
            if let Some(on) = &rt.retry_on {
                for cond in on.split(',').map(str::trim) {
                    if !RETRY_ON.contains(&cond) && cond.parse::<u16>().is_err() {
                        self.err(
                            format!("{p}.retries.retryOn"),
                            format!("unknown retry condition {cond:?}"),
                        );
                    }
                }
            }
        }
        if let Some(f) = &r.fault {
            if f.delay.is_none() && f.abort.is_none() {
                self.err(format!("{p}.fault"), "set delay or abort");
            }
            if let Some(d) = &f.delay {
                if d.fixed_delay.is_none() {
                    self.err(
                        format!("{p}.fault.delay.fixedDelay"),
                        "a fixed delay is required",
                    );
                }
                self.duration(format!("{p}.fault.delay.fixedDelay"), &d.fixed_delay);
                if let Some(pc) = &d.percentage {
                    self.percent(format!("{p}.fault.delay.percentage.value"), pc.value);
                }
            }
            if let Some(a) = &f.abort {
                match (a.http_status, &a.grpc_status, &a.http2_error) {
                    (Some(s), None, None) if !(200..=599).contains(&s) => {
                        self.err(
                            format!("{p}.fault.abort.httpStatus"),
                            format!("{s} is not an HTTP status between 200 and 599"),
                        );
                    }
                    (Some(_), None, None) | (None, Some(_), None) => {}
                    _ => self.err(
                        format!("{p}.fault.abort"),
                        "set exactly one of httpStatus or grpcStatus",
                    ),
                }
                if let Some(pc) = &a.percentage {
                    self.percent(format!("{p}.fault.abort.percentage.value"), pc.value);
                }
            }
        }
        if let Some(m) = &r.mirror_percentage {
            self.percent(format!("{p}.mirrorPercentage.value"), m.value);
        }
        if let Some(m) = &r.mirror
            && m.host.is_empty()
        {
            self.err(format!("{p}.mirror.host"), "a host is required");
        }
        if let Some(rw) = &r.rewrite
            && let Some(rr) = &rw.uri_regex_rewrite
            && let Err(e) = regex::Regex::new(&rr.matches)
        {
            self.err(
                format!("{p}.rewrite.uriRegexRewrite.match"),
                format!("invalid regular expression: {e}"),
            );
        }
        if let Some(rd) = &r.redirect
            && let Some(code) = rd.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            self.err(
                format!("{p}.redirect.redirectCode"),
                format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
            );
        }
    }

    /// Istio's rule: with more than one destination, weights are required and sum to 100.
    fn weights(&mut self, p: &str, dests: Vec<(&net::Destination, Option<i64>)>) {
        for (j, (d, w)) in dests.iter().enumerate() {
            if d.host.is_empty() {
                self.err(
                    format!("{p}.route[{j}].destination.host"),
                    "a host is required",
                );
            }
            if let Some(port) = &d.port {
                self.port(
                    format!("{p}.route[{j}].destination.port.number"),
                    port.number,
                );
            }
            if w.is_some_and(|w| w < 0) {
                self.err(
                    format!("{p}.route[{j}].weight"),
                    "weight must not be negative",
                );
            }
        }
        if dests.len() > 1 {
            let sum: i64 = dests.iter().map(|(_, w)| w.unwrap_or(0)).sum();
            if sum != 100 {
                self.err(
                    format!("{p}.route"),
                    format!("weights add up to {sum}; they must add up to 100"),
                );
            }
        }
    }

    fn traffic_policy(&mut self, p: &str, t: &net::TrafficPolicy) {
        self.lb_pool_outlier(
            p,
            &t.load_balancer,
            &t.connection_pool,
            &t.outlier_detection,
            &t.tls,
        );
        for (i, pl) in t.port_level_settings.iter().enumerate() {
            let pp = format!("{p}.portLevelSettings[{i}]");
            match &pl.port {
                Some(port) => self.port(format!("{pp}.port.number"), port.number),
                None => self.err(format!("{pp}.port"), "a port is required"),
            }
            self.lb_pool_outlier(
                &pp,
                &pl.load_balancer,
                &pl.connection_pool,
                &pl.outlier_detection,
                &pl.tls,
            );
        }
    }

    fn lb_pool_outlier(
        &mut self,
        p: &str,
        lb: &Option<net::LoadBalancerSettings>,
        pool: &Option<net::ConnectionPoolSettings>,
        od: &Option<net::OutlierDetection>,
        tls: &Option<net::ClientTlsSettings>,
    ) {
        if let Some(lb) = lb {
            self.one_of(
                format!("{p}.loadBalancer.simple"),
                &lb.simple,
                &[
                    "UNSPECIFIED",
                    "ROUND_ROBIN",
                    "LEAST_REQUEST",
                    "LEAST_CONN",
                    "RANDOM",
                    "PASSTHROUGH",
                ],
            );
            if lb.simple.is_some() && lb.consistent_hash.is_some() {
                self.err(
                    format!("{p}.loadBalancer"),
                    "simple and consistentHash are mutually exclusive",
                );
            }
            if let Some(ch) = &lb.consistent_hash {
                let keys = usize::from(ch.http_header_name.is_some())
                    + usize::from(ch.http_cookie.is_some())
                    + usize::from(ch.use_source_ip == Some(true))
                    + usize::from(ch.http_query_parameter_name.is_some());
                if keys != 1 {
                    self.err(
                        format!("{p}.loadBalancer.consistentHash"),
                        "set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
                    );
                }
            }
        }
        if let Some(pool) = pool {
            if let Some(tcp) = &pool.tcp {
                self.duration(
                    format!("{p}.connectionPool.tcp.connectTimeout"),
                    &tcp.connect_timeout,
                );
                self.duration(
                    format!("{p}.connectionPool.tcp.idleTimeout"),
                    &tcp.idle_timeout,
                );
                if tcp.max_connections.is_some_and(|n| n < 1) {
                    self.err(
                        format!("{p}.connectionPool.tcp.maxConnections"),
                        "must be at least 1",
                    );
                }
            }
            if let Some(h) = &pool.http {
                for (f, n) in [
                    ("http1MaxPendingRequests", h.http1_max_pending_requests),
                    ("http2MaxRequests", h.http2_max_requests),
                    ("maxRequestsPerConnection", h.max_requests_per_connection),
                    ("maxRetries", h.max_retries),
                ] {
                    if n.is_some_and(|n| n < 0) {
                        self.err(
                            format!("{p}.connectionPool.http.{f}"),
                            "must not be negative",
                        );
                    }
                }
                self.duration(
                    format!("{p}.connectionPool.http.idleTimeout"),
                    &h.idle_timeout,
                );
            }
        }
        if let Some(od) = od {
            self.duration(format!("{p}.outlierDetection.interval"), &od.interval);
            self.duration(
                format!("{p}.outlierDetection.baseEjectionTime"),
                &od.base_ejection_time,
            );
            if od
                .max_ejection_percent
                .is_some_and(|n| !(0..=100).contains(&n))
            {
                self.err(
                    format!("{p}.outlierDetection.maxEjectionPercent"),
                    "must be between 0 and 100",
                );
            }
        }
        if let Some(tls) = tls {
            self.one_of(
                format!("{p}.tls.mode"),
                &tls.mode,
                &["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
            );
        }
    }

    fn destination_rule(&mut self, s: &net::DestinationRule) {
        if s.host.is_empty() {
            self.err("spec.host", "a host is required");
        }
        if let Some(t) = &s.traffic_policy {
            self.traffic_policy("spec.trafficPolicy", t);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, sub) in s.subsets.iter().enumerate() {
            if sub.name.is_empty() {
                self.err(
                    format!("spec.subsets[{i}].name"),
                    "a subset name is required",
                );
            } else if !seen.insert(&sub.name) {
                self.err(
                    format!("spec.subsets[{i}].name"),
                    format!("duplicate subset {:?}", sub.name),
                );
            }
            if let Some(t) = &sub.traffic_policy {
                self.traffic_policy(&format!("spec.subsets[{i}].trafficPolicy"), t);
            }
        }
    }

    fn service_entry(&mut self, s: &net::ServiceEntry) {
        if s.hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, a) in s.addresses.iter().enumerate() {
            self.cidr(format!("spec.addresses[{i}]"), a);
        }
        for (i, p) in s.ports.iter().enumerate() {
            self.port(format!("spec.ports[{i}].number"), p.number);
            if p.name.is_empty() {
                self.err(format!("spec.ports[{i}].name"), "a port name is required");
            }
        }
        self.one_of(
            "spec.location".into(),
            &s.location,
            &["MESH_EXTERNAL", "MESH_INTERNAL"],
        );
        self.one_of(
            "spec.resolution".into(),
            &s.resolution,
            &["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"],
        );
        if s.resolution.as_deref() == Some("STATIC")
            && s.endpoints.is_empty()
            && s.workload_selector.is_none()
        {
            self.err(
                "spec.endpoints",
                "resolution STATIC needs endpoints or a workloadSelector",
            );
        }
        if !s.endpoints.is_empty() && s.workload_selector.is_some() {
            self.err(
                "spec.workloadSelector",
                "endpoints and workloadSelector are mutually exclusive",
            );
        }
    }

    fn sidecar(&mut self, s: &net::Sidecar) {
        for (i, e) in s.egress.iter().enumerate() {
            for (j, h) in e.hosts.iter().enumerate() {
                let ok = h
                    .split_once('/')
                    .is_some_and(|(ns, host)| !ns.is_empty() && !host.is_empty());
                if !ok {
                    self.err(
                        format!("spec.egress[{i}].hosts[{j}]"),
                        format!(
                            "{h:?} must have the form namespace/host (e.g. ./*, istio-system/*)"
                        ),
                    );
                }
            }
        }
        if let Some(o) = &s.outbound_traffic_policy {
            self.one_of(
                "spec.outboundTrafficPolicy.mode".into(),
                &o.mode,
                &["REGISTRY_ONLY", "ALLOW_ANY"],
            );
        }
    }

    fn authorization_policy(&mut self, s: &sec::AuthorizationPolicy) {
        self.one_of(
            "spec.action".into(),
            &s.action,
            &["ALLOW", "DENY", "AUDIT", "CUSTOM"],
        );
        if s.action.as_deref() == Some("CUSTOM") && s.provider.is_none() {
            self.err("spec.provider", "action CUSTOM needs a provider");
        }
        if s.provider.is_some() && s.action.as_deref() != Some("CUSTOM") {
            self.err(
                "spec.provider",
                "a provider is only allowed with action CUSTOM",
            );
        }
        let targeted = s.target_ref.is_some() || !s.target_refs.is_empty();
        if targeted && s.selector.is_some() {
            self.err(
                "spec.selector",
                "selector and targetRef(s) are mutually exclusive",
            );
        }
        for (i, rule) in s.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let src = &f.source;
                let sp = format!("{p}.from[{j}].source");
                for (field, list) in [
                    ("ipBlocks", &src.ip_blocks),
                    ("notIpBlocks", &src.not_ip_blocks),
                    ("remoteIpBlocks", &src.remote_ip_blocks),
                    ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
                ] {
                    for (k, c) in list.iter().enumerate() {
                        self.cidr(format!("{sp}.{field}[{k}]"), c);
                    }
                }
                for (field, list) in [
                    ("principals", &src.principals),
                    ("notPrincipals", &src.not_principals),
                ] {
                    for (k, pr) in list.iter().enumerate() {
                        if pr.is_empty() || pr.starts_with("spiffe://") {
                            self.err(format!("{sp}.{field}[{k}]"), format!("{pr:?}: write principals without spiffe://, e.g. cluster.local/ns/default/sa/sleep"));
                        }
                    }
                }
            }
            for (j, t) in rule.to.iter().enumerate() {
                let op = &t.operation;
                for (field, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, port) in list.iter().enumerate() {
                        match port.parse::<u32>() {
                            Ok(n) => self.port(format!("{p}.to[{j}].operation.{field}[{k}]"), n),
                            Err(_) => self.err(
                                format!("{p}.to[{j}].operation.{field}[{k}]"),
                                format!("{port:?} is not a port number"),
                            ),
                        }
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let cp = format!("{p}.when[{j}]");
                if !CONDITION_KEYS.iter().any(|k| {
                    c.key == *k
                        || (k.ends_with('[') && c.key.starts_with(k) && c.key.ends_with(']'))
                }) {
                    self.err(
                        format!("{cp}.key"),
                        format!("unknown condition key {:?}", c.key),
                    );
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    self.err(&cp, "set values or notValues");
                }
                if ["source.ip", "remote.ip", "destination.ip"].contains(&c.key.as_str()) {
                    for (k, v) in c.values.iter().chain(&c.not_values).enumerate() {
                        self.cidr(format!("{cp}.values[{k}]"), v);
                    }
                }
            }
        }
    }

    fn peer_authentication(&mut self, s: &sec::PeerAuthentication) {
        const MODES: [&str; 4] = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
        if let Some(m) = &s.mtls {
            self.one_of("spec.mtls.mode".into(), &m.mode, &MODES);
        }
        if !s.port_level_mtls.is_empty() && s.selector.is_none() {
            self.err(
                "spec.portLevelMtls",
                "portLevelMtls needs a workload selector",
            );
        }
        for (port, m) in &s.port_level_mtls {
            self.port(format!("spec.portLevelMtls.{port}"), *port);
            self.one_of(format!("spec.portLevelMtls.{port}.mode"), &m.mode, &MODES);
        }
    }

    fn request_authentication(&mut self, s: &sec::RequestAuthentication) {
        for (i, r) in s.jwt_rules.iter().enumerate() {
            if r.issuer.is_empty() {
                self.err(
                    format!("spec.jwtRules[{i}].issuer"),
                    "an issuer is required",
                );
            }
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                self.err(
                    format!("spec.jwtRules[{i}].jwks"),
                    "jwks and jwksUri are mutually exclusive",
                );
            }
            self.duration(format!("spec.jwtRules[{i}].timeout"), &r.timeout);
        }
    }

    fn service(&mut self, s: &crate::k8s::ServiceSpec) {
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in s.ports.iter().enumerate() {
            self.port(format!("spec.ports[{i}].port"), p.port);
            if s.ports.len() > 1 && p.name.is_none() {
                self.err(
                    format!("spec.ports[{i}].name"),
                    "ports must be named when a Service has more than one",
                );
            }
            if let Some(n) = &p.name
                && !names.insert(n)
            {
                self.err(
                    format!("spec.ports[{i}].name"),
                    format!("duplicate port name {n:?}"),
                );
            }
            if let Some(crate::k8s::IntOrString::Int(t)) = &p.target_port {
                self.port(format!("spec.ports[{i}].targetPort"), *t);
            }
            self.one_of(
                format!("spec.ports[{i}].protocol"),
                &p.protocol,
                &["TCP", "UDP", "SCTP"],
            );
        }
        if let Some(ip) = &s.cluster_ip
            && ip != "None"
        {
            self.ip("spec.clusterIP", ip);
        }
    }

    fn deployment(&mut self, s: &crate::k8s::DeploymentSpec) {
        let labels = &s.template.metadata.labels;
        if s.selector.match_labels.is_empty() && s.selector.match_expressions.is_empty() {
            self.err("spec.selector", "a selector is required");
        } else if !s.selector.matches(labels) {
            self.err(
                "spec.template.metadata.labels",
                "the pod template's labels do not match spec.selector",
            );
        }
        if s.template.spec.containers.is_empty() {
            self.err(
                "spec.template.spec.containers",
                "at least one container is required",
            );
        }
        for (i, c) in s.template.spec.containers.iter().enumerate() {
            if c.command.is_empty() && c.args.is_empty() {
                self.err(
                    format!("spec.template.spec.containers[{i}].command"),
                    "the cluster in a box runs containers[].command on the host; set it",
                );
            }
        }
    }

    /// Fields Spar accepts but does not act on: warn, by name, so nothing is silently dropped.
    fn unsupported(&mut self, r: &Resource) {
        let patterns: &[&str] = match r.kind {
            Kind::VirtualService => &[
                "spec.http[*].delegate",
                "spec.http[*].fault.delay.exponentialDelay",
            ],
            Kind::DestinationRule => &[
                "spec.trafficPolicy.tunnel",
                "spec.trafficPolicy.proxyProtocol",
                "spec.trafficPolicy.retryBudget",
                "spec.trafficPolicy.loadBalancer.localityLbSetting",
                "spec.trafficPolicy.loadBalancer.warmup",
            ],
            Kind::Gateway => &["spec.servers[*].tls"],
            Kind::K8sGateway => &["spec.infrastructure", "spec.listeners[*].tls"],
            Kind::HttpRoute => &[
                "spec.rules[*].sessionPersistence",
                "spec.rules[*].filters[*].extensionRef",
                "spec.rules[*].filters[*].cors",
            ],
            Kind::Telemetry => &["spec.tracing[*].customTags"],
            Kind::Deployment => &[
                "spec.strategy",
                "spec.minReadySeconds",
                "spec.revisionHistoryLimit",
                "spec.template.spec.initContainers",
                "spec.template.spec.volumes",
                "spec.template.spec.securityContext",
                "spec.template.spec.affinity",
                "spec.template.spec.tolerations",
                "spec.template.spec.nodeSelector",
                "spec.template.spec.containers[*].livenessProbe",
                "spec.template.spec.containers[*].startupProbe",
                "spec.template.spec.containers[*].resources",
                "spec.template.spec.containers[*].securityContext",
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
    }
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

/// Envoy's `retry_on` conditions that Istio passes through.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// AuthorizationPolicy `when` keys (Istio's "conditions" reference). Keys ending in `[` take
/// a bracketed argument.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "request.headers[",
    "experimental.envoy.filters.network.mysql_proxy[",
];

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
