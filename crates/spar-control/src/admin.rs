//! The admin API (local only): health, config dumps, apply/delete, token minting.
//! Every failure becomes a JSON answer here, in one place.
//!
//! It mints tokens and changes the mesh, so every call carries the bearer token `spar
//! control` writes owner-only to `<state>/admin-token` (kept across restarts); a request
//! whose `Host` is a name other than localhost is refused (DNS rebinding), and a POST must
//! say its body is JSON or YAML (a cross-site form or `text/plain` POST never gets in).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use spar_identity::{Subject, TokenIssuer};

use crate::config::ConfigState;
use crate::xds_server::{Proxies, lock_proxies};

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<ConfigState>,
    pub proxies: Proxies,
    pub tokens: Arc<TokenIssuer>,
    pub root_pem: String,
    /// The bearer token every call must carry.
    pub admin_token: Arc<str>,
}

/// Who may call, before any handler runs.
async fn guard(
    State(s): State<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let refuse =
        |code: StatusCode, why: &str| (code, Json(json!({ "error": why }))).into_response();
    let h = req.headers();
    let host = h
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !local_host(host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the admin API answers only to localhost, spar or an IP address",
        );
    }
    let presented = h
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(presented.trim().as_bytes(), s.admin_token.as_bytes()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` with the token in <state>/admin-token",
        );
    }
    if req.method() == axum::http::Method::POST {
        let ct = h
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !["application/json", "application/yaml", "application/x-yaml"].contains(&essence) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "POST a body of Content-Type application/json or application/yaml",
            );
        }
    }
    next.run(req).await
}

/// A `Host` a local caller uses: an IP address, `localhost` or `spar`, with any port.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || name == "spar"
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: AdminState) -> Router {
    let guarded = axum::middleware::from_fn_with_state(state.clone(), guard);
    Router::new()
        .route("/healthz/ready", get(|| async { "ok\n" }))
        .route("/debug/registry", get(registry))
        .route("/debug/proxies", get(proxies))
        .route("/debug/status", get(status))
        .route(
            "/root-cert.pem",
            get(|State(s): State<AdminState>| async move { s.root_pem }),
        )
        .route("/apply", post(apply))
        .route("/delete", post(delete))
        .route("/token", post(token))
        .layer(guarded)
        .with_state(state)
}

async fn registry(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let snap = s.config.current();
    let items: Vec<_> = snap.registry.resources().map(|r| r.to_value()).collect();
    Json(json!({ "generation": snap.generation, "items": items }))
}

/// Connected proxies with what each was sent, rendered now from the snapshot it holds.
async fn proxies(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let list: Vec<_> = lock_proxies(&s.proxies).values().cloned().collect();
    let list: Vec<serde_json::Value> = list
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("sent".into(), json!(p.sent()));
            }
            v
        })
        .collect();
    Json(json!({ "proxies": list }))
}

/// Connected proxies (without their config), NACKs and rejected config changes.
async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let proxies: Vec<_> = lock_proxies(&s.proxies)
        .values()
        .map(|p| json!({ "stream": p.stream, "node_id": p.node_id, "subject": p.subject, "view": p.view, "types": p.types }))
        .collect();
    let rejected: Vec<String> = s
        .config
        .dir_problems()
        .iter()
        .map(|p| p.to_string())
        .collect();
    let jwks: Vec<String> = s
        .config
        .jwks
        .problems()
        .into_iter()
        .map(|(uri, why)| format!("jwksUri {uri}: {why} (the last good keys stay in force)"))
        .collect();
    let snap = s.config.current();
    // What the mesh holds but Spar does not act on, said by name for as long as it is there.
    let warnings: Vec<String> = snap
        .registry
        .resources()
        .flat_map(|r| {
            spar_model::validate::validate(r)
                .into_iter()
                .filter(|i| i.severity == spar_model::Severity::Warning)
                .map(move |i| format!("{}: {}: {}", r.key(), i.path, i.message))
        })
        .collect();
    Json(
        json!({ "generation": snap.generation, "proxies": proxies, "rejected_config": rejected, "jwks_errors": jwks, "warnings": warnings }),
    )
}

#[derive(Deserialize)]
struct SourceQuery {
    source: Option<String>,
    /// Namespace for resources that name none.
    namespace: Option<String>,
}

async fn apply(
    State(s): State<AdminState>,
    Query(q): Query<SourceQuery>,
    body: String,
) -> Response {
    let source = q.source.unwrap_or_else(|| "request".into());
    match s.config.apply(&source, &body, q.namespace.as_deref()) {
        Ok(done) => {
            let applied: Vec<&String> = done.iter().map(|(k, _)| k).collect();
            let warnings: Vec<String> = done
                .iter()
                .flat_map(|(_, w)| w.iter().map(|p| p.to_string()))
                .collect();
            (
                StatusCode::OK,
                Json(json!({ "applied": applied, "warnings": warnings })),
            )
                .into_response()
        }
        Err(problems) => bad_request(problems),
    }
}

async fn delete(
    State(s): State<AdminState>,
    Query(q): Query<SourceQuery>,
    body: String,
) -> Response {
    let source = q.source.unwrap_or_else(|| "request".into());
    match s.config.delete(&source, &body, q.namespace.as_deref()) {
        Ok(done) => (StatusCode::OK, Json(json!({ "deleted": done }))).into_response(),
        Err(problems) => bad_request(problems),
    }
}

fn bad_request(problems: Vec<spar_model::Problem>) -> Response {
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    (StatusCode::BAD_REQUEST, Json(json!({ "problems": text }))).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(flatten)]
    subject: Subject,
    ttl_seconds: Option<u64>,
}

/// Mint a token for a pod or node proxy (the cluster in a box hands these out like
/// Kubernetes hands out service-account tokens). Local admin port only.
async fn token(State(s): State<AdminState>, Json(req): Json<TokenRequest>) -> Response {
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(24 * 3600));
    match s.tokens.mint(req.subject, ttl) {
        Ok(t) => (StatusCode::OK, Json(json!({ "token": t }))).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "problems": [e.to_string()] })),
        )
            .into_response(),
    }
}
