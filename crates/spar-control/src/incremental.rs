//! Incremental translation: a publication whose changes are all Pods, Services or
//! AuthorizationPolicies retranslates only what depends on them, starting from the previous
//! snapshot's encoded resources.
//!
//! What depends on what (everything else in `translate` reads none of these):
//! - a pod: its workload address (and the policy names it lists), the policies generated for
//!   it (`spar-peer-authentication-<pod>`, and the waypoint-only DENY its namespace shares
//!   between the pods of one waypoint), and the DestinationRule subsets of the Services that
//!   select it, old labels or new (subsets list workload uids);
//! - a Service: its address, the pods its old or new selector selects (their workloads list
//!   it), and the L7 hosts (recomputed from the registry; no pod is read but subsets');
//! - an AuthorizationPolicy: its L4 translation and scope, and the pods its old or new
//!   selector selects (their workloads list it).
//!
//! A change of any other kind (a namespace's labels, a PeerAuthentication, a
//! VirtualService, ...) can reach every pod and goes through the full translation. The cost of
//! a pod change is the same in a 1,000-pod mesh as in a 100,000-pod one. `sync_tests` checks
//! after every random change that the result equals a full translation.

use std::collections::BTreeSet;
use std::sync::Arc;

use spar_model::{Kind, Resource, ResourceKey, Spec};
use spar_xds::security as xsec;
use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

use crate::encoded::{AuthItem, Item, L7Item, Names, Xds, encode, is_generated};
use crate::registry::{NsName, Registry};
use crate::translate::{authorization, l7, pod_output, service, service_host};

/// Whether a change to `changed` can be translated incrementally from `reg`'s predecessor.
pub fn handles(reg: &Registry, changed: &BTreeSet<ResourceKey>) -> bool {
    changed.iter().all(|k| match k.kind {
        Kind::Pod | Kind::AuthorizationPolicy => true,
        // A ServiceEntry host may take a Service's address name: then translate whole.
        Kind::Service => reg.count(Kind::ServiceEntry) == 0,
        _ => false,
    })
}

/// `prev` (translated from `prev_reg`) updated for the `changed` keys as they are in `reg`
/// (`handles` said yes), and the names of the resources that differ.
pub fn apply(
    prev_reg: &Registry,
    prev: &Xds,
    reg: &Registry,
    changed: &BTreeSet<ResourceKey>,
) -> (Xds, Names) {
    let mut x = prev.clone();
    let mut names = Names::default();
    let mut pods: BTreeSet<NsName> = BTreeSet::new();
    let mut hosts = false;
    for k in changed {
        match k.kind {
            Kind::Pod => {
                pods.insert((k.namespace.clone(), k.name.clone()));
            }
            Kind::Service => {
                hosts = true;
                for r in [prev_reg, reg] {
                    if let Some((svc, spec)) = r.service(&k.namespace, &k.name) {
                        pods.extend(r.endpoints(svc, spec).map(|p| ns_name(p.namespace, p.name)));
                    }
                }
                service_address(prev_reg, prev, reg, k, &mut x, &mut names);
            }
            Kind::AuthorizationPolicy => {
                for r in [prev_reg, reg] {
                    pods.extend(selected(r, r.get(k)));
                }
                policy(reg, k, &mut x, &mut names);
            }
            _ => {}
        }
    }
    let subsets = pod_updates(prev_reg, prev, reg, &pods, &mut x, &mut names);
    if hosts {
        all_hosts(reg, &mut x, &mut names);
    } else {
        subset_updates(reg, subsets, &mut x, &mut names);
    }
    (x, names)
}

fn ns_name(ns: &str, name: &str) -> NsName {
    (ns.into(), name.into())
}

/// Pods an AuthorizationPolicy's selector selects (its namespace's; every namespace's for the
/// root namespace). None without a selector: such a policy is not listed on workloads.
fn selected(reg: &Registry, r: Option<&Resource>) -> Vec<NsName> {
    let Some((r, Spec::AuthorizationPolicy(ap))) = r.map(|r| (r, &r.spec)) else {
        return Vec::new();
    };
    let Some(sel) = &ap.selector else {
        return Vec::new();
    };
    let namespaces: Vec<String> = if r.namespace() == reg.mesh.root_namespace {
        reg.pod_namespaces().map(str::to_string).collect()
    } else {
        vec![r.namespace().to_string()]
    };
    namespaces
        .iter()
        .flat_map(|ns| reg.pods_selected(ns, &sel.match_labels))
        .map(|p| ns_name(p.namespace, p.name))
        .collect()
}

