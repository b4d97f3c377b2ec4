//! What one proxy receives, read from a snapshot through its indexes: a node proxy's
//! policies from the pods on its node, a sidecar's from its own pod. Three questions, each
//! answered without walking the mesh: the whole view (a new stream), one name in the view
//! (after a change), and which names a change can have touched for this proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spar_model::Kind;
use spar_xds::security as xsec;
use spar_xds::{
    ADDRESS_TYPE, AUTHORIZATION_TYPE, L7_TYPE, POLICY_TYPE, TELEMETRY_NAME, TELEMETRY_TYPE,
};

use crate::encoded::{AuthItem, Item, encode};
use crate::registry::Pod;
use crate::snapshot::{Changes, Snapshot};
use crate::translate::{ProxyView, l7, security, telemetry, workload_uid};

/// The names of one type a change may have touched for one proxy.
#[derive(Debug, PartialEq)]
pub enum Touched {
    Nothing,
    Names(BTreeSet<Arc<str>>),
    /// Recompute the whole view (the proxy's own pod or its scope changed).
    All,
}

fn own_pod<'a>(s: &'a Snapshot, view: &ProxyView) -> Option<Pod<'a>> {
    match view {
        ProxyView::Workload { namespace, name } => s.registry.pod(namespace, name),
        ProxyView::Node(_) => None,
    }
}

/// Which names of `type_url` `changes` may have touched for `view`.
pub fn touched(changes: &Changes, view: &ProxyView, type_url: &str) -> Touched {
    let names = |set: &BTreeSet<Arc<str>>| {
        if set.is_empty() {
            Touched::Nothing
        } else {
            Touched::Names(set.clone())
        }
    };
    let own_changed = match view {
        ProxyView::Node(n) => changes.nodes.contains(n),
        ProxyView::Workload { namespace, name } => changes
            .pods
            .contains(&(namespace.as_str().into(), name.as_str().into())),
    };
    let sidecar = matches!(view, ProxyView::Workload { .. });
    let kinds = |ks: &[Kind]| ks.iter().any(|k| changes.kinds.contains(k));
    match type_url {
        ADDRESS_TYPE => names(&changes.names.addresses),
        AUTHORIZATION_TYPE if own_changed => Touched::All,
        AUTHORIZATION_TYPE => names(&changes.names.authorizations),
        L7_TYPE if !sidecar => Touched::Nothing,
        L7_TYPE if own_changed || kinds(&[Kind::Sidecar, Kind::K8sGateway, Kind::Gateway]) => {
            Touched::All
        }
        L7_TYPE => names(&changes.names.l7),
        POLICY_TYPE | TELEMETRY_TYPE if !sidecar => Touched::Nothing,
        POLICY_TYPE
            if own_changed
                || changes.jwks
                || kinds(&[
                    Kind::AuthorizationPolicy,
                    Kind::RequestAuthentication,
                    Kind::ConfigMap,
                    // A waypoint's policies are the ones targeting its Gateway.
                    Kind::K8sGateway,
                ]) =>
        {
            Touched::All
        }
        TELEMETRY_TYPE if own_changed || kinds(&[Kind::Telemetry]) => Touched::All,
        _ => Touched::Nothing,
    }
}

/// Whether the authorization `a` named `name` reaches `view`.
fn auth_in_view(s: &Snapshot, view: &ProxyView, name: &str, a: &AuthItem) -> bool {
    let listed_by = |p: &Pod<'_>| {
        s.xds
            .listed
            .get(workload_uid(&s.registry, p).as_str())
            .is_some_and(|l| l.iter().any(|x| &**x == name))
    };
    match view {
        ProxyView::Node(node) => match xsec::Scope::try_from(a.scope) {
            Ok(xsec::Scope::Global) => true,
            Ok(xsec::Scope::Namespace) => s.registry.namespace_on_node(&a.namespace, node),
            _ => s.registry.pods_on_node(node).any(|p| listed_by(&p)),
        },
        // A sidecar enforces AuthorizationPolicy whole, from `policies`; at L4 it keeps only
        // what PeerAuthentication generated.
        ProxyView::Workload { .. } => {
            let pod = own_pod(s, view);
            a.peer_authn
                && match xsec::Scope::try_from(a.scope) {
                    Ok(xsec::Scope::Global) => true,
                    Ok(xsec::Scope::Namespace) => pod.is_some_and(|p| p.namespace == a.namespace),
                    _ => pod.is_some_and(|p| listed_by(&p)),
                }
        }
    }
}

