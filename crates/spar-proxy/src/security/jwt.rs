//! RequestAuthentication: find a JWT where the rules say (by default `Authorization: Bearer`
//! and the `access_token` query parameter), verify it against its issuer's keys (RS*, PS*,
//! ES*), and turn it into the request principal `iss/sub` and claims for authorization.
//! As in Istio: a request without a token passes (without a request principal, so policies
//! decide); a token that fails verification gets 401. The token is stripped unless
//! `forwardOriginalToken`; `outputPayloadToHeader` and `outputClaimToHeaders` are set from
//! the verified token only (a client's own copies of those headers are removed first).

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use spar_model::istio::security as sec;

use super::authz::RequestAuth;
use crate::Error;

/// Where a token may be.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Clone)]
pub struct Rule {
    /// The RequestAuthentication `namespace/name`.
    pub policy: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    keys: Vec<(Jwk, DecodingKey)>,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub payload_header: Option<HeaderName>,
    pub claim_headers: Vec<(HeaderName, String)>,
    /// At a waypoint, the services a Service-targeted rule covers; empty: all.
    pub services: Vec<String>,
    /// Tokens this rule verified, until they expire: a client sends the same token on every
    /// request, and a signature check costs more than the rest of the request's
    /// authorization (Envoy keeps such a cache too). The key is the whole token, signature
    /// included, so only the very token that verified is found. A new config brings new
    /// rules, and so an empty cache.
    cache: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Verified>>>,
}

#[derive(Clone)]
struct Verified {
    /// What the token says, built once when it verified.
    auth: std::sync::Arc<RequestAuth>,
    /// `exp`, in seconds since the epoch.
    expires: Option<u64>,
}

/// Verified tokens kept per rule; when full, the cache starts over.
const CACHE_SIZE: usize = 1024;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Rule {
    fn cached(&self, token: &str) -> Option<std::sync::Arc<RequestAuth>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let v = cache.get(token)?;
        v.expires
            .is_none_or(|exp| now_secs() < exp)
            .then(|| v.auth.clone())
    }

    fn remember(&self, token: &str, auth: &std::sync::Arc<RequestAuth>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE {
            cache.clear();
        }
        cache.insert(
            token.to_string(),
            Verified {
                auth: auth.clone(),
                expires: auth.claims.get("exp").and_then(|e| e.as_u64()),
            },
        );
    }
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("policy", &self.policy)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// What authentication concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No token anywhere the rules look.
    Missing,
    Valid(std::sync::Arc<RequestAuth>),
    /// A token that did not verify: the 401 body says why.
    Invalid(String),
}

fn header_name(at: &str, resource: &str, h: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| Error::Config {
        resource: resource.into(),
        field: at.into(),
        reason: format!("{h:?} is not a header name"),
    })
}

fn default_locations() -> Vec<Location> {
    vec![
        Location::Header {
            name: header::AUTHORIZATION,
            prefix: "Bearer ".into(),
        },
        Location::Param("access_token".into()),
    ]
}

/// Compile a RequestAuthentication `namespace/name` with the keys of each issuer.
pub fn compile(
    name: &str,
    spec: &sec::RequestAuthentication,
    jwks: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Rule>, Error> {
    let resource = format!("RequestAuthentication {name}");
    let mut rules = Vec::new();
    for (i, r) in spec.jwt_rules.iter().enumerate() {
        let at = |f: &str| format!("spec.jwtRules[{i}].{f}");
        let bad = |field: String, reason: String| Error::Config {
            resource: resource.clone(),
            field,
            reason,
        };
        if r.issuer.is_empty() {
            return Err(bad(at("issuer"), "an issuer is required".into()));
        }
        // No keys (a jwksUri not fetched yet): tokens of this issuer fail until they arrive.
        let keys = match jwks.get(&r.issuer) {
            Some(text) => {
                let set: JwkSet = serde_json::from_str(text)
                    .map_err(|e| bad(at("jwks"), format!("not a JWKS: {e}")))?;
                set.keys
                    .into_iter()
                    .filter_map(|k| DecodingKey::from_jwk(&k).ok().map(|d| (k, d)))
                    .collect()
            }
            None => Vec::new(),
        };
        let mut locations = Vec::new();
        for (j, h) in r.from_headers.iter().enumerate() {
            locations.push(Location::Header {
                name: header_name(&at(&format!("fromHeaders[{j}].name")), &resource, &h.name)?,
                prefix: h.prefix.clone().unwrap_or_default(),
            });
        }
        locations.extend(r.from_params.iter().cloned().map(Location::Param));
        locations.extend(r.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            locations = default_locations();
        }
        rules.push(Rule {
            policy: name.to_string(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            keys,
            locations,
            forward: r.forward_original_token.unwrap_or(false),
            payload_header: r
                .output_payload_to_header
                .as_deref()
                .map(|h| header_name(&at("outputPayloadToHeader"), &resource, h))
                .transpose()?,
            claim_headers: r
                .output_claim_to_headers
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    Ok((
                        header_name(
                            &at(&format!("outputClaimToHeaders[{j}].header")),
                            &resource,
                            &c.header,
                        )?,
                        c.claim.clone(),
                    ))
                })
                .collect::<Result<_, Error>>()?,
            services: Vec::new(),
            cache: Default::default(),
        });
    }
    Ok(rules)
}

