//! The box file: which nodes exist and which addresses they hand out. Optional; the default
//! is two nodes.

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct BoxSpec {
    pub nodes: Vec<NodeSpec>,
    pub service_cidr: Ipv4Net,
    /// The link between nodes: each node gets one address here.
    pub fabric_cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    api_version: String,
    kind: String,
    spec: FileSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSpec {
    nodes: Vec<NodeSpec>,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Option<Ipv4Net>,
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap_or_default()
}

impl Default for BoxSpec {
    fn default() -> Self {
        BoxSpec {
            nodes: vec![
                NodeSpec {
                    name: "node-1".into(),
                    pod_cidr: net("10.244.1.0/24"),
                },
                NodeSpec {
                    name: "node-2".into(),
                    pod_cidr: net("10.244.2.0/24"),
                },
            ],
            service_cidr: net("10.96.0.0/16"),
            fabric_cidr: net("172.30.0.0/24"),
        }
    }
}

impl BoxSpec {
    /// Parse a box file (`apiVersion: spar.dev/v1`, `kind: Box`).
    pub fn parse(file: &str, text: &str) -> Result<BoxSpec, Error> {
        let bad = |message: String| Error::BoxFile {
            file: file.into(),
            message,
        };
        let f: File = serde_saphyr::from_str(text)
            .map_err(|e| bad(e.to_string().lines().next().unwrap_or("").to_string()))?;
        if f.api_version != "spar.dev/v1" || f.kind != "Box" {
            return Err(bad("expected apiVersion: spar.dev/v1 and kind: Box".into()));
        }
        let spec = BoxSpec {
            nodes: f.spec.nodes,
            service_cidr: f
                .spec
                .service_cidr
                .unwrap_or_else(|| BoxSpec::default().service_cidr),
            ..BoxSpec::default()
        };
        spec.check().map_err(bad)?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if self.nodes.is_empty() || self.nodes.len() > 200 {
            return Err("between 1 and 200 nodes are needed".into());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let ok = !n.name.is_empty()
                && n.name.len() <= 40
                && n.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(format!(
                    "node name {:?} must be lower-case letters, digits and '-'",
                    n.name
                ));
            }
            if n.pod_cidr.prefix_len() > 28 {
                return Err(format!(
                    "node {}: podCIDR {} is too small (use /28 or larger)",
                    n.name, n.pod_cidr
                ));
            }
            for m in &self.nodes[..i] {
                if m.name == n.name {
                    return Err(format!("node {} is listed twice", n.name));
                }
                if m.pod_cidr.contains(&n.pod_cidr.network())
                    || n.pod_cidr.contains(&m.pod_cidr.network())
                {
                    return Err(format!("podCIDRs of {} and {} overlap", m.name, n.name));
                }
            }
            if self.service_cidr.contains(&n.pod_cidr.network())
                || n.pod_cidr.contains(&self.service_cidr.network())
            {
                return Err(format!("podCIDR of {} overlaps the serviceCIDR", n.name));
            }
        }
        Ok(())
    }
}

/// A Namespace resource with `labels` (for planning pods added to a running box).
pub fn namespace(name: &str, labels: &spar_model::Labels) -> Result<spar_model::Resource, String> {
    spar_model::resource::decode(&serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .map_err(|e| format!("{}: {}", e.path, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes:\n  - {name: a, podCIDR: 10.1.0.0/24}\n  - {name: b, podCIDR: 10.2.0.0/24}\n  - {name: c, podCIDR: 10.3.0.0/24}\n";
        assert_eq!(BoxSpec::parse("f", ok).expect("valid").nodes.len(), 3);
        for bad in [
            "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes: []\n",
            "apiVersion: v1\nkind: Box\nspec:\n  nodes: [{name: a, podCIDR: 10.1.0.0/24}]\n",
            "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes: [{name: a, podCIDR: 10.1.0.0/24}, {name: b, podCIDR: 10.1.0.0/25}]\n",
            "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes: [{name: A, podCIDR: 10.1.0.0/24}]\n",
            "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes: [{name: a, podCIDR: nope}]\n",
            "apiVersion: spar.dev/v1\nkind: Box\nspec:\n  nodes: [{name: a, podCIDR: 10.1.0.0/24, extra: 1}]\n",
        ] {
            assert!(BoxSpec::parse("f", bad).is_err(), "{bad}");
        }
    }
}
