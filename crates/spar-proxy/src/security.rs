//! The security engine one sidecar or waypoint calls for each connection and request:
//! `authz` (AuthorizationPolicy, pure), `jwt` (RequestAuthentication), `ext_authz` (CUSTOM
//! policies' external checks), over `pattern` (Istio's value syntax). `compile` turns one
//! `spar.l7.v1.Policy` resource into engine types; `Config` is what a snapshot holds.

pub mod authz;
pub mod ext_authz;
pub mod jwt;
pub mod pattern;

use std::collections::BTreeMap;

use spar_model::istio::security as sec;
use spar_xds::l7::Policy as Wire;

use crate::Error;

/// One compiled policy resource.
#[derive(Debug, Clone)]
pub enum Compiled {
    Authz {
        policy: authz::Policy,
        /// CUSTOM: the provider, when the mesh config has it (else every match is denied).
        provider: Option<Box<ext_authz::Provider>>,
    },
    Authn(Vec<jwt::Rule>),
    /// A policy this proxy could not compile (`namespace/name`, why): it denies every
    /// request and connection until a good version arrives, so a policy the proxy cannot
    /// read never leaves the workload more open than the operator asked.
    Invalid {
        name: String,
        reason: String,
    },
}

/// What a policy that does not compile becomes.
pub fn invalid(w: &Wire, e: &Error) -> Compiled {
    Compiled::Invalid {
        name: format!("{}/{}", w.namespace, w.name),
        reason: e.to_string(),
    }
}

/// Compile a `spar.l7.v1.Policy`; an error names the resource and field.
pub fn compile(w: &Wire) -> Result<Compiled, Error> {
    let name = format!("{}/{}", w.namespace, w.name);
    let bad = |e: serde_json::Error| Error::Config {
        resource: format!("{} {name}", w.kind),
        field: "spec".into(),
        reason: e.to_string(),
    };
    match w.kind.as_str() {
        "AuthorizationPolicy" => {
            let spec: sec::AuthorizationPolicy = serde_json::from_str(&w.spec).map_err(bad)?;
            let mut policy = authz::compile(&name, &spec)?;
            policy.services = w.services.clone();
            let provider = if w.provider.is_empty() {
                None
            } else {
                Some(Box::new(ext_authz::compile(&w.provider)?))
            };
            Ok(Compiled::Authz { policy, provider })
        }
        "RequestAuthentication" => {
            let spec: sec::RequestAuthentication = serde_json::from_str(&w.spec).map_err(bad)?;
            let jwks: BTreeMap<String, String> = w.jwks.clone().into_iter().collect();
            let mut rules = jwt::compile(&name, &spec, &jwks)?;
            for r in &mut rules {
                r.services = w.services.clone();
            }
            Ok(Compiled::Authn(rules))
        }
        other => Err(Error::Config {
            resource: name,
            field: "kind".into(),
            reason: format!("unknown policy kind {other:?}"),
        }),
    }
}

/// The security config of one proxy.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// AuthorizationPolicies, by name.
    pub authz: Vec<authz::Policy>,
    /// Providers of CUSTOM policies, by provider name.
    pub providers: BTreeMap<String, ext_authz::Provider>,
    pub jwt: Vec<jwt::Rule>,
}

impl Config {
    pub fn build<'a>(all: impl Iterator<Item = &'a Compiled>) -> Config {
        let mut c = Config::default();
        for p in all {
            match p {
                Compiled::Authz { policy, provider } => {
                    if let Some(pr) = provider {
                        c.providers.insert(pr.name.clone(), (**pr).clone());
                    }
                    c.authz.push(policy.clone());
                }
                Compiled::Authn(rules) => c.jwt.extend(rules.iter().cloned()),
                Compiled::Invalid { name, .. } => c.authz.push(authz::Policy {
                    name: name.clone(),
                    action: authz::Action::Deny,
                    // One empty rule matches everything.
                    rules: vec![authz::Rule::default()],
                    services: Vec::new(),
                }),
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.authz.is_empty() && self.jwt.is_empty()
    }
}
