//! `security.istio.io/v1`: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.

use std::collections::BTreeMap;

use crate::meta::{PolicyTargetReference, WorkloadSelector, model};

model! {
    pub struct AuthorizationPolicy {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub rules: Vec<Rule>,
        /// ALLOW (default), DENY, AUDIT or CUSTOM.
        pub action: Option<String>,
        pub provider: Option<ExtensionProvider>,
    }
}

model! {
    pub struct ExtensionProvider {
        pub name: String,
    }
}

model! {
    pub struct Rule {
        pub from: Vec<RuleFrom>,
        pub to: Vec<RuleTo>,
        pub when: Vec<Condition>,
    }
}

model! {
    pub struct RuleFrom {
        pub source: Source,
    }
}

model! {
    pub struct RuleTo {
        pub operation: Operation,
    }
}

model! {
    pub struct Source {
        pub principals: Vec<String>,
        pub not_principals: Vec<String>,
        pub request_principals: Vec<String>,
        pub not_request_principals: Vec<String>,
        pub namespaces: Vec<String>,
        pub not_namespaces: Vec<String>,
        pub service_accounts: Vec<String>,
        pub not_service_accounts: Vec<String>,
        pub ip_blocks: Vec<String>,
        pub not_ip_blocks: Vec<String>,
        pub remote_ip_blocks: Vec<String>,
        pub not_remote_ip_blocks: Vec<String>,
    }
}

model! {
    pub struct Operation {
        pub hosts: Vec<String>,
        pub not_hosts: Vec<String>,
        pub ports: Vec<String>,
        pub not_ports: Vec<String>,
        pub methods: Vec<String>,
        pub not_methods: Vec<String>,
        pub paths: Vec<String>,
        pub not_paths: Vec<String>,
    }
}

model! {
    pub struct Condition {
        pub key: String,
        pub values: Vec<String>,
        pub not_values: Vec<String>,
    }
}

model! {
    pub struct PeerAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub mtls: Option<MutualTls>,
        pub port_level_mtls: BTreeMap<u32, MutualTls>,
    }
}

model! {
    pub struct MutualTls {
        /// UNSET, DISABLE, PERMISSIVE, STRICT.
        pub mode: Option<String>,
    }
}

model! {
    pub struct RequestAuthentication {
        pub selector: Option<WorkloadSelector>,
        pub target_ref: Option<PolicyTargetReference>,
        pub target_refs: Vec<PolicyTargetReference>,
        pub jwt_rules: Vec<JwtRule>,
    }
}

model! {
    pub struct JwtRule {
        pub issuer: String,
        pub audiences: Vec<String>,
        pub jwks_uri: Option<String>,
        pub jwks: Option<String>,
        pub from_headers: Vec<JwtHeader>,
        pub from_params: Vec<String>,
        pub from_cookies: Vec<String>,
        pub output_payload_to_header: Option<String>,
        pub forward_original_token: Option<bool>,
        pub output_claim_to_headers: Vec<ClaimToHeader>,
        pub timeout: Option<String>,
    }
}

model! {
    pub struct JwtHeader {
        pub name: String,
        pub prefix: Option<String>,
    }
}

model! {
    pub struct ClaimToHeader {
        pub header: String,
        pub claim: String,
    }
}
