//! One immutable snapshot of the mesh (registry plus its encoded translation), published with
//! one swap through a watch channel; every stream reads the latest on change.
//!
//! Each snapshot also says what changed to make it (`Changes`, for the last generations), so a
//! stream that sent generation N only looks at the names that changed since N, and a change to
//! one pod costs each stream the same whatever the size of the mesh.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use spar_model::{Kind, Resource, ResourceKey};

use crate::encoded::{Names, Xds};
use crate::incremental;
use crate::registry::{MeshSettings, NsName, Registry};
use crate::translate::translate;

/// How many generations of changes a snapshot remembers; a stream further behind compares
/// whole views instead.
const HISTORY: usize = 64;

/// What changed from one generation to the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// xDS resources added, changed or removed, by name.
    pub names: Names,
    /// Pods whose resource changed (their sidecars recompute their views).
    pub pods: BTreeSet<NsName>,
    /// Nodes that gained, lost or changed a pod (their node proxies recompute policies).
    pub nodes: BTreeSet<String>,
    /// Kinds of the resources that changed.
    pub kinds: BTreeSet<Kind>,
    /// The fetched JWKS changed.
    pub jwks: bool,
}

impl Changes {
    fn merge(&mut self, o: &Changes) {
        self.names
            .addresses
            .extend(o.names.addresses.iter().cloned());
        self.names
            .authorizations
            .extend(o.names.authorizations.iter().cloned());
        self.names.l7.extend(o.names.l7.iter().cloned());
        self.pods.extend(o.pods.iter().cloned());
        self.nodes.extend(o.nodes.iter().cloned());
        self.kinds.extend(o.kinds.iter().copied());
        self.jwks |= o.jwks;
    }
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub generation: u64,
    pub registry: Registry,
    pub xds: Xds,
    /// (generation, what changed to make it), oldest first, ending with this one.
    history: VecDeque<(u64, Arc<Changes>)>,
}

impl Snapshot {
    /// A snapshot from scratch. `jwks`: what the control plane fetched for each `jwksUri`.
    pub fn build(
        generation: u64,
        registry: Registry,
        jwks: BTreeMap<String, String>,
    ) -> Arc<Snapshot> {
        let translated = translate(&registry);
        let xds = Xds::build(&registry, &translated, jwks);
        Arc::new(Snapshot {
            generation,
            registry,
            xds,
            history: VecDeque::new(),
        })
    }

    /// The snapshot after `prev` once the resources under `changed` were put or deleted (the
    /// registry given already holds them).
    pub fn next(
        prev: &Snapshot,
        generation: u64,
        registry: Registry,
        changed: &BTreeSet<ResourceKey>,
        jwks: BTreeMap<String, String>,
    ) -> Arc<Snapshot> {
        // Pod, Service and AuthorizationPolicy changes (the churn of a large mesh) retranslate
        // only what depends on them; anything else may reach every pod and retranslates all.
        let (xds, names) = if incremental::handles(&registry, changed) {
            let (mut xds, names) =
                incremental::apply(&prev.registry, &prev.xds, &registry, changed);
            xds.jwks = Arc::new(jwks);
            (xds, names)
        } else {
            let translated = translate(&registry);
            let xds = Xds::build(&registry, &translated, jwks);
            let names = prev.xds.changes(&xds);
            (xds, names)
        };
        let mut changes = Changes {
            jwks: prev.xds.jwks != xds.jwks,
            kinds: changed.iter().map(|k| k.kind).collect(),
            ..Default::default()
        };
        let node_of = |reg: &Registry, ns: &str, name: &str| {
            reg.pod(ns, name).and_then(|p| p.node().map(str::to_string))
        };
        for k in changed.iter().filter(|k| k.kind == Kind::Pod) {
            changes.pods.insert((k.namespace.clone(), k.name.clone()));
        }
        // A node's policies follow its pods and what their workloads list.
        let prefix = format!("{}//Pod/", registry.mesh.cluster_id);
        let workloads = names.addresses.iter().filter_map(|n| {
            let (ns, name) = n.strip_prefix(&prefix)?.split_once('/')?;
            Some((ns.into(), name.into()))
        });
        let touched: BTreeSet<NsName> = changes.pods.iter().cloned().chain(workloads).collect();
        for (ns, name) in &touched {
            changes.nodes.extend(node_of(&prev.registry, ns, name));
            changes.nodes.extend(node_of(&registry, ns, name));
        }
        changes.names = names;
        let mut history = prev.history.clone();
        history.push_back((generation, Arc::new(changes)));
        while history.len() > HISTORY {
            history.pop_front();
        }
        Arc::new(Snapshot {
            generation,
            registry,
            xds,
            history,
        })
    }

    /// The snapshot after `prev` for the resources `merged` (every source, merged): the
    /// registry changes by the resources that differ from `prev`'s. `jwks` sees the new
    /// registry and answers the keys fetched for it.
    pub fn advance(
        prev: &Snapshot,
        generation: u64,
        mesh: &MeshSettings,
        merged: &BTreeMap<ResourceKey, Arc<Resource>>,
        jwks: impl FnOnce(&Registry) -> BTreeMap<String, String>,
    ) -> Arc<Snapshot> {
        let put = merged.iter().map(|(k, r)| (k.clone(), Some(r.clone())));
        let gone = prev
            .registry
            .resources()
            .map(Resource::key)
            .filter(|k| !merged.contains_key(k))
            .map(|k| (k, None));
        Snapshot::apply(prev, generation, mesh, put.chain(gone), jwks)
    }

    /// The snapshot after `prev` once each key of `delta` is put (`Some`) or deleted (`None`);
    /// entries equal to what `prev` holds change nothing. What a publication costs depends on
    /// the size of the delta, not of the mesh (except when a change reaches every pod).
    pub fn apply(
        prev: &Snapshot,
        generation: u64,
        mesh: &MeshSettings,
        delta: impl IntoIterator<Item = (ResourceKey, Option<Arc<Resource>>)>,
        jwks: impl FnOnce(&Registry) -> BTreeMap<String, String>,
    ) -> Arc<Snapshot> {
        if prev.generation == 0 {
            let all = delta.into_iter().filter_map(|(_, r)| r);
            let registry = Registry::from_shared(mesh.clone(), all);
            let jwks = jwks(&registry);
            return Snapshot::build(generation, registry, jwks);
        }
        let mut registry = prev.registry.clone();
        let mut changed = BTreeSet::new();
        for (k, r) in delta {
            match r {
                Some(r) => {
                    let same = prev
                        .registry
                        .get_shared(&k)
                        .is_some_and(|o| Arc::ptr_eq(o, &r) || **o == *r);
                    if same {
                        continue;
                    }
                    registry.put(r);
                }
                None => {
                    if registry.delete(&k).is_none() {
                        continue;
                    }
                }
            }
            changed.insert(k);
        }
        let jwks = jwks(&registry);
        Snapshot::next(prev, generation, registry, &changed, jwks)
    }

    /// Everything that changed after generation `since` up to this one; None when this
    /// snapshot no longer remembers that far back (compare whole views then).
    pub fn changes_since(&self, since: u64) -> Option<Changes> {
        if since == self.generation {
            return Some(Changes::default());
        }
        let first = self.history.front()?.0;
        if since + 1 < first || since > self.generation {
            return None;
        }
        let mut out = Changes::default();
        for (_, c) in self.history.iter().filter(|(g, _)| *g > since) {
            out.merge(c);
        }
        Some(out)
    }
}
