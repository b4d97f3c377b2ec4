//! `compile`: one `ServiceRoutes` resource (a host's declared ports, the JSON of its
//! VirtualService and DestinationRule, subset members) into a `Service`.

use spar_model::istio::networking as n;
use spar_xds::l7::ServiceRoutes;

use super::fields::{At, port, target, weight};
use super::http_route::{default_retry, route};
use super::policy::policy;
use super::{
    Action, HeaderRules, Policy, Protocol, Route, Service, Subset, Target, TcpRoute, TlsRoute,
    WeightedTarget,
};
use crate::Error;

fn protocol(p: &str) -> Protocol {
    match p {
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" => Protocol::Tcp,
        _ => Protocol::Detect,
    }
}

/// The weighted destinations of a TCP or TLS route.
fn l4_targets(route: &[n::RouteDestination], at: &At) -> Result<Vec<WeightedTarget>, Error> {
    route
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let at = at.sub(format!("route[{j}]"));
            Ok(WeightedTarget {
                target: target(&d.destination, &at.sub("destination"))?,
                weight: weight(d.weight, &at.sub("weight"))?,
                headers: HeaderRules::default(),
            })
        })
        .collect()
}

fn tcp_routes(vs: &n::VirtualService, at: &At) -> Result<Vec<TcpRoute>, Error> {
    vs.tcp
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = at.sub(format!("tcp[{i}]"));
            let ports = t
                .matches
                .iter()
                .enumerate()
                .filter_map(|(j, m)| m.port.map(|p| (j, p)))
                .map(|(j, p)| port(p, &at.sub(format!("match[{j}].port"))))
                .collect::<Result<_, Error>>()?;
            let targets = l4_targets(&t.route, &at)?;
            Ok(TcpRoute { ports, targets })
        })
        .collect()
}

fn tls_routes(vs: &n::VirtualService, at: &At) -> Result<Vec<TlsRoute>, Error> {
    vs.tls
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = at.sub(format!("tls[{i}]"));
            let sni_hosts = t
                .matches
                .iter()
                .flat_map(|m| &m.sni_hosts)
                .map(|h| h.to_ascii_lowercase())
                .collect();
            let targets = l4_targets(&t.route, &at)?;
            Ok(TlsRoute { sni_hosts, targets })
        })
        .collect()
}

