//! AuthorizationPolicy, as Istio defines it, as a pure function: compiled policies and the
//! facts of a connection or request in, a verdict out.
//!
//! Order: CUSTOM first (a match sends the request to its ext_authz provider), then DENY
//! (any match denies), then ALLOW (with no ALLOW policy everything is allowed; with some,
//! one must match). AUDIT never changes the decision. A rule matches when one of its `from`,
//! one of its `to` and every `when` match; within a source or operation every field given
//! must match (one of its values), and no `notX` value may.
//!
//! Without HTTP facts (TCP), fields only HTTP has (`hosts`, `methods`, `paths`,
//! `requestPrincipals`, `request.*` conditions) cannot be evaluated (nor `connection.sni` on
//! mesh traffic): an ALLOW rule using them never matches; DENY, CUSTOM and AUDIT rules are
//! applied without them (as Istio builds its TCP filters), so a DENY denies, a CUSTOM asks its
//! provider (or, where none can be asked, refuses) and an AUDIT logs. All err on the side of
//! denying.

mod compile;

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub use compile::compile;

use super::pattern::{PathPattern, Pattern};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
    /// ext_authz through the named MeshConfig extension provider.
    Custom(String),
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
    /// At a waypoint, the services (`namespace/hostname`) a Service-targeted policy covers;
    /// empty: everything the proxy serves.
    pub services: Vec<String>,
}

impl Policy {
    /// Whether the policy covers a request for `service`.
    pub fn covers(&self, service: Option<&str>) -> bool {
        self.services.is_empty() || service.is_some_and(|s| self.services.iter().any(|x| x == s))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// `values` (one must match, when any are given) and `not` (none may).
#[derive(Debug, Clone)]
pub struct Field<T> {
    pub values: Vec<T>,
    pub not: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            values: Vec::new(),
            not: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not.is_empty()
    }

    fn check(&self, one: impl Fn(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&one)) && !self.not.iter().any(one)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Principals, `serviceAccounts` folded in as `*/ns/NS/sa/SA`.
    pub principals: Field<Pattern>,
    pub request_principals: Field<Pattern>,
    pub namespaces: Field<Pattern>,
    pub ip_blocks: Field<IpNet>,
    pub remote_ip_blocks: Field<IpNet>,
}

#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub hosts: Field<Pattern>,
    pub ports: Field<u16>,
    pub methods: Field<Pattern>,
    pub paths: Field<PathPattern>,
}

#[derive(Debug, Clone)]
pub enum Key {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the path into the claims.
    RequestClaim(Vec<String>),
    RequestHeader(http::HeaderName),
}

impl Key {
    fn http_only(&self) -> bool {
        matches!(
            self,
            Key::RequestPrincipal
                | Key::RequestAudiences
                | Key::RequestPresenter
                | Key::RequestClaim(_)
                | Key::RequestHeader(_)
        )
    }
}

#[derive(Debug, Clone)]
pub enum Values {
    Strings(Field<Pattern>),
    Ips(Field<IpNet>),
    Ports(Field<u16>),
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub key: Key,
    pub values: Values,
}

/// What a validated JWT says about the request (RequestAuthentication).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    pub presenter: Option<String>,
    pub claims: serde_json::Value,
}

/// The HTTP part of the facts.
#[derive(Debug, Clone, Copy)]
pub struct Http<'a> {
    pub method: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    pub auth: Option<&'a RequestAuth>,
}

/// What is known when authorizing.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The peer's address (the connection's source).
    pub source_ip: IpAddr,
    /// The original client (the same as `source_ip` without trusted proxies in front).
    pub remote_ip: IpAddr,
    /// The verified peer identity in principal form, `td/ns/NS/sa/SA`; None for plaintext.
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    pub sni: Sni<'a>,
    /// None for a TCP connection.
    pub http: Option<Http<'a>>,
}

/// The server name of the client's TLS (`connection.sni`), as far as this path knows it.
#[derive(Debug, Clone, Copy)]
pub enum Sni<'a> {
    /// Mesh traffic arrives over HBONE, whose TLS carries no server name (the client's own
    /// TLS, if any, is inside the tunnel): a condition on it cannot be evaluated, so an ALLOW
    /// rule using it never matches and a DENY rule applies without it.
    Unknowable,
    /// What the client sent to a listener of this proxy (an ingress gateway's); None: no
    /// TLS, or TLS without a server name.
    Sent(Option<&'a str>),
}

