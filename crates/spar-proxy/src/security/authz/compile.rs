//! AuthorizationPolicy spec -> engine types. Anything the engine could not evaluate
//! exactly (an unknown condition key, a port that is not a number, a bad CIDR or path
//! template, `experimental.envoy.filters.*`) is an error naming the field: a policy is
//! enforced whole or refused, never with a condition silently dropped.

use spar_model::istio::security as sec;

use super::super::pattern::{PathPattern, Pattern, cidr};
use super::{Action, Condition, Field, Key, Operation, Policy, Rule, Source, Values};
use crate::Error;

struct At<'a> {
    resource: &'a str,
}

impl At<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Config {
            resource: self.resource.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn patterns(values: &[String], not: &[String]) -> Field<Pattern> {
    Field {
        values: values.iter().map(|v| Pattern::parse(v)).collect(),
        not: not.iter().map(|v| Pattern::parse(v)).collect(),
    }
}

fn ports(at: &At, field: &str, values: &[String], not: &[String]) -> Result<Field<u16>, Error> {
    let one = |v: &String, i: usize, f: &str| {
        v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            at.err(
                format!("{field}.{f}[{i}]"),
                format!("{v:?} is not a port number"),
            )
        })
    };
    Ok(Field {
        values: values
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, i, "values"))
            .collect::<Result<_, _>>()?,
        not: not
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, i, "notValues"))
            .collect::<Result<_, _>>()?,
    })
}

fn cidrs(
    at: &At,
    field: &str,
    values: &[String],
    not: &[String],
) -> Result<Field<ipnet::IpNet>, Error> {
    let list = |vs: &[String], f: &str| {
        vs.iter()
            .enumerate()
            .map(|(i, v)| cidr(v).map_err(|e| at.err(format!("{field}{f}[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Field {
        values: list(values, "")?,
        not: list(not, ".not")?,
    })
}

/// `ns/sa` -> a principal pattern for that service account in any trust domain.
fn service_accounts(at: &At, field: &str, list: &[String]) -> Result<Vec<Pattern>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok(Pattern::Suffix(format!("/ns/{ns}/sa/{sa}")))
            }
            _ => Err(at.err(
                format!("{field}[{i}]"),
                format!("{v:?} is not namespace/serviceaccount"),
            )),
        })
        .collect()
}

