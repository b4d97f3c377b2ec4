//! L4 authorization, Istio's order: any matching DENY denies; with ALLOW policies present one
//! must match; otherwise allow. Pure: policies and a connection in, a decision out.

use std::net::IpAddr;

use spar_xds::security::{self as xsec, string_match::MatchType};
use spar_xds::workload::Workload;

/// What is known about a connection when it is authorized.
#[derive(Debug, Clone)]
pub struct Conn {
    pub src_ip: IpAddr,
    /// Peer identity as `td/ns/NS/sa/SA` (AuthorizationPolicy principal form); None for plaintext.
    pub src_principal: Option<String>,
    pub src_namespace: Option<String>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// The policies that apply to `dst`: mesh-wide, its namespace's, and those listed on it.
pub fn applicable<'a>(
    all: impl Iterator<Item = (&'a String, &'a xsec::Authorization)>,
    dst: &Workload,
) -> Vec<&'a xsec::Authorization> {
    all.filter(|(key, p)| match xsec::Scope::try_from(p.scope) {
        Ok(xsec::Scope::Global) => true,
        Ok(xsec::Scope::Namespace) => p.namespace == dst.namespace,
        _ => dst.authorization_policies.iter().any(|n| n == *key),
    })
    .map(|(_, p)| p)
    .collect()
}

pub fn authorize(policies: &[&xsec::Authorization], c: &Conn) -> Decision {
    let is = |p: &&&xsec::Authorization, a: xsec::Action| {
        xsec::Action::try_from(p.action).ok() == Some(a)
    };
    if let Some(p) = policies
        .iter()
        .find(|p| is(p, xsec::Action::Deny) && p.rules.iter().any(|r| rule(r, c)))
    {
        return Decision::Deny(format!("denied by policy {}/{}", p.namespace, p.name));
    }
    let allows: Vec<_> = policies
        .iter()
        .filter(|p| is(p, xsec::Action::Allow))
        .collect();
    if allows.is_empty() || allows.iter().any(|p| p.rules.iter().any(|r| rule(r, c))) {
        Decision::Allow
    } else {
        Decision::Deny("no ALLOW policy matched".into())
    }
}

fn rule(r: &xsec::Rule, c: &Conn) -> bool {
    r.clauses
        .iter()
        .all(|cl| cl.matches.is_empty() || cl.matches.iter().any(|m| matches(m, c)))
}

fn matches(m: &xsec::Match, c: &Conn) -> bool {
    let ns = c.src_namespace.as_deref();
    let pr = c.src_principal.as_deref();
    let any_str =
        |list: &[xsec::StringMatch], v: Option<&str>| list.iter().any(|s| string_match(s, v));
    let any_ip = |list: &[xsec::Address], ip: IpAddr| list.iter().any(|a| in_cidr(a, ip));
    (m.namespaces.is_empty() || any_str(&m.namespaces, ns))
        && !any_str(&m.not_namespaces, ns)
        && (m.principals.is_empty() || any_str(&m.principals, pr))
        && !any_str(&m.not_principals, pr)
        && (m.source_ips.is_empty() || any_ip(&m.source_ips, c.src_ip))
        && !any_ip(&m.not_source_ips, c.src_ip)
        && (m.destination_ips.is_empty() || any_ip(&m.destination_ips, c.dst_ip))
        && !any_ip(&m.not_destination_ips, c.dst_ip)
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&u32::from(c.dst_port)))
        && !m.not_destination_ports.contains(&u32::from(c.dst_port))
}

/// Absent values match nothing except a negated presence (so "no identity" fails closed).
fn string_match(s: &xsec::StringMatch, v: Option<&str>) -> bool {
    let Some(v) = v else { return false };
    match &s.match_type {
        Some(MatchType::Exact(e)) => v == e,
        Some(MatchType::Prefix(p)) => v.starts_with(p.as_str()),
        Some(MatchType::Suffix(p)) => v.ends_with(p.as_str()),
        Some(MatchType::Presence(())) => !v.is_empty(),
        None => false,
    }
}

