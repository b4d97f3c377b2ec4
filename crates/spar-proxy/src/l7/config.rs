//! Compile one `ServiceRoutes` resource (Istio's VirtualService and DestinationRule specs)
//! into the engine's own types: regexes compiled, durations parsed, percentages checked.
//! Anything the engine cannot honour is an error, so the proxy NACKs and keeps its last
//! good config instead of routing half-right.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use spar_model::duration::parse_duration;
use spar_model::istio::networking as n;
use spar_xds::l7::ServiceRoutes;

/// The declared protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    /// Undeclared: look at the first bytes.
    Detect,
}

/// One service host's compiled L7 config.
#[derive(Debug, Default)]
pub struct Service {
    pub namespace: String,
    pub hostname: String,
    pub ports: HashMap<u16, Protocol>,
    pub virtual_service: String,
    pub http: Vec<Route>,
    pub tcp: Vec<TcpRoute>,
    pub destination_rule: String,
    /// Cluster-wide policy and per-subset overrides.
    pub policy: Policy,
    pub subsets: HashMap<String, Subset>,
}

#[derive(Debug, Default, Clone)]
pub struct Subset {
    pub members: HashSet<String>,
    pub policy: Option<Policy>,
}

#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole value must match, as in Istio (RE2 full match).
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, v: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(s) if ignore_case => s.eq_ignore_ascii_case(v),
            StringMatch::Exact(s) => s == v,
            StringMatch::Prefix(p) if ignore_case => {
                v.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p))
            }
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug, Default)]
pub struct Match {
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<(HeaderName, StringMatch)>,
    pub without_headers: Vec<(HeaderName, StringMatch)>,
    pub query: Vec<(String, StringMatch)>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, String)>,
    pub add: Vec<(HeaderName, String)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Default, Clone)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct WeightedTarget {
    pub target: Target,
    pub weight: u32,
    pub headers: HeaderRules,
}

#[derive(Debug)]
pub enum Action {
    Forward(Vec<WeightedTarget>),
    Redirect {
        uri: Option<String>,
        authority: Option<String>,
        port: Option<u16>,
        scheme: Option<String>,
        code: u16,
    },
    Direct {
        status: u16,
        body: String,
    },
}

#[derive(Debug)]
pub enum Rewrite {
    /// Replaces the matched prefix (or the whole path when the match was not a prefix).
    Uri(String),
    Regex(Regex, String),
}

#[derive(Debug, Clone, Default)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

#[derive(Debug, Clone, Default)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub statuses: Vec<u16>,
    /// Spar extension (`non-idempotent`): also retry POST and PATCH that reached the upstream.
    pub non_idempotent: bool,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    /// (HTTP status, gRPC status, percent)
    pub abort: Option<(u16, Option<u32>, f64)>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub target: Target,
    pub percent: f64,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matches: Vec<Match>,
    pub action: Action,
    pub rewrite_authority: Option<String>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retry: Retry,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub headers: HeaderRules,
}

#[derive(Debug)]
pub struct TcpRoute {
    pub ports: Vec<u16>,
    pub targets: Vec<WeightedTarget>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Random,
    /// Latency-aware default: power of two choices over peak-EWMA latency x load.
    PeakEwma,
    Hash(HashOn),
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
    Query(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub connect_timeout: Duration,
    pub max_pending: Option<usize>,
    pub http2_max_requests: Option<usize>,
    pub max_requests_per_connection: Option<usize>,
    pub max_retries: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            connect_timeout: Duration::from_secs(10),
            max_pending: None,
            http2_max_requests: None,
            max_requests_per_connection: None,
            max_retries: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub balance: Balance,
    pub limits: Limits,
    pub outlier: Option<Outlier>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            balance: Balance::PeakEwma,
            limits: Limits::default(),
            outlier: None,
        }
    }
}

impl Service {
    pub fn protocol(&self, port: u16) -> Protocol {
        self.ports.get(&port).copied().unwrap_or(Protocol::Detect)
    }

    /// The policy of a subset (its own traffic policy over the service's).
    pub fn policy_for(&self, subset: Option<&str>) -> &Policy {
        subset
            .and_then(|s| self.subsets.get(s))
            .and_then(|s| s.policy.as_ref())
            .unwrap_or(&self.policy)
    }
}

fn err(what: &str, why: impl std::fmt::Display) -> String {
    format!("{what}: {why}")
}

