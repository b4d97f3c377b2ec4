//! The config dump (`/config_dump`): what a proxy holds now, in the sections `spar
//! proxy-config` shows as tables (workloads, services and their endpoints, L7 clusters and
//! routes, listeners per enrolled pod, certificates), as JSON.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::l7::config::{Action, Match, Route, StringMatch};
use crate::proxy::Proxy;

pub fn config_dump(node: &Proxy) -> String {
    let state = node.snapshot.load_full();
    let certs: Vec<Value> = node
        .certs
        .dump()
        .into_iter()
        .map(|(id, exp)| {
            let secs = exp
                .and_then(|e| e.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            json!({ "identity": id, "expires_unix": secs })
        })
        .collect();
    let endpoints: Vec<Value> = state
        .services
        .values()
        .flat_map(|s| {
            s.endpoints.iter().map(|e| {
                json!({
                    "service": s.key.to_string(),
                    "address": e.ip.to_string(),
                    "ports": e.ports(),
                    "workload": e.workload.uid,
                    "healthy": e.workload.status == 0,
                })
            })
        })
        .collect();
    let clusters: Vec<Value> = state
        .services
        .values()
        .filter_map(|s| Some((s.key.to_string(), s.l7.as_ref()?)))
        .map(|(k, s)| {
            let ports: BTreeMap<u16, String> = s
                .ports
                .iter()
                .map(|(p, proto)| (*p, format!("{proto:?}").to_lowercase()))
                .collect();
            let subsets: BTreeMap<&String, usize> = s
                .subsets
                .iter()
                .map(|(n, m)| (n, m.members.len()))
                .collect();
            json!({
                "service": k,
                "ports": ports,
                "destination_rule": s.destination_rule,
                "subsets": subsets,
                "balance": format!("{:?}", s.policy.balance),
            })
        })
        .collect();
    let routes: Vec<Value> = state
        .services
        .values()
        .filter_map(|s| Some((s.key.to_string(), s.l7.as_ref()?)))
        .filter(|(_, s)| !s.http.is_empty() || !s.tcp.is_empty())
        .map(|(k, s)| {
            json!({
                "service": k,
                "virtual_service": s.virtual_service,
                "http": s.http.iter().map(route).collect::<Vec<_>>(),
                "tcp": s.tcp.iter().map(|t| json!({
                    "ports": t.ports,
                    "to": t.targets.iter().map(|w| target(&w.target.host, w.target.subset.as_deref(), w.target.port, w.weight)).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let dump = json!({
        "node": node.name,
        "generation": *node.generation.borrow(),
        "enrolled": *node.enrolled.lock().unwrap_or_else(|e| e.into_inner()),
        "listeners": *node.listeners.lock().unwrap_or_else(|e| e.into_inner()),
        "certificates": certs,
        "workloads": state.workloads.values().map(|w| &w.workload).collect::<Vec<_>>(),
        "services": state.services.values().filter_map(|s| s.service.as_deref()).collect::<Vec<_>>(),
        "endpoints": endpoints,
        "clusters": clusters,
        "routes": routes,
        "policies": state.policies,
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

fn target(host: &str, subset: Option<&str>, port: Option<u16>, weight: u32) -> String {
    let mut t = host.to_string();
    if let Some(p) = port {
        t.push_str(&format!(":{p}"));
    }
    if let Some(s) = subset {
        t.push_str(&format!(" subset {s}"));
    }
    if weight != 100 {
        t.push_str(&format!(" {weight}%"));
    }
    t
}

fn string_match(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => s.clone(),
        StringMatch::Prefix(p) => format!("{p}*"),
        StringMatch::Regex(r) => format!("~{}", r.as_str()),
    }
}

/// One match, as `uri=/api* method=GET end-user=jason`.
fn describe(m: &Match) -> String {
    let mut parts = Vec::new();
    for (what, v) in [
        ("uri", &m.uri),
        ("method", &m.method),
        ("authority", &m.authority),
        ("scheme", &m.scheme),
    ] {
        if let Some(v) = v {
            parts.push(format!("{what}={}", string_match(v)));
        }
    }
    for (h, v) in &m.headers {
        parts.push(format!("{h}={}", string_match(v)));
    }
    for (h, v) in &m.without_headers {
        parts.push(format!("!{h}={}", string_match(v)));
    }
    for (q, v) in &m.query {
        parts.push(format!("?{q}={}", string_match(v)));
    }
    if let Some(p) = m.port {
        parts.push(format!("port={p}"));
    }
    parts.join(" ")
}

fn route(r: &Route) -> Value {
    let matches: Vec<String> = r.matches.iter().map(describe).collect();
    let to = match &r.action {
        Action::Forward(targets) => targets
            .iter()
            .map(|w| {
                target(
                    &w.target.host,
                    w.target.subset.as_deref(),
                    w.target.port,
                    w.weight,
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Action::Redirect { code, uri, .. } => format!(
            "redirect {code} {}",
            uri.as_deref().unwrap_or("(same path)")
        ),
        Action::Direct { status, .. } => format!("direct response {status}"),
    };
    json!({
        "name": r.name,
        "match": if matches.is_empty() { "*".to_string() } else { matches.join(" | ") },
        "to": to,
        "timeout_ms": r.timeout.map(|t| t.as_millis() as u64),
        "fault": r.fault.is_some(),
        "mirrors": r.mirrors.len(),
    })
}
