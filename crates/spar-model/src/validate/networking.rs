//! Checks of `networking.istio.io` resources: VirtualService, DestinationRule, ServiceEntry,
//! Sidecar.

use super::Checker;
use crate::istio::networking as net;

impl Checker {
    pub(super) fn virtual_service(&mut self, s: &net::VirtualService) {
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
        // What the L7 engine cannot honour is refused here, not half-applied in proxies.
        for (set, field) in [
            (r.delegate.is_some(), "delegate"),
            (r.cors_policy.is_some(), "corsPolicy"),
            (
                r.fault
                    .as_ref()
                    .and_then(|f| f.delay.as_ref())
                    .is_some_and(|d| d.exponential_delay.is_some()),
                "fault.delay.exponentialDelay",
            ),
        ] {
            if set {
                self.err(
                    format!("{p}.{field}"),
                    "Spar's L7 engine does not implement this field yet; remove it",
                );
            }
        }
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
        if !t.port_level_settings.is_empty() {
            self.err(
                format!("{p}.portLevelSettings"),
                "Spar's L7 engine does not implement per-port policies yet; set the policy for the whole host",
            );
        }
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

    pub(super) fn destination_rule(&mut self, s: &net::DestinationRule) {
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

    pub(super) fn service_entry(&mut self, s: &net::ServiceEntry) {
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

    pub(super) fn sidecar(&mut self, s: &net::Sidecar) {
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
