//! `spar analyze`: the checks across resources that Istio's `istioctl analyze` makes most
//! often useful, with Istio's message codes where Istio has one (`SPARnnnn` where it has
//! none). Pure: resources (with where each came from) in, messages out, sorted.
//!
//! | code | level | finding |
//! | --- | --- | --- |
//! | IST0101 | Error | a VirtualService routes or mirrors to a host no Service or ServiceEntry defines, or to a subset no DestinationRule defines |
//! | IST0127 | Warning | an AuthorizationPolicy, PeerAuthentication or RequestAuthentication selects no workload |
//! | IST0118 | Info | a Service port whose protocol is neither declared (`appProtocol`) nor in its name |
//! | SPAR0001 | Warning | a DestinationRule subset that no pod of its host matches |
//! | SPAR0002 | Error | two PeerAuthentications of the same scope (mesh, namespace or workload) |
//! | SPAR0003 | Warning | a namespace labelled for both sidecar injection and ambient |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::istio::networking::Destination;
use crate::load::Origin;
use crate::meta::Labels;
use crate::resource::{Kind, Resource, Spec};

/// Istio's root namespace: mesh-wide policies live there.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
}

/// One finding, as `istioctl analyze` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    pub level: Level,
    pub code: &'static str,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `file:line`, when the resource came from a file.
    pub origin: Option<String>,
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        };
        let at = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        write!(f, "{level} [{}] ({} {at}", self.code, self.kind.name())?;
        if let Some(o) = &self.origin {
            write!(f, " {o}")?;
        }
        write!(f, ") {}", self.text)
    }
}

/// A workload the analyzers know: a Deployment's or Job's pod template, or a Pod.
struct Workload<'a> {
    namespace: &'a str,
    labels: &'a Labels,
}

struct Ctx<'a> {
    resources: &'a [(Resource, Option<Origin>)],
    workloads: Vec<Workload<'a>>,
    /// FQDNs of Services, and their selectors.
    services: BTreeMap<String, (&'a str, &'a Labels)>,
    entry_hosts: Vec<String>,
    /// (resolved host, subset name) of every DestinationRule subset.
    subsets: BTreeSet<(String, String)>,
    out: Vec<Message>,
}

/// Analyze `resources` (each with its file and line when known).
pub fn analyze(resources: &[(Resource, Option<Origin>)]) -> Vec<Message> {
    let mut workloads = Vec::new();
    let mut services = BTreeMap::new();
    let mut entry_hosts = Vec::new();
    for (r, _) in resources {
        match &r.spec {
            Spec::Deployment(d) => workloads.push(Workload {
                namespace: r.namespace(),
                labels: &d.template.metadata.labels,
            }),
            Spec::Job(j) => workloads.push(Workload {
                namespace: r.namespace(),
                labels: &j.template.metadata.labels,
            }),
            Spec::Pod(..) => workloads.push(Workload {
                namespace: r.namespace(),
                labels: &r.meta.labels,
            }),
            Spec::Service(s) => {
                services.insert(
                    format!("{}.{}.svc.cluster.local", r.name(), r.namespace()),
                    (r.namespace(), &s.selector),
                );
            }
            Spec::ServiceEntry(se) => entry_hosts.extend(se.hosts.iter().cloned()),
            _ => {}
        }
    }
    let mut subsets = BTreeSet::new();
    for (r, _) in resources {
        if let Spec::DestinationRule(dr) = &r.spec {
            let host = fqdn(&dr.host, r.namespace());
            for s in &dr.subsets {
                subsets.insert((host.clone(), s.name.clone()));
            }
        }
    }
    let mut cx = Ctx {
        resources,
        workloads,
        services,
        entry_hosts,
        subsets,
        out: Vec::new(),
    };
    for (r, origin) in resources {
        let origin = origin.as_ref().map(|o| format!("{}:{}", o.file, o.line));
        cx.resource(r, origin);
    }
    cx.peer_authentication_conflicts();
    cx.out.sort();
    cx.out.dedup();
    cx.out
}

