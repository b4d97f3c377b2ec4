//! Policy translation: AuthorizationPolicy and PeerAuthentication as the L4 `Authorization`
//! resources node proxies and sidecars enforce.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use spar_model::istio::security::{AuthorizationPolicy, PeerAuthentication, Rule as ApRule};
use spar_model::{Kind, Resource, Spec, labels_match};
use spar_xds::security::{self as xsec, string_match::MatchType};

use crate::registry::{Pod, Registry};

/// An AuthorizationPolicy as an L4 Authorization for node proxies, or None when it does not
/// apply at L4: AUDIT (logging only) and targetRef policies (bound to a waypoint or
/// gateway). CUSTOM needs an L7 proxy to ask its ext_authz provider; a node proxy cannot, so
/// it fails closed: the policy's rules become a DENY (its L4 part alone, so it denies more,
/// never less), where Istio's ztunnel would let the traffic through unchecked.
pub fn authorization(
    reg: &Registry,
    r: &Resource,
    ap: &AuthorizationPolicy,
) -> Option<xsec::Authorization> {
    if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
        return None;
    }
    let action = match ap.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => xsec::Action::Allow,
        "DENY" | "CUSTOM" => xsec::Action::Deny,
        _ => return None,
    };
    let scope = if ap.selector.is_some() {
        xsec::Scope::WorkloadSelector
    } else if r.namespace() == reg.mesh.root_namespace {
        xsec::Scope::Global
    } else {
        xsec::Scope::Namespace
    };
    let rules = ap
        .rules
        .iter()
        .filter_map(|rule| l4_rule(rule, action))
        .collect();
    Some(xsec::Authorization {
        name: r.name().to_string(),
        namespace: r.namespace().to_string(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run: false,
    })
}