fn string_match(m: &n::StringMatch, what: &str) -> Result<Option<StringMatch>, String> {
    Ok(match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Some(StringMatch::Exact(e.clone())),
        (None, Some(p), None) => Some(StringMatch::Prefix(p.clone())),
        (None, None, Some(r)) => Some(StringMatch::Regex(
            Regex::new(&format!("^(?:{r})$")).map_err(|e| err(what, e))?,
        )),
        (None, None, None) => None,
        _ => return Err(err(what, "set exactly one of exact, prefix, regex")),
    })
}

fn header_name(h: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|e| err(what, e))
}

fn port(p: u32, what: &str) -> Result<u16, String> {
    u16::try_from(p).map_err(|_| err(what, format!("port {p} is out of range")))
}

fn duration(s: &str, what: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| err(what, e))
}

fn percent(p: Option<&n::Percent>, legacy: Option<i64>, what: &str) -> Result<f64, String> {
    let v = match (p, legacy) {
        (Some(p), _) => p.value,
        (None, Some(l)) => l as f64,
        // Istio's tasks always give a percentage; unset means every request.
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&v) {
        return Err(err(what, format!("percentage {v} is not within 0..100")));
    }
    Ok(v)
}

fn header_ops(o: Option<&n::HeaderOperations>, what: &str) -> Result<HeaderOps, String> {
    let Some(o) = o else {
        return Ok(HeaderOps::default());
    };
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| {
                http::HeaderValue::from_str(v).map_err(|e| err(what, e))?;
                Ok((header_name(k, what)?, v.clone()))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(HeaderOps {
        set: pairs(&o.set)?,
        add: pairs(&o.add)?,
        remove: o
            .remove
            .iter()
            .map(|h| header_name(h, what))
            .collect::<Result<_, _>>()?,
    })
}

fn header_rules(h: Option<&n::Headers>, what: &str) -> Result<HeaderRules, String> {
    Ok(HeaderRules {
        request: header_ops(h.and_then(|h| h.request.as_ref()), what)?,
        response: header_ops(h.and_then(|h| h.response.as_ref()), what)?,
    })
}

fn target(d: &n::Destination, what: &str) -> Result<Target, String> {
    if d.host.is_empty() {
        return Err(err(what, "destination.host is empty"));
    }
    Ok(Target {
        host: d.host.clone(),
        subset: d.subset.clone().filter(|s| !s.is_empty()),
        port: d.port.as_ref().map(|p| port(p.number, what)).transpose()?,
    })
}

fn weight(w: Option<i64>, what: &str) -> Result<u32, String> {
    match w {
        None => Ok(100),
        Some(w) => u32::try_from(w).map_err(|_| err(what, format!("weight {w} is negative"))),
    }
}

fn retry_on(s: &str, what: &str) -> Result<RetryOn, String> {
    let mut r = RetryOn::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "5xx" => r.five_xx = true,
            "gateway-error" => r.gateway_error = true,
            "connect-failure" => r.connect_failure = true,
            "refused-stream" => r.refused_stream = true,
            "reset" | "reset-before-request" => r.reset = true,
            "retriable-status-codes" => r.statuses.push(503),
            // gRPC status conditions map onto HTTP outcomes for gRPC-over-h2 upstreams.
            "unavailable" | "cancelled" | "deadline-exceeded" | "resource-exhausted"
            | "internal" | "retriable-4xx" | "retriable-headers" => {}
            "non-idempotent" => r.non_idempotent = true,
            code => {
                let c: u16 = code
                    .parse()
                    .map_err(|_| err(what, format!("unknown retryOn condition {code:?}")))?;
                r.statuses.push(c);
            }
        }
    }
    Ok(r)
}

