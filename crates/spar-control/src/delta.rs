//! The delta xDS state of one stream and one type: what the client subscribed to, what it
//! holds, and the next response to send. Pure: no I/O, tested by tables and by random
//! changes (the client a stream keeps in sync always holds what a full translation says).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spar_xds::discovery::{DeltaDiscoveryRequest, Resource};

use crate::encoded::Item;
use crate::snapshot::Snapshot;
use crate::translate::ProxyView;
use crate::view::{self, Touched, lookup, touched};

/// Current resources of one type for one proxy: name -> the encoded resource (shared with the
/// snapshot: a first response copies the bytes only of what it sends).
pub type Resources = BTreeMap<String, Item>;

#[derive(Debug, Default, Clone)]
pub struct TypeState {
    /// Subscribed to everything (`*`, or the legacy empty first subscription).
    pub wildcard: bool,
    /// Explicitly subscribed names.
    pub names: BTreeSet<String>,
    /// What the client holds: name -> version.
    pub sent: BTreeMap<String, String>,
}

/// A response to send: updated resources and removed names.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
    pub resources: Vec<Resource>,
    pub removed: Vec<String>,
}

impl TypeState {
    /// Start from the first request of a type on a stream. Returns the state and whether the
    /// client must get a response even if it is empty (it always must, initially).
    pub fn first(req: &DeltaDiscoveryRequest) -> TypeState {
        let mut s = TypeState {
            wildcard: req.resource_names_subscribe.is_empty(),
            sent: req.initial_resource_versions.clone().into_iter().collect(),
            ..Default::default()
        };
        s.subscribe(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
        );
        s
    }

    /// Apply subscription changes. Newly subscribed names are forgotten from `sent` so that
    /// they are sent again (the protocol requires an answer for every subscribed name).
    pub fn subscribe(&mut self, add: &[String], remove: &[String]) -> bool {
        let mut changed = false;
        for n in add {
            if n == "*" {
                changed |= !self.wildcard;
                self.wildcard = true;
            } else {
                self.names.insert(n.clone());
                self.sent.remove(n);
                changed = true;
            }
        }
        for n in remove {
            if n == "*" {
                changed |= self.wildcard;
                self.wildcard = false;
            } else {
                changed |= self.names.remove(n);
            }
        }
        if changed {
            // Forget what is no longer subscribed: the client drops it itself.
            let (wildcard, names) = (self.wildcard, &self.names);
            self.sent.retain(|n, _| wildcard || names.contains(n));
        }
        changed
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The difference between what the client holds and `current`; records it as sent.
    pub fn diff(&mut self, current: &Resources) -> Delta {
        let mut delta = Delta::default();
        for (name, item) in current {
            let version = &item.version;
            if self.wants(name) && self.sent.get(name) != Some(version) {
                delta.resources.push(Resource {
                    version: version.clone(),
                    resource: Some(item.any.clone()),
                    name: name.clone(),
                    aliases: Vec::new(),
                });
                self.sent.insert(name.clone(), version.clone());
            }
        }
        let gone: Vec<String> = self
            .sent
            .iter()
            .filter(|(n, v)| !v.is_empty() && !current.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.sent.remove(&n);
            delta.removed.push(n);
        }
        // Explicitly subscribed names that do not exist are reported as removed, once.
        for n in &self.names {
            if !current.contains_key(n) && !delta.removed.contains(n) && !self.sent.contains_key(n)
            {
                delta.removed.push(n.clone());
                self.sent.insert(n.clone(), String::new());
            }
        }
        self.sent
            .retain(|n, v| !v.is_empty() || current.contains_key(n) || self.names.contains(n));
        delta
    }
}

/// One type on one stream.
pub struct TypeStream {
    pub state: TypeState,
    /// Whole-view (wildcard) subscriptions: the snapshot whose view the client holds. Then
    /// `state.sent` stays empty and a push compares this snapshot's view with the next one's,
    /// only at the names that changed.
    pub synced: Option<Arc<Snapshot>>,
    /// How many resources the client holds.
    pub count: usize,
    /// Responses not yet ACKed: their nonce and what the client held before each.
    pub pending: std::collections::VecDeque<(String, Arc<Held>)>,
}

/// What a client held before a response (restored if it NACKs the response).
#[derive(Clone)]
pub struct Held {
    state: TypeState,
    synced: Option<Arc<Snapshot>>,
    count: usize,
}

/// Unacknowledged responses remembered per type; a client that never ACKs loses the oldest.
/// Room for every part of a split delta (all are sent before their ACKs are read) and more.
const MAX_PENDING: usize = crate::xds_server::MAX_CHUNKS + 16;

impl TypeStream {
    pub fn new(state: TypeState) -> TypeStream {
        TypeStream {
            state,
            synced: None,
            count: 0,
            pending: Default::default(),
        }
    }

