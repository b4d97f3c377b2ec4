//! The translated mesh as proxies receive it: every xDS resource encoded once, with its
//! content-derived version, shared by every stream that sends it (streams never re-encode or
//! copy the mesh). Kept in persistent maps, so a snapshot and the next share what did not
//! change, and `changes` between two of them names exactly what did.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prost::Message;
use spar_xds::security as xsec;
use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, to_any};

use crate::pmap::PMap;
use crate::registry::Registry;
use crate::translate::{Translated, l7};

/// One encoded resource: what goes on the wire, and its version.
#[derive(Debug, PartialEq)]
pub struct Res {
    pub version: String,
    pub any: prost_types::Any,
}

pub type Item = Arc<Res>;

/// Encode `m` as `type_url`; the version is a hash of the bytes (the same in every process,
/// so a proxy reconnecting to a restarted control plane is not sent what it holds).
pub fn encode<M: Message>(type_url: &str, m: &M) -> Item {
    let any = to_any(type_url, m);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut h);
    Arc::new(Res {
        version: format!("{:016x}", h.finish()),
        any,
    })
}

/// An Authorization with what the per-proxy views select it by.
#[derive(Debug)]
pub struct AuthItem {
    pub res: Item,
    pub scope: i32,
    pub namespace: String,
    /// Generated from PeerAuthentication (sidecars get these at L4 too).
    pub peer_authn: bool,
}

/// One service host's L7 config: shared when no route depends on who is asking.
#[derive(Debug)]
pub struct L7Item {
    pub host: Arc<l7::Host>,
    /// The resolved, encoded routes when they are the same for every pod.
    pub shared: Option<Item>,
    /// The same for the pods of the waypoint whose routes the host has, when it has some.
    pub shared_waypoint: Option<Item>,
}

impl L7Item {
    pub(crate) fn new(host: l7::Host) -> L7Item {
        let per_source = |vs: &spar_model::istio::networking::VirtualService| {
            vs.http
                .iter()
                .flat_map(|r| &r.matches)
                .any(|m| !m.source_labels.is_empty() || m.source_namespace.is_some())
                || vs
                    .tcp
                    .iter()
                    .flat_map(|r| &r.matches)
                    .any(|m| !m.source_labels.is_empty() || m.source_namespace.is_some())
        };
        let shared = (!host
            .virtual_service
            .as_ref()
            .is_some_and(|(_, vs)| per_source(vs)))
        .then(|| {
            encode(
                L7_TYPE,
                &l7::resolve(&host, "", &spar_model::Labels::default()),
            )
        });
        let shared_waypoint = host
            .waypoint_routes
            .as_ref()
            .filter(|(_, _, vs)| !per_source(vs))
            .map(|((ns, name), _, _)| {
                let labels: spar_model::Labels = [(
                    spar_model::gateway_api::GATEWAY_NAME_LABEL.into(),
                    name.as_str().into(),
                )]
                .into();
                encode(L7_TYPE, &l7::resolve(&host, ns, &labels))
            });
        L7Item {
            host: Arc::new(host),
            shared,
            shared_waypoint,
        }
    }