fn put_address(prev: &Xds, x: &mut Xds, names: &mut Names, key: Arc<str>, item: Option<Item>) {
    let changed = match (prev.addresses.get(&*key), &item) {
        (Some(o), Some(n)) => o.version != n.version,
        (None, None) => false,
        _ => true,
    };
    match item {
        Some(i) => {
            x.addresses.insert(key.clone(), i);
        }
        None => {
            x.addresses.remove(&*key);
        }
    }
    if changed {
        names.addresses.insert(key);
    } else {
        names.addresses.remove(&*key);
    }
}

fn service_address(
    prev_reg: &Registry,
    prev: &Xds,
    reg: &Registry,
    k: &ResourceKey,
    x: &mut Xds,
    names: &mut Names,
) {
    let old = prev_reg
        .get(k)
        .map(|r| format!("{}/{}", r.namespace(), service_host(prev_reg, r)));
    let new = reg.service(&k.namespace, &k.name).map(|(r, spec)| {
        let key: Arc<str> = format!("{}/{}", r.namespace(), service_host(reg, r)).into();
        let a = spar_xds::workload::Address {
            r#type: Some(spar_xds::workload::address::Type::Service(service(
                reg, r, spec,
            ))),
        };
        (key, encode(ADDRESS_TYPE, &a))
    });
    if let Some(old) = old
        && new.as_ref().is_none_or(|(k, _)| **k != *old)
    {
        put_address(prev, x, names, old.into(), None);
    }
    if let Some((key, item)) = new {
        put_address(prev, x, names, key, Some(item));
    }
}