fn in_cidr(a: &xsec::Address, ip: IpAddr) -> bool {
    let net = match (a.address.len(), ip) {
        (4, IpAddr::V4(ip)) => {
            let base = u32::from_be_bytes([a.address[0], a.address[1], a.address[2], a.address[3]]);
            let len = a.length.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            return (u32::from(ip) & mask) == (base & mask);
        }
        (16, IpAddr::V6(ip)) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&a.address);
            (u128::from_be_bytes(b), u128::from(ip))
        }
        _ => return false,
    };
    let len = a.length.min(128);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (net.1 & mask) == (net.0 & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(t: MatchType) -> xsec::StringMatch {
        xsec::StringMatch {
            match_type: Some(t),
        }
    }

    fn policy(action: xsec::Action, matches: Vec<xsec::Match>) -> xsec::Authorization {
        xsec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            action: action as i32,
            rules: vec![xsec::Rule {
                clauses: vec![xsec::Clause { matches }],
            }],
            ..Default::default()
        }
    }

    fn conn(principal: Option<&str>, ip: [u8; 4], port: u16) -> Conn {
        Conn {
            src_ip: IpAddr::from(ip),
            src_principal: principal.map(str::to_string),
            src_namespace: principal
                .and_then(|p| p.split('/').nth(2))
                .map(str::to_string),
            dst_ip: IpAddr::from([10, 0, 0, 9]),
            dst_port: port,
        }
    }

    #[test]
    fn table() {
        let sleep = Some("cluster.local/ns/foo/sa/sleep");
        let allow_sleep = policy(
            xsec::Action::Allow,
            vec![xsec::Match {
                principals: vec![sm(MatchType::Exact("cluster.local/ns/foo/sa/sleep".into()))],
                ..Default::default()
            }],
        );
        let deny_bar = policy(
            xsec::Action::Deny,
            vec![xsec::Match {
                namespaces: vec![sm(MatchType::Exact("bar".into()))],
                ..Default::default()
            }],
        );
        let allow_block = policy(
            xsec::Action::Allow,
            vec![xsec::Match {
                source_ips: vec![xsec::Address {
                    address: vec![10, 1, 0, 0],
                    length: 16,
                }],
                ..Default::default()
            }],
        );
        let strict = policy(
            xsec::Action::Deny,
            vec![xsec::Match {
                not_principals: vec![sm(MatchType::Presence(()))],
                not_destination_ports: vec![8080],
                ..Default::default()
            }],
        );
        let allow_nothing = xsec::Authorization {
            action: xsec::Action::Allow as i32,
            ..Default::default()
        };
        let cases: Vec<(Vec<&xsec::Authorization>, Conn, bool)> = vec![
            (vec![], conn(None, [1, 2, 3, 4], 80), true),
            (vec![&allow_sleep], conn(sleep, [1, 2, 3, 4], 80), true),
            (
                vec![&allow_sleep],
                conn(Some("cluster.local/ns/foo/sa/other"), [1, 2, 3, 4], 80),
                false,
            ),
            (vec![&allow_sleep], conn(None, [1, 2, 3, 4], 80), false),
            (
                vec![&deny_bar],
                conn(Some("cluster.local/ns/bar/sa/x"), [1, 2, 3, 4], 80),
                false,
            ),
            (vec![&deny_bar], conn(sleep, [1, 2, 3, 4], 80), true),
            (
                vec![&deny_bar, &allow_sleep],
                conn(sleep, [1, 2, 3, 4], 80),
                true,
            ),
            (vec![&allow_block], conn(None, [10, 1, 9, 9], 80), true),
            (vec![&allow_block], conn(None, [10, 2, 0, 1], 80), false),
            (vec![&strict], conn(None, [1, 2, 3, 4], 80), false),
            (vec![&strict], conn(None, [1, 2, 3, 4], 8080), true),
            (vec![&strict], conn(sleep, [1, 2, 3, 4], 80), true),
            (vec![&allow_nothing], conn(sleep, [1, 2, 3, 4], 80), false),
        ];
        for (i, (ps, c, allowed)) in cases.into_iter().enumerate() {
            assert_eq!(
                authorize(&ps, &c) == Decision::Allow,
                allowed,
                "case {i}: {c:?}"
            );
        }
    }
}