/// The token at `loc`, if the request carries one there.
fn find(loc: &Location, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match loc {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let t = if prefix.is_empty() {
                v
            } else if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix) {
                &v[prefix.len()..]
            } else {
                return None;
            };
            let t = t.trim();
            (!t.is_empty()).then(|| t.to_string())
        }),
        Location::Param(p) => query?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == p && !v.is_empty()).then(|| v.to_string())
        }),
        Location::Cookie(c) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == c && !v.is_empty()).then(|| v.to_string())
            }),
    }
}

fn string_list(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Verify `token` against `rule`'s keys.
fn verify(rule: &Rule, token: &str) -> Result<serde_json::Value, String> {
    if token.split('.').count() != 3 {
        // Envoy's words, so users' scripts still match.
        return Err(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
                .into(),
        );
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| "Jwt verification fails".to_string())?;
    let candidates: Vec<&(Jwk, DecodingKey)> = match &header.kid {
        Some(kid) => rule
            .keys
            .iter()
            .filter(|(k, _)| k.common.key_id.as_deref() == Some(kid.as_str()))
            .collect(),
        None => rule.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err("Jwks doesn't have key to match kid or alg from Jwt".into());
    }
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        // Public JWKS never hold shared secrets; an HS* token is a forgery attempt.
        return Err("Jwt verification fails".into());
    }
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&rule.issuer]);
    v.validate_nbf = true;
    // As Envoy: a token without `exp` does not expire (it is checked when present).
    v.required_spec_claims.remove("exp");
    if rule.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&rule.audiences);
        v.required_spec_claims.insert("aud".into());
    }
    let mut last = String::from("Jwt verification fails");
    for (_, key) in candidates {
        match jsonwebtoken::decode::<serde_json::Value>(token, key, &v) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                last = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "Jwt is expired".into(),
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        "Jwt not yet valid".into()
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        "Audiences in Jwt are not allowed".into()
                    }
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                        "Audiences in Jwt are not allowed".into()
                    }
                    _ => "Jwt verification fails".into(),
                }
            }
        }
    }
    Err(last)
}

/// Authenticate a request: find, verify, then adjust the headers sent on.
pub fn authenticate(rules: &[Rule], headers: &mut HeaderMap, query: Option<&str>) -> Outcome {
    authenticate_for(rules, None, headers, query)
}

/// As `authenticate`, with only the rules that cover a request for `service`.
pub fn authenticate_for(
    rules: &[Rule],
    service: Option<&str>,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Outcome {
    let covering: Vec<&Rule> = rules
        .iter()
        .filter(|r| {
            r.services.is_empty() || service.is_some_and(|s| r.services.iter().any(|x| x == s))
        })
        .collect();
    authenticate_rules(&covering, headers, query)
}

fn authenticate_rules(rules: &[&Rule], headers: &mut HeaderMap, query: Option<&str>) -> Outcome {
    // Output headers come only from a verified token, never from the client.
    for r in rules {
        if let Some(h) = &r.payload_header {
            headers.remove(h);
        }
        for (h, _) in &r.claim_headers {
            headers.remove(h);
        }
    }
    let mut found = None;
    'search: for r in rules {
        for loc in &r.locations {
            if let Some(t) = find(loc, headers, query) {
                found = Some((t, loc.clone()));
                break 'search;
            }
        }
    }
    let Some((token, loc)) = found else {
        return Outcome::Missing;
    };
    if let Some((rule, claims)) = rules.iter().find_map(|r| r.cached(&token).map(|c| (r, c))) {
        return accepted(rule, claims, &loc, headers);
    }
    // The issuer (unverified) picks the rule; the rule's keys then verify everything.
    let iss = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&token)
        .ok()
        .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_string));
    let Some(iss) = iss else {
        return Outcome::Invalid("Jwt verification fails".into());
    };
    let Some(rule) = rules.iter().find(|r| r.issuer == iss) else {
        return Outcome::Invalid("Jwt issuer is not configured".into());
    };
    let claims = match verify(rule, &token) {
        Ok(c) => c,
        Err(why) => return Outcome::Invalid(why),
    };
    let sub = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("");
    let auth = std::sync::Arc::new(RequestAuth {
        principal: format!("{iss}/{sub}"),
        audiences: string_list(claims.get("aud").unwrap_or(&serde_json::Value::Null)),
        presenter: claims
            .get("azp")
            .and_then(|a| a.as_str())
            .map(str::to_string),
        claims,
    });
    rule.remember(&token, &auth);
    accepted(rule, auth, &loc, headers)
}

/// A verified token: strip it unless forwarded, set the output headers, and say who sent it.
fn accepted(
    rule: &Rule,
    auth: std::sync::Arc<RequestAuth>,
    loc: &Location,
    headers: &mut HeaderMap,
) -> Outcome {
    let claims = &auth.claims;
    if !rule.forward
        && let Location::Header { name, .. } = loc
    {
        headers.remove(name);
    }
    if let Some(h) = &rule.payload_header
        && let Ok(v) = HeaderValue::from_str(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
        )
    {
        headers.insert(h.clone(), v);
    }
    for (h, claim) in &rule.claim_headers {
        let v = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(n @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => n.to_string(),
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(h.clone(), v);
        }
    }
    Outcome::Valid(auth)
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