/// One rule at L4. A rule with L7 conditions cannot be checked by a node proxy; Istio fails
/// closed: an ALLOW rule that needs L7 never matches (dropped), a DENY rule is enforced on
/// its L4 part alone (so it denies more, never less).
fn l4_rule(rule: &ApRule, action: xsec::Action) -> Option<xsec::Rule> {
    let mut has_l7 = false;
    let mut clauses = Vec::new();
    if !rule.from.is_empty() {
        let matches = rule
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                has_l7 |= !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
                let sa = |list: &Vec<String>| {
                    list.iter()
                        .map(|x| match x.split_once('/') {
                            Some((ns, sa)) => sm_suffix(&format!("/ns/{ns}/sa/{sa}")),
                            None => sm(x),
                        })
                        .collect::<Vec<_>>()
                };
                let mut principals: Vec<_> = s.principals.iter().map(|p| sm(p)).collect();
                principals.extend(sa(&s.service_accounts));
                let mut not_principals: Vec<_> = s.not_principals.iter().map(|p| sm(p)).collect();
                not_principals.extend(sa(&s.not_service_accounts));
                xsec::Match {
                    namespaces: s.namespaces.iter().map(|n| sm(n)).collect(),
                    not_namespaces: s.not_namespaces.iter().map(|n| sm(n)).collect(),
                    principals,
                    not_principals,
                    ..source_ips(s)
                }
            })
            .collect();
        clauses.push(xsec::Clause { matches });
    }
    if !rule.to.is_empty() {
        let matches = rule
            .to
            .iter()
            .map(|t| {
                let o = &t.operation;
                has_l7 |= [
                    &o.hosts,
                    &o.not_hosts,
                    &o.methods,
                    &o.not_methods,
                    &o.paths,
                    &o.not_paths,
                ]
                .iter()
                .any(|l| !l.is_empty());
                xsec::Match {
                    destination_ports: o.ports.iter().filter_map(|p| p.parse().ok()).collect(),
                    not_destination_ports: o
                        .not_ports
                        .iter()
                        .filter_map(|p| p.parse().ok())
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        clauses.push(xsec::Clause { matches });
    }
    for c in &rule.when {
        let mut m = xsec::Match::default();
        let ports = |v: &Vec<String>| {
            v.iter()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        };
        let strs = |v: &Vec<String>| v.iter().map(|x| sm(x)).collect::<Vec<_>>();
        match c.key.as_str() {
            "source.ip" | "remote.ip" => {
                m.source_ips = cidrs(c.values.iter());
                m.not_source_ips = cidrs(c.not_values.iter());
            }
            "source.namespace" => {
                m.namespaces = strs(&c.values);
                m.not_namespaces = strs(&c.not_values);
            }
            "source.principal" => {
                m.principals = strs(&c.values);
                m.not_principals = strs(&c.not_values);
            }
            "destination.ip" => {
                m.destination_ips = cidrs(c.values.iter());
                m.not_destination_ips = cidrs(c.not_values.iter());
            }
            "destination.port" => {
                m.destination_ports = ports(&c.values);
                m.not_destination_ports = ports(&c.not_values);
            }
            _ => {
                has_l7 = true;
                continue;
            }
        }
        clauses.push(xsec::Clause { matches: vec![m] });
    }
    if has_l7 && action == xsec::Action::Allow {
        return None;
    }
    Some(xsec::Rule { clauses })
}

/// A source's `ipBlocks` and `remoteIpBlocks` at L4, where the remote address is the peer's:
/// both must match when both are set, so the allowed set is their intersection (CIDR blocks
/// nest or are disjoint); an empty intersection matches nothing. The `not` lists are one
/// union.
fn source_ips(s: &spar_model::istio::security::Source) -> xsec::Match {
    let parse = |list: &Vec<String>| -> Vec<IpNet> {
        list.iter()
            .filter_map(|s| {
                s.parse()
                    .ok()
                    .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect()
    };
    let (a, b) = (parse(&s.ip_blocks), parse(&s.remote_ip_blocks));
    let allowed: Vec<IpNet> = match (a.is_empty(), b.is_empty()) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => a
            .iter()
            .flat_map(|x| {
                b.iter().filter_map(move |y| {
                    if x.contains(y) {
                        Some(*y)
                    } else if y.contains(x) {
                        Some(*x)
                    } else {
                        None
                    }
                })
            })
            .collect(),
    };
    let mut not_source_ips = cidrs(s.not_ip_blocks.iter().chain(&s.not_remote_ip_blocks));
    let both_set = !s.ip_blocks.is_empty() && !s.remote_ip_blocks.is_empty();
    if both_set && allowed.is_empty() {
        for all in ["0.0.0.0/0", "::/0"] {
            not_source_ips.extend(cidrs(std::iter::once(&all.to_string())));
        }
    }
    xsec::Match {
        source_ips: allowed
            .iter()
            .map(|n| xsec::Address {
                address: spar_xds::ip_bytes(n.network()),
                length: u32::from(n.prefix_len()),
            })
            .collect(),
        not_source_ips,
        ..Default::default()
    }
}

/// Istio's string match syntax: `*` any value present, `abc*` prefix, `*abc` suffix.
fn sm(s: &str) -> xsec::StringMatch {
    let m = if s == "*" {
        MatchType::Presence(())
    } else if let Some(p) = s.strip_suffix('*') {
        MatchType::Prefix(p.to_string())
    } else if let Some(p) = s.strip_prefix('*') {
        MatchType::Suffix(p.to_string())
    } else {
        MatchType::Exact(s.to_string())
    };
    xsec::StringMatch {
        match_type: Some(m),
    }
}

fn sm_suffix(s: &str) -> xsec::StringMatch {
    xsec::StringMatch {
        match_type: Some(MatchType::Suffix(s.to_string())),
    }
}

fn cidrs<'a>(list: impl Iterator<Item = &'a String>) -> Vec<xsec::Address> {
    list.filter_map(|s| {
        let net: IpNet = s
            .parse()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
        Some(xsec::Address {
            address: spar_xds::ip_bytes(net.network()),
            length: u32::from(net.prefix_len()),
        })
    })
    .collect()
}

/// The effective PeerAuthentication of a pod (workload > namespace > mesh; UNSET inherits;
/// the oldest, here the first by name, wins a tie), as (mode, port -> mode).
pub fn effective_mtls(reg: &Registry, pod: &Pod<'_>) -> (String, BTreeMap<u32, String>) {
    let pas: Vec<(&Resource, &PeerAuthentication)> = reg
        .of_kind(Kind::PeerAuthentication)
        .filter_map(|r| match &r.spec {
            Spec::PeerAuthentication(pa) => Some((r, &**pa)),
            _ => None,
        })
        .collect();
    let level = |pred: &dyn Fn(&Resource, &PeerAuthentication) -> bool| {
        pas.iter().find(|(r, pa)| pred(r, pa)).map(|(_, pa)| *pa)
    };
    let mesh = level(&|r, pa| r.namespace() == reg.mesh.root_namespace && pa.selector.is_none());
    let ns = level(&|r, pa| r.namespace() == pod.namespace && pa.selector.is_none());
    let wl = level(&|r, pa| {
        r.namespace() == pod.namespace
            && pa
                .selector
                .as_ref()
                .is_some_and(|s| labels_match(&s.match_labels, pod.labels))
    });
    let mode_of = |pa: Option<&PeerAuthentication>| {
        pa.and_then(|p| p.mtls.as_ref())
            .and_then(|m| m.mode.clone())
            .filter(|m| m != "UNSET")
    };
    let mut mode = "PERMISSIVE".to_string();
    for m in [mode_of(mesh), mode_of(ns), mode_of(wl)]
        .into_iter()
        .flatten()
    {
        mode = m;
    }
    let ports = wl
        .map(|pa| {
            pa.port_level_mtls
                .iter()
                .filter_map(|(p, m)| m.mode.clone().filter(|m| m != "UNSET").map(|m| (*p, m)))
                .collect()
        })
        .unwrap_or_default();
    (mode, ports)
}

/// PeerAuthentication as the node proxy enforces it: a generated DENY policy for plaintext
/// (no peer identity) on the ports where the effective mode is STRICT; None when none are.
pub fn peer_authentication_policy(reg: &Registry, pod: &Pod<'_>) -> Option<xsec::Authorization> {
    let (mode, ports) = effective_mtls(reg, pod);
    let no_identity = vec![xsec::StringMatch {
        match_type: Some(MatchType::Presence(())),
    }];
    let m = if mode == "STRICT" {
        xsec::Match {
            not_principals: no_identity,
            not_destination_ports: ports
                .iter()
                .filter(|(_, m)| *m != "STRICT")
                .map(|(p, _)| *p)
                .collect(),
            ..Default::default()
        }
    } else {
        let strict: Vec<u32> = ports
            .iter()
            .filter(|(_, m)| *m == "STRICT")
            .map(|(p, _)| *p)
            .collect();
        if strict.is_empty() {
            return None;
        }
        xsec::Match {
            not_principals: no_identity,
            destination_ports: strict,
            ..Default::default()
        }
    };
    Some(xsec::Authorization {
        name: format!("spar-peer-authentication-{}", pod.name),
        namespace: pod.namespace.to_string(),
        scope: xsec::Scope::WorkloadSelector as i32,
        action: xsec::Action::Deny as i32,
        rules: vec![xsec::Rule {
            clauses: vec![xsec::Clause { matches: vec![m] }],
        }],
        dry_run: false,
    })
}
