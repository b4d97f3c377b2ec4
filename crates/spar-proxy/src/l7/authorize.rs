//! Authentication and authorization of one request at its destination (sidecar inbound,
//! the waypoint, the ingress gateway), against the policies in force now, so a change applies
//! to the next request on an open connection:
//!
//! ```text
//! 1. authn   RequestAuthentication: a bad token is 401; a good one is the request principal
//! 2. custom  a matching CUSTOM policy asks its ext_authz provider (HTTP or gRPC)
//! 3. authz   DENY, then ALLOW: 403 `RBAC: access denied`
//! ```
//!
//! A connection relayed as TCP (a waypoint's TCP tunnel, an ingress gateway's SNI
//! passthrough) is authorized once, by `connection`: DENY and ALLOW only, as CUSTOM needs HTTP.
//!
//! The decisions are `security`'s pure functions; this module only gathers the facts and
//! makes the ext_authz call.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;

use super::Engine;
use super::body::{Body, full_body};
use super::plan::ClusterPlan;
use super::upstream::Dialer;
use crate::l4::plan::{Admitted, Upstream, principal};
use crate::proxy::{Pod, Proxy};
use crate::security::authz::{Decision, Facts, Http, Sni, evaluate};
use crate::security::ext_authz::{self, Checked, Kind, Provider};
use crate::security::jwt::{self, Outcome};
use crate::security::pattern::normalize_path;
use crate::snapshot::Snapshot;

/// A refused request: the answer, and what the access log says.
pub struct Refused {
    pub response: Response<Body>,
    pub flag: &'static str,
    pub detail: String,
}

/// Where the request came from and goes to.
pub struct Context<'a> {
    pub proxy: &'a Proxy,
    pub pod: &'a Pod,
    pub engine: &'a Engine,
    pub conn: &'a Admitted,
    /// The server name the client asked for (`connection.sni`): sent to an ingress gateway's
    /// listener, or unknowable on mesh traffic.
    pub sni: Sni<'a>,
}

/// Headers the ext_authz server asked to add to the response.
pub type ResponseHeaders = Vec<(HeaderName, HeaderValue)>;

fn refuse(status: StatusCode, body: &str, flag: &'static str, detail: String) -> Refused {
    let mut r = Response::new(full_body(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Refused {
        response: r,
        flag,
        detail,
    }
}

/// Decide the request whose head is `parts`; may change its headers (token stripped, JWT
/// output headers, ext_authz headers).
pub async fn authorize(
    cx: &Context<'_>,
    snap: &Snapshot,
    parts: &mut http::request::Parts,
) -> Result<ResponseHeaders, Refused> {
    let sec = &snap.security;
    if sec.is_empty() {
        return Ok(Vec::new());
    }
    // At a waypoint, Service-targeted policies cover requests for their services only.
    let service = cx.conn.http_service.as_ref().map(|k| k.as_str());
    // 1. authn
    let auth = if sec.jwt.is_empty() {
        None
    } else {
        match jwt::authenticate_for(&sec.jwt, service, &mut parts.headers, parts.uri.query()) {
            Outcome::Missing => None,
            Outcome::Valid(a) => Some(a),
            Outcome::Invalid(why) => {
                let detail = format!("jwt_authn_access_denied{{{why}}}");
                return Err(refuse(StatusCode::UNAUTHORIZED, &why, "-", detail));
            }
        }
    };
    // The facts, from the verified peer and the request head. The path is normalized
    // once, and the request goes on with that path, so the application serves exactly
    // the path the policies saw.
    let (peer_principal, namespace) = cx
        .conn
        .peer_identity
        .as_deref()
        .map(principal)
        .unwrap_or_default();
    let path = normalize_path(parts.uri.path());
    if path != parts.uri.path() {
        set_path(parts, &path);
    }
    // The authority as the router takes it (`facts::authority`: the URI's, else `Host`), so
    // a request whose absolute URI or `:authority` disagrees with its `Host` header is judged
    // on the host it is routed by.
    let host = super::facts::authority_of(&parts.uri, &parts.headers).to_string();
    let method = parts.method.clone();
    let judge = |headers: &http::HeaderMap| {
        let facts = Facts {
            source_ip: cx.conn.peer.ip(),
            remote_ip: cx.conn.peer.ip(),
            principal: peer_principal.as_deref(),
            namespace: namespace.as_deref(),
            dest_ip: cx.conn.target.ip(),
            dest_port: cx.conn.target.port(),
            sni: cx.sni,
            http: Some(Http {
                method: method.as_str(),
                path: &path,
                host: &host,
                headers,
                auth: auth.as_deref(),
            }),
        };
        evaluate(sec.authz.iter().filter(|p| p.covers(service)), &facts)
    };
    let mut verdict = judge(&parts.headers);
    for a in &verdict.audit {
        tracing::info!(target: "access", "audit policy={a} src={} method={} path={path}", cx.conn.peer, parts.method);
    }
    // 2. custom
    let mut downstream = Vec::new();
    if let Some((policy, provider)) = verdict.custom.clone() {
        let checked = match sec.providers.get(&provider) {
            Some(p) => check(cx, snap, p, parts, &host).await,
            None => {
                tracing::warn!(%policy, %provider, "CUSTOM policy names a provider the mesh config lacks; denying");
                Checked::Deny {
                    status: 403,
                    headers: Vec::new(),
                    body: String::new(),
                }
            }
        };
        match checked {
            Checked::Deny {
                status,
                headers,
                body,
            } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                let mut r = refuse(status, &body, "UAEX", format!("ext_authz_denied[{policy}]"));
                for (k, v) in headers {
                    r.response.headers_mut().insert(k, v);
                }
                return Err(r);
            }
            Checked::Allow {
                upstream,
                downstream: d,
                remove,
            } => {
                for h in remove {
                    parts.headers.remove(h);
                }
                for (k, v) in upstream {
                    parts.headers.insert(k, v);
                }
                downstream = d;
                // As in Envoy, DENY and ALLOW see the headers ext_authz set.
                verdict = judge(&parts.headers);
            }
        }
    }
    // 3. authz
    match verdict.decision {
        Decision::Allow => Ok(downstream),
        d => Err(refuse(
            StatusCode::FORBIDDEN,
            "RBAC: access denied",
            "-",
            d.detail(),
        )),
    }
}

/// Authorize a connection that is relayed as TCP (no request to read): `Err` says why it
/// is refused. A matching CUSTOM policy refuses it, as ext_authz checks HTTP requests only.
pub fn connection(snap: &Snapshot, conn: &Admitted, sni: Sni<'_>) -> Result<(), String> {
    let (principal_, namespace) = conn
        .peer_identity
        .as_deref()
        .map(principal)
        .unwrap_or_default();
    let service = conn.http_service.as_ref().map(|k| k.as_str());
    let facts = Facts {
        source_ip: conn.peer.ip(),
        remote_ip: conn.peer.ip(),
        principal: principal_.as_deref(),
        namespace: namespace.as_deref(),
        dest_ip: conn.target.ip(),
        dest_port: conn.target.port(),
        sni,
        http: None,
    };
    let v = evaluate(
        snap.security.authz.iter().filter(|p| p.covers(service)),
        &facts,
    );
    for a in &v.audit {
        tracing::info!(target: "access", "audit policy={a} src={} dst={}", conn.peer, conn.target);
    }
    match (&v.custom, &v.decision) {
        (Some((p, _)), _) => Err(format!(
            "CUSTOM policy {p} matches a TCP connection, which ext_authz over HTTP cannot check"
        )),
        (None, Decision::Deny { .. }) => Err(v.decision.detail()),
        (None, Decision::Allow) => Ok(()),
    }
}

/// Replace the path of `parts`, keeping its query.
fn set_path(parts: &mut http::request::Parts, path: &str) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut uri = parts.uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        uri.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
}