/// The decision of DENY and ALLOW policies.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    /// Denied by `policy` (rule `rule`), or, with no policy, because ALLOW policies exist
    /// and none matched.
    Deny {
        policy: Option<String>,
        rule: Option<usize>,
    },
}

impl Decision {
    /// Envoy's response detail for the access log.
    pub fn detail(&self) -> String {
        match self {
            Decision::Allow => "-".into(),
            Decision::Deny {
                policy: Some(p),
                rule,
            } => {
                let (ns, name) = p.split_once('/').unwrap_or(("", p));
                format!(
                    "rbac_access_denied_matched_policy[ns[{ns}]-policy[{name}]-rule[{}]]",
                    rule.unwrap_or(0)
                )
            }
            Decision::Deny { policy: None, .. } => "rbac_access_denied_matched_policy[none]".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// A matching CUSTOM policy: (its name, the provider to ask). Asked before `decision`.
    pub custom: Option<(String, String)>,
    pub decision: Decision,
    /// AUDIT policies that matched (logged, never deciding).
    pub audit: Vec<String>,
}

/// Three-valued matching: a field that cannot be evaluated (HTTP-only, on TCP) is unknown.
#[derive(Clone, Copy, PartialEq)]
enum M {
    Yes,
    No,
    Unknown,
}

fn b(v: bool) -> M {
    if v { M::Yes } else { M::No }
}

fn all(ms: impl IntoIterator<Item = M>) -> M {
    let mut r = M::Yes;
    for m in ms {
        match m {
            M::No => return M::No,
            M::Unknown => r = M::Unknown,
            M::Yes => {}
        }
    }
    r
}

fn any(ms: impl IntoIterator<Item = M>) -> M {
    let mut r = M::No;
    for m in ms {
        match m {
            M::Yes => return M::Yes,
            M::Unknown => r = M::Unknown,
            M::No => {}
        }
    }
    r
}

fn ip_in(f: &Field<IpNet>, ip: IpAddr) -> bool {
    f.check(|n| n.contains(&ip))
}

fn source(s: &Source, f: &Facts<'_>) -> M {
    let auth = f.http.map(|h| h.auth.map(|a| a.principal.as_str()));
    all([
        b(s.principals.check(|p| p.matches(f.principal))),
        b(s.namespaces.check(|p| p.matches(f.namespace))),
        b(ip_in(&s.ip_blocks, f.source_ip)),
        b(ip_in(&s.remote_ip_blocks, f.remote_ip)),
        match auth {
            _ if !s.request_principals.is_set() => M::Yes,
            None => M::Unknown,
            Some(rp) => b(s.request_principals.check(|p| p.matches(rp))),
        },
    ])
}

/// The host without its port, as Istio compares hosts (`[v6]:port` keeps its brackets).
fn host_only(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|c| c.is_ascii_digit())
                && !host.contains(':') =>
        {
            host
        }
        _ => h,
    }
}

fn operation(o: &Operation, f: &Facts<'_>) -> M {
    let http = |set: bool, check: &dyn Fn(&Http<'_>) -> bool| match (set, f.http) {
        (false, _) => M::Yes,
        (true, None) => M::Unknown,
        (true, Some(h)) => b(check(&h)),
    };
    all([
        b(o.ports.check(|p| *p == f.dest_port)),
        http(o.hosts.is_set(), &|h| {
            o.hosts.check(|p| {
                p.matches_ignore_case(Some(h.host))
                    || p.matches_ignore_case(Some(host_only(h.host)))
            })
        }),
        http(o.methods.is_set(), &|h| {
            o.methods.check(|p| p.matches(Some(h.method)))
        }),
        http(o.paths.is_set(), &|h| o.paths.check(|p| p.matches(h.path))),
    ])
}

/// The values of a claim at `path` (a string, or each string of a list).
fn claim_values<'a>(claims: &'a serde_json::Value, path: &[String]) -> Vec<&'a str> {
    let mut v = claims;
    for p in path {
        match v.get(p) {
            Some(n) => v = n,
            None => return Vec::new(),
        }
    }
    match v {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
        _ => Vec::new(),
    }
}