/// A host as Istio resolves it in `namespace`: a short name is that namespace's Service.
fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn show(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Protocol prefixes Istio reads from a port name (`http`, `http-web`, `grpc-x`, ...).
const PROTOCOLS: &[&str] = &[
    "http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "udp",
    "h2c", "ws", "wss",
];

impl Ctx<'_> {
    fn msg(
        &mut self,
        r: &Resource,
        origin: &Option<String>,
        level: Level,
        code: &'static str,
        text: String,
    ) {
        self.out.push(Message {
            level,
            code,
            kind: r.kind,
            namespace: if r.kind.namespaced() {
                r.namespace().to_string()
            } else {
                String::new()
            },
            name: r.name().to_string(),
            origin: origin.clone(),
            text,
        });
    }

    fn resource(&mut self, r: &Resource, origin: Option<String>) {
        match &r.spec {
            Spec::VirtualService(vs) => {
                let mut dests: Vec<&Destination> = Vec::new();
                for h in &vs.http {
                    dests.extend(h.route.iter().map(|d| &d.destination));
                    dests.extend(h.mirror.iter());
                    dests.extend(h.mirrors.iter().map(|m| &m.destination));
                }
                for t in &vs.tcp {
                    dests.extend(t.route.iter().map(|d| &d.destination));
                }
                for t in &vs.tls {
                    dests.extend(t.route.iter().map(|d| &d.destination));
                }
                for d in dests {
                    self.destination(r, &origin, d);
                }
            }
            Spec::DestinationRule(dr) => {
                let host = fqdn(&dr.host, r.namespace());
                let Some((ns, selector)) = self.services.get(&host).copied() else {
                    return;
                };
                for s in &dr.subsets {
                    let matched = self.workloads.iter().any(|w| {
                        w.namespace == ns
                            && selects(selector, w.labels)
                            && selects(&s.labels, w.labels)
                    });
                    if !matched {
                        self.msg(r, &origin, Level::Warning, "SPAR0001", format!(
                            "Subset {:?} ({}) matches no pod of {host}: requests routed to it fail with 503 no healthy upstream",
                            s.name, show(&s.labels)
                        ));
                    }
                }
            }
            Spec::AuthorizationPolicy(p) => {
                if let Some(sel) = &p.selector {
                    self.selects_some(r, &origin, &sel.match_labels);
                }
            }
            Spec::PeerAuthentication(p) => {
                if let Some(sel) = &p.selector {
                    self.selects_some(r, &origin, &sel.match_labels);
                }
            }
            Spec::RequestAuthentication(p) => {
                if let Some(sel) = &p.selector {
                    self.selects_some(r, &origin, &sel.match_labels);
                }
            }
            Spec::Service(s) => {
                for p in &s.ports {
                    let declared = p.app_protocol.as_deref().is_some_and(|a| !a.is_empty());
                    let named = p.name.as_deref().is_some_and(|n| {
                        let prefix = n.split('-').next().unwrap_or(n);
                        PROTOCOLS.contains(&prefix.to_ascii_lowercase().as_str())
                    });
                    if !declared && !named {
                        self.msg(r, &origin, Level::Info, "IST0118", format!(
                            "Port name {:?} (port: {}) doesn't follow the naming convention of Istio port: name it `<protocol>[-<suffix>]` or set appProtocol; until then the protocol is detected from the first bytes",
                            p.name.as_deref().unwrap_or(""), p.port
                        ));
                    }
                }
            }
            Spec::Namespace => {
                let l = &r.meta.labels;
                let injected = l.get("istio-injection").is_some_and(|v| v == "enabled")
                    || l.contains_key("istio.io/rev");
                let ambient = l
                    .get("istio.io/dataplane-mode")
                    .is_some_and(|v| v == "ambient");
                if injected && ambient {
                    self.msg(r, &origin, Level::Warning, "SPAR0003",
                        "Namespace is labelled for both sidecar injection and ambient mode: its pods get sidecars and the node proxy leaves them alone; remove one of the labels".into());
                }
            }
            _ => {}
        }
    }

    fn destination(&mut self, r: &Resource, origin: &Option<String>, d: &Destination) {
        let host = fqdn(&d.host, r.namespace());
        let known = self.services.contains_key(&host)
            || self
                .entry_hosts
                .iter()
                .any(|h| host_matches(h, &host) || host_matches(h, &d.host));
        if !known {
            self.msg(
                r,
                origin,
                Level::Error,
                "IST0101",
                format!("Referenced host not found: {:?}", d.host),
            );
            return;
        }
        if let Some(subset) = &d.subset
            && !self.subsets.contains(&(host.clone(), subset.clone()))
        {
            self.msg(
                r,
                origin,
                Level::Error,
                "IST0101",
                format!(
                    "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                    d.host
                ),
            );
        }
    }

    fn selects_some(&mut self, r: &Resource, origin: &Option<String>, sel: &Labels) {
        let ns = r.namespace();
        let found = self
            .workloads
            .iter()
            .any(|w| (ns == ROOT_NAMESPACE || w.namespace == ns) && selects(sel, w.labels));
        if !found {
            self.msg(
                r,
                origin,
                Level::Warning,
                "IST0127",
                format!(
                    "No matching workloads for this resource with the following labels: {}",
                    show(sel)
                ),
            );
        }
    }

    /// Two PeerAuthentications of one scope: Istio applies only the oldest, silently.
    fn peer_authentication_conflicts(&mut self) {
        let mut scopes: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, (r, _)) in self.resources.iter().enumerate() {
            if let Spec::PeerAuthentication(p) = &r.spec {
                let scope = match &p.selector {
                    Some(s) if !s.match_labels.is_empty() => show(&s.match_labels),
                    _ if r.namespace() == ROOT_NAMESPACE => "(mesh-wide)".into(),
                    _ => "(namespace-wide)".into(),
                };
                scopes
                    .entry((r.namespace().to_string(), scope))
                    .or_default()
                    .push(i);
            }
        }
        for ((_, scope), idx) in scopes.into_iter().filter(|(_, v)| v.len() > 1) {
            let names: Vec<&str> = idx.iter().map(|&i| self.resources[i].0.name()).collect();
            for &i in &idx {
                let (r, origin) = &self.resources[i];
                let origin = origin.as_ref().map(|o| format!("{}:{}", o.file, o.line));
                self.msg(r, &origin, Level::Error, "SPAR0002", format!(
                    "Conflicting PeerAuthentications for the same workloads {scope}: {}; only one applies (Istio takes the oldest), merge them into one",
                    names.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
