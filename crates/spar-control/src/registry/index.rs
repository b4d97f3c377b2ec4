//! Keeping the registry's indexes true as resources are put and deleted. Every index change
//! touches only the entries of the one resource (and, for a pod, the services that select
//! it; for a service, the pods it selects).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use spar_model::{Kind, Labels, Name, Resource, ResourceKey, Spec, labels_match};

use super::{NsName, PodEntry, Registry};
use crate::pmap::PMap;

/// Resources found by label selector: indexed by the selector's first label, so a pod's
/// candidates are looked up by each of its own labels and then matched in full.
#[derive(Debug, Clone, Default)]
pub(super) struct SelectorIndex {
    by_label: HashMap<(Name, Name, Name), BTreeSet<Name>>,
    /// Selectors without labels (they match every pod of their namespace).
    match_all: BTreeMap<Name, BTreeSet<Name>>,
}

impl SelectorIndex {
    fn add(&mut self, ns: &Name, name: &Name, selector: &Labels) {
        match selector.iter().next() {
            Some((k, v)) => self
                .by_label
                .entry((ns.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(name.clone()),
            None => self
                .match_all
                .entry(ns.clone())
                .or_default()
                .insert(name.clone()),
        };
    }

    fn remove(&mut self, ns: &Name, name: &Name, selector: &Labels) {
        match selector.iter().next() {
            Some((k, v)) => {
                let key = (ns.clone(), k.clone(), v.clone());
                if let Some(s) = self.by_label.get_mut(&key) {
                    s.remove(name);
                    if s.is_empty() {
                        self.by_label.remove(&key);
                    }
                }
            }
            None => {
                if let Some(s) = self.match_all.get_mut(ns) {
                    s.remove(name);
                    if s.is_empty() {
                        self.match_all.remove(ns.as_str());
                    }
                }
            }
        }
    }

    /// Everything in `ns` (and `also`) that may select a pod with `labels`, in (ns, name)
    /// order; callers match the whole selector.
    pub(super) fn candidates(
        &self,
        ns: &str,
        labels: &Labels,
        also: Option<&str>,
    ) -> BTreeSet<NsName> {
        let mut out = BTreeSet::new();
        for n in std::iter::once(ns).chain(also.filter(|a| *a != ns)) {
            let n = Name::from(n);
            for (k, v) in labels {
                if let Some(s) = self.by_label.get(&(n.clone(), k.clone(), v.clone())) {
                    out.extend(s.iter().map(|x| (n.clone(), x.clone())));
                }
            }
            if let Some(s) = self.match_all.get(n.as_str()) {
                out.extend(s.iter().map(|x| (n.clone(), x.clone())));
            }
        }
        out
    }
}

fn set_add<K: Ord + std::hash::Hash + Clone, T: Ord + Clone>(
    m: &mut PMap<K, Arc<BTreeSet<T>>>,
    k: K,
    v: T,
) {
    m.update(k, |s| {
        let mut s = s.unwrap_or_default();
        Arc::make_mut(&mut s).insert(v);
        Some(s)
    });
}

fn set_remove<K: Ord + std::hash::Hash + Clone, T: Ord + Clone>(
    m: &mut PMap<K, Arc<BTreeSet<T>>>,
    k: K,
    v: &T,
) {
    if !m.get(&k).is_some_and(|s| s.contains(v)) {
        return;
    }
    m.update(k, |s| {
        let mut s = s?;
        Arc::make_mut(&mut s).remove(v);
        (!s.is_empty()).then_some(s)
    });
}

fn vips(spec: &spar_model::k8s::ServiceSpec) -> BTreeSet<IpAddr> {
    spec.cluster_ips
        .iter()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect()
}

impl Registry {
    /// Add or replace a resource; returns the one it replaced.
    pub fn put(&mut self, r: Arc<Resource>) -> Option<Arc<Resource>> {
        let key = r.key();
        let old = self.delete(&key);
        self.index_add(&r);
        self.kinds.entry(key.kind).or_default().insert(key, r);
        old
    }

    /// Remove a resource; returns it.
    pub fn delete(&mut self, key: &ResourceKey) -> Option<Arc<Resource>> {
        let old = self.kinds.get_mut(&key.kind)?.remove(key)?;
        self.index_remove(&old);
        Some(old)
    }

    fn index_add(&mut self, r: &Arc<Resource>) {
        let (ns, name) = (r.namespace_name(), r.meta.name.clone());
        match &r.spec {
            Spec::Pod(spec, status) => {
                let ip = status.pod_ip.as_deref().and_then(|s| s.parse().ok());
                let id: NsName = (ns.clone(), name.clone());
                for (k, v) in &r.meta.labels {
                    set_add(
                        &mut self.pods_by_label,
                        (ns.clone(), k.clone(), v.clone()),
                        name.clone(),
                    );
                }
                if let Some(node) = &spec.node_name {
                    set_add(&mut self.pods_by_node, node.clone(), id.clone());
                }
                if let Some(ip) = ip {
                    set_add(&mut self.pods_by_ip, ip, id.clone());
                }
                *Arc::make_mut(&mut self.pod_namespaces)
                    .entry(ns.clone())
                    .or_default() += 1;
                let entry = Arc::new(PodEntry { res: r.clone(), ip });
                self.pods.insert(id, entry.clone());
                if let Some(pod) = entry.pod() {
                    let svcs: Vec<NsName> = self
                        .services_selecting(&pod)
                        .into_iter()
                        .map(|(s, _)| (s.namespace_name(), s.meta.name.clone()))
                        .collect();
                    for s in svcs {
                        set_add(&mut self.endpoints, s, name.clone());
                    }
                }
            }
            Spec::Service(spec) => {
                let id: NsName = (ns.clone(), name.clone());
                for ip in vips(spec) {
                    set_add(&mut self.services_by_vip, ip, id.clone());
                }
                if !spec.selector.is_empty() {
                    Arc::make_mut(&mut self.services_by_selector).add(&ns, &name, &spec.selector);
                    let pods: BTreeSet<Name> = self
                        .pods_selected(&ns, &spec.selector)
                        .iter()
                        .map(|p| Name::from(p.name))
                        .collect();
                    if !pods.is_empty() {
                        self.endpoints.insert(id, Arc::new(pods));
                    }
                }
            }
            Spec::AuthorizationPolicy(ap) => {
                if let Some(sel) = &ap.selector {
                    Arc::make_mut(&mut self.policies_by_selector).add(
                        &ns,
                        &name,
                        &sel.match_labels,
                    );
                }
            }
            _ => {}
        }
    }

    fn index_remove(&mut self, r: &Arc<Resource>) {
        let (ns, name) = (r.namespace_name(), r.meta.name.clone());
        match &r.spec {
            Spec::Pod(spec, _) => {
                let id: NsName = (ns.clone(), name.clone());
                let Some(entry) = self.pods.remove(&id) else {
                    return;
                };
                for (k, v) in &r.meta.labels {
                    set_remove(
                        &mut self.pods_by_label,
                        (ns.clone(), k.clone(), v.clone()),
                        &name,
                    );
                }
                if let Some(node) = &spec.node_name {
                    set_remove(&mut self.pods_by_node, node.clone(), &id);
                }
                if let Some(ip) = entry.ip {
                    set_remove(&mut self.pods_by_ip, ip, &id);
                }
                let counts = Arc::make_mut(&mut self.pod_namespaces);
                if let Some(c) = counts.get_mut(&ns) {
                    *c -= 1;
                    if *c == 0 {
                        counts.remove(&ns);
                    }
                }
                if let Some(pod) = entry.pod() {
                    let svcs: Vec<NsName> = self
                        .services_selecting(&pod)
                        .into_iter()
                        .map(|(s, _)| (s.namespace_name(), s.meta.name.clone()))
                        .collect();
                    for s in svcs {
                        set_remove(&mut self.endpoints, s, &name);
                    }
                }
            }
            Spec::Service(spec) => {
                let id: NsName = (ns.clone(), name.clone());
                for ip in vips(spec) {
                    set_remove(&mut self.services_by_vip, ip, &id);
                }
                if !spec.selector.is_empty() {
                    Arc::make_mut(&mut self.services_by_selector).remove(
                        &ns,
                        &name,
                        &spec.selector,
                    );
                }
                self.endpoints.remove(&id);
            }
            Spec::AuthorizationPolicy(ap) => {
                if let Some(sel) = &ap.selector {
                    Arc::make_mut(&mut self.policies_by_selector).remove(
                        &ns,
                        &name,
                        &sel.match_labels,
                    );
                }
            }
            _ => {}
        }
    }

    /// Checks every index against a scan of the resources (tests use it after random changes).
    pub fn check_indexes(&self) -> Result<(), String> {
        for (svc, spec) in self.services() {
            let want: Vec<&str> = {
                let mut v: Vec<&str> = if spec.selector.is_empty() {
                    Vec::new()
                } else {
                    self.pods()
                        .filter(|p| {
                            p.namespace == svc.namespace() && labels_match(&spec.selector, p.labels)
                        })
                        .map(|p| p.name)
                        .collect()
                };
                v.sort();
                v
            };
            let got: Vec<&str> = self.endpoints(svc, spec).map(|p| p.name).collect();
            if got != want {
                return Err(format!("endpoints of {}: {got:?} != {want:?}", svc.key()));
            }
        }
        let pods = self.count(Kind::Pod);
        if pods != self.pods.len() {
            return Err(format!("{pods} pods, {} indexed", self.pods.len()));
        }
        Ok(())
    }
}