/// An AuthorizationPolicy's L4 translation and the scope indexes that select it.
fn policy(reg: &Registry, k: &ResourceKey, x: &mut Xds, names: &mut Names) {
    let key: Arc<str> = format!("{}/{}", k.namespace, k.name).into();
    let new = reg.get(k).and_then(|r| match &r.spec {
        Spec::AuthorizationPolicy(ap) => authorization(reg, r, ap),
        _ => None,
    });
    let old = x.authorizations.remove(&*key);
    Arc::make_mut(&mut x.global).remove(&key);
    if let Some(set) = Arc::make_mut(&mut x.by_namespace).get_mut(k.namespace.as_str()) {
        set.remove(&key);
        if set.is_empty() {
            Arc::make_mut(&mut x.by_namespace).remove(k.namespace.as_str());
        }
    }
    let Some(a) = new else {
        if old.is_some() {
            names.authorizations.insert(key);
        }
        return;
    };
    match xsec::Scope::try_from(a.scope) {
        Ok(xsec::Scope::Global) => {
            Arc::make_mut(&mut x.global).insert(key.clone());
        }
        Ok(xsec::Scope::Namespace) => {
            Arc::make_mut(&mut x.by_namespace)
                .entry(a.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        _ => {}
    }
    let item = AuthItem {
        res: encode(AUTHORIZATION_TYPE, &a),
        scope: a.scope,
        namespace: a.namespace.clone(),
        peer_authn: false,
    };
    let same = old.is_some_and(|o| {
        o.res.version == item.res.version && o.scope == item.scope && !o.peer_authn
    });
    if !same {
        names.authorizations.insert(key.clone());
    }
    x.authorizations.insert(key, Arc::new(item));
}

/// Retranslate `pods`; returns the Services (namespace, name) whose subsets may have changed.
fn pod_updates(
    prev_reg: &Registry,
    prev: &Xds,
    reg: &Registry,
    pods: &BTreeSet<NsName>,
    x: &mut Xds,
    names: &mut Names,
) -> BTreeSet<NsName> {
    // Generated policies the changed pods listed before; dropped below unless still listed.
    let mut listed_before: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut hosts: BTreeSet<NsName> = BTreeSet::new();
    for (ns, name) in pods {
        let uid: Arc<str> = format!("{}//Pod/{ns}/{name}", reg.mesh.cluster_id).into();
        if let Some(old) = prev.listed.get(&uid) {
            listed_before.extend(old.iter().filter(|k| is_generated(k)).cloned());
        }
        for r in [prev_reg, reg] {
            if let Some(p) = r.pod(ns, name) {
                hosts.extend(
                    r.services_selecting(&p)
                        .into_iter()
                        .map(|(s, _)| ns_name(s.namespace(), s.name())),
                );
            }
        }
        let out = reg.pod(ns, name).and_then(|p| pod_output(reg, &p));
        let Some(out) = out else {
            put_address(prev, x, names, uid.clone(), None);
            x.set_listed(&uid, &[]);
            continue;
        };
        let listed = match &out.address.r#type {
            Some(spar_xds::workload::address::Type::Workload(w)) => &w.authorization_policies[..],
            _ => &[],
        };
        x.set_listed(&uid, listed);
        put_address(
            prev,
            x,
            names,
            uid,
            Some(encode(ADDRESS_TYPE, &out.address)),
        );
        for g in out.generated {
            let key: Arc<str> = g.key.as_str().into();
            let item = AuthItem {
                res: encode(AUTHORIZATION_TYPE, &g.policy),
                scope: g.policy.scope,
                namespace: g.policy.namespace.clone(),
                peer_authn: g.peer_authn,
            };
            let same = x.authorizations.get(&*key).is_some_and(|o| {
                o.res.version == item.res.version
                    && o.scope == item.scope
                    && o.peer_authn == item.peer_authn
            });
            if !same {
                names.authorizations.insert(key.clone());
                x.authorizations.insert(key, Arc::new(item));
            }
        }
    }
    // A generated policy stays while any workload lists it (the waypoint-only one is shared by
    // a namespace's pods; a pod's PeerAuthentication one is its own).
    for key in listed_before {
        if !x.listers.contains_key(&*key) && x.authorizations.remove(&*key).is_some() {
            names.authorizations.insert(key);
        }
    }
    hosts
}

/// The DestinationRule subsets of `services`, which list workload uids.
fn subset_updates(reg: &Registry, services: BTreeSet<NsName>, x: &mut Xds, names: &mut Names) {
    for (ns, svc) in services {
        let Some((r, spec)) = reg.service(&ns, &svc) else {
            continue;
        };
        let key: Arc<str> = format!("{ns}/{}", service_host(reg, r)).into();
        let Some(item) = x.l7.get(&*key) else {
            continue;
        };
        let Some((_, dr)) = &item.host.destination_rule else {
            continue;
        };
        let subsets = l7::subsets(reg, r, spec, dr);
        if subsets != item.host.subsets {
            let mut host = (*item.host).clone();
            host.subsets = subsets;
            x.l7.insert(key.clone(), Arc::new(L7Item::new(host)));
            names.l7.insert(key);
        }
    }
}

/// Every L7 host again (a Service came, went or changed its ports): VirtualServices,
/// DestinationRules and routes bind by host name, so the hosts are recomputed from the
/// registry (no pod is read but the subsets' endpoints) and only those that differ replaced.
fn all_hosts(reg: &Registry, x: &mut Xds, names: &mut Names) {
    let hosts = l7::hosts(reg);
    let gone: Vec<Arc<str>> =
        x.l7.keys()
            .filter(|k| !hosts.contains_key(&***k))
            .cloned()
            .collect();
    for k in gone {
        x.l7.remove(&*k);
        names.l7.insert(k);
    }
    for (k, h) in hosts {
        if x.l7.get(k.as_str()).is_some_and(|o| *o.host == h) {
            continue;
        }
        let k: Arc<str> = k.as_str().into();
        x.l7.insert(k.clone(), Arc::new(L7Item::new(h)));
        names.l7.insert(k);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use spar_model::{Resource, ResourceKey};

    use super::*;
    use crate::registry::MeshSettings;
    use crate::snapshot::Snapshot;
    use crate::translate::translate;

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp, spar.io/waypoint-only: 'true'}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: a, labels: {istio.io/waypoint-for: all}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-8080, namespace: a}
spec: {selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: STRICT}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec: {selector: {app: web}, clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: a}
spec: {host: web, subsets: [{name: v1, labels: {version: v1}}]}
";

    fn pod(name: &str, version: &str, ip: u8) -> Arc<Resource> {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: a, labels: {{app: web, version: {version}}}}}\n\
             spec: {{nodeName: n1}}\nstatus: {{podIP: 10.0.0.{ip}}}\n"
        );
        let l = spar_model::load_str("t", &yaml);
        assert!(!l.has_errors(), "{:?}", l.problems);
        Arc::new(l.resources.into_iter().next().expect("one pod").0)
    }

    fn key(name: &str) -> ResourceKey {
        pod(name, "v1", 1).key()
    }

    /// Steps of pod changes; after each, what the snapshot holds (built incrementally) and
    /// what full translation says.
    #[test]
    fn pod_changes_update_workloads_generated_policies_and_subsets_like_a_full_translation() {
        let mesh = MeshSettings::default();
        let l = spar_model::load_str("t", MESH);
        assert!(!l.has_errors(), "{:?}", l.problems);
        let mut merged: BTreeMap<ResourceKey, Arc<Resource>> = l
            .resources
            .into_iter()
            .map(|(r, _)| (r.key(), Arc::new(r)))
            .collect();
        let mut snap =
            Snapshot::advance(&Snapshot::default(), 1, &mesh, &merged, |_| BTreeMap::new());
        let only = "a/spar-waypoint-only-a-wp";
        // (change, waypoint-only policy present, PeerAuthentication policies, v1 subset)
        type Step = (
            Option<(&'static str, &'static str, u8)>,
            &'static str,
            bool,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let steps: Vec<Step> = vec![
            (Some(("p1", "v1", 1)), "", true, vec!["p1"], vec!["p1"]),
            (
                Some(("p2", "v2", 2)),
                "",
                true,
                vec!["p1", "p2"],
                vec!["p1"],
            ),
            (
                Some(("p2", "v1", 2)),
                "",
                true,
                vec!["p1", "p2"],
                vec!["p1", "p2"],
            ),
            (None, "p1", true, vec!["p2"], vec!["p2"]),
            (None, "p2", false, vec![], vec![]),
        ];
        for (i, (put, del, want_only, want_pa, want_v1)) in steps.into_iter().enumerate() {
            match put {
                Some((n, v, ip)) => {
                    merged.insert(key(n), pod(n, v, ip));
                }
                None => {
                    merged.remove(&key(del));
                }
            }
            snap = Snapshot::advance(&snap, i as u64 + 2, &mesh, &merged, |_| BTreeMap::new());
            let x = &snap.xds;
            assert_eq!(x.authorizations.contains_key(only), want_only, "step {i}");
            let mut pa: Vec<String> = x
                .authorizations
                .keys()
                .filter_map(|k| {
                    k.strip_prefix("a/spar-peer-authentication-")
                        .map(str::to_string)
                })
                .collect();
            pa.sort();
            assert_eq!(pa, want_pa, "step {i}");
            let host = &x.l7.get("a/web.a.svc.cluster.local").expect("host").host;
            let v1: Vec<&str> = host.subsets["v1"]
                .uids
                .iter()
                .map(|u| u.rsplit('/').next().unwrap_or(""))
                .collect();
            assert_eq!(v1, want_v1, "step {i}");
            let full = Xds::build(&snap.registry, &translate(&snap.registry), BTreeMap::new());
            let versions = |x: &Xds| {
                let mut v: Vec<(String, String)> = x
                    .addresses
                    .iter()
                    .map(|(k, r)| (k.to_string(), r.version.clone()))
                    .chain(
                        x.authorizations
                            .iter()
                            .map(|(k, a)| (k.to_string(), a.res.version.clone())),
                    )
                    .collect();
                v.sort();
                v
            };
            assert_eq!(versions(x), versions(&full), "step {i}");
        }
    }
}
