//! The L7 engine's config types: one service host's routes (from its VirtualService) and
//! traffic policy (from its DestinationRule), compiled by `compile` from one `ServiceRoutes`
//! resource: regexes compiled, durations parsed, percentages checked. Anything the engine
//! cannot honour is an error naming the resource and field, so the proxy NACKs and keeps its
//! last good config instead of routing half-right.

mod compile;
mod fields;
mod http_route;
mod policy;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::HeaderName;
use regex::Regex;

pub use compile::compile;

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
    /// SNI routes (an ingress gateway's passthrough listener).
    pub tls: Vec<TlsRoute>,
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

/// A TLS route: connections whose SNI matches one of `sni_hosts` (lower case; `*.rest` and
/// `*` wildcards) go to one of `targets`.
#[derive(Debug)]
pub struct TlsRoute {
    pub sni_hosts: Vec<String>,
    pub targets: Vec<WeightedTarget>,
}

impl TlsRoute {
    /// Whether `sni` (as the client sent it) matches this route.
    pub fn matches(&self, sni: &str) -> bool {
        self.specificity(sni).is_some()
    }

    /// How specifically this route matches `sni`: `None` when it does not; an exact name
    /// scores above any wildcard, a longer wildcard above a shorter, `*` lowest.
    pub fn specificity(&self, sni: &str) -> Option<usize> {
        let sni = sni.to_ascii_lowercase();
        self.sni_hosts
            .iter()
            .filter_map(|h| crate::tls::host_specificity(h, &sni))
            .max()
    }
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
