//! The registry: every resource the control plane knows (from the config directory and from
//! `spar apply`), with the indexes translation needs: pods by (namespace, label), node and IP,
//! services by selector and VIP, endpoints per service, authorization policies by selector.
//! Pod IPs are parsed once, when the pod is put, never in translation loops.
//!
//! A registry is a value: `clone` is cheap (its maps are persistent, see `pmap`), and a change
//! is `clone` then `put`/`delete` on the copy, so the snapshot streams hold is never mutated.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use spar_model::k8s::{PodSpec, PodStatus, ServiceSpec};
use spar_model::{Annotations, Kind, Labels, Name, Resource, ResourceKey, Spec, labels_match};

use crate::pmap::PMap;

mod index;
use index::SelectorIndex;

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
    pub annotations: &'a Annotations,
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

/// `(namespace, name)`.
pub type NsName = (Name, Name);

/// A pod resource with what is derived from it once.
#[derive(Debug)]
struct PodEntry {
    res: Arc<Resource>,
    ip: Option<IpAddr>,
}

impl PodEntry {
    fn pod(&self) -> Option<Pod<'_>> {
        let r = &self.res;
        match &r.spec {
            Spec::Pod(spec, status) => Some(Pod {
                namespace: r.namespace(),
                name: r.name(),
                labels: &r.meta.labels,
                annotations: &r.meta.annotations,
                spec,
                status,
                ip: self.ip,
            }),
            _ => None,
        }
    }
}

type Set<T> = Arc<BTreeSet<T>>;

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub mesh: MeshSettings,
    /// Every resource, by kind.
    kinds: std::collections::BTreeMap<Kind, PMap<ResourceKey, Arc<Resource>>>,
    pods: PMap<NsName, Arc<PodEntry>>,
    /// (namespace, label key, label value) -> pod names.
    pods_by_label: PMap<(Name, Name, Name), Set<Name>>,
    pods_by_node: PMap<Name, Set<NsName>>,
    pods_by_ip: PMap<IpAddr, Set<NsName>>,
    /// Namespaces that hold pods, with how many.
    pod_namespaces: Arc<std::collections::BTreeMap<Name, usize>>,
    /// Services by selector (selector-less ones select nothing and are not indexed).
    services_by_selector: Arc<SelectorIndex>,
    services_by_vip: PMap<IpAddr, Set<NsName>>,
    /// Service -> the names of the pods it selects (same namespace).
    endpoints: PMap<NsName, Set<Name>>,
    /// AuthorizationPolicies with a `selector`.
    policies_by_selector: Arc<SelectorIndex>,
}

impl Registry {
    pub fn new(mesh: MeshSettings, resources: impl IntoIterator<Item = Resource>) -> Self {
        Self::from_shared(mesh, resources.into_iter().map(Arc::new))
    }

    pub fn from_shared(
        mesh: MeshSettings,
        resources: impl IntoIterator<Item = Arc<Resource>>,
    ) -> Self {
        let mut reg = Registry {
            mesh,
            ..Default::default()
        };
        for r in resources {
            reg.put(r);
        }
        reg
    }

    pub fn len(&self) -> usize {
        self.kinds.values().map(PMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every resource, by kind (within a kind in no particular order).
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.kinds.values().flat_map(|m| m.values().map(|r| &**r))
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.kinds.get(&key.kind)?.get(key).map(|r| &**r)
    }

    pub fn get_shared(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.kinds.get(&key.kind)?.get(key)
    }

    /// The resources of one kind in key order (namespace, name): first-by-name rules rely on it.
    pub fn of_kind(&self, kind: Kind) -> std::vec::IntoIter<&Resource> {
        let mut v: Vec<&Resource> = match self.kinds.get(&kind) {
            Some(m) => m.values().map(|r| &**r).collect(),
            None => Vec::new(),
        };
        v.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
        v.into_iter()
    }

    /// How many resources of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        self.kinds.get(&kind).map_or(0, PMap::len)
    }

