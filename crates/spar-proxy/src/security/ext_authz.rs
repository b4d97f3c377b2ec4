//! CUSTOM policies' external authorization, as Istio configures it in MeshConfig
//! `extensionProviders`: `envoyExtAuthzHttp` (the request's method and path, `pathPrefix`
//! first, its Host and the listed headers, an empty body; 200 allows, any other status
//! denies with the server's status, body and headers; 5xx or no answer is `statusOnError`
//! unless `failOpen`) and `envoyExtAuthzGrpc` (Envoy's `Authorization/Check`). What is built
//! and how an answer is read are pure; `l7::authorize` makes the call.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use prost::Message;
use serde::Deserialize;
use spar_xds::ext_authz as xa;

use super::pattern::Pattern;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Http,
    Grpc,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    /// The service's host name (`ext-authz.foo.svc.cluster.local`).
    pub service: String,
    pub port: u16,
    pub timeout: Duration,
    pub fail_open: bool,
    pub status_on_error: u16,
    pub path_prefix: String,
    pub include_headers: Vec<Pattern>,
    pub additional_headers: Vec<(HeaderName, String)>,
    pub to_upstream_on_allow: Vec<Pattern>,
    pub to_downstream_on_allow: Vec<Pattern>,
    pub to_downstream_on_deny: Vec<Pattern>,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    Allow {
        /// Headers to set on the request sent on.
        upstream: Vec<(HeaderName, HeaderValue)>,
        /// Headers to add to the response the client gets.
        downstream: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    },
    Deny {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: String,
    },
}