fn condition(c: &Condition, f: &Facts<'_>) -> M {
    if c.key.http_only() && f.http.is_none() {
        return M::Unknown;
    }
    let auth = f.http.and_then(|h| h.auth);
    let strs = |vals: Vec<&str>| match &c.values {
        Values::Strings(field) => {
            // Several values (audiences, list claims, repeated headers): any may match a
            // value; none may match a notValue.
            (field.values.is_empty()
                || field
                    .values
                    .iter()
                    .any(|p| vals.iter().any(|v| p.matches(Some(v)))))
                && !field
                    .not
                    .iter()
                    .any(|p| vals.iter().any(|v| p.matches(Some(v))))
        }
        _ => false,
    };
    let ips = |ip: IpAddr| matches!(&c.values, Values::Ips(field) if ip_in(field, ip));
    b(match &c.key {
        Key::SourceIp => ips(f.source_ip),
        Key::RemoteIp => ips(f.remote_ip),
        Key::DestinationIp => ips(f.dest_ip),
        Key::DestinationPort => {
            matches!(&c.values, Values::Ports(field) if field.check(|p| *p == f.dest_port))
        }
        Key::SourceNamespace => strs(f.namespace.into_iter().collect()),
        Key::SourcePrincipal => strs(f.principal.into_iter().collect()),
        Key::SourceServiceAccount => {
            // `ns/sa`, from the principal `td/ns/NS/sa/SA`.
            let sa = f.principal.and_then(|p| {
                let parts: Vec<&str> = p.split('/').collect();
                match parts.as_slice() {
                    [_, "ns", ns, "sa", sa] => Some(format!("{ns}/{sa}")),
                    _ => None,
                }
            });
            strs(sa.as_deref().into_iter().collect())
        }
        Key::ConnectionSni => match f.sni {
            Sni::Unknowable => return M::Unknown,
            Sni::Sent(sni) => strs(sni.into_iter().collect()),
        },
        Key::RequestPrincipal => strs(auth.map(|a| a.principal.as_str()).into_iter().collect()),
        Key::RequestAudiences => strs(
            auth.map(|a| a.audiences.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        ),
        Key::RequestPresenter => strs(
            auth.and_then(|a| a.presenter.as_deref())
                .into_iter()
                .collect(),
        ),
        Key::RequestClaim(path) => strs(
            auth.map(|a| claim_values(&a.claims, path))
                .unwrap_or_default(),
        ),
        Key::RequestHeader(name) => strs(
            f.http
                .map(|h| {
                    h.headers
                        .get_all(name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect()
                })
                .unwrap_or_default(),
        ),
    })
}

fn rule(r: &Rule, f: &Facts<'_>) -> M {
    let from = if r.from.is_empty() {
        M::Yes
    } else {
        any(r.from.iter().map(|s| source(s, f)))
    };
    let to = if r.to.is_empty() {
        M::Yes
    } else {
        any(r.to.iter().map(|o| operation(o, f)))
    };
    all([from, to, all(r.when.iter().map(|c| condition(c, f)))])
}

/// The first rule of `p` that matches (an unknown counts as a match only where `lenient`),
/// or None.
fn matching_rule(p: &Policy, f: &Facts<'_>, lenient: bool) -> Option<usize> {
    p.rules.iter().position(|r| match rule(r, f) {
        M::Yes => true,
        M::Unknown => lenient,
        M::No => false,
    })
}

/// Decide. `policies` are those that apply to the destination.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy> + Clone,
    f: &Facts<'_>,
) -> Verdict {
    let custom = policies.clone().into_iter().find_map(|p| match &p.action {
        Action::Custom(provider) => {
            matching_rule(p, f, true).map(|_| (p.name.clone(), provider.clone()))
        }
        _ => None,
    });
    let audit = policies
        .clone()
        .into_iter()
        .filter(|p| p.action == Action::Audit && matching_rule(p, f, true).is_some())
        .map(|p| p.name.clone())
        .collect();
    let decision = decide(policies, f);
    Verdict {
        custom,
        decision,
        audit,
    }
}

fn decide<'p>(policies: impl IntoIterator<Item = &'p Policy> + Clone, f: &Facts<'_>) -> Decision {
    for p in policies.clone() {
        if p.action == Action::Deny
            && let Some(i) = matching_rule(p, f, true)
        {
            return Decision::Deny {
                policy: Some(p.name.clone()),
                rule: Some(i),
            };
        }
    }
    let mut allows = policies
        .into_iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| matching_rule(p, f, false).is_some()) {
        Decision::Allow
    } else {
        Decision::Deny {
            policy: None,
            rule: None,
        }
    }
}

#[cfg(test)]
mod tests;
