//! Incremental translation: a publication whose changes are all Pods retranslates only what
//! depends on those pods, starting from the previous snapshot's encoded resources.
//!
//! What a pod's translation depends on, and so what a change to it can change (everything
//! else in `translate` reads no pod):
//! - its workload address (and the policy names it lists),
//! - the policies generated for it (`spar-peer-authentication-<pod>`, and the waypoint-only
//!   DENY its namespace shares between the pods of one waypoint),
//! - the L7 hosts of the Services that select it, old labels or new, whose DestinationRule
//!   has subsets (subsets list workload uids).
//!
//! A change of any other kind (a Service, a policy, a namespace's labels, ...) can reach many
//! pods and goes through the full translation. The cost of a pod change is therefore the same
//! in a 1,000-pod mesh as in a 100,000-pod one. `sync_tests` checks after every random change
//! that the result equals a full translation.

use std::collections::BTreeSet;
use std::sync::Arc;

use spar_xds::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

use crate::encoded::{AuthItem, L7Item, Names, Xds, encode};
use crate::registry::{NsName, Registry};
use crate::translate::{l7, pod_output, service_host};

/// `prev` (translated from `prev_reg`) updated for `pods` as they are in `reg`, and the names
/// of the resources that differ.
pub fn pods(
    prev_reg: &Registry,
    prev: &Xds,
    reg: &Registry,
    pods: &BTreeSet<NsName>,
) -> (Xds, Names) {
    let mut x = prev.clone();
    let mut names = Names::default();
    // Generated policies the changed pods listed before; dropped below unless still listed.
    let mut listed_before: BTreeSet<(String, Arc<str>)> = BTreeSet::new();
    let mut hosts: BTreeSet<(String, String)> = BTreeSet::new();
    for (ns, name) in pods {
        let uid: Arc<str> = format!("{}//Pod/{ns}/{name}", reg.mesh.cluster_id).into();
        if let Some(old) = prev.listed.get(&uid) {
            for key in old.iter().filter(|k| is_generated(k)) {
                listed_before.insert((ns.clone(), key.clone()));
            }
        }
        for r in [prev_reg, reg] {
            if let Some(p) = r.pod(ns, name) {
                hosts.extend(
                    r.services_selecting(&p)
                        .into_iter()
                        .map(|(s, _)| (s.namespace().to_string(), s.name().to_string())),
                );
            }
        }
        let out = reg.pod(ns, name).and_then(|p| pod_output(reg, &p));
        let Some(out) = out else {
            if x.addresses.remove(&*uid).is_some() {
                names.addresses.insert(uid.clone());
            }
            x.listed.remove(&*uid);
            continue;
        };
        let spar_xds::workload::Address {
            r#type: Some(spar_xds::workload::address::Type::Workload(w)),
        } = &out.address
        else {
            continue;
        };
        if w.authorization_policies.is_empty() {
            x.listed.remove(&*uid);
        } else {
            let listed = w
                .authorization_policies
                .iter()
                .map(|p| Arc::from(p.as_str()));
            x.listed.insert(uid.clone(), Arc::new(listed.collect()));
        }
        let item = encode(ADDRESS_TYPE, &out.address);
        if prev
            .addresses
            .get(&*uid)
            .is_none_or(|o| o.version != item.version)
        {
            names.addresses.insert(uid.clone());
        }
        x.addresses.insert(uid, item);
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
    // A generated policy stays while any pod of its namespace lists it (the waypoint-only one
    // is shared; a pod's PeerAuthentication one is its own).
    for (ns, key) in listed_before {
        if !still_listed(reg, &x, &ns, &key) && x.authorizations.remove(&*key).is_some() {
            names.authorizations.insert(key);
        }
    }
    for (ns, svc) in hosts {
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
    (x, names)
}

/// Names of the policies `translate` generates per pod (the `spar-` prefix is Spar's own).
fn is_generated(key: &str) -> bool {
    key.split_once('/').is_some_and(|(_, n)| {
        n.starts_with("spar-peer-authentication-") || n.starts_with("spar-waypoint-only-")
    })
}

fn still_listed(reg: &Registry, x: &Xds, ns: &str, key: &str) -> bool {
    // A pod's own PeerAuthentication policy: only that pod lists it.
    if let Some(pod) = key
        .split_once('/')
        .and_then(|(_, n)| n.strip_prefix("spar-peer-authentication-"))
    {
        let uid = format!("{}//Pod/{ns}/{pod}", reg.mesh.cluster_id);
        return x
            .listed
            .get(uid.as_str())
            .is_some_and(|l| l.iter().any(|k| &**k == key));
    }
    reg.pods_selected(ns, &Default::default()).iter().any(|p| {
        let uid = crate::translate::workload_uid(reg, p);
        x.listed
            .get(uid.as_str())
            .is_some_and(|l| l.iter().any(|k| &**k == key))
    })
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
