//! A DestinationRule traffic policy: load balancing, connection pool limits (the circuit
//! breaker) and outlier detection, each subset's policy over the service's.

use std::time::Duration;

use spar_model::istio::networking as n;

use super::fields::{At, duration, header_name};
use super::{Balance, HashOn, Outlier, Policy};
use crate::Error;

fn balance(lb: &n::LoadBalancerSettings, current: &Balance, at: &At) -> Result<Balance, Error> {
    Ok(match (&lb.simple, &lb.consistent_hash) {
        (Some(s), None) => match s.as_str() {
            "ROUND_ROBIN" => Balance::RoundRobin,
            "LEAST_REQUEST" | "LEAST_CONN" => Balance::LeastRequest,
            "RANDOM" => Balance::Random,
            "UNSPECIFIED" => Balance::PeakEwma,
            other => return Err(at.sub("simple").err(format!("{other} is not supported"))),
        },
        (None, Some(h)) => {
            let at = at.sub("consistentHash");
            Balance::Hash(
                match (
                    &h.http_header_name,
                    &h.http_cookie,
                    h.use_source_ip,
                    &h.http_query_parameter_name,
                ) {
                    (Some(hn), None, None | Some(false), None) => {
                        HashOn::Header(header_name(hn, &at.sub("httpHeaderName"))?)
                    }
                    (None, Some(c), None | Some(false), None) => HashOn::Cookie(c.name.clone()),
                    (None, None, Some(true), None) => HashOn::SourceIp,
                    (None, None, None | Some(false), Some(q)) => HashOn::Query(q.clone()),
                    _ => return Err(at.err("needs exactly one hash key")),
                },
            )
        }
        (None, None) => current.clone(),
        _ => return Err(at.err("sets both simple and consistentHash")),
    })
}

/// `tp` over `base`; unset fields keep `base`'s value.
pub fn policy(tp: Option<&n::TrafficPolicy>, base: &Policy, at: &At) -> Result<Policy, Error> {
    let Some(tp) = tp else {
        return Ok(base.clone());
    };
    let at = at.sub("trafficPolicy");
    if !tp.port_level_settings.is_empty() {
        return Err(at.sub("portLevelSettings").err("is not supported yet"));
    }
    let mut p = base.clone();
    if let Some(lb) = &tp.load_balancer {
        p.balance = balance(lb, &p.balance, &at.sub("loadBalancer"))?;
    }
    if let Some(cp) = &tp.connection_pool {
        let at = at.sub("connectionPool");
        let cap = |v: Option<i64>, at: At| -> Result<Option<usize>, Error> {
            v.map(|v| {
                usize::try_from(v)
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| at.err("must be positive"))
            })
            .transpose()
        };
        if let Some(t) = &cp.tcp {
            let at = at.sub("tcp");
            p.limits.max_connections =
                cap(t.max_connections, at.sub("maxConnections"))?.or(p.limits.max_connections);
            if let Some(ct) = &t.connect_timeout {
                p.limits.connect_timeout = duration(ct, &at.sub("connectTimeout"))?;
            }
        }
        if let Some(h) = &cp.http {
            let at = at.sub("http");
            p.limits.max_pending = cap(
                h.http1_max_pending_requests,
                at.sub("http1MaxPendingRequests"),
            )?
            .or(p.limits.max_pending);
            p.limits.http2_max_requests = cap(h.http2_max_requests, at.sub("http2MaxRequests"))?
                .or(p.limits.http2_max_requests);
            p.limits.max_requests_per_connection = cap(
                h.max_requests_per_connection,
                at.sub("maxRequestsPerConnection"),
            )?
            .or(p.limits.max_requests_per_connection);
            p.limits.max_retries =
                cap(h.max_retries, at.sub("maxRetries"))?.or(p.limits.max_retries);
        }
    }
    if let Some(od) = &tp.outlier_detection {
        let at = at.sub("outlierDetection");
        let c5 = od.consecutive5xx_errors.or(od.consecutive_errors);
        let time = |v: &Option<String>, f: &str, default: u64| {
            v.as_deref()
                .map(|d| duration(d, &at.sub(f)))
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        p.outlier = Some(Outlier {
            // Istio's default when outlierDetection is present: 5 consecutive 5xx.
            consecutive_5xx: match (c5, od.consecutive_gateway_errors) {
                (None, None) => Some(5),
                (c, _) => c.filter(|c| *c > 0),
            },
            consecutive_gateway: od.consecutive_gateway_errors.filter(|c| *c > 0),
            interval: time(&od.interval, "interval", 10)?,
            base_ejection: time(&od.base_ejection_time, "baseEjectionTime", 30)?,
            max_ejection_percent: od
                .max_ejection_percent
                .map(|v| v.clamp(0, 100) as u32)
                .unwrap_or(10),
        });
    }
    Ok(p)
}
