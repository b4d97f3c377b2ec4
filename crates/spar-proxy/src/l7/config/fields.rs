//! Compiling single fields, each failure an `Error::Config` naming the resource and the
//! field's path (`http[0].fault.abort.httpStatus`).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::Duration;

use http::HeaderName;
use regex::Regex;
use spar_model::duration::parse_duration;
use spar_model::istio::networking as n;

use super::{HeaderOps, HeaderRules, RetryOn, StringMatch, Target};
use crate::Error;

/// Where in which resource a field is.
#[derive(Clone)]
pub struct At<'a> {
    resource: &'a str,
    field: String,
}

impl<'a> At<'a> {
    pub fn new(resource: &'a str, field: impl Into<String>) -> At<'a> {
        At {
            resource,
            field: field.into(),
        }
    }

    /// A field below this one: `.name`, or `[i]` when `f` starts with `[`.
    pub fn sub(&self, f: impl Display) -> At<'a> {
        let f = f.to_string();
        let field = if self.field.is_empty() {
            f
        } else if f.starts_with('[') {
            format!("{}{f}", self.field)
        } else {
            format!("{}.{f}", self.field)
        };
        At {
            resource: self.resource,
            field,
        }
    }

    pub fn err(&self, why: impl Display) -> Error {
        Error::Config {
            resource: self.resource.to_string(),
            field: self.field.clone(),
            reason: why.to_string(),
        }
    }
}

pub fn string_match(m: &n::StringMatch, at: &At) -> Result<Option<StringMatch>, Error> {
    Ok(match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Some(StringMatch::Exact(e.clone())),
        (None, Some(p), None) => Some(StringMatch::Prefix(p.clone())),
        (None, None, Some(r)) => Some(StringMatch::Regex(
            // Anchored: Istio's regex (RE2) must match the whole value.
            Regex::new(&format!("^(?:{r})$")).map_err(|e| at.sub("regex").err(e))?,
        )),
        (None, None, None) => None,
        _ => return Err(at.err("set exactly one of exact, prefix, regex")),
    })
}

pub fn header_name(h: &str, at: &At) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|e| at.err(e))
}

pub fn port(p: u32, at: &At) -> Result<u16, Error> {
    u16::try_from(p).map_err(|_| at.err(format!("port {p} is out of range")))
}

pub fn duration(s: &str, at: &At) -> Result<Duration, Error> {
    parse_duration(s).map_err(|e| at.err(e))
}

/// A percentage from `percentage` or the legacy integer field; unset means every request
/// (Istio's tasks always give one).
pub fn percent(p: Option<&n::Percent>, legacy: Option<i64>, at: &At) -> Result<f64, Error> {
    let v = match (p, legacy) {
        (Some(p), _) => p.value,
        (None, Some(l)) => l as f64,
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&v) {
        return Err(at.err(format!("percentage {v} is not within 0..100")));
    }
    Ok(v)
}

fn header_ops(o: Option<&n::HeaderOperations>, at: &At) -> Result<HeaderOps, Error> {
    let Some(o) = o else {
        return Ok(HeaderOps::default());
    };
    let pairs = |m: &BTreeMap<String, String>, at: &At| {
        m.iter()
            .map(|(k, v)| {
                let at = at.sub(k);
                http::HeaderValue::from_str(v).map_err(|e| at.err(e))?;
                Ok((header_name(k, &at)?, v.clone()))
            })
            .collect::<Result<Vec<_>, Error>>()
    };
    Ok(HeaderOps {
        set: pairs(&o.set, &at.sub("set"))?,
        add: pairs(&o.add, &at.sub("add"))?,
        remove: o
            .remove
            .iter()
            .map(|h| header_name(h, &at.sub("remove")))
            .collect::<Result<_, _>>()?,
    })
}

pub fn header_rules(h: Option<&n::Headers>, at: &At) -> Result<HeaderRules, Error> {
    let at = at.sub("headers");
    Ok(HeaderRules {
        request: header_ops(h.and_then(|h| h.request.as_ref()), &at.sub("request"))?,
        response: header_ops(h.and_then(|h| h.response.as_ref()), &at.sub("response"))?,
    })
}

pub fn target(d: &n::Destination, at: &At) -> Result<Target, Error> {
    if d.host.is_empty() {
        return Err(at.sub("host").err("is empty"));
    }
    Ok(Target {
        host: d.host.clone(),
        subset: d.subset.clone().filter(|s| !s.is_empty()),
        port: d
            .port
            .as_ref()
            .map(|p| port(p.number, &at.sub("port")))
            .transpose()?,
    })
}

pub fn weight(w: Option<i64>, at: &At) -> Result<u32, Error> {
    match w {
        None => Ok(100),
        Some(w) => u32::try_from(w).map_err(|_| at.err(format!("weight {w} is negative"))),
    }
}

pub fn retry_on(s: &str, at: &At) -> Result<RetryOn, Error> {
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
                    .map_err(|_| at.err(format!("unknown retryOn condition {code:?}")))?;
                r.statuses.push(c);
            }
        }
    }
    Ok(r)
}

pub fn grpc_code(s: &str, at: &At) -> Result<u32, Error> {
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
        .ok_or_else(|| at.err(format!("unknown gRPC status {s:?}")))
}
