//! Istio's MeshConfig, as the `mesh` key of the `istio` ConfigMap in the root namespace (or a
//! file given to `spar control --mesh-config`). Spar reads `extensionProviders`; every other
//! field is accepted and reported as not acted on.

use serde::{Deserialize, Serialize};

/// The ConfigMap Istio keeps its mesh config in, and its key.
pub const CONFIGMAP: &str = "istio";
pub const KEY: &str = "mesh";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshConfig {
    pub extension_providers: Vec<ExtensionProvider>,
    /// Everything else, kept to warn about by name.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// One provider: its name and the one kind-specific block (kept as JSON for the proxies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(flatten)]
    pub kinds: serde_json::Map<String, serde_json::Value>,
}

/// Provider kinds Spar acts on; the others (logging, metrics) are warned about.
pub const AUTHZ_KINDS: [&str; 2] = ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"];
/// Tracing providers: OTLP (gRPC, or HTTP with `http`) and Zipkin.
pub const TRACING_KINDS: [&str; 2] = ["opentelemetry", "zipkin"];
/// MeshConfig fields Spar reads besides `extensionProviders`.
pub const READ_FIELDS: [&str; 2] = ["defaultProviders", "defaultConfig"];

impl MeshConfig {
    pub fn parse(text: &str) -> Result<MeshConfig, String> {
        if text.trim().is_empty() {
            return Ok(MeshConfig::default());
        }
        let docs = crate::yaml::parse_documents(text)
            .map_err(|e| format!("line {}: {}", e.line, e.message))?;
        let Some(d) = docs.into_iter().next() else {
            return Ok(MeshConfig::default());
        };
        serde_path_to_error::deserialize(&d.value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    /// `defaultProviders.tracing`: the providers a Telemetry `tracing` entry naming none uses.
    pub fn default_tracing_providers(&self) -> Vec<String> {
        self.other
            .get("defaultProviders")
            .and_then(|d| d.get("tracing"))
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `defaultConfig.tracing.sampling`: the percentage sampled when a Telemetry sets none
    /// (Istio's default is 1%).
    pub fn default_sampling(&self) -> f64 {
        self.other
            .get("defaultConfig")
            .and_then(|d| d.get("tracing"))
            .and_then(|t| t.get("sampling"))
            .and_then(|s| s.as_f64())
            .unwrap_or(1.0)
    }

    /// A provider by name, as JSON (what the proxies compile).
    pub fn provider_json(&self, name: &str) -> Option<String> {
        self.extension_providers
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| serde_json::to_string(p).ok())
    }
}