    /// What the client holds now, to restore should it refuse what comes next.
    pub fn held(&self) -> Arc<Held> {
        Arc::new(Held {
            state: self.state.clone(),
            synced: self.synced.clone(),
            count: self.count,
        })
    }

    /// A response went out with `nonce`; `before` is what the client held until then.
    pub fn sent(&mut self, nonce: String, before: Arc<Held>) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back((nonce, before));
    }

    /// The client applied the response `nonce` (and so everything before it).
    pub fn acked(&mut self, nonce: &str) {
        if let Some(i) = self.pending.iter().position(|(n, _)| n == nonce) {
            self.pending.drain(..=i);
        }
    }

    /// The client refused the response `nonce`: it still holds what it held before it, so
    /// the next push sends again what that response (and any after it) carried, good
    /// resources included, instead of taking them as delivered.
    pub fn nacked(&mut self, nonce: &str) {
        if let Some(i) = self.pending.iter().position(|(n, _)| n == nonce) {
            let (_, before) = self
                .pending
                .drain(i..)
                .next()
                .expect("position is in range");
            self.state = before.state.clone();
            self.synced = before.synced.clone();
            self.count = before.count;
        }
    }

    /// The next response for this type at `snap`; records it as held.
    pub fn delta(&mut self, view: &ProxyView, type_url: &str, snap: &Arc<Snapshot>) -> Delta {
        let Some(at) = self.synced.take() else {
            // The first response, or explicit names: diff against what the client said it
            // holds.
            let current: Resources = view::list(snap, view, type_url)
                .into_iter()
                .map(|(n, i)| (n.to_string(), i))
                .collect();
            let delta = self.state.diff(&current);
            self.count = self.state.sent.values().filter(|v| !v.is_empty()).count();
            if self.state.wildcard && self.state.names.is_empty() {
                self.state.sent.clear();
                self.synced = Some(snap.clone());
            }
            return delta;
        };
        let mut delta = Delta::default();
        let mut send =
            |name: &str, old: Option<&Item>, new: Option<Item>, count: &mut usize| match (old, new)
            {
                (Some(o), Some(n)) if o.version == n.version => {}
                (old, Some(n)) => {
                    *count += usize::from(old.is_none());
                    delta.resources.push(Resource {
                        version: n.version.clone(),
                        resource: Some(n.any.clone()),
                        name: name.to_string(),
                        aliases: Vec::new(),
                    });
                }
                (Some(_), None) => {
                    *count -= 1;
                    delta.removed.push(name.to_string());
                }
                (None, None) => {}
            };
        let touched = match snap.changes_since(at.generation) {
            Some(c) => touched(&c, view, type_url),
            None => Touched::All,
        };
        match touched {
            Touched::Nothing => {}
            Touched::Names(names) => {
                for n in names {
                    let old = lookup(&at, view, type_url, &n);
                    let new = lookup(snap, view, type_url, &n);
                    send(&n, old.as_ref(), new, &mut self.count);
                }
            }
            Touched::All => {
                let old = view::list(&at, view, type_url);
                let mut new = view::list(snap, view, type_url);
                let names: std::collections::BTreeSet<Arc<str>> =
                    old.keys().chain(new.keys()).cloned().collect();
                for n in names {
                    send(&n, old.get(&n), new.remove(&n), &mut self.count);
                }
            }
        }
        self.synced = Some(snap.clone());
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    Arc::new(crate::encoded::Res {
                        version: v.to_string(),
                        any: prost_types::Any {
                            type_url: "t".into(),
                            value: v.as_bytes().to_vec(),
                        },
                    }),
                )
            })
            .collect()
    }

    fn names(d: &Delta) -> Vec<&str> {
        d.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_initial_update_and_removal() {
        let mut s = TypeState::first(&DeltaDiscoveryRequest::default());
        assert!(s.wildcard);
        let d = s.diff(&res(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&d), vec!["a", "b"]);
        // Nothing changed: nothing to send.
        assert_eq!(s.diff(&res(&[("a", "1"), ("b", "1")])), Delta::default());
        // b changes, a goes away.
        let d = s.diff(&res(&[("b", "2")]));
        assert_eq!(names(&d), vec!["b"]);
        assert_eq!(d.removed, vec!["a".to_string()]);
    }

    #[test]
    fn initial_versions_skip_what_the_client_has() {
        let req = DeltaDiscoveryRequest {
            initial_resource_versions: [
                ("a".to_string(), "1".to_string()),
                ("gone".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let mut s = TypeState::first(&req);
        let d = s.diff(&res(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&d), vec!["b"]);
        assert_eq!(d.removed, vec!["gone".to_string()]);
    }

    #[test]
    fn named_subscriptions() {
        let req = DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["a".into(), "x".into()],
            ..Default::default()
        };
        let mut s = TypeState::first(&req);
        assert!(!s.wildcard);
        let d = s.diff(&res(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&d), vec!["a"]);
        assert_eq!(d.removed, vec!["x".to_string()]);
        // Re-subscribing to a sends it again.
        s.subscribe(&["a".into()], &[]);
        assert_eq!(names(&s.diff(&res(&[("a", "1"), ("b", "1")]))), vec!["a"]);
        // Unsubscribe a; b arriving later is not sent.
        s.subscribe(&[], &["a".into()]);
        assert_eq!(s.diff(&res(&[("a", "2"), ("b", "2")])).resources.len(), 0);
    }

    #[test]
    fn a_nacked_response_is_sent_again_after_the_next_change() {
        let mut st = TypeStream::new(TypeState::first(&DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["a".into(), "b".into()],
            ..Default::default()
        }));
        let before = st.held();
        let d = st.state.diff(&res(&[("a", "1"), ("b", "1")]));
        assert_eq!(names(&d), vec!["a", "b"]);
        st.sent("n1".into(), before);
        st.acked("n1");
        // a (good) and b (bad) change in one response; the client refuses all of it.
        let before = st.held();
        let d = st.state.diff(&res(&[("a", "2"), ("b", "2")]));
        assert_eq!(names(&d), vec!["a", "b"]);
        st.sent("n2".into(), before);
        st.nacked("n2");
        // b is fixed: the good a goes out again with it, not taken as delivered.
        let d = st.state.diff(&res(&[("a", "2"), ("b", "3")]));
        assert_eq!(names(&d), vec!["a", "b"]);
        // An ACK of an older nonce forgets only what it covers.
        let before = st.held();
        st.sent("n3".into(), before);
        let before = st.held();
        st.sent("n4".into(), before);
        st.acked("n3");
        assert_eq!(st.pending.len(), 1);
    }

    /// A delta split into as many parts as the server sends at most: a NACK of the first part,
    /// arriving after all were sent, still restores what the client held before the delta.
    #[test]
    fn a_nack_of_the_first_of_many_parts_restores_the_state_before_them() {
        let mut st = TypeStream::new(TypeState::first(&DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["a".into()],
            ..Default::default()
        }));
        let before = st.held();
        let d = st.state.diff(&res(&[("a", "1")]));
        assert_eq!(names(&d), vec!["a"]);
        for part in 0..crate::xds_server::MAX_CHUNKS {
            st.sent(format!("p{part}"), before.clone());
        }
        st.nacked("p0");
        let d = st.state.diff(&res(&[("a", "1")]));
        assert_eq!(
            names(&d),
            vec!["a"],
            "sent again: the client holds none of it"
        );
    }
}