fn route(r: &n::HttpRoute, i: usize) -> Result<Route, String> {
    let name = r.name.clone().unwrap_or_else(|| format!("http[{i}]"));
    let what = format!("http route {name}");
    let what = what.as_str();
    if r.delegate.is_some() {
        return Err(err(what, "delegate is not supported"));
    }
    let matches = r
        .matches
        .iter()
        .map(|m| {
            let opt = |s: &Option<n::StringMatch>| {
                s.as_ref()
                    .map(|s| string_match(s, what))
                    .transpose()
                    .map(Option::flatten)
            };
            let hdrs = |m: &std::collections::BTreeMap<String, n::StringMatch>| {
                m.iter()
                    .filter_map(
                        |(k, v)| match (header_name(k, what), string_match(v, what)) {
                            (Ok(k), Ok(Some(v))) => Some(Ok((k, v))),
                            (Err(e), _) | (_, Err(e)) => Some(Err(e)),
                            (Ok(_), Ok(None)) => None,
                        },
                    )
                    .collect::<Result<Vec<_>, String>>()
            };
            Ok(Match {
                uri: opt(&m.uri)?,
                scheme: opt(&m.scheme)?,
                method: opt(&m.method)?,
                authority: opt(&m.authority)?,
                headers: hdrs(&m.headers)?,
                without_headers: hdrs(&m.without_headers)?,
                query: m
                    .query_params
                    .iter()
                    .filter_map(|(k, v)| match string_match(v, what) {
                        Ok(Some(v)) => Some(Ok((k.clone(), v))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, String>>()?,
                port: m.port.map(|p| port(p, what)).transpose()?,
                ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let action = if let Some(rd) = &r.redirect {
        Action::Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            port: rd.port.map(|p| port(p, what)).transpose()?,
            scheme: rd.scheme.clone(),
            code: match rd.redirect_code {
                None => 301,
                Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                Some(c) => return Err(err(what, format!("redirectCode {c} is not a redirect"))),
            },
        }
    } else if let Some(d) = &r.direct_response {
        Action::Direct {
            status: u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| err(what, format!("directResponse status {}", d.status)))?,
            body: d
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .unwrap_or_default(),
        }
    } else {
        if r.route.is_empty() {
            return Err(err(what, "has no route, redirect or directResponse"));
        }
        Action::Forward(
            r.route
                .iter()
                .map(|d| {
                    Ok(WeightedTarget {
                        target: target(&d.destination, what)?,
                        weight: weight(d.weight, what)?,
                        headers: header_rules(d.headers.as_ref(), what)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        )
    };
    let rewrite = match &r.rewrite {
        Some(rw) => match (&rw.uri, &rw.uri_regex_rewrite) {
            (Some(u), None) => Some(Rewrite::Uri(u.clone())),
            (None, Some(rr)) => Some(Rewrite::Regex(
                Regex::new(&rr.matches).map_err(|e| err(what, e))?,
                rr.rewrite.clone(),
            )),
            (None, None) => None,
            _ => return Err(err(what, "rewrite sets both uri and uriRegexRewrite")),
        },
        None => None,
    };
    let retry = match &r.retries {
        Some(rt) => Retry {
            attempts: u32::try_from(rt.attempts).unwrap_or(0),
            per_try_timeout: rt
                .per_try_timeout
                .as_deref()
                .map(|d| duration(d, what))
                .transpose()?,
            on: retry_on(
                rt.retry_on
                    .as_deref()
                    .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503"),
                what,
            )?,
        },
        // Istio's default: two retries on connection failures and 503.
        None => Retry {
            attempts: 2,
            per_try_timeout: None,
            on: retry_on(
                "connect-failure,refused-stream,unavailable,cancelled,503",
                what,
            )?,
        },
    };
    let fault = match &r.fault {
        Some(f) => {
            let delay = match &f.delay {
                Some(d) => {
                    if d.exponential_delay.is_some() {
                        return Err(err(what, "fault.delay.exponentialDelay is not supported"));
                    }
                    let fixed = d
                        .fixed_delay
                        .as_deref()
                        .ok_or_else(|| err(what, "fault.delay needs fixedDelay"))?;
                    Some((
                        duration(fixed, what)?,
                        percent(d.percentage.as_ref(), d.percent, what)?,
                    ))
                }
                None => None,
            };
            let abort = match &f.abort {
                Some(a) => {
                    let pct = percent(a.percentage.as_ref(), None, what)?;
                    match (&a.http_status, &a.grpc_status) {
                        (Some(s), None) => Some((
                            u16::try_from(*s)
                                .ok()
                                .filter(|s| (200..600).contains(s))
                                .ok_or_else(|| err(what, format!("abort httpStatus {s}")))?,
                            None,
                            pct,
                        )),
                        (None, Some(g)) => Some((200, Some(grpc_code(g, what)?), pct)),
                        _ => return Err(err(what, "fault.abort needs httpStatus or grpcStatus")),
                    }
                }
                None => None,
            };
            Some(Fault { delay, abort })
        }
        None => None,
    };
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let pct = match (&r.mirror_percentage, r.mirror_percent) {
            (None, None) => 100.0,
            (p, l) => percent(p.as_ref(), l.map(i64::from), what)?,
        };
        mirrors.push(Mirror {
            target: target(m, what)?,
            percent: pct,
        });
    }
    for m in &r.mirrors {
        mirrors.push(Mirror {
            target: target(&m.destination, what)?,
            percent: percent(m.percentage.as_ref(), None, what)?,
        });
    }
    if r.cors_policy.is_some() {
        return Err(err(what, "corsPolicy is not supported yet"));
    }
    Ok(Route {
        name,
        matches,
        action,
        rewrite_authority: r.rewrite.as_ref().and_then(|r| r.authority.clone()),
        rewrite,
        timeout: r
            .timeout
            .as_deref()
            .map(|d| duration(d, what))
            .transpose()?
            .filter(|d| !d.is_zero()),
        retry,
        fault,
        mirrors,
        headers: header_rules(r.headers.as_ref(), what)?,
    })
}

fn grpc_code(s: &str, what: &str) -> Result<u32, String> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .map(|i| i as u32)
        .or_else(|| s.parse().ok().filter(|c| *c < 17))
        .ok_or_else(|| err(what, format!("unknown gRPC status {s:?}")))
}

fn policy(tp: Option<&n::TrafficPolicy>, base: &Policy, what: &str) -> Result<Policy, String> {
    let Some(tp) = tp else {
        return Ok(base.clone());
    };
    if !tp.port_level_settings.is_empty() {
        return Err(err(what, "portLevelSettings are not supported yet"));
    }
    let mut p = base.clone();
    if let Some(lb) = &tp.load_balancer {
        p.balance = match (&lb.simple, &lb.consistent_hash) {
            (Some(s), None) => match s.as_str() {
                "ROUND_ROBIN" => Balance::RoundRobin,
                "LEAST_REQUEST" | "LEAST_CONN" => Balance::LeastRequest,
                "RANDOM" => Balance::Random,
                "UNSPECIFIED" => Balance::PeakEwma,
                other => {
                    return Err(err(
                        what,
                        format!("loadBalancer.simple {other} is not supported"),
                    ));
                }
            },
            (None, Some(h)) => Balance::Hash(
                match (
                    &h.http_header_name,
                    &h.http_cookie,
                    h.use_source_ip,
                    &h.http_query_parameter_name,
                ) {
                    (Some(hn), None, None | Some(false), None) => {
                        HashOn::Header(header_name(hn, what)?)
                    }
                    (None, Some(c), None | Some(false), None) => HashOn::Cookie(c.name.clone()),
                    (None, None, Some(true), None) => HashOn::SourceIp,
                    (None, None, None | Some(false), Some(q)) => HashOn::Query(q.clone()),
                    _ => return Err(err(what, "consistentHash needs exactly one hash key")),
                },
            ),
            (None, None) => p.balance,
            _ => {
                return Err(err(
                    what,
                    "loadBalancer sets both simple and consistentHash",
                ));
            }
        };
    }
    if let Some(cp) = &tp.connection_pool {
        let cap = |v: Option<i64>, field: &str| -> Result<Option<usize>, String> {
            v.map(|v| {
                usize::try_from(v)
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| err(what, format!("{field} must be positive")))
            })
            .transpose()
        };
        if let Some(t) = &cp.tcp {
            p.limits.max_connections =
                cap(t.max_connections, "maxConnections")?.or(p.limits.max_connections);
            if let Some(ct) = &t.connect_timeout {
                p.limits.connect_timeout = duration(ct, what)?;
            }
        }
        if let Some(h) = &cp.http {
            p.limits.max_pending = cap(h.http1_max_pending_requests, "http1MaxPendingRequests")?
                .or(p.limits.max_pending);
            p.limits.http2_max_requests =
                cap(h.http2_max_requests, "http2MaxRequests")?.or(p.limits.http2_max_requests);
            p.limits.max_requests_per_connection =
                cap(h.max_requests_per_connection, "maxRequestsPerConnection")?
                    .or(p.limits.max_requests_per_connection);
            p.limits.max_retries = cap(h.max_retries, "maxRetries")?.or(p.limits.max_retries);
        }
    }
    if let Some(od) = &tp.outlier_detection {
        let c5 = od.consecutive5xx_errors.or(od.consecutive_errors);
        p.outlier = Some(Outlier {
            // Istio's default when outlierDetection is present: 5 consecutive 5xx.
            consecutive_5xx: match (c5, od.consecutive_gateway_errors) {
                (None, None) => Some(5),
                (c, _) => c.filter(|c| *c > 0),
            },
            consecutive_gateway: od.consecutive_gateway_errors.filter(|c| *c > 0),
            interval: od
                .interval
                .as_deref()
                .map(|d| duration(d, what))
                .transpose()?
                .unwrap_or(Duration::from_secs(10)),
            base_ejection: od
                .base_ejection_time
                .as_deref()
                .map(|d| duration(d, what))
                .transpose()?
                .unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: od
                .max_ejection_percent
                .map(|v| v.clamp(0, 100) as u32)
                .unwrap_or(10),
        });
    }
    Ok(p)
}

/// Compile a resource; the error names the resource and the field.
pub fn compile(r: &ServiceRoutes) -> Result<Service, String> {
    let name = format!("{}/{}", r.namespace, r.hostname);
    let ports = r
        .ports
        .iter()
        .map(|p| {
            let proto = match p.protocol.as_str() {
                "http" => Protocol::Http,
                "http2" => Protocol::Http2,
                "grpc" => Protocol::Grpc,
                "tcp" => Protocol::Tcp,
                _ => Protocol::Detect,
            };
            Ok((port(p.port, &name)?, proto))
        })
        .collect::<Result<_, String>>()?;
    let mut svc = Service {
        namespace: r.namespace.clone(),
        hostname: r.hostname.clone(),
        ports,
        virtual_service: r.virtual_service_name.clone(),
        destination_rule: r.destination_rule_name.clone(),
        ..Default::default()
    };
    if !r.virtual_service.is_empty() {
        let what = format!("{name}: VirtualService {}", r.virtual_service_name);
        let vs: n::VirtualService =
            serde_json::from_str(&r.virtual_service).map_err(|e| err(&what, e))?;
        svc.http = vs
            .http
            .iter()
            .enumerate()
            .map(|(i, h)| route(h, i).map_err(|e| err(&what, e)))
            .collect::<Result<_, _>>()?;
        svc.tcp = vs
            .tcp
            .iter()
            .map(|t| {
                Ok(TcpRoute {
                    ports: t
                        .matches
                        .iter()
                        .filter_map(|m| m.port)
                        .map(|p| port(p, &what))
                        .collect::<Result<_, String>>()?,
                    targets: t
                        .route
                        .iter()
                        .map(|d| {
                            Ok(WeightedTarget {
                                target: target(&d.destination, &what)?,
                                weight: weight(d.weight, &what)?,
                                headers: HeaderRules::default(),
                            })
                        })
                        .collect::<Result<_, String>>()?,
                })
            })
            .collect::<Result<_, String>>()?;
    }
    if svc.http.is_empty() {
        svc.http.push(default_route(&r.hostname));
    }
    if !r.destination_rule.is_empty() {
        let what = format!("{name}: DestinationRule {}", r.destination_rule_name);
        let dr: n::DestinationRule =
            serde_json::from_str(&r.destination_rule).map_err(|e| err(&what, e))?;
        svc.policy = policy(dr.traffic_policy.as_ref(), &Policy::default(), &what)?;
        for s in &dr.subsets {
            let members = r
                .subsets
                .get(&s.name)
                .map(|m| m.uids.iter().cloned().collect())
                .unwrap_or_default();
            let sp = match &s.traffic_policy {
                Some(tp) => Some(policy(
                    Some(tp),
                    &svc.policy,
                    &format!("{what} subset {}", s.name),
                )?),
                None => None,
            };
            svc.subsets.insert(
                s.name.clone(),
                Subset {
                    members,
                    policy: sp,
                },
            );
        }
    }
    Ok(svc)
}

/// Without a VirtualService: every request to the service itself, Istio's default retries.
fn default_route(host: &str) -> Route {
    Route {
        name: "default".into(),
        matches: Vec::new(),
        action: Action::Forward(vec![WeightedTarget {
            target: Target {
                host: host.to_string(),
                subset: None,
                port: None,
            },
            weight: 100,
            headers: HeaderRules::default(),
        }]),
        rewrite_authority: None,
        rewrite: None,
        timeout: None,
        retry: Retry {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                statuses: vec![503],
                ..RetryOn::default()
            },
        },
        fault: None,
        mirrors: Vec::new(),
        headers: HeaderRules::default(),
    }
}