    /// The routes as the pod in `ns` with `labels` sees them.
    pub fn for_pod(&self, ns: &str, labels: &spar_model::Labels) -> Item {
        let shared = if self.host.for_its_waypoint(ns, labels) {
            &self.shared_waypoint
        } else {
            &self.shared
        };
        match shared {
            Some(s) => s.clone(),
            None => encode(L7_TYPE, &l7::resolve(&self.host, ns, labels)),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Xds {
    pub addresses: PMap<Arc<str>, Item>,
    pub authorizations: PMap<Arc<str>, Arc<AuthItem>>,
    pub l7: PMap<Arc<str>, Arc<L7Item>>,
    /// Authorizations of Global scope, and of Namespace scope by namespace.
    pub global: Arc<BTreeSet<Arc<str>>>,
    pub by_namespace: Arc<BTreeMap<String, BTreeSet<Arc<str>>>>,
    /// Workload uid -> the authorizations it lists (node proxies get those of their pods).
    pub listed: PMap<Arc<str>, Arc<Vec<Arc<str>>>>,
    /// Generated policy (`is_generated`) -> how many workloads list it; it exists while some do.
    pub listers: PMap<Arc<str>, usize>,
    /// `jwksUri` -> the JWKS last fetched from it.
    pub jwks: Arc<BTreeMap<String, String>>,
}

/// Names of the policies the translation generates per pod (users cannot take these names:
/// `spar_model::validate` reserves them).
pub fn is_generated(key: &str) -> bool {
    key.split_once('/').is_some_and(|(_, n)| {
        spar_model::validate::GENERATED_POLICY_PREFIXES
            .iter()
            .any(|p| n.starts_with(p))
    })
}

impl Xds {
    /// Record the policies workload `uid` lists (none: forget it), keeping `listers` counted.
    pub fn set_listed(&mut self, uid: &Arc<str>, policies: &[String]) {
        if let Some(old) = self.listed.remove(&**uid) {
            for p in old.iter().filter(|p| is_generated(p)) {
                self.count_lister(p, false);
            }
        }
        if policies.is_empty() {
            return;
        }
        let listed: Vec<Arc<str>> = policies.iter().map(|p| Arc::from(p.as_str())).collect();
        for p in listed.iter().filter(|p| is_generated(p)) {
            self.count_lister(p, true);
        }
        self.listed.insert(uid.clone(), Arc::new(listed));
    }

    /// Count one more (`up`) or one fewer workload listing the generated policy `key`; the
    /// count is dropped at zero. Returns the count after.
    pub fn count_lister(&mut self, key: &Arc<str>, up: bool) -> usize {
        let now = match (self.listers.get(&**key).copied().unwrap_or(0), up) {
            (n, true) => n + 1,
            (n, false) => n.saturating_sub(1),
        };
        if now == 0 {
            self.listers.remove(&**key);
        } else {
            self.listers.insert(key.clone(), now);
        }
        now
    }
}

/// What differs between two `Xds`, by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Names {
    pub addresses: BTreeSet<Arc<str>>,
    pub authorizations: BTreeSet<Arc<str>>,
    pub l7: BTreeSet<Arc<str>>,
}

impl Xds {
    /// Encode a full translation.
    pub fn build(_reg: &Registry, t: &Translated, jwks: BTreeMap<String, String>) -> Xds {
        let mut x = Xds {
            jwks: Arc::new(jwks),
            ..Default::default()
        };
        let mut global = BTreeSet::new();
        let mut by_namespace: BTreeMap<String, BTreeSet<Arc<str>>> = BTreeMap::new();
        for (name, a) in &t.addresses {
            let name: Arc<str> = name.as_str().into();
            if let Some(spar_xds::workload::address::Type::Workload(w)) = &a.r#type {
                x.set_listed(&name, &w.authorization_policies);
            }
            x.addresses.insert(name, encode(ADDRESS_TYPE, a));
        }
        for (name, a) in &t.authorizations {
            let name: Arc<str> = name.as_str().into();
            match xsec::Scope::try_from(a.scope) {
                Ok(xsec::Scope::Global) => {
                    global.insert(name.clone());
                }
                Ok(xsec::Scope::Namespace) => {
                    by_namespace
                        .entry(a.namespace.clone())
                        .or_default()
                        .insert(name.clone());
                }
                _ => {}
            }
            let item = AuthItem {
                res: encode(AUTHORIZATION_TYPE, a),
                scope: a.scope,
                namespace: a.namespace.clone(),
                peer_authn: t.peer_authn.contains(&*name),
            };
            x.authorizations.insert(name, Arc::new(item));
        }
        for (name, h) in &t.l7 {
            x.l7.insert(name.as_str().into(), Arc::new(L7Item::new(h.clone())));
        }
        x.global = Arc::new(global);
        x.by_namespace = Arc::new(by_namespace);
        x
    }

    /// The names whose resources differ between `self` and `next` (added, changed, removed).
    pub fn changes(&self, next: &Xds) -> Names {
        fn diff<V: Clone>(
            a: &PMap<Arc<str>, V>,
            b: &PMap<Arc<str>, V>,
            same: impl Fn(&V, &V) -> bool,
        ) -> BTreeSet<Arc<str>> {
            let mut out: BTreeSet<Arc<str>> = b
                .iter()
                .filter(|(k, v)| !a.get(&**k).is_some_and(|o| same(o, v)))
                .map(|(k, _)| k.clone())
                .collect();
            out.extend(a.keys().filter(|k| !b.contains_key(&***k)).cloned());
            out
        }
        Names {
            addresses: diff(&self.addresses, &next.addresses, |a, b| {
                a.version == b.version
            }),
            authorizations: diff(&self.authorizations, &next.authorizations, |a, b| {
                a.res.version == b.res.version && a.scope == b.scope && a.peer_authn == b.peer_authn
            }),
            l7: diff(&self.l7, &next.l7, |a, b| a.host == b.host),
        }
    }
}
