//! One VirtualService `http` route: matches, action (forward by weight, redirect, direct
//! response), rewrite, timeout, retries, fault injection, mirrors and header operations.

use std::collections::BTreeMap;

use regex::Regex;
use spar_model::istio::networking as n;

use super::fields::{
    At, duration, grpc_code, header_name, header_rules, percent, port, retry_on, string_match,
    target, weight,
};
use super::{Action, Fault, Match, Mirror, Retry, RetryOn, Rewrite, Route, WeightedTarget};
use crate::Error;

/// Istio's retry default: two retries on connection failures and 503.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,503";

pub fn default_retry() -> Retry {
    Retry {
        attempts: 2,
        per_try_timeout: None,
        on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            statuses: vec![503],
            ..RetryOn::default()
        },
    }
}

fn matches(r: &n::HttpRoute, at: &At) -> Result<Vec<Match>, Error> {
    r.matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = at.sub(format!("match[{i}]"));
            let opt = |s: &Option<n::StringMatch>, f: &str| {
                s.as_ref()
                    .map(|s| string_match(s, &at.sub(f)))
                    .transpose()
                    .map(Option::flatten)
            };
            let hdrs = |m: &BTreeMap<String, n::StringMatch>, f: &str| {
                let mut out = Vec::new();
                for (k, v) in m {
                    let at = at.sub(f).sub(k);
                    if let Some(v) = string_match(v, &at)? {
                        out.push((header_name(k, &at)?, v));
                    }
                }
                Ok::<_, Error>(out)
            };
            let mut query = Vec::new();
            for (k, v) in &m.query_params {
                if let Some(v) = string_match(v, &at.sub("queryParams").sub(k))? {
                    query.push((k.clone(), v));
                }
            }
            Ok(Match {
                uri: opt(&m.uri, "uri")?,
                scheme: opt(&m.scheme, "scheme")?,
                method: opt(&m.method, "method")?,
                authority: opt(&m.authority, "authority")?,
                headers: hdrs(&m.headers, "headers")?,
                without_headers: hdrs(&m.without_headers, "withoutHeaders")?,
                query,
                port: m.port.map(|p| port(p, &at.sub("port"))).transpose()?,
                ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
            })
        })
        .collect()
}

fn action(r: &n::HttpRoute, at: &At) -> Result<Action, Error> {
    if let Some(rd) = &r.redirect {
        let at = at.sub("redirect");
        return Ok(Action::Redirect {
            uri: rd.uri.clone(),
            authority: rd.authority.clone(),
            port: rd.port.map(|p| port(p, &at.sub("port"))).transpose()?,
            scheme: rd.scheme.clone(),
            code: match rd.redirect_code {
                None => 301,
                Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
                Some(c) => {
                    return Err(at
                        .sub("redirectCode")
                        .err(format!("redirectCode {c} is not a redirect")));
                }
            },
        });
    }
    if let Some(d) = &r.direct_response {
        let at = at.sub("directResponse");
        return Ok(Action::Direct {
            status: u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    at.sub("status")
                        .err(format!("directResponse status {}", d.status))
                })?,
            body: d
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .unwrap_or_default(),
        });
    }
    if r.route.is_empty() {
        return Err(at.err("has no route, redirect or directResponse"));
    }
    let targets = r
        .route
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let at = at.sub(format!("route[{i}]"));
            Ok(WeightedTarget {
                target: target(&d.destination, &at.sub("destination"))?,
                weight: weight(d.weight, &at.sub("weight"))?,
                headers: header_rules(d.headers.as_ref(), &at)?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Action::Forward(targets))
}

fn rewrite(r: &n::HttpRoute, at: &At) -> Result<Option<Rewrite>, Error> {
    let Some(rw) = &r.rewrite else {
        return Ok(None);
    };
    let at = at.sub("rewrite");
    Ok(match (&rw.uri, &rw.uri_regex_rewrite) {
        (Some(u), None) => Some(Rewrite::Uri(u.clone())),
        (None, Some(rr)) => Some(Rewrite::Regex(
            Regex::new(&rr.matches).map_err(|e| at.sub("uriRegexRewrite.match").err(e))?,
            rr.rewrite.clone(),
        )),
        (None, None) => None,
        _ => return Err(at.err("sets both uri and uriRegexRewrite")),
    })
}