fn source(at: &At, p: &str, s: &sec::Source) -> Result<Source, Error> {
    let mut principals = patterns(&s.principals, &s.not_principals);
    principals.values.extend(service_accounts(
        at,
        &format!("{p}.serviceAccounts"),
        &s.service_accounts,
    )?);
    principals.not.extend(service_accounts(
        at,
        &format!("{p}.notServiceAccounts"),
        &s.not_service_accounts,
    )?);
    Ok(Source {
        principals,
        request_principals: patterns(&s.request_principals, &s.not_request_principals),
        namespaces: patterns(&s.namespaces, &s.not_namespaces),
        ip_blocks: cidrs(at, &format!("{p}.ipBlocks"), &s.ip_blocks, &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs(
            at,
            &format!("{p}.remoteIpBlocks"),
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        )?,
    })
}

fn operation(at: &At, p: &str, o: &sec::Operation) -> Result<Operation, Error> {
    let paths = |list: &[String], f: &str| {
        list.iter()
            .enumerate()
            .map(|(i, v)| PathPattern::parse(v).map_err(|e| at.err(format!("{p}.{f}[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Operation {
        hosts: patterns(&o.hosts, &o.not_hosts),
        ports: ports(at, &format!("{p}.ports"), &o.ports, &o.not_ports)?,
        methods: patterns(&o.methods, &o.not_methods),
        paths: Field {
            values: paths(&o.paths, "paths")?,
            not: paths(&o.not_paths, "notPaths")?,
        },
    })
}

/// `request.auth.claims[a][b]` -> `["a", "b"]`.
fn claim_path(arg: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = arg;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() {
            return None;
        }
        out.push(name.to_string());
        rest = after;
    }
    (!out.is_empty()).then_some(out)
}

fn condition(at: &At, p: &str, c: &sec::Condition) -> Result<Condition, Error> {
    let strs = || Values::Strings(patterns(&c.values, &c.not_values));
    let (key, values) = match c.key.as_str() {
        "source.ip" => (
            Key::SourceIp,
            Values::Ips(cidrs(at, &format!("{p}.values"), &c.values, &c.not_values)?),
        ),
        "remote.ip" => (
            Key::RemoteIp,
            Values::Ips(cidrs(at, &format!("{p}.values"), &c.values, &c.not_values)?),
        ),
        "destination.ip" => (
            Key::DestinationIp,
            Values::Ips(cidrs(at, &format!("{p}.values"), &c.values, &c.not_values)?),
        ),
        "destination.port" => (
            Key::DestinationPort,
            Values::Ports(ports(at, p, &c.values, &c.not_values)?),
        ),
        "source.namespace" => (Key::SourceNamespace, strs()),
        "source.principal" => (Key::SourcePrincipal, strs()),
        "source.serviceAccount" => (Key::SourceServiceAccount, strs()),
        "connection.sni" => (Key::ConnectionSni, strs()),
        "request.auth.principal" => (Key::RequestPrincipal, strs()),
        "request.auth.audiences" => (Key::RequestAudiences, strs()),
        "request.auth.presenter" => (Key::RequestPresenter, strs()),
        k if k.starts_with("request.auth.claims") => {
            let path = claim_path(&k["request.auth.claims".len()..]).ok_or_else(|| {
                at.err(
                    format!("{p}.key"),
                    format!("{k:?}: write request.auth.claims[NAME] (nested: [a][b])"),
                )
            })?;
            (Key::RequestClaim(path), strs())
        }
        k if k.starts_with("request.headers[") && k.ends_with(']') => {
            let name = &k["request.headers[".len()..k.len() - 1];
            let h = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(
                |_| at.err(format!("{p}.key"), format!("{name:?} is not a header name")),
            )?;
            (Key::RequestHeader(h), strs())
        }
        k if k.starts_with("experimental.envoy.filters.") => {
            return Err(at.err(format!("{p}.key"), format!("{k} is not supported by Spar")));
        }
        k => return Err(at.err(format!("{p}.key"), format!("unknown condition key {k:?}"))),
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(at.err(p, "set values or notValues"));
    }
    Ok(Condition { key, values })
}

/// Compile the AuthorizationPolicy `namespace/name`.
pub fn compile(name: &str, spec: &sec::AuthorizationPolicy) -> Result<Policy, Error> {
    let resource = format!("AuthorizationPolicy {name}");
    let at = At {
        resource: &resource,
    };
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => Action::Custom(
            spec.provider
                .as_ref()
                .map(|p| p.name.clone())
                .ok_or_else(|| at.err("spec.provider", "action CUSTOM needs a provider"))?,
        ),
        other => return Err(at.err("spec.action", format!("unknown action {other:?}"))),
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = format!("spec.rules[{i}]");
            Ok(Rule {
                from: r
                    .from
                    .iter()
                    .enumerate()
                    .map(|(j, f)| source(&at, &format!("{p}.from[{j}].source"), &f.source))
                    .collect::<Result<_, Error>>()?,
                to: r
                    .to
                    .iter()
                    .enumerate()
                    .map(|(j, t)| operation(&at, &format!("{p}.to[{j}].operation"), &t.operation))
                    .collect::<Result<_, Error>>()?,
                when: r
                    .when
                    .iter()
                    .enumerate()
                    .map(|(j, c)| condition(&at, &format!("{p}.when[{j}]"), c))
                    .collect::<Result<_, Error>>()?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Policy {
        name: name.to_string(),
        action,
        rules,
        services: Vec::new(),
    })
}
