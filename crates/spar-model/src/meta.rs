//! Object metadata shared by every kind, and the label selector helpers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::name::Name;

/// Derives for every config struct: camelCase field names as in Istio and Kubernetes YAML,
/// every field optional (`default`), and unknown fields rejected by name.
macro_rules! model {
    ($(#[$m:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "camelCase", default, deny_unknown_fields)]
        pub struct $name { $($body)* }
    };
}
pub(crate) use model;

/// Labels and selectors: interned, as every pod of a workload repeats them.
pub type Labels = BTreeMap<Name, Name>;

/// Annotations: free text, often unique per object, so not interned.
pub type Annotations = BTreeMap<String, String>;

/// A field Spar accepts but does not act on; validation warns when it is set.
pub type Unsupported = Option<serde_json::Value>;

model! {
    /// `metadata` of any object.
    pub struct ObjectMeta {
        pub name: Name,
        pub namespace: Option<Name>,
        pub labels: Labels,
        pub annotations: Annotations,
        // Written by Kubernetes itself; accepted so that `kubectl get -o yaml` output loads.
        pub uid: Option<String>,
        pub resource_version: Option<String>,
        pub generation: Option<i64>,
        pub creation_timestamp: Option<String>,
        pub managed_fields: Option<serde_json::Value>,
        pub finalizers: Option<Vec<String>>,
        pub owner_references: Option<serde_json::Value>,
    }
}

model! {
    /// Istio's `WorkloadSelector` (`selector: {matchLabels: ...}`).
    pub struct WorkloadSelector {
        pub match_labels: Labels,
    }
}

model! {
    /// Istio's `workloadSelector: {labels: ...}` form (Sidecar, ServiceEntry, DestinationRule).
    pub struct LabelsSelector {
        pub labels: Labels,
    }
}

model! {
    /// Kubernetes `LabelSelector` with expressions.
    pub struct LabelSelector {
        pub match_labels: Labels,
        pub match_expressions: Vec<LabelSelectorRequirement>,
    }
}

model! {
    pub struct LabelSelectorRequirement {
        pub key: String,
        pub operator: String,
        pub values: Vec<String>,
    }
}

model! {
    /// A policy target (`targetRef` / `targetRefs`), as in Gateway API.
    pub struct PolicyTargetReference {
        pub group: String,
        pub kind: String,
        pub name: String,
        pub namespace: Option<String>,
    }
}

/// True when every `selector` label is present in `labels` with the same value.
/// An empty selector selects everything.
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl LabelSelector {
    /// Kubernetes semantics: matchLabels AND every expression (In, NotIn, Exists, DoesNotExist).
    pub fn matches(&self, labels: &Labels) -> bool {
        labels_match(&self.match_labels, labels)
            && self.match_expressions.iter().all(|e| {
                let v = labels.get(e.key.as_str());
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| e.values.iter().any(|x| v == x)),
                    "NotIn" => v.is_none_or(|v| !e.values.iter().any(|x| v == x)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

/// Serialize helper so that dumps stay readable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (Name::from(*k), Name::from(*v)))
            .collect()
    }

    #[test]
    fn selector_table() {
        let pod = l(&[("app", "reviews"), ("version", "v2")]);
        assert!(labels_match(&l(&[]), &pod));
        assert!(labels_match(&l(&[("app", "reviews")]), &pod));
        assert!(!labels_match(&l(&[("app", "ratings")]), &pod));
        assert!(!labels_match(&l(&[("tier", "x")]), &pod));
        let sel = LabelSelector {
            match_labels: l(&[("app", "reviews")]),
            match_expressions: vec![LabelSelectorRequirement {
                key: "version".into(),
                operator: "In".into(),
                values: vec!["v1".into(), "v2".into()],
            }],
        };
        assert!(sel.matches(&pod));
        assert!(!sel.matches(&l(&[("app", "reviews"), ("version", "v3")])));
    }
}