fn retries(r: &n::HttpRoute, at: &At) -> Result<Retry, Error> {
    let Some(rt) = &r.retries else {
        return Ok(default_retry());
    };
    let at = at.sub("retries");
    Ok(Retry {
        attempts: u32::try_from(rt.attempts).unwrap_or(0),
        per_try_timeout: rt
            .per_try_timeout
            .as_deref()
            .map(|d| duration(d, &at.sub("perTryTimeout")))
            .transpose()?,
        on: retry_on(
            rt.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON),
            &at.sub("retryOn"),
        )?,
    })
}

fn fault(r: &n::HttpRoute, at: &At) -> Result<Option<Fault>, Error> {
    let Some(f) = &r.fault else {
        return Ok(None);
    };
    let at = at.sub("fault");
    let delay = match &f.delay {
        Some(d) => {
            let at = at.sub("delay");
            if d.exponential_delay.is_some() {
                return Err(at.sub("exponentialDelay").err("is not supported"));
            }
            let fixed = d
                .fixed_delay
                .as_deref()
                .ok_or_else(|| at.err("needs fixedDelay"))?;
            Some((
                duration(fixed, &at.sub("fixedDelay"))?,
                percent(d.percentage.as_ref(), d.percent, &at.sub("percentage"))?,
            ))
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let at = at.sub("abort");
            let pct = percent(a.percentage.as_ref(), None, &at.sub("percentage"))?;
            match (&a.http_status, &a.grpc_status) {
                (Some(s), None) => Some((
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            at.sub("httpStatus")
                                .err(format!("abort httpStatus {s} is not an HTTP status"))
                        })?,
                    None,
                    pct,
                )),
                (None, Some(g)) => Some((200, Some(grpc_code(g, &at.sub("grpcStatus"))?), pct)),
                _ => return Err(at.err("needs httpStatus or grpcStatus")),
            }
        }
        None => None,
    };
    Ok(Some(Fault { delay, abort }))
}

fn mirrors(r: &n::HttpRoute, at: &At) -> Result<Vec<Mirror>, Error> {
    let mut out = Vec::new();
    if let Some(m) = &r.mirror {
        let pct = match (&r.mirror_percentage, r.mirror_percent) {
            (None, None) => 100.0,
            (p, l) => percent(p.as_ref(), l.map(i64::from), &at.sub("mirrorPercentage"))?,
        };
        out.push(Mirror {
            target: target(m, &at.sub("mirror"))?,
            percent: pct,
        });
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let at = at.sub(format!("mirrors[{i}]"));
        out.push(Mirror {
            target: target(&m.destination, &at.sub("destination"))?,
            percent: percent(m.percentage.as_ref(), None, &at.sub("percentage"))?,
        });
    }
    Ok(out)
}

/// Compile the `i`th route; `at` is its place (`http[i]`).
pub fn route(r: &n::HttpRoute, i: usize, at: &At) -> Result<Route, Error> {
    if r.delegate.is_some() {
        return Err(at.sub("delegate").err("is not supported"));
    }
    if r.cors_policy.is_some() {
        return Err(at.sub("corsPolicy").err("is not supported yet"));
    }
    Ok(Route {
        name: r.name.clone().unwrap_or_else(|| format!("http[{i}]")),
        matches: matches(r, at)?,
        action: action(r, at)?,
        rewrite_authority: r.rewrite.as_ref().and_then(|r| r.authority.clone()),
        rewrite: rewrite(r, at)?,
        timeout: r
            .timeout
            .as_deref()
            .map(|d| duration(d, &at.sub("timeout")))
            .transpose()?
            .filter(|d| !d.is_zero()),
        retry: retries(r, at)?,
        fault: fault(r, at)?,
        mirrors: mirrors(r, at)?,
        headers: header_rules(r.headers.as_ref(), at)?,
    })
}