/// One resource of `view`, or None when it is not in the view.
pub fn lookup(s: &Snapshot, view: &ProxyView, type_url: &str, name: &str) -> Option<Item> {
    match type_url {
        ADDRESS_TYPE => s.xds.addresses.get(name).cloned(),
        AUTHORIZATION_TYPE => {
            let a = s.xds.authorizations.get(name)?;
            auth_in_view(s, view, name, a).then(|| a.res.clone())
        }
        L7_TYPE => {
            let pod = own_pod(s, view)?;
            let item = s.xds.l7.get(name)?;
            let scope = l7::egress_scope(&s.registry, &pod);
            (l7::in_scope(
                &scope,
                pod.namespace,
                &item.host.namespace,
                &item.host.hostname,
            ) && crate::translate::ingress::visible(&s.registry, &item.host, &pod))
            .then(|| item.for_pod(pod.namespace, pod.labels))
        }
        // Small per-pod views: looked up in the whole view.
        _ => list(s, view, type_url).remove(name),
    }
}

/// The whole view of one type.
pub fn list(s: &Snapshot, view: &ProxyView, type_url: &str) -> BTreeMap<Arc<str>, Item> {
    let reg = &s.registry;
    match type_url {
        ADDRESS_TYPE => s
            .xds
            .addresses
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        AUTHORIZATION_TYPE => {
            // Candidates from the indexes, then the same test as for one name.
            let mut names: BTreeSet<Arc<str>> = s.xds.global.iter().cloned().collect();
            let served: Vec<Pod<'_>> = match view {
                ProxyView::Node(n) => reg.pods_on_node(n).collect(),
                ProxyView::Workload { .. } => own_pod(s, view).into_iter().collect(),
            };
            for p in &served {
                if let Some(ns) = s.xds.by_namespace.get(p.namespace) {
                    names.extend(ns.iter().cloned());
                }
                if let Some(l) = s.xds.listed.get(workload_uid(reg, p).as_str()) {
                    names.extend(l.iter().cloned());
                }
            }
            names
                .into_iter()
                .filter_map(|n| {
                    let a = s.xds.authorizations.get(&*n)?;
                    auth_in_view(s, view, &n, a).then(|| (n.clone(), a.res.clone()))
                })
                .collect()
        }
        L7_TYPE => {
            let Some(pod) = own_pod(s, view) else {
                return BTreeMap::new();
            };
            let scope = l7::egress_scope(reg, &pod);
            s.xds
                .l7
                .iter()
                .filter(|(_, h)| {
                    l7::in_scope(&scope, pod.namespace, &h.host.namespace, &h.host.hostname)
                        && crate::translate::ingress::visible(reg, &h.host, &pod)
                })
                .map(|(k, h)| (k.clone(), h.for_pod(pod.namespace, pod.labels)))
                .collect()
        }
        POLICY_TYPE => match own_pod(s, view) {
            Some(pod) => security::for_pod(reg, &s.xds.jwks, &pod)
                .into_iter()
                .map(|(k, p)| (Arc::from(k.as_str()), encode(POLICY_TYPE, &p)))
                .collect(),
            None => BTreeMap::new(),
        },
        TELEMETRY_TYPE => match own_pod(s, view) {
            Some(pod) => [(
                Arc::from(TELEMETRY_NAME),
                encode(TELEMETRY_TYPE, &telemetry::for_pod(reg, &pod)),
            )]
            .into(),
            None => BTreeMap::new(),
        },
        _ => BTreeMap::new(),
    }
}
