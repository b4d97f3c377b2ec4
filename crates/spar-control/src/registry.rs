//! The registry: every resource the control plane knows (from the config directory and from
//! `spar apply`), with the derived views translation needs. Immutable once built; a change
//! builds a new one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use spar_model::k8s::{PodSpec, PodStatus, ServiceSpec};
use spar_model::{Kind, Labels, Resource, ResourceKey, Spec, labels_match};

/// Mesh-wide settings that scope translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    pub trust_domain: String,
    /// Policies here without a selector apply mesh-wide (Istio's `istio-system`).
    pub root_namespace: String,
    pub cluster_id: String,
    /// DNS suffix of service host names (`<svc>.<ns>.svc.<suffix>`).
    pub domain_suffix: String,
    /// MeshConfig text from `spar control --mesh-config` (the root namespace's `istio`
    /// ConfigMap, when there is one, wins: it is the later, applied intent).
    pub mesh_config: Option<String>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            cluster_id: "Kubernetes".into(),
            domain_suffix: "cluster.local".into(),
            mesh_config: None,
        }
    }
}

/// How a workload takes part in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    None,
    Ambient,
    Sidecar,
}

/// A pod as translation sees it.
#[derive(Debug, Clone)]
pub struct Pod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a Labels,
    pub annotations: &'a Labels,
    pub spec: &'a PodSpec,
    pub status: &'a PodStatus,
    pub ip: Option<IpAddr>,
}

impl Pod<'_> {
    pub fn node(&self) -> Option<&str> {
        self.spec.node_name.as_deref()
    }
    pub fn service_account(&self) -> &str {
        self.spec.service_account()
    }
    /// Ready unless the box said otherwise; a pod that failed or finished is not.
    pub fn ready(&self) -> bool {
        self.status.ready.unwrap_or(true)
            && !matches!(
                self.status.phase.as_deref(),
                Some("Failed" | "Succeeded" | "Pending")
            )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub mesh: MeshSettings,
    resources: BTreeMap<ResourceKey, Resource>,
}

impl Registry {
    pub fn new(mesh: MeshSettings, resources: impl IntoIterator<Item = Resource>) -> Self {
        Registry {
            mesh,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.resources.values().filter(move |r| r.kind == kind)
    }

    /// Labels of a namespace (empty when no Namespace object exists).
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.get(&ResourceKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: ns.to_string(),
        })
        .map(|r| &r.meta.labels)
    }

    pub fn pods(&self) -> impl Iterator<Item = Pod<'_>> {
        self.of_kind(Kind::Pod).filter_map(|r| match &r.spec {
            Spec::Pod(spec, status) => Some(Pod {
                namespace: r.namespace(),
                name: r.name(),
                labels: &r.meta.labels,
                annotations: &r.meta.annotations,
                spec,
                status,
                ip: status.pod_ip.as_deref().and_then(|s| s.parse().ok()),
            }),
            _ => None,
        })
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod<'_>> {
        self.pods()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn services(&self) -> impl Iterator<Item = (&Resource, &ServiceSpec)> {
        self.of_kind(Kind::Service).filter_map(|r| match &r.spec {
            Spec::Service(s) => Some((r, s)),
            _ => None,
        })
    }

    /// Pods selected by a Service (same namespace, selector labels); none for selector-less.
    pub fn endpoints<'a>(
        &'a self,
        svc: &'a Resource,
        spec: &'a ServiceSpec,
    ) -> impl Iterator<Item = Pod<'a>> + 'a {
        self.pods().filter(move |p| {
            !spec.selector.is_empty()
                && p.namespace == svc.namespace()
                && labels_match(&spec.selector, p.labels)
        })
    }

    /// Istio's rules: the pod label wins over the namespace label; sidecar injection is
    /// `istio-injection=enabled` on the namespace or `sidecar.istio.io/inject=true` on the pod.
    pub fn dataplane_mode(&self, pod: &Pod<'_>) -> DataplaneMode {
        let ns = self.namespace_labels(pod.namespace);
        fn get<'a>(l: Option<&'a Labels>, k: &str) -> Option<&'a str> {
            l.and_then(|l| l.get(k)).map(String::as_str)
        }
        let pod_inject = get(Some(pod.labels), "sidecar.istio.io/inject");
        if pod_inject == Some("true")
            || (get(ns, "istio-injection") == Some("enabled") && pod_inject != Some("false"))
        {
            return DataplaneMode::Sidecar;
        }
        match get(Some(pod.labels), "istio.io/dataplane-mode")
            .or(get(ns, "istio.io/dataplane-mode"))
        {
            Some("ambient") => DataplaneMode::Ambient,
            _ => DataplaneMode::None,
        }
    }

    /// True when `ns` holds at least one pod scheduled on `node`.
    pub fn namespace_on_node(&self, ns: &str, node: &str) -> bool {
        self.pods()
            .any(|p| p.namespace == ns && p.node() == Some(node))
    }
}