/// A port given as a number or a string (`"9000"`), as MeshConfig allows.
#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    N(u32),
    S(String),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct HttpSpec {
    service: String,
    port: Option<Port>,
    timeout: Option<String>,
    path_prefix: Option<String>,
    fail_open: bool,
    status_on_error: Option<String>,
    include_request_headers_in_check: Vec<String>,
    include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    headers_to_upstream_on_allow: Vec<String>,
    headers_to_downstream_on_allow: Vec<String>,
    headers_to_downstream_on_deny: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderSpec {
    name: String,
    envoy_ext_authz_http: Option<HttpSpec>,
    envoy_ext_authz_grpc: Option<HttpSpec>,
}

/// Compile a MeshConfig `extensionProviders` entry (JSON).
pub fn compile(json: &str) -> Result<Provider, Error> {
    let bad = |field: &str, reason: String| Error::Config {
        resource: "MeshConfig extensionProviders".into(),
        field: field.into(),
        reason,
    };
    let p: ProviderSpec =
        serde_json::from_str(json).map_err(|e| bad("extensionProviders[]", e.to_string()))?;
    let (kind, s) = match (p.envoy_ext_authz_http, p.envoy_ext_authz_grpc) {
        (Some(h), None) => (Kind::Http, h),
        (None, Some(g)) => (Kind::Grpc, g),
        _ => {
            return Err(bad(
                &p.name,
                "set one of envoyExtAuthzHttp, envoyExtAuthzGrpc".into(),
            ));
        }
    };
    let port = match &s.port {
        Some(Port::N(n)) => u16::try_from(*n).ok(),
        Some(Port::S(t)) => t.parse().ok(),
        None => None,
    }
    .filter(|p| *p > 0)
    .ok_or_else(|| {
        bad(
            &format!("{}.port", p.name),
            "a port number is required".into(),
        )
    })?;
    let timeout = match &s.timeout {
        Some(t) => spar_model::duration::parse_duration(t)
            .map_err(|e| bad(&format!("{}.timeout", p.name), e))?,
        None => Duration::from_secs(600),
    };
    let status_on_error = match &s.status_on_error {
        Some(t) => t
            .parse::<u16>()
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| {
                bad(
                    &format!("{}.statusOnError", p.name),
                    format!("{t:?} is not an HTTP status"),
                )
            })?,
        None => 403,
    };
    let pats = |v: &[String]| {
        v.iter()
            .map(|h| Pattern::parse(&h.to_ascii_lowercase()))
            .collect()
    };
    let additional_headers = s
        .include_additional_headers_in_check
        .iter()
        .map(|(k, v)| {
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map(|n| (n, v.clone()))
                .map_err(|_| {
                    bad(
                        &format!("{}.includeAdditionalHeadersInCheck", p.name),
                        format!("{k:?}"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    if s.service.is_empty() {
        return Err(bad(&format!("{}.service", p.name), "is required".into()));
    }
    Ok(Provider {
        name: p.name,
        kind,
        service: s.service,
        port,
        timeout,
        fail_open: s.fail_open,
        status_on_error,
        path_prefix: s.path_prefix.unwrap_or_default(),
        include_headers: pats(&s.include_request_headers_in_check),
        additional_headers,
        to_upstream_on_allow: pats(&s.headers_to_upstream_on_allow),
        to_downstream_on_allow: pats(&s.headers_to_downstream_on_allow),
        to_downstream_on_deny: pats(&s.headers_to_downstream_on_deny),
    })
}

fn listed(list: &[Pattern], name: &HeaderName) -> bool {
    list.iter().any(|p| p.matches(Some(name.as_str())))
}

/// The HTTP check request for a request with this head (its body is not sent).
pub fn http_request(
    p: &Provider,
    method: &Method,
    path_and_query: &str,
    host: &str,
    headers: &HeaderMap,
) -> Result<Request<()>, Error> {
    let uri = format!("{}{path_and_query}", p.path_prefix);
    let mut r = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(())
        .map_err(|e| Error::Downstream(format!("ext_authz request: {e}")))?;
    let h = r.headers_mut();
    for (k, v) in headers {
        if listed(&p.include_headers, k) {
            h.append(k.clone(), v.clone());
        }
    }
    for (k, v) in &p.additional_headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k.clone(), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(http::header::HOST, v);
    }
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(r)
}

/// What the HTTP check's answer means.
pub fn http_answer(p: &Provider, status: u16, headers: &HeaderMap, body: String) -> Checked {
    if (500..600).contains(&status) {
        return on_error(p);
    }
    let pick = |list: &[Pattern], all_if_empty: bool| {
        headers
            .iter()
            .filter(|(k, _)| {
                (all_if_empty
                    && list.is_empty()
                    && *k != http::header::HOST
                    && *k != http::header::CONTENT_LENGTH)
                    || listed(list, k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    if status == 200 {
        Checked::Allow {
            upstream: pick(&p.to_upstream_on_allow, false),
            downstream: pick(&p.to_downstream_on_allow, false),
            remove: Vec::new(),
        }
    } else {
        Checked::Deny {
            status,
            headers: pick(&p.to_downstream_on_deny, true),
            body,
        }
    }
}

/// No answer, or a 5xx: `statusOnError`, or allowed when `failOpen`.
pub fn on_error(p: &Provider) -> Checked {
    if p.fail_open {
        Checked::Allow {
            upstream: Vec::new(),
            downstream: Vec::new(),
            remove: Vec::new(),
        }
    } else {
        Checked::Deny {
            status: p.status_on_error,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// What the gRPC check is told about one side.
pub struct Peer<'a> {
    pub addr: std::net::SocketAddr,
    pub principal: &'a str,
}

/// The gRPC check request, framed for the wire (`Check` takes one message).
#[allow(clippy::too_many_arguments)]
pub fn grpc_request(
    source: Peer<'_>,
    destination: Peer<'_>,
    id: &str,
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    protocol: &str,
) -> Vec<u8> {
    let peer = |p: &Peer<'_>| xa::attribute_context::Peer {
        address: Some(xa::Address {
            address: Some(xa::address::Address::SocketAddress(xa::SocketAddress {
                protocol: 0,
                address: p.addr.ip().to_string(),
                port_specifier: Some(xa::socket_address::PortSpecifier::PortValue(u32::from(
                    p.addr.port(),
                ))),
            })),
        }),
        principal: p.principal.to_string(),
        ..Default::default()
    };
    // Envoy's `path` is the request target (with the query); `query` repeats the query.
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let req = xa::CheckRequest {
        attributes: Some(xa::AttributeContext {
            source: Some(peer(&source)),
            destination: Some(peer(&destination)),
            request: Some(xa::attribute_context::Request {
                http: Some(xa::attribute_context::HttpRequest {
                    id: id.to_string(),
                    method: method.to_string(),
                    headers: headers
                        .iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                        .collect(),
                    path: path.to_string(),
                    host: host.to_string(),
                    scheme: "http".into(),
                    query: query.to_string(),
                    protocol: protocol.to_string(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    let msg = req.encode_to_vec();
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

fn header_list(list: &[xa::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let v = if h.value.is_empty() && !h.raw_value.is_empty() {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            } else {
                HeaderValue::from_str(&h.value).ok()?
            };
            Some((
                HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?,
                v,
            ))
        })
        .collect()
}

/// What the gRPC check's answer (one framed message) means.
pub fn grpc_answer(p: &Provider, framed: &[u8]) -> Checked {
    let Some(msg) = framed.get(5..) else {
        return on_error(p);
    };
    let Ok(resp) = xa::CheckResponse::decode(msg) else {
        return on_error(p);
    };
    let ok = resp.status.as_ref().is_none_or(|s| s.code == 0);
    match (ok, resp.http_response) {
        (true, Some(xa::check_response::HttpResponse::OkResponse(o))) => Checked::Allow {
            upstream: header_list(&o.headers),
            downstream: header_list(&o.response_headers_to_add),
            remove: o
                .headers_to_remove
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
                .collect(),
        },
        (true, _) => Checked::Allow {
            upstream: Vec::new(),
            downstream: Vec::new(),
            remove: Vec::new(),
        },
        (false, Some(xa::check_response::HttpResponse::DeniedResponse(d))) => Checked::Deny {
            status: d
                .status
                .map(|s| s.code)
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| (100..600).contains(c))
                .unwrap_or(403),
            headers: header_list(&d.headers),
            body: d.body,
        },
        (false, _) => Checked::Deny {
            status: 403,
            headers: Vec::new(),
            body: String::new(),
        },
    }
}

#[cfg(test)]
mod tests;