    /// Labels of a namespace (empty when no Namespace object exists).
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.get(&ResourceKey {
            kind: Kind::Namespace,
            namespace: Name::default(),
            name: ns.into(),
        })
        .map(|r| &r.meta.labels)
    }

    /// Every pod, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = Pod<'_>> {
        self.pods.values().filter_map(|e| e.pod())
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod<'_>> {
        self.pod_by_id(&(namespace.into(), name.into()))
    }

    fn pod_by_id(&self, id: &NsName) -> Option<Pod<'_>> {
        self.pods.get(id).and_then(|e| e.pod())
    }

    /// Pods scheduled on `node`, by (namespace, name).
    pub fn pods_on_node(&self, node: &str) -> impl Iterator<Item = Pod<'_>> {
        self.pods_by_node
            .get(node)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|id| self.pod_by_id(id))
    }

    /// Pods whose IP is `ip` (normally one).
    pub fn pods_by_ip(&self, ip: IpAddr) -> impl Iterator<Item = Pod<'_>> {
        self.pods_by_ip
            .get(&ip)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|id| self.pod_by_id(id))
    }

    /// Namespaces that hold at least one pod, in order.
    pub fn pod_namespaces(&self) -> impl Iterator<Item = &str> {
        self.pod_namespaces.keys().map(Name::as_str)
    }

    /// Pods of `ns` whose labels match `selector` (all of the namespace's for an empty one),
    /// by name.
    pub fn pods_selected(&self, ns: &str, selector: &Labels) -> Vec<Pod<'_>> {
        let Some((k, v)) = selector.iter().next() else {
            let mut all: Vec<Pod<'_>> = self.pods().filter(|p| p.namespace == ns).collect();
            all.sort_by(|a, b| a.name.cmp(b.name));
            return all;
        };
        let ns = Name::from(ns);
        self.pods_by_label
            .get(&(ns.clone(), k.clone(), v.clone()))
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|n| self.pod_by_id(&(ns.clone(), n.clone())))
            .filter(|p| labels_match(selector, p.labels))
            .collect()
    }

    pub fn services(&self) -> impl Iterator<Item = (&Resource, &ServiceSpec)> {
        self.kinds
            .get(&Kind::Service)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|r| match &r.spec {
                Spec::Service(s) => Some((&**r, &**s)),
                _ => None,
            })
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<(&Resource, &ServiceSpec)> {
        let r = self.get(&ResourceKey {
            kind: Kind::Service,
            namespace: namespace.into(),
            name: name.into(),
        })?;
        match &r.spec {
            Spec::Service(s) => Some((r, s)),
            _ => None,
        }
    }

    /// Services whose VIP is `ip`.
    pub fn services_by_vip(&self, ip: IpAddr) -> impl Iterator<Item = (&Resource, &ServiceSpec)> {
        self.services_by_vip
            .get(&ip)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|(ns, n)| self.service(ns, n))
    }

    /// Pods selected by a Service (same namespace, selector labels); none for selector-less.
    pub fn endpoints<'a>(
        &'a self,
        svc: &'a Resource,
        _spec: &'a ServiceSpec,
    ) -> impl Iterator<Item = Pod<'a>> + 'a {
        let ns = svc.namespace_name();
        self.endpoints
            .get(&(ns.clone(), svc.meta.name.clone()))
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(move |n| self.pod_by_id(&(ns.clone(), n.clone())))
    }

    /// The Services that select `pod`, by name.
    pub fn services_selecting<'a>(&'a self, pod: &Pod<'_>) -> Vec<(&'a Resource, &'a ServiceSpec)> {
        self.services_by_selector
            .candidates(pod.namespace, pod.labels, None)
            .into_iter()
            .filter_map(|(ns, n)| self.service(&ns, &n))
            .filter(|(_, s)| labels_match(&s.selector, pod.labels))
            .collect()
    }

    /// The AuthorizationPolicies whose `selector` matches `pod` (its namespace's and the root
    /// namespace's), in key order.
    pub fn policies_selecting<'a>(&'a self, pod: &Pod<'_>) -> Vec<&'a Resource> {
        self.policies_by_selector
            .candidates(pod.namespace, pod.labels, Some(&self.mesh.root_namespace))
            .into_iter()
            .filter_map(|(ns, n)| {
                self.get(&ResourceKey {
                    kind: Kind::AuthorizationPolicy,
                    namespace: ns,
                    name: n,
                })
            })
            .filter(|r| match &r.spec {
                Spec::AuthorizationPolicy(ap) => ap
                    .selector
                    .as_ref()
                    .is_some_and(|s| labels_match(&s.match_labels, pod.labels)),
                _ => false,
            })
            .collect()
    }

    /// Istio's rules: the pod label wins over the namespace label; sidecar injection is
    /// `istio-injection=enabled` on the namespace or `sidecar.istio.io/inject=true` on the pod.
    pub fn dataplane_mode(&self, pod: &Pod<'_>) -> DataplaneMode {
        let ns = self.namespace_labels(pod.namespace);
        fn get<'a>(l: Option<&'a Labels>, k: &str) -> Option<&'a str> {
            l.and_then(|l| l.get(k)).map(Name::as_str)
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
        self.pods_by_node.get(node).is_some_and(|s| {
            s.range((Name::from(ns), Name::default())..)
                .next()
                .is_some_and(|(n, _)| n == ns)
        })
    }
}