/// The most of an ext_authz answer read: a check server's denial body is short.
const CHECK_BODY_LIMIT: usize = 64 * 1024;

/// Ask `p` about a request.
async fn check(
    cx: &Context<'_>,
    snap: &Snapshot,
    p: &Provider,
    parts: &http::request::Parts,
    host: &str,
) -> Checked {
    let Some(service) = snap.service_by_host(&p.service) else {
        tracing::warn!(provider = %p.name, service = %p.service, "ext_authz service unknown");
        return ext_authz::on_error(p);
    };
    let plan = ClusterPlan {
        service: service.clone(),
        port: p.port,
        subset: None,
    };
    let eps = plan.endpoints();
    if eps.is_empty() {
        tracing::warn!(provider = %p.name, "ext_authz service has no endpoint");
        return ext_authz::on_error(p);
    }
    let (addr, ep) = eps[rand::random_range(0..eps.len())];
    let up = Upstream::to(&ep.workload, addr);
    let h2 = p.kind == Kind::Grpc;
    let cluster = cx.engine.cluster(&plan, h2);
    let dialer = Dialer {
        proxy: cx.proxy,
        pod: cx.pod,
        src: SocketAddr::new(cx.pod.ip, 0),
        connect_timeout: p.timeout.min(Duration::from_secs(10)),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|x| x.as_str())
        .unwrap_or("/");
    let req = match p.kind {
        Kind::Http => match ext_authz::http_request(p, &parts.method, pq, host, &parts.headers) {
            Ok(r) => r.map(|()| full_body(Bytes::new())),
            Err(_) => return ext_authz::on_error(p),
        },
        Kind::Grpc => {
            let id = parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let body = ext_authz::grpc_request(
                ext_authz::Peer {
                    addr: cx.conn.peer,
                    principal: cx.conn.peer_identity.as_deref().unwrap_or(""),
                },
                ext_authz::Peer {
                    addr: cx.conn.target,
                    principal: &cx.pod.identity,
                },
                id,
                &parts.method,
                pq,
                host,
                &parts.headers,
                &format!("{:?}", parts.version),
            );
            let uri = format!(
                "http://{}:{}/envoy.service.auth.v3.Authorization/Check",
                p.service, p.port
            );
            let Ok(mut r) = Request::builder()
                .method("POST")
                .uri(uri)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(full_body(body))
            else {
                return ext_authz::on_error(p);
            };
            *r.version_mut() = Version::HTTP_2;
            r
        }
    };
    let call = async {
        let resp = cluster.pool.send(&dialer, &up, req).await.ok()?;
        let (head, body) = resp.into_parts();
        let collected = http_body_util::Limited::new(body, CHECK_BODY_LIMIT)
            .collect()
            .await
            .ok()?;
        let trailers = collected.trailers().cloned();
        Some((head, trailers, collected.to_bytes()))
    };
    let Ok(Some((head, trailers, body))) = tokio::time::timeout(p.timeout, call).await else {
        tracing::warn!(provider = %p.name, "ext_authz call failed or timed out");
        return ext_authz::on_error(p);
    };
    match p.kind {
        Kind::Http => {
            let text = String::from_utf8_lossy(&body).into_owned();
            ext_authz::http_answer(p, head.status.as_u16(), &head.headers, text)
        }
        Kind::Grpc => {
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or(head.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0");
            if status != "0" || !head.status.is_success() {
                return ext_authz::on_error(p);
            }
            ext_authz::grpc_answer(p, &body)
        }
    }
}
