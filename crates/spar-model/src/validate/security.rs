//! Checks of `security.istio.io` resources: AuthorizationPolicy, PeerAuthentication,
//! RequestAuthentication.

use super::Checker;
use crate::istio::pattern::PathPattern;
use crate::istio::security as sec;

/// An HTTP header name (RFC 9110 token), as the proxy will need it.
fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Checker {
    /// `targetRef(s)` of a policy in namespace `own` stay in it (Istio refuses others; the
    /// control plane ignores them, so a policy could not silently reach another namespace).
    pub(super) fn target_namespaces<'a>(
        &mut self,
        own: &str,
        refs: impl Iterator<Item = &'a crate::meta::PolicyTargetReference>,
    ) {
        for (i, t) in refs.enumerate() {
            if let Some(n) = t.namespace.as_deref().filter(|n| !n.is_empty())
                && n != own
            {
                self.err(
                    format!("spec.targetRefs[{i}].namespace"),
                    format!("{n}: a target in another namespace is not supported (as in Istio); write the policy in namespace {n}"),
                );
            }
        }
    }

    pub(super) fn authorization_policy(&mut self, s: &sec::AuthorizationPolicy) {
        self.one_of(
            "spec.action".into(),
            &s.action,
            &["ALLOW", "DENY", "AUDIT", "CUSTOM"],
        );
        if s.action.as_deref() == Some("CUSTOM") && s.provider.is_none() {
            self.err("spec.provider", "action CUSTOM needs a provider");
        }
        if s.provider.is_some() && s.action.as_deref() != Some("CUSTOM") {
            self.err(
                "spec.provider",
                "a provider is only allowed with action CUSTOM",
            );
        }
        let targeted = s.target_ref.is_some() || !s.target_refs.is_empty();
        let gateway_or_selected = s.selector.is_some()
            || s.target_ref
                .iter()
                .chain(&s.target_refs)
                .any(|t| t.kind == "Gateway");
        if targeted && s.selector.is_some() {
            self.err(
                "spec.selector",
                "selector and targetRef(s) are mutually exclusive",
            );
        }
        for (i, t) in s.target_ref.iter().chain(&s.target_refs).enumerate() {
            let ok = matches!(
                (t.group.as_str(), t.kind.as_str()),
                ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
                    | ("" | "core", "Service")
            );
            if !ok {
                self.warn(
                    format!("spec.targetRefs[{i}]"),
                    format!(
                        "{}/{}: spar's waypoints and ingress gateways take Gateway, GatewayClass and Service targets; not enforced",
                        t.group, t.kind
                    ),
                );
            }
        }
        for (i, rule) in s.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let src = &f.source;
                let sp = format!("{p}.from[{j}].source");
                for (field, list) in [
                    ("ipBlocks", &src.ip_blocks),
                    ("notIpBlocks", &src.not_ip_blocks),
                    ("remoteIpBlocks", &src.remote_ip_blocks),
                    ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
                ] {
                    for (k, c) in list.iter().enumerate() {
                        self.cidr(format!("{sp}.{field}[{k}]"), c);
                    }
                }
                for (field, list) in [
                    ("serviceAccounts", &src.service_accounts),
                    ("notServiceAccounts", &src.not_service_accounts),
                ] {
                    for (k, v) in list.iter().enumerate() {
                        let ok = v.split_once('/').is_some_and(|(ns, sa)| {
                            !ns.is_empty() && !sa.is_empty() && !sa.contains('/')
                        });
                        if !ok {
                            self.err(
                                format!("{sp}.{field}[{k}]"),
                                format!("{v:?} is not namespace/serviceaccount"),
                            );
                        }
                    }
                }
                for (field, list) in [
                    ("principals", &src.principals),
                    ("notPrincipals", &src.not_principals),
                ] {
                    for (k, pr) in list.iter().enumerate() {
                        if pr.is_empty() || pr.starts_with("spiffe://") {
                            self.err(format!("{sp}.{field}[{k}]"), format!("{pr:?}: write principals without spiffe://, e.g. cluster.local/ns/default/sa/sleep"));
                        }
                    }
                }
            }
            for (j, t) in rule.to.iter().enumerate() {
                let op = &t.operation;
                for (field, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                    for (k, path) in list.iter().enumerate() {
                        if let Err(e) = PathPattern::parse(path) {
                            self.err(format!("{p}.to[{j}].operation.{field}[{k}]"), e);
                        }
                    }
                }
                for (field, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, port) in list.iter().enumerate() {
                        match port.parse::<u32>() {
                            Ok(n) => self.port(format!("{p}.to[{j}].operation.{field}[{k}]"), n),
                            Err(_) => self.err(
                                format!("{p}.to[{j}].operation.{field}[{k}]"),
                                format!("{port:?} is not a port number"),
                            ),
                        }
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let cp = format!("{p}.when[{j}]");
                if !CONDITION_KEYS.iter().any(|k| {
                    c.key == *k
                        || (k.ends_with('[') && c.key.starts_with(k) && c.key.ends_with(']'))
                        || (k.ends_with('.') && c.key.starts_with(k))
                }) {
                    self.err(
                        format!("{cp}.key"),
                        format!("unknown condition key {:?}", c.key),
                    );
                }
                if c.key.starts_with("experimental.envoy.filters.") {
                    self.err(
                        format!("{cp}.key"),
                        format!("{} is not supported by spar", c.key),
                    );
                }
                if c.key.starts_with("request.auth.claims")
                    && !(c.key.len() > "request.auth.claims[]".len()
                        && c.key["request.auth.claims".len()..].starts_with('[')
                        && c.key.ends_with(']'))
                {
                    self.err(
                        format!("{cp}.key"),
                        "write request.auth.claims[NAME] (nested: [a][b])",
                    );
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    self.err(&cp, "set values or notValues");
                }
                if let Some(h) = c
                    .key
                    .strip_prefix("request.headers[")
                    .and_then(|h| h.strip_suffix(']'))
                    && !header_name_ok(h)
                {
                    self.err(format!("{cp}.key"), format!("{h:?} is not a header name"));
                }
                if c.key == "connection.sni" && !gateway_or_selected {
                    // Mesh traffic arrives over HBONE, which carries no SNI: only an ingress
                    // gateway knows one, so a mesh- or namespace-wide rule on it is said.
                    self.warn(
                        format!("{cp}.key"),
                        "connection.sni is known only at ingress gateways (the TLS their listeners terminate or pass through); on mesh traffic (HBONE) an ALLOW rule using it never matches and a DENY rule applies without it",
                    );
                }
                if c.key == "destination.port" {
                    for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                        for (k, v) in list.iter().enumerate() {
                            if !v.parse::<u16>().is_ok_and(|p| p > 0) {
                                self.err(
                                    format!("{cp}.{field}[{k}]"),
                                    format!("{v:?} is not a port number (a condition that cannot be evaluated is never dropped)"),
                                );
                            }
                        }
                    }
                }
                if ["source.ip", "remote.ip", "destination.ip"].contains(&c.key.as_str()) {
                    for (k, v) in c.values.iter().chain(&c.not_values).enumerate() {
                        self.cidr(format!("{cp}.values[{k}]"), v);
                    }
                }
            }
        }
    }

    /// Istio's mesh config: the extension providers Spar uses are checked; the rest is
    /// reported as not acted on.
    pub(super) fn mesh_config(&mut self, text: &str) {
        use crate::istio::mesh::{AUTHZ_KINDS, MeshConfig, READ_FIELDS, TRACING_KINDS};
        let m = match MeshConfig::parse(text) {
            Ok(m) => m,
            Err(e) => return self.err("data.mesh", format!("not a MeshConfig: {e}")),
        };
        for k in m
            .other
            .keys()
            .filter(|k| !READ_FIELDS.contains(&k.as_str()))
        {
            self.warn(
                format!("data.mesh.{k}"),
                "not acted on by spar yet; ignored",
            );
        }
        for (i, p) in m.extension_providers.iter().enumerate() {
            let at = format!("data.mesh.extensionProviders[{i}]");
            if p.name.is_empty() {
                self.err(format!("{at}.name"), "a provider needs a name");
            }
            let kinds: Vec<&String> = p.kinds.keys().collect();
            if kinds.len() != 1 {
                self.err(
                    &at,
                    "set exactly one provider kind (envoyExtAuthzHttp, envoyExtAuthzGrpc, ...)",
                );
                continue;
            }
            let kind = kinds[0].as_str();
            if !AUTHZ_KINDS.contains(&kind) && !TRACING_KINDS.contains(&kind) {
                self.warn(
                    format!("{at}.{kind}"),
                    "provider kind not acted on by spar yet; ignored",
                );
                continue;
            }
            let spec = &p.kinds[kind];
            if spec
                .get("service")
                .and_then(|s| s.as_str())
                .is_none_or(str::is_empty)
            {
                self.err(format!("{at}.{kind}.service"), "a service host is required");
            }
            let port_ok = match spec.get("port") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().is_some_and(|p| (1..=65535).contains(&p))
                }
                Some(serde_json::Value::String(s)) => s.parse::<u16>().is_ok_and(|p| p > 0),
                _ => false,
            };
            if !port_ok {
                self.err(format!("{at}.{kind}.port"), "a port number is required");
            }
            if let Some(t) = spec.get("timeout").and_then(|t| t.as_str()) {
                self.duration(format!("{at}.{kind}.timeout"), &Some(t.to_string()));
            }
            if let Some(s) = spec.get("statusOnError").and_then(|t| t.as_str())
                && s.parse::<u16>().is_err()
            {
                self.err(
                    format!("{at}.{kind}.statusOnError"),
                    format!("{s:?} is not an HTTP status"),
                );
            }
            for unsupported in ["includeRequestBodyInCheck", "includeHeadersInCheck"] {
                if spec.get(unsupported).is_some() {
                    self.warn(
                        format!("{at}.{kind}.{unsupported}"),
                        "not acted on by spar yet; ignored",
                    );
                }
            }
        }
    }

    pub(super) fn peer_authentication(&mut self, s: &sec::PeerAuthentication) {
        const MODES: [&str; 4] = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"];
        if let Some(m) = &s.mtls {
            self.one_of("spec.mtls.mode".into(), &m.mode, &MODES);
        }
        if !s.port_level_mtls.is_empty() && s.selector.is_none() {
            self.err(
                "spec.portLevelMtls",
                "portLevelMtls needs a workload selector",
            );
        }
        for (port, m) in &s.port_level_mtls {
            self.port(format!("spec.portLevelMtls.{port}"), *port);
            self.one_of(format!("spec.portLevelMtls.{port}.mode"), &m.mode, &MODES);
        }
    }

    pub(super) fn request_authentication(&mut self, s: &sec::RequestAuthentication) {
        for (i, r) in s.jwt_rules.iter().enumerate() {
            if r.issuer.is_empty() {
                self.err(
                    format!("spec.jwtRules[{i}].issuer"),
                    "an issuer is required",
                );
            }
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                self.err(
                    format!("spec.jwtRules[{i}].jwks"),
                    "jwks and jwksUri are mutually exclusive",
                );
            }
            self.duration(format!("spec.jwtRules[{i}].timeout"), &r.timeout);
            if let Some(text) = &r.jwks {
                let keys = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("keys").map(|k| k.is_array()));
                if keys != Some(true) {
                    self.err(
                        format!("spec.jwtRules[{i}].jwks"),
                        "not a JWKS (a JSON object with a \"keys\" list)",
                    );
                }
            }
            if let Some(uri) = &r.jwks_uri
                && !(uri.starts_with("http://") || uri.starts_with("https://"))
            {
                self.err(
                    format!("spec.jwtRules[{i}].jwksUri"),
                    format!("{uri:?} is not an http:// or https:// URL"),
                );
            }
            for (j, h) in r.from_headers.iter().enumerate() {
                if !header_name_ok(&h.name) {
                    self.err(
                        format!("spec.jwtRules[{i}].fromHeaders[{j}].name"),
                        format!("{:?} is not a header name", h.name),
                    );
                }
            }
            let outputs = r
                .output_payload_to_header
                .iter()
                .map(|h| ("outputPayloadToHeader".to_string(), h))
                .chain(
                    r.output_claim_to_headers
                        .iter()
                        .enumerate()
                        .map(|(j, c)| (format!("outputClaimToHeaders[{j}].header"), &c.header)),
                );
            for (field, h) in outputs {
                if !header_name_ok(h) {
                    self.err(
                        format!("spec.jwtRules[{i}].{field}"),
                        format!("{h:?} is not a header name"),
                    );
                }
            }
            if r.timeout.is_some() {
                self.warn(
                    format!("spec.jwtRules[{i}].timeout"),
                    "the control plane fetches jwksUri with its own timeout; not acted on",
                );
            }
        }
    }
}

/// AuthorizationPolicy `when` keys (Istio's "conditions" reference). Keys ending in `[` take
/// a bracketed argument.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "request.headers[",
    "experimental.envoy.filters.",
];