/// Compile a resource; an error names the resource and the field.
pub fn compile(r: &ServiceRoutes) -> Result<Service, Error> {
    let name = format!("{}/{}", r.namespace, r.hostname);
    let ports = r
        .ports
        .iter()
        .map(|p| {
            Ok((
                port(p.port, &At::new(&name, "ports"))?,
                protocol(&p.protocol),
            ))
        })
        .collect::<Result<_, Error>>()?;
    let mut svc = Service {
        namespace: r.namespace.clone(),
        hostname: r.hostname.clone(),
        ports,
        virtual_service: r.virtual_service_name.clone(),
        destination_rule: r.destination_rule_name.clone(),
        ..Default::default()
    };
    if !r.virtual_service.is_empty() {
        let resource = format!("VirtualService {} (host {name})", r.virtual_service_name);
        let at = At::new(&resource, "");
        let vs: n::VirtualService =
            serde_json::from_str(&r.virtual_service).map_err(|e| at.err(e))?;
        svc.http = vs
            .http
            .iter()
            .enumerate()
            .map(|(i, h)| route(h, i, &at.sub(format!("http[{i}]"))))
            .collect::<Result<_, _>>()?;
        svc.tcp = tcp_routes(&vs, &at)?;
        svc.tls = tls_routes(&vs, &at)?;
    }
    if svc.http.is_empty() {
        svc.http.push(default_route(&r.hostname));
    }
    if !r.destination_rule.is_empty() {
        let resource = format!("DestinationRule {} (host {name})", r.destination_rule_name);
        let at = At::new(&resource, "");
        let dr: n::DestinationRule =
            serde_json::from_str(&r.destination_rule).map_err(|e| at.err(e))?;
        svc.policy = policy(dr.traffic_policy.as_ref(), &Policy::default(), &at)?;
        for (i, s) in dr.subsets.iter().enumerate() {
            let members = r
                .subsets
                .get(&s.name)
                .map(|m| m.uids.iter().cloned().collect())
                .unwrap_or_default();
            let policy = match &s.traffic_policy {
                Some(tp) => Some(policy(
                    Some(tp),
                    &svc.policy,
                    &at.sub(format!("subsets[{i}]")),
                )?),
                None => None,
            };
            svc.subsets
                .insert(s.name.clone(), Subset { members, policy });
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
        retry: default_retry(),
        fault: None,
        mirrors: Vec::new(),
        headers: HeaderRules::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::config::Balance;
    use std::time::Duration;

    fn routes(vs: serde_json::Value, dr: serde_json::Value) -> ServiceRoutes {
        ServiceRoutes {
            namespace: "default".into(),
            hostname: "reviews.default.svc.cluster.local".into(),
            virtual_service: if vs.is_null() {
                String::new()
            } else {
                vs.to_string()
            },
            virtual_service_name: "default/reviews".into(),
            destination_rule: if dr.is_null() {
                String::new()
            } else {
                dr.to_string()
            },
            destination_rule_name: "default/reviews".into(),
            ..Default::default()
        }
    }

    #[test]
    fn refusals_name_the_resource_and_the_field() {
        let host = "reviews.default.svc.cluster.local";
        let fwd = serde_json::json!([{"destination": {"host": host}}]);
        for (vs, dr, resource, field, reason) in [
            (
                serde_json::json!({"http": [{"match": [{"uri": {"regex": "("}}], "route": fwd}]}),
                serde_json::Value::Null,
                "VirtualService default/reviews",
                "http[0].match[0].uri.regex",
                "regex",
            ),
            (
                serde_json::json!({"http": [{"route": fwd, "timeout": "soon"}]}),
                serde_json::Value::Null,
                "VirtualService default/reviews",
                "http[0].timeout",
                "soon",
            ),
            (
                serde_json::json!({"http": [{"route": fwd}, {"route": fwd, "fault": {"abort": {"httpStatus": 42}}}]}),
                serde_json::Value::Null,
                "VirtualService",
                "http[1].fault.abort.httpStatus",
                "42",
            ),
            (
                serde_json::json!({"http": [{}]}),
                serde_json::Value::Null,
                "VirtualService",
                "http[0]",
                "has no route",
            ),
            (
                serde_json::json!({"http": [{"route": fwd, "retries": {"attempts": 3, "retryOn": "sometimes"}}]}),
                serde_json::Value::Null,
                "VirtualService",
                "http[0].retries.retryOn",
                "sometimes",
            ),
            (
                serde_json::json!({"http": [{"route": [{"destination": {"host": ""}}]}]}),
                serde_json::Value::Null,
                "VirtualService",
                "http[0].route[0].destination.host",
                "empty",
            ),
            (
                serde_json::json!({"tcp": [{"route": [{"destination": {"host": host}, "weight": -1}]}]}),
                serde_json::Value::Null,
                "VirtualService",
                "tcp[0].route[0].weight",
                "negative",
            ),
            (
                serde_json::Value::Null,
                serde_json::json!({"host": host, "trafficPolicy": {"loadBalancer": {"simple": "MAGLEV"}}}),
                "DestinationRule default/reviews",
                "trafficPolicy.loadBalancer.simple",
                "MAGLEV",
            ),
            (
                serde_json::Value::Null,
                serde_json::json!({"host": host, "subsets": [{"name": "v1", "labels": {"v": "1"},
                    "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 0}}}}]}),
                "DestinationRule",
                "subsets[0].trafficPolicy.connectionPool.tcp.maxConnections",
                "positive",
            ),
        ] {
            let e = compile(&routes(vs, dr)).expect_err("refused");
            let Error::Config {
                resource: r,
                field: f,
                reason: why,
            } = &e
            else {
                panic!("not a config error: {e}");
            };
            assert!(r.contains(resource), "{e}: resource {resource}");
            assert_eq!(f, field, "{e}");
            assert!(why.contains(reason), "{e}: reason {reason}");
        }
    }

    #[test]
    fn compiles_policies_and_defaults() {
        let host = "reviews.default.svc.cluster.local";
        let mut r = routes(
            serde_json::Value::Null,
            serde_json::json!({"host": host,
                "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
                    "connectionPool": {"tcp": {"maxConnections": 3, "connectTimeout": "2s"}},
                    "outlierDetection": {"consecutive5xxErrors": 2, "baseEjectionTime": "1s"}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"},
                    "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "X-User"}}}}]}),
        );
        r.subsets.insert(
            "v1".into(),
            spar_xds::l7::Members {
                uids: vec!["uid-1".into()],
            },
        );
        let s = compile(&r).expect("compiles");
        assert_eq!(s.http.len(), 1, "a default route without a VirtualService");
        assert_eq!(s.http[0].retry.attempts, 2);
        assert_eq!(s.policy.balance, Balance::RoundRobin);
        assert_eq!(s.policy.limits.max_connections, Some(3));
        assert_eq!(s.policy.limits.connect_timeout, Duration::from_secs(2));
        let od = s.policy.outlier.as_ref().expect("outlier");
        assert_eq!(
            (od.consecutive_5xx, od.base_ejection),
            (Some(2), Duration::from_secs(1))
        );
        let v1 = s.policy_for(Some("v1"));
        assert!(
            matches!(&v1.balance, Balance::Hash(crate::l7::config::HashOn::Header(h)) if h == "x-user")
        );
        assert_eq!(
            v1.limits.max_connections,
            Some(3),
            "a subset inherits what it does not set"
        );
        assert!(s.subsets["v1"].members.contains("uid-1"));
        assert_eq!(s.policy_for(Some("v9")), &s.policy);
    }
}
